"""Starting and stopping aiohttp applications on real sockets (used by the CLI and the tests).

A server started with :class:`ServerLimits` sheds clients that hold a connection without
using it, so that slow or stalled peers cannot exhaust file descriptors or memory:

* **Header deadline**: the request line and headers must be complete within
  ``header_timeout`` seconds of the connection opening, or of the first byte of a later
  request on a kept-alive connection.
* **Idle keep-alive limit**: a connection with no request in progress is closed after
  ``idle_timeout`` seconds without a new request starting.
* **Connection cap**: at most ``max_connections`` connections are open at once; a connection
  accepted beyond it is closed at once (the client sees a reset, and may retry).

A connection past a deadline is closed without an answer (the client was not sending one)
and counted in :attr:`ConnectionGuard.shed`. The body deadline and the cap on buffered body
bytes belong to the application (the gateway enforces them while it reads a body).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from aiohttp import web

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "RAW_BODIES_KEY",
    "SERVER_LIMITS_KEY",
    "ConnectionGuard",
    "RunningServer",
    "ServerLimits",
    "start_server",
]

DEFAULT_HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request's line and headers."""
DEFAULT_IDLE_TIMEOUT = 30.0
"""Seconds a kept-alive connection may wait for its next request."""
DEFAULT_MAX_CONNECTIONS = 512
"""Connections open at once (each costs a file descriptor and a few KiB)."""


@attrs.frozen(kw_only=True)
class ServerLimits:
    """Per-connection limits of a server (see the module docstring); all seconds > 0."""

    header_timeout: float = attrs.field(
        default=DEFAULT_HEADER_TIMEOUT, validator=attrs.validators.gt(0)
    )
    idle_timeout: float = attrs.field(
        default=DEFAULT_IDLE_TIMEOUT, validator=attrs.validators.gt(0)
    )
    max_connections: int = attrs.field(
        default=DEFAULT_MAX_CONNECTIONS, validator=attrs.validators.ge(1)
    )


SERVER_LIMITS_KEY = web.AppKey("server_limits", ServerLimits)
"""An application that stores :class:`ServerLimits` under this key is served with them."""

RAW_BODIES_KEY = web.AppKey("raw_bodies", bool)
"""An application that stores ``True`` under this key reads request bodies as sent: the
server does not decode their ``Content-Encoding`` (the application does)."""


class _Connection(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection and closes it past a deadline."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.state = "headers"  # "headers" | "busy" | "idle"

    # -- deadlines --------------------------------------------------------------------
    def _arm(self, seconds: float, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:  # not after the connection is gone
            self.timer = self.guard.loop.call_later(seconds, self._expire, reason)

    def _expire(self, reason: str) -> None:
        self.timer = None
        self.guard.shed[reason] += 1
        if self.transport is not None:
            self.transport.abort()

    def request_started(self) -> None:
        self.state = "busy"
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def request_finished(self) -> None:
        self.state = "idle"
        self._arm(self.guard.limits.idle_timeout, "idle_timeout")

    # -- protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.guard.open_connection(self)
        self._arm(self.guard.limits.header_timeout, "header_timeout")
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.state == "idle":
            self.state = "headers"
            self._arm(self.guard.limits.header_timeout, "header_timeout")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
        self.guard.close_connection(self)
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class ConnectionGuard:
    """The protocol factory of a limited server: counts connections, arms deadlines.

    Counters: :attr:`open` (connections now), :attr:`shed` (connections closed, by reason:
    ``header_timeout``, ``idle_timeout``, ``max_connections``). Use on its event loop only.
    """

    def __init__(self, limits: ServerLimits, factory: Callable[[], Any]) -> None:
        self.limits = limits
        self.factory = factory
        self.loop = asyncio.get_running_loop()
        self.shed = {"header_timeout": 0, "idle_timeout": 0, "max_connections": 0}
        self._by_inner: dict[int, _Connection] = {}

    @property
    def open(self) -> int:
        return len(self._by_inner)

    def __call__(self) -> asyncio.Protocol:
        if len(self._by_inner) >= self.limits.max_connections:
            self.shed["max_connections"] += 1
            return _Refused()
        return _Connection(self, self.factory())

    def open_connection(self, conn: _Connection) -> None:
        self._by_inner[id(conn.inner)] = conn

    def close_connection(self, conn: _Connection) -> None:
        self._by_inner.pop(id(conn.inner), None)

    def of(self, protocol: object) -> _Connection | None:
        """The connection wrapping aiohttp's ``protocol`` (``request.protocol``)."""
        return self._by_inner.get(id(protocol))

    async def track(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Run ``handler`` telling the connection that a request is being handled (no header
        deadline while it runs; the idle limit starts when it ends)."""
        conn = self.of(request.protocol)
        if conn is not None:
            conn.request_started()
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.request_finished()


class RunningServer:
    """An aiohttp application listening on ``host:port``; :meth:`close` stops it."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        server: asyncio.AbstractServer | None = None,
        guard: ConnectionGuard | None = None,
    ) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.guard = guard
        self._server = server

    @property
    def address(self) -> str:
        """``host:port`` (what a backend announces as its ``TunnelAddress``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.runner.cleanup()


async def start_server(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    handler_cancellation: bool = False,
    limits: ServerLimits | None = None,
) -> RunningServer:
    """Run ``app`` on ``host:port`` (port 0: a free port chosen by the OS, then reported).

    With ``handler_cancellation`` a request handler is cancelled as soon as its client
    disconnects (the gateway uses it so that an abandoned request releases its backend at once).

    ``limits`` (default: what ``app`` holds under :data:`SERVER_LIMITS_KEY`, else none) sheds
    slow and idle clients and caps connections (see the module docstring); the returned
    server's ``guard`` counts what was shed.

    The socket is bound here and handed to the event loop, so there is no window in which
    another process could take a port that was found free.
    """
    if limits is None:
        limits = app.get(SERVER_LIMITS_KEY)
    guard_box: list[ConnectionGuard] = []
    if limits is not None and not app.frozen:
        # The guard exists once the loop serves; the middleware finds it through the box.
        @web.middleware
        async def track(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if not guard_box:
                return await handler(request)
            return await guard_box[0].track(request, handler)

        app.middlewares.insert(0, track)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    bound_port = int(sock.getsockname()[1])
    extra: dict[str, Any] = {}
    if app.get(RAW_BODIES_KEY, False):
        extra["auto_decompress"] = False
    if limits is not None:
        extra["keepalive_timeout"] = limits.idle_timeout
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        handler_cancellation=handler_cancellation,
        **extra,
    )
    await runner.setup()
    if limits is None:
        site = web.SockSite(runner, sock)
        await site.start()
        return RunningServer(runner, host, bound_port)
    aiohttp_server = runner.server
    assert aiohttp_server is not None
    guard = ConnectionGuard(limits, aiohttp_server)
    guard_box.append(guard)
    server = await asyncio.get_running_loop().create_server(guard, sock=sock)
    return RunningServer(runner, host, bound_port, server=server, guard=guard)
