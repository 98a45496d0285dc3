"""A blocking :class:`~prefixcache.Transport` facade over an asynchronous one.

For hosts without an event loop (threaded servers, scripts): :class:`ThreadedTransport` starts
a private event loop in a daemon thread (only when constructed, i.e. when the host explicitly
connects) and runs the asynchronous transport there. ``publish`` never waits on the network:
it appends to a bounded outgoing queue that the loop thread drains, so a hung broker (a stopped
process, a black-holed route) costs a routing call one lock and one append, never a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_callable
from prefixcache._protocols import (
    ClosableAsyncTransport,
    MessageHandler,
    Unsubscribe,
)

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "ClosableAsyncTransport",
    "ThreadedTransport",
    "client_tls_context",
]

DEFAULT_MAX_QUEUE = 10_000
"""Messages a :class:`ThreadedTransport` holds for sending before it drops the oldest."""
DEFAULT_MAX_QUEUE_BYTES = 16 * 1024 * 1024
"""Payload bytes a :class:`ThreadedTransport` holds for sending before it drops the oldest."""

_log = logging.getLogger("prefixcache.transports")
_R = TypeVar("_R")


_T = TypeVar("_T", bound=ClosableAsyncTransport)


class ThreadedTransport(Generic[_T]):
    """A blocking Transport running an asynchronous one on a private loop thread.

    ``ThreadedTransport(connect)`` starts the thread, awaits ``connect()`` there (raising what
    it raises, after stopping the thread) and is then ready.

    ``publish`` returns at once: the message joins an outgoing queue that a task on the loop
    thread sends in order, one asynchronous publish at a time, each bounded by ``timeout``
    seconds (a send that fails or times out is counted in :attr:`publish_errors`, logged at the
    first failure of a streak and every 100th, and the next message is tried). The queue holds
    at most ``max_queue`` messages and ``max_queue_bytes`` payload bytes (one message larger
    than that is still held, alone); beyond either cap the *oldest* queued messages are dropped
    and counted in :attr:`dropped` (the newest state is what peers most need, and a resync
    repairs the rest). So memory stays bounded and a routing call never waits, whatever the
    broker does. :attr:`sent` counts completed sends; :meth:`pending` is the queue length.

    ``subscribe`` returns once the subscription is active (bounded by ``timeout``). Handlers
    run on the loop thread. ``close()`` gives the queue up to ``timeout`` seconds to drain,
    closes the transport and stops the thread; it is idempotent, and the class is a context
    manager.

    Thread-safe.

    Raises:
        InvalidRecordError: ``timeout`` is not > 0, or a cap is not an int >= 1.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[_T]],
        *,
        timeout: float = 2.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        name: str = "prefixcache-transport",
    ) -> None:
        check_callable("connect", connect)  # found now, not in the connecting thread
        if type(name) is not str:
            raise InvalidRecordError("name", name, "must be a str")
        if not timeout > 0:
            raise InvalidRecordError("timeout", timeout, "must be > 0 seconds")
        for field, cap in (("max_queue", max_queue), ("max_queue_bytes", max_queue_bytes)):
            if type(cap) is not int or cap < 1:
                raise InvalidRecordError(field, cap, "must be an int >= 1")
        self.timeout = timeout
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.sent = 0
        self.dropped = 0
        self.publish_errors = 0
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._queued_bytes = 0
        self._queue_lock = threading.Lock()
        self._draining = False
        self._drained = threading.Event()
        self._drained.set()
        self._error_streak = 0
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
        """Queue ``payload`` for ``subject`` and return at once (see the class docstring).

        Raises:
            RuntimeError: the transport is closed.
        """
        if self._closed:
            raise RuntimeError("transport is closed")
        data = bytes(payload)
        with self._queue_lock:
            queue = self._queue
            queue.append((subject, data))
            self._queued_bytes += len(data)
            while len(queue) > self.max_queue or (
                self._queued_bytes > self.max_queue_bytes and len(queue) > 1
            ):
                _, old = queue.popleft()
                self._queued_bytes -= len(old)
                self.dropped += 1
            start = not self._draining
            self._draining = True
            self._drained.clear()
        if start:
            try:
                self._loop.call_soon_threadsafe(self._start_drain)
            except RuntimeError:  # the loop is already closed: nothing can be sent
                with self._queue_lock:
                    self._draining = False
                raise RuntimeError("transport is closed") from None

    def pending(self) -> int:
        """Messages queued and not yet handed to the asynchronous transport."""
        with self._queue_lock:
            return len(self._queue)

    def _start_drain(self) -> None:
        task = self._loop.create_task(self._drain())
        task.add_done_callback(_log_task_error)

    async def _drain(self) -> None:
        while True:
            with self._queue_lock:
                if not self._queue:
                    self._draining = False
                    self._drained.set()
                    return
                subject, data = self._queue.popleft()
                self._queued_bytes -= len(data)
            try:
                await asyncio.wait_for(_await(self.transport.publish(subject, data)), self.timeout)
            except asyncio.CancelledError:
                with self._queue_lock:
                    self._draining = False
                    self._drained.set()
                raise
            except Exception as exc:  # TimeoutError included: count, log, go on
                self.publish_errors += 1
                self._error_streak += 1
                if self._error_streak == 1 or self._error_streak % 100 == 0:
                    _log.warning(
                        "publishing on %s failed: %r (%d failures in a row)",
                        subject,
                        exc,
                        self._error_streak,
                    )
            else:
                self.sent += 1
                self._error_streak = 0

    def drain(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: :attr:`timeout`) until the outgoing queue
        is empty and no send is in progress; return whether it is. Not from the loop thread."""
        return self._drained.wait(self.timeout if timeout is None else timeout)

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
        if threading.current_thread() is not self._thread:
            self.drain()
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
        _log.warning("transport task failed: %r", task.exception())


def client_tls_context(
    *, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client TLS context that verifies the server's certificate and host name.

    Args:
        ca_file: PEM bundle of the CAs to trust (``None``: the system's default CAs).
        cert_file, key_file: PEM client certificate and key, for servers that require one
            (``key_file`` ``None``: the key is in ``cert_file``).

    Raises:
        OSError, ssl.SSLError: a file is missing or not valid PEM.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context
