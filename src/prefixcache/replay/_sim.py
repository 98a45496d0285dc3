"""The simulated cluster: continuous-batching engines with a shared, paged KV cache.

See :class:`ClusterModel` for the model, its constants and where each comes from.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from clusterrouting import InvalidRecordError
from prefixcache.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from prefixcache.replay._trace import Request

__all__ = [
    "DEFAULT_CLUSTER",
    "ClusterModel",
    "ClusterView",
    "ReplayPolicy",
    "SimulationOutcome",
    "TOKEN_MASK",
    "simulate",
]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRecordError(attr.name, value, "must be a number")
    if math.isnan(value) or value <= 0:
        raise InvalidRecordError(attr.name, value, "must be > 0")


def _nonneg(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRecordError(attr.name, value, "must be a number")
    if not math.isfinite(value) or value < 0:
        raise InvalidRecordError(attr.name, value, "must be a finite number >= 0")


def _cache_blocks(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRecordError(attr.name, value, "must be an int >= 0 or None (infinite)")


def _loss(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InvalidRecordError(attr.name, value, "must be a number in [0, 1)")


def _restarts(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise InvalidRecordError(attr.name, value, "must be a tuple of (time_s, replica)")
    for item in value:
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or isinstance(item[0], bool)
            or not isinstance(item[0], int | float)
            or not math.isfinite(item[0])
            or item[0] < 0
            or type(item[1]) is not int
            or item[1] < 0
        ):
            raise InvalidRecordError(attr.name, item, "each restart is (time_s >= 0, replica)")


@attrs.frozen(kw_only=True)
class ClusterModel:
    """The simulated deployment (all rates per replica).

    **Engine.** A replica is one inference server running a continuous-batching engine
    with chunked prefill (vLLM V1's scheduler). It runs one forward *step* after another
    while it has work. Each step first gives every decoding request one token, then gives
    prefill chunks to running requests still prefilling (oldest first), then admits waiting
    requests (FIFO) while the step has token budget left (``max_batch_tokens`` tokens per
    step), fewer than ``max_running`` requests run, and the KV cache can hold the admitted
    request. A request that cannot be admitted waits (queueing). A step lasts::

        1 / decode_tokens_per_s                          # weights read once per step
        + prefill_tokens_in_step / prefill_tokens_per_s  # compute-bound prefill chunks
        + decode_s_per_request * decoding_requests       # per-sequence overhead
        + decode_s_per_context_token * decoding_context  # KV read by attention

    so decode slows down as the batch and its contexts grow, and a prefill chunk stalls
    every decode in its step. A request's first token is produced by the step that
    finishes its prefill (TTFT = arrival to the end of that step); it then produces one
    token per step and completes with its ``output_tokens``-th token. A prompt entirely in
    cache still needs one token computed (as in vLLM).

    **KV cache.** ``cache_blocks`` blocks of ``block_tokens`` tokens per replica
    (``None``: infinite), shared by running requests and cached prefixes. On admission a
    request pins its prompt blocks (the leading ones already resident are hits; the others
    are allocated) plus ``ceil(output_tokens / block_tokens)`` private blocks for its
    output; the hit ratio counts the leading resident blocks at admission. When a request
    completes its prompt blocks stay cached, unpinned, in LRU order (deepest first, so a
    prefix is more recent than its extensions); allocation evicts the least recent unpinned
    blocks, and a request waits while pinned blocks leave no room (a request alone on an
    idle replica is always admitted). A block counts as cached from its request's admission:
    a request is admitted only in a step whose budget is left over after the remaining
    tokens of every earlier prefill, so by then every block of a running request is
    scheduled, and vLLM V1 (which caches a block in the step that schedules its last
    token: ``KVCacheManager.allocate_slots`` in ``vllm/v1/core/kv_cache_manager.py``) would
    hit it too.

    **Engine events** (issue-15 stream, only built when a policy reads it): after each
    step with changes, the engine publishes one ``prefixcache.kvevents.EventBatch``
    (``seq`` counting from 0 per publisher): a ``BlockStored`` for the blocks a request
    computed, when its prefill completes, and a ``BlockRemoved`` for evicted blocks.
    Engine block = trace block: ``block_hashes`` are the trace's block ids, ``block_size``
    is 1 and each block's one stand-in token is its id (``TOKEN_MASK``), so a consumer's
    chain over those tokens identifies trace blocks exactly. A batch reaches the router
    ``kv_event_delay_s`` after its step ends and is lost with probability
    ``kv_event_loss`` (a seeded ``random.Random(kv_event_seed)``). ``restarts`` lists
    ``(time_s, replica)``: at that (simulated) time the engine's cache is emptied (pinned
    blocks are freed when their request ends, never hit again) and its publisher restarts
    at ``seq`` 0.

    **Constants** (defaults; one 8xH100-80GB server, Llama-3.1-70B shape, FP8 KV cache,
    host-DRAM KV offload, as docs/replay.md derives for ``cache_blocks`` and the prefill rate):

    * ``prefill_tokens_per_s`` 20,000: ~157 GFLOP/token (2 x 70.6 B weights + attention
      at ~6 k context) against 8 x 989 TFLOP/s dense BF16 (H100 SXM datasheet) at 40 %
      MFU.
    * ``decode_tokens_per_s`` 80 (a lone request's step, 12.5 ms): 141 GB of BF16 weights
      over 8 x 3.35 TB/s HBM3 (datasheet) = 5.3 ms at peak, ~7.5 ms at the ~70 % of peak
      bandwidth measured by memory-bound kernels, plus ~5 ms of TP-8 all-reduces (80
      layers x 2 per step) and launch overhead.
    * ``decode_s_per_context_token`` 8.7e-9: 160 KiB of FP8 KV per token (2 x 80 layers x
      8 KV heads x 128) read once per step at that 70 % of 26.8 TB/s.
    * ``decode_s_per_request`` 1e-4: sampling, scheduling and output processing per
      sequence per step (vLLM's CPU overhead per sequence is of this order).
    * ``max_batch_tokens`` 8,192 and ``max_running`` 1,024: vLLM V1's defaults for the
      OpenAI server on GPUs with >= 70 GiB (``max_num_batched_tokens``,
      ``max_num_seqs``).
    * ``kv_bytes_per_token`` 163,840: only converts blocks to the bytes policies see.
    * ``scrape_interval_s`` 0.05: engine metrics (``waiting``, ``running``, KV use)
      are what a scraper saw at most this long ago (llm-d scrapes every 50 ms).
    * ``kv_event_delay_s`` 0.01 (the peer fact sheet's baseline; sweep 0-0.2 s).

    Raises:
        InvalidRecordError: a field out of range (each names itself).
    """

    replicas: int = attrs.field(default=8, validator=_positive)
    cache_blocks: int | None = attrs.field(default=16_384, validator=_cache_blocks)
    block_tokens: int = attrs.field(default=512, validator=_positive)
    prefill_tokens_per_s: float = attrs.field(default=20_000.0, validator=_positive)
    decode_tokens_per_s: float = attrs.field(default=80.0, validator=_positive)
    kv_bytes_per_token: int = attrs.field(default=163_840, validator=_positive)
    decode_s_per_request: float = attrs.field(default=1e-4, validator=_nonneg)
    decode_s_per_context_token: float = attrs.field(default=8.7e-9, validator=_nonneg)
    max_batch_tokens: int = attrs.field(default=8192, validator=_positive)
    max_running: int = attrs.field(default=1024, validator=_positive)
    scrape_interval_s: float = attrs.field(default=0.05, validator=_nonneg)
    kv_event_delay_s: float = attrs.field(default=0.01, validator=_nonneg)
    kv_event_loss: float = attrs.field(default=0.0, validator=_loss)
    kv_event_seed: int = 0
    restarts: tuple[tuple[float, int], ...] = attrs.field(default=(), validator=_restarts)

    def __attrs_post_init__(self) -> None:
        for name in ("replicas", "block_tokens", "max_batch_tokens", "max_running"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidRecordError(name, v, "must be an int >= 1")
        for _t, r in self.restarts:
            if r >= self.replicas:
                raise InvalidRecordError("restarts", r, "replica out of range")


DEFAULT_CLUSTER = ClusterModel()


TOKEN_MASK = 0xFFFF_FFFF
"""Engine events carry one stand-in token per trace block: its id's low 32 bits (our chain
hashes tokens, and trace ids are below 2**32 in the Mooncake traces)."""


class ClusterView:
    """What a policy may read about the replicas at decision time (do not mutate).

    Router-side, exact and instant: ``node_ids[i]`` (``"replica-00"``...),
    ``in_flight[i]`` (dispatched by this router and not completed), ``last_used[i]`` (the
    time it was last picked, ``None``: never), :meth:`free_kv_bytes`.

    Engine metrics as a scraper sees them (refreshed every ``scrape_interval_s`` of
    simulated time): ``waiting[i]`` (queued, not admitted), ``running[i]`` (admitted, not
    completed), ``kv_usage[i]`` in [0, 1] (blocks pinned by running requests over the
    capacity; cached unpinned blocks count as free, as vLLM reports), and
    ``num_gpu_blocks`` (the capacity; 2**31 when infinite).
    """

    __slots__ = (
        "_model",
        "_pinned",
        "in_flight",
        "kv_usage",
        "last_used",
        "node_ids",
        "num_gpu_blocks",
        "running",
        "scraped_at",
        "waiting",
    )

    def __init__(self, model: ClusterModel) -> None:
        n = model.replicas
        self._model = model
        self.node_ids: tuple[str, ...] = tuple(f"replica-{i:02d}" for i in range(n))
        self.in_flight: list[int] = [0] * n
        self.last_used: list[float | None] = [None] * n
        self._pinned: list[int] = [0] * n
        self.waiting: list[int] = [0] * n
        self.running: list[int] = [0] * n
        self.kv_usage: list[float] = [0.0] * n
        self.num_gpu_blocks: int = 1 << 31 if model.cache_blocks is None else model.cache_blocks
        self.scraped_at: float = -math.inf

    @property
    def replicas(self) -> int:
        return len(self.node_ids)

    def free_kv_bytes(self, i: int) -> int:
        """KV bytes of replica ``i`` not pinned by running requests (0 when full)."""
        free_blocks = max(0, self.num_gpu_blocks - self._pinned[i])
        return free_blocks * self._model.block_tokens * self._model.kv_bytes_per_token


class ReplayPolicy(Protocol):
    """A routing policy under replay. ``choose`` returns a replica index in range.

    The callbacks tell the policy what a gateway sees: its own dispatch, the first token
    streaming back (end of prefill) and the end of the response. A policy with a true
    ``reads_kv_events`` attribute also gets ``on_kv_events(replica, seq, batch, now)`` for
    every engine event batch that reaches the router.
    """

    name: str
    observe_at: str  # "dispatch" or "completion" for indexing policies, "-" otherwise

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int: ...

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None: ...

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None: ...

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None: ...


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
        "doomed",
        "lru",
        "n_dec",
        "prefill",
        "prefilled",
        "private",
        "refs",
        "seq",
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
        self.private = 0
        self.seq = 0
        self.prefilled = 0


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
    served = [0] * n_rep
    n = len(requests)
    out_rep = [0] * n
    out_hit = [0] * n
    out_reach = [0] * n
    out_ttft = [0.0] * n
    out_done = [0.0] * n
    arrive = [0.0] * n
    heap: list[tuple[float, int, int]] = []
    payloads: dict[int, tuple[int, int, EventBatch]] = {}
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
        inp = req.input_tokens
        rem = inp - k * bt
        if rem < 1:
            rem = 1
        e.prefill.append([j, rem])
        pinned[out_rep[j]] += nb + out_blocks
        return True

    def release(e: _Engine, j: int) -> None:
        req = requests[j]
        refs = e.refs
        lru = e.lru
        doomed = e.doomed
        for b in reversed(req.blocks):
            c = refs.get(b)
            if c is not None:
                if c == 1:
                    del refs[b]
                    lru[b] = None
                else:
                    refs[b] = c - 1
            else:
                d = doomed.get(b)
                if d is not None:
                    if d == 1:
                        del doomed[b]
                    else:
                        doomed[b] = d - 1
        ob = -(-req.output_tokens // bt)
        e.private -= ob
        pinned[out_rep[j]] -= len(req.blocks) + ob

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
            end = e.clock + dt
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
        e.lru.clear()
        ev_step.clear()
        e.seq = 0

    def drain(until: float) -> float:
        spent = 0.0
        while heap and heap[0][0] <= until:
            t, kind, j = heapq.heappop(heap)
            if kind == _KV:
                r, seq, batch = payloads.pop(j)
                kv_stats[1] += 1
                t0 = perf()
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
                view.kv_usage[r] = min(1.0, pinned[r] / cap) if 0 < cap < (1 << 62) else 0.0
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
