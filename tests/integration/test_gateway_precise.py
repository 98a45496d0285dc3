"""The example gateway in precise mode, over real sockets: mock backends publish their
emulated KV cache as ZMQ events on loopback, the gateway subscribes, routes on them, and a
restarted backend stops attracting affinity at once.

Backends, gateway and subscribers run in this process (aiohttp servers and ZMQ sockets on
free 127.0.0.1 ports); waits poll with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.harness import BackendHandle, LocalCluster, wait_until
from examples.gateway.kv_events import PreciseMode, mock_token_ids
from examples.gateway.mock_backend import MockBackend
from examples.gateway.serving import start_server
from prefixcache import ReplicaKey, affinity_preferred, extract_chain, extract_token_chain
from prefixcache.kvevents import ResidencyState
from prefixcache.testing import InMemoryTransport

pytestmark = pytest.mark.integration

GiB = 2**30
MODEL = "m"
SYSTEM = "You are a careful assistant for a shipping company; answer briefly. " * 14  # ~950 B


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout=90)

    asyncio.run(bounded())


def chat(user: str, system: str = SYSTEM) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        data = await resp.json()
        return str(data["replica"])


def test_mock_tokenizer_makes_token_chains_equal_the_gateways_byte_chains() -> None:
    data = SYSTEM.encode()
    full = len(data) // 256
    assert full >= 3
    tokens = mock_token_ids(data[: full * 256])
    assert extract_token_chain(MODEL, tokens, block_tokens=64) == extract_chain(
        MODEL, data[: full * 256]
    )


async def _bind_backend_again(old: BackendHandle, ports: dict[str, tuple[int, int]]) -> MockBackend:
    """A new process of the same backend: same name, HTTP port and KV ports, empty cache,
    event sequence from 0 (binding retries while the old sockets finish closing)."""
    backend = MockBackend(name=old.name, models=[MODEL], available_vram=24 * GiB, kv_hash_seed=7)
    server = None
    for _ in range(200):
        try:
            server = await start_server(backend.make_app(), port=old.server.port)
            backend.enable_kv_events(ports=ports)
            break
        except (OSError, zmq.ZMQError):
            if server is not None:
                await server.close()
                server = None
            await asyncio.sleep(0.05)
    assert server is not None, "could not bind the restarted backend"
    backend.address = server.address
    old.server = server  # the cluster closes it
    return backend


def test_precise_gateway_routes_on_events_and_forgets_a_restarted_backend() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as session:
            hub = InMemoryTransport()
            gw = await cluster.add_gateway(membership_transport=hub.connect("gateway"))
            gateway = gw.gateway
            mode = PreciseMode(block_tokens=gateway.config.window_bytes // 4)
            provider = mode.attach(gateway)
            handles = {}
            ports: dict[str, dict[str, tuple[int, int]]] = {}
            for name in ("b1", "b2"):
                h = await cluster.add_backend(
                    name, models=[MODEL], available_vram=24 * GiB, publisher=hub.connect(name)
                )
                handles[name] = h
                endpoints = h.backend.enable_kv_events()
                cluster.on_close_sync(h.backend.close_kv_events)
                pub, replay = endpoints[MODEL]
                ports[name] = {MODEL: (int(pub.rsplit(":", 1)[1]), int(replay.rsplit(":", 1)[1]))}
                mode.add_backend(name, MODEL, pub, replay)
            await mode.start()
            cluster.on_close(mode.stop)
            await wait_until(lambda: len(gateway.membership.nodes()) == 2, what="announcements")
            res = mode.residencies[MODEL]

            # Until a subscription is live, a PUB drops what it sends: warm each stream up
            # with requests sent straight to the backend until one of its batches arrives
            # (a batch lost before that is fetched by the replay when the next one shows
            # the gap).
            for name, h in handles.items():
                key = ReplicaKey(name, 0)
                n = 0

                async def heard(key: ReplicaKey = key, h: BackendHandle = h) -> bool:
                    nonlocal n
                    if res.status(key).last_seq is not None:
                        return True
                    n += 1
                    await post(session, h.url, chat(f"warm-up {n}", system=f"warm {n} " * 80))
                    return False

                await wait_until(heard, timeout=30, interval=0.1, what=f"events from {name}")
                await wait_until(lambda key=key: res.state(key) is ResidencyState.EXACT,
                                 timeout=20, what=f"{name} exact")  # fmt: skip

            first = await post(session, gw.url, chat("Where is parcel 17?"))
            key = ReplicaKey(first, 0)
            body = json.dumps(chat("Where is parcel 18?")).encode()
            chain = gateway.chain_for("/v1/chat/completions", MODEL, body)
            full = len(SYSTEM.encode()) // 256  # the system prompt's full blocks at least
            await wait_until(
                lambda: res.overlap_chain(chain, [key])[key] >= full, what="the served blocks"
            )

            def preferred() -> str | None:
                now = gateway.clock()
                cands = gateway.candidates(MODEL, now)
                return affinity_preferred(provider, MODEL, chain, cands, gateway.config, now)

            assert preferred() == first
            assert provider.last_source == "events"
            assert await post(session, gw.url, chat("Where is parcel 18?")) == first
            # The approximate index holds the prefix too: without precise mode nothing would
            # drop it when the backend restarts on the same address (no connection fails).
            assert gateway.index.decide(MODEL, chain, [key], gateway.clock()).hot == key

            # Restart the backend that holds the prefix.
            old = handles[first]
            await old.stop()
            old.backend.close_kv_events()
            await wait_until(lambda: mode.disconnects[first] >= 1, what="the disconnect")
            assert res.state(key) is ResidencyState.UNKNOWN
            assert preferred() is None  # at once: neither events nor dispatches claim it
            assert gateway.index.decide(MODEL, chain, [key], gateway.clock()).hot is None
            restarted = await _bind_backend_again(old, ports[first])
            cluster.on_close_sync(restarted.close_kv_events)
            restarted.announce(hub.connect(f"{first}-again"))
            assert preferred() is None

            # The new process caches prompts again (its events start from seq 0); until the
            # subscriber has reconnected, what it publishes is lost, as before the warm-up.
            n = 0

            async def heard_again() -> bool:
                nonlocal n
                if res.status(key).last_seq is not None:
                    return True
                n += 1
                await post(session, old.url, chat(f"again {n}", system=f"again {n} " * 80))
                return False

            await wait_until(heard_again, timeout=30, interval=0.1, what="the new stream")
            await wait_until(lambda: res.state(key) is ResidencyState.EXACT, what="exact again")
            assert await post(session, old.url, chat("Where is parcel 19?")) == first
            await wait_until(lambda: preferred() == first, what="affinity from new events")
            assert provider.last_source == "events"
            assert res.status(key).restarts == 0  # forgotten at the disconnect, then seq 0
            snapshot = mode.snapshot()
            assert snapshot["models"][MODEL][first]["state"] == "exact"
            assert snapshot["sources"]["events"] >= 2

    run(main)
