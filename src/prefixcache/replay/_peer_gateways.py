"""Peer policies of NVIDIA Dynamo, vLLM production-stack, AIBrix and Ray Serve.

Every random choice draws from one ``random.Random(seed)`` per policy; "arbitrary"
choices go to the lowest replica index.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence

from prefixcache._keys import check_rate
from prefixcache.kvevents import AllBlocksCleared, BlockStored, EventBatch
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
    "LMCACHE_CHUNK_TOKENS",
    "AibrixPrefixCachePolicy",
    "DynamoKvPolicy",
    "LmcacheKvPool",
    "ProdstackLoadAwarePolicy",
    "ProdstackPrefixPolicy",
    "RayPrefixAffinityPolicy",
]


# --- 4. Dynamo ---------------------------------------------------------------------------

#: Dynamo's approximate-mode expiry bucket, ns (``indexer/pruning.rs`` ``EXPIRY_BUCKET``).
_EXPIRY_BUCKET_NS = 100_000_000

#: Dynamo's stale-request checks: at most one per worker per 30 s
#: (``sequences/single.rs`` ``CHECK_EXPIRY_FREQUENCY``), and a sweep of every worker each
#: 60 s (``sequences/multi_worker.rs``).
_CHECK_S = 30.0
_SWEEP_S = 60.0


def _ns(seconds: float) -> int:
    """``seconds`` in whole nanoseconds (Dynamo's ``Instant`` arithmetic is in ns)."""
    return round(seconds * 1e9)


class DynamoKvPolicy(EventPeer):
    """NVIDIA Dynamo KV router, default selector (ai-dynamo/dynamo main via wxsms/dynamo
    @2a6da14c: ``lib/kv-router/src/scheduling/selector/default.rs``, ``selector/mod.rs``,
    ``scheduling/types.rs``, ``config.rs``, ``protocols.rs``; docs
    ``routing-concepts.md``); fact sheet section 4.

    The router hashes complete blocks only (``compute_block_hash_for_seq``): a prompt's
    trailing partial block is neither looked up, nor indexed, nor tracked as active.
    State: the engines' cached blocks from their events (or, with ``kv_events=False``,
    as ``--no-router-kv-events``: an index of full blocks written at routing time whose
    entries expire after 120 s, see below), and router-side active sequences per worker:
    uncached prompt tokens of in-flight requests before their first token, the unique
    full prompt blocks of in-flight requests, and their count. Cost per worker, in blocks
    of ``B`` tokens::

        prefill = max(0, (active_prefill_tokens + ISL) / B - 1.0 x overlap)
        decode  = active_blocks + (full blocks - full blocks already active there)

    ``overlap`` = leading full request blocks the worker holds. The decode term is
    ``potential_decode_blocks`` (``selector/mod.rs:196``, ``prompt_registry.rs:41-43,
    338``): the tracked blocks are full blocks, so a partial tail adds nothing. The
    ceiling ``potential_decode_blocks_after_admission`` (``scheduling/types.rs:477-489``)
    feeds only the response and the busy thresholds, not the cost. Temperature 0: the
    least cost, exact ties uniformly at random (``minimum_cost_index``).

    Approximate mode (``indexer/pruning.rs``): each worker's timers round their expiry
    up to 100 ms buckets counted from that worker's first insert (``PruneManager`` is
    created with the worker's state, ``bucket_origin = Instant::now()``, on its first
    non-empty insert), so a block written at ``t`` is gone from the first ``now`` with
    ``now >= origin + ceil((t + 120 - origin) / 0.1) x 0.1`` (``pop_expired``: expiry
    ``<= now``); a new write moves the expiry.

    Stale requests (``sequences/single.rs`` ``force_expiry``, ``multi_worker.rs``): the
    tracker forgets a request booked more than ``active_expiry_s`` (300 s) before a check,
    its prefill tokens and blocks with it; a later first token or completion of it is
    ignored. A worker is checked before each booking on it and by a sweep of every worker
    each 60 s from start, but at most once per 30 s (the last check starts at 0). In both
    modes; it changes decisions only when requests stay in flight for minutes.
    ``active_expiry_s=None`` turns it off; another value that is not a finite number > 0
    raises :class:`clusterrouting.InvalidRecordError`.

    Not modelled: Dynamo's tree records that a worker holds a block, not how many times
    it was stored, so one ``BlockRemoved`` drops a block stored twice; the shared
    ``EngineIndex`` read here counts the copies. The simulated engines never store a block
    they hold, so no replay can tell.
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
        active_expiry_s: float | None = 300.0,
    ) -> None:
        super().__init__()
        self.reads_kv_events = kv_events
        if not kv_events:
            self.name = "dynamo-kv-approx"
        self._bt = block_tokens
        self._rng = random.Random(seed)
        self.overlap_credit = overlap_credit
        self.approx_ttl_s = approx_ttl_s
        self.active_expiry_s = check_rate("active_expiry_s", active_expiry_s)
        self.active_prefill: list[int] = []
        self.active_blocks: list[dict[int, int]] = []
        self._pending: dict[int, int] = {}
        # the tracked requests: index -> (worker, booked at, its full blocks), each
        # worker's last stale check and the next sweep of every worker
        self._booked: dict[int, tuple[int, float, Sequence[int]]] = {}
        self._last_check: list[float] = []
        self._next_sweep = 0.0
        # approximate mode, per worker: block -> its expiry, and the worker's bucket
        # origin (None before its first insert); times in whole ns of replay time
        self._approx: list[dict[int, int]] = []
        self._origin: list[int | None] = []

    def _ensure(self, n: int) -> None:
        if len(self.active_prefill) != n:
            self.active_prefill = [0] * n
            self.active_blocks = [{} for _ in range(n)]
            self._approx = [{} for _ in range(n)]
            self._origin = [None] * n
            self._last_check = [0.0] * n

    def _sweep(self, now: float) -> None:
        """The 60 s sweeps of every worker due by ``now``. With nothing tracked a sweep only
        moves the check times, so a long quiet gap runs just its last sweep."""
        if self.active_expiry_s is None:
            return
        while self._next_sweep <= now:
            if not self._booked:
                self._next_sweep += math.floor((now - self._next_sweep) / _SWEEP_S) * _SWEEP_S
            for p in range(len(self._last_check)):
                self._expire(p, self._next_sweep)
            self._next_sweep += _SWEEP_S

    def _expire(self, p: int, now: float) -> None:
        """``force_expiry`` of worker ``p`` at ``now``: at most once per 30 s, it forgets
        the requests booked before ``now - active_expiry_s``."""
        expiry = self.active_expiry_s
        if expiry is None or now < self._last_check[p] + _CHECK_S:
            return
        self._last_check[p] = now
        cut = now - expiry
        stale = [i for i, (w, at, _) in self._booked.items() if w == p and at < cut]
        for i in stale:
            self._release(i)

    def _release(self, i: int) -> None:
        """Request ``i`` leaves the tracker: its prefill tokens (if still there) and
        blocks."""
        w, _, blocks = self._booked.pop(i)
        self.active_prefill[w] -= self._pending.pop(i, 0)
        act = self.active_blocks[w]
        for b in blocks:
            c = act[b]
            if c == 1:
                del act[b]
            else:
                act[b] = c - 1

    def _full(self, request: Request) -> Sequence[int]:
        """The request's complete blocks, the only ones the router hashes."""
        return request.blocks[: request.input_tokens // self._bt]

    def _overlap(self, p: int, blocks: Sequence[int], now_ns: int) -> int:
        seen = self._approx[p]
        k = 0
        while k < len(blocks):
            expiry = seen.get(blocks[k])
            if expiry is None or expiry <= now_ns:  # pruning.rs pop_expired: expiry <= now
                break
            k += 1
        return k

    def _write_approx(self, p: int, blocks: Sequence[int], now: float) -> None:
        """Record ``blocks`` on worker ``p`` at ``now``, as ``PruneManager.insert_at``."""
        if not blocks:  # insert_block_entries returns early: no worker state, no origin
            return
        now_ns = _ns(now)
        origin = self._origin[p]
        if origin is None:
            origin = self._origin[p] = now_ns
        expiry = now_ns + _ns(self.approx_ttl_s)
        if self.approx_ttl_s > 0:  # round_up_duration from the origin; a zero TTL: now
            since = expiry - origin
            expiry = origin + ((since - 1) // _EXPIRY_BUCKET_NS + 1) * _EXPIRY_BUCKET_NS
        seen = self._approx[p]
        for b in blocks:
            seen[b] = expiry

    def costs(self, request: Request, now: float, n: int) -> tuple[list[float], list[int]]:
        """Each worker's cost and overlap (in full blocks) for ``request``."""
        self._ensure(n)
        self._sweep(now)
        bt = self._bt
        isl = request.input_tokens
        blocks = self._full(request)
        full = len(blocks)
        out = []
        if self.reads_kv_events:
            ovl = self.engine_index.overlaps(blocks, n)
        else:
            now_ns = _ns(now)
            ovl = [self._overlap(p, blocks, now_ns) for p in range(n)]
        for p in range(n):
            o = ovl[p]
            prefill = max(0.0, (self.active_prefill[p] + isl) / bt - self.overlap_credit * o)
            act = self.active_blocks[p]
            depth = 0
            while depth < full and blocks[depth] in act:
                depth += 1
            decode = len(act) + (full - depth)
            out.append(prefill + decode)
        return out, ovl

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        cost, ovl = self.costs(request, now, n)
        lo = min(cost)
        ties = [p for p in range(n) if cost[p] == lo]
        r = ties[0] if len(ties) == 1 else self._rng.choice(ties)
        self._expire(r, now)  # add_request checks its worker first
        uncached = max(0, request.input_tokens - ovl[r] * self._bt)
        self._pending[i] = uncached
        self.active_prefill[r] += uncached
        act = self.active_blocks[r]
        blocks = self._full(request)
        for b in blocks:
            act[b] = act.get(b, 0) + 1
        self._booked[i] = (r, now, blocks)
        if not self.reads_kv_events:
            self._write_approx(r, blocks, now)
        return r

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        self._sweep(now)
        if i in self._booked:  # an expired request's first token is ignored
            self.active_prefill[replica] -= self._pending.pop(i, 0)

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        self._sweep(now)
        if i in self._booked:  # so is its completion
            self._release(i)


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


#: LMCache's chunk in tokens (``ChunkedTokenDatabase``'s default ``chunk_size``).
LMCACHE_CHUNK_TOKENS = 256


class LmcacheKvPool:
    """LMCache's controller index as production-stack ``loadaware`` queries it, at the
    LMCache production-stack pins (``lmcache==0.3.11`` since production-stack #770; the
    merged router passes the controller arguments only that version takes):
    ``lmcache/v1/cache_controller/controllers/kv_controller.py`` (``admit``, ``evict``,
    ``deregister``, ``lookup``), ``cache_controller/utils.py`` (``RegistryTree.find_kv``),
    ``lmcache/v1/token_database.py``; fact sheet section 6.

    State: trace block -> the replicas holding it, and each replica's place in the
    controller's registration order. Batches are applied as they arrive (after the
    engines' event delay): ``BlockStored`` admits its blocks for the replica,
    ``BlockRemoved`` evicts them, and ``AllBlocksCleared`` evicts all of the replica's
    blocks. A restart (:meth:`restart`: the engine's LMCache worker sends
    ``DeRegisterMsg`` as its process ends and registers anew as the next one starts)
    evicts them too, as ``deregister`` drops a departed worker's chunks, and the replica
    registers again at the back of the order; a batch whose ``seq`` is not above the
    replica's last means a restart the pool was not told of. The replicas first register
    in index order. Media other than the GPU are ignored; a lost batch is simply missing
    (no gap is detected).

    Lookup, :meth:`matched_tokens`: the prompt in chunks of ``chunk_tokens`` from its
    start, whole chunks only (the engine stores no partial chunk: ``save_unfull_chunk``
    is ``False`` by default since LMCache PR #2207). A replica holds a chunk once it holds
    every trace block covering its tokens. Walk the chunks until one nobody holds; each
    chunk is credited only to the holder registered first (``find_kv`` returns the first
    instance holding it in registration order), with the chunk's end. A replica's match
    is the end of the last chunk credited to it, 0 if none: other holders of a chunk get
    nothing for it (LMCache PR #4471, unmerged, describes this and would credit every
    holder). lmcache 0.3.9post2, which the router's PR measured on, credits the earliest
    admission instead (``kv_pool[key][0]``); either way one holder per chunk.

    Not thread-safe (the replay is single-threaded). Memory: one entry per (block,
    replica) held.

    >>> pool = LmcacheKvPool(block_tokens=512)
    >>> pool.apply(1, 0, EventBatch(ts=0.0, events=[BlockStored(
    ...     block_hashes=[7, 8], token_ids=[7, 8], block_size=1)]))
    >>> pool.apply(0, 0, EventBatch(ts=0.0, events=[BlockStored(
    ...     block_hashes=[7], token_ids=[7], block_size=1)]))
    >>> pool.matched_tokens(Request(arrival=0, input_tokens=1000, output_tokens=1,
    ...     blocks=(7, 8)), 2)  # block 7: replica 0 registered first; block 8: only 1
    [512, 768]
    """

    __slots__ = ("_bt", "_chunk", "_held", "_last_seq", "_rank", "_restarts", "holders")

    def __init__(self, *, block_tokens: int, chunk_tokens: int = LMCACHE_CHUNK_TOKENS) -> None:
        self._bt = block_tokens
        self._chunk = chunk_tokens
        #: block -> the replicas holding it
        self.holders: dict[int, set[int]] = {}
        self._held: dict[int, set[int]] = {}  # replica -> its blocks
        self._last_seq: dict[int, int] = {}
        # A replica's place in the registration order: (0, index) as first registered,
        # (k, 0) once it registered again after the k-th restart seen.
        self._rank: dict[int, tuple[int, int]] = {}
        self._restarts = 0

    def rank(self, replica: int) -> tuple[int, int]:
        """``replica``'s place in the controller's registration order (lower is first)."""
        return self._rank.get(replica, (0, replica))

    def _drop(self, replica: int) -> None:
        holders = self.holders
        for b in self._held.pop(replica, ()):
            entry = holders[b]
            entry.discard(replica)
            if not entry:
                del holders[b]

    def restart(self, replica: int) -> None:
        """``replica``'s engine restarted: its LMCache worker deregistered (its chunks
        dropped) and registers again, at the back of the order; its next batch starts a
        new sequence. O(blocks the replica holds)."""
        self._drop(replica)
        self._restarts += 1
        self._rank[replica] = (self._restarts, 0)
        self._last_seq.pop(replica, None)

    def apply(self, replica: int, seq: int, batch: EventBatch) -> None:
        """Apply ``replica``'s batch number ``seq`` (see the class). O(blocks in the
        batch); a restart or clear O(blocks the replica holds)."""
        last = self._last_seq.get(replica)
        if last is not None and seq <= last:  # restarted, and not told: as :meth:`restart`
            self.restart(replica)
        self._last_seq[replica] = seq
        holders = self.holders
        held = self._held.setdefault(replica, set())
        for ev in batch.events:
            if isinstance(ev, AllBlocksCleared):
                self._drop(replica)
                held = self._held.setdefault(replica, set())
            elif ev.medium not in (None, "GPU"):
                continue
            elif isinstance(ev, BlockStored):
                for b in ev.block_hashes:
                    entry = holders.get(b)
                    if entry is None:
                        holders[b] = {replica}
                    else:
                        entry.add(replica)
                    held.add(b)
            else:
                for b in ev.block_hashes:
                    entry = holders.get(b)
                    if entry is not None and replica in entry:
                        entry.discard(replica)
                        if not entry:
                            del holders[b]
                        held.discard(b)

    def matched_tokens(self, request: Request, n: int) -> list[int]:
        """``layout_info`` for ``request`` as matched tokens per replica ``0..n-1`` (see
        the class; 0 for a replica credited with no chunk). O(chunks walked x blocks per
        chunk x holders per block)."""
        out = [0] * n
        bt = self._bt
        size = self._chunk
        holders = self.holders
        rank = self.rank
        blocks = request.blocks
        nb = len(blocks)
        for end in range(size, request.input_tokens + 1, size):
            lo = (end - size) // bt
            hi = (end - 1) // bt + 1  # the chunk's blocks: lo .. hi - 1
            if hi > nb:  # more tokens than blocks: a malformed request
                break
            held = holders.get(blocks[lo])
            if held and hi > lo + 1:  # a chunk over several blocks: held by all of them
                held = held.intersection(*(holders.get(b, ()) for b in blocks[lo + 1 : hi]))
            if not held:
                break
            first = min(held, key=rank)
            if first < n:
                out[first] = end
        return out


class ProdstackLoadAwarePolicy(Peer):
    """production-stack ``loadaware`` (PR #1035, read from its text and an index copy of
    its code) over LMCache's controller; fact sheet section 6.

    State: :class:`LmcacheKvPool` fed by the engines' event stream, the router's
    in-flight requests per endpoint and its requests over the last 60 s. Matched tokens
    per endpoint: the controller's ``lookup`` (whole 256-token chunks, each credited only
    to the holder registered first; an endpoint it lists nothing for has 0).
    Decision: if it lists no endpoint, ``_qps_routing`` (no session header in a trace;
    ``routing_logic.py`` @a6c01db0): scanning in URL order, the first endpoint this router
    never sent a request to wins at once, else the fewest requests in the last 60 s with
    a strict ``<``; otherwise for every endpoint ``benefit = min(matched, n)/max(n, 1)``
    (tokens), ``rel = (load - mean)/max(1, mean)``, ``score = benefit - 1.0 x rel``;
    argmax scanning in URL order with a strict ``>`` (ties to the first endpoint).

    The engines' LMCache workers are taken to send heartbeats, as production-stack's
    KV-aware tutorial configures them (``workerHeartbeatTime``). LMCache's own default
    sends none, and the router's health check (30 s worker timeout) then deregisters every
    engine about 35 s after it registers: every lookup is empty from then on and this
    policy would route by QPS alone.
    """

    name = "prodstack-loadaware"
    reads_kv_events = True

    def __init__(self, *, block_tokens: int, beta: float = 1.0, qps_window_s: float = 60.0):
        self._bt = block_tokens
        self.beta = beta
        self.qps_window_s = qps_window_s
        self.kv_pool = LmcacheKvPool(block_tokens=block_tokens)
        self._recent: list[deque[float]] = []
        self._routed: list[bool] = []

    def on_kv_events(self, replica: int, seq: int, batch: EventBatch, now: float) -> None:
        self.kv_pool.apply(replica, seq, batch)

    def on_restart(self, replica: int, now: float) -> None:
        """The replica's engine restarted (its LMCache worker deregistered at once)."""
        self.kv_pool.restart(replica)

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
        matched = self.kv_pool.matched_tokens(request, n)
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
        get = table.get
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
