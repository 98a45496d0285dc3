"""The simulated cluster: replicas with an LRU KV cache, a FIFO prefill queue and decode.

See :class:`ClusterModel` for the model and README "Replay: choose a policy on a real trace"
for how every default was chosen.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from clusterrouting import InvalidRecordError
from prefixcache.replay._trace import Request

__all__ = [
    "DEFAULT_CLUSTER",
    "ClusterModel",
    "ClusterView",
    "ReplayPolicy",
    "SimulationOutcome",
    "simulate",
]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRecordError(attr.name, value, "must be a number")
    if math.isnan(value) or value <= 0:
        raise InvalidRecordError(attr.name, value, "must be > 0")


def _cache_blocks(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRecordError(attr.name, value, "must be an int >= 0 or None (infinite)")


@attrs.frozen(kw_only=True)
class ClusterModel:
    """The simulated deployment (all rates per replica).

    A replica is one inference server. Its KV cache holds ``cache_blocks`` blocks of
    ``block_tokens`` tokens with LRU eviction (``None``: infinite). A request dispatched to
    a replica waits in that replica's FIFO prefill queue, then prefills the tokens its cache
    does not already hold at ``prefill_tokens_per_s`` (cached = the longest run of leading
    blocks present when it reaches the head of the queue); its first token appears at the
    end of prefill (TTFT = queueing + prefill). It then decodes ``output_tokens`` at
    ``decode_tokens_per_s`` (continuous batching: decode does not block the next prefill)
    and completes. In-flight = dispatched and not completed.

    ``kv_bytes_per_token`` only converts blocks to bytes for the ``available_vram`` that
    policies see (free KV memory = blocks not held by in-flight requests).

    Defaults: one 8xH100-80GB server running a 70B GQA model (Llama-3.1-70B shape) with an
    FP8 KV cache in HBM plus host-DRAM KV offload; the README shows the arithmetic.
    """

    replicas: int = attrs.field(default=8, validator=_positive)
    cache_blocks: int | None = attrs.field(default=16_384, validator=_cache_blocks)
    block_tokens: int = attrs.field(default=512, validator=_positive)
    prefill_tokens_per_s: float = attrs.field(default=20_000.0, validator=_positive)
    decode_tokens_per_s: float = attrs.field(default=30.0, validator=_positive)
    kv_bytes_per_token: int = attrs.field(default=163_840, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool):
            raise InvalidRecordError("replicas", self.replicas, "must be an int >= 1")
        if not isinstance(self.block_tokens, int) or isinstance(self.block_tokens, bool):
            raise InvalidRecordError("block_tokens", self.block_tokens, "must be an int >= 1")


DEFAULT_CLUSTER = ClusterModel()


class ClusterView:
    """What a policy may read about the replicas at decision time (do not mutate).

    ``node_ids[i]`` is replica ``i``'s id (``"replica-00"``...); ``in_flight[i]`` its
    in-flight requests; ``last_used[i]`` the time it was last picked (``None``: never);
    ``free_kv_bytes[i]`` its KV memory not held by in-flight requests.
    """

    __slots__ = ("_model", "_pinned", "in_flight", "last_used", "node_ids")

    def __init__(self, model: ClusterModel) -> None:
        n = model.replicas
        self._model = model
        self.node_ids: tuple[str, ...] = tuple(f"replica-{i:02d}" for i in range(n))
        self.in_flight: list[int] = [0] * n
        self.last_used: list[float | None] = [None] * n
        self._pinned: list[int] = [0] * n

    @property
    def replicas(self) -> int:
        return len(self.node_ids)

    def free_kv_bytes(self, i: int) -> int:
        """KV bytes of replica ``i`` not held by its in-flight requests (0 when full)."""
        cap = self._model.cache_blocks
        if cap is None:
            cap = 1 << 31
        free_blocks = max(0, cap - self._pinned[i])
        return free_blocks * self._model.block_tokens * self._model.kv_bytes_per_token


class ReplayPolicy(Protocol):
    """A routing policy under replay. ``choose`` returns a replica index in range.

    The callbacks tell the policy what a gateway sees: its own dispatch, the first token
    streaming back (end of prefill) and the end of the response.
    """

    name: str
    observe_at: str  # "dispatch" or "completion" for indexing policies, "-" otherwise

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int: ...

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None: ...

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None: ...

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None: ...


@attrs.frozen(kw_only=True)
class SimulationOutcome:
    """Raw per-request results of one simulation (arrays indexed like the requests)."""

    replica: tuple[int, ...]
    hit_blocks: tuple[int, ...]
    ttft_s: tuple[float, ...]
    requests_per_replica: tuple[int, ...]
    routing_s: float
    wall_s: float


_FIRST = 0
_DONE = 1


def simulate(
    requests: Sequence[Request],
    policy: ReplayPolicy,
    model: ClusterModel = DEFAULT_CLUSTER,
    *,
    speedup: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationOutcome:
    """Replay ``requests`` (sorted by arrival) through ``policy`` on the cluster ``model``.

    Arrival times are divided by ``speedup``. Events at the same instant are handled in
    this order: first tokens, then completions, then the arrival. ``routing_s`` is the
    wall time spent inside the policy (decisions and their bookkeeping callbacks), i.e.
    the routing library's own cost. ``progress(done, total)`` is called every 256
    requests and at the end.

    Raises:
        InvalidRecordError: ``speedup`` is not > 0, or the policy returned a replica out
            of range.
    """
    if isinstance(speedup, bool) or not speedup > 0 or math.isinf(speedup):
        raise InvalidRecordError("speedup", speedup, "must be a finite number > 0")
    wall0 = time.perf_counter()
    n_rep = model.replicas
    cap = model.cache_blocks
    bt = model.block_tokens
    prate = float(model.prefill_tokens_per_s)
    drate = float(model.decode_tokens_per_s)
    view = ClusterView(model)
    in_flight = view.in_flight
    last_used = view.last_used
    pinned = view._pinned
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n_rep)]
    free_at = [0.0] * n_rep
    served = [0] * n_rep
    n = len(requests)
    out_rep = [0] * n
    out_hit = [0] * n
    out_ttft = [0.0] * n
    events: list[tuple[float, int, int, int]] = []  # (time, kind, request, request)
    perf = time.perf_counter
    routing = 0.0

    def drain(until: float) -> float:
        spent = 0.0
        while events and events[0][0] <= until:
            t, kind, j, _ = heapq.heappop(events)
            rj = requests[j]
            r = out_rep[j]
            if kind == _DONE:
                in_flight[r] -= 1
                pinned[r] -= len(rj.blocks)
                t0 = perf()
                policy.on_complete(j, rj, r, t)
                spent += perf() - t0
            else:
                t0 = perf()
                policy.on_first_token(j, rj, r, t)
                spent += perf() - t0
        return spent

    for i, req in enumerate(requests):
        now = req.arrival / speedup
        routing += drain(now)
        t0 = perf()
        r = policy.choose(i, req, now, view)
        routing += perf() - t0
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < n_rep:
            raise InvalidRecordError("replica", r, f"policy {policy.name!r} returned it")
        out_rep[i] = r
        in_flight[r] += 1
        pinned[r] += len(req.blocks)
        last_used[r] = now
        served[r] += 1
        # The cache is updated in FIFO order at dispatch: a replica's cache changes only
        # through its own queue, so its state now equals its state at this prefill's start.
        cache = caches[r]
        blocks = req.blocks
        k = 0
        nb = len(blocks)
        while k < nb and blocks[k] in cache:
            k += 1
        if cap is None:
            for b in blocks:
                cache[b] = None
        else:
            # Deepest first, so a prefix is always more recently used than its extensions
            # and LRU never evicts a block while keeping its descendants.
            for b in reversed(blocks):
                if b in cache:
                    cache.move_to_end(b)
                else:
                    cache[b] = None
            while len(cache) > cap:
                cache.popitem(last=False)
        out_hit[i] = k
        uncached = max(0, req.input_tokens - k * bt)
        start = free_at[r] if free_at[r] > now else now
        first = start + uncached / prate
        free_at[r] = first
        out_ttft[i] = first - now
        done = first + req.output_tokens / drate
        heapq.heappush(events, (first, _FIRST, i, i))
        heapq.heappush(events, (done, _DONE, i, i))
        t0 = perf()
        policy.on_dispatch(i, req, r, now)
        routing += perf() - t0
        if progress is not None and (i & 255) == 255:
            progress(i + 1, n)
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
    )
