"""The simulated cluster: continuous-batching engines with a shared, paged KV cache.

See :class:`~prefixcache.replay._cluster.ClusterModel` for the model, its constants and
where each comes from; :mod:`._view` for what a policy sees and implements.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

import attrs

from clusterrouting import InvalidRecordError
from prefixcache.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._trace import Request
from prefixcache.replay._view import (
    DECODE_LOG_INTERVAL,
    IDLE_RATE_RESET_S,
    ClusterView,
    EngineLoad,
    ReplayPolicy,
)

__all__ = ["TOKEN_MASK", "SimulationOutcome", "simulate"]


TOKEN_MASK = 0xFFFF_FFFF
"""Engine events carry one stand-in token per trace block: its id's low 32 bits (our chain
hashes tokens, and trace ids are below 2**32 in the Mooncake traces)."""


@attrs.frozen(kw_only=True)
class SimulationOutcome:
    """Raw per-request results of one simulation (arrays indexed like the requests).

    ``hit_blocks``: leading blocks resident on the chosen replica at admission;
    ``reachable_blocks``: the most leading blocks resident on any replica at arrival;
    ``ttft_s``: arrival to first token; ``done_s``: completion time (simulated seconds,
    after the speed-up); ``prefill_tokens_per_replica``: tokens each replica prefilled;
    ``end_s``: the last completion; ``kv_batches``: engine batches published, delivered and
    lost.
    """

    replica: tuple[int, ...]
    hit_blocks: tuple[int, ...]
    ttft_s: tuple[float, ...]
    requests_per_replica: tuple[int, ...]
    routing_s: float
    wall_s: float
    reachable_blocks: tuple[int, ...] = ()
    done_s: tuple[float, ...] = ()
    prefill_tokens_per_replica: tuple[int, ...] = ()
    end_s: float = 0.0
    kv_batches: tuple[int, int, int] = (0, 0, 0)


_FIRST = 0
_DONE = 1
_KV = 2


class _Engine:
    __slots__ = (
        "clock",
        "ctx_sum",
        "dec",
        "dlog_steps",
        "dlog_t",
        "dlog_toks",
        "doomed",
        "epoch",
        "gen_tp",
        "lru",
        "n_dec",
        "prefill",
        "prefilled",
        "private",
        "refs",
        "seq",
        "stats_t",
        "step",
        "waiting",
    )

    def __init__(self) -> None:
        self.clock = 0.0
        self.step = 0
        self.waiting: deque[int] = deque()
        self.prefill: list[list[int]] = []  # [request, tokens left]
        self.dec: list[tuple[int, int]] = []  # heap of (last step, request)
        self.n_dec = 0
        self.ctx_sum = 0
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.refs: dict[int, int] = {}
        self.doomed: dict[int, int] = {}
        self.epoch = 0  # restarts so far: a request admitted before the last holds doomed blocks
        self.private = 0
        self.seq = 0
        self.prefilled = 0
        self.dlog_steps = 0  # decode steps since the last decode log
        self.dlog_toks = 0  # tokens they generated
        self.dlog_t = 0.0  # when the last log was written (or the engine started)
        self.gen_tp = 0.0  # tokens/s over the last complete log window
        self.stats_t = 0.0  # the last prefill or decode log (an idle reset counts from it)

    def log_decode(self, k: int, n_dec: int, a: float, d: float) -> None:
        """Count ``k`` decode steps of ``n_dec`` tokens each, the ``j``-th starting at
        ``clock + j a + d j (j - 1) / 2``: at every :data:`DECODE_LOG_INTERVAL`-th decode
        step ``gen_tp`` becomes the tokens generated since the last log over the time
        since it (SGLang's ``log_decode_stats``)."""
        iv = DECODE_LOG_INTERVAL
        need = iv - self.dlog_steps
        if k < need:
            self.dlog_steps += k
            self.dlog_toks += k * n_dec
            return
        m = need + iv * ((k - need) // iv)  # steps to the last log within these k
        end = self.clock + m * a + d * m * (m - 1) / 2
        if m == need:
            toks, since = self.dlog_toks + m * n_dec, self.dlog_t
        else:
            w = m - iv
            toks, since = iv * n_dec, self.clock + w * a + d * w * (w - 1) / 2
        gap = end - since
        self.gen_tp = toks / gap if gap > 0 else 0.0
        self.dlog_t = self.stats_t = end
        self.dlog_steps = k - m
        self.dlog_toks = (k - m) * n_dec


def simulate(
    requests: Sequence[Request],
    policy: ReplayPolicy,
    model: ClusterModel = DEFAULT_CLUSTER,
    *,
    speedup: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationOutcome:
    """Replay ``requests`` (sorted by arrival) through ``policy`` on the cluster ``model``.

    Arrival times are divided by ``speedup``. Before each arrival every engine runs up to
    the arrival (a step that starts before it is committed; its results are delivered at
    its end), then router-side events up to the arrival are delivered in time order (first
    tokens, then completions, then engine event batches at equal times), then the policy
    chooses. ``routing_s`` is the wall time spent inside the policy (decisions and their
    bookkeeping callbacks), i.e. the routing library's own cost. ``progress(done, total)``
    is called every 256 requests and at the end.

    Raises:
        InvalidRecordError: ``speedup`` is not > 0, or the policy returned a replica out
            of range.
    """
    if isinstance(speedup, bool) or not speedup > 0 or math.isinf(speedup):
        raise InvalidRecordError("speedup", speedup, "must be a finite number > 0")
    wall0 = time.perf_counter()
    n_rep = model.replicas
    cap = model.cache_blocks if model.cache_blocks is not None else 1 << 62
    bt = model.block_tokens
    inv_p = 1.0 / float(model.prefill_tokens_per_s)
    base = 1.0 / float(model.decode_tokens_per_s)
    t_seq = float(model.decode_s_per_request)
    t_kv = float(model.decode_s_per_context_token)
    budget_max = model.max_batch_tokens
    max_run = model.max_running
    events_on = bool(getattr(policy, "reads_kv_events", False))
    ev_delay = float(model.kv_event_delay_s)
    ev_loss = float(model.kv_event_loss)
    ev_rng = random.Random(model.kv_event_seed)
    kv_stats = [0, 0, 0]
    view = ClusterView(model)
    in_flight = view.in_flight
    last_used = view.last_used
    pinned = view._pinned
    engines = [_Engine() for _ in range(n_rep)]

    def kv_usage(r: int) -> float:
        """Replica ``r``'s distinct blocks in use over the capacity (0 when infinite)."""
        return min(1.0, pinned[r] / cap) if 0 < cap < (1 << 62) else 0.0

    def engine_load(r: int) -> EngineLoad:
        e = engines[r]
        refs = e.refs
        lru = e.lru
        uncached = sum(item[1] for item in e.prefill)
        for j in e.waiting:
            req = requests[j]
            blocks = req.blocks
            nb = len(blocks)
            k = 0
            while k < nb and (blocks[k] in refs or blocks[k] in lru):
                k += 1
            uncached += max(1, req.input_tokens - k * bt)
        return EngineLoad(
            waiting_reqs=len(e.waiting),
            running_reqs=len(e.prefill) + e.n_dec,
            waiting_uncached_tokens=uncached,
            token_usage=kv_usage(r),
            gen_throughput=e.gen_tp,
        )

    view._load = engine_load
    served = [0] * n_rep
    n = len(requests)
    out_rep = [0] * n
    out_hit = [0] * n
    out_epoch = [0] * n  # the engine's epoch at each request's admission
    out_reach = [0] * n
    out_ttft = [0.0] * n
    out_done = [0.0] * n
    arrive = [0.0] * n
    heap: list[tuple[float, int, int]] = []
    # engine batches (replica, seq, batch) and restarts (replica, -1, None) on their way
    payloads: dict[int, tuple[int, int, EventBatch | None]] = {}
    on_restart: Callable[[int, float], None] | None = (
        getattr(policy, "on_restart", None) if events_on else None
    )
    counter = [0]
    push = heapq.heappush
    perf = time.perf_counter
    ev_step: list[BlockStored | BlockRemoved | AllBlocksCleared] = []

    def publish(r: int, e: _Engine, t: float) -> None:
        batch = EventBatch(ts=float(t), rank=None, events=tuple(ev_step))
        ev_step.clear()
        seq = e.seq
        e.seq = seq + 1
        kv_stats[0] += 1
        if ev_loss and ev_rng.random() < ev_loss:
            kv_stats[2] += 1
            return
        k = counter[0] = counter[0] + 1
        payloads[k] = (r, seq, batch)
        push(heap, (t + ev_delay, _KV, k))

    def admit(e: _Engine, j: int, running: int) -> bool:
        req = requests[j]
        blocks = req.blocks
        lru = e.lru
        refs = e.refs
        nb = len(blocks)
        k = 0
        k_lru = 0
        while k < nb:
            b = blocks[k]
            if b in refs:
                k += 1
            elif b in lru:
                k += 1
                k_lru += 1
            else:
                break
        new = 0
        for idx in range(k, nb):
            b = blocks[idx]
            if b in lru:
                k_lru += 1
            elif b not in refs:
                new += 1
        out_blocks = -(-req.output_tokens // bt)
        used = len(refs) + len(e.doomed) + e.private
        if used + k_lru + new + out_blocks > cap and running > 0:
            return False
        for b in blocks:
            c = refs.get(b)
            if c is None:
                if b in lru:
                    del lru[b]
                refs[b] = 1
            else:
                refs[b] = c + 1
        e.private += out_blocks
        used = len(refs) + len(e.doomed) + e.private
        if len(lru) + used > cap:
            removed = []
            while lru and len(lru) + used > cap:
                removed.append(lru.popitem(last=False)[0])
            if events_on and removed:
                ev_step.append(BlockRemoved(block_hashes=tuple(removed), medium="GPU"))
        out_hit[j] = k
        out_epoch[j] = e.epoch
        inp = req.input_tokens
        rem = inp - k * bt
        if rem < 1:
            rem = 1
        e.prefill.append([j, rem])
        pinned[out_rep[j]] = len(refs) + len(e.doomed) + e.private  # distinct blocks in use
        return True

    def release(e: _Engine, j: int) -> None:
        req = requests[j]
        lru = e.lru
        if out_epoch[j] == e.epoch:
            refs = e.refs
            for b in reversed(req.blocks):
                c = refs[b]
                if c == 1:
                    del refs[b]
                    lru[b] = None
                else:
                    refs[b] = c - 1
        else:  # admitted before a restart: its blocks were doomed then
            doomed = e.doomed
            for b in req.blocks:
                d = doomed[b]
                if d == 1:
                    del doomed[b]
                else:
                    doomed[b] = d - 1
        ob = -(-req.output_tokens // bt)
        e.private -= ob
        pinned[out_rep[j]] = len(e.refs) + len(e.doomed) + e.private

    def finish(j: int, t: float) -> None:
        out_done[j] = t
        push(heap, (t, _DONE, j))

    def run(r: int, t: float) -> None:
        """Run engine ``r`` until every step starting before ``t`` is committed."""
        e = engines[r]
        while e.clock < t:
            prefill = e.prefill
            n_dec = e.n_dec
            budget = budget_max - n_dec
            ptoks = 0
            for item in prefill:
                if budget <= 0:
                    break
                c = item[1] if item[1] < budget else budget
                item.append(c)
                ptoks += c
                budget -= c
            waiting = e.waiting
            running = len(prefill) + n_dec
            while waiting and budget > 0 and running < max_run:
                j = waiting[0]
                if not admit(e, j, running):
                    break
                waiting.popleft()
                running += 1
                item = prefill[-1]
                c = item[1] if item[1] < budget else budget
                item.append(c)
                ptoks += c
                budget -= c
            if not prefill:
                if n_dec == 0:
                    if ev_step:
                        publish(r, e, e.clock)
                    if t > e.stats_t + IDLE_RATE_RESET_S:
                        e.gen_tp = 0.0  # idle past the reset: SGLang zeroes the rate
                    e.clock = t  # idle
                    return
                # Pure decode until the next completion or until t: jump in one go.
                a = base + n_dec * t_seq + e.ctx_sum * t_kv
                d = n_dec * t_kv
                k_f = e.dec[0][0] - e.step
                span = t - e.clock
                if math.isinf(span):
                    k = k_f
                else:
                    if d > 0:
                        # steps j = 0.. start at clock + j*a + d*j*(j-1)/2 < t
                        b2 = a - d / 2
                        jm = int((-b2 + math.sqrt(b2 * b2 + 2 * d * span)) / d)
                    else:
                        jm = int(span / a)
                    while jm > 0 and jm * a + d * jm * (jm - 1) / 2 >= span:
                        jm -= 1
                    while (jm + 1) * a + d * (jm + 1) * jm / 2 < span:
                        jm += 1
                    k = min(k_f, jm + 1)
                if ev_step:
                    publish(r, e, e.clock)
                e.log_decode(k, n_dec, a, d)
                e.clock += k * a + d * k * (k - 1) / 2
                e.step += k
                e.ctx_sum += n_dec * k
                end = e.clock
                dec = e.dec
                while dec and dec[0][0] == e.step:
                    _, j = heapq.heappop(dec)
                    e.n_dec -= 1
                    req = requests[j]
                    e.ctx_sum -= req.input_tokens + req.output_tokens
                    release(e, j)
                    finish(j, end)
                continue
            dt = base + ptoks * inv_p + n_dec * t_seq + e.ctx_sum * t_kv
            if n_dec:
                e.log_decode(1, n_dec, dt, 0.0)
            end = e.clock + dt
            if ptoks:
                e.stats_t = end  # a prefill batch's log
            e.step += 1
            step = e.step
            e.prefilled += ptoks
            # decode progress of the requests already decoding
            e.ctx_sum += n_dec
            dec = e.dec
            while dec and dec[0][0] == step:
                _, j = heapq.heappop(dec)
                e.n_dec -= 1
                req = requests[j]
                e.ctx_sum -= req.input_tokens + req.output_tokens
                release(e, j)
                finish(j, end)
            # prefill chunks
            keep = []
            for item in prefill:
                if len(item) == 3:
                    j, left, c = item
                    left -= c
                    if left > 0:
                        keep.append([j, left])
                        continue
                    out_ttft[j] = end - arrive[j]
                    push(heap, (end, _FIRST, j))
                    req = requests[j]
                    if events_on:
                        hb = out_hit[j]
                        blocks = req.blocks
                        if hb < len(blocks):
                            ev_step.append(
                                BlockStored(
                                    block_hashes=blocks[hb:],
                                    parent_block_hash=blocks[hb - 1] if hb else None,
                                    token_ids=tuple(b & TOKEN_MASK for b in blocks[hb:]),
                                    block_size=1,
                                    medium="GPU",
                                )
                            )
                    if req.output_tokens <= 1:
                        release(e, j)
                        finish(j, end)
                    else:
                        heapq.heappush(dec, (step + req.output_tokens - 1, j))
                        e.n_dec += 1
                        e.ctx_sum += req.input_tokens + 1
                else:
                    keep.append(item)
            e.prefill = keep
            e.clock = end
            if ev_step:
                publish(r, e, end)

    restarts = sorted(model.restarts)
    ri = 0

    def restart(r: int, t: float) -> None:
        run(r, t)
        e = engines[r]
        if e.clock < t:
            e.clock = t
        for b, c in e.refs.items():
            e.doomed[b] = e.doomed.get(b, 0) + c
        e.refs.clear()
        e.epoch += 1
        e.lru.clear()
        pinned[r] = len(e.doomed) + e.private
        ev_step.clear()
        e.seq = 0
        e.dlog_steps = e.dlog_toks = 0
        e.dlog_t = e.stats_t = e.clock
        e.gen_tp = 0.0
        if on_restart is not None:  # the process ended with its last step: the router hears
            k = counter[0] = counter[0] + 1  # of it after that step's batch
            payloads[k] = (r, -1, None)
            push(heap, (e.clock + ev_delay, _KV, k))

    def drain(until: float) -> float:
        spent = 0.0
        while heap and heap[0][0] <= until:
            t, kind, j = heapq.heappop(heap)
            if kind == _KV:
                r, seq, batch = payloads.pop(j)
                t0 = perf()
                if batch is None:
                    assert on_restart is not None  # only it queues a restart
                    on_restart(r, t)
                else:
                    kv_stats[1] += 1
                    policy.on_kv_events(r, seq, batch, t)  # type: ignore[attr-defined]
                spent += perf() - t0
                continue
            rj = requests[j]
            r = out_rep[j]
            if kind == _DONE:
                in_flight[r] -= 1
                t0 = perf()
                policy.on_complete(j, rj, r, t)
                spent += perf() - t0
            else:
                t0 = perf()
                policy.on_first_token(j, rj, r, t)
                spent += perf() - t0
        return spent

    scrape = float(model.scrape_interval_s)
    routing = 0.0
    for i, req in enumerate(requests):
        now = req.arrival / speedup
        arrive[i] = now
        while ri < len(restarts) and restarts[ri][0] <= now:
            restart(restarts[ri][1], restarts[ri][0])
            ri += 1
        for r in range(n_rep):
            if engines[r].clock < now:
                run(r, now)
        routing += drain(now)
        if now - view.scraped_at >= scrape:
            view.scraped_at = now
            for r in range(n_rep):
                e = engines[r]
                view.waiting[r] = len(e.waiting)
                view.running[r] = len(e.prefill) + e.n_dec
                view.kv_usage[r] = kv_usage(r)
        # reachable: the most leading blocks resident anywhere at arrival
        blocks = req.blocks
        best = 0
        for e in engines:
            lru = e.lru
            refs = e.refs
            k = 0
            nb = len(blocks)
            while k < nb and (blocks[k] in refs or blocks[k] in lru):
                k += 1
            if k > best:
                best = k
        out_reach[i] = best
        t0 = perf()
        r = policy.choose(i, req, now, view)
        routing += perf() - t0
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < n_rep:
            raise InvalidRecordError("replica", r, f"policy {policy.name!r} returned it")
        out_rep[i] = r
        in_flight[r] += 1
        last_used[r] = now
        served[r] += 1
        e = engines[r]
        if e.clock < now:
            e.clock = now
        e.waiting.append(i)
        t0 = perf()
        policy.on_dispatch(i, req, r, now)
        routing += perf() - t0
        if progress is not None and (i & 255) == 255:
            progress(i + 1, n)
    while ri < len(restarts):
        restart(restarts[ri][1], restarts[ri][0])
        ri += 1
    for r in range(n_rep):
        run(r, math.inf)
    routing += drain(math.inf)
    if progress is not None:
        progress(n, n)
    return SimulationOutcome(
        replica=tuple(out_rep),
        hit_blocks=tuple(out_hit),
        ttft_s=tuple(out_ttft),
        requests_per_replica=tuple(served),
        routing_s=routing,
        wall_s=time.perf_counter() - wall0,
        reachable_blocks=tuple(out_reach),
        done_s=tuple(out_done),
        prefill_tokens_per_replica=tuple(e.prefilled for e in engines),
        end_s=max(out_done, default=0.0),
        kv_batches=(kv_stats[0], kv_stats[1], kv_stats[2]),
    )
