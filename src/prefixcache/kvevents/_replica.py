"""One replica's record: its blocks, its ``seq`` gaps, and the bookkeeping that applies events.

:class:`Replica` holds everything recorded about one replica key and tracks its sequence
numbers (gaps opened and filled); :class:`BlockLedger` applies stores, removals and clears
to a replica's tables and keeps the owner map shared by all replicas. Neither locks: the
owning :class:`~prefixcache.kvevents.KvResidency` guards both with its lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from xxhash import xxh64_intdigest

from prefixcache._chain import chain_of_bytes, model_salt
from prefixcache.kvevents._kvchain import (
    chain_with_extra,
    extra_keys_of,
    has_foreign_keys,
    namespace_root,
)
from prefixcache.kvevents._outcomes import Counts, ResidencyState
from prefixcache.kvevents._records import BlockRemoved, BlockStored

__all__ = ["CANON", "MAIN_KINDS", "REFS", "BlockLedger", "Replica"]

#: Open ``seq`` gaps tracked per replica; past it the oldest is given up (stays degraded).
_MAX_GAPS: Final = 64


# One engine block held by one replica in one (medium, group): a list, not a class (building
# it is a third of the ingest loop's cost otherwise), indexed by these names.
# REFS: copies stored and not yet removed; CANON: our hashes of its block_size // block_tokens
# sub-blocks (a tuple).
REFS: Final = 0
CANON: Final = 1
_Entry = list[Any]


#: The KV-cache kinds (vLLM's ``kv_cache_spec_kind``) a prefix hit needs: a hybrid model's
#: full-attention group. Sliding-window and state groups keep only a suffix or a state.
MAIN_KINDS: Final = frozenset({"full_attention", "mla_attention", "sink_full_attention"})


# A store waiting for its parent: (seq, model, event).
_Deferred = tuple[int, str, BlockStored]
_Table = dict[int, _Entry]
_TableKey = tuple[str, int]


class Replica:
    """Everything recorded about one replica key (guarded by the residency's lock)."""

    __slots__ = (
        "bit",
        "catching_up",
        "deferred",
        "deferred_count",
        "ghosts",
        "high",
        "kind_dropped",
        "live_last",
        "main_group",
        "missing",
        "nblocks",
        "ncanon",
        "restarts",
        "routes",
        "shared",
        "slot",
        "tables",
        "tainted",
        "tombstones",
        "updated_at",
    )

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.bit = 1 << slot
        self.restarts = 0
        self.updated_at: float | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the blocks' bookkeeping and the sequence (the caller released the
        blocks' hashes from the residency's owner map first)."""
        # Per (medium, group): engine hash -> entry, in store order (the eviction order).
        self.tables: dict[_TableKey, _Table] = {}
        # Medium as on the wire, of stores without a group -> (table key, its table): one
        # lookup on the ingest path instead of two (only media routed on: a handful).
        self.routes: dict[str | None, tuple[_TableKey, _Table]] = {}
        self.nblocks = 0
        # Our hashes held: a hash held by one entry is only this replica's bit in the owner
        # map; one held by several also has its entry count here (a new block then costs
        # two dict operations, not four).
        self.shared: dict[int, int] = {}  # our hash -> entries holding it, when 2 or more
        self.ncanon = 0  # distinct hashes of ours held
        self.live_last = -1  # last seq received live (-1: none yet)
        self.high = -1  # highest seq applied
        self.missing: list[list[int]] = []  # sorted, disjoint [lo, hi] seq ranges
        self.tainted = False
        # The group indexed when the residency learns it (groups=None): the first group
        # whose stores name a main attention kind; None until one does.
        self.main_group: int | None = None
        # Whether the batch being applied dropped a whole block of ours for its group's kind
        # while no main group is known: if the batch names none, the engine's kinds are
        # not ones we index (nothing is), and the replica degrades.
        self.kind_dropped = False
        # Whether the batch being applied comes out of order (a gap is open or it fills
        # one): its removals are then counted against stores that may still arrive.
        self.catching_up = False
        # Parent engine hash -> the stores waiting for it (in any medium: a chain continues
        # across media, as a store's parent lookup does).
        self.deferred: dict[int, list[_Deferred]] = {}
        self.deferred_count = 0
        self.tombstones: dict[tuple[_TableKey, int], int] = {}
        # While a gap is open: engine hash -> our last hash of blocks removed meanwhile, so
        # that a replayed store of a child (stored, in the engine, before its parent was
        # removed) still continues the parent's chain.
        self.ghosts: dict[int, int] = {}

    def check(self, max_deferred: int) -> None:
        """Assert the sequence and waiting-event invariants (for tests): gaps sorted,
        disjoint, at most ``_MAX_GAPS``, within the highest ``seq`` applied; deferred
        stores, pending removals and remembered removed blocks each within
        ``max_deferred`` and all empty once no gap is open (``settle`` ran)."""
        prev_hi = -1  # gaps may touch: a replayed clear re-marks the highest seq missing
        for lo, hi in self.missing:
            assert prev_hi < lo <= hi <= self.high, (self.missing, self.high)
            prev_hi = hi
        assert len(self.missing) <= _MAX_GAPS
        assert sum(len(w) for w in self.deferred.values()) == self.deferred_count
        assert all(self.deferred.values())
        assert self.deferred_count <= max_deferred
        assert len(self.tombstones) <= max_deferred
        assert all(k >= 1 for k in self.tombstones.values())
        assert len(self.ghosts) <= max_deferred
        if not self.missing:
            assert not (self.deferred or self.tombstones or self.ghosts)

    def state(self) -> ResidencyState:
        if self.missing or self.tainted:
            return ResidencyState.DEGRADED
        return ResidencyState.EXACT

    def blocks(self) -> int:
        return self.nblocks

    def start(self, seq: int, replayed: bool, tally: Counts) -> None:
        """Take ``seq`` as the first batch seen (after a first sight or a restart)."""
        self.high = seq
        self.live_last = -1 if replayed else seq
        if seq > 0:
            self.open_gap(0, seq - 1, tally)

    def open_gap(self, lo: int, hi: int, tally: Counts) -> None:
        """Record ``[lo, hi]`` as missing (above every gap already open)."""
        tally["missed"] = tally.get("missed", 0) + hi - lo + 1
        self.missing.append([lo, hi])  # gaps open in increasing seq order
        if len(self.missing) > _MAX_GAPS:
            self.missing.pop(0)  # given up: those batches can no longer be told apart
            self.tainted = True

    def fill(self, seq: int) -> bool:
        """Mark ``seq`` as no longer missing; whether it was."""
        missing = self.missing
        for i, gap in enumerate(missing):
            lo, hi = gap
            if seq < lo:
                return False
            if seq <= hi:
                if lo == hi:
                    del missing[i]
                elif seq == lo:
                    gap[0] = lo + 1
                elif seq == hi:
                    gap[1] = hi - 1
                else:
                    gap[1] = seq - 1
                    missing.insert(i + 1, [seq + 1, hi])
                    if len(missing) > _MAX_GAPS:
                        missing.pop(0)
                        self.tainted = True
                return True
        return False

    def settle(self, tally: Counts) -> None:
        """Every gap is filled: what still waits can no longer be explained by a replay."""
        if self.deferred_count:
            tally["abandoned"] = tally.get("abandoned", 0) + self.deferred_count
            self.tainted = True
        self.deferred = {}
        self.deferred_count = 0
        self.tombstones = {}
        self.ghosts = {}


class BlockLedger:
    """Applies one replica's block events to its tables and to the owner map of all replicas.

    ``where`` maps each of our hashes held anywhere to the bitmask of the replica slots
    holding it. Not thread-safe by itself: the caller holds its lock around every call.
    """

    def __init__(
        self,
        *,
        block_tokens: int,
        media: frozenset[str],
        groups: frozenset[int] | None,
        max_blocks: int,
        max_deferred: int,
    ) -> None:
        self._bt = block_tokens
        self._media = media
        self._groups = groups
        self._max_blocks = max_blocks
        self._max_deferred = max_deferred
        self._resuming = False  # inside _resume: stores leave resuming their children to it
        self.where: dict[int, int] = {}  # our hash -> bitmask of replica slots holding it

    def drop_all(self, r: Replica) -> None:
        """Drop every block ``r`` holds (the sequence is left as it is)."""
        where = self.where
        bit = r.bit
        for table in r.tables.values():
            for e in table.values():
                for h in e[CANON]:
                    held = where.get(h, 0)
                    if held & bit:  # else a shared hash already released
                        if held ^ bit:
                            where[h] = held ^ bit
                        else:
                            del where[h]
        r.shared = {}
        r.ncanon = 0
        r.tables = {}
        r.routes = {}
        r.nblocks = 0
        r.deferred = {}
        r.deferred_count = 0
        r.tombstones = {}
        r.ghosts = {}

    def _release(self, r: Replica, canon: tuple[int, ...]) -> None:
        shared = r.shared
        where = self.where
        for h in canon:
            k = shared.get(h)
            if k is None:  # its last holder
                held = where[h] & ~r.bit
                if held:
                    where[h] = held
                else:
                    del where[h]
                r.ncanon -= 1
            elif k == 2:
                del shared[h]
            else:
                shared[h] = k - 1

    @staticmethod
    def _holds(r: Replica, engine_hash: int) -> bool:
        """Whether ``r`` holds (or, while a gap is open, held) the engine block."""
        return engine_hash in r.ghosts or any(engine_hash in t for t in r.tables.values())

    def _table_key(
        self, r: Replica, medium: str | None, group: int | None, *, waiting: bool = False
    ) -> _TableKey | None:
        """The table an event of ``(medium, group)`` goes to, ``None`` if not indexed. While
        ``r``'s main group is not known, group 0's (an engine that names no kinds), and
        with ``waiting`` (a removal while a gap is being filled) any group's: a replayed
        store may yet name that group main, and the removal waits for it (if none does,
        it waited for nothing)."""
        m = "GPU" if medium is None else medium
        g = 0 if group is None else group
        if m not in self._media:
            return None
        groups = self._groups
        if groups is not None:
            return (m, g) if g in groups else None
        main = r.main_group
        if main is None:
            return (m, g) if waiting or g == 0 else None
        return (m, g) if g == main else None

    def _store_key(self, r: Replica, ev: BlockStored) -> _TableKey | None:
        """:meth:`_table_key` for a store, which may name ``r``'s main group first: the first
        store whose ``kv_cache_spec_kind`` is a main kind does (learned per replica when
        ``groups`` is ``None``). A store of another kind while none is known is not indexed."""
        kind = ev.kv_cache_spec_kind
        learning = kind is not None and self._groups is None and r.main_group is None
        if learning and (ev.medium or "GPU") in self._media:
            if kind not in MAIN_KINDS:
                if len(ev.token_ids) >= self._bt:
                    r.kind_dropped = True
                return None
            self._learn_main(r, 0 if ev.group_idx is None else ev.group_idx)
        return self._table_key(r, ev.medium, ev.group_idx)

    def _learn_main(self, r: Replica, group: int) -> None:
        """Make ``group`` ``r``'s main group; blocks indexed from other groups before (stores
        that named no kind) are dropped, as that group's later events will be."""
        r.main_group = group
        for tk in [tk for tk in r.tables if tk[1] != group]:
            for e in r.tables.pop(tk).values():
                self._release(r, e[CANON])
                r.nblocks -= 1
        r.routes = {m: route for m, route in r.routes.items() if route[0][1] == group}

    def store(self, r: Replica, seq: int, model: str, ev: BlockStored, tally: Counts) -> int:
        """Apply one store; returns the engine blocks stored (0: dropped or deferred, and
        counted in ``tally``; the caller counts applied stores and blocks)."""
        medium, group = ev.medium, ev.group_idx
        # The route of group-less stores skips the key's lookup; a store naming a kind
        # takes the lookup, which may learn the main group from it.
        route = r.routes.get(medium) if group is None and ev.kv_cache_spec_kind is None else None
        if route is None:
            tk = self._store_key(r, ev)
            if tk is None:
                if (medium or "GPU") not in self._media:
                    tally["dropped_medium"] = tally.get("dropped_medium", 0) + 1
                else:
                    tally["dropped_group"] = tally.get("dropped_group", 0) + 1
                return 0
            table = r.tables.get(tk)
        else:
            tk, table = route
        hashes = ev.block_hashes
        n = len(hashes)
        size = ev.block_size
        bt = self._bt
        if n == 0 or size == 0 or len(ev.token_ids) != n * size:
            tally["dropped_tokens"] = tally.get("dropped_tokens", 0) + 1
            if len(ev.token_ids) >= bt:  # a whole block of ours was there, and is not held
                r.tainted = True
            return 0
        parent = ev.parent_block_hash
        if size % bt:
            tally["dropped_block_size"] = tally.get("dropped_block_size", 0) + 1
            # As above, also for pages shorter than our block that continue a chain we do
            # not hold (SGLang sends a page per event): only a last page after a held block,
            # or a prompt's only page, holds no block of ours.
            if n * size >= bt or (parent is not None and not self._holds(r, parent)):
                r.tainted = True
            return 0
        if (n > 1 and len(set(hashes)) != n) or (parent is not None and parent in hashes):
            tally["dropped_self_reference"] = tally.get("dropped_self_reference", 0) + 1
            return 0
        extra = ev.extra_keys
        lora = ev.lora_name
        if parent is None:
            if lora is None and not (extra and extra[0]):
                prev = model_salt(model)
            else:
                keys0: tuple[object, ...] = ()
                if extra and extra[0]:
                    keys0 = extra_keys_of(extra[0], lora)
                prev = namespace_root(model, lora, keys0)
        else:
            pe = None if table is None else table.get(parent)
            if pe is None:
                # The parent may live in another medium (a GPU block whose prefix was
                # offloaded to the CPU): the chain is the same.
                pe = next((t[parent] for t in r.tables.values() if parent in t), None)
            if pe is not None:
                prev = pe[CANON][-1]
            elif parent in r.ghosts:
                prev = r.ghosts[parent]
            else:
                self._orphan(r, parent, seq, model, ev, tally)
                return 0
        if table is None:
            table = r.tables[tk] = {}
        if route is None and group is None and ev.kv_cache_spec_kind is None:
            r.routes[medium] = (tk, table)
        per = size // bt
        data = ev.token_bytes
        shared = r.shared
        where = self.where
        bit = r.bit
        if n == 1 and per == 1 and extra is None:
            # One block of ours (a decode step completing a block): the loop below, unrolled.
            # Saves ~3.7k instructions per such event (callgrind: 1-block ingest, apply
            # 79.0k -> 64.1k per batch of 4); tests/property/test_kvevents_one_block_path.py
            # fails if it drifts from the loop.
            h = hashes[0]
            e = table.get(h)
            if e is None:
                c = xxh64_intdigest(prev.to_bytes(8, "little") + data)
                table[h] = [1, (c,)]  # REFS, CANON
                r.nblocks += 1
                held = where.get(c, 0)
                if held & bit:
                    shared[c] = shared.get(c, 1) + 1
                else:
                    where[c] = held | bit
                    r.ncanon += 1
            else:
                e[REFS] += 1
        else:
            width = 4 * bt
            if extra is None or not has_foreign_keys(extra, lora, parent is None):
                canon = chain_of_bytes(prev, data, width, n * per)
            else:
                canon = chain_with_extra(prev, data, width, per, extra, lora, parent is None)
            added = fresh = 0
            for i, h in enumerate(hashes):
                e = table.get(h)
                if e is None:
                    sub = canon[i * per : (i + 1) * per] if per > 1 else (canon[i],)
                    table[h] = [1, sub]  # REFS, CANON
                    added += 1
                    for c in sub:
                        held = where.get(c, 0)
                        if held & bit:
                            shared[c] = shared.get(c, 1) + 1
                        else:
                            where[c] = held | bit
                            fresh += 1
                else:
                    e[REFS] += 1
            r.nblocks += added
            r.ncanon += fresh
        if r.tombstones:
            for h in hashes:
                self._apply_tombstone(r, tk, table, h, tally)
        if r.nblocks > self._max_blocks:
            self._evict(r, tally)
        if r.deferred and not self._resuming:
            self._resume(r, hashes, tally)
        return n

    def _resume(self, r: Replica, hashes: Iterable[int], tally: Counts) -> None:
        """Apply the stores that waited for one of ``hashes`` as their parent (and, in
        turn, those waiting for theirs), depth-first.

        An explicit stack, not nested calls: a chain of waiting stores can be
        ``max_deferred`` long (a decode stream completing a block per batch while a gap is
        open), far past Python's recursion limit. The stack holds engine hashes whose
        waiting stores are still to be looked up, and waiting stores still to be applied;
        ``_resuming`` stops :meth:`store` from resuming by itself meanwhile.
        """
        stack: list[int | _Deferred] = list(hashes)
        self._resuming = True
        try:
            while stack:
                item = stack.pop()
                if isinstance(item, int):
                    waiting = r.deferred.pop(item, None) if r.deferred else None
                    if waiting:
                        r.deferred_count -= len(waiting)
                        stack.extend(reversed(waiting))  # applied in arrival order
                    continue
                wseq, wmodel, wev = item
                n = self.store(r, wseq, wmodel, wev, tally)
                if n:
                    tally["resumed"] = tally.get("resumed", 0) + 1
                    tally["applied_stores"] = tally.get("applied_stores", 0) + 1
                    tally["stored_blocks"] = tally.get("stored_blocks", 0) + n
                    stack.extend(wev.block_hashes)
        finally:
            self._resuming = False

    def _orphan(
        self,
        r: Replica,
        parent: int,
        seq: int,
        model: str,
        ev: BlockStored,
        tally: Counts,
    ) -> None:
        if r.missing and r.deferred_count < self._max_deferred:
            r.deferred.setdefault(parent, []).append((seq, model, ev))
            r.deferred_count += 1
            tally["deferred"] = tally.get("deferred", 0) + 1
        else:
            tally["dropped_orphan"] = tally.get("dropped_orphan", 0) + 1
            r.tainted = True

    def _apply_tombstone(
        self, r: Replica, tk: _TableKey, table: _Table, h: int, tally: Counts
    ) -> None:
        pending = r.tombstones.pop((tk, h), 0)
        while pending and h in table:
            pending -= 1
            self._remove_one(r, tk, table, h, True)  # a removal seen before this store
            tally["removed_blocks"] = tally.get("removed_blocks", 0) + 1
        if pending:
            r.tombstones[(tk, h)] = pending

    def _remove_one(
        self, r: Replica, tk: _TableKey, table: _Table, h: int, keep_ghost: bool
    ) -> None:
        e = table[h]
        e[REFS] -= 1
        if e[REFS] == 0:
            del table[h]
            r.nblocks -= 1
            self._release(r, e[CANON])
            if keep_ghost and len(r.ghosts) < self._max_deferred:
                r.ghosts[h] = e[CANON][-1]

    def remove(self, r: Replica, ev: BlockRemoved, tally: Counts) -> None:
        """Apply one removal (counted in ``tally``)."""
        tk = self._table_key(r, ev.medium, ev.group_idx, waiting=r.catching_up)
        if tk is None:
            if (ev.medium or "GPU") not in self._media:
                tally["dropped_medium"] = tally.get("dropped_medium", 0) + 1
            else:
                tally["dropped_group"] = tally.get("dropped_group", 0) + 1
            return
        table = r.tables.get(tk)
        for h in ev.block_hashes:
            if table is not None and h in table:
                self._remove_one(r, tk, table, h, r.catching_up)
                tally["removed_blocks"] = tally.get("removed_blocks", 0) + 1
            else:
                tally["unknown_removals"] = tally.get("unknown_removals", 0) + 1
                if r.catching_up:
                    # Its store may be in a batch not applied yet: the removal waits for it.
                    key = (tk, h)
                    if key in r.tombstones or len(r.tombstones) < self._max_deferred:
                        r.tombstones[key] = r.tombstones.get(key, 0) + 1
                    else:
                        r.tainted = True
        tally["applied_removes"] = tally.get("applied_removes", 0) + 1

    def clear(self, r: Replica, seq: int, tally: Counts) -> None:
        """Apply an ``AllBlocksCleared`` of batch ``seq`` (counted in ``tally``)."""
        tally["applied_clears"] = tally.get("applied_clears", 0) + 1
        if r.nblocks:
            tally["cleared_blocks"] = tally.get("cleared_blocks", 0) + r.nblocks
        self.drop_all(r)
        if seq >= r.high:  # in order: everything held was stored before the clear
            r.missing = []
        else:
            # A replayed clear: the later batches were applied before it, so what they
            # stored is mixed with what it cleared. Their seqs are missing again; the replay
            # that brought the clear brings them next (it sends every seq from its start).
            already = sum(hi - max(lo, seq + 1) + 1 for lo, hi in r.missing if hi > seq)
            tally["missed"] = tally.get("missed", 0) + r.high - seq - already
            r.missing = [[seq + 1, r.high]]
        r.tainted = False

    def _evict(self, r: Replica, tally: Counts) -> None:
        # Oldest stored first, table by table (one medium's table is usually all there is).
        for table in r.tables.values():
            while table and r.nblocks > self._max_blocks:
                e = table.pop(next(iter(table)))
                r.nblocks -= 1
                self._release(r, e[CANON])
                tally["evicted_blocks"] = tally.get("evicted_blocks", 0) + 1
            if r.nblocks <= self._max_blocks:
                return
