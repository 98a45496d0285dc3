"""Peer routers' default policies, re-implemented for the replay from their sources.

Each class follows one section of the peer fact sheet (the project's
``peer-policies.md``), which pins every router to a source snapshot; the docstrings name
the snapshot and the source files. Every policy runs at its documented defaults, keeps
its own state (what it inserts, when, and how it evicts) and its own notion of load.

Mapping onto the trace (fact sheet section 10): a trace block of ``T`` tokens stands for
``C = chars_per_token x T`` characters (default 4, llm-d's own constant); the last,
partial block for ``chars_per_token`` characters per token it holds. Character trees are
built at block granularity (one edge per block; a match never counts part of a block),
and chunk hashes of 64/128 characters are counted per block (a trace block is 32 or 16
of them). Engine-event policies read the simulated engines' event stream, whose engine
block is the trace block. Every random choice draws from one ``random.Random(seed)`` per
policy; "arbitrary" choices go to the lowest replica index.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence

from prefixcache._types import ReplicaKey
from prefixcache.kvevents import EventBatch, KvResidency
from prefixcache.replay._sim import TOKEN_MASK, ClusterView
from prefixcache.replay._trace import Request

__all__ = [
    "AibrixPrefixCachePolicy",
    "DynamoKvPolicy",
    "EngineIndex",
    "LlmdDefaultPolicy",
    "LlmdPrecisePolicy",
    "ProdstackLoadAwarePolicy",
    "ProdstackPrefixPolicy",
    "RayPrefixAffinityPolicy",
    "SglangCacheAwarePolicy",
    "SmgCacheAwarePolicy",
]

REPLAY_MODEL = "trace"
"""The model name engine events and indexes are filed under (traces carry none)."""

CHARS_PER_TOKEN = 4
"""Characters per token of the stand-in text (llm-d's own constant; fact sheet 10)."""


class _Peer:
    name = "peer"
    observe_at: str = "dispatch"
    reads_kv_events = False

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        pass


def block_chars(request: Request, block_tokens: int, chars_per_token: int) -> list[int]:
    """Characters of each block of ``request``'s stand-in text (last block partial)."""
    n = len(request.blocks)
    if n == 0:
        return []
    full = block_tokens * chars_per_token
    last = max(0, request.input_tokens - block_tokens * (n - 1)) * chars_per_token
    out = [full] * n
    out[-1] = min(full, last)
    return out


# --- engine events -------------------------------------------------------------------


class EngineIndex:
    """The engines' cached blocks, as ``prefixcache.kvevents.KvResidency`` records them.

    Replicas are numbered; each maps to ``ReplicaKey("replica-NN")``. Batches come from
    the simulated engines, whose block ``i`` is one stand-in token (see
    ``ClusterModel``), so the residency runs at ``block_tokens=1`` and its chain over a
    request's block ids identifies trace blocks. ``apply`` hands a batch to
    ``KvResidency.apply`` (refcounts, restarts, gaps as documented there); ``overlaps``
    hashes a request once and asks ``overlap_chain`` for every replica.
    """

    __slots__ = ("_keys", "residency")

    def __init__(self) -> None:
        self.residency = KvResidency(block_tokens=1)
        self._keys: list[ReplicaKey] = []

    def key(self, replica: int) -> ReplicaKey:
        """The residency key of replica ``replica``."""
        keys = self._keys
        while len(keys) <= replica:
            keys.append(ReplicaKey(f"replica-{len(keys):02d}"))
        return keys[replica]

    def state(self, replica: int) -> str:
        """``"exact"``, ``"degraded"`` or ``"unknown"``."""
        return str(self.residency.state(self.key(replica)))

    def apply(self, replica: int, seq: int, batch: EventBatch) -> None:
        """Apply one engine batch of replica ``replica``."""
        self.residency.apply(self.key(replica), seq, batch, model=REPLAY_MODEL, now=batch.ts)

    def chain(self, blocks: Sequence[int]) -> tuple[int, ...]:
        """The residency's chain of a request's block ids."""
        return self.residency.chain(REPLAY_MODEL, [b & TOKEN_MASK for b in blocks])

    def overlaps(self, blocks: Sequence[int], n: int) -> list[int]:
        """Leading blocks of ``blocks`` held by each of replicas ``0..n-1``."""
        if not blocks:
            return [0] * n
        keys = [self.key(r) for r in range(n)]
        got = self.residency.overlap_chain(self.chain(blocks), keys)
        return [got[k] for k in keys]

    def run(self, replica: int, blocks: Sequence[int]) -> int:
        """Leading blocks of ``blocks`` that ``replica`` holds."""
        return self.overlaps(blocks, replica + 1)[replica]


class _EventPeer(_Peer):
    reads_kv_events = True

    def __init__(self) -> None:
        self.engine_index = EngineIndex()

    def on_kv_events(self, replica: int, seq: int, batch: EventBatch, now: float) -> None:
        self.engine_index.apply(replica, seq, batch)


# --- 1. SGLang / SMG cache_aware -----------------------------------------------------


class _CharTree:
    """A character radix tree at block granularity, shared by all tenants.

    Node = block id (ids are prefix-chained). Per node: tenant -> last-access stamp (an
    operation counter), and the owner (the tenant whose insert created it). Per tenant:
    characters held.
    """

    __slots__ = ("chars", "nodes", "op", "owner")

    def __init__(self) -> None:
        self.nodes: dict[int, dict[int, int]] = {}
        self.owner: dict[int, int] = {}
        self.chars: dict[int, int] = {}
        self.op = 0

    def match(self, blocks: Sequence[int], chars: Sequence[int]) -> tuple[int, int]:
        """(leading blocks present for some tenant, their characters)."""
        k = 0
        c = 0
        nodes = self.nodes
        n = len(blocks)
        while k < n and blocks[k] in nodes:
            c += chars[k]
            k += 1
        return k, c

    def insert(self, blocks: Sequence[int], chars: Sequence[int], tenant: int) -> None:
        self.op += 1
        op = self.op
        nodes = self.nodes
        add = 0
        for b, ch in zip(blocks, chars, strict=True):
            t = nodes.get(b)
            if t is None:
                nodes[b] = {tenant: op}
                self.owner[b] = tenant
                add += ch
            else:
                if tenant not in t:
                    add += ch
                t[tenant] = op
        self.chars[tenant] = self.chars.get(tenant, 0) + add

    def evict(self, cap_chars: int, chars_of: dict[int, int], per_tenant: bool) -> None:
        """Drop (tenant, node) entries, least recently stamped first, until each tenant
        (or, with ``per_tenant=False``, the whole tree) holds at most ``cap_chars``."""
        total = sum(self.chars.values())
        if per_tenant:
            over = {t for t, c in self.chars.items() if c > cap_chars}
            if not over:
                return
        elif total <= cap_chars:
            return
        entries = [
            (stamp, b, t)
            for b, ts in self.nodes.items()
            for t, stamp in ts.items()
            if not per_tenant or t in over
        ]
        entries.sort(key=lambda e: e[0])
        for _stamp, b, t in entries:
            if per_tenant:
                if self.chars.get(t, 0) <= cap_chars:
                    continue
            elif total <= cap_chars:
                break
            ts = self.nodes[b]
            del ts[t]
            ch = chars_of.get(b, 0)
            self.chars[t] -= ch
            total -= ch
            if not ts:
                del self.nodes[b]
                self.owner.pop(b, None)


class SglangCacheAwarePolicy(_Peer):
    """SGLang router / SMG ``cache_aware``, HTTP path, as of SMG @73da68ca
    (``model_gateway/src/policies/cache_aware.rs``; CLI defaults in
    ``model_gateway/src/main.rs``); fact sheet section 1.

    State: one character tree written at dispatch from the router's own decisions; load
    is the router's in-flight count plus ``processed`` (requests routed here).
    Decision: (1) if ``max - min > balance_abs_threshold`` and ``max > balance_rel_threshold
    x min`` over in-flight, the min-load worker (least ``(in_flight, processed, index)``);
    (2) otherwise walk the tree: ``rate = matched chars / text chars``; if ``rate >
    cache_threshold`` (strict) the owner of the deepest matched node (if evicted there, the
    lowest-index remaining tenant), else the min-load worker (``miss_fallback="min_load"``)
    or, before sglang PR #14650, the tenant with the smallest tree
    (``miss_fallback="smallest_tree"``). The text is inserted for the pick.
    Eviction: every ``eviction_interval_s``, each tenant is trimmed to ``max_tree_chars``,
    least recently stamped entries first (here every node of an insert gets its stamp).
    Defaults: 0.3 / 64 / 1.5 / 120 s / 2**26 chars.
    """

    name = "sglang-cache-aware"

    def __init__(
        self,
        *,
        block_tokens: int,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        eviction_interval_s: float = 120.0,
        max_tree_chars: int = 2**26,
        miss_fallback: str = "min_load",
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        self.tree = _CharTree()
        self.processed: list[int] = []
        self._bt = block_tokens
        self._cpt = chars_per_token
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.eviction_interval_s = eviction_interval_s
        self.max_tree_chars = max_tree_chars
        self.miss_fallback = miss_fallback
        self._next_evict: float | None = None
        self._chars_of: dict[int, int] = {}
        self._per_tenant = True

    def _min_load(self, view: ClusterView) -> int:
        inf = view.in_flight
        pr = self.processed
        return min(range(view.replicas), key=lambda k: (inf[k], pr[k], k))

    def _maybe_evict(self, now: float) -> None:
        if self._next_evict is None:
            self._next_evict = now + self.eviction_interval_s
        elif now >= self._next_evict:
            self.tree.evict(self.max_tree_chars, self._chars_of, self._per_tenant)
            self._next_evict = now + self.eviction_interval_s

    def _found(self, blocks: Sequence[int], k: int) -> int:
        b = blocks[k - 1]
        owner = self.tree.owner.get(b)
        tenants = self.tree.nodes[b]
        if owner is not None and owner in tenants:
            return owner
        return min(tenants)

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self.processed) != n:
            self.processed = [0] * n
        self._maybe_evict(now)
        inf = view.in_flight
        hi = max(inf)
        lo = min(inf)
        chars = block_chars(request, self._bt, self._cpt)
        if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
            return self._commit(self._min_load(view), request, chars)
        k, matched = self.tree.match(request.blocks, chars)
        text = sum(chars)
        rate = matched / text if text else 0.0
        if k > 0 and rate > self.cache_threshold:
            r = self._found(request.blocks, k)
        elif self.miss_fallback == "smallest_tree":
            ch = self.tree.chars
            r = min(range(n), key=lambda x: (ch.get(x, 0), x))
        else:
            r = self._min_load(view)
        return self._commit(r, request, chars)

    def _commit(self, r: int, request: Request, chars: list[int]) -> int:
        self.tree.insert(request.blocks, chars, r)
        for b, c in zip(request.blocks, chars, strict=True):
            self._chars_of[b] = c
        self.processed[r] += 1
        return r


class SmgCacheAwarePolicy(SglangCacheAwarePolicy):
    """SMG ``cache_aware`` after PR #2161 (read at smg @f8daa883,
    ``model_gateway/src/policies/cache_aware.rs``); fact sheet section 1b.

    No global switch. Hit (``rate > 0.3``): among up to 8 tenants of the deepest matched
    node (lowest indices), the lowest in-flight, random among ties; spill gate: if that
    pick has ``in_flight > 1.5 x mean`` and ``> mean + 64`` (mean over all workers), the
    min-load worker. Miss: the min-load worker ``(in_flight, processed, index)``. The text
    is inserted for the final pick (a hot prefix gains a second owner). ``max_tree_chars``
    is one budget for the whole tree (per model).
    """

    name = "smg-cache-aware"

    def __init__(self, *, block_tokens: int, seed: int = 0, max_owners: int = 8) -> None:
        super().__init__(block_tokens=block_tokens)
        self._rng = random.Random(seed)
        self._per_tenant = False
        self.max_owners = max_owners
        self.spill_rel = 1.5
        self.spill_abs = 64

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self.processed) != n:
            self.processed = [0] * n
        self._maybe_evict(now)
        inf = view.in_flight
        chars = block_chars(request, self._bt, self._cpt)
        k, matched = self.tree.match(request.blocks, chars)
        text = sum(chars)
        rate = matched / text if text else 0.0
        if k > 0 and rate > self.cache_threshold:
            owners = sorted(self.tree.nodes[request.blocks[k - 1]])[: self.max_owners]
            least = min(inf[o] for o in owners)
            r = self._rng.choice([o for o in owners if inf[o] == least])
            mean = sum(inf) / n
            if inf[r] > self.spill_rel * mean and inf[r] > mean + self.spill_abs:
                r = self._min_load(view)
        else:
            r = self._min_load(view)
        return self._commit(r, request, chars)


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


class LlmdDefaultPolicy(_Peer):
    """llm-d EPP default profile (approximate prefix + load), llm-d-inference-scheduler
    @520af478 (``approximateprefix/hashing.go``, ``scheduler_profile.go``,
    ``config/loader/defaults.go``, ``picker/maxscore/picker.go``); fact sheet section 2.

    State: a per-pod LRU of chunk hashes written after each pick (all the request's
    hashes, most recent), holding ``num_gpu_blocks`` chunks (autoTune), and engine metrics
    (``waiting``, KV use) scraped every 50 ms. Hashing: a chunk is ``4 x B`` characters
    with the pod's reported engine block ``B`` (16 for a default vLLM, so 64 characters,
    32 per trace block); the trailing partial chunk is hashed; only the first 256 chunks
    are (so only the first 8 trace blocks are ever scored).
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
        # The pod reports num_gpu_blocks engine blocks; the LRU holds that many chunks, a
        # trace block being (block_tokens * cpt / chunk) of them.
        per_block = max(1, block_tokens * chars_per_token // self._chunk)
        if num_gpu_blocks is None:
            self._cap: int | None = None
        else:
            chunks = num_gpu_blocks * block_tokens // engine_block_tokens
            self._cap = max(1, chunks // per_block)
        self.lru: list[OrderedDict[int, None]] = []

    def _chunks(self, request: Request) -> tuple[list[int], int]:
        """Chunks per scored block (cumulative cap applied) and the hash count."""
        out = []
        total = 0
        for ch in block_chars(request, self._bt, self._cpt):
            c = -(-ch // self._chunk)
            if total + c > self.max_chunks:
                c = self.max_chunks - total
            if c <= 0:
                break
            out.append(c)
            total += c
        return out, total

    def prefix_scores(self, request: Request, n: int) -> list[float]:
        per, total = self._chunks(request)
        match = [0] * n
        if total == 0:
            return [0.0] * n
        blocks = request.blocks
        for idx, c in enumerate(per):
            b = blocks[idx]
            holders = [p for p in range(n) if b in self.lru[p]]
            if not holders:
                break
            for p in holders:
                match[p] += c
        return [min(1.0, m / total) for m in match]

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self.lru) != n:
            self.lru = [OrderedDict() for _ in range(n)]
        pref = self.prefix_scores(request, n)
        q = _queue_scores(view.waiting)
        w1, w2, w3 = self.weights
        scores = [w1 * pref[p] + w2 * q[p] + w3 * (1.0 - view.kv_usage[p]) for p in range(n)]
        r = _max_score_pick(scores, self._rng)
        per, _ = self._chunks(request)
        lru = self.lru[r]
        for b in request.blocks[: len(per)]:
            if b in lru:
                lru.move_to_end(b)
            else:
                lru[b] = None
        if self._cap is not None:
            while len(lru) > self._cap:
                lru.popitem(last=False)
        return r


class LlmdPrecisePolicy(_EventPeer):
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


# --- 4. Dynamo ---------------------------------------------------------------------------


class DynamoKvPolicy(_EventPeer):
    """NVIDIA Dynamo KV router, default selector (ai-dynamo/dynamo main via wxsms/dynamo
    @2a6da14c: ``lib/kv-router/src/scheduling/selector/default.rs``, ``selector/mod.rs``,
    ``config.rs``; docs ``routing-concepts.md``); fact sheet section 4.

    State: the engines' cached blocks from their events (or, with ``kv_events=False``,
    as ``--no-router-kv-events``: an index written at routing time whose entries expire
    after 120 s), and router-side active sequences per worker: uncached prompt tokens of
    in-flight requests before their first token, the unique prompt blocks of in-flight
    requests, and their count. Cost per worker, in blocks of ``B`` tokens::

        prefill = max(0, (active_prefill_tokens + ISL) / B - 1.0 x overlap)
        decode  = active_blocks + (ceil(ISL / B) - request blocks already active there)

    ``overlap`` = leading request blocks the worker holds. Temperature 0: the least cost,
    exact ties uniformly at random.
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

    def _overlap(self, p: int, blocks: Sequence[int], now: float) -> int:
        seen = self._approx[p]
        k = 0
        ttl = self.approx_ttl_s
        while k < len(blocks):
            t = seen.get(blocks[k])
            if t is None or now - t > ttl:
                break
            k += 1
        return k

    def costs(self, request: Request, now: float, n: int) -> tuple[list[float], list[int]]:
        bt = self._bt
        isl = request.input_tokens
        blocks = request.blocks
        need = -(-isl // bt)
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
            while depth < len(blocks) and blocks[depth] in act:
                depth += 1
            decode = len(act) + (need - depth)
            out.append(prefill + decode)
        return out, ovl

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self.active_prefill) != n:
            self.active_prefill = [0] * n
            self.active_blocks = [{} for _ in range(n)]
            self._approx = [{} for _ in range(n)]
        cost, ovl = self.costs(request, now, n)
        lo = min(cost)
        ties = [p for p in range(n) if cost[p] == lo]
        r = ties[0] if len(ties) == 1 else self._rng.choice(ties)
        uncached = max(0, request.input_tokens - ovl[r] * self._bt)
        self._pending[i] = uncached
        self.active_prefill[r] += uncached
        act = self.active_blocks[r]
        for b in request.blocks:
            act[b] = act.get(b, 0) + 1
        if not self.reads_kv_events:
            seen = self._approx[r]
            for b in request.blocks:
                seen[b] = now
        return r

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        self.active_prefill[replica] -= self._pending.pop(i, 0)

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        act = self.active_blocks[replica]
        for b in request.blocks:
            c = act[b]
            if c == 1:
                del act[b]
            else:
                act[b] = c - 1


# --- 5/6. production-stack -----------------------------------------------------------------


class ProdstackPrefixPolicy(_Peer):
    """vLLM production-stack ``prefixaware`` (@a6c01db0,
    ``src/vllm_router/routers/routing_logic.py``, ``src/vllm_router/prefix/hashtrie.py``);
    fact sheet section 5.

    State: a hash trie of 128-character chunks (16 per trace block) whose nodes hold the
    endpoints that received a request through them, written at routing time; no eviction,
    no cap, no load signal. Decision: walk from all endpoints, intersecting with each
    node's endpoints, until a chunk is missing or the intersection would be empty; pick
    uniformly at random among the survivors (all endpoints with no match; the QPS fallback
    needs ``prefix_min_match_length`` > 0, default 0); insert the text for the pick.
    """

    name = "prodstack-prefix"

    def __init__(self, *, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self.trie: dict[int, set[int]] = {}

    def candidates(self, request: Request, n: int) -> list[int]:
        cand = set(range(n))
        for b in request.blocks:
            eps = self.trie.get(b)
            if eps is None:
                break
            inter = cand & eps
            if not inter:
                break
            cand = inter
        return sorted(cand)

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        r = self._rng.choice(self.candidates(request, view.replicas))
        for b in request.blocks:
            self.trie.setdefault(b, set()).add(r)
        return r


class ProdstackLoadAwarePolicy(_EventPeer):
    """production-stack ``loadaware`` (PR #1035, read from its text and an index copy of
    its code); fact sheet section 6.

    State: the engines' cached blocks (LMCache's controller; here the engine event
    stream), the router's in-flight requests per endpoint and its requests over the last
    60 s. Decision: if no endpoint holds the prompt's first block, the endpoint with the
    fewest requests in the last 60 s (no session header in a trace); otherwise for every
    endpoint ``benefit = min(matched, n)/max(n, 1)`` (tokens), ``rel = (load -
    mean)/max(1, mean)``, ``score = benefit - 1.0 x rel``; argmax scanning in URL order
    with a strict ``>`` (ties to the first endpoint).
    """

    name = "prodstack-loadaware"

    def __init__(self, *, block_tokens: int, beta: float = 1.0, qps_window_s: float = 60.0):
        super().__init__()
        self._bt = block_tokens
        self.beta = beta
        self.qps_window_s = qps_window_s
        self._recent: list[deque[float]] = []

    def _qps_pick(self, n: int, now: float) -> int:
        lo = now - self.qps_window_s
        counts = []
        for p in range(n):
            ts = self._recent[p]
            while ts and ts[0] < lo:
                ts.popleft()
            counts.append(len(ts))
        return min(range(n), key=lambda p: (counts[p], p))

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        if len(self._recent) != n:
            self._recent = [deque() for _ in range(n)]
        tokens = request.input_tokens
        runs = self.engine_index.overlaps(request.blocks, n)
        matched = [min(tokens, runs[p] * self._bt) for p in range(n)]
        if not any(matched):
            r = self._qps_pick(n, now)
        else:
            load = view.in_flight
            mean = sum(load) / n
            best = -math.inf
            r = 0
            for p in range(n):
                benefit = min(matched[p], tokens) / max(tokens, 1)
                rel = (load[p] - mean) / max(1.0, mean)
                s = benefit - self.beta * rel
                if s > best:
                    best = s
                    r = p
        self._recent[r].append(now)
        return r


# --- 7. AIBrix -----------------------------------------------------------------------------


class AibrixPrefixCachePolicy(_Peer):
    """AIBrix gateway ``prefix-cache`` (vllm-project/aibrix @e3e10f9e,
    ``pkg/plugins/gateway/algorithms/prefix_cache.go``,
    ``pkg/utils/prefixcacheindexer/hash.go``; shipped manifest defaults); fact sheet
    section 7.

    State: one global LRU table of 128-byte block hashes (16 per trace block, the trailing
    partial one dropped) -> pod -> last write, written after each pick; 200,000 entries
    (12,500 trace blocks); entries not written for 20 min do not match. Load: the
    gateway's in-flight count. Decision: if ``max - min`` in-flight > 16, only the pods at
    the minimum may match; walk the blocks keeping the candidates that hold each one
    (``pct = floor(chunks matched x 100 / chunks)``); with a match, the matched pods by
    ``pct`` descending then in-flight ascending (random ties), the first with in-flight
    ``<= mean + 2 x sample std`` over all pods; else the least in-flight, random ties.
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
        per = max(1, block_tokens * chars_per_token // chunk_bytes)
        self._cap = max(1, max_entries // per)
        self.table: OrderedDict[int, dict[int, float]] = OrderedDict()

    def _least(self, inf: Sequence[int]) -> int:
        lo = min(inf)
        return self._rng.choice([p for p in range(len(inf)) if inf[p] == lo])

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        inf = view.in_flight
        chunks = [ch // self._chunk for ch in block_chars(request, self._bt, self._cpt)]
        total = sum(chunks)
        lo = min(inf)
        cands = set(range(n))
        if max(inf) - lo > self.imbalance:
            cands = {p for p in range(n) if inf[p] == lo}
        pct: dict[int, int] = {}
        done = 0
        blocks = request.blocks
        for idx, c in enumerate(chunks):
            if c == 0:
                break
            entry = self.table.get(blocks[idx])
            if entry is None:
                break
            keep = {p for p in cands if p in entry and now - entry[p] <= self.ttl_s}
            if not keep:
                break
            cands = keep
            done += c
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
        table = self.table
        for idx, c in enumerate(chunks):
            if c == 0:
                break
            b = blocks[idx]
            entry = table.get(b)
            if entry is None:
                table[b] = {r: now}
            else:
                entry[r] = now
                table.move_to_end(b)
        while len(table) > self._cap:
            table.popitem(last=False)
        return r


# --- 8. Ray Serve ----------------------------------------------------------------------------


class RayPrefixAffinityPolicy(_Peer):
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
        self.tree = _CharTree()
        self._bt = block_tokens
        self._cpt = chars_per_token
        self._rng = random.Random(seed)
        self.match_rate_threshold = match_rate_threshold

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        pair = self._rng.sample(range(n), min(2, n))
        chars = block_chars(request, self._bt, self._cpt)
        k, matched = self.tree.match(request.blocks, chars)
        text = sum(chars)
        rate = matched / text if text else 0.0
        if k > 0 and rate >= self.match_rate_threshold:
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
