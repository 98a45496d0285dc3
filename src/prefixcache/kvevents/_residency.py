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
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Final

import attrs
from xxhash import xxh64_intdigest

from clusterrouting import InvalidRecordError
from prefixcache._chain import (
    TokenIds,
    chain_of_bytes,
    model_salt,
    token_bytes_from_array,
    token_bytes_from_sequence,
)
from prefixcache._types import ReplicaKey
from prefixcache.kvevents._records import (
    BlockRemoved,
    BlockStored,
    EventBatch,
)

__all__ = [
    "DEFAULT_MAX_BLOCKS_PER_REPLICA",
    "DEFAULT_MAX_DEFERRED",
    "DEFAULT_MAX_REPLICAS",
    "IngestReport",
    "KvResidency",
    "ResidencyState",
    "ResidencyStatus",
    "extract_kv_chain",
]

#: Engine blocks recorded per replica (one GPU's KV cache holds 10k-100k blocks of 16
#: tokens; CPU offload more). Past it the oldest stored blocks are forgotten and counted.
DEFAULT_MAX_BLOCKS_PER_REPLICA: Final = 1 << 20
#: Replicas recorded at once; batches of further replicas are refused and counted.
DEFAULT_MAX_REPLICAS: Final = 4096
#: Orphan stores and unknown removals held per replica while a ``seq`` gap is open, waiting
#: for the replay that brings their parents / blocks; past it they are dropped.
DEFAULT_MAX_DEFERRED: Final = 65_536
#: Open ``seq`` gaps tracked per replica; past it the oldest is given up (stays degraded).
_MAX_GAPS: Final = 64
_SEQ_END: Final = 1 << 64
_NS_TAG: Final = b"\x00prefixcache.kvevents.namespace\x00"
_EXTRA_TAG: Final = b"\x00prefixcache.kvevents.extra\x00"


class ResidencyState(StrEnum):
    """How far :class:`KvResidency` trusts its record of one replica.

    Transitions (per replica key):

    * ``unknown``: never seen, or :meth:`KvResidency.forget` called, or refused because the
      replica cap was reached. Nothing is recorded.
    * -> ``exact``: a first batch at ``seq`` 0; an ``AllBlocksCleared`` that leaves no gap
      open; a publisher restart (``seq`` not above the last live one) whose batch is ``seq``
      0; a replayed batch that fills the last missing ``seq``.
    * -> ``degraded``: a first batch above ``seq`` 0 (the batches before it are missing); a
      ``seq`` gap; a restart whose first batch seen is above 0; a store whose parent is not
      held while no gap is open (or still unresolved when the gap closes); a batch with
      malformed events (``EventBatch.dropped > 0``); a gap given up (more than 64 open).
      A degraded replica leaves it for ``exact`` only when every gap is filled by replayed
      batches and nothing unexplained happened, or when a clear or restart resets it.

    ``exact`` means: every batch since the last reset was applied and nothing was
    inconsistent, so the record equals the engine's cache for the routed media and the main
    KV group (minus blocks forgotten to stay under the block cap).
    """

    EXACT = "exact"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True, slots=True)
class IngestReport:
    """What :meth:`KvResidency.apply` did with one batch: counts by outcome.

    Counts are read as attributes (``report.stored_blocks``; 0 when nothing had that
    outcome); ``counts`` holds the non-zero ones as sorted ``(name, count)`` pairs.

    Batch level:
        state: the replica's state after the batch.
        refused: the batch was not applied (a new replica beyond the replica cap).
        duplicate: the batch's ``seq`` was already applied (a replay of a batch seen live):
            nothing changed.
        restarted: the live ``seq`` did not increase (the publisher restarted): everything
            the replica held was dropped before the batch was applied.
        missed: sequence numbers newly known to be missing (the gap this batch opened).
        filled: 1 if this (replayed) batch filled a missing ``seq``, else 0.
        decode_dropped: ``batch.dropped``, the malformed events the decoder left out.

    Events:
        applied_stores / applied_removes / applied_clears: events applied.
        dropped_medium: events for a medium not routed on (``KvResidency(media=...)``).
        dropped_group: events for a KV group other than the main one(s).
        dropped_block_size: stores whose engine block size is not a multiple of
            ``block_tokens``.
        dropped_tokens: stores whose ``token_ids`` do not fill their blocks exactly (e.g.
            sliding-window groups, CPU placeholders with ``block_size=0``), or with no block.
        dropped_self_reference: stores whose hashes repeat or contain their parent.
        dropped_orphan: stores whose parent is not held (and no gap could explain it).
        deferred: orphan stores held until a replay brings their parent.
        resumed: held stores applied by this batch (their parent arrived); counted in
            ``applied_stores`` too.
        abandoned: held stores dropped because every gap closed without their parent.

    Blocks (engine blocks, each split into ``block_size // block_tokens`` of ours):
        stored_blocks: block copies stored (a copy of a block already held counts too).
        removed_blocks: block copies removed.
        unknown_removals: removals of blocks not held (ignored; held for a replay when a gap
            is open).
        cleared_blocks: blocks dropped by ``AllBlocksCleared`` or a restart.
        evicted_blocks: blocks forgotten to stay under the per-replica block cap.

    Immutable: safe to share between threads.

    Every event of an applied batch has exactly one outcome: ``applied_stores - resumed +
    deferred + dropped_*`` (store drops) is the number of ``BlockStored`` events, and
    ``applied_removes`` + removal drops the number of ``BlockRemoved`` events.
    """

    state: ResidencyState
    refused: bool = False
    duplicate: bool = False
    restarted: bool = False
    counts: tuple[tuple[str, int], ...] = ()

    def count(self, name: str) -> int:
        """The count named ``name`` (0 when nothing had that outcome).

        Raises:
            InvalidRecordError: ``name`` is not one of the counts listed above.
        """
        if name not in COUNT_NAMES:
            raise InvalidRecordError("name", name, f"must be one of {sorted(COUNT_NAMES)}")
        for key, value in self.counts:
            if key == name:
                return value
        return 0

    @property
    def missed(self) -> int:
        return self.count("missed")

    @property
    def filled(self) -> int:
        return self.count("filled")

    @property
    def decode_dropped(self) -> int:
        return self.count("decode_dropped")

    @property
    def applied_stores(self) -> int:
        return self.count("applied_stores")

    @property
    def applied_removes(self) -> int:
        return self.count("applied_removes")

    @property
    def applied_clears(self) -> int:
        return self.count("applied_clears")

    @property
    def dropped_medium(self) -> int:
        return self.count("dropped_medium")

    @property
    def dropped_group(self) -> int:
        return self.count("dropped_group")

    @property
    def dropped_block_size(self) -> int:
        return self.count("dropped_block_size")

    @property
    def dropped_tokens(self) -> int:
        return self.count("dropped_tokens")

    @property
    def dropped_self_reference(self) -> int:
        return self.count("dropped_self_reference")

    @property
    def dropped_orphan(self) -> int:
        return self.count("dropped_orphan")

    @property
    def deferred(self) -> int:
        return self.count("deferred")

    @property
    def resumed(self) -> int:
        return self.count("resumed")

    @property
    def abandoned(self) -> int:
        return self.count("abandoned")

    @property
    def stored_blocks(self) -> int:
        return self.count("stored_blocks")

    @property
    def removed_blocks(self) -> int:
        return self.count("removed_blocks")

    @property
    def unknown_removals(self) -> int:
        return self.count("unknown_removals")

    @property
    def cleared_blocks(self) -> int:
        return self.count("cleared_blocks")

    @property
    def evicted_blocks(self) -> int:
        return self.count("evicted_blocks")


#: The names of :class:`IngestReport`'s counts.
COUNT_NAMES: Final = frozenset(
    {
        "missed",
        "filled",
        "decode_dropped",
        "applied_stores",
        "applied_removes",
        "applied_clears",
        "dropped_medium",
        "dropped_group",
        "dropped_block_size",
        "dropped_tokens",
        "dropped_self_reference",
        "dropped_orphan",
        "deferred",
        "resumed",
        "abandoned",
        "stored_blocks",
        "removed_blocks",
        "unknown_removals",
        "cleared_blocks",
        "evicted_blocks",
    }
)


@attrs.frozen(kw_only=True, slots=True)
class ResidencyStatus:
    """A snapshot of one replica's record (:meth:`KvResidency.status`).

    Attributes:
        state: see :class:`ResidencyState`.
        blocks: engine blocks held (all media and groups routed on).
        canonical_blocks: distinct blocks of ours held (what :meth:`KvResidency.overlap`
            matches against).
        last_seq: the highest ``seq`` applied, ``None`` when unknown.
        missing: sequence numbers known missing (open gaps).
        restarts: publisher restarts seen since the replica was first seen.
        updated_at: the clock's time of the last applied batch, ``None`` when unknown.

    Immutable: safe to share between threads.
    """

    state: ResidencyState
    blocks: int = 0
    canonical_blocks: int = 0
    last_seq: int | None = None
    missing: int = 0
    restarts: int = 0
    updated_at: float | None = None


def _namespace_root(model: str, lora_name: str | None, keys: tuple[object, ...]) -> int:
    """The hash a chain starts from: the model salt, namespaced by adapter and extra keys.

    With no adapter and no keys it is ``XXH64(model)``, the salt of
    :func:`prefixcache.extract_token_chain`, so such chains equal today's chains.
    """
    salt = model_salt(model)
    if lora_name is None and not keys:
        return salt
    tag = repr((lora_name, keys)).encode("utf-8", "surrogatepass")
    return xxh64_intdigest(salt.to_bytes(8, "little") + _NS_TAG + tag)


def _mix_extra(h: int, keys: tuple[object, ...]) -> int:
    return xxh64_intdigest(
        h.to_bytes(8, "little") + _EXTRA_TAG + repr(keys).encode("utf-8", "surrogatepass")
    )


def _pack(token_ids: TokenIds) -> bytes:
    if hasattr(token_ids, "dtype") and hasattr(token_ids, "ndim"):
        return token_bytes_from_array(token_ids)  # type: ignore[arg-type]
    return token_bytes_from_sequence(token_ids)


def extract_kv_chain(
    model: str,
    token_ids: TokenIds,
    *,
    block_tokens: int,
    lora_name: str | None = None,
    cache_salt: str | None = None,
    max_depth: int | None = None,
) -> tuple[int, ...]:
    """The chain :class:`KvResidency` identifies a request's blocks by.

    :func:`prefixcache.extract_token_chain`'s scheme started from a namespace root instead of
    the bare model salt: ``root = XXH64(model)`` when neither ``lora_name`` nor ``cache_salt``
    is given (so the chain **equals** ``extract_token_chain(model, token_ids, ...)``), else
    ``root = XXH64(XXH64(model).to_bytes(8, "little") + TAG + repr((lora_name, keys)))``
    with ``keys = (cache_salt,)`` (or ``()`` for no salt). Adapters and tenants therefore
    never share blocks. A trailing partial block is hashed as in ``extract_token_chain``
    (it never matches a stored full block).

    Args:
        model: the model name.
        token_ids: the prompt's token ids (ints in ``[0, 2**32)`` or an integer array).
        block_tokens: tokens per block (> 0).
        lora_name: the LoRA adapter the request uses, ``None`` for the base model.
        cache_salt: the request's ``cache_salt`` (vLLM), ``None`` or ``""`` for none.
        max_depth: hash at most this many blocks (> 0); ``None`` for all.

    Returns:
        The chain, shallow to deep; ``()`` for no tokens.

    Raises:
        InvalidRecordError: as ``extract_token_chain``; ``lora_name`` or ``cache_salt`` not a
            str or ``None``.

    >>> from prefixcache import extract_token_chain
    >>> extract_kv_chain("m", [1, 2, 3, 4], block_tokens=2) == extract_token_chain(
    ...     "m", [1, 2, 3, 4], block_tokens=2)
    True
    >>> extract_kv_chain("m", [1, 2], block_tokens=2, cache_salt="t1") == extract_kv_chain(
    ...     "m", [1, 2], block_tokens=2)
    False
    """
    if type(model) is not str:
        raise InvalidRecordError("model", model, "must be a str")
    if type(block_tokens) is not int or block_tokens <= 0:
        raise InvalidRecordError("block_tokens", block_tokens, "must be an int > 0")
    if max_depth is not None and (type(max_depth) is not int or max_depth <= 0):
        raise InvalidRecordError("max_depth", max_depth, "must be an int > 0 or None")
    if lora_name is not None and type(lora_name) is not str:
        raise InvalidRecordError("lora_name", lora_name, "must be a str or None")
    if cache_salt is not None and type(cache_salt) is not str:
        raise InvalidRecordError("cache_salt", cache_salt, "must be a str or None")
    data = _pack(token_ids)
    if not data:
        return ()
    width = 4 * block_tokens
    depth = -(-len(data) // width)
    if max_depth is not None and max_depth < depth:
        depth = max_depth
    root = _namespace_root(model, lora_name, (cache_salt,) if cache_salt else ())
    return chain_of_bytes(root, data, width, depth)


# One engine block held by one replica in one (medium, group): a list, not a class (building
# it is a third of the ingest loop's cost otherwise), indexed by these names.
# REFS: copies stored and not yet removed; CANON: our hashes of its block_size // block_tokens
# sub-blocks (a tuple); STAMP: the seq of its latest store (a replayed clear drops what was
# stored before it).
_REFS: Final = 0
_CANON: Final = 1
_STAMP: Final = 2
_Entry = list[Any]


# A store waiting for its parent: (seq, model, event).
_Deferred = tuple[int, str, BlockStored]
_Table = dict[int, _Entry]
_TableKey = tuple[str, int]


class _Replica:
    """Everything recorded about one replica key (guarded by the residency's lock)."""

    __slots__ = (
        "bit",
        "canon",
        "deferred",
        "deferred_count",
        "high",
        "live_last",
        "missing",
        "nblocks",
        "restarts",
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
        self.nblocks = 0
        self.canon: dict[int, int] = {}  # our hash -> entries holding it
        self.live_last = -1  # last seq received live (-1: none yet)
        self.high = -1  # highest seq applied
        self.missing: list[list[int]] = []  # sorted, disjoint [lo, hi] seq ranges
        self.tainted = False
        self.deferred: dict[tuple[_TableKey, int], list[_Deferred]] = {}
        self.deferred_count = 0
        self.tombstones: dict[tuple[_TableKey, int], int] = {}

    def state(self) -> ResidencyState:
        if self.missing or self.tainted:
            return ResidencyState.DEGRADED
        return ResidencyState.EXACT

    def blocks(self) -> int:
        return self.nblocks


# Counts of one apply call, by name (see IngestReport).
_Counts = defaultdict[str, int]


def _report(
    state: ResidencyState,
    tally: _Counts,
    *,
    refused: bool = False,
    duplicate: bool = False,
    restarted: bool = False,
) -> IngestReport:
    return IngestReport(
        state=state,
        refused=refused,
        duplicate=duplicate,
        restarted=restarted,
        counts=tuple(sorted(tally.items())),  # only outcomes that happened are keys
    )


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
    dropped and counted.

    Bookkeeping per replica (see :class:`IngestReport` for every outcome):

    * a refcount per (medium, group, engine hash): a block stored twice needs two removes;
      our hash is held while any engine block holding it is;
    * ``seq``: live batches must increase; one that does not is a publisher restart (the
      replica's blocks are dropped first); a jump opens a gap (``degraded``); replayed
      batches (``replayed=True``) fill gaps, are applied once (a ``seq`` already applied is a
      duplicate and changes nothing) and are never a restart. While a gap is open, a store
      whose parent is unknown and a removal of an unknown block wait (bounded) for the
      replay that may explain them;
    * ``AllBlocksCleared`` drops every block stored before it (a replayed clear keeps the
      blocks of later batches) and resets the replica to ``exact`` unless gaps after it
      remain.

    Memory is bounded: at most ``max_replicas`` replicas, ``max_blocks_per_replica`` engine
    blocks each (oldest stored forgotten first), ``max_deferred`` waiting events each, 64
    open gaps each; the engine-hash map holds exactly the blocks held.

    Thread-safe: one lock guards everything; :meth:`apply` holds it for one batch,
    :meth:`overlap` for one chain walk. Callers never block on I/O here.

    Args:
        block_tokens: tokens per block of ours (> 0), the granularity of :meth:`overlap`.
        media: the media routed on (``None`` on the wire counts as ``"GPU"``).
        groups: the KV-cache groups indexed (``None`` on the wire counts as 0): the main
            full-attention group of hybrid models.
        max_blocks_per_replica: engine blocks kept per replica (> 0).
        max_replicas: replicas recorded (> 0).
        max_deferred: waiting events per replica (> 0).
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
        groups: Iterable[int] = frozenset({0}),
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
        for m in self._media:
            if type(m) is not str:
                raise InvalidRecordError("media", media, f"holds {m!r}, not a str")
        self._groups = frozenset(groups)
        for g in self._groups:
            if type(g) is not int or g < 0:
                raise InvalidRecordError("groups", groups, f"holds {g!r}, not an int >= 0")
        if not callable(clock):
            raise InvalidRecordError("clock", clock, "must be callable")
        self._clock = clock
        self._lock = threading.Lock()
        self._replicas: dict[ReplicaKey, _Replica] = {}
        self._free_slots: list[int] = []
        self._where: dict[int, int] = {}  # our hash -> bitmask of replica slots holding it
        # Medium as on the wire, of events without a group -> the table key they are
        # recorded under (only media routed on: a handful).
        self._table_keys: dict[str | None, _TableKey] = {}

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
                canonical_blocks=len(r.canon),
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
            self._drop_all(r)
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
        tally: _Counts = defaultdict(int)
        restarted = False
        with self._lock:
            r = self._replicas.get(replica)
            if r is None:
                if len(self._replicas) >= self._max_replicas:
                    return _report(ResidencyState.UNKNOWN, tally, refused=True)
                r = self._new_replica(replica)
                self._start(r, seq, replayed, tally)
            elif not replayed and seq <= r.live_last:
                restarted = True
                if r.nblocks:
                    tally["cleared_blocks"] += r.nblocks
                self._drop_all(r)
                r.reset()
                r.restarts += 1
                self._start(r, seq, replayed, tally)
            elif seq > r.high:
                if seq > r.high + 1:
                    self._open_gap(r, r.high + 1, seq - 1, tally)
                r.high = seq
                if not replayed:
                    r.live_last = seq
            elif self._fill(r, seq):
                tally["filled"] = 1
                if not replayed:
                    r.live_last = seq
            else:
                if not replayed:
                    r.live_last = seq
                return _report(r.state(), tally, duplicate=True)
            r.updated_at = now
            if batch.dropped:
                tally["decode_dropped"] = batch.dropped
                r.tainted = True
            store = self._store
            stores = blocks = 0
            for event in batch.events:
                cls = type(event)
                if cls is BlockStored:
                    n = store(r, seq, model, event, tally)  # type: ignore[arg-type]
                    if n:
                        stores += 1
                        blocks += n
                elif cls is BlockRemoved:
                    self._remove(r, event, tally)  # type: ignore[arg-type]
                else:
                    self._clear(r, seq, tally)
            if stores:
                tally["applied_stores"] += stores
                tally["stored_blocks"] += blocks
            if not r.missing and (r.deferred or r.tombstones):
                self._settle(r, tally)
            return _report(r.state(), tally, restarted=restarted)

    def _check(self) -> None:
        """Assert the internal invariants (for tests): each replica's counts equal the
        entries' hashes, the owner map holds exactly the held hashes with the right bits,
        block counts match, slots are distinct."""
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
                        assert e[_REFS] >= 1
                        n += 1
                        for h in e[_CANON]:
                            counts[h] = counts.get(h, 0) + 1
                assert n == r.nblocks, (n, r.nblocks)
                assert counts == r.canon
                for h in counts:
                    expected[h] = expected.get(h, 0) | r.bit
                assert sum(len(w) for w in r.deferred.values()) == r.deferred_count
                for lo, hi in r.missing:
                    assert 0 <= lo <= hi <= r.high
            assert expected == self._where
            assert not slots & set(self._free_slots)

    # ------------------------------------------------------------------ internals
    def _new_replica(self, key: ReplicaKey) -> _Replica:
        slot = self._free_slots.pop() if self._free_slots else len(self._replicas)
        r = self._replicas[key] = _Replica(slot)
        return r

    def _start(self, r: _Replica, seq: int, replayed: bool, tally: _Counts) -> None:
        r.high = seq
        r.live_last = -1 if replayed else seq
        if seq > 0:
            self._open_gap(r, 0, seq - 1, tally)

    def _open_gap(self, r: _Replica, lo: int, hi: int, tally: _Counts) -> None:
        tally["missed"] += hi - lo + 1
        r.missing.append([lo, hi])  # gaps open in increasing seq order
        if len(r.missing) > _MAX_GAPS:
            r.missing.pop(0)  # given up: those batches can no longer be told apart
            r.tainted = True

    def _fill(self, r: _Replica, seq: int) -> bool:
        for i, gap in enumerate(r.missing):
            lo, hi = gap
            if seq < lo:
                return False
            if seq <= hi:
                if lo == hi:
                    del r.missing[i]
                elif seq == lo:
                    gap[0] = lo + 1
                elif seq == hi:
                    gap[1] = hi - 1
                else:
                    gap[1] = seq - 1
                    r.missing.insert(i + 1, [seq + 1, hi])
                    if len(r.missing) > _MAX_GAPS:
                        r.missing.pop(0)
                        r.tainted = True
                return True
        return False

    def _settle(self, r: _Replica, tally: _Counts) -> None:
        # Every gap is filled: what still waits can no longer be explained by a replay.
        if r.deferred_count:
            tally["abandoned"] += r.deferred_count
            r.tainted = True
        r.deferred = {}
        r.deferred_count = 0
        r.tombstones = {}

    def _drop_all(self, r: _Replica) -> None:
        where = self._where
        bit = r.bit
        for h in r.canon:
            held = where[h] & ~bit
            if held:
                where[h] = held
            else:
                del where[h]
        r.canon = {}
        r.tables = {}
        r.nblocks = 0
        r.deferred = {}
        r.deferred_count = 0
        r.tombstones = {}

    def _release(self, r: _Replica, canon: tuple[int, ...]) -> None:
        counts = r.canon
        where = self._where
        for h in canon:
            n = counts[h] - 1
            if n:
                counts[h] = n
            else:
                del counts[h]
                held = where[h] & ~r.bit
                if held:
                    where[h] = held
                else:
                    del where[h]

    def _table_key(self, medium: str | None, group: int | None) -> _TableKey | None:
        m = "GPU" if medium is None else medium
        g = 0 if group is None else group
        if m not in self._media or g not in self._groups:
            return None
        if group is None:  # the usual case, cached by medium (a handful of media)
            self._table_keys.setdefault(medium, (m, g))
        return (m, g)

    def _store(self, r: _Replica, seq: int, model: str, ev: BlockStored, tally: _Counts) -> int:
        """Apply one store; returns the engine blocks stored (0: dropped or deferred, and
        counted in ``tally``; the caller counts applied stores and blocks)."""
        medium, group = ev.medium, ev.group_idx
        tk = self._table_keys.get(medium) if group is None else None
        if tk is None:
            tk = self._table_key(medium, group)
            if tk is None:
                if (medium or "GPU") not in self._media:
                    tally["dropped_medium"] += 1
                else:
                    tally["dropped_group"] += 1
                return 0
        hashes = ev.block_hashes
        n = len(hashes)
        size = ev.block_size
        if n == 0 or size == 0 or len(ev.token_ids) != n * size:
            tally["dropped_tokens"] += 1
            return 0
        bt = self._bt
        if size % bt:
            tally["dropped_block_size"] += 1
            return 0
        parent = ev.parent_block_hash
        if (n > 1 and len(set(hashes)) != n) or (parent is not None and parent in hashes):
            tally["dropped_self_reference"] += 1
            return 0
        table = r.tables.get(tk)
        extra = ev.extra_keys
        lora = ev.lora_name
        if parent is None:
            if lora is None and (extra is None or not extra[0]):
                prev = model_salt(model)
            else:
                keys0: tuple[object, ...] = ()
                if extra and extra[0]:
                    keys0 = _extra_keys_of(extra[0], lora)
                prev = _namespace_root(model, lora, keys0)
        else:
            pe = None if table is None else table.get(parent)
            if pe is None:
                # The parent may live in another medium (a GPU block whose prefix was
                # offloaded to the CPU): the chain is the same.
                pe = next((t[parent] for t in r.tables.values() if parent in t), None)
            if pe is None:
                self._orphan(r, tk, parent, seq, model, ev, tally)
                return 0
            prev = pe[_CANON][-1]
        if table is None:
            table = r.tables[tk] = {}
        per = size // bt
        data = ev.token_bytes
        counts = r.canon
        where = self._where
        bit = r.bit
        if n == 1 and per == 1 and extra is None:
            # One block of ours (a decode step completing a block): the loop below, unrolled.
            h = hashes[0]
            e = table.get(h)
            if e is None:
                c = xxh64_intdigest(prev.to_bytes(8, "little") + data)
                table[h] = [1, (c,), seq]  # _REFS, _CANON, _STAMP
                r.nblocks += 1
                k = counts.get(c)
                if k is None:
                    counts[c] = 1
                    where[c] = where.get(c, 0) | bit
                else:
                    counts[c] = k + 1
            else:
                e[_REFS] += 1
                e[_STAMP] = seq
        else:
            width = 4 * bt
            if extra is None or not _has_foreign_keys(extra, lora, parent is None):
                canon = chain_of_bytes(prev, data, width, n * per)
            else:
                canon = _chain_with_extra(prev, data, width, per, extra, lora, parent is None)
            added = 0
            for i, h in enumerate(hashes):
                e = table.get(h)
                if e is None:
                    sub = canon[i * per : (i + 1) * per] if per > 1 else (canon[i],)
                    table[h] = [1, sub, seq]  # _REFS, _CANON, _STAMP
                    added += 1
                    for c in sub:
                        k = counts.get(c)
                        if k is None:
                            counts[c] = 1
                            where[c] = where.get(c, 0) | bit
                        else:
                            counts[c] = k + 1
                else:
                    e[_REFS] += 1
                    e[_STAMP] = seq
            r.nblocks += added
        if r.tombstones:
            for h in hashes:
                self._apply_tombstone(r, tk, table, h, tally)
        if r.nblocks > self._max_blocks:
            self._evict(r, tally)
        if r.deferred:
            self._resume(r, tk, hashes, tally)
        return n

    def _resume(self, r: _Replica, tk: _TableKey, hashes: Iterable[int], tally: _Counts) -> None:
        """Apply the stores that waited for one of ``hashes`` as their parent (and, in
        turn, those waiting for theirs)."""
        stack = list(hashes)
        while stack and r.deferred:
            waiting = r.deferred.pop((tk, stack.pop()), None)
            if not waiting:
                continue
            r.deferred_count -= len(waiting)
            for wseq, wmodel, wev in waiting:
                n = self._store(r, wseq, wmodel, wev, tally)
                if n:
                    tally["resumed"] += 1
                    tally["applied_stores"] += 1
                    tally["stored_blocks"] += n

    def _orphan(
        self,
        r: _Replica,
        tk: _TableKey,
        parent: int,
        seq: int,
        model: str,
        ev: BlockStored,
        tally: _Counts,
    ) -> None:
        if r.missing and r.deferred_count < self._max_deferred:
            r.deferred.setdefault((tk, parent), []).append((seq, model, ev))
            r.deferred_count += 1
            tally["deferred"] += 1
        else:
            tally["dropped_orphan"] += 1
            r.tainted = True

    def _apply_tombstone(
        self, r: _Replica, tk: _TableKey, table: _Table, h: int, tally: _Counts
    ) -> None:
        pending = r.tombstones.pop((tk, h), 0)
        while pending and h in table:
            pending -= 1
            self._remove_one(r, tk, table, h)
            tally["removed_blocks"] += 1
        if pending:
            r.tombstones[(tk, h)] = pending

    def _remove_one(self, r: _Replica, tk: _TableKey, table: _Table, h: int) -> None:
        e = table[h]
        e[_REFS] -= 1
        if e[_REFS] == 0:
            del table[h]
            r.nblocks -= 1
            self._release(r, e[_CANON])

    def _remove(self, r: _Replica, ev: BlockRemoved, tally: _Counts) -> None:
        tk = self._table_key(ev.medium, ev.group_idx)
        if tk is None:
            if (ev.medium or "GPU") not in self._media:
                tally["dropped_medium"] += 1
            else:
                tally["dropped_group"] += 1
            return
        table = r.tables.get(tk)
        for h in ev.block_hashes:
            if table is not None and h in table:
                self._remove_one(r, tk, table, h)
                tally["removed_blocks"] += 1
            else:
                tally["unknown_removals"] += 1
                if r.missing and r.deferred_count < self._max_deferred:
                    key = (tk, h)
                    r.tombstones[key] = r.tombstones.get(key, 0) + 1
        tally["applied_removes"] += 1

    def _clear(self, r: _Replica, seq: int, tally: _Counts) -> None:
        tally["applied_clears"] += 1
        if seq >= r.high:  # in order: everything held was stored before the clear
            if r.nblocks:
                tally["cleared_blocks"] += r.nblocks
            self._drop_all(r)
            r.missing = []
        else:  # a replayed clear: later batches' blocks stay
            for table in r.tables.values():
                for h in [h for h, e in table.items() if e[_STAMP] <= seq]:
                    e = table.pop(h)
                    r.nblocks -= 1
                    self._release(r, e[_CANON])
                    tally["cleared_blocks"] += 1
            r.missing = [gap for gap in r.missing if gap[0] > seq]
        r.tainted = False

    def _evict(self, r: _Replica, tally: _Counts) -> None:
        # Oldest stored first, table by table (one medium's table is usually all there is).
        for table in r.tables.values():
            while table and r.nblocks > self._max_blocks:
                e = table.pop(next(iter(table)))
                r.nblocks -= 1
                self._release(r, e[_CANON])
                tally["evicted_blocks"] += 1
            if r.nblocks <= self._max_blocks:
                return


def _extra_keys_of(entry: object, lora: str | None) -> tuple[object, ...]:
    if not isinstance(entry, tuple):
        return (entry,)
    if lora is None:
        return entry
    return tuple(k for k in entry if k != lora)


def _has_foreign_keys(extra: tuple[object, ...], lora: str | None, at_root: bool) -> bool:
    for i, entry in enumerate(extra):
        if not entry or (i == 0 and at_root):
            continue
        if _extra_keys_of(entry, lora):
            return True
    return False


def _chain_with_extra(
    prev: int,
    data: bytes,
    width: int,
    per: int,
    extra: tuple[object, ...],
    lora: str | None,
    at_root: bool,
) -> tuple[int, ...]:
    """Our hashes of a store whose blocks carry extra keys beyond the adapter name (and the
    root block's salt): those keys are mixed into the block's first sub-block hash."""
    out: list[int] = []
    n = len(data) // (width * per)
    for i in range(n):
        for j in range(per):
            start = (i * per + j) * width
            prev = xxh64_intdigest(prev.to_bytes(8, "little") + data[start : start + width])
            if j == 0 and i < len(extra) and extra[i] and not (i == 0 and at_root):
                keys = _extra_keys_of(extra[i], lora)
                if keys:
                    prev = _mix_extra(prev, keys)
            out.append(prev)
    return tuple(out)
