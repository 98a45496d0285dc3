"""Sync events and their wire format (docs/behaviour.md, "Sync across routers").

Two subjects carry JSON objects with the keys ``model``, ``chain``, ``node_id`` and
``replica``, the reference system's format, so a Python router shares affinity with its routers
on the same NATS subjects:

* ``prefixcache.observe``: ``{"model":"m","chain":[h1,h2,...],"node_id":"n","replica":0}``,
  chain hashes as JSON integers (uint64), shallow to deep;
* ``prefixcache.invalidate``: ``{"model":"m","chain":[],"node_id":"n","replica":-1}``; a
  negative replica (``-1`` is sent) means every replica of the node; ``chain`` is ignored.

Decoding reads a payload exactly as the Go routers' ``encoding/json`` reads it into their event
structs (:mod:`clusterrouting._gojson` holds the rules): invalid UTF-8 bytes and escaped lone
surrogates decode to U+FFFD; a key selects the field of that exact name, else the one equal
under Unicode simple case folding; unknown keys are ignored; of several keys for one field the
last wins, but ``null`` leaves ``model``, ``node_id`` and ``replica`` as they were; a missing
``replica`` is 0; ``chain`` holds uint64 integer literals (not ``-0``, ``1.0`` or ``1e3``; a
``null`` element is 0, as in Go's reused slice storage); an invalidate has no ``chain`` field
in Go, so its ``chain`` key is ignored like any unknown key. A wrong type anywhere rejects the
payload, as Go's decoder does. On top of that the library rejects, with
:class:`EventDecodeError`: a payload over :data:`MAX_EVENT_BYTES`, a non-object, chains longer
than :data:`MAX_EVENT_CHAIN`, an empty observe chain, an empty ``node_id`` and strings longer
than :data:`MAX_NAME_BYTES`.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Sequence
from typing import ClassVar, Final

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError
from clusterrouting._gojson import (
    GoJSONError,
    GoSlice,
    GoStruct,
    Pairs,
    decode_int64,
    decode_string,
    decode_uint64_slice,
    loads,
)
from prefixcache._types import ReplicaKey

#: An ``isinstance`` target built once (an inline union is built on every call).
_BYTES_LIKE = (bytes, bytearray, memoryview)

__all__ = [
    "EVENT_SUBJECTS",
    "INVALIDATE_SUBJECT",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_CHAIN",
    "MAX_NAME_BYTES",
    "OBSERVE_SUBJECT",
    "EventDecodeError",
    "InvalidateEvent",
    "ObserveEvent",
    "decode_event",
]

OBSERVE_SUBJECT: Final = "prefixcache.observe"
INVALIDATE_SUBJECT: Final = "prefixcache.invalidate"
EVENT_SUBJECTS: Final = (OBSERVE_SUBJECT, INVALIDATE_SUBJECT)

MAX_EVENT_CHAIN: Final = 4096
"""Longest chain accepted in an event (64x the default ``max_depth``)."""
MAX_NAME_BYTES: Final = 1024
"""Longest ``model`` / ``node_id`` accepted, in UTF-8 bytes."""
MAX_EVENT_BYTES: Final = 128 * 1024
"""Largest payload accepted (a full :data:`MAX_EVENT_CHAIN` chain of 20-digit hashes fits)."""

_U64: Final = 1 << 64
_I64_MIN: Final = -(1 << 63)


class EventDecodeError(ClusterRoutingError, ValueError):
    """A sync payload could not be decoded. ``field`` names the offending key (``"<payload>"``
    for the payload as a whole) and the message shows the bad value (truncated)."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"event field {field!r}={shown}: {reason}")


def _check_name(field: str, value: object, *, non_empty: bool) -> str | None:
    """Return a reason why ``value`` is not an acceptable model / node id, else ``None``."""
    if type(value) is not str:
        return "must be a str"
    if non_empty and not value:
        return "must not be empty"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be encodable as UTF-8"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} UTF-8 bytes"
    return None


def _check_chain(value: object, *, allow_empty: bool) -> str | None:
    if type(value) is not tuple:
        return "must be a tuple of ints"
    if not value and not allow_empty:
        return "must not be empty"
    if len(value) > MAX_EVENT_CHAIN:
        return f"is longer than {MAX_EVENT_CHAIN} hashes"
    for h in value:
        if type(h) is not int or not 0 <= h < _U64:
            return f"holds {h!r}, not an int in [0, 2**64)"
    return None


def _raise_if(field: str, value: object, reason: str | None) -> None:
    if reason is not None:
        raise InvalidRecordError(field, value, reason)


def _valid_model(_inst: object, _attr: object, value: str) -> None:
    _raise_if("model", value, _check_name("model", value, non_empty=False))


def _valid_node_id(_inst: object, _attr: object, value: str) -> None:
    _raise_if("node_id", value, _check_name("node_id", value, non_empty=True))


def _valid_chain(_inst: object, _attr: object, value: tuple[int, ...]) -> None:
    _raise_if("chain", value, _check_chain(value, allow_empty=False))


def _valid_observe_replica(_inst: object, _attr: object, value: int) -> None:
    _raise_if("replica", value, _check_replica(value, non_negative=True))


def _valid_invalidate_replica(_inst: object, _attr: object, value: int) -> None:
    _raise_if("replica", value, _check_replica(value, non_negative=False))


def _to_chain(value: Iterable[int]) -> tuple[int, ...]:
    return value if type(value) is tuple else tuple(value)


def _check_replica(value: object, *, non_negative: bool) -> str | None:
    if type(value) is not int:
        return "must be an int"
    low = 0 if non_negative else _I64_MIN
    if not low <= value < (1 << 63):
        return f"must be in [{low}, 2**63)"
    return None


def _dumps(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@attrs.frozen(kw_only=True)
class ObserveEvent:
    """A router saw ``chain`` served by replica ``(node_id, replica)`` of ``model``.

    Peers apply it with ``observe(model, chain, ReplicaKey(node_id, replica), now)`` stamped
    with *their* clock. Frozen; construction validates (``InvalidRecordError``): ``model`` a
    str, ``chain`` a non-empty sequence of at most :data:`MAX_EVENT_CHAIN` ints in
    ``[0, 2**64)`` (stored as a tuple), ``node_id`` a non-empty str, ``replica`` an int >= 0.

    >>> e = ObserveEvent(model="m", chain=[1, 2], node_id="n1")
    >>> e.encode()
    b'{"model":"m","chain":[1,2],"node_id":"n1","replica":0}'
    >>> ObserveEvent.decode(e.encode()) == e
    True
    """

    model: str = attrs.field(validator=_valid_model)
    chain: tuple[int, ...] = attrs.field(converter=_to_chain, validator=_valid_chain)
    node_id: str = attrs.field(validator=_valid_node_id)
    replica: int = attrs.field(default=0, validator=_valid_observe_replica)

    subject: ClassVar[str] = OBSERVE_SUBJECT

    @property
    def key(self) -> ReplicaKey:
        """The observed replica as a :class:`ReplicaKey`."""
        return ReplicaKey(self.node_id, self.replica)

    @classmethod
    def from_key(cls, model: str, chain: Sequence[int], key: ReplicaKey) -> ObserveEvent:
        """The event announcing ``observe(model, chain, key, ...)`` (integer-like hashes,
        e.g. numpy ``uint64``, are converted with ``operator.index``)."""
        return cls(
            model=model,
            chain=tuple(map(operator.index, chain)),
            node_id=key.node_id,
            replica=key.replica,
        )

    def encode(self) -> bytes:
        """Compact UTF-8 JSON with the keys ``model, chain, node_id, replica`` in that order."""
        return _dumps(
            {
                "model": self.model,
                "chain": list(self.chain),
                "node_id": self.node_id,
                "replica": self.replica,
            }
        )

    @classmethod
    def decode(cls, payload: bytes) -> ObserveEvent:
        """Parse an observe payload; raises :class:`EventDecodeError` (see the module doc)."""
        model, chain, node_id, replica = _decode_fields(payload, _OBSERVE_STRUCT)
        return cls(
            model=model,
            chain=_decode_chain(chain, allow_empty=False),
            node_id=node_id,
            replica=_decode_replica(replica, non_negative=True),
        )


@attrs.frozen(kw_only=True)
class InvalidateEvent:
    """A router dropped replica ``(node_id, replica)`` of ``model``; ``replica < 0`` (``-1``
    is sent) drops every replica of the node.

    Frozen; construction validates (``InvalidRecordError``): ``model`` a str, ``node_id`` a
    non-empty str, ``replica`` an int in ``[-2**63, 2**63)``.

    >>> InvalidateEvent.for_node("m", "n1").encode()
    b'{"model":"m","chain":[],"node_id":"n1","replica":-1}'
    >>> InvalidateEvent.decode(b'{"model":"m","chain":null,"node_id":"n1","replica":2}').replica
    2
    """

    model: str = attrs.field(validator=_valid_model)
    node_id: str = attrs.field(validator=_valid_node_id)
    replica: int = attrs.field(default=-1, validator=_valid_invalidate_replica)

    subject: ClassVar[str] = INVALIDATE_SUBJECT

    @property
    def whole_node(self) -> bool:
        """``True`` iff this drops every replica of the node (``replica < 0``)."""
        return self.replica < 0

    @property
    def key(self) -> ReplicaKey | None:
        """The dropped replica, or ``None`` when the whole node is dropped."""
        return None if self.replica < 0 else ReplicaKey(self.node_id, self.replica)

    @classmethod
    def for_key(cls, model: str, key: ReplicaKey) -> InvalidateEvent:
        """The event announcing ``invalidate(model, key)``."""
        return cls(model=model, node_id=key.node_id, replica=key.replica)

    @classmethod
    def for_node(cls, model: str, node_id: str) -> InvalidateEvent:
        """The event announcing ``invalidate_node(model, node_id)`` (``replica=-1``)."""
        return cls(model=model, node_id=node_id, replica=-1)

    def encode(self) -> bytes:
        """Compact UTF-8 JSON: ``model``, ``chain`` (always ``[]``), ``node_id``, ``replica``."""
        return _dumps(
            {"model": self.model, "chain": [], "node_id": self.node_id, "replica": self.replica}
        )

    @classmethod
    def decode(cls, payload: bytes) -> InvalidateEvent:
        """Parse an invalidate payload; raises :class:`EventDecodeError`. A ``chain`` key is
        ignored whatever its value (Go's invalidate event has no such field)."""
        model, _, node_id, replica = _decode_fields(payload, _INVALIDATE_STRUCT)
        return cls(
            model=model, node_id=node_id, replica=_decode_replica(replica, non_negative=False)
        )


def decode_event(subject: str, payload: bytes) -> ObserveEvent | InvalidateEvent:
    """Decode ``payload`` received on ``subject``.

    Raises:
        EventDecodeError: unknown subject (``field="<subject>"``) or a bad payload.

    >>> decode_event("prefixcache.invalidate", b'{"model":"m","node_id":"n"}').replica
    0
    """
    if subject == OBSERVE_SUBJECT:
        return ObserveEvent.decode(payload)
    if subject == INVALIDATE_SUBJECT:
        return InvalidateEvent.decode(payload)
    raise EventDecodeError("<subject>", subject, f"is not one of {list(EVENT_SUBJECTS)}")


_OBSERVE_STRUCT: Final = GoStruct(("model", "chain", "node_id", "replica"))
_INVALIDATE_STRUCT: Final = GoStruct(("model", "node_id", "replica"))


def _decode_fields(payload: bytes, struct: GoStruct) -> tuple[str, GoSlice | None, str, int]:
    """The fields as Go's decoder fills its event struct (``struct`` names its fields)."""
    if not isinstance(payload, _BYTES_LIKE):
        raise EventDecodeError("<payload>", type(payload).__name__, "must be bytes")
    if len(payload) > MAX_EVENT_BYTES:
        raise EventDecodeError(
            "<payload>", f"{len(payload)} bytes", f"is larger than {MAX_EVENT_BYTES} bytes"
        )
    try:
        doc = loads(payload)
    except GoJSONError as exc:
        raise EventDecodeError("<payload>", bytes(payload[:40]), exc.reason) from None
    if type(doc) is not Pairs:
        raise EventDecodeError("<payload>", bytes(payload[:40]), "is not a JSON object")
    model = node_id = ""
    replica = 0
    chain: GoSlice | None = None
    value: object = None
    try:
        for key, value in doc:
            name = struct.match(key)
            if name == "node_id":
                node_id = decode_string(node_id, value, name)
            elif name == "model":
                model = decode_string(model, value, name)
            elif name == "replica":
                replica = decode_int64(replica, value, name)
            elif name == "chain":
                chain = decode_uint64_slice(chain, value, name)
    except GoJSONError as exc:
        raise EventDecodeError(exc.field, value, exc.reason) from None
    for field, text in (("model", model), ("node_id", node_id)):
        reason = _check_name(field, text, non_empty=field == "node_id")
        if reason is not None:
            raise EventDecodeError(field, text, reason)
    return model, chain, node_id, replica


def _decode_chain(chain: GoSlice | None, *, allow_empty: bool) -> tuple[int, ...]:
    items = () if chain is None else chain.items()
    if len(items) > MAX_EVENT_CHAIN:
        raise EventDecodeError("chain", f"{len(items)} hashes", f"is longer than {MAX_EVENT_CHAIN}")
    if not items and not allow_empty:
        raise EventDecodeError("chain", items, "is missing, null or empty")
    return tuple(items)


def _decode_replica(replica: int, *, non_negative: bool) -> int:
    reason = _check_replica(replica, non_negative=non_negative)
    if reason is not None:
        raise EventDecodeError("replica", replica, reason)
    return replica
