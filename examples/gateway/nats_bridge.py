"""A ``prefixcache.Transport`` over one nats-py connection living on the running event loop.

The library's ``Transport`` port is synchronous (``publish`` returns ``None``), while nats-py is
asyncio. Inside an asyncio host (the gateway and the mock backend) the bridge keeps both on the
one loop: ``publish`` appends to a bounded outgoing queue that one task on the loop sends in
order (so a hung server never blocks routing, and when the queue is full the oldest messages
are dropped and counted in :attr:`NatsBridge.dropped`), ``subscribe`` queues the
subscription, and :meth:`NatsBridge.flush` waits until everything queued has reached the server
(a NATS ``PING``/``PONG`` round trip), so a host can be sure its subscriptions are active before
it relies on them. The connection is opened with ``no_echo`` (the port's contract: a router
never receives its own messages).

Thread-safety: use from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import nats

__all__ = ["DEFAULT_BRIDGE_QUEUE", "NatsBridge"]

#: Messages the bridge holds for sending before it drops the oldest.
DEFAULT_BRIDGE_QUEUE = 10_000


class NatsBridge:
    """Synchronous ``publish``/``subscribe`` over an asyncio NATS connection (see module)."""

    def __init__(
        self, connection: Any, *, max_queue: int = DEFAULT_BRIDGE_QUEUE, send_timeout: float = 2.0
    ) -> None:
        self._nc = connection
        self._loop = asyncio.get_running_loop()
        self._pending: set[asyncio.Task[Any]] = set()
        self._outgoing: collections.deque[tuple[str, bytes]] = collections.deque()
        self._sender: asyncio.Task[None] | None = None
        self.max_queue = max_queue
        self.send_timeout = send_timeout
        self.errors = 0
        self.published = 0
        self.delivered = 0
        self.dropped = 0

    @classmethod
    async def connect(
        cls, url: str, *, name: str = "clusterrouting-gateway", **auth: Any
    ) -> NatsBridge:
        """Connect to ``url`` (``nats://host:port`` or ``tls://``), retrying while the server
        comes up. ``auth`` goes to ``nats.connect``: ``user``/``password``, ``token``,
        ``nkeys_seed`` (a seed file), ``user_credentials`` (a ``.creds`` file), ``tls`` (an
        ``ssl.SSLContext``)."""

        async def on_error(exc: Exception) -> None:
            # nats-py's default prints a traceback per failed reconnect; one line is enough.
            print(f"[{name}] NATS: {exc!r}", file=sys.stderr, flush=True)

        nc = await nats.connect(
            url,
            name=name,
            error_cb=on_error,
            no_echo=True,
            connect_timeout=2,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            **auth,
        )
        return cls(nc)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors += 1

    def publish(self, subject: str, payload: bytes) -> None:
        """Queue ``payload`` for ``subject`` and return (send errors and timeouts are counted
        in :attr:`errors`, messages dropped from a full queue in :attr:`dropped`)."""
        if self._nc.is_closed:
            raise ConnectionError("NATS connection is closed")
        self.published += 1
        self._outgoing.append((subject, bytes(payload)))
        while len(self._outgoing) > self.max_queue:
            self._outgoing.popleft()
            self.dropped += 1
        if self._sender is None or self._sender.done():
            self._sender = self._spawn(self._send_queued())

    async def _send_queued(self) -> None:
        while self._outgoing:
            subject, payload = self._outgoing.popleft()
            try:
                await asyncio.wait_for(self._nc.publish(subject, payload), self.send_timeout)
            except Exception:  # a hung or closed connection: counted, the next one is tried
                self.errors += 1

    def subscribe(self, subject: str, handler: Callable[[str, bytes], None]) -> Callable[[], None]:
        """Call ``handler(subject, payload)`` for each message; returns the unsubscriber."""
        state: dict[str, Any] = {"sub": None, "cancelled": False}

        async def on_message(msg: Any) -> None:
            self.delivered += 1
            try:
                handler(msg.subject, msg.data)
            except Exception:  # the handler's bug must not stop delivery
                self.errors += 1

        async def do_subscribe() -> None:
            sub = await self._nc.subscribe(subject, cb=on_message)
            if state["cancelled"]:
                await sub.unsubscribe()
            else:
                state["sub"] = sub

        self._spawn(do_subscribe())

        def unsubscribe() -> None:
            if state["cancelled"]:
                return
            state["cancelled"] = True
            sub = state["sub"]
            if sub is not None and not self._nc.is_closed:
                self._spawn(sub.unsubscribe())

        return unsubscribe

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued subscribes/publishes are done and acknowledged by the server."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
        # Two round trips: nats-py writes a flush's PING ahead of its pending commands
        # (prefixcache.transports.nats.AsyncNatsTransport._round_trip explains it).
        await self._nc.flush(timeout=timeout)
        await self._nc.flush(timeout=timeout)

    async def close(self) -> None:
        """Flush what is queued, then close the connection."""
        with contextlib.suppress(Exception):
            await self.flush(timeout=2.0)
        for task in list(self._pending):
            task.cancel()
        # At shutdown a broker that is already gone can make nats-py's close raise (even a
        # CancelledError from its own reconnect task): nothing is left to do about it.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._nc.close(), 5.0)
