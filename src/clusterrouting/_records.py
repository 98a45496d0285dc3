"""The records the policies read: replica candidates and the peers' gossip record."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, Final

import attrs

from clusterrouting._errors import InvalidRecordError, NodeDataDecodeError
from clusterrouting._gojson import (
    GoJSONError,
    GoSlice,
    GoStruct,
    Pairs,
    decode_slice,
    decode_string,
    decode_uint64,
    loads,
)
from clusterrouting._rfc3339 import (
    MAX_TIME,
    MIN_TIME,
    format_rfc3339,
    ns_to_seconds,
    parse_rfc3339,
)
from clusterrouting._validate import (
    check_nonneg_int,
    check_optional_time,
    check_str,
)

__all__ = ["NODE_ONLINE_WINDOW", "NodeData", "ReplicaCandidate"]

#: Seconds after its last announce that a peer still counts as online. Peers re-announce every
#: 20 s, so one missed announce is tolerated.
NODE_ONLINE_WINDOW: Final[float] = 40.0

_UINT64_MAX = 2**64 - 1


@attrs.frozen(kw_only=True)
class ReplicaCandidate:
    """One replica a request could be sent to, as a policy sees it at decision time.

    Frozen and validated: an invalid candidate cannot be built.

    Attributes:
        node_id: the node (peer) id; replicas of one node share it.
        address: where to forward the request (opaque to the policies).
        replica_index: which replica of the node (>= 0).
        in_flight: requests currently in flight on the replica (>= 0).
        last_used: when the host last picked this replica (seconds, the host's clock), or
            ``None`` for "never used", which sorts as the oldest.
        available_vram: free accelerator memory in bytes (>= 0).

    Raises:
        InvalidRecordError: a field has the wrong type, is negative, or is NaN/inf.

    >>> ReplicaCandidate(node_id="gpu-a", in_flight=2).in_flight
    2
    """

    node_id: str = attrs.field(validator=check_str)
    address: str = attrs.field(default="", validator=check_str)
    replica_index: int = attrs.field(default=0, validator=check_nonneg_int)
    in_flight: int = attrs.field(default=0, validator=check_nonneg_int)
    last_used: float | None = attrs.field(default=None, validator=check_optional_time)
    available_vram: int = attrs.field(default=0, validator=check_nonneg_int)


def _to_models(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        # A bare string would silently become a tuple of characters.
        raise InvalidRecordError("models", value, "must be a sequence of str, not a str")
    try:
        return tuple(value)
    except TypeError:
        raise InvalidRecordError(
            "models", value, f"must be a sequence of str, not {type(value).__name__}"
        ) from None


def _check_models(_inst: object, attribute: attrs.Attribute[Any], value: tuple[Any, ...]) -> None:
    for m in value:
        if not isinstance(m, str):
            raise InvalidRecordError(
                attribute.name, value, f"every model must be a str, got {type(m).__name__}"
            )


def _check_last_seen(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_optional_time(_inst, attribute, value)
    if value is not None:
        assert isinstance(value, (int, float))
        if not (MIN_TIME < value < MAX_TIME):
            raise InvalidRecordError(
                attribute.name,
                value,
                "must lie after 0001-01-01T00:00:00Z (Go's zero time, which means None) "
                "and before year 10000",
            )


def _check_vram(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_nonneg_int(_inst, attribute, value)
    assert isinstance(value, int)
    if value > _UINT64_MAX:
        raise InvalidRecordError(attribute.name, value, "must fit in a uint64")


# Go field name -> our attribute name.
_GO_FIELDS: Final[dict[str, str]] = {
    "Name": "name",
    "ID": "id",
    "TunnelAddress": "tunnel_address",
    "ServiceID": "service_id",
    "LastSeen": "last_seen",
    "AvailableVRAM": "available_vram",
    "Models": "models",
}
# encoding/json escapes these by default; matching it keeps our bytes identical to a Go peer's.
_GO_HTML_ESCAPES: Final = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


@attrs.frozen(kw_only=True)
class NodeData:
    """The record a peer announces about itself (the reference system's ``schema.NodeData``).

    Attributes:
        name: human-readable node name.
        id: the node id that candidates and in-flight maps are keyed by.
        tunnel_address: where the peer is reached.
        service_id: the federation service the peer belongs to.
        last_seen: wall-clock seconds (Unix epoch, UTC) of the last announce, or ``None`` for
            never (Go's zero time on the wire). Wall clock, since it crosses processes.
        available_vram: free accelerator memory in bytes (0 = unknown, the lowest tier).
        models: models the peer serves; empty means unknown and eligible for any model.

    Not thread-affine: instances are immutable and safe to share.

    Raises:
        InvalidRecordError: a field has the wrong type or an impossible value.
    """

    name: str = attrs.field(default="", validator=check_str)
    id: str = attrs.field(default="", validator=check_str)
    tunnel_address: str = attrs.field(default="", validator=check_str)
    service_id: str = attrs.field(default="", validator=check_str)
    last_seen: float | None = attrs.field(default=None, validator=_check_last_seen)
    available_vram: int = attrs.field(default=0, validator=_check_vram)
    models: tuple[str, ...] = attrs.field(default=(), converter=_to_models, validator=_check_models)

    def is_online_at(self, now: float) -> bool:
        """Whether the peer counts as online at ``now`` (wall-clock seconds).

        Online iff ``now - last_seen < NODE_ONLINE_WINDOW``: strict, so a record exactly 40 s
        old is offline. ``last_seen=None`` is offline. A ``last_seen`` in the future (clock
        skew between peers) is online.

        >>> NodeData(id="a", last_seen=100.0).is_online_at(139.999)
        True
        >>> NodeData(id="a", last_seen=100.0).is_online_at(140.0)
        False
        """
        if self.last_seen is None:
            return False
        return now - self.last_seen < NODE_ONLINE_WINDOW

    def serves_model(self, model: str) -> bool:
        """Whether the peer may serve ``model``.

        An empty ``model`` means no filter (True); an empty ``models`` means the peer did not
        say, so it is eligible for any model; otherwise an exact string match.

        >>> NodeData(models=("llama",)).serves_model("llama"), NodeData().serves_model("x")
        (True, True)
        """
        if not model or not self.models:
            return True
        return model in self.models

    def to_json(self) -> str:
        """Encode with the reference system's Go field names, byte for byte as Go would.

        Compact separators, fields in Go's declaration order, non-ASCII kept as UTF-8 and
        ``<``, ``>``, ``&``, U+2028, U+2029 escaped as Go's ``encoding/json`` does; empty
        ``models`` is written as ``null`` (Go's nil slice).

        ``LastSeen`` is RFC 3339 in UTC with up to nanosecond precision; ``None`` is written
        as Go's zero time ``0001-01-01T00:00:00Z``. ``from_json(n.to_json()) == n`` for every
        valid record whose ``last_seen`` is a real wall-clock time (see ``_rfc3339``).
        """
        text = json.dumps(
            {
                "Name": self.name,
                "ID": self.id,
                "TunnelAddress": self.tunnel_address,
                "ServiceID": self.service_id,
                "LastSeen": format_rfc3339(self.last_seen),
                "AvailableVRAM": self.available_vram,
                # Go writes a nil slice as null; an announce without models is nil there.
                "Models": list(self.models) if self.models else None,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return text.translate(_GO_HTML_ESCAPES)

    @classmethod
    def from_json(cls, text: str | bytes | bytearray | memoryview) -> NodeData:
        """Decode a record written by a Go or Python peer, exactly as Go's ``encoding/json``
        reads it into the reference's struct.

        - Text: invalid UTF-8 bytes and escaped lone surrogates decode to U+FFFD (so the
          record always re-encodes); a leading byte-order mark, ``NaN`` and other non-JSON
          are rejected; nesting deeper than 10000 levels is rejected.
        - Keys: a key selects the field of that exact name, else the field whose name equals
          it under Unicode simple case folding (``"id"``, ``"\u017ferviceID"`` with a long s);
          unknown keys are ignored whatever their value; of several keys selecting one field
          the last wins, except that ``null`` leaves the field as it was (for ``Models``, it
          resets the list).
        - Values: the strings must be strings; ``AvailableVRAM`` an integer literal in
          ``[0, 2**64)`` (not ``-0``, ``1.0``, ``1e3``); ``Models`` an array of strings
          (``null`` elements keep what Go's reused storage held, ``""`` for new elements);
          ``LastSeen`` an RFC 3339 string (see ``_rfc3339.parse_rfc3339``), where Go's zero
          time decodes to ``None``. A wrong type anywhere fails, even if a later key would
          have replaced it.
        - ``null`` as the whole document is the all-defaults record.

        Raises:
            NodeDataDecodeError: the text is not a JSON object (or ``null``), a field has the
                wrong type or an impossible value, or ``LastSeen`` lies outside years
                1..9999 UTC; ``.field`` names the Go field (``"<document>"`` for the
                document as a whole).

        >>> NodeData.from_json('{"id": "a", "AvailableVRAM": 8, "models": ["m"]}').models
        ('m',)
        """
        if not isinstance(text, str | bytes | bytearray | memoryview):
            raise NodeDataDecodeError(
                "<document>", f"must be str or bytes, not {type(text).__name__}"
            )
        try:
            doc = loads(text)
        except GoJSONError as exc:
            raise NodeDataDecodeError(exc.field, exc.reason) from None
        if doc is None:
            return cls()
        if not isinstance(doc, Pairs):
            raise NodeDataDecodeError("<document>", "must be a JSON object")
        strings = {"Name": "", "ID": "", "TunnelAddress": "", "ServiceID": ""}
        vram = 0
        models: GoSlice | None = None
        last_seen: str | None = None
        try:
            for key, value in doc:
                go_name = _NODE_STRUCT.match(key)
                if go_name is None:
                    continue
                if go_name in strings:
                    strings[go_name] = decode_string(strings[go_name], value, go_name)
                elif go_name == "AvailableVRAM":
                    vram = decode_uint64(vram, value, go_name)
                elif go_name == "Models":
                    models = decode_slice(models, value, go_name, decode_string, str)
                elif value is not None:  # LastSeen: null leaves it as it was
                    if type(value) is not str:
                        raise GoJSONError(go_name, "must be an RFC 3339 string")
                    _parse_last_seen(value)  # Go fails at the first bad time, even if replaced
                    last_seen = value
        except GoJSONError as exc:
            raise NodeDataDecodeError(exc.field, exc.reason) from None
        return cls(
            name=strings["Name"],
            id=strings["ID"],
            tunnel_address=strings["TunnelAddress"],
            service_id=strings["ServiceID"],
            last_seen=None if last_seen is None else _last_seen_seconds(last_seen),
            available_vram=vram,
            models=() if models is None else tuple(models.items()),
        )


_NODE_STRUCT: Final = GoStruct(_GO_FIELDS)


def _parse_last_seen(text: str) -> int | None:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise GoJSONError("LastSeen", str(exc)) from None


def _last_seen_seconds(text: str) -> float | None:
    ns = _parse_last_seen(text)
    if ns is None:
        return None
    if not (_MIN_NS < ns < _MAX_NS):
        raise NodeDataDecodeError(
            "LastSeen", f"outside years 1..9999 UTC (RFC 3339 cannot write it): {text!r}"
        )
    seconds = ns_to_seconds(ns)
    # Float seconds there are ~8 us apart: an instant that rounds onto either bound is kept
    # inside (just after Go's zero time it is "never", offline for Go as well; just before
    # year 10000, the last float of year 9999, online as for Go).
    if seconds <= MIN_TIME:
        return None
    if seconds >= MAX_TIME:
        return math.nextafter(MAX_TIME, 0.0)
    return seconds


_MIN_NS: Final = int(MIN_TIME) * 1_000_000_000
_MAX_NS: Final = int(MAX_TIME) * 1_000_000_000
