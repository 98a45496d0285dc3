"""Anti-entropy for sync: snapshots that rebuild a peer's index exactly, and drift digests.

The sync protocol has no sequence numbers, so a router that missed messages (it joined late,
its connection dropped, the broker restarted) disagrees with its peers until it resyncs:

1. compare :func:`digests` (one integer per model, over the live ``(chain node, owner)``
   pairs; equal digests mean equal ownership, up to a 64-bit hash collision);
2. on a mismatch, :func:`export_snapshot` on a healthy router and :func:`apply_snapshot` on
   the drifted one (``snapshot.encode()`` / ``Snapshot.decode`` carry it over any channel).

**What a snapshot reproduces.** After ``apply_snapshot(b, export_snapshot(a, now=t), now=t)``
(routers sharing one ``Config``), ``b`` answers ``decide`` exactly like ``a`` for every model,
chain, candidate set and later time: the same owner for every live node, the same value-less
nodes between them, and the same ``last_seen`` (each entry carries its *age* relative to the
exporter's ``now``; the receiver stamps it ``now - age``, so weights and TTL expiry match when
both clocks agree). Expired entries are not exported (they answer like value-less nodes).
Floating-point ``now - (now - t)`` can differ from ``t`` in the last bit, which moves a
weight by ~1e-16 relative (below the 1e-9 relative tie rule for weights) and can only matter
for an entry exactly at its TTL boundary.

**How.** ``RadixTree.insert`` stamps the whole path, so replaying entries must reproduce "last
writer owns shared prefix nodes": for every node, the last replayed insert whose path passes
through it must carry that node's owner and ``last_seen``. A node whose owner and
``last_seen`` equal one of its children's is implied by that child's insert and is not
exported (an observed chain of 64 blocks is one entry, not 64). Entries are listed in a
post-order walk (a node after everything below it) that visits each implied node's
"covering" child last, so the right insert is the last one through every node, whatever the
timestamps. A value-less node between live ones (an invalidated replica's former prefix) is
exported as a *hole*: the receiver inserts a reserved sentinel owner there and removes it at
the end, leaving the node value-less exactly as on the exporter.

Complexity: export and digest are O(sum of path lengths of live value-bearing nodes); apply
is one ``observe`` per entry plus one ``invalidate`` per owner being replaced.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from typing import Any, Final

import attrs
import xxhash

from clusterrouting import ClusterRoutingError, InvalidRecordError
from clusterrouting._gojson import (
    GoJSONError,
    Pairs,
    loads,
)
from prefixcache._events import MAX_EVENT_CHAIN, MAX_NAME_BYTES
from prefixcache._protocols import SnapshotSource, SnapshotTarget
from prefixcache._types import ReplicaKey

__all__ = [
    "HOLE_OWNER",
    "MAX_SNAPSHOT_BYTES",
    "Snapshot",
    "SnapshotDecodeError",
    "SnapshotEntry",
    "apply_snapshot",
    "digest",
    "digests",
    "export_snapshot",
]

HOLE_OWNER: Final = ReplicaKey("\x00prefixcache-snapshot-hole", 0)
"""The reserved owner a receiver inserts at a hole for the duration of :func:`apply_snapshot`
(never a real node id: it starts with NUL)."""

_U64: Final = 1 << 64
_MAX_SNAPSHOT_ENTRIES: Final = 10_000_000
#: Largest snapshot payload :meth:`Snapshot.decode` parses by default (bytes).
MAX_SNAPSHOT_BYTES: Final = 256 * 2**20


def _check_chain(_inst: object, _attr: object, value: tuple[int, ...]) -> None:
    if type(value) is not tuple or not value or len(value) > MAX_EVENT_CHAIN:
        raise InvalidRecordError(
            "chain", value, f"must be a non-empty tuple of at most {MAX_EVENT_CHAIN} hashes"
        )
    for h in value:
        if type(h) is not int or not 0 <= h < _U64:
            raise InvalidRecordError("chain", value, f"holds {h!r}, not an int in [0, 2**64)")


def _check_owner(_inst: object, _attr: object, value: ReplicaKey | None) -> None:
    if value is not None and (not isinstance(value, ReplicaKey) or not value.node_id):
        raise InvalidRecordError("owner", value, "must be a ReplicaKey with a node id, or None")


def _check_age(_inst: object, _attr: object, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise InvalidRecordError("age", value, "must be a finite number >= 0 (seconds)")


def _check_model(_inst: object, _attr: object, value: str) -> None:
    if type(value) is not str:
        raise InvalidRecordError("model", value, "must be a str")


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return value if type(value) is tuple else tuple(value)


@attrs.frozen(kw_only=True)
class SnapshotEntry:
    """One insert to replay: ``owner`` observed ``chain`` of ``model`` ``age`` seconds before
    the export; ``owner=None`` marks a hole (a value-less node on the exporter)."""

    model: str = attrs.field(validator=_check_model)
    chain: tuple[int, ...] = attrs.field(converter=_to_tuple, validator=_check_chain)
    owner: ReplicaKey | None = attrs.field(validator=_check_owner)
    age: float = attrs.field(validator=_check_age)


def _check_entries(_inst: object, _attr: object, value: tuple[SnapshotEntry, ...]) -> None:
    for e in value:
        if not isinstance(e, SnapshotEntry):
            raise InvalidRecordError("entries", e, "must hold SnapshotEntry records")


def _check_models(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    for m in value:
        if type(m) is not str:
            raise InvalidRecordError("models", m, "must hold str model names")


class SnapshotDecodeError(ClusterRoutingError, ValueError):
    """A snapshot payload could not be decoded; ``field`` names what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"snapshot field {field!r}: {reason}")


@attrs.frozen(kw_only=True)
class Snapshot:
    """A router's index as a replayable list of entries, in application order.

    Attributes:
        models: every model the exporter held a tree for (cleared by a replacing apply).
        entries: the inserts to replay, in order (see the module docstring).

    ``encode()`` gives compact JSON (``{"version":1,"models":[...],"entries":[[model index,
    chain, node_id or null, replica, age], ...]}``); ``Snapshot.decode`` validates it.
    """

    models: tuple[str, ...] = attrs.field(converter=_to_tuple, validator=_check_models)
    entries: tuple[SnapshotEntry, ...] = attrs.field(converter=_to_tuple, validator=_check_entries)

    def encode(self) -> bytes:
        """Compact UTF-8 JSON (see the class docstring)."""
        models = sorted(set(self.models) | {e.model for e in self.entries})
        index = {m: i for i, m in enumerate(models)}
        rows = [
            [
                index[e.model],
                list(e.chain),
                None if e.owner is None else e.owner.node_id,
                0 if e.owner is None else e.owner.replica,
                e.age,
            ]
            for e in self.entries
        ]
        doc = {"version": 1, "models": models, "entries": rows}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, payload: bytes, *, max_bytes: int = MAX_SNAPSHOT_BYTES) -> Snapshot:
        """Parse :meth:`encode` output.

        ``max_bytes`` bounds the payload before it is parsed (default
        :data:`MAX_SNAPSHOT_BYTES`, 256 MiB: a few million entries), so a hostile or corrupt
        peer cannot make the receiver allocate without limit.

        Text follows the rule of every decoder of network input (the sync events included):
        invalid UTF-8 bytes and escaped lone surrogates in model names and node ids decode to
        U+FFFD, so an applied snapshot can always be exported and encoded again.

        Raises:
            SnapshotDecodeError: ``payload`` is not bytes, is larger than ``max_bytes``, is
                not JSON of that shape (nesting deeper than 10000 levels included), or a field
                is invalid (a model name or node id longer than 1024 UTF-8 bytes, a hash
                outside ``[0, 2**64)`` or written ``-0``, a negative or non-finite age).
        """
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise SnapshotDecodeError("<payload>", f"must be bytes, not {type(payload).__name__}")
        if len(payload) > max_bytes:
            raise SnapshotDecodeError(
                "<payload>", f"{len(payload)} bytes is larger than max_bytes={max_bytes}"
            )
        try:
            parsed = loads(payload)
        except GoJSONError as exc:
            raise SnapshotDecodeError("<payload>", f"not UTF-8 JSON ({exc.reason})") from None
        doc = dict(parsed) if type(parsed) is Pairs else None
        version = None if doc is None else doc.get("version")
        if doc is None or type(version) is not int or version != 1:
            raise SnapshotDecodeError("version", "expected an object with version 1")
        models = doc.get("models")
        rows = doc.get("entries")
        if type(models) is not list or not all(
            type(m) is str and len(m.encode("utf-8")) <= MAX_NAME_BYTES for m in models
        ):
            raise SnapshotDecodeError("models", "must be a list of model names")
        if type(rows) is not list or len(rows) > _MAX_SNAPSHOT_ENTRIES:
            raise SnapshotDecodeError("entries", "must be a list of entries")
        entries = []
        for i, row in enumerate(rows):
            try:
                if type(row) is not list or len(row) != 5:
                    raise ValueError("must be [model, chain, node_id, replica, age]")
                mi, chain, node_id, replica, age = row
                if type(mi) is not int or not 0 <= mi < len(models):
                    raise ValueError(f"model index {mi!r} out of range")
                if type(chain) is not list:
                    raise ValueError("chain must be a list")
                if node_id is not None and (
                    type(node_id) is not str or len(node_id.encode("utf-8")) > MAX_NAME_BYTES
                ):
                    raise ValueError("node_id must be a str of at most 1024 UTF-8 bytes")
                if type(replica) is not int:
                    raise ValueError(f"replica {replica!r} is not an integer")
                owner = None if node_id is None else ReplicaKey(node_id, replica)
                if isinstance(age, int) and not isinstance(age, bool):
                    age = float(age)
                entries.append(
                    SnapshotEntry(model=models[mi], chain=tuple(chain), owner=owner, age=age)
                )
            except (ValueError, TypeError) as exc:
                raise SnapshotDecodeError(f"entries[{i}]", str(exc)) from exc
        return cls(models=tuple(models), entries=tuple(entries))


def _tree_ttl(tree: Any) -> float:
    ttl = getattr(tree, "ttl", 0.0)
    return float(ttl) if isinstance(ttl, int | float) else 0.0


def _live_nodes(tree: Any, now: float) -> dict[tuple[int, ...], tuple[ReplicaKey, float]]:
    ttl = _tree_ttl(tree)
    live: dict[tuple[int, ...], tuple[ReplicaKey, float]] = {}
    for path, value, last_seen in list(tree.items()):
        if ttl > 0 and now - last_seen > ttl:
            continue
        live[tuple(path)] = (value, last_seen)
    return live


def _export_model(
    model: str, live: dict[tuple[int, ...], tuple[ReplicaKey, float]], now: float
) -> list[tuple[float, SnapshotEntry]]:
    children: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    newest: dict[tuple[int, ...], float] = {}  # a hole's stamp: its newest live descendant
    for path, (_, t) in live.items():
        for d in range(1, len(path) + 1):
            node = path[:d]
            if t > newest.get(node, -math.inf):
                newest[node] = t
    for node in newest:
        children.setdefault(node[:-1], []).append(node)
    for kids in children.values():
        kids.sort()

    def cover(node: tuple[int, ...]) -> tuple[int, ...] | None:
        state = live.get(node)
        if state is None:
            return None
        for kid in children.get(node, ()):
            if live.get(kid) == state:
                return kid
        return None

    out: list[tuple[float, SnapshotEntry]] = []
    # Iterative post-order; the covering child (if any) is visited last.
    stack: list[tuple[tuple[int, ...], bool]] = [(r, False) for r in reversed(children.get((), []))]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            state = live.get(node)
            if state is None:
                t, owner = newest[node], None
            elif cover(node) is not None:
                continue
            else:
                owner, t = state
            age = max(0.0, now - t)
            out.append((t, SnapshotEntry(model=model, chain=node, owner=owner, age=age)))
            continue
        stack.append((node, True))
        kids = children.get(node, [])
        c = cover(node)
        ordered = [k for k in kids if k != c] + ([c] if c is not None else [])
        for kid in reversed(ordered):
            stack.append((kid, False))
    return out


def export_snapshot(source: SnapshotSource, *, now: float) -> Snapshot:
    """Export ``source`` (an ``Index``; a ``Sync`` is unwrapped) as a :class:`Snapshot` at
    ``now`` (the exporter's clock): live entries only, with ages relative to ``now``.

    >>> from prefixcache import Index, ReplicaKey
    >>> ix = Index()
    >>> _ = ix.observe("m", (1, 2, 3), ReplicaKey("a"), 10.0)
    >>> [(e.chain, e.owner.node_id, e.age) for e in export_snapshot(ix, now=12.0).entries]
    [((1, 2, 3), 'a', 2.0)]
    """
    source = _unwrap(source)
    models = sorted(source.models())
    timed: list[tuple[float, SnapshotEntry]] = []
    for model in models:
        tree = source.tree(model)
        if tree is None:
            continue
        timed.extend(_export_model(model, _live_nodes(tree, now), now))
    return Snapshot(models=tuple(models), entries=tuple(e for _, e in timed))


def apply_snapshot(
    target: SnapshotTarget, snapshot: Snapshot, *, now: float, replace: bool = True
) -> int:
    """Replay ``snapshot`` into ``target`` at ``now`` (the receiver's clock); return the number
    of entries replayed. Nothing is published (a ``Sync`` is unwrapped).

    With ``replace=True`` (the resync case) every owner of every model the target holds is
    invalidated first, so the target ends up answering exactly like the exporter (see the
    module docstring). With ``replace=False`` the entries are observed on top of the current
    state, as if they had arrived as messages ``age`` seconds ago.
    """
    target = _unwrap(target)
    if replace:
        for model in sorted(target.models()):
            tree = target.tree(model)
            if tree is None:
                continue
            owners = {value for _, value, _ in list(tree.items())}
            for owner in sorted(owners):
                target.invalidate(model, owner)
    holes: set[str] = set()
    for e in snapshot.entries:
        owner = e.owner
        if owner is None:
            owner = HOLE_OWNER
            holes.add(e.model)
        target.observe(e.model, e.chain, owner, now - e.age)
    for model in sorted(holes):
        target.invalidate(model, HOLE_OWNER)
    return len(snapshot.entries)


def digest(source: SnapshotSource, model: str, *, now: float) -> int:
    """A 64-bit digest of ``model``'s live ``(chain node, owner)`` pairs at ``now``; 0 for
    none. Order-independent (a sum of per-pair XXH3 hashes), insensitive to ``last_seen``:
    two routers that received the same events a few milliseconds apart agree.

    >>> from prefixcache import Index, ReplicaKey
    >>> a, b = Index(), Index()
    >>> _ = a.observe("m", (1, 2), ReplicaKey("x"), 1.0)
    >>> _ = b.observe("m", (1, 2), ReplicaKey("x"), 1.5)
    >>> digest(a, "m", now=2.0) == digest(b, "m", now=2.0) != 0
    True
    """
    source = _unwrap(source)
    tree = source.tree(model)
    if tree is None:
        return 0
    total = 0
    for path, (owner, _) in _live_nodes(tree, now).items():
        node_id = owner.node_id.encode("utf-8", "surrogatepass")
        data = struct.pack(f"<I{len(path)}Qq", len(path), *path, owner.replica) + node_id
        total += xxhash.xxh3_64_intdigest(data)
    return total % _U64


def digests(source: SnapshotSource, *, now: float) -> dict[str, int]:
    """:func:`digest` of every model with at least one live entry (empty models omitted, so
    a router that never saw a model equals one whose entries all expired)."""
    source = _unwrap(source)
    out = {}
    for model in sorted(source.models()):
        d = digest(source, model, now=now)
        if d:
            out[model] = d
    return out


def _unwrap(obj: Any) -> Any:
    # A Sync (or any decorator exposing ``provider``) is read through to the index it wraps,
    # so snapshots never publish.
    seen = 0
    while not hasattr(obj, "tree") and hasattr(obj, "provider") and seen < 8:
        obj = obj.provider
        seen += 1
    return obj
