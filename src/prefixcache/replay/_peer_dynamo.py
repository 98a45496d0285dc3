"""NVIDIA Dynamo's KV router as a replay peer, with and without the engines' events.

Every random choice draws from one ``random.Random(seed)`` per policy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from prefixcache._keys import check_rate
from prefixcache.replay._peer_base import EventPeer
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = ["DynamoKvPolicy"]


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
