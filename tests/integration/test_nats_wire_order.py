"""What reaches a NATS server, in what order, when ``AsyncNatsTransport`` says it has: a
loopback server speaking the NATS text protocol records the commands the client writes.

``subscribe`` promises the subscription is active at the server on return, and ``flush``
that everything sent so far reached it. The server answers a PING only after reading every
command before it on that connection, so both hold iff the SUB (or the PUB) was read before
a PING whose PONG the client had received when the call returned. nats-py writes a flush's
PING ahead of the commands still in its pending buffer, so one round trip does not prove
it (a message published from another connection right after ``subscribe`` could be lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from prefixcache.transports.nats import AsyncNatsTransport

pytestmark = pytest.mark.integration

INFO = b'INFO {"server_id":"wire","version":"2.10.0","proto":1,"max_payload":1048576}\r\n'


class WireServer:
    """A loopback server that answers CONNECT/PING and records every command it reads, with
    ``PONG`` marking each answer sent."""

    def __init__(self) -> None:
        self.read: list[str] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(INFO)
        await writer.drain()
        while line := await reader.readline():
            parts = line.split()
            op = parts[0].decode().upper() if parts else ""
            if op == "PUB":
                await reader.readexactly(int(parts[-1]) + 2)  # the payload and its CRLF
            self.read.append(op)
            if op == "PING":
                writer.write(b"PONG\r\n")
                await writer.drain()
                self.read.append("PONG")
        writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


def read_before_an_answered_ping(read: list[str], op: str) -> bool:
    """Whether ``op`` was read before a PING that was answered (in ``read``)."""
    return op in read and "PONG" in read[read.index(op) :]


@contextlib.asynccontextmanager
async def connected() -> AsyncIterator[tuple[WireServer, AsyncNatsTransport]]:
    """A recording server and a transport connected to it; both closed on exit."""
    server = WireServer()
    transport = await AsyncNatsTransport.connect(await server.start())
    try:
        yield server, transport
    finally:
        await transport.close()
        server.close()


def test_subscribe_returns_once_the_server_has_read_the_sub() -> None:
    async def main() -> None:
        async with connected() as (server, transport):
            start = len(server.read)
            unsubscribe = await transport.subscribe("wire.a", lambda subject, payload: None)
            assert read_before_an_answered_ping(server.read[start:], "SUB"), server.read
            start = len(server.read)
            await unsubscribe()
            assert read_before_an_answered_ping(server.read[start:], "UNSUB"), server.read

    asyncio.run(asyncio.wait_for(main(), 30))


def test_flush_returns_once_the_server_has_read_what_was_published() -> None:
    async def main() -> None:
        async with connected() as (server, transport):
            start = len(server.read)
            await transport.publish("wire.b", b"payload")
            await transport.flush()
            assert read_before_an_answered_ping(server.read[start:], "PUB"), server.read

    asyncio.run(asyncio.wait_for(main(), 30))
