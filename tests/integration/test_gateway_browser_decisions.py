"""Headless Chromium draws the cluster page's charts and decision table from live data.

The gateway routes a few chat requests (the second and third share the first one's prefix,
so they have a preferred backend), then Chromium loads ``/cluster`` and runs its script
(``--virtual-time-budget``): the decision rows, the in-flight lines and the hit bars are
built by the script from ``/cluster.json``, which must carry the same explanations.

Marked ``e2e`` like the other browser test: it needs Chromium (``make e2e``) and fails,
never skips, when Chromium is missing.
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from browser import dump_dom, find_chromium

from examples.gateway.harness import LocalCluster, wait_until
from prefixcache.testing import InMemoryTransport

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_cluster_page_shows_decisions_and_charts_in_headless_chromium() -> None:
    find_chromium()

    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            hub = InMemoryTransport()
            gw = await cluster.add_gateway(membership_transport=hub.connect("gateway"))
            for name in ("alpha", "beta"):
                await cluster.add_backend(
                    name, models=["m-1"], available_vram=2**34, publisher=hub.connect(name)
                )
            await wait_until(lambda: len(gw.gateway.membership.nodes()) == 2)
            system = "You are a careful assistant. " * 40
            for q in ("first question", "second question", "third question"):
                body = {
                    "model": "m-1",
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": q},
                    ],
                }
                async with s.post(gw.url + "/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200

            async with s.get(gw.url + "/cluster.json") as resp:
                snap = await resp.json()
            decisions = snap["decisions"]
            assert [d["model"] for d in decisions] == ["m-1"] * 3
            assert decisions[0]["rule"] == "least_loaded" and decisions[0]["preferred"] is None
            assert all(d["rule"] in ("affinity", "load_guard") for d in decisions[1:])
            assert {c["node"] for c in decisions[0]["candidates"]} == {"alpha", "beta"}
            (bucket,) = snap["history"]["buckets"]
            assert bucket["requests"] == 3 and bucket["reachable"] == 2
            assert bucket["achieved"] == sum(d["rule"] == "affinity" for d in decisions)

            dom = await dump_dom(gw.url + "/cluster")
            rows = re.findall(r'<tr class="decision" data-rule="([a-z_]+)">', dom)
            assert rows == [d["rule"] for d in reversed(decisions)]  # newest first
            assert re.search(r'<svg id="chart-inflight"[^>]*data-points="1"', dom)
            series = re.findall(r'<polyline[^>]*data-node="([^"]+)"', dom)
            assert sorted(series) == sorted(bucket["in_flight"])
            assert re.search(r'<svg id="chart-hits"[^>]*data-points="1"', dom)
            assert len(re.findall(r'<rect[^>]*class="achieved"', dom)) == 1
            assert re.search(r'<table id="backends" data-source="live"', dom)

    asyncio.run(asyncio.wait_for(main(), timeout=90))
