"""llm-d's precise prefix-cache models over the engines' KV events: the pinned
``precise-prefix-cache-scorer`` profile and the later precise-prefix-cache-routing guide
(affinity filter, token-load scorer, speculative entries).

Every random choice draws from one ``random.Random(seed)`` per policy.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_rate
from prefixcache.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from prefixcache.replay._peer_base import Peer
from prefixcache.replay._peer_llmd import TieRotation, max_score_pick, queue_scores
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "CURRENT_TIER_WEIGHTS",
    "DEFAULT_AFFINITY_THRESHOLD",
    "DEFAULT_MAX_TTFT_PENALTY_MS",
    "DEFAULT_QUEUE_THRESHOLD_TOKENS",
    "DEFAULT_SPECULATIVE_TTL_S",
    "GUIDE_PEAK_PREFILL_TOKENS_PER_S",
    "SPECULATIVE_TIER",
    "SPECULATIVE_WEIGHT",
    "TIER_WEIGHTS",
    "UNLISTED_TIER_WEIGHT",
    "LlmdBlockIndex",
    "LlmdPreciseCurrentPolicy",
    "LlmdPrecisePolicy",
    "LlmdSpeculativeIndex",
    "affinity_candidates",
    "token_load_scores",
]


#: llm-d-kv-cache's device tiers and their weights in the precise scorer (``backend.go``).
TIER_WEIGHTS: Mapping[str, float] = MappingProxyType({"GPU": 1.0, "CPU": 0.8})


class LlmdBlockIndex:
    """llm-d-kv-cache's in-memory index (@7be76e11: ``kvblock/in_memory.go``,
    ``kvevents/pool.go``, ``kvblock_scorer.go``): block key -> the pods holding it, each
    with its device tier; fact sheet section 3.

    ``BlockStored`` adds (pod, tier) to each of its blocks as the most recent (a block
    stored twice is still one entry), ``BlockRemoved`` removes it on the first remove;
    ``AllBlocksCleared`` removes every entry of that pod, on every tier (``Index.Clear``);
    ``seq`` is ignored, as llm-d does (an engine that restarts without a clear leaves its
    old entries until their blocks are removed). At most ``pods_per_key`` entries per key,
    the least recently stored dropped first. A block is keyed by its engine hash here
    (llm-d re-keys it from its tokens; the simulator's hashes are already unique per
    prefix). llm-d skips a store whose parent block it has no mapping for: the mapping is
    made by a store and dropped when a remove leaves the block with no pod, but a clear
    leaves it (a store under a cleared block is still accepted). A store carrying a
    ``lora_name`` is keyed from the adapter, so its blocks never match a request for the
    base model (the replay's requests): they are kept apart here. Tiers are weighed by
    :data:`TIER_WEIGHTS`; a tier not listed there weighs 1.0 (``fillMaxWeights``).

    Not modelled: llm-d-inference-scheduler @520af478 links llm-d-kv-cache v0.8.0, whose
    ``Evict`` drops a block's mapping at the first pod's remove (a later remove by another
    pod then leaves that pod's entry, and a store under the block is skipped); v0.8.1
    fixed it, and this index follows the fixed code (docs/replay.md gives the effect). A
    remove takes the pod off the block in the base model's space and every adapter's,
    where llm-d maps an engine key to the space of its last store only (a real engine
    hashes an adapter's blocks apart, so the same key is not stored in two spaces).

    Not thread-safe (the replay is single-threaded). Memory: one entry per (block, pod,
    tier) held, at most ``pods_per_key`` per block, and one mapping per block stored and
    not removed from every pod.

    >>> idx = LlmdBlockIndex()
    >>> idx.apply(0, EventBatch(ts=0.0, events=[BlockStored(
    ...     block_hashes=[1, 2], token_ids=[1, 2], block_size=1, medium="CPU")]))
    >>> idx.runs((1, 2, 3), 2)
    [1.6, 0.0]
    """

    __slots__ = ("adapters", "keys", "mapped", "pods_per_key")

    def __init__(self, pods_per_key: int = 10) -> None:
        self.pods_per_key = pods_per_key
        self.keys: dict[int, OrderedDict[tuple[int, str], None]] = {}
        self.mapped: set[int] = set()  # blocks a store under them is accepted for
        #: per LoRA adapter, its own blocks (keyed apart: never matched by a base request)
        self.adapters: dict[str, dict[int, OrderedDict[tuple[int, str], None]]] = {}

    def apply(self, pod: int, batch: EventBatch) -> None:
        """Apply ``pod``'s event batch (see the class). O(blocks in the batch), and
        O(blocks indexed) for a clear."""
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                parent = ev.parent_block_hash
                if parent is not None and parent not in self.mapped:
                    continue
                self._store(self._space(ev.lora_name), pod, ev)
            elif isinstance(ev, BlockRemoved):
                self._remove(pod, ev)
            elif isinstance(ev, AllBlocksCleared):
                self._clear(pod)

    def _space(self, lora_name: str | None) -> dict[int, OrderedDict[tuple[int, str], None]]:
        """The keys of the base model, or of a LoRA adapter."""
        if lora_name is None:
            return self.keys
        return self.adapters.setdefault(lora_name, {})

    def _store(
        self, keys: dict[int, OrderedDict[tuple[int, str], None]], pod: int, ev: BlockStored
    ) -> None:
        self.mapped.update(ev.block_hashes)
        self._add(keys, (pod, (ev.medium or "GPU").upper()), ev.block_hashes)

    def _add(
        self,
        keys: dict[int, OrderedDict[tuple[int, str], None]],
        entry_key: tuple[int, str],
        blocks: Sequence[int],
    ) -> None:
        """Make ``entry_key`` each block's most recent entry, dropping the least recent
        beyond ``pods_per_key``."""
        cap = self.pods_per_key
        for h in blocks:
            entry = keys.get(h)
            if entry is None:
                entry = keys[h] = OrderedDict()
            entry.pop(entry_key, None)
            entry[entry_key] = None
            while len(entry) > cap:
                entry.popitem(last=False)

    def _remove(self, pod: int, ev: BlockRemoved) -> None:
        entry_key = (pod, (ev.medium or "GPU").upper())
        spaces = [self.keys, *self.adapters.values()]
        for h in ev.block_hashes:
            if h not in self.mapped:
                continue  # no mapping: nothing to evict
            held = False
            for keys in spaces:
                entry = keys.get(h)
                if entry is not None:
                    entry.pop(entry_key, None)
                    if entry:
                        held = True
                    else:
                        del keys[h]
            if not held:
                self.mapped.discard(h)

    def _clear(self, pod: int) -> None:
        for keys in (self.keys, *self.adapters.values()):
            for h in [h for h, entry in keys.items() if any(p == pod for p, _ in entry)]:
                entry = keys[h]
                for entry_key in [e for e in entry if e[0] == pod]:
                    del entry[entry_key]
                if not entry:
                    del keys[h]

    def tier_weight(self, tier: str) -> float:
        """A block's weight on ``tier`` (:data:`TIER_WEIGHTS`, 1.0 for a tier not listed)."""
        return TIER_WEIGHTS.get(tier, 1.0)

    def runs(self, blocks: Sequence[int], n: int) -> list[float]:
        """Per pod ``0..n-1``, its consecutive blocks of ``blocks`` (the base model's) from
        the first, each weighted by its best tier (:meth:`tier_weight`). A pod stays in the
        run while it has an entry on the block, whatever its weight (``fillMaxWeights`` and
        ``LongestPrefixScorer.Score``). O(blocks matched x entries per block)."""
        out = [0.0] * n
        alive = set(range(n))
        keys = self.keys
        weight = self.tier_weight
        for b in blocks:
            entry = keys.get(b)
            if entry is None:
                break
            best: dict[int, float] = {}
            for pod, tier in entry:
                w = weight(tier)
                if pod not in best or w > best[pod]:
                    best[pod] = w
            alive &= best.keys()
            if not alive:
                break
            for p in alive:
                out[p] += best[p]
        return out


class LlmdPrecisePolicy(Peer):
    """llm-d ``precise-prefix-cache-scorer`` (KV events), llm-d-inference-scheduler
    @520af478 ``scorer/preciseprefixcache/`` with llm-d-kv-cache @7be76e11
    (``kvblock_scorer.go``, ``backend.go``, ``in_memory.go``) and the
    precise-prefix-cache-aware guide; fact sheet section 3.

    State: :class:`LlmdBlockIndex` from every engine's events (nothing written at route
    time), plus scraped ``waiting`` and KV use. Decision: ``run[p]`` = consecutive blocks
    from block 0 that pod p holds, each weighted by tier (GPU 1.0, CPU 0.8),
    ``prefix = min(1, run/full_blocks)`` (0 without a full block; a partial tail block is
    never keyed), ``score = 2 x prefix + 1 x (1 - kv) + 1 x queue`` (added in the guide's
    profile order, as llm-d adds its scorers), max score with random ties. It keeps
    llm-d's own index (``llmd_index``), not the shared ``EngineIndex`` the other event
    policies read, whose refcounts, restarts and gaps llm-d does not have.

    Engine blocks are trace blocks (``B = T``, fact sheet section 10). The guide's vLLM
    runs 64-token blocks, so its score would also count the full 64-token blocks inside
    a prompt's partial last trace block; not modelled (docs/replay.md gives the effect).
    """

    name = "llm-d-precise"
    reads_kv_events = True

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        weights: tuple[float, float, float] = (2.0, 1.0, 1.0),
        pods_per_key: int = 10,
    ) -> None:
        self._bt = block_tokens
        self.weights = weights
        self._rng = random.Random(seed)
        self.llmd_index = LlmdBlockIndex(pods_per_key)

    def on_kv_events(self, replica: int, seq: int, batch: EventBatch, now: float) -> None:
        self.llmd_index.apply(replica, batch)

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        full = request.input_tokens // self._bt
        runs = self.llmd_index.runs(request.blocks[:full], n)
        pref = [min(1.0, runs[p] / full) if full else 0.0 for p in range(n)]
        q = queue_scores(view.waiting)
        w1, w2, w3 = self.weights
        # Summed in the guide's profile order (prefix, KV use, queue), as llm-d adds its
        # scorers: an exact tie is then a tie here too.
        kv = view.kv_usage
        scores = [w1 * pref[p] + w3 * (1.0 - kv[p]) + w2 * q[p] for p in range(n)]
        return max_score_pick(scores, self._rng)


#: The precise scorer's device-tier weights after llm-d-router PR #2809: a tier not
#: listed weighs 0 (:data:`UNLISTED_TIER_WEIGHT`), a speculative entry 1.0.
CURRENT_TIER_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"GPU": 1.0, "CPU": 0.8, "SHARED_STORAGE": 0.4, "OBJECT_STORE": 0.2}
)
UNLISTED_TIER_WEIGHT = 0.0
"""The weight of a tier missing from :data:`CURRENT_TIER_WEIGHTS` (PR #2809)."""
SPECULATIVE_WEIGHT = 1.0
"""The weight of a speculative entry (PR #2809 keeps it at 1.0)."""
SPECULATIVE_TIER = ""
"""The tier of a speculative entry in :class:`LlmdSpeculativeIndex`: llm-d's
``PodEntry{Speculative: true}`` carries no device tier, and no store maps to ``""`` (a
store without a medium is GPU)."""
DEFAULT_SPECULATIVE_TTL_S = 2.0
"""``defaultSpeculativeTTL`` (``dataproducer/preciseprefixcache/prerequest.go``)."""
DEFAULT_AFFINITY_THRESHOLD = 0.80
"""``prefix-cache-affinity-filter``'s ``AffinityThreshold`` (``DefaultConfig``)."""
DEFAULT_MAX_TTFT_PENALTY_MS = 18000.0
"""``prefix-cache-affinity-filter``'s ``MaxTTFTPenaltyMs`` (``DefaultConfig``)."""
GUIDE_PEAK_PREFILL_TOKENS_PER_S = 15926.0
"""``peakPrefillThroughput`` the precise-prefix-cache-routing guide sets (llm-d/llm-d PR
#2071: Qwen3-32B, TP=2 on H100; the filter's own default is 15,928)."""
DEFAULT_QUEUE_THRESHOLD_TOKENS = 4194304
"""``token-load-scorer``'s ``queueThresholdTokens`` (``tokenQueueThresholdDefault``)."""


class LlmdSpeculativeIndex(LlmdBlockIndex):
    """:class:`LlmdBlockIndex` with llm-d-router's speculative entries and its later tier
    weights (llm-d-router @ebab6879, ``pkg/kvcache/kvblock/in_memory.go``,
    ``pkg/kvcache/kvblock_scorer.go``, ``requestcontrol/dataproducer/preciseprefixcache/
    prerequest.go``; weights from PR #2809).

    * :meth:`speculate` adds the entry ``(pod, SPECULATIVE_TIER)`` to every given block as
      the most recent (``Index.Add`` with no engine keys: no engine mapping is made), beside
      any confirmed entry of the pod; both count toward ``pods_per_key``. A confirming
      ``BlockStored`` adds its own entry and leaves the speculative one.
    * Each call registers an expiry at ``expires_at``; :meth:`expire` takes the pod's
      speculative entry off every block of each registration whose time is before ``now``
      (ttlcache's ``expiresAt.Before(now)``), even if a later call re-added it: the entry
      is one value per pod (``Evict`` by request key). A block left with no entry is
      dropped; engine mappings are untouched.
    * :meth:`tier_weight`: :data:`CURRENT_TIER_WEIGHTS`, :data:`UNLISTED_TIER_WEIGHT` for
      another tier (0: such a block adds nothing, but a pod still holding it stays in the
      run), :data:`SPECULATIVE_WEIGHT` for a speculative entry.

    A clear (``AllBlocksCleared``) drops the pod's speculative entries too (``Clear``
    matches the pod on every entry). Not thread-safe. :meth:`expire` is O(blocks expired).

    >>> idx = LlmdSpeculativeIndex()
    >>> idx.speculate(1, (7, 8), expires_at=2.0)
    >>> idx.runs((7, 8, 9), 2)
    [0.0, 2.0]
    >>> idx.expire(2.0), idx.expire(2.5)
    ((), ((1, (7, 8)),))
    >>> idx.runs((7, 8), 2)
    [0.0, 0.0]
    """

    __slots__ = ("_expiries", "_seq")

    def __init__(self, pods_per_key: int = 10) -> None:
        super().__init__(pods_per_key)
        # (expires_at, order of registration, pod, blocks): a heap
        self._expiries: list[tuple[float, int, int, tuple[int, ...]]] = []
        self._seq = 0

    def speculate(self, pod: int, blocks: Sequence[int], *, expires_at: float) -> None:
        """Add ``pod``'s speculative entry to each of ``blocks`` and register its expiry at
        ``expires_at`` (seconds, the caller's clock). O(blocks)."""
        self._add(self.keys, (pod, SPECULATIVE_TIER), blocks)
        heapq.heappush(self._expiries, (expires_at, self._seq, pod, tuple(blocks)))
        self._seq += 1

    def expire(self, now: float) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """Take off the speculative entries of every registration that expired before
        ``now``; returns those registrations as ``(pod, blocks)``, oldest first."""
        heap = self._expiries
        keys = self.keys
        out: list[tuple[int, tuple[int, ...]]] = []
        while heap and heap[0][0] < now:
            _, _, pod, blocks = heapq.heappop(heap)
            entry_key = (pod, SPECULATIVE_TIER)
            for h in blocks:
                entry = keys.get(h)
                if entry is not None:
                    entry.pop(entry_key, None)
                    if not entry:
                        del keys[h]
            out.append((pod, blocks))
        return tuple(out)

    def tier_weight(self, tier: str) -> float:
        """:data:`SPECULATIVE_WEIGHT` for a speculative entry, else
        :data:`CURRENT_TIER_WEIGHTS` (:data:`UNLISTED_TIER_WEIGHT` for a tier not listed)."""
        if tier == SPECULATIVE_TIER:
            return SPECULATIVE_WEIGHT
        return CURRENT_TIER_WEIGHTS.get(tier, UNLISTED_TIER_WEIGHT)


def affinity_candidates(
    prefix: Sequence[float],
    ttft_ms: Sequence[float],
    *,
    threshold: float = DEFAULT_AFFINITY_THRESHOLD,
    max_penalty_ms: float = DEFAULT_MAX_TTFT_PENALTY_MS,
) -> list[int]:
    """The pods ``prefix-cache-affinity-filter`` keeps (llm-d-router @ebab6879,
    ``scheduling/filter/prefixcacheaffinity/plugin.go`` ``Filter``, exploration 0).

    Tiers, in order:

    1. one pod or ``threshold <= 0``: every pod;
    2. no pod with ``prefix >= threshold`` (sticky): every pod;
    3. ``max_penalty_ms > 0``, some pod not sticky, and the best (lowest) sticky TTFT
       exceeds the best non-sticky one by more than ``max_penalty_ms``: every pod;
    4. otherwise the sticky pods.

    Args:
        prefix: per pod, ``matchBlocks / totalBlocks`` (0 without a full block).
        ttft_ms: per pod, its estimated TTFT in milliseconds.
        threshold: the sticky bound (inclusive).
        max_penalty_ms: the TTFT gap that breaks stickiness; 0 never breaks it.

    Returns:
        The kept pods' indices, ascending. O(pods).

    >>> affinity_candidates([0.9, 0.5, 0.8], [0.0, 0.0, 0.0])
    [0, 2]
    >>> affinity_candidates([0.9, 0.5], [18001.0, 0.0])
    [0, 1]
    """
    everyone = list(range(len(prefix)))
    if len(prefix) <= 1 or threshold <= 0:
        return everyone
    sticky = [p for p in everyone if prefix[p] >= threshold]
    if not sticky:
        return everyone
    rest = [p for p in everyone if prefix[p] < threshold]
    if max_penalty_ms > 0 and rest:
        gap = min(ttft_ms[p] for p in sticky) - min(ttft_ms[p] for p in rest)
        if gap > max_penalty_ms:
            return everyone
    return sticky


def token_load_scores(
    tokens: Sequence[int], *, threshold_tokens: int = DEFAULT_QUEUE_THRESHOLD_TOKENS
) -> list[float]:
    """``token-load-scorer`` (llm-d-router @ebab6879, ``scheduling/scorer/tokenload/
    token_load.go``): ``1 - min(1, tokens / threshold_tokens)``, 1.0 for ``tokens <= 0``.

    Args:
        tokens: per pod, its in-flight tokens plus the request's uncached tokens there.
        threshold_tokens: the normalisation bound.

    >>> token_load_scores([0, 2097152, 5000000])
    [1.0, 0.5, 0.0]
    """
    th = float(threshold_tokens)
    return [1.0 if t <= 0 else 1.0 - min(float(t), th) / th for t in tokens]


class LlmdPreciseCurrentPolicy(LlmdPrecisePolicy):
    """llm-d's precise-prefix-cache-routing guide as later llm-d versions run it:
    llm-d/llm-d ``guides/precise-prefix-cache-routing/router/precise-prefix-cache-routing.
    values.yaml`` after PRs #2071 and #2148 (the guide, renamed from
    ``precise-prefix-cache-aware``, replaced the 2/1/1 weighted stack of the pinned
    :class:`LlmdPrecisePolicy` by an affinity filter and a token-load scorer), over
    llm-d-router @ebab6879 (paths under ``pkg/epp/framework/plugins/``).

    State: :class:`LlmdSpeculativeIndex` from every engine's events plus this router's
    speculative entries (``precise-prefix-cache-producer`` with ``speculativeIndexing:
    true``, TTL 2 s), and per pod its in-flight tokens (``inflight-load-producer``: each
    routed request adds its uncached prompt tokens on its pod; they go at its first
    token, ``StartOfStream``, as ``addEstimatedOutputTokens`` is off). No scraped metric
    is read.

    Decision, with ``full = input_tokens // B`` keys (engine blocks are trace blocks, as
    in the pinned model):

    1. ``match[p] = int(weighted run)`` (``produceFromBlockKeys`` truncates the scorer's
       weighted sum), ``prefix[p] = match[p] / full`` (0 without a full block),
       ``uncached[p] = input_tokens - match[p] x B`` (``uncachedInputTokens``).
    2. :func:`affinity_candidates` with threshold 0.80, a penalty of 18,000 ms and TTFT
       ``in_flight[p] / 15,926 x 1000`` ms (the guide's ``peakPrefillThroughput``).
    3. :func:`token_load_scores` of ``in_flight[p] + uncached[p]`` over the candidates.
    4. The max score wins, ties by :class:`TieRotation` over the candidates in replica
       order (the profile names no picker: the loader adds ``max-score-picker``).
    5. After the pick, the pod gets a speculative entry on each of the ``full`` keys,
       expiring 2 s later (``PreRequest``), and ``uncached[pod]`` in flight.

    Tier weights (PR #2809): GPU 1.0, CPU 0.8, shared storage 0.4, object store 0.2,
    another tier 0 (it still continues the run), a speculative entry 1.0.

    Not modelled: the tokenizer (``token-producer`` over vLLM's render endpoint; input
    tokens are the trace's), the per-EPP in-flight state (the guide runs one EPP replica),
    and a request's in-flight tokens released by the producer's janitor before its first
    token (it binds them to the request's stream).

    Not thread-safe (the replay is single-threaded).
    """

    name = "llm-d-precise-current"
    llmd_index: LlmdSpeculativeIndex

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        pods_per_key: int = 10,
        speculative_ttl_s: float = DEFAULT_SPECULATIVE_TTL_S,
        affinity_threshold: float = DEFAULT_AFFINITY_THRESHOLD,
        max_ttft_penalty_ms: float = DEFAULT_MAX_TTFT_PENALTY_MS,
        peak_prefill_tokens_per_s: float = GUIDE_PEAK_PREFILL_TOKENS_PER_S,
        queue_threshold_tokens: int = DEFAULT_QUEUE_THRESHOLD_TOKENS,
    ) -> None:
        super().__init__(block_tokens=block_tokens, seed=seed, pods_per_key=pods_per_key)
        for name, value in (
            ("peak_prefill_tokens_per_s", peak_prefill_tokens_per_s),
            ("speculative_ttl_s", speculative_ttl_s),
        ):
            if check_rate(name, value) is None:  # None passes check_rate, not here
                raise InvalidRecordError(name, value, "must be a finite number > 0")
        #: the index the engines' events and the speculative entries go to
        self.llmd_index = LlmdSpeculativeIndex(pods_per_key)
        self.speculative_ttl_s = speculative_ttl_s
        self.affinity_threshold = affinity_threshold
        self.max_ttft_penalty_ms = max_ttft_penalty_ms
        self.peak_prefill_tokens_per_s = peak_prefill_tokens_per_s
        self.queue_threshold_tokens = queue_threshold_tokens
        self.ties = TieRotation()
        #: per pod, the uncached prompt tokens of its requests before their first token
        self.in_flight_tokens: list[int] = []
        self._charged: dict[int, tuple[int, int]] = {}  # request -> (pod, tokens)

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self.in_flight_tokens) != n:
            self.in_flight_tokens = [0] * n
        index = self.llmd_index
        index.expire(now)
        bt = self._bt
        full = request.input_tokens // bt
        keys = request.blocks[:full]
        runs = index.runs(keys, n) if full else [0.0] * n
        match = [int(r) for r in runs]
        prefix = [m / full if full else 0.0 for m in match]
        uncached = [max(0, request.input_tokens - m * bt) for m in match]
        loads = self.in_flight_tokens
        peak = self.peak_prefill_tokens_per_s
        cand = affinity_candidates(
            prefix,
            [loads[p] / peak * 1000 for p in range(n)],  # endpointTTFT's order of operations
            threshold=self.affinity_threshold,
            max_penalty_ms=self.max_ttft_penalty_ms,
        )
        scores = token_load_scores(
            [loads[p] + uncached[p] for p in cand], threshold_tokens=self.queue_threshold_tokens
        )
        r = cand[self.ties.pick(scores)]
        loads[r] += uncached[r]
        self._charged[i] = (r, uncached[r])
        if full:
            index.speculate(r, keys, expires_at=now + self.speculative_ttl_s)
        return r

    def on_kv_events(self, replica: int, seq: int, batch: EventBatch, now: float) -> None:
        # ttlcache expires in the background: an entry gone before a remove arrives must
        # not keep the block's engine mapping alive.
        self.llmd_index.expire(now)
        self.llmd_index.apply(replica, batch)

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        charged = self._charged.pop(i, None)
        if charged is not None:
            pod, tokens = charged
            # decrementClamped: never below 0
            self.in_flight_tokens[pod] = max(0, self.in_flight_tokens[pod] - tokens)
