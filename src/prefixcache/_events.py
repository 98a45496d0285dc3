"""Sync events and their wire format (docs/behaviour.md, "Sync across routers").

Two subjects carry JSON objects with the keys ``model``, ``chain``, ``node_id`` and
``replica``, the reference system's format, so a Python router shares affinity with its routers
on the same NATS subjects:

* ``prefixcache.observe``: ``{"model":"m","chain":[h1,h2,...],"node_id":"n","replica":0}``,
  chain hashes as JSON integers (uint64), shallow to deep;
* ``prefixcache.invalidate``: ``{"model":"m","chain":[],"node_id":"n","replica":-1}``; a
  negative replica (``-1`` is sent) means every replica of the node; ``chain`` is ignored.

Decoding is defensive because payloads come from the network: it accepts what Go's
``encoding/json`` would produce for the same struct (keys matched case-insensitively, the last
duplicate wins, unknown keys ignored, a missing ``replica`` is 0, a missing or ``null`` chain of
an invalidate is empty) and rejects with :class:`EventDecodeError` anything else: a payload over
:data:`MAX_EVENT_BYTES`, invalid UTF-8 or JSON, a non-object, wrong types (``true`` is not an
integer, ``1.0`` is not an integer), hashes outside ``[0, 2**64)``, chains longer than
:data:`MAX_EVENT_CHAIN`, an empty observe chain, an empty ``node_id``, strings longer than
:data:`MAX_NAME_BYTES` or not encodable as UTF-8 (lone surrogates).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Sequence
from typing import ClassVar, Final

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache._types import ReplicaKey

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
        fields = _parse(payload)
        chain = _decode_chain(fields.get("chain"), allow_empty=False)
        model, node_id, replica = _decode_common(fields, non_negative_replica=True)
        return cls(model=model, chain=chain, node_id=node_id, replica=replica)


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
        """Parse an invalidate payload; raises :class:`EventDecodeError`. A ``chain`` key
        (missing, ``null`` or a valid hash list) is validated and ignored."""
        fields = _parse(payload)
        _decode_chain(fields.get("chain"), allow_empty=True)
        model, node_id, replica = _decode_common(fields, non_negative_replica=False)
        return cls(model=model, node_id=node_id, replica=replica)


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


_KEYS: Final = ("model", "chain", "node_id", "replica")


def _fold_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Go's encoding/json matches keys case-insensitively and the last duplicate wins; the
    # inner objects (there are none in a valid event) are folded the same harmless way.
    out: dict[str, object] = {}
    for k, v in pairs:
        low = k.lower()
        out[low if low in _KEYS else k] = v
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _parse(payload: bytes) -> dict[str, object]:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise EventDecodeError("<payload>", type(payload).__name__, "must be bytes")
    if len(payload) > MAX_EVENT_BYTES:
        raise EventDecodeError(
            "<payload>", f"{len(payload)} bytes", f"is larger than {MAX_EVENT_BYTES} bytes"
        )
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventDecodeError("<payload>", bytes(payload[:40]), "is not UTF-8") from exc
    try:
        obj = json.loads(text, object_pairs_hook=_fold_pairs, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise EventDecodeError("<payload>", text[:40], f"is not JSON ({exc})") from exc
    if type(obj) is not dict:
        raise EventDecodeError("<payload>", text[:40], "is not a JSON object")
    return obj


def _decode_chain(value: object, *, allow_empty: bool) -> tuple[int, ...]:
    if value is None:
        if allow_empty:
            return ()
        raise EventDecodeError("chain", value, "is missing or null")
    if type(value) is not list:
        raise EventDecodeError("chain", value, "must be a JSON array of integers")
    if len(value) > MAX_EVENT_CHAIN:
        raise EventDecodeError("chain", f"{len(value)} hashes", f"is longer than {MAX_EVENT_CHAIN}")
    if not value and not allow_empty:
        raise EventDecodeError("chain", value, "must not be empty")
    for h in value:
        if type(h) is not int or not 0 <= h < _U64:
            raise EventDecodeError("chain", h, "holds a value that is not an integer in [0, 2**64)")
    return tuple(value)


def _decode_common(
    fields: dict[str, object], *, non_negative_replica: bool
) -> tuple[str, str, int]:
    model = fields.get("model", "")
    reason = _check_name("model", model, non_empty=False)
    if reason is not None:
        raise EventDecodeError("model", model, reason)
    node_id = fields.get("node_id", "")
    reason = _check_name("node_id", node_id, non_empty=True)
    if reason is not None:
        raise EventDecodeError("node_id", node_id, reason)
    replica = fields.get("replica", 0)
    reason = _check_replica(replica, non_negative=non_negative_replica)
    if reason is not None:
        raise EventDecodeError("replica", replica, reason)
    assert type(model) is str and type(node_id) is str and type(replica) is int
    return model, node_id, replica
