"""What a replayed policy sees and implements: :class:`ClusterView`, the replicas' state at
decision time, and :class:`ReplayPolicy`, the calls the simulator makes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from prefixcache.replay._cluster import ClusterModel
from prefixcache.replay._trace import Request

__all__ = ["DECODE_LOG_INTERVAL", "ClusterView", "ReplayPolicy"]


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
    scraped): :meth:`waiting_uncached_tokens` and :meth:`gen_throughput`. Outside a
    simulation both read 0 until a test sets ``_uncached`` / ``_gen_tp``.
    """

    __slots__ = (
        "_gen_tp",
        "_model",
        "_pinned",
        "_uncached",
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
        self._uncached: Callable[[int], int] = _zero_tokens
        self._gen_tp: Callable[[int], float] = _zero_rate

    @property
    def replicas(self) -> int:
        return len(self.node_ids)

    def free_kv_bytes(self, i: int) -> int:
        """KV bytes of replica ``i`` not used by running requests (as ``kv_usage``, but
        current; 0 when full)."""
        free_blocks = max(0, self.num_gpu_blocks - self._pinned[i])
        return free_blocks * self._model.block_tokens * self._model.kv_bytes_per_token

    def waiting_uncached_tokens(self, i: int) -> int:
        """Prompt tokens replica ``i`` has yet to compute for the requests it holds: the
        rest of each admitted request's uncached prompt, and each queued request's prompt
        beyond the leading blocks the replica holds now (SGLang's
        ``num_waiting_uncached_tokens``; its engine state as of its last committed step)."""
        return self._uncached(i)

    def gen_throughput(self, i: int) -> float:
        """Tokens/s replica ``i`` generated over its last complete window of
        :data:`DECODE_LOG_INTERVAL` decode steps, idle time within the window included;
        0 before the first window ends and after a restart (SGLang's ``gen_throughput``:
        refreshed every ``decode_log_interval`` decode batches, 40 by default)."""
        return self._gen_tp(i)


DECODE_LOG_INTERVAL = 40
"""SGLang's ``decode_log_interval`` default: decode batches between two refreshes of its
``gen_throughput``."""


def _zero_tokens(_i: int) -> int:
    return 0


def _zero_rate(_i: int) -> float:
    return 0.0


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
