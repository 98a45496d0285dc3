"""llm-d's peer policies: the EPP default profile (approximate prefix + load scorers)
and the precise prefix-cache scorer over the engines' KV events.

Every random choice draws from one ``random.Random(seed)`` per policy.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence

from prefixcache.replay._peer_base import (
    CHARS_PER_TOKEN,
    Chunk,
    EventPeer,
    Peer,
    block_chars,
    text_chunks,
)
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
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
        self.holders: dict[Chunk, set[int]] = {}

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
        for c in chunks:
            pods = holders.get(c)
            if not pods:
                break
            for p in pods:
                match[p] += 1
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
        for c in chunks:
            if c in lru:
                lru.move_to_end(c)
            else:
                lru[c] = None
                holders.setdefault(c, set()).add(pod)
        if self._cap is not None:
            while len(lru) > self._cap:
                c, _ = lru.popitem(last=False)
                pods = holders[c]
                pods.discard(pod)
                if not pods:
                    del holders[c]


class LlmdPrecisePolicy(EventPeer):
    """llm-d ``precise-prefix-cache-scorer`` (KV events), llm-d-inference-scheduler
    @520af478 ``scorer/preciseprefixcache/`` with llm-d-kv-cache @7be76e11
    (``kvblock_scorer.go``, ``backend.go``) and the precise-prefix-cache-aware guide;
    fact sheet section 3.

    State: block -> pods from every engine's events (nothing written at route time), plus
    scraped ``waiting`` and KV use. Decision: ``run[p]`` = consecutive blocks from block 0
    that pod p holds (all GPU-tier here), ``prefix = min(1, run/full_blocks)`` (0 without
    a full block; a partial tail block is never keyed), ``score = 2 x prefix + 1 x queue
    + 1 x (1 - kv)``, max score with random ties.
    """

    name = "llm-d-precise"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        weights: tuple[float, float, float] = (2.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self._bt = block_tokens
        self.weights = weights
        self._rng = random.Random(seed)

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        full = request.input_tokens // self._bt
        blocks = request.blocks[:full]
        runs = self.engine_index.overlaps(blocks, n)
        pref = [min(1.0, runs[p] / full) if full else 0.0 for p in range(n)]
        q = _queue_scores(view.waiting)
        w1, w2, w3 = self.weights
        scores = [w1 * pref[p] + w2 * q[p] + w3 * (1.0 - view.kv_usage[p]) for p in range(n)]
        return _max_score_pick(scores, self._rng)
