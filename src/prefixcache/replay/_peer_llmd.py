"""llm-d's EPP default profile (approximate prefix + load scorers), pinned and current,
and the max-score picker's tie-breaks both llm-d models share (the precise prefix-cache
models are in :mod:`._peer_llmd_precise`).

Every random choice draws from one ``random.Random(seed)`` per policy.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from clusterrouting import InvalidRecordError
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
    "MAX_PREFIX_TOKENS",
    "MIN_CHUNK_TOKENS",
    "LlmdCurrentPolicy",
    "LlmdDefaultPolicy",
    "TieRotation",
    "max_score_pick",
    "queue_scores",
]


# --- 2/3. llm-d -------------------------------------------------------------------------


def queue_scores(waiting: Sequence[int]) -> list[float]:
    """llm-d's ``queue-scorer``: per pod ``(max - w) / (max - min)`` of the waiting
    counts, 1.0 for every pod when they are all equal."""
    hi = max(waiting)
    lo = min(waiting)
    if hi == lo:
        return [1.0] * len(waiting)
    return [(hi - w) / (hi - lo) for w in waiting]


def max_score_pick(scores: Sequence[float], rng: random.Random) -> int:
    """The pinned max-score picker: the highest score, ties in a seeded random order
    (``ShuffleScoredEndpoints``, then a stable sort)."""
    order = list(range(len(scores)))
    rng.shuffle(order)
    order.sort(key=lambda k: -scores[k])  # stable: ties keep the shuffled order
    return order[0]


class TieRotation:
    """The max-score picker's deterministic tie-break of llm-d-router after PRs #2515 and
    #2709: candidates are stable-sorted by score (ties keep the candidate-list order), and
    the group of equal top scores is rotated by a round-robin counter, its first entry
    winning (``picker/maxscore/picker.go`` in PR #2709's diff: each equal-score group
    among the first ``maxNumOfEndpoints`` (1) goes to ``RotateScoredEndpoints``;
    ``picker/common.go`` @5155e4cb).

    Counter rule, for a top group of ``n > 1`` candidates: ``rotation = counter % n``,
    then ``counter += 1``, and ``counter = 0`` once it reaches ``n``. A pick whose top
    score is unique leaves the counter alone. One counter per picker (llm-d: one per
    process). The candidate list is the replicas in index order (the order of llm-d's
    endpoint list was not checked).

    Not modelled: the newest stored ``maxscore/picker.go`` draws the counter once per
    pick (``PickerRand.NextCounter()``) and hands it to every group; that function's body
    is not in the stored source, so the rule above is ``common.go`` @5155e4cb's.

    Not thread-safe. O(replicas) per pick.

    >>> t = TieRotation()
    >>> [t.pick([1.0, 1.0, 0.5, 1.0]) for _ in range(4)]
    [0, 1, 3, 0]
    """

    __slots__ = ("counter",)

    def __init__(self) -> None:
        self.counter = 0

    def pick(self, scores: Sequence[float]) -> int:
        """The index that wins ``scores`` (see the class); advances the counter on a tie."""
        top = max(scores)
        group = [k for k, s in enumerate(scores) if s == top]
        n = len(group)
        if n == 1:
            return group[0]
        rotation = self.counter % n
        self.counter += 1
        if self.counter >= n:
            self.counter = 0
        return group[rotation]


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

    The parameters after ``chars_per_token`` model later llm-d versions
    (:class:`LlmdCurrentPolicy`); their defaults keep the pinned behaviour above:
    ``min_chunk_tokens`` floors the engine block (chunk ``4 x max(B, floor)`` characters),
    ``max_prefix_tokens > 0`` replaces ``max_chunks`` by ``max_prefix_tokens //
    chunk_tokens``, ``tie_break="rotate"`` breaks ties by :class:`TieRotation` instead of
    the shuffle, and ``short_prompt_hash`` gives a non-empty text shorter than one chunk
    its one partial hash.

    Raises:
        InvalidRecordError: ``tie_break`` is neither ``"shuffle"`` nor ``"rotate"``;
            ``min_chunk_tokens`` or ``max_prefix_tokens`` not an int >= 0.
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
        min_chunk_tokens: int = 0,
        max_prefix_tokens: int = 0,
        tie_break: Literal["shuffle", "rotate"] = "shuffle",
        short_prompt_hash: bool = False,
    ) -> None:
        if tie_break not in ("shuffle", "rotate"):
            raise InvalidRecordError("tie_break", tie_break, "must be 'shuffle' or 'rotate'")
        for name, value in (("min_chunk_tokens", min_chunk_tokens),
                            ("max_prefix_tokens", max_prefix_tokens)):  # fmt: skip
            if type(value) is not int or value < 0:
                raise InvalidRecordError(name, value, "must be an int >= 0")
        self._bt = block_tokens
        self._cpt = chars_per_token
        chunk_tokens = max(engine_block_tokens, min_chunk_tokens)
        self._chunk = 4 * chunk_tokens
        self.max_chunks = max_prefix_tokens // chunk_tokens if max_prefix_tokens > 0 else max_chunks
        self.weights = weights
        self.short_prompt_hash = short_prompt_hash
        self._rng = random.Random(seed)
        self._ties = TieRotation() if tie_break == "rotate" else None
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
        """The request's chunk hashes (at most ``max_chunks``); for a text shorter than one
        chunk none (``hashPrompt`` returns nil), or with ``short_prompt_hash`` its one
        partial hash."""
        if (
            not self.short_prompt_hash
            and sum(block_chars(request, self._bt, self._cpt)) < self._chunk
        ):
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
        q = queue_scores(view.waiting)
        w1, w2, w3 = self.weights
        # Summed in the default profile's order (queue, KV use, prefix: defaults.go and
        # the inference-scheduling guide), as llm-d adds its scorers: an exact tie there is
        # a tie here too.
        kv = view.kv_usage
        scores = [w2 * q[p] + w3 * (1.0 - kv[p]) + w1 * pref[p] for p in range(n)]
        r = max_score_pick(scores, self._rng) if self._ties is None else self._ties.pick(scores)
        self.remember(r, chunks)
        return r

    def remember(self, pod: int, chunks: Sequence[Chunk]) -> None:
        """Add ``chunks`` to ``pod``'s LRU as the most recent, in order (what a pick adds),
        and evict the least recent beyond the capacity; then ``pod`` holds every one of
        ``chunks`` in the reverse map (``indexer.go`` ``Add``: the LRU first, its evictions
        taking the pod off their chunks, then the pod on every chunk of the request). A
        request with more chunks than the LRU holds therefore leaves chunks the pod keeps
        in the reverse map while its LRU no longer has them: only a later add and eviction
        of such a chunk takes the pod off it, as in llm-d (it needs a pod whose KV cache is
        smaller than 256 chunks: under 8 trace blocks at the default)."""
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
            if len(chunks) > self._cap:  # only then can the write evict its own chunks
                for c in chunks:
                    holders[c] = holders.get(c, 0) | bit


MIN_CHUNK_TOKENS = 64
"""llm-d-router's floor on the approximate prefix block (``minBlockSizeTokens``, PR #1160)."""

MAX_PREFIX_TOKENS = 131072
"""llm-d-router's default match cap in tokens (``defaultMaxPrefixTokens``, PR #1548)."""


class LlmdCurrentPolicy(LlmdDefaultPolicy):
    """llm-d's EPP default profile as later llm-d-router versions run it: the pinned
    :class:`LlmdDefaultPolicy` with four changes. Paths below are under
    ``pkg/epp/framework/plugins/`` of llm-d/llm-d-router; 1-3 as of @ebab6879.

    1. Chunk of ``4 x max(B, 64)`` characters: ``GetBlockSize`` floors the autotuned
       engine block at ``minBlockSizeTokens = 64`` (PR #1160;
       ``requestcontrol/dataproducer/approximateprefix/plugin.go``), and the ``estimate``
       token producer packs 4 bytes per pseudo-token (``bytesPerToken``, PR #1445;
       ``dataproducer/tokenizer/estimate.go``). A default vLLM (``B = 16``) gets
       256-character chunks.
    2. At most ``131072 // 64 = 2048`` chunks: ``resolveMaxBlocks`` returns
       ``MaxPrefixTokensToMatch / blockSize`` with ``defaultMaxPrefixTokens = 131072``
       (PR #1548; ``approximateprefix/types.go``), ahead of ``maxPrefixBlocksToMatch``.
       A later stored version lowers the cap to the engine's ``max_model_len`` when it
       reports one; a prompt the engine accepts is within it, so that is not modelled.
    3. A non-empty text shorter than one chunk gets one partial hash:
       ``dataproducer/prefixhash/hashing.go`` (``getKVCacheBlocksFromTokens`` yields the
       trailing partial block, ``computeBlockHashes`` hashes it; PRs #1018, #1445).
    4. Ties break by :class:`TieRotation` (PRs #2515, #2709;
       ``scheduling/picker/common.go`` @5155e4cb), not by a random shuffle.

    Unchanged: the LRU of ``CacheNumBlocks`` entries per pod (``makeserver``;
    ``approximateprefix/indexer.go``), now of 64-token chunks, so it covers 4 x the pod's
    KV at ``B = 16``; the walk, ``prefix = match/n_hashes`` (``scheduling/scorer/prefix/
    plugin.go``) and the 3/2/2 weights (``epp/config/loader/defaults.go``).

    Not thread-safe (the replay is single-threaded).
    """

    name = "llm-d-default-current"

    def __init__(
        self,
        *,
        block_tokens: int,
        num_gpu_blocks: int | None,
        seed: int = 0,
        engine_block_tokens: int = 16,
        weights: tuple[float, float, float] = (3.0, 2.0, 2.0),
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        super().__init__(
            block_tokens=block_tokens,
            num_gpu_blocks=num_gpu_blocks,
            seed=seed,
            engine_block_tokens=engine_block_tokens,
            weights=weights,
            chars_per_token=chars_per_token,
            min_chunk_tokens=MIN_CHUNK_TOKENS,
            max_prefix_tokens=MAX_PREFIX_TOKENS,
            tie_break="rotate",
            short_prompt_hash=True,
        )
