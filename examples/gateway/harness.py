"""Start mock backends and gateways in this process on loopback (tests, demos, notebooks).

:class:`LocalCluster` owns everything it starts and :meth:`LocalCluster.close` stops all of it,
in reverse order, even after a failure (use it as ``async with LocalCluster() as cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from examples.gateway.app import Gateway, GatewaySettings, MessageTransport
from examples.gateway.mock_backend import MockBackend, PayloadPublisher
from examples.gateway.serving import RunningServer, start_server

__all__ = ["BackendHandle", "GatewayHandle", "LocalCluster", "wait_until"]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``predicate`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class BackendHandle:
    """A running :class:`MockBackend` with its server and announcer."""

    def __init__(
        self, backend: MockBackend, server: RunningServer, announcer: asyncio.Task[None] | None
    ) -> None:
        self.backend = backend
        self.server = server
        self.announcer = announcer
        self.stopped = False

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def url(self) -> str:
        return self.server.url

    async def stop(self) -> None:
        """Stop announcing and close the server (idempotent): the backend is gone."""
        if self.stopped:
            return
        self.stopped = True
        if self.announcer is not None:
            self.announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.announcer
        await self.server.close()


class GatewayHandle:
    """A running :class:`Gateway` and its server."""

    def __init__(self, gateway: Gateway, server: RunningServer) -> None:
        self.gateway = gateway
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url


class LocalCluster:
    """Mock backends and gateways started in this process; :meth:`close` stops them all."""

    def __init__(self) -> None:
        self.backends: dict[str, BackendHandle] = {}
        self.gateways: list[GatewayHandle] = []
        self._closers: list[Callable[[], Awaitable[Any]]] = []

    async def __aenter__(self) -> LocalCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def on_close(self, closer: Callable[[], Awaitable[Any]]) -> None:
        """Run ``closer`` at :meth:`close` (reverse registration order)."""
        self._closers.append(closer)

    def on_close_sync(self, closer: Callable[[], object]) -> None:
        """Run the plain function ``closer`` at :meth:`close`."""

        async def run() -> None:
            closer()

        self.on_close(run)

    async def add_backend(
        self,
        name: str,
        *,
        models: Sequence[str] = (),
        available_vram: int = 0,
        publisher: PayloadPublisher | None = None,
        announce_interval: float = 1.0,
        chunk_delay: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> BackendHandle:
        """Start a backend; with a ``publisher`` it announces itself every
        ``announce_interval`` seconds (the first announcement is sent before returning)."""
        backend = MockBackend(
            name=name,
            models=models,
            available_vram=available_vram,
            chunk_delay=chunk_delay,
            clock=clock,
        )
        server = await start_server(backend.make_app())
        backend.address = server.address
        announcer = None
        if publisher is not None:
            if callable(getattr(publisher, "subscribe", None)):
                self.on_close_sync(backend.answer_queries(publisher))  # type: ignore[arg-type]
            backend.announce(publisher)
            announcer = asyncio.get_running_loop().create_task(
                backend.run_announcer(publisher, announce_interval)
            )
        handle = BackendHandle(backend, server, announcer)
        self.backends[name] = handle
        self.on_close(handle.stop)
        return handle

    async def add_gateway(
        self,
        *,
        membership_transport: MessageTransport | None,
        sync_transport: MessageTransport | None = None,
        settings: GatewaySettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> GatewayHandle:
        """Start a gateway (its app's startup hook subscribes to the transports)."""
        gateway = Gateway(
            membership_transport=membership_transport,
            sync_transport=sync_transport,
            settings=settings,
            clock=clock,
        )
        server = await start_server(gateway.make_app(), handler_cancellation=True)
        handle = GatewayHandle(gateway, server)
        self.gateways.append(handle)
        self.on_close(server.close)
        return handle

    async def close(self) -> None:
        """Stop everything started, newest first; the first error is re-raised at the end."""
        first: BaseException | None = None
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first
