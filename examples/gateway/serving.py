"""Starting and stopping aiohttp applications on real sockets (used by the CLI and the tests)."""

from __future__ import annotations

import socket

from aiohttp import web

__all__ = ["RunningServer", "start_server"]


class RunningServer:
    """An aiohttp application listening on ``host:port``; :meth:`close` stops it."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` (what a backend announces as its ``TunnelAddress``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_server(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    handler_cancellation: bool = False,
) -> RunningServer:
    """Run ``app`` on ``host:port`` (port 0: a free port chosen by the OS, then reported).

    With ``handler_cancellation`` a request handler is cancelled as soon as its client
    disconnects (the gateway uses it so that an abandoned request releases its backend at once).

    The socket is bound here and handed to aiohttp, so there is no window in which another
    process could take a port that was found free.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    bound_port = int(sock.getsockname()[1])
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        handler_cancellation=handler_cancellation,
    )
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return RunningServer(runner, host, bound_port)
