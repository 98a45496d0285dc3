"""Headless Chromium loads the gateway's /cluster page and the backends are listed.

The rows are built by the page's own script (the server sends an empty table body), and with
``--virtual-time-budget`` Chromium runs the script's ``fetch('cluster.json')`` before dumping
the DOM, so ``data-source="live"`` proves the self-refresh path works in a real browser.

Marked ``e2e``: it needs Chromium from the system (``make e2e``; Debian: ``apt-get install
chromium``), and fails, never skips, when Chromium is missing.
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


def test_cluster_page_lists_backends_in_headless_chromium() -> None:
    find_chromium()  # before any server starts: a missing browser fails at once, clearly

    async def main() -> None:
        async with LocalCluster() as cluster, aiohttp.ClientSession() as s:
            hub = InMemoryTransport()
            gw = await cluster.add_gateway(membership_transport=hub.connect("gateway"))
            specs = {"alpha": ["m-1"], "beta": ["m-1", "m-2"], "gamma": []}
            for name, models in specs.items():
                await cluster.add_backend(
                    name, models=models, available_vram=2**34, publisher=hub.connect(name)
                )
            await wait_until(lambda: len(gw.gateway.membership.nodes()) == 3)
            # Some traffic so the page has in-flight/served numbers to show.
            body = {"model": "m-1", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(gw.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200

            # The server-side HTML has no rows: only the script can produce them.
            async with s.get(gw.url + "/cluster") as resp:
                assert '<tbody id="backend-rows"></tbody>' in await resp.text()

            dom = await dump_dom(gw.url + "/cluster")
            rows = re.findall(r'<tr class="backend" data-node="([^"]+)">(.*?)</tr>', dom, re.S)
            assert [node for node, _ in rows] == ["alpha", "beta", "gamma"]
            cells = dict(rows)
            assert 'class="state online"' in cells["beta"]
            assert "m-1, m-2" in cells["beta"]
            assert "(any)" in cells["gamma"]  # no models announced = eligible for any
            assert "16.0 GiB" in cells["alpha"]
            assert re.search(r'<table id="backends" data-source="live"', dom)
            assert re.search(r'id="requests">\d+<', dom)
            # The browser's own requests (favicon) are not proxied to a backend.
            snap = gw.gateway.snapshot()
            assert sum(b["errors"] for b in snap["backends"]) == 0
            assert sum(b["served"] for b in snap["backends"]) == 1

    asyncio.run(asyncio.wait_for(main(), timeout=90))
