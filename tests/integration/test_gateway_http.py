"""The example gateway over real loopback sockets: routing, affinity, load guard, body cap,
streaming, websockets, failures. Backends and the gateway run in this process (aiohttp servers
on free ports), connected by the in-memory transport; the client is a real aiohttp client.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway import DEFAULT_BODY_LIMIT, GatewaySettings
from examples.gateway.harness import GatewayHandle, LocalCluster, wait_until
from prefixcache.testing import InMemoryTransport

pytestmark = pytest.mark.integration

GiB = 2**30
SYSTEM = "You are a meticulous assistant for a logistics company. " * 12  # ~670 bytes


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Each test is one coroutine with a hard upper bound, so a hang fails instead of stalling."""

    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout=60)

    asyncio.run(bounded())


def conversation(
    model: str, user_turns: list[str], *, system: str = SYSTEM, **extra: Any
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(user_turns):
        messages.append({"role": "user", "content": text})
        if i < len(user_turns) - 1:
            messages.append({"role": "assistant", "content": f"answer {i}"})
    return {"model": model, "messages": messages, **extra}


async def start(
    cluster: LocalCluster,
    backends: dict[str, tuple[list[str], int]],
    settings: GatewaySettings | None = None,
) -> GatewayHandle:
    """A gateway first (so it hears every first announcement), then the backends."""
    hub = InMemoryTransport()
    gw = await cluster.add_gateway(membership_transport=hub.connect("gateway"), settings=settings)
    for name, (models, vram) in backends.items():
        await cluster.add_backend(
            name, models=models, available_vram=vram, publisher=hub.connect(name)
        )
    await wait_until(
        lambda: len(gw.gateway.membership.nodes()) == len(backends), what="announcements"
    )
    return gw


THREE = {
    "b1": (["m-a", "m-s"], 80 * GiB),
    "b2": (["m-a", "m-b", "m-s"], 48 * GiB),
    "b3": (["m-b", "m-s"], 24 * GiB),
}


async def post_chat(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with session.post(url + "/v1/chat/completions", json=body, **kw) as resp:
        return resp.status, await resp.json(), resp.headers


async def cluster_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/cluster.json") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


def test_routes_by_model_and_answers_503_when_nothing_serves_it() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, THREE)
            seen_b: set[str] = set()
            for i in range(6):
                status, body, headers = await post_chat(
                    s, gw.url, conversation("m-b", [f"distinct question {i}"], system="")
                )
                assert status == 200
                assert body["replica"] == headers["X-Replica"]
                seen_b.add(body["replica"])
            # Only b2 and b3 serve m-b; equally idle replicas take turns (last_used tier), so
            # both are used. Counterfactual: ignoring the model would also hit b1.
            assert seen_b == {"b2", "b3"}

            seen_a = set()
            for i in range(4):
                _, body, _ = await post_chat(s, gw.url, conversation("m-a", [f"q{i}"], system=""))
                seen_a.add(body["replica"])
            assert seen_a == {"b1", "b2"}

            # ?model= wins over the body's model.
            status, body, _ = await post_chat(
                s, gw.url + "", conversation("m-a", ["x"]), params={"model": "m-b"}
            )
            assert status == 200 and body["replica"] in {"b2", "b3"}

            status, body, _ = await post_chat(s, gw.url, conversation("m-nobody", ["x"]))
            assert status == 503
            assert body["error"]["type"] == "no_backend"
            assert "m-nobody" in body["error"]["message"]

    run(main)


def test_repeated_conversation_returns_to_the_same_backend() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, THREE)
            turns = ["Where is parcel 1?"]
            _, first, _ = await post_chat(s, gw.url, conversation("m-s", turns))
            home = first["replica"]
            assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
            for n in range(2, 5):
                turns.append(f"And what about parcel {n}?")
                status, body, _ = await post_chat(s, gw.url, conversation("m-s", turns))
                assert status == 200
                # Without affinity the idle backend with the oldest last use would win: `home`
                # was used last, so round-robin-like turn-taking would move away from it.
                assert body["replica"] == home
                assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0

            # The chain hashes the chat messages, not raw JSON bytes: reordered keys, other
            # whitespace and extra sampling fields still find the same backend and its cache.
            doc = conversation("m-s", turns)
            raw = json.dumps(
                {"temperature": 0.3, "messages": doc["messages"], "model": "m-s"}, indent=3
            )
            async with s.post(
                gw.url + "/v1/chat/completions",
                data=raw,
                headers={"Content-Type": "application/json"},
            ) as resp:
                body = await resp.json()
            assert body["replica"] == home
            assert body["usage"]["prompt_tokens_details"]["cached_tokens"] > 0

            # Counterfactual: a new conversation is not pulled to `home` (it was used last).
            _, other, _ = await post_chat(
                s, gw.url, conversation("m-s", ["unrelated topic"], system="")
            )
            assert other["replica"] != home

            snap = await cluster_json(s, gw.url)
            by_id = {b["id"]: b for b in snap["backends"]}
            assert by_id[home]["affinity_routed"] >= 4
            assert by_id[home]["affinity_share"] > 0.5
            assert snap["index"]["entries"] > 0

    run(main)


def test_concurrent_load_spreads_despite_affinity_and_in_flight_is_released() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, THREE)
            # Warm one backend with the shared conversation prefix.
            _, warm, _ = await post_chat(s, gw.url, conversation("m-s", ["shared start"]))
            hot = warm["replica"]

            # 12 streaming requests continuing that conversation, each held by the backend
            # after its first chunk: all 12 are in flight at once, deterministically.
            n = 12
            responses: list[aiohttp.ClientResponse] = []
            replicas: list[str] = []
            for i in range(n):
                body = conversation("m-s", ["shared start", f"follow-up {i}"], stream=True)
                resp = await s.post(
                    gw.url + "/v1/chat/completions",
                    json=body,
                    headers={"X-Mock-Hold": f"hold-{i}"},
                )
                assert resp.status == 200
                line = await asyncio.wait_for(resp.content.readline(), 10)
                assert line.startswith(b"data: ")
                responses.append(resp)
                replicas.append(resp.headers["X-Replica"])
            try:
                snap = await cluster_json(s, gw.url)
                in_flight = {b["id"]: b["in_flight"] for b in snap["backends"]}
                # True in-flight: the reserved counts are exactly the held requests.
                assert sum(in_flight.values()) == n
                assert in_flight == dict(Counter(replicas)) | {
                    k: 0 for k in in_flight if k not in replicas
                }
                # The load guard: affinity alone would send all 12 to `hot`; the guard lets
                # `hot` lead the least loaded backend by at most slack (2) + the pick itself.
                assert len(set(replicas)) == 3
                assert in_flight[hot] - min(in_flight.values()) <= 3
                assert in_flight[hot] == max(in_flight.values())
                # Each preferred-but-not-picked decision is a forced disturb (pressure).
                assert sum(snap["pressure"]["by_model"].values()) >= 1
            finally:
                for i, (resp, replica) in enumerate(zip(responses, replicas, strict=True)):
                    backend_url = cluster.backends[replica].url
                    for _ in range(6):
                        async with s.post(f"{backend_url}/_mock/release/hold-{i}"):
                            pass
                    await asyncio.wait_for(resp.read(), 10)
                    resp.release()

            async def all_released() -> bool:
                snap = await cluster_json(s, gw.url)
                return all(b["in_flight"] == 0 for b in snap["backends"])

            await wait_until(all_released, what="in-flight back to 0")

    run(main)


def test_body_cap_accepts_exactly_the_cap_and_rejects_one_byte_more() -> None:
    assert DEFAULT_BODY_LIMIT == 15 * 1024 * 1024

    def body_of_size(size: int) -> bytes:
        head = b'{"model": "m-a", "messages": [{"role": "user", "content": "'
        tail = b'"}]}'
        raw = head + b"x" * (size - len(head) - len(tail)) + tail
        assert len(raw) == size
        return raw

    async def chunked(raw: bytes) -> Any:
        for i in range(0, len(raw), 1 << 20):
            yield raw[i : i + (1 << 20)]

    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, {"b1": (["m-a"], GiB)})  # default settings: 15 MiB cap
            url = gw.url + "/v1/chat/completions"
            hdr = {"Content-Type": "application/json"}
            exact = body_of_size(DEFAULT_BODY_LIMIT)
            over = body_of_size(DEFAULT_BODY_LIMIT + 1)

            async with s.post(url, data=exact, headers=hdr) as resp:
                assert resp.status == 200
                assert (await resp.json())["replica"] == "b1"
            async with s.post(url, data=over, headers=hdr) as resp:  # Content-Length path
                assert resp.status == 413
                err = (await resp.json())["error"]
                assert err["type"] == "request_too_large" and err["limit"] == DEFAULT_BODY_LIMIT
            # Without Content-Length (chunked upload) the cap is enforced while reading.
            async with s.post(url, data=chunked(over), headers=hdr) as resp:
                assert resp.status == 413
            async with s.post(url, data=chunked(exact), headers=hdr) as resp:
                assert resp.status == 200
            snap = await cluster_json(s, gw.url)
            assert snap["rejected"]["413"] == 2

    run(main)


def test_sse_chunks_are_relayed_as_the_backend_emits_them() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, {"b1": (["m-a"], GiB)})
            backend_url = cluster.backends["b1"].url
            body = conversation("m-a", ["stream please"], stream=True)
            arrivals: list[float] = []
            contents: list[str] = []
            async with s.post(
                gw.url + "/v1/chat/completions", json=body, headers={"X-Mock-Hold": "sse"}
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                while True:
                    # The backend sends chunk k+1 only after we release it below, having
                    # received chunk k through the gateway. A buffering proxy would never
                    # deliver chunk 1 and this read would time out.
                    line = await asyncio.wait_for(resp.content.readline(), 10)
                    assert line, "stream ended before [DONE]"
                    if not line.strip():
                        continue
                    arrivals.append(time.monotonic())
                    payload = line.decode().removeprefix("data: ").strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    assert chunk["replica"] == "b1"
                    contents.append(chunk["choices"][0].get("delta", {}).get("content", ""))
                    if chunk["choices"][0]["finish_reason"] is None:
                        async with s.post(f"{backend_url}/_mock/release/sse") as r:
                            assert r.status == 200
            assert "".join(contents) == "Hello from b1 (m-a)."
            assert len(arrivals) == 7  # role, 4 words, stop, [DONE]: 7 separate arrivals
            assert arrivals == sorted(arrivals)
            # A completed stream counts as a successful serve and is observed.
            snap = await cluster_json(s, gw.url)
            assert snap["backends"][0]["served"] == 1
            assert snap["index"]["entries"] > 0

    run(main)


def test_websocket_is_proxied_duplex_with_connection_upgrade_preserved() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, THREE)
            async with s.ws_connect(gw.url + "/ws?model=m-b&x=1", protocols=("echo",)) as ws:
                hello = await ws.receive_json(timeout=10)
                # The backend saw a real upgrade (the reference strips Connection: Upgrade).
                assert "upgrade" in hello["connection"].lower()
                assert hello["upgrade"].lower() == "websocket"
                assert hello["protocol"] == "echo" and ws.protocol == "echo"
                assert hello["path_qs"] == "/ws?model=m-b&x=1"
                assert hello["replica"] in {"b2", "b3"}  # routed by ?model=
                await ws.send_str("ping")
                assert await ws.receive_str(timeout=10) == "ping"
                await ws.send_bytes(b"\x00\x01binary")
                assert await ws.receive_bytes(timeout=10) == b"\x00\x01binary"
                snap = await cluster_json(s, gw.url)
                in_flight = {b["id"]: b["in_flight"] for b in snap["backends"]}
                assert in_flight[hello["replica"]] == 1  # held for the connection's lifetime

            async def released() -> bool:
                snap = await cluster_json(s, gw.url)
                return all(b["in_flight"] == 0 for b in snap["backends"])

            await wait_until(released, what="websocket reservation released")

    run(main)


def test_failed_serves_are_not_observed_and_dead_backends_are_avoided() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, THREE)
            convo = conversation("m-s", ["first question of a long chat"])
            status, body, _ = await post_chat(s, gw.url, convo, headers={"X-Mock-Status": "500"})
            assert status == 500  # relayed as is
            snap = await cluster_json(s, gw.url)
            assert snap["index"]["entries"] == 0  # a failed serve teaches no affinity
            assert not any(b["failed"] for b in snap["backends"])  # an answer: alive

            status, body, _ = await post_chat(s, gw.url, convo)
            assert status == 200
            victim = body["replica"]
            assert (await cluster_json(s, gw.url))["index"]["entries"] > 0

            await cluster.backends[victim].stop()  # gone, but its last announcement is fresh
            answered: list[str] = []
            for i in range(6):
                # Same conversation first: affinity points at the dead backend.
                doc = convo if i == 0 else conversation("m-s", [f"other {i}"])
                status, body, _ = await post_chat(s, gw.url, doc)
                assert status == 200  # connect failed -> retried on another backend
                answered.append(body["replica"])
            assert victim not in answered
            snap = await cluster_json(s, gw.url)
            dead = next(b for b in snap["backends"] if b["id"] == victim)
            assert dead["failed"] and dead["online"]  # announced recently, yet skipped
            assert dead["failures"] == 1  # marked once, then never tried again
            assert all(b["in_flight"] == 0 for b in snap["backends"])

            # Skipped until it announces again.
            node = gw.gateway.membership.get(victim)
            assert node is not None
            gw.gateway.membership.add(node)
            assert gw.gateway.membership.failure(victim) is None

    run(main)


def test_cluster_page_embeds_the_snapshot_and_refreshes_from_json() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, THREE)
            async with s.get(gw.url + "/cluster") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/html")
                html = await resp.text()
            assert 'id="initial-snapshot"' in html and "cluster.json" in html
            assert "http://" not in html.split("<script", 1)[0]  # nothing from elsewhere
            for name in THREE:
                assert f'"id": "{name}"' in html
            snap = await cluster_json(s, gw.url)
            assert {b["id"] for b in snap["backends"]} == set(THREE)
            b1 = next(b for b in snap["backends"] if b["id"] == "b1")
            assert b1["online"] and b1["available_vram"] == 80 * GiB
            assert b1["models"] == ["m-a", "m-s"]
            assert snap["sync"]["enabled"] is False

    run(main)


def test_a_backend_that_times_out_is_marked_and_skipped() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            settings = GatewaySettings(read_timeout=0.3)
            gw = await start(cluster, {"slow": (["m-t"], 80 * GiB), "ok": (["m-t"], GiB)}, settings)
            # Cold choice is `slow` (more VRAM); it does not answer within read_timeout.
            status, body, _ = await post_chat(
                s, gw.url, conversation("m-t", ["q"]), headers={"X-Mock-Delay": "3"}
            )
            assert status == 504 and body["error"]["type"] == "backend_timeout"
            mark = gw.gateway.membership.failure("slow")
            assert mark is not None and "timeout" in mark.reason
            assert gw.gateway.in_flight.get("slow", 0) == 0
            # Skipped although online, even for the request that would prefer it.
            for i in range(3):
                status, body, _ = await post_chat(s, gw.url, conversation("m-t", [f"n{i}"]))
                assert status == 200 and body["replica"] == "ok"

    run(main)


def test_membership_drops_malformed_announcements() -> None:
    from clusterrouting import NodeData
    from examples.gateway.membership import Membership

    members = Membership()
    handler = members.handler()
    for junk in (b"not json", b"[]", b'{"ID": 5}', b"{}", b"x" * 100_000, "text"):
        handler("clusterrouting.nodes", junk)  # never raises
    assert members.nodes() == [] and members.dropped == 6
    handler("clusterrouting.nodes", NodeData(id="n1", last_seen=1.0).to_json().encode())
    assert [n.id for n in members.nodes()] == ["n1"] and members.announcements == 1


def test_a_client_that_goes_away_releases_its_backend_and_teaches_nothing() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, {"b1": (["m-a"], GiB)})
            body = conversation("m-a", ["I will hang up"], stream=True)
            resp = await s.post(
                gw.url + "/v1/chat/completions", json=body, headers={"X-Mock-Hold": "gone"}
            )
            assert resp.status == 200
            assert (await asyncio.wait_for(resp.content.readline(), 10)).startswith(b"data: ")
            assert gw.gateway.in_flight.get("b1") == 1
            resp.close()  # the client disconnects while the backend is still generating
            # Released at once (the handler is cancelled on disconnect), not when the
            # backend would have finished: the hold is never released.
            await wait_until(lambda: gw.gateway.in_flight.get("b1", 0) == 0, what="release")
            snap = await cluster_json(s, gw.url)
            assert snap["index"]["entries"] == 0 and snap["backends"][0]["served"] == 0
            assert not snap["backends"][0]["failed"]  # the client left; the backend is fine

    run(main)


def test_backends_that_stop_announcing_drop_out_after_the_online_window() -> None:
    from prefixcache.testing import ManualClock

    async def main() -> None:
        clock = ManualClock(1_000_000.0)  # shared by gateway and backends: one wall clock
        hub = InMemoryTransport()
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await cluster.add_gateway(membership_transport=hub.connect("gw"), clock=clock)
            conns = {name: hub.connect(name) for name in ("big", "small")}
            for name, vram in (("big", 80 * GiB), ("small", GiB)):
                await cluster.add_backend(
                    name,
                    models=["m-o"],
                    available_vram=vram,
                    publisher=conns[name],
                    announce_interval=3600,  # only the first announcement, then by hand
                    clock=clock,
                )
            _, body, _ = await post_chat(s, gw.url, conversation("m-o", ["a"], system=""))
            assert body["replica"] == "big"  # cold choice: most free VRAM

            clock.advance(39.999)  # `big` last announced 39.999 s ago: still online
            cluster.backends["small"].backend.announce(conns["small"])
            got = set()
            for q in ("b", "c"):
                _, body, _ = await post_chat(s, gw.url, conversation("m-o", [q], system=""))
                got.add(body["replica"])
            assert got == {"big", "small"}  # equally idle: they take turns, both online

            clock.advance(0.001)  # exactly 40 s: offline (the window is strict)
            for i in range(3):
                _, body, _ = await post_chat(s, gw.url, conversation("m-o", [f"c{i}"]))
                assert body["replica"] == "small"
            snap = await cluster_json(s, gw.url)
            online = {b["id"]: b["online"] for b in snap["backends"]}
            assert online == {"big": False, "small": True}

            clock.advance(40.0)  # nobody announced for 40 s: no eligible backend
            status, body, _ = await post_chat(s, gw.url, conversation("m-o", ["d"]))
            assert status == 503 and body["error"]["type"] == "no_backend"

    run(main)


def test_a_backend_that_dies_before_answering_is_retried_elsewhere() -> None:
    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            gw = await start(cluster, THREE)
            # Idle cluster: the cold choice for m-s is b1 (most VRAM). It takes the request,
            # then dies before answering (its server shuts down and drops the connection).
            pending = asyncio.ensure_future(
                post_chat(
                    s,
                    gw.url,
                    conversation("m-s", ["slow"]),
                    headers={"X-Mock-Delay": "30", "X-Mock-Delay-Replica": "b1"},
                )
            )
            await wait_until(
                lambda: cluster.backends["b1"].backend.in_flight == 1, what="b1 working"
            )
            await cluster.backends["b1"].stop()
            status, body, _ = await asyncio.wait_for(pending, 20)
            # The client never sees the failure: no byte had been sent, so the gateway
            # retried on another backend.
            assert status == 200 and body["replica"] in {"b2", "b3"}
            mark = gw.gateway.membership.failure("b1")
            assert mark is not None and "connection" in mark.reason
            assert all(v == 0 for v in gw.gateway.in_flight.values())

    run(main)


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    from multidict import CIMultiDict

    from examples.gateway.app import _forward_headers

    incoming = CIMultiDict(
        [
            ("Host", "gw"),
            ("Connection", "keep-alive, X-Private-Hop"),
            ("X-Private-Hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "12"),
            ("Keep-Alive", "timeout=5"),
            ("Authorization", "Bearer t"),
            ("Content-Type", "application/json"),
        ]
    )
    # End-to-end headers pass; hop-by-hop ones (and those the Connection header names) don't.
    assert _forward_headers(incoming) == {
        "Authorization": "Bearer t",
        "Content-Type": "application/json",
    }
