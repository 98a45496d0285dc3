"""The exact, multi-owner record of which replica holds which KV blocks, from engine events.

Blocks are identified by **our** chain, never by the engine's hash: each stored block's
``token_ids`` are re-hashed with :func:`prefixcache.extract_token_chain`'s scheme, continued
from the canonical hash of its parent block, so the record never depends on the engine's hash
algorithm, seed or pickle behaviour. The engine hash is kept only as a foreign key, to find a
child's parent and to apply removals (as llm-d and Dynamo do).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from clusterrouting import InvalidRecordError
from prefixcache._chain import TokenIds
from prefixcache._keys import check_callable
from prefixcache._types import ReplicaKey
from prefixcache.kvevents._kvchain import extract_kv_chain
from prefixcache.kvevents._outcomes import (
    Counts,
    IngestReport,
    ResidencyState,
    ResidencyStatus,
    make_report,
)
from prefixcache.kvevents._records import BlockRemoved, BlockStored, EventBatch
from prefixcache.kvevents._replica import CANON, REFS, BlockLedger, Replica

__all__ = [
    "DEFAULT_MAX_BLOCKS_PER_REPLICA",
    "DEFAULT_MAX_DEFERRED",
    "DEFAULT_MAX_REPLICAS",
    "KvResidency",
]

#: Engine blocks recorded per replica (one GPU's KV cache holds 10k-100k blocks of 16
#: tokens; CPU offload more). Past it the oldest stored blocks are forgotten and counted.
DEFAULT_MAX_BLOCKS_PER_REPLICA: Final = 1 << 20
#: Replicas recorded at once; batches of further replicas are refused and counted.
DEFAULT_MAX_REPLICAS: Final = 4096
#: Orphan stores and unknown removals held per replica while a ``seq`` gap is open, waiting
#: for the replay that brings their parents / blocks; past it they are dropped.
DEFAULT_MAX_DEFERRED: Final = 65_536
_SEQ_END: Final = 1 << 64


def _check_positive(name: str, value: object) -> int:
    if type(value) is not int or value <= 0:
        raise InvalidRecordError(name, value, "must be an int > 0")
    return value


def _keys_of(candidates: Iterable[object]) -> list[ReplicaKey]:
    keys: list[ReplicaKey] = []
    for c in candidates:
        key = getattr(c, "key", None)
        if not isinstance(key, ReplicaKey):
            raise InvalidRecordError(
                "candidates", c, "must hold ReplicaKeys or records with a ReplicaKey .key"
            )
        keys.append(key)
    return keys


class KvResidency:
    """Which replica holds which KV blocks, exactly, from the engines' event batches.

    One :class:`ReplicaKey` per engine data-parallel rank (the host maps its endpoints to
    keys). Each batch is applied with :meth:`apply`; routing asks :meth:`overlap` (or
    :meth:`overlap_chain`) how many leading full blocks of a prompt each candidate holds,
    and :meth:`state` whether a replica's record can be trusted.

    Identity of a block: our chain (see :func:`extract_kv_chain`). A ``BlockStored`` at the
    root (no parent) starts from the namespace of its ``lora_name`` and of the first block's
    extra keys other than the adapter name (vLLM puts the request's ``cache_salt`` there),
    so a request queried with the same ``lora_name`` and ``cache_salt`` matches it; a store
    with a parent continues from the parent's canonical hash. A block whose extra keys hold
    anything else (multimodal ids) mixes them into its hash: token ids alone never match it.
    Engine blocks of ``k * block_tokens`` tokens become ``k`` of our blocks; other sizes are
    dropped and counted, and a dropped store that held a whole block of ours, or continues a
    chain through a block not held, degrades the replica (``block_tokens`` must divide every
    block size the engine sends: SGLang's page size, vLLM's ``--block-size``).

    Bookkeeping per replica (see :class:`IngestReport` for every outcome):

    * a refcount per (medium, group, engine hash): a block stored twice needs two removes;
      our hash is held while any engine block holding it is;
    * ``seq``: live batches must increase; one that does not is a publisher restart (the
      replica's blocks are dropped first); a jump opens a gap (``degraded``); replayed
      batches (``replayed=True``) fill gaps, are applied once (a ``seq`` already applied is a
      duplicate and changes nothing) and are never a restart. While a gap is open (and in
      the batch that closes it), a store whose parent is unknown and a removal of an
      unknown block wait (bounded) for the replay that may explain them, and a removed
      block's place in the chain is remembered for the children a replay may still bring,
      so gaps filled by replays, in any order, end as in-order delivery would. Waiting
      removals are matched by count, not by position: exact for an engine's stream, but a
      removal of a block we never held (its store dropped, or evicted by our cap) may
      instead take away a copy the engine stored after it;
    * ``AllBlocksCleared`` drops every block and resets the replica to ``exact``. A
      replayed clear (below the highest ``seq`` applied) drops every block too and marks
      the batches after it missing again: they were applied out of order around it, and
      the replay that brought it (which sends every ``seq`` from its start on) brings them
      next.

    Memory is bounded: at most ``max_replicas`` replicas, ``max_blocks_per_replica`` engine
    blocks each (oldest stored forgotten first), ``max_deferred`` waiting stores, as many
    blocks with waiting removals and as many remembered removed blocks each (what no longer
    fits degrades the replica until a clear, at the latest when it would have been used), 64
    open gaps each; the engine-hash map holds exactly the blocks held.

    Thread-safe: one lock guards everything; :meth:`apply` holds it for one batch,
    :meth:`overlap` for one chain walk. Callers never block on I/O here.

    Args:
        block_tokens: tokens per block of ours (> 0), the granularity of :meth:`overlap`.
        media: the media routed on (``None`` on the wire counts as ``"GPU"``).
        groups: the KV-cache groups indexed (``None`` on the wire counts as 0), or ``None``
            (the default): per replica, the first group whose stores say they cache full
            attention (``kv_cache_spec_kind`` in ``MAIN_KINDS``, vLLM since PR #40984; a
            hybrid model's group 0 may be a sliding window or a state), or group 0 while the
            engine does not say; a batch of stores naming only other kinds while no group
            is known degrades the replica.
        max_blocks_per_replica: engine blocks kept per replica (> 0).
        max_replicas: replicas recorded (> 0).
        max_deferred: waiting stores, blocks with waiting removals and remembered removed
            blocks per replica, each (> 0).
        clock: wall clock for ``ResidencyStatus.updated_at`` (batches cross processes), read
            once per :meth:`apply` unless ``now=`` is given.

    Raises (constructor):
        InvalidRecordError: a bad argument.

    >>> from prefixcache import ReplicaKey
    >>> from prefixcache.kvevents import BlockStored, EventBatch
    >>> res = KvResidency(block_tokens=2)
    >>> a, b = ReplicaKey("a"), ReplicaKey("b")
    >>> batch = EventBatch(ts=0.0, events=[BlockStored(
    ...     block_hashes=[11, 12], parent_block_hash=None, token_ids=[1, 2, 3, 4],
    ...     block_size=2)])
    >>> res.apply(a, 0, batch, model="m").stored_blocks
    2
    >>> res.overlap("m", [1, 2, 3, 4, 5, 6], [a, b]) == {a: 2, b: 0}
    True
    >>> str(res.state(a)), str(res.state(b))
    ('exact', 'unknown')
    """

    def __init__(
        self,
        *,
        block_tokens: int = 16,
        media: Iterable[str] = frozenset({"GPU"}),
        groups: Iterable[int] | None = None,
        max_blocks_per_replica: int = DEFAULT_MAX_BLOCKS_PER_REPLICA,
        max_replicas: int = DEFAULT_MAX_REPLICAS,
        max_deferred: int = DEFAULT_MAX_DEFERRED,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bt = _check_positive("block_tokens", block_tokens)
        self._max_blocks = _check_positive("max_blocks_per_replica", max_blocks_per_replica)
        self._max_replicas = _check_positive("max_replicas", max_replicas)
        self._max_deferred = _check_positive("max_deferred", max_deferred)
        if isinstance(media, str):
            raise InvalidRecordError("media", media, "must be a collection of str, not a str")
        self._media = frozenset(media)
        if not self._media:  # no medium routed on: every stored block would be ignored
            raise InvalidRecordError("media", media, "must name at least one medium")
        for m in self._media:
            if type(m) is not str:
                raise InvalidRecordError("media", media, f"holds {m!r}, not a str")
        self._groups = None if groups is None else frozenset(groups)
        for g in self._groups or ():
            if type(g) is not int or g < 0:
                raise InvalidRecordError("groups", groups, f"holds {g!r}, not an int >= 0")
        check_callable("clock", clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._replicas: dict[ReplicaKey, Replica] = {}
        self._free_slots: list[int] = []
        self._ledger = BlockLedger(
            block_tokens=self._bt,
            media=self._media,
            groups=self._groups,
            max_blocks=self._max_blocks,
            max_deferred=self._max_deferred,
        )
        self._where = self._ledger.where  # the same dict: read by the queries

    # ------------------------------------------------------------------ properties
    @property
    def block_tokens(self) -> int:
        """Tokens per block of ours."""
        return self._bt

    @property
    def media(self) -> frozenset[str]:
        """The media routed on."""
        return self._media

    # ------------------------------------------------------------------ queries
    def state(self, replica: ReplicaKey) -> ResidencyState:
        """The replica's :class:`ResidencyState` (``unknown`` for a key never seen)."""
        with self._lock:
            r = self._replicas.get(replica)
            return ResidencyState.UNKNOWN if r is None else r.state()

    def status(self, replica: ReplicaKey) -> ResidencyStatus:
        """A snapshot of the replica's record (state, sizes, sequence, last update)."""
        with self._lock:
            r = self._replicas.get(replica)
            if r is None:
                return ResidencyStatus(state=ResidencyState.UNKNOWN)
            return ResidencyStatus(
                state=r.state(),
                blocks=r.blocks(),
                canonical_blocks=r.ncanon,
                last_seq=r.high if r.high >= 0 else None,
                missing=sum(hi - lo + 1 for lo, hi in r.missing),
                restarts=r.restarts,
                updated_at=r.updated_at,
            )

    def replicas(self) -> frozenset[ReplicaKey]:
        """The replica keys recorded (any state but ``unknown``)."""
        with self._lock:
            return frozenset(self._replicas)

    def missing_from(self, replica: ReplicaKey) -> int | None:
        """The first missing ``seq`` of the replica (where a replay should start), or
        ``None`` when no gap is open (or the replica is unknown)."""
        with self._lock:
            r = self._replicas.get(replica)
            if r is None or not r.missing:
                return None
            return r.missing[0][0]

    def chain(
        self,
        model: str,
        token_ids: TokenIds,
        *,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> tuple[int, ...]:
        """:func:`extract_kv_chain` at this residency's ``block_tokens``, full blocks only.

        Compute it once per request and pass it to :meth:`overlap_chain`; without
        ``lora_name`` and ``cache_salt`` it equals ``extract_token_chain(model, token_ids,
        block_tokens=self.block_tokens)`` (minus a trailing partial block), which an
        :class:`~prefixcache.Index` keyed by token chains can share.
        """
        n = len(token_ids) // self._bt
        if n == 0:
            if type(model) is not str:
                raise InvalidRecordError("model", model, "must be a str")
            return ()
        return extract_kv_chain(
            model,
            token_ids,
            block_tokens=self._bt,
            lora_name=lora_name,
            cache_salt=cache_salt,
            max_depth=n,
        )

    def overlap(
        self,
        model: str,
        token_ids: TokenIds,
        candidates: Sequence[object],
        *,
        lora_name: str | None = None,
        cache_salt: str | None = None,
    ) -> dict[ReplicaKey, int]:
        """For each candidate, how many leading full blocks of ``token_ids`` it holds.

        ``overlap_chain(self.chain(model, token_ids, ...), candidates)``.

        Args:
            model: the model name.
            token_ids: the prompt's token ids.
            candidates: :class:`ReplicaKey` values, or records with a ``.key`` that is one
                (``Candidate``, ``CostCandidate``).
            lora_name: the request's adapter, ``None`` for the base model.
            cache_salt: the request's ``cache_salt``, ``None`` for none.

        Returns:
            ``{key: blocks}`` for every candidate (0 when it holds none or is unknown);
            tokens held are ``blocks * block_tokens``.

        Raises:
            InvalidRecordError: bad token ids, model, adapter or salt; a candidate without a
                ReplicaKey.

        Complexity: O(len(token_ids)) to hash, then as :meth:`overlap_chain`.
        """
        return self.overlap_chain(
            self.chain(model, token_ids, lora_name=lora_name, cache_salt=cache_salt),
            candidates,
        )

    def overlap_chain(
        self, chain: Sequence[int], candidates: Sequence[object]
    ) -> dict[ReplicaKey, int]:
        """For each candidate, how many leading blocks of ``chain`` it holds.

        ``chain`` comes from :meth:`chain` or :func:`extract_kv_chain` (or, for requests
        without adapter or salt, from ``extract_token_chain`` at the same ``block_tokens``),
        so a request is hashed once for this and for an :class:`~prefixcache.Index`.

        Algorithm: one walk down the chain with a bitmask of the candidates still matching;
        each step is one dict lookup and an AND, whatever the number of candidates.

        Returns:
            ``{key: blocks}`` for every candidate (duplicates collapse), 0 for unknown keys.

        Complexity: O(len(chain) + len(candidates)).
        """
        keys = _keys_of(candidates)
        out = dict.fromkeys(keys, 0)
        with self._lock:
            replicas = self._replicas
            bits: list[tuple[int, ReplicaKey]] = []
            alive = 0
            for key in out:
                r = replicas.get(key)
                if r is not None:
                    bits.append((r.bit, key))
                    alive |= r.bit
            if not alive:
                return out
            where = self._where
            depth = 0
            for h in chain:
                held = where.get(h, 0) & alive
                if held != alive:
                    gone = alive ^ held
                    for bit, key in bits:
                        if gone & bit:
                            out[key] = depth
                    alive = held
                    if not alive:
                        return out
                depth += 1
            for bit, key in bits:
                if alive & bit:
                    out[key] = depth
        return out

    # ------------------------------------------------------------------ mutation
    def forget(self, replica: ReplicaKey) -> int:
        """Drop everything recorded about ``replica`` (it is ``unknown`` afterwards).

        For a replica removed from the pool, or whose event stream the host lost.

        Returns:
            The engine blocks dropped.
        """
        with self._lock:
            r = self._replicas.pop(replica, None)
            if r is None:
                return 0
            dropped = r.blocks()
            self._ledger.drop_all(r)
            self._free_slots.append(r.slot)
            return dropped

    def apply(
        self,
        replica: ReplicaKey,
        seq: int,
        batch: EventBatch,
        *,
        model: str,
        replayed: bool = False,
        now: float | None = None,
    ) -> IngestReport:
        """Apply one event batch published by ``replica`` with sequence number ``seq``.

        Sequence rules (per replica key): a live batch must have a ``seq`` above the last
        live one, else the publisher restarted and everything held is dropped first; a
        ``seq`` beyond the highest applied + 1 opens a gap. A replayed batch
        (``replayed=True``, fetched again through the engine's replay socket) fills a gap
        when its ``seq`` is missing, is a duplicate (nothing changes) when its ``seq`` was
        applied, and is never a restart. Then the events are applied in order (see
        :class:`KvResidency` and :class:`IngestReport`).

        Args:
            replica: the publishing engine rank's key.
            seq: the message's sequence number (int in ``[0, 2**64)``).
            batch: the decoded batch.
            model: the model the engine serves (salts our chain).
            replayed: whether the batch came from a replay request.
            now: the wall-clock time to stamp (default: the clock).

        Returns:
            An :class:`IngestReport`.

        Raises:
            InvalidRecordError: a bad argument (never for the batch's content: bad content
                is dropped and counted).

        Complexity: O(tokens + blocks in the batch); a restart or clear O(blocks held).
        """
        if not isinstance(replica, ReplicaKey):
            raise InvalidRecordError("replica", replica, "must be a ReplicaKey")
        if type(seq) is not int or not 0 <= seq < _SEQ_END:
            raise InvalidRecordError("seq", seq, "must be an int in [0, 2**64)")
        if not isinstance(batch, EventBatch):
            raise InvalidRecordError("batch", batch, "must be an EventBatch")
        if type(model) is not str:
            raise InvalidRecordError("model", model, "must be a str")
        if now is None:
            now = self._clock()
        tally: Counts = {}
        restarted = False
        with self._lock:
            r = self._replicas.get(replica)
            if r is None:
                if len(self._replicas) >= self._max_replicas:
                    return make_report(ResidencyState.UNKNOWN, tally, refused=True)
                r = self._new_replica(replica)
                r.start(seq, replayed, tally)
            elif not replayed and seq <= r.live_last:
                restarted = True
                if r.nblocks:
                    tally["cleared_blocks"] = tally.get("cleared_blocks", 0) + r.nblocks
                self._ledger.drop_all(r)
                r.reset()
                r.restarts += 1
                r.start(seq, replayed, tally)
            elif seq > r.high:
                if seq > r.high + 1:
                    r.open_gap(r.high + 1, seq - 1, tally)
                r.high = seq
                if not replayed:
                    r.live_last = seq
            elif r.fill(seq):
                tally["filled"] = 1
                if not replayed:
                    r.live_last = seq
            else:
                if not replayed:
                    r.live_last = seq
                return make_report(r.state(), tally, duplicate=True)
            # Out of order while a gap is open, or filling one (this batch may close it).
            r.catching_up = bool(r.missing) or "filled" in tally
            r.updated_at = now
            if batch.dropped:
                tally["decode_dropped"] = batch.dropped
                r.tainted = True
            ledger = self._ledger
            store = ledger.store
            stores = blocks = 0
            for event in batch.events:
                cls = type(event)
                if cls is BlockStored:
                    n = store(r, seq, model, event, tally)  # type: ignore[arg-type]
                    if n:
                        stores += 1
                        blocks += n
                elif cls is BlockRemoved:
                    ledger.remove(r, event, tally)  # type: ignore[arg-type]
                else:
                    ledger.clear(r, seq, tally)
            if stores:
                tally["applied_stores"] = tally.get("applied_stores", 0) + stores
                tally["stored_blocks"] = tally.get("stored_blocks", 0) + blocks
            if r.kind_dropped:  # blocks of kinds not indexed, and no main group named
                r.kind_dropped = False
                if r.main_group is None:
                    r.tainted = True
            if not r.missing and (r.deferred or r.tombstones or r.ghosts):
                r.settle(tally)
            return make_report(r.state(), tally, restarted=restarted)

    def _check(self) -> None:
        """Assert the internal invariants (for tests): each replica's shared counts and
        distinct count match the entries' hashes, the owner map holds exactly the held
        hashes with the right bits, block counts match, slots are distinct, and each
        replica's gaps and waiting events are well formed and bounded
        (:meth:`Replica.check`)."""
        with self._lock:
            expected: dict[int, int] = {}
            slots = set()
            for r in self._replicas.values():
                assert r.slot not in slots
                slots.add(r.slot)
                assert r.bit == 1 << r.slot
                counts: dict[int, int] = {}
                n = 0
                for table in r.tables.values():
                    for e in table.values():
                        assert e[REFS] >= 1
                        n += 1
                        for h in e[CANON]:
                            counts[h] = counts.get(h, 0) + 1
                assert n == r.nblocks, (n, r.nblocks)
                for tk, table in r.routes.values():
                    assert r.tables[tk] is table
                assert {h: k for h, k in counts.items() if k > 1} == r.shared
                assert len(counts) == r.ncanon
                for h in counts:
                    expected[h] = expected.get(h, 0) | r.bit
                r.check(self._max_deferred)
            assert expected == self._where
            assert not slots & set(self._free_slots)

    # ------------------------------------------------------------------ internals
    def _new_replica(self, key: ReplicaKey) -> Replica:
        slot = self._free_slots.pop() if self._free_slots else len(self._replicas)
        r = self._replicas[key] = Replica(slot)
        return r
