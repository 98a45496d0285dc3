"""AIBrix's gateway ``prefix-cache`` policy and Ray Serve's prefix-affinity router as
replay peers: both key the prompt's text at the gateway, with no engine events.

Every random choice draws from one ``random.Random(seed)`` per policy; "arbitrary"
choices go to the lowest replica index.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Sequence

from clusterrouting import InvalidRecordError
from prefixcache.replay._peer_base import (
    CHARS_PER_TOKEN,
    CharTree,
    Chunk,
    Peer,
    block_chars,
    text_chunks,
)
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "AibrixPrefixCacheCurrentPolicy",
    "AibrixPrefixCachePolicy",
    "RayPrefixAffinityPolicy",
    "aibrix_load_imbalanced",
]


# --- 7. AIBrix -----------------------------------------------------------------------------


class AibrixPrefixCachePolicy(Peer):
    """AIBrix gateway ``prefix-cache`` (vllm-project/aibrix @e3e10f9e,
    ``pkg/plugins/gateway/algorithms/prefix_cache.go``,
    ``pkg/utils/prefixcacheindexer/hash.go``; shipped manifest defaults); fact sheet
    section 7.

    State: one global LRU table of 128-byte block hashes (cut from the start of the text
    across trace blocks, :func:`text_chunks`: 16 per trace block at the default; the
    trailing partial one dropped) -> pod -> last write, written after each pick; 200,000
    entries (12,500 trace blocks), a write moving its entry to the head, a lookup leaving
    it alone. An entry not written by any pod for more than 20 min is dropped whole, with
    all its pods (``lrustore/lru_store.go``: one ``lastAccessTime`` per entry, refreshed
    by every ``Put``; ``matchPods`` reads no per-pod time), but only by the sweep a 1 s
    ticker runs (``startEviction``, ``evict``: ``now - lastAccessTime > ttl``); ``Get``
    never checks the age. The ticker starts with the gateway, taken as replay time 0, so
    an entry is gone at a lookup at ``now`` iff at some tick ``k <= now`` (``k`` a whole
    number of intervals) it had been idle for more than 20 min: written at ``t``, it
    matches until the first tick after ``t + 1200``. Load: the gateway's in-flight count.
    Decision: if ``max - min`` in-flight > 16, only the pods at the minimum may match;
    walk the hashes keeping the candidates that hold each one (``pct = floor(hashes
    matched x 100 / hashes)``; a pod dropped on the way keeps its earlier ``pct``); with
    a match, the matched pods by ``pct`` descending then in-flight ascending (random
    ties), the first with in-flight ``<= mean + 2 x sample std`` over all pods; else the
    least in-flight, random ties.
    """

    name = "aibrix-prefix-cache"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        imbalance: int = 16,
        std_factor: float = 2.0,
        max_entries: int = 200_000,
        ttl_s: float = 1200.0,
        sweep_interval_s: float = 1.0,
        chunk_bytes: int = 128,
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        self._bt = block_tokens
        self._cpt = chars_per_token
        self._chunk = chunk_bytes
        self._rng = random.Random(seed)
        self.imbalance = imbalance
        self.std_factor = std_factor
        self.ttl_s = ttl_s
        self.sweep_interval_s = sweep_interval_s
        self._cap = max_entries
        self.table: OrderedDict[Chunk, dict[int, float]] = OrderedDict()

    def _least(self, inf: Sequence[int]) -> int:
        lo = min(inf)
        return self._rng.choice([p for p in range(len(inf)) if inf[p] == lo])

    def _imbalanced(self, inf: Sequence[int]) -> bool:
        """Whether only the pods at the minimum in-flight may be chosen (@e3e10f9e:
        ``max - min > imbalance``, in ``prefix_cache.go``)."""
        return max(inf) - min(inf) > self.imbalance

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        inf = view.in_flight
        chunks = text_chunks(request, self._bt, self._cpt, self._chunk, partial=False)
        total = len(chunks)
        lo = min(inf)
        cands = set(range(n))
        if self._imbalanced(inf):
            cands = {p for p in range(n) if inf[p] == lo}
        table = self.table
        # The ticker's sweeps since the last call, as one at the last tick: an entry idle
        # too long at an earlier tick is so at the last one too, and only calls write.
        step = self.sweep_interval_s
        live_since = math.floor(now / step) * step - self.ttl_s
        while table:  # oldest writes first: the table is in write order
            oldest = next(iter(table.values()))
            if max(oldest.values()) >= live_since:
                break
            table.popitem(last=False)
        # Whatever the sweeps left is matched: a lookup does not check the age. A pod's
        # pct counts the chunks matched while it was still a candidate.
        matched: dict[int, int] = {}  # pod -> chunks matched, for the pods dropped
        holders: set[int] = set()  # the pods holding the first chunk, in the order ranked
        done = 0
        get = table.get
        for c in chunks:
            entry = get(c)
            if entry is None:
                break
            if not done:
                holders = cands = {p for p in cands if p in entry}
                if not cands:
                    break
            elif not cands <= entry.keys():
                keep = cands & entry.keys()
                if not keep:
                    break
                for p in cands - keep:
                    matched[p] = done
                cands = keep
            done += 1
        matched.update(dict.fromkeys(cands if done else (), done))
        pct = {p: matched[p] * 100 // total for p in holders}
        r = -1
        if pct:
            mean = sum(inf) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in inf) / (n - 1)) if n > 1 else 0.0
            order = list(pct)
            self._rng.shuffle(order)
            order.sort(key=lambda p: (-pct[p], inf[p]))
            for p in order:
                if inf[p] <= mean + self.std_factor * std:
                    r = p
                    break
        if r < 0:
            r = self._least(inf)
        to_end = table.move_to_end
        for c in chunks:  # a write moves its entry to the head (a new one lands there)
            entry = get(c)
            if entry is None:
                table[c] = {r: now}
            else:
                entry[r] = now
                to_end(c)
        pop = table.popitem
        for _ in range(len(table) - self._cap):  # the oldest writes beyond the cap
            pop(last=False)
        return r


def aibrix_load_imbalanced(in_flight: Sequence[int], *, min_gap: int, factor: float) -> bool:
    """AIBrix's load-imbalance gate after PR #2365: whether the gateway narrows the pods
    to those at the minimum in-flight (``getTargetPodListOnLoadImbalance`` in
    ``algorithms/load_balance.go``, stored later versions).

    Fires iff there are at least 2 pods, ``max - min >= min_gap`` (the code returns
    "balanced" while ``max - min < min_gap``) and, from 3 pods, ``max > factor x
    (mean of the others + 1)``, the mean taken without one pod at the maximum. Two pods
    skip the factor test (the source's reason: with the mean over all pods, ``factor = 2``
    could never fire there).

    Args:
        in_flight: the gateway's in-flight count per pod.
        min_gap: ``AIBRIX_LOAD_BALANCE_IMBALANCE_MIN_GAP`` (8).
        factor: ``AIBRIX_LOAD_BALANCE_IMBALANCE_FACTOR`` (2.0).

    Returns:
        True when the gate narrows the pods. O(pods).

    >>> aibrix_load_imbalanced([8, 0], min_gap=8, factor=2.0)
    True
    >>> aibrix_load_imbalanced([10, 2, 2], min_gap=8, factor=2.0)  # 10 > 2 x (2 + 1)
    True
    >>> aibrix_load_imbalanced([9, 2, 2], min_gap=8, factor=2.0)  # gap 7
    False
    """
    n = len(in_flight)
    if n < 2:
        return False
    hi = max(in_flight)
    if hi - min(in_flight) < min_gap:
        return False
    return n == 2 or hi > factor * ((sum(in_flight) - hi) / (n - 1) + 1)


class AibrixPrefixCacheCurrentPolicy(AibrixPrefixCachePolicy):
    """AIBrix gateway ``prefix-cache`` after PR #2365 ("add load-balance router and
    centralize the load-imbalance gate", merged after the pin @e3e10f9e), read in stored
    later versions of ``algorithms/load_balance.go`` (``ApplyLoadImbalanceGate``,
    ``getTargetPodListOnLoadImbalance``) and ``gateway.go`` (``selectTargetPod``). Only
    the gate: the auto-blend that stored later ``router.go`` versions run a bare
    ``prefix-cache`` request through (``appendLoadBalanceBlend``, ``prefix-cache:5,
    load-balance:4`` soft scores) is **not** modelled, as no merged PR for it was found.

    Table, sweep, matching, the ``mean + 2 x sample std`` guard and the least-in-flight
    fallback as in :class:`AibrixPrefixCachePolicy`. What changed:

    1. the gate moved out of ``prefix_cache.go`` into the gateway, which applies it ahead
       of every non-exclusive strategy and hands the strategy only the pods at the
       minimum; the guard's mean and std and the fallback see only those pods, all at the
       same count, so when it fires the pick is still the best match among the minimum
       pods, else a random one of them;
    2. its trigger is :func:`aibrix_load_imbalanced` (gap ``>= 8``; from 3 pods also
       ``max > 2 x (mean of the others + 1)``) instead of ``max - min > 16``.

    A narrowed list of one pod takes the gateway's single-pod fast path, which in the
    stored later ``gateway.go`` still runs the router's post-route hook, so the table is
    written as before.

    Args:
        min_gap: ``AIBRIX_LOAD_BALANCE_IMBALANCE_MIN_GAP``, in requests (>= 0).
        imbalance_factor: ``AIBRIX_LOAD_BALANCE_IMBALANCE_FACTOR`` (finite, >= 0).
        Others as :class:`AibrixPrefixCachePolicy` (without ``imbalance``).

    Raises:
        InvalidRecordError: a negative ``min_gap`` or a negative or non-finite
            ``imbalance_factor``.

    Not thread-safe (one simulated router).
    """

    name = "aibrix-prefix-cache-current"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        min_gap: int = 8,
        imbalance_factor: float = 2.0,
        std_factor: float = 2.0,
        max_entries: int = 200_000,
        ttl_s: float = 1200.0,
        sweep_interval_s: float = 1.0,
        chunk_bytes: int = 128,
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        if min_gap < 0:
            raise InvalidRecordError("min_gap", min_gap, "must be >= 0")
        if not (math.isfinite(imbalance_factor) and imbalance_factor >= 0):
            raise InvalidRecordError(
                "imbalance_factor", imbalance_factor, "must be a finite number >= 0"
            )
        super().__init__(
            block_tokens=block_tokens,
            seed=seed,
            std_factor=std_factor,
            max_entries=max_entries,
            ttl_s=ttl_s,
            sweep_interval_s=sweep_interval_s,
            chunk_bytes=chunk_bytes,
            chars_per_token=chars_per_token,
        )
        self.min_gap = min_gap
        self.imbalance_factor = imbalance_factor

    def _imbalanced(self, inf: Sequence[int]) -> bool:
        return aibrix_load_imbalanced(inf, min_gap=self.min_gap, factor=self.imbalance_factor)


# --- 8. Ray Serve ----------------------------------------------------------------------------


class RayPrefixAffinityPolicy(Peer):
    """Ray Serve LLM ``PrefixCacheAffinityRouter`` (ray-project/ray
    ``prefix_aware_router.py`` @06c16f2f, ``prefix_tree.py`` @19a1eaa3); fact sheet
    section 8.

    State: one character tree over all replicas (tenants), written after assignment, no
    eviction (``do_eviction=False``); per-tenant character totals. Load: the replica queue
    length as the router tracks it (+1 on send, -1 on completion: its in-flight count).
    Decision: the imbalance switch is off (threshold infinite); match over all replicas:
    ``rate >= 0.1``: the tenants of the deepest matched node (the root's, every replica,
    for no match at a threshold <= 0); below: the tenants with the smallest character
    total in the whole tree; then the first of them in replica order
    with the strictly lowest queue. The power-of-two pair (two random replicas) is only
    the fallback when that yields nobody.
    """

    name = "ray-prefix-affinity"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        match_rate_threshold: float = 0.1,
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        self.tree = CharTree()
        self._bt = block_tokens
        self._cpt = chars_per_token
        self._rng = random.Random(seed)
        self.match_rate_threshold = match_rate_threshold

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        pair = self._rng.sample(range(n), min(2, n))
        chars = block_chars(request, self._bt, self._cpt)
        m = self.tree.match(request.blocks, chars)
        k = m.blocks
        if m.rate >= self.match_rate_threshold:  # at a threshold <= 0 even with no match:
            # the root's tenants, every replica
            cands = sorted(self.tree.nodes[request.blocks[k - 1]]) if k else list(range(n))
        else:
            ch = self.tree.chars
            least = min(ch.get(p, 0) for p in range(n))
            cands = [p for p in range(n) if ch.get(p, 0) == least]
        if not cands:
            cands = sorted(pair)
        q = view.in_flight
        r = min(cands, key=lambda p: (q[p], cands.index(p)))
        self.tree.insert(request.blocks, chars, r)
        return r
