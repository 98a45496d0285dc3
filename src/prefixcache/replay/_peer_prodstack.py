"""vLLM production-stack's routers as replay peers: ``prefixaware`` (a chunk trie) and
``loadaware`` over LMCache's controller index.

Every random choice draws from one ``random.Random(seed)`` per policy; "arbitrary"
choices go to the lowest replica index.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence

from prefixcache.kvevents import AllBlocksCleared, BlockStored, EventBatch
from prefixcache.replay._peer_base import CHARS_PER_TOKEN, Chunk, Peer, text_chunks
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "LMCACHE_CHUNK_TOKENS",
    "LmcacheKvPool",
    "ProdstackLoadAwarePolicy",
    "ProdstackPrefixPolicy",
]


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
