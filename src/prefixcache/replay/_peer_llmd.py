"""llm-d's peer policies: the EPP default profile (approximate prefix + load scorers)
and the precise prefix-cache scorer over the engines' KV events.

Every random choice draws from one ``random.Random(seed)`` per policy.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from prefixcache.kvevents import BlockRemoved, BlockStored, EventBatch
from prefixcache.replay._peer_base import (
    CHARS_PER_TOKEN,
    Chunk,
    Peer,
    block_chars,
    text_chunks,
)
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "TIER_WEIGHTS",
    "LlmdBlockIndex",
    "LlmdDefaultPolicy",
    "LlmdPrecisePolicy",
]


# --- 2/3. llm-d -------------------------------------------------------------------------


def _queue_scores(waiting: Sequence[int]) -> list[float]:
    hi = max(waiting)
    lo = min(waiting)
    if hi == lo:
        return [1.0] * len(waiting)
    return [(hi - w) / (hi - lo) for w in waiting]


def _max_score_pick(scores: Sequence[float], rng: random.Random) -> int:
    order = list(range(len(scores)))
    rng.shuffle(order)
    order.sort(key=lambda k: -scores[k])  # stable: ties keep the shuffled order
    return order[0]


class LlmdDefaultPolicy(Peer):
    """llm-d EPP default profile (approximate prefix + load), llm-d-inference-scheduler
    @520af478 (``approximateprefix/hashing.go``, ``scheduler_profile.go``,
    ``config/loader/defaults.go``, ``picker/maxscore/picker.go``); fact sheet section 2.

    State: a per-pod LRU of chunk hashes written after each pick (all the request's
    hashes, most recent, in order), holding ``num_gpu_blocks`` chunks (autoTune), a reverse
    map chunk -> pods, and engine metrics (``waiting``, KV use) scraped every 50 ms.
    Hashing: a chunk is ``4 x B`` characters with the pod's reported engine block ``B``
    (16 for a default vLLM, so 64 characters, 32 per trace block), cut from the start of
    the text across block boundaries (:func:`text_chunks`); the trailing partial chunk is
    hashed; only the first 256 chunks are (so only the first 8 trace blocks are ever
    scored at the default); a text shorter than one chunk has no hash, scores 0
    everywhere and adds nothing (``hashPrompt``).
    Decision: walk the hashes, stopping at the first one no pod holds; each pod holding the
    current one gets +1. ``score = 3 x match/n_hashes + 2 x queue + 2 x (1 - kv)`` with
    ``queue = (max_w - w)/(max_w - min_w)`` (1 if all equal); the max score wins, ties
    uniformly at random (shuffle, then stable sort).
    """

    name = "llm-d-default"

    def __init__(
        self,
        *,
        block_tokens: int,
        num_gpu_blocks: int | None,
        seed: int = 0,
        engine_block_tokens: int = 16,
        max_chunks: int = 256,
        weights: tuple[float, float, float] = (3.0, 2.0, 2.0),
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        self._bt = block_tokens
        self._cpt = chars_per_token
        self._chunk = 4 * engine_block_tokens
        self.max_chunks = max_chunks
        self.weights = weights
        self._rng = random.Random(seed)
        # The pod reports num_gpu_blocks engine blocks (``num_gpu_blocks`` trace blocks
        # here, converted); its LRU holds that many chunks.
        self._cap: int | None = (
            None
            if num_gpu_blocks is None
            else max(1, num_gpu_blocks * block_tokens // engine_block_tokens)
        )
        self.lru: list[OrderedDict[Chunk, None]] = []
        # chunk -> the pods holding it, as a bit mask (bit p: pod p)
        self.holders: dict[Chunk, int] = {}

    def _chunks(self, request: Request) -> list[Chunk]:
        """The request's chunk hashes (at most ``max_chunks``); none for a text shorter than
        one chunk (``hashPrompt`` returns nil)."""
        if sum(block_chars(request, self._bt, self._cpt)) < self._chunk:
            return []
        return text_chunks(
            request, self._bt, self._cpt, self._chunk, partial=True, limit=self.max_chunks
        )

    def prefix_scores(self, request: Request, n: int) -> list[float]:
        return self._scores(self._chunks(request), n)

    def _scores(self, chunks: Sequence[Chunk], n: int) -> list[float]:
        if not chunks:
            return [0.0] * n
        match = [0] * n
        holders = self.holders
        candidates = (1 << n) - 1
        for c in chunks:
            pods = holders.get(c, 0) & candidates  # the candidates holding it
            if not pods:
                break
            while pods:
                low = pods & -pods
                match[low.bit_length() - 1] += 1
                pods ^= low
        return [min(1.0, m / len(chunks)) for m in match]

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self.lru) != n:
            self.lru = [OrderedDict() for _ in range(n)]
            self.holders = {}
        chunks = self._chunks(request)
        pref = self._scores(chunks, n)
        q = _queue_scores(view.waiting)
        w1, w2, w3 = self.weights
        scores = [w1 * pref[p] + w2 * q[p] + w3 * (1.0 - view.kv_usage[p]) for p in range(n)]
        r = _max_score_pick(scores, self._rng)
        self.remember(r, chunks)
        return r

    def remember(self, pod: int, chunks: Sequence[Chunk]) -> None:
        """Add ``chunks`` to ``pod``'s LRU as the most recent, in order (what a pick adds),
        and evict the least recent beyond the capacity."""
        lru = self.lru[pod]
        holders = self.holders
        bit = 1 << pod
        for c in chunks:
            if c in lru:
                lru.move_to_end(c)
            else:
                lru[c] = None
                holders[c] = holders.get(c, 0) | bit
        if self._cap is not None:
            while len(lru) > self._cap:
                c, _ = lru.popitem(last=False)
                pods = holders[c] & ~bit
                if pods:
                    holders[c] = pods
                else:
                    del holders[c]


#: llm-d-kv-cache's device tiers and their weights in the precise scorer (``backend.go``).
TIER_WEIGHTS: Mapping[str, float] = MappingProxyType({"GPU": 1.0, "CPU": 0.8})


class LlmdBlockIndex:
    """llm-d-kv-cache's in-memory index (``kvblock/in_memory.go``, ``kvevents/pool.go``):
    block key -> the pods holding it, each with its device tier; fact sheet section 3.

    ``BlockStored`` adds (pod, tier) to each of its blocks as the most recent (a block
    stored twice is still one entry), ``BlockRemoved`` removes it on the first remove;
    ``AllBlocksCleared`` and ``seq`` are ignored, as llm-d does (an engine that restarts
    leaves its old entries until their blocks are removed). At most ``pods_per_key``
    entries per key, the least recently stored dropped first. A block is keyed by its
    engine hash here (llm-d re-keys it from its tokens; the simulator's hashes are already
    unique per prefix). A store whose parent block is known to no pod is hashed from the
    root by llm-d, so it matches no request: it is not recorded.

    Not thread-safe (the replay is single-threaded). Memory: one entry per (block, pod,
    tier) held, at most ``pods_per_key`` per block.

    >>> idx = LlmdBlockIndex()
    >>> idx.apply(0, EventBatch(ts=0.0, events=[BlockStored(
    ...     block_hashes=[1, 2], token_ids=[1, 2], block_size=1, medium="CPU")]))
    >>> idx.runs((1, 2, 3), 2)
    [1.6, 0.0]
    """

    __slots__ = ("keys", "pods_per_key")

    def __init__(self, pods_per_key: int = 10) -> None:
        self.pods_per_key = pods_per_key
        self.keys: dict[int, OrderedDict[tuple[int, str], None]] = {}

    def apply(self, pod: int, batch: EventBatch) -> None:
        """Apply ``pod``'s event batch (see the class). O(blocks in the batch)."""
        keys = self.keys
        cap = self.pods_per_key
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                parent = ev.parent_block_hash
                if parent is not None and parent not in keys:
                    continue
                entry_key = (pod, (ev.medium or "GPU").upper())
                for h in ev.block_hashes:
                    entry = keys.get(h)
                    if entry is None:
                        entry = keys[h] = OrderedDict()
                    entry.pop(entry_key, None)
                    entry[entry_key] = None
                    while len(entry) > cap:
                        entry.popitem(last=False)
            elif isinstance(ev, BlockRemoved):
                entry_key = (pod, (ev.medium or "GPU").upper())
                for h in ev.block_hashes:
                    entry = keys.get(h)
                    if entry is not None:
                        entry.pop(entry_key, None)
                        if not entry:
                            del keys[h]

    def runs(self, blocks: Sequence[int], n: int) -> list[float]:
        """Per pod ``0..n-1``, its consecutive blocks of ``blocks`` from the first, each
        weighted by its best tier (``TIER_WEIGHTS``; a block held only in another medium
        ends the run). O(blocks matched x entries per block)."""
        out = [0.0] * n
        alive = set(range(n))
        keys = self.keys
        for b in blocks:
            entry = keys.get(b)
            best: dict[int, float] = {}
            if entry is not None:
                for pod, tier in entry:
                    w = TIER_WEIGHTS.get(tier, 0.0)
                    if w > best.get(pod, 0.0):
                        best[pod] = w
            alive = {p for p in alive if p in best}
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
    never keyed), ``score = 2 x prefix + 1 x queue + 1 x (1 - kv)``, max score with random
    ties. It keeps llm-d's own index (``llmd_index``), not the shared ``EngineIndex`` the
    other event policies read, whose refcounts, restarts and gaps llm-d does not have.
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
        q = _queue_scores(view.waiting)
        w1, w2, w3 = self.weights
        scores = [w1 * pref[p] + w2 * q[p] + w3 * (1.0 - view.kv_usage[p]) for p in range(n)]
        return _max_score_pick(scores, self._rng)
