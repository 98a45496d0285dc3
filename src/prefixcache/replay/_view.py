"""What a replayed policy sees and implements: :class:`ClusterView`, the replicas' state at
decision time, and :class:`ReplayPolicy`, the calls the simulator makes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import attrs

from prefixcache.replay._cluster import ClusterModel, finite_nonneg
from prefixcache.replay._trace import Request

__all__ = [
    "DECODE_LOG_INTERVAL",
    "IDLE_RATE_RESET_S",
    "ClusterView",
    "EngineLoad",
    "ReplayPolicy",
]

DECODE_LOG_INTERVAL = 40
"""SGLang's ``decode_log_interval`` default: decode batches between two refreshes of its
``gen_throughput``."""

IDLE_RATE_RESET_S = 30.0
"""SGLang zeroes ``gen_throughput`` once its scheduler has been idle this long after its
last prefill or decode log (``_maybe_log_idle_metrics``)."""


@attrs.frozen(kw_only=True)
class EngineLoad:
    """One replica's load as SGLang's ``/v1/loads`` answers a poll (its core fields,
    sgl-project/sglang @063d0451 ``scheduler_components/load_inquirer.py``), all read at
    one instant: ``waiting_reqs`` (queued, not admitted), ``running_reqs``,
    ``waiting_uncached_tokens`` (``num_waiting_uncached_tokens``: the prompt tokens still
    to compute, each admitted request's uncached rest and, per queued request, its prompt
    beyond the leading blocks the replica holds, at least 1), ``token_usage`` (as
    ``ClusterView.kv_usage``) and ``gen_throughput`` (tokens/s over the engine's last
    complete window of :data:`DECODE_LOG_INTERVAL` decode steps, idle time within it
    included; 0 before the first window ends, after a restart, and once the engine has
    idled :data:`IDLE_RATE_RESET_S` past its last log). SGLang fills ``gen_throughput``
    only when it runs with ``--enable-metrics`` (off by default); without it a poll reads
    0 there, whatever this field says.

    Raises:
        InvalidRecordError: a field is negative, not finite or not a number.
    """

    waiting_reqs: int = attrs.field(default=0, validator=finite_nonneg)
    running_reqs: int = attrs.field(default=0, validator=finite_nonneg)
    waiting_uncached_tokens: int = attrs.field(default=0, validator=finite_nonneg)
    token_usage: float = attrs.field(default=0.0, validator=finite_nonneg)
    gen_throughput: float = attrs.field(default=0.0, validator=finite_nonneg)


_IDLE = EngineLoad()


class ClusterView:
    """What a policy may read about the replicas at decision time (do not mutate).

    Router-side, exact and instant: ``node_ids[i]`` (``"replica-00"``...),
    ``in_flight[i]`` (dispatched by this router and not completed), ``last_used[i]`` (the
    time it was last picked, ``None``: never), :meth:`free_kv_bytes`.

    Engine metrics as a scraper sees them (refreshed every ``scrape_interval_s`` of
    simulated time): ``waiting[i]`` (queued, not admitted), ``running[i]`` (admitted, not
    completed), ``kv_usage[i]`` in [0, 1] (the distinct blocks running requests use, their
    prompts' and their outputs', over the capacity: a prefix block several of them share
    counts once, and cached unpinned blocks count as free, as vLLM reports), and
    ``num_gpu_blocks`` (the capacity; 2**31 when infinite).

    Engine load as a poll of SGLang's ``/v1/loads`` answers it now (current, not
    scraped): :meth:`engine_load`. Outside a simulation it reads an idle engine until a
    test sets ``_load``.
    """

    __slots__ = (
        "_load",
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
        self._load: Callable[[int], EngineLoad] = _idle

    @property
    def replicas(self) -> int:
        return len(self.node_ids)

    def free_kv_bytes(self, i: int) -> int:
        """KV bytes of replica ``i`` not used by running requests (as ``kv_usage``, but
        current; 0 when full)."""
        free_blocks = max(0, self.num_gpu_blocks - self._pinned[i])
        return free_blocks * self._model.block_tokens * self._model.kv_bytes_per_token

    def engine_load(self, i: int) -> EngineLoad:
        """Replica ``i``'s :class:`EngineLoad` now (its engine as of its last committed
        step). O(queued requests x their leading blocks)."""
        return self._load(i)


def _idle(_i: int) -> EngineLoad:
    return _IDLE


class ReplayPolicy(Protocol):
    """A routing policy under replay. ``choose`` returns a replica index in range.

    ``i`` is the request's index in the trace: unique, and the callbacks of request ``i``
    name the replica ``choose(i, ...)`` returned. Policies key per-request state by it
    (a driver that reuses an ``i`` for two requests in flight corrupts that state).

    The callbacks tell the policy what a gateway sees: its own dispatch, the first token
    streaming back (end of prefill) and the end of the response. A policy with a true
    ``reads_kv_events`` attribute also gets ``on_kv_events(replica, seq, batch, now)`` for
    every engine event batch that reaches the router and, if it defines
    ``on_restart(replica, now)``, each restart of a replica's engine, delivered like a batch
    (after the event delay, after the batches published before it, never lost): a
    process that registered with the router's side deregisters as it ends.
    """

    name: str
    observe_at: str  # "dispatch" or "completion" for indexing policies, "-" otherwise

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int: ...

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None: ...

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None: ...

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None: ...
