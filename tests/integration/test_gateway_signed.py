"""Signed announcements: a gateway whose membership transport requires signatures routes only
to backends that hold the shared key; a stranger's forged NodeData (pointing the model at an
address of its choosing) is dropped and counted."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.harness import LocalCluster, wait_until
from examples.gateway.mock_backend import NODE_SUBJECT
from prefixcache import SignedTransport, Signer, SigningKeys, Verifier
from prefixcache.testing import InMemoryTransport

pytestmark = pytest.mark.integration

KEYS = SigningKeys(keys={"k": b"cluster-secret-0123456789"}, active="k")


def test_a_forged_announcement_is_dropped() -> None:
    async def main() -> None:
        hub = InMemoryTransport()
        guarded = SignedTransport(
            hub.connect("gateway"), signer=Signer(KEYS, origin="gw"), verifier=Verifier(KEYS)
        )
        async with LocalCluster() as cluster:
            gw = await cluster.add_gateway(membership_transport=guarded)
            await cluster.add_backend(
                "good",
                models=["m"],
                available_vram=2**30,
                publisher=SignedTransport(hub.connect("good"), signer=Signer(KEYS, origin="good")),
            )
            await wait_until(lambda: len(gw.gateway.membership.nodes()) == 1, what="announce")
            forged = {"ID": "evil", "Name": "evil", "TunnelAddress": "127.0.0.1:9", "Models": ["m"]}
            hub.connect("stranger").publish(NODE_SUBJECT, json.dumps(forged).encode())
            assert guarded.dropped["unsigned"] == 1
            assert [n.id for n in gw.gateway.membership.nodes()] == ["good"]
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            async with (
                aiohttp.ClientSession() as s,
                s.post(gw.url + "/v1/chat/completions", json=body) as resp,
            ):
                assert resp.status == 200 and resp.headers["X-Gateway-Backend"] == "good"

    asyncio.run(asyncio.wait_for(main(), 60))
