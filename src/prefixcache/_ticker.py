"""The eviction ticker: :class:`EvictionTicker` sweeps expired entries on the host's schedule,
and :func:`eviction_interval` picks its period from the entries' time to live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_callable, check_methods
from prefixcache._protocols import Clock, Evictable

__all__ = ["EvictionTicker", "eviction_interval"]

# The ticker reports on the sync logger, where hosts already listen for sharing problems.
_log = logging.getLogger("prefixcache.sync")


def eviction_interval(ttl: float) -> float:
    """The sweep period for entries living ``ttl`` seconds: ``ttl / 2``, or 60 s if that is
    not positive (``ttl <= 0`` means entries never expire).

    >>> eviction_interval(300.0), eviction_interval(0.0)
    (150.0, 60.0)
    """
    half = ttl / 2
    return half if half > 0 else 60.0


class EvictionTicker:
    """Calls ``target.evict(clock())`` periodically, started and stopped by the host.

    Nothing runs until the host asks: :meth:`start` / :meth:`stop` run a daemon thread
    (``with ticker:`` does both), :meth:`start_async` / :meth:`stop_async` an asyncio task on the
    running loop, :meth:`run` is the bare coroutine, and :meth:`tick` does one sweep now (what
    tests call). An exception from ``evict`` is logged and counted (:attr:`errors`); the
    ticker keeps going.

    Args:
        target: anything with ``evict(now)``: an ``Index`` or a :class:`Sync`.
        ttl: the entries' time to live; the period is :func:`eviction_interval` of it.
        interval: an explicit period in seconds (> 0), overriding ``ttl``.
        clock: where ``now`` comes from (the host's clock domain).

    Thread-safe to start/stop from one controlling thread.
    """

    def __init__(
        self,
        target: Evictable,
        *,
        ttl: float = 0.0,
        interval: float | None = None,
        clock: Clock | Callable[[], float] = time.time,
    ) -> None:
        if interval is not None and not interval > 0:
            raise InvalidRecordError("interval", interval, "must be > 0 seconds")
        check_methods("target", target, "evict", what="an Evictable, with evict(now)")
        check_callable("clock", clock)
        self.target = target
        self.interval = eviction_interval(ttl) if interval is None else interval
        self.clock = clock
        self.ticks = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    def tick(self, now: float | None = None) -> object:
        """Sweep once at ``now`` (default ``clock()``); return what ``evict`` returned (``None``
        after an error)."""
        try:
            result = self.target.evict(self.clock() if now is None else now)
        except Exception:
            self.errors += 1
            _log.exception("eviction failed")
            return None
        finally:
            self.ticks += 1
        return result

    @property
    def running(self) -> bool:
        """Whether the thread or the task is running."""
        thread_alive = self._thread is not None and self._thread.is_alive()
        return thread_alive or (self._task is not None and not self._task.done())

    def start(self) -> None:
        """Start the daemon thread (first sweep one interval from now).

        Raises:
            RuntimeError: already running.
        """
        if self.running:
            raise RuntimeError("EvictionTicker is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="prefixcache-eviction", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it (at most ``timeout`` s). Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __enter__(self) -> EvictionTicker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def run(self) -> None:
        """Sweep every interval until cancelled (the coroutine behind :meth:`start_async`)."""
        while True:
            await asyncio.sleep(self.interval)
            self.tick()

    def start_async(self) -> asyncio.Task[None]:
        """Run :meth:`run` as a task on the running loop and return it.

        Raises:
            RuntimeError: already running, or no running event loop.
        """
        if self.running:
            raise RuntimeError("EvictionTicker is already running")
        loop = asyncio.get_running_loop()
        coro: Coroutine[Any, Any, None] = self.run()
        self._task = loop.create_task(coro)
        return self._task

    async def stop_async(self) -> None:
        """Cancel the task and wait for it. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
