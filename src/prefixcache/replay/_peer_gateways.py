"""Peer policies of NVIDIA Dynamo, vLLM production-stack, AIBrix and Ray Serve.

Every random choice draws from one ``random.Random(seed)`` per policy; "arbitrary"
choices go to the lowest replica index.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence

from prefixcache.replay._peer_base import (
    CHARS_PER_TOKEN,
    CharTree,
    Chunk,
    EventPeer,
    Peer,
    block_chars,
    text_chunks,
)
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "AibrixPrefixCachePolicy",
    "DynamoKvPolicy",
    "ProdstackLoadAwarePolicy",
    "ProdstackPrefixPolicy",
    "RayPrefixAffinityPolicy",
]


# --- 4. Dynamo ---------------------------------------------------------------------------


class DynamoKvPolicy(EventPeer):
    """NVIDIA Dynamo KV router, default selector (ai-dynamo/dynamo main via wxsms/dynamo
    @2a6da14c: ``lib/kv-router/src/scheduling/selector/default.rs``, ``selector/mod.rs``,
    ``scheduling/types.rs``, ``config.rs``, ``protocols.rs``; docs
    ``routing-concepts.md``); fact sheet section 4.

    The router hashes complete blocks only (``compute_block_hash_for_seq``): a prompt's
    trailing partial block is neither looked up, nor indexed, nor tracked as active.
    State: the engines' cached blocks from their events (or, with ``kv_events=False``,
    as ``--no-router-kv-events``: an index of full blocks written at routing time whose
    entries expire after 120 s), and router-side active sequences per worker: uncached
    prompt tokens of in-flight requests before their first token, the unique full prompt
    blocks of in-flight requests, and their count. Cost per worker, in blocks of ``B``
    tokens::

        prefill = max(0, (active_prefill_tokens + ISL) / B - 1.0 x overlap)
        decode  = active_blocks + (full blocks - full blocks already active there)
                  + (1 if the prompt ends in a partial block)

    ``overlap`` = leading full request blocks the worker holds. Temperature 0: the least
    cost, exact ties uniformly at random (``minimum_cost_index``).
    """

    name = "dynamo-kv"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        kv_events: bool = True,
        overlap_credit: float = 1.0,
        approx_ttl_s: float = 120.0,
    ) -> None:
        super().__init__()
        self.reads_kv_events = kv_events
        if not kv_events:
            self.name = "dynamo-kv-approx"
        self._bt = block_tokens
        self._rng = random.Random(seed)
        self.overlap_credit = overlap_credit
        self.approx_ttl_s = approx_ttl_s
        self.active_prefill: list[int] = []
        self.active_blocks: list[dict[int, int]] = []
        self._pending: dict[int, int] = {}
        self._approx: list[dict[int, float]] = []

    def _ensure(self, n: int) -> None:
        if len(self.active_prefill) != n:
            self.active_prefill = [0] * n
            self.active_blocks = [{} for _ in range(n)]
            self._approx = [{} for _ in range(n)]

    def _full(self, request: Request) -> Sequence[int]:
        """The request's complete blocks, the only ones the router hashes."""
        return request.blocks[: request.input_tokens // self._bt]

    def _overlap(self, p: int, blocks: Sequence[int], now: float) -> int:
        seen = self._approx[p]
        k = 0
        ttl = self.approx_ttl_s
        while k < len(blocks):
            t = seen.get(blocks[k])
            if t is None or now - t >= ttl:  # gone at its expiry (pruning.rs: expiry <= now)
                break
            k += 1
        return k

    def costs(self, request: Request, now: float, n: int) -> tuple[list[float], list[int]]:
        """Each worker's cost and overlap (in full blocks) for ``request``."""
        self._ensure(n)
        bt = self._bt
        isl = request.input_tokens
        blocks = self._full(request)
        full = len(blocks)
        tail = -(-isl // bt) - full
        out = []
        if self.reads_kv_events:
            ovl = self.engine_index.overlaps(blocks, n)
        else:
            ovl = [self._overlap(p, blocks, now) for p in range(n)]
        for p in range(n):
            o = ovl[p]
            prefill = max(0.0, (self.active_prefill[p] + isl) / bt - self.overlap_credit * o)
            act = self.active_blocks[p]
            depth = 0
            while depth < full and blocks[depth] in act:
                depth += 1
            decode = len(act) + (full - depth) + tail
            out.append(prefill + decode)
        return out, ovl

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        cost, ovl = self.costs(request, now, n)
        lo = min(cost)
        ties = [p for p in range(n) if cost[p] == lo]
        r = ties[0] if len(ties) == 1 else self._rng.choice(ties)
        uncached = max(0, request.input_tokens - ovl[r] * self._bt)
        self._pending[i] = uncached
        self.active_prefill[r] += uncached
        act = self.active_blocks[r]
        blocks = self._full(request)
        for b in blocks:
            act[b] = act.get(b, 0) + 1
        if not self.reads_kv_events:
            seen = self._approx[r]
            for b in blocks:
                seen[b] = now
        return r

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        self.active_prefill[replica] -= self._pending.pop(i, 0)

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        act = self.active_blocks[replica]
        for b in self._full(request):
            c = act[b]
            if c == 1:
                del act[b]
            else:
                act[b] = c - 1


# --- 5/6. production-stack -----------------------------------------------------------------


class ProdstackPrefixPolicy(Peer):
    """vLLM production-stack ``prefixaware`` (@a6c01db0,
    ``src/vllm_router/routers/routing_logic.py``, ``src/vllm_router/prefix/hashtrie.py``);
    fact sheet section 5.

    State: a hash trie of 128-character chunks (cut from the start of the text across
    trace blocks, :func:`text_chunks`: 16 per trace block at the default; the trailing
    partial one hashed too) whose nodes hold the endpoints that received a request
    through them, written at routing time; no eviction, no cap, no load signal. Decision:
    walk from all endpoints, intersecting with each node's endpoints, until a chunk is
    missing or the intersection would be empty; pick uniformly at random among the
    survivors (all endpoints with no match; the QPS fallback needs
    ``prefix_min_match_length`` > 0, default 0); insert the text for the pick.
    """

    name = "prodstack-prefix"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        chunk_chars: int = 128,
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        self._bt = block_tokens
        self._cpt = chars_per_token
        self._chunk = chunk_chars
        self._rng = random.Random(seed)
        self.trie: dict[Chunk, int] = {}  # chunk -> its endpoints, a bit mask

    def _chunks(self, request: Request) -> list[Chunk]:
        return text_chunks(request, self._bt, self._cpt, self._chunk, partial=True)

    def candidates(self, request: Request, n: int) -> list[int]:
        return self._candidates(self._chunks(request), n)

    def _candidates(self, chunks: Sequence[Chunk], n: int) -> list[int]:
        cand = (1 << n) - 1
        trie = self.trie
        for c in chunks:
            eps = trie.get(c)
            if eps is None:
                break
            inter = cand & eps
            if not inter:
                break
            cand = inter
        return [p for p in range(n) if cand >> p & 1]

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        chunks = self._chunks(request)
        r = self._rng.choice(self._candidates(chunks, view.replicas))
        trie = self.trie
        get = trie.get
        bit = 1 << r
        for c in chunks:
            trie[c] = get(c, 0) | bit
        return r


class ProdstackLoadAwarePolicy(EventPeer):
    """production-stack ``loadaware`` (PR #1035, read from its text and an index copy of
    its code); fact sheet section 6.

    State: the engines' cached blocks (LMCache's controller; here the engine event
    stream), the router's in-flight requests per endpoint and its requests over the last
    60 s. Decision: if no endpoint holds the prompt's first block, ``_qps_routing`` (no
    session header in a trace; ``routing_logic.py`` @a6c01db0): scanning in URL order, the
    first endpoint this router never sent a request to wins at once, else the fewest
    requests in the last 60 s with a strict ``<``; otherwise for every endpoint
    ``benefit = min(matched, n)/max(n, 1)`` (tokens), ``rel = (load - mean)/max(1,
    mean)``, ``score = benefit - 1.0 x rel``; argmax scanning in URL order with a strict
    ``>`` (ties to the first endpoint).
    """

    name = "prodstack-loadaware"

    def __init__(self, *, block_tokens: int, beta: float = 1.0, qps_window_s: float = 60.0):
        super().__init__()
        self._bt = block_tokens
        self.beta = beta
        self.qps_window_s = qps_window_s
        self._recent: list[deque[float]] = []
        self._routed: list[bool] = []

    def _qps_pick(self, order: Sequence[int], now: float) -> int:
        lo = now - self.qps_window_s
        best = -1
        fewest = math.inf
        for p in order:
            if not self._routed[p]:
                return p
            ts = self._recent[p]
            while ts and ts[0] < lo:
                ts.popleft()
            if len(ts) < fewest:
                fewest = len(ts)
                best = p
        return best

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self._recent) != n:
            self._recent = [deque() for _ in range(n)]
            self._routed = [False] * n
        tokens = request.input_tokens
        runs = self.engine_index.overlaps(request.blocks, n)
        matched = [min(tokens, runs[p] * self._bt) for p in range(n)]
        # Endpoints are scanned in URL order: the first of a tie wins.
        order = sorted(range(n), key=view.node_ids.__getitem__)
        if not any(matched):
            r = self._qps_pick(order, now)
        else:
            load = view.in_flight
            mean = sum(load) / n
            best = -math.inf
            r = order[0]
            for p in order:
                benefit = min(matched[p], tokens) / max(tokens, 1)
                rel = (load[p] - mean) / max(1.0, mean)
                s = benefit - self.beta * rel
                if s > best:
                    best = s
                    r = p
        self._recent[r].append(now)
        self._routed[r] = True
        return r


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
    it alone. An entry not written by any pod for 20 min is dropped whole, with all its pods
    (``lrustore/lru_store.go``: one ``lastAccessTime`` per entry, refreshed by every
    ``Put``; ``matchPods`` reads no per-pod time). Load: the gateway's in-flight count.
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
        self._cap = max_entries
        self.table: OrderedDict[Chunk, dict[int, float]] = OrderedDict()

    def _least(self, inf: Sequence[int]) -> int:
        lo = min(inf)
        return self._rng.choice([p for p in range(len(inf)) if inf[p] == lo])

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        inf = view.in_flight
        chunks = text_chunks(request, self._bt, self._cpt, self._chunk, partial=False)
        total = len(chunks)
        lo = min(inf)
        cands = set(range(n))
        if max(inf) - lo > self.imbalance:
            cands = {p for p in range(n) if inf[p] == lo}
        table = self.table
        live_since = now - self.ttl_s
        while table:  # the 1 s sweep: oldest writes first
            first = next(iter(table.values()))
            if max(first.values()) >= live_since:
                break
            table.popitem(last=False)
        pct: dict[int, int] = {}
        # The sweep above left only entries written since live_since (the table is in
        # write order), so an entry found is live.
        for done, c in enumerate(chunks, 1):
            entry = table.get(c)
            if entry is None:
                break
            keep = {p for p in cands if p in entry}
            if not keep:
                break
            cands = keep
            for p in cands:
                pct[p] = done * 100 // total
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
        for c in chunks:
            entry = table.get(c)
            if entry is None:
                table[c] = {r: now}
            else:
                entry[r] = now
            table.move_to_end(c)
        while len(table) > self._cap:
            table.popitem(last=False)
        return r


# --- 8. Ray Serve ----------------------------------------------------------------------------


class RayPrefixAffinityPolicy(Peer):
    """Ray Serve LLM ``PrefixCacheAffinityRouter`` (ray-project/ray
    ``prefix_aware_router.py`` @06c16f2f, ``prefix_tree.py`` @19a1eaa3); fact sheet
    section 8.

    State: one character tree over all replicas (tenants), written after assignment, no
    eviction (``do_eviction=False``); per-tenant character totals. Load: the replica queue
    length as the router tracks it (+1 on send, -1 on completion: its in-flight count).
    Decision: the imbalance switch is off (threshold infinite); match over all replicas:
    ``rate >= 0.1``: the tenants of the deepest matched node; below: the tenants with the
    smallest character total in the whole tree; then the first of them in replica order
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
        if k > 0 and m.rate >= self.match_rate_threshold:
            cands = sorted(self.tree.nodes[request.blocks[k - 1]])
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
