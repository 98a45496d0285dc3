"""The example gateway sheds slow clients and handles content codings, over real loopback
sockets: unfinished headers, a body that stops short, idle keep-alive connections, too many
connections, too many buffered bytes; gzip/deflate bodies, undecodable and deeply nested ones.

Deadlines are set short in each test's settings (never slept on): every wait below polls with
a bounded deadline, so a gateway that does not shed fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
import time
import zlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway import GatewaySettings
from examples.gateway.harness import GatewayHandle, LocalCluster, wait_until
from examples.gateway.serving import ServerLimits
from prefixcache.testing import InMemoryTransport

pytestmark = pytest.mark.integration

BOUND = 15.0  # upper bound of every wait, never a timing assertion
SHORT = 0.2  # a deadline the test lets expire
LONG = 60.0  # a deadline the test never reaches


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout=60)

    asyncio.run(bounded())


def settings(**limits: Any) -> GatewaySettings:
    body = {k: limits.pop(k) for k in ("body_timeout", "max_buffered_bytes") if k in limits}
    server = {"header_timeout": LONG, "idle_timeout": LONG, **limits}
    return GatewaySettings(limits=ServerLimits(**server), **{"body_timeout": LONG, **body})


async def start(cluster: LocalCluster, s: GatewaySettings) -> GatewayHandle:
    hub = InMemoryTransport()
    gw = await cluster.add_gateway(membership_transport=hub.connect("gateway"), settings=s)
    await cluster.add_backend("b1", models=["m"], available_vram=2**30, publisher=hub.connect())
    await wait_until(lambda: len(gw.gateway.membership.nodes()) == 1, what="announcement")
    return gw


async def raw(gw: GatewayHandle) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", gw.server.port)


async def closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded)."""
    try:
        return await asyncio.wait_for(reader.read(), BOUND)
    except ConnectionResetError:
        return b""


def chat(text: str = "hello") -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()


def test_unfinished_headers_are_cut_at_the_header_deadline() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings(header_timeout=SHORT))
            conns = [await raw(gw) for _ in range(5)]
            for _, w in conns:
                w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                await w.drain()
            # Before: no header deadline, these held their descriptors forever.
            for r, _ in conns:
                assert await closed_by_peer(r) == b""
            guard = gw.server.guard
            assert guard is not None and guard.shed["header_timeout"] == 5
            await wait_until(lambda: guard.open == 0, what="connections released")
            async with (
                aiohttp.ClientSession() as s,
                s.post(gw.url + "/v1/chat/completions", data=chat()) as resp,
            ):
                assert resp.status == 200
            for _, w in conns:
                w.close()

    run(main)


def test_a_body_that_stops_short_gets_408_and_frees_its_bytes() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings(body_timeout=SHORT))
            r, w = await raw(gw)
            w.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                + b"x" * 999
            )
            await w.drain()
            answer = await closed_by_peer(r)
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert b'"request_timeout"' in answer
            assert gw.gateway.rejected["408"] == 1
            await wait_until(lambda: gw.gateway.buffered_bytes == 0, what="bytes released")
            w.close()

    run(main)


def test_an_idle_keep_alive_connection_is_closed() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings(idle_timeout=SHORT))
            r, w = await raw(gw)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), BOUND)
            assert head.startswith(b"HTTP/1.1 200 ")
            await closed_by_peer(r)  # then nothing is sent: the idle limit closes it
            guard = gw.server.guard
            assert guard is not None and guard.shed["idle_timeout"] == 1
            w.close()

    run(main)


def test_connections_beyond_the_cap_are_refused_and_the_cap_frees_up() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings(max_connections=3))
            guard = gw.server.guard
            assert guard is not None
            held = [await raw(gw) for _ in range(3)]
            await wait_until(lambda: guard.open == 3, what="three connections open")
            r, w = await raw(gw)
            assert await closed_by_peer(r) == b""
            assert guard.shed["max_connections"] == 1
            for _, hw in held:
                hw.close()
            w.close()
            await wait_until(lambda: guard.open == 0, what="connections closed")
            async with aiohttp.ClientSession() as s, s.get(gw.url + "/healthz") as resp:
                assert resp.status == 200

    run(main)


def test_buffered_body_bytes_are_capped_across_requests() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings(max_buffered_bytes=1000))
            _r, w = await raw(gw)
            w.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
                + b"y" * 800
            )
            await w.drain()
            await wait_until(lambda: gw.gateway.buffered_bytes == 800, what="800 bytes held")
            async with aiohttp.ClientSession() as s:
                async with s.post(gw.url + "/v1/chat/completions", data=b"z" * 500) as resp:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"] == "1"
                    assert (await resp.json())["error"]["type"] == "gateway_busy"
                assert gw.gateway.rejected["busy"] == 1
                w.close()  # the slow client leaves: its bytes are given back
                await wait_until(lambda: gw.gateway.buffered_bytes == 0, what="bytes released")
                async with s.post(gw.url + "/v1/chat/completions", data=chat()) as resp:
                    assert resp.status == 200

    run(main)


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("GZIP", gzip.compress),
        ("x-gzip", gzip.compress),
    ],
)
def test_an_encoded_body_is_forwarded_decoded_without_its_label(
    coding: str, encode: Callable[[bytes], bytes]
) -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings())
            headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    gw.url + "/v1/chat/completions", data=encode(chat()), headers=headers
                ) as resp,
            ):
                # Before: forwarded decoded but labelled, so the backend failed (500).
                assert resp.status == 200, await resp.text()
            stats = gw.gateway.stats["b1"]
            assert (stats.served, stats.errors) == (1, 0)

    run(main)


@pytest.mark.parametrize(
    ("body", "headers", "kind"),
    [
        (b"\x1f\x8b not gzip at all", {"Content-Encoding": "gzip"}, "invalid_body"),
        (gzip.compress(chat())[:-9], {"Content-Encoding": "gzip"}, "invalid_body"),
        (gzip.compress(chat()) + b"tail", {"Content-Encoding": "gzip"}, "invalid_body"),
        (zlib.compress(chat())[:-4], {"Content-Encoding": "deflate"}, "invalid_body"),
        (
            b'{"model":"m","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            {},
            "invalid_request",
        ),
    ],
    ids=["garbage-gzip", "truncated-gzip", "gzip-with-tail", "truncated-deflate", "deep"],
)
def test_bodies_that_cannot_be_read_get_400(
    body: bytes, headers: dict[str, str], kind: str
) -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings())
            async with aiohttp.ClientSession() as s:
                async with s.post(
                    gw.url + "/v1/chat/completions", data=body, headers=headers
                ) as resp:
                    assert resp.status == 400  # before: 500
                    assert (await resp.json())["error"]["type"] == kind
                assert gw.gateway.rejected["400"] == 1
                assert gw.gateway.buffered_bytes == 0
                async with s.post(gw.url + "/v1/chat/completions", data=chat()) as resp:
                    assert resp.status == 200

    run(main)


def test_a_compression_bomb_meets_the_body_cap() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings(max_buffered_bytes=64 * 2**20))
            bomb = gzip.compress(b"0" * (32 * 2**20))  # 32 MiB of zeros in ~32 KiB
            async with (
                aiohttp.ClientSession() as s,
                s.post(
                    gw.url + "/v1/chat/completions",
                    data=bomb,
                    headers={"Content-Encoding": "gzip"},
                ) as resp,
            ):
                assert resp.status == 413
            assert gw.gateway.rejected["413"] == 1 and gw.gateway.buffered_bytes == 0

    run(main)


def test_a_client_leaving_mid_request_leaves_no_timer_behind() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster:
            gw = await start(cluster, settings(idle_timeout=SHORT))
            guard = gw.server.guard
            assert guard is not None
            _r, w = await raw(gw)
            w.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\nab"
            )
            await w.drain()
            await wait_until(lambda: gw.gateway.buffered_bytes == 2, what="body started")
            (conn,) = guard._by_inner.values()
            w.close()
            await wait_until(lambda: guard.open == 0, what="connection gone")
            await wait_until(lambda: gw.gateway.buffered_bytes == 0, what="handler ended")
            # Before: the ended handler armed the idle deadline on the dead connection.
            assert conn.timer is None and conn.transport is None

    run(main)


def test_a_client_that_stops_reading_is_cut_off_and_frees_its_backend() -> None:
    from aiohttp import web

    from clusterrouting import NodeData
    from examples.gateway.serving import start_server

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        block = b"x" * (1 << 20)
        for _ in range(256):  # 256 MiB: far more than any socket buffers
            await response.write(block)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", huge)
        backend = await start_server(app)
        try:
            async with LocalCluster() as cluster:
                s = GatewaySettings(
                    limits=ServerLimits(header_timeout=LONG, idle_timeout=LONG),
                    body_timeout=LONG,
                    write_timeout=SHORT,
                )
                gw = await cluster.add_gateway(membership_transport=None, settings=s)
                gw.gateway.membership.add(
                    NodeData(
                        id="big", name="big", tunnel_address=backend.address, last_seen=time.time()
                    )
                )
                _r, w = await raw(gw)
                body = b'{"model":"m","prompt":"hi"}'
                w.write(
                    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await w.drain()
                # The client reads nothing. Before: the relay waited forever, holding "big".
                await wait_until(lambda: gw.gateway.slow_readers == 1, timeout=BOUND, what="cut")
                await wait_until(lambda: not gw.gateway.in_flight, what="backend released")
                assert gw.gateway.stats["big"].errors == 0  # the backend is not blamed
                w.close()
        finally:
            await backend.close()

    run(main)
