"""What a replayed policy sees and implements: :class:`ClusterView`, the replicas' state at
decision time, and :class:`ReplayPolicy`, the calls the simulator makes."""

from __future__ import annotations

import math
from typing import Protocol

from prefixcache.replay._cluster import ClusterModel
from prefixcache.replay._trace import Request

__all__ = ["ClusterView", "ReplayPolicy"]


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
        """KV bytes of replica ``i`` not used by running requests (as ``kv_usage``, but
        current; 0 when full)."""
        free_blocks = max(0, self.num_gpu_blocks - self._pinned[i])
        return free_blocks * self._model.block_tokens * self._model.kv_bytes_per_token


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
