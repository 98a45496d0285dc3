"""The example gateway across processes over a real ``nats-server`` (from PATH, free port).

* Two gateways share prefix affinity through ``prefixcache.Sync`` over NATS: gateway B, started
  from the command line exactly as the README says, sends a conversation to the backend that
  gateway A warmed, although its own cold choice would be another backend.
* A backend process killed with SIGKILL in the middle of a streamed answer: the client's
  stream is cut, the reservation is released, the backend is marked failed and every later
  request goes elsewhere although its last announcement is still fresh.
* The broker-less ``demo`` command, as the README gives it, serves its three backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.harness import LocalCluster, wait_until
from examples.gateway.nats_bridge import NatsBridge

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

GiB = 2**30


@pytest.fixture(scope="module")
def nats_url() -> Iterator[str]:
    """A nats-server on a free loopback port (it picks the port and writes it to a file)."""
    with tempfile.TemporaryDirectory(prefix="gw-nats-") as tmp:
        proc = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ports = Path(tmp) / f"nats-server_{proc.pid}.ports"
            deadline = time.monotonic() + 15
            url = ""
            while not url:
                assert proc.poll() is None, "nats-server exited"
                assert time.monotonic() < deadline, "nats-server did not report its port"
                with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                    url = json.loads(ports.read_text())["nats"][0]
                if not url:
                    time.sleep(0.02)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=90))


@contextlib.asynccontextmanager
async def cli_process(
    *args: str, ready: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``python -m examples.gateway ARGS`` from the repo root; yields (process, URL it printed).

    Stopped with SIGTERM (graceful) at exit unless the test killed it already.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.gateway",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        seen = []
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "process exited early:\n" + "".join(seen)
            seen.append(line)
            if ready in line:
                match = re.search(r"http://[0-9.]+:\d+", line)
                assert match, line
                url = match.group(0)
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with s.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def get_json(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(url + "/cluster.json") as resp:
        data: dict[str, Any] = await resp.json()
        return data


LONG = "Please summarise the shipping manifest below in detail. " * 20  # ~1.1 KB


def test_two_gateways_share_affinity_over_nats(nats_url: str) -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw_bridge = await NatsBridge.connect(nats_url, name="gw-a")
            cluster.on_close(gw_bridge.close)
            a = await cluster.add_gateway(membership_transport=gw_bridge, sync_transport=gw_bridge)
            async with cli_process(
                "gateway",
                "--name",
                "gw-b",
                "--port",
                "0",
                "--nats",
                nats_url,
                "--sync",
                ready="listening on",
            ) as (_proc, b_url):
                be_bridge = await NatsBridge.connect(nats_url, name="backends")
                cluster.on_close(be_bridge.close)
                for name, vram in (("b1", 80 * GiB), ("b2", 48 * GiB), ("b3", 24 * GiB)):
                    await cluster.add_backend(
                        name, models=["m-s"], available_vram=vram, publisher=be_bridge
                    )

                async def both_know_three() -> bool:
                    snap_b = await get_json(s, b_url)
                    return len(a.gateway.membership.nodes()) == 3 and len(snap_b["backends"]) == 3

                await wait_until(both_know_three, timeout=20, what="announcements over NATS")

                # On A: one unrelated request takes the cold choice (b1, most VRAM), so the
                # conversation lands elsewhere; B's own cold choice for it would be b1.
                assert (await post(s, a.url, chat("m-s", "warm-up")))["replica"] == "b1"
                home = (await post(s, a.url, chat("m-s", LONG + "turn 1")))["replica"]
                assert home != "b1"

                async def b_applied() -> bool:
                    stats = (await get_json(s, b_url))["sync"]["stats"]
                    return bool(stats) and stats["applied_observe"] >= 2

                await wait_until(b_applied, timeout=20, what="B applying A's observe events")

                answer = await post(s, b_url, chat("m-s", LONG + "turn 2"))
                assert answer["replica"] == home  # affinity learned from A
                assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
                # Counterfactual: without shared affinity B picks b1 (its cold choice).
                fresh = await post(s, b_url, chat("m-s", "something new entirely"))
                assert fresh["replica"] == "b1"
                snap_b = await get_json(s, b_url)
                assert snap_b["sync"]["enabled"] is True
                assert snap_b["sync"]["stats"]["received"] >= 2

    run(main)


def test_backend_killed_mid_stream_is_released_marked_and_avoided(nats_url: str) -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            bridge = await NatsBridge.connect(nats_url, name="gw-kill")
            cluster.on_close(bridge.close)
            gw = await cluster.add_gateway(membership_transport=bridge)
            be_bridge = await NatsBridge.connect(nats_url, name="backends-kill")
            cluster.on_close(be_bridge.close)
            for name in ("k1", "k2"):
                await cluster.add_backend(
                    name, models=["m-k"], available_vram=GiB, publisher=be_bridge
                )
            async with cli_process(
                "backend",
                "--name",
                "victim",
                "--models",
                "m-k",
                "--vram",
                "200GiB",
                "--nats",
                nats_url,
                "--announce-interval",
                "1",
                "--chunk-delay",
                "0",
                ready="listening on",
            ) as (victim, _victim_url):
                await wait_until(
                    lambda: len(gw.gateway.membership.nodes()) == 3,
                    timeout=20,
                    what="three backends announced",
                )
                # Idle cluster: the cold choice is the backend with the most free VRAM.
                resp = await s.post(
                    gw.url + "/v1/chat/completions",
                    json=chat("m-k", LONG, stream=True),
                    headers={"X-Mock-Hold": "never-released"},
                )
                try:
                    assert resp.headers["X-Replica"] == "victim"
                    first = await asyncio.wait_for(resp.content.readline(), 10)
                    assert first.startswith(b"data: ")
                    assert gw.gateway.in_flight.get("victim") == 1

                    victim.kill()  # SIGKILL mid-stream
                    await victim.wait()
                    rest = b""
                    with contextlib.suppress(aiohttp.ClientError):
                        rest = await asyncio.wait_for(resp.content.read(), 10)
                    assert b"[DONE]" not in rest  # the stream was cut, not completed
                finally:
                    resp.release()

                await wait_until(
                    lambda: gw.gateway.in_flight.get("victim", 0) == 0,
                    what="reservation released after the failure",
                )
                mark = gw.gateway.membership.failure("victim")
                assert mark is not None and "mid-response" in mark.reason
                snap = await get_json(s, gw.url)
                dead = next(b for b in snap["backends"] if b["id"] == "victim")
                assert dead["failed"] and dead["online"]  # fresh announcement, still skipped
                assert dead["served"] == 0 and snap["index"]["entries"] == 0  # not observed

                replicas = [
                    (await post(s, gw.url, chat("m-k", f"after the kill {i}")))["replica"]
                    for i in range(6)
                ]
                assert set(replicas) == {"k1", "k2"}
                assert gw.gateway.stats["victim"].failures == 1

    run(main)


def test_demo_command_serves_three_backends_without_a_broker() -> None:
    async def main() -> None:
        async with (
            cli_process("demo", "--port", "0", ready="gateway on") as (_proc, url),
            aiohttp.ClientSession() as s,
        ):
            await wait_until(
                lambda: _count_backends(s, url), timeout=20, what="demo backends announced"
            )
            replicas = {
                (await post(s, url, chat("demo-small", f"hello {i}")))["replica"] for i in range(3)
            }
            # Idle backends take turns: all three serve demo-small.
            assert replicas == {"backend-a", "backend-b", "backend-c"}
            assert (await post(s, url, chat("demo-large", "big")))["replica"] != "backend-c"

    async def _count_backends(s: aiohttp.ClientSession, url: str) -> bool:
        return len((await get_json(s, url))["backends"]) == 3

    run(main)
