"""A blocking :class:`~prefixcache.Transport` facade over an asynchronous one.

For hosts without an event loop (threaded servers, scripts): :class:`ThreadedTransport` starts
a private event loop in a daemon thread (only when constructed, i.e. when the host explicitly
connects), runs the asynchronous transport there, and turns each call into a bounded wait.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

from clusterrouting import InvalidRecordError
from prefixcache._protocols import AsyncUnsubscribe, MessageHandler, Unsubscribe

__all__ = ["ClosableAsyncTransport", "ThreadedTransport"]

_log = logging.getLogger("prefixcache.transports")
_R = TypeVar("_R")


class ClosableAsyncTransport(Protocol):
    """An :class:`~prefixcache.AsyncTransport` with ``await close()``."""

    async def publish(self, subject: str, payload: bytes) -> None: ...

    async def subscribe(self, subject: str, handler: MessageHandler) -> AsyncUnsubscribe: ...

    async def close(self) -> None: ...


_T = TypeVar("_T", bound=ClosableAsyncTransport)


class ThreadedTransport(Generic[_T]):
    """A blocking Transport running an asynchronous one on a private loop thread.

    ``ThreadedTransport(connect)`` starts the thread, awaits ``connect()`` there (raising what
    it raises, after stopping the thread) and is then ready. ``publish`` waits at most
    ``timeout`` seconds for the asynchronous publish and raises ``TimeoutError`` beyond (a
    :class:`~prefixcache.Sync` counts that and keeps routing); ``subscribe`` returns once the
    subscription is active. Handlers run on the loop thread. A ``publish`` made *from* that
    thread (a handler publishing) is queued without waiting, since waiting would deadlock.
    ``close()`` closes the transport and stops the thread; it is idempotent, and the class is a
    context manager.

    Thread-safe.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[_T]],
        *,
        timeout: float = 2.0,
        name: str = "prefixcache-transport",
    ) -> None:
        if not timeout > 0:
            raise InvalidRecordError("timeout", timeout, "must be > 0 seconds")
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread.start()
        try:
            self.transport: _T = self._call(_await(connect()), timeout=None)
        except BaseException:
            self._stop_loop()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        # Let cancelled tasks unwind before the loop is closed.
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def _stop_loop(self) -> None:
        if self._loop.is_running() or not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(10.0)

    def _call(self, coro: Coroutine[Any, Any, _R], *, timeout: float | None) -> _R:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"transport call did not finish within {timeout} s") from None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The private event loop (the handlers' thread)."""
        return self._loop

    def publish(self, subject: str, payload: bytes) -> None:
        """Publish, waiting at most ``timeout`` seconds.

        Raises:
            TimeoutError: the asynchronous publish did not finish in time (it is cancelled).
            RuntimeError: the transport is closed.
            Exception: whatever the asynchronous publish raised.
        """
        if self._closed:
            raise RuntimeError("transport is closed")
        coro = self.transport.publish(subject, bytes(payload))
        if threading.current_thread() is self._thread:
            task = self._loop.create_task(_await(coro))
            task.add_done_callback(_log_task_error)
            return
        self._call(_await(coro), timeout=self.timeout)

    def subscribe(self, subject: str, handler: MessageHandler) -> Unsubscribe:
        """Subscribe and return once active; the returned function unsubscribes (idempotent,
        bounded by ``timeout``, a no-op after :meth:`close`)."""
        if self._closed:
            raise RuntimeError("transport is closed")
        unsub = self._call(self.transport.subscribe(subject, handler), timeout=self.timeout)
        done = False

        def unsubscribe() -> None:
            nonlocal done
            if done or self._closed:
                return
            done = True
            self._call(_await(unsub()), timeout=self.timeout)

        return unsubscribe

    def close(self) -> None:
        """Close the asynchronous transport and stop the thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            close = getattr(self.transport, "close", None)
            if close is not None:
                self._call(_await(close()), timeout=self.timeout)
        except Exception:
            _log.exception("closing the transport failed")
        finally:
            self._stop_loop()

    def __enter__(self) -> ThreadedTransport[_T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def _await(aw: Awaitable[_R]) -> _R:
    return await aw


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.warning("queued publish failed: %r", task.exception())
