"""The example gateway's NATS bridge never lets a hung server block routing or grow memory:
a bounded outgoing queue drained by one task, oldest dropped when full (a double whose send
hangs on an event: no timings)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.nats_bridge import NatsBridge


class _HungConnection:
    def __init__(self) -> None:
        self.is_closed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.sent: list[bytes] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        self.entered.set()
        await self.release.wait()
        self.sent.append(payload)


def test_publish_returns_and_the_queue_stays_bounded_while_the_server_hangs() -> None:
    async def main() -> None:
        conn = _HungConnection()
        bridge = NatsBridge(conn, max_queue=5, send_timeout=3600.0)
        bridge.publish("s", b"0")
        await asyncio.wait_for(conn.entered.wait(), 10)  # the first send hangs
        for i in range(1, 21):
            bridge.publish("s", str(i).encode())  # returns at once
        # Before: one task per publish, none bounded (and nats-py's own buffer blocked).
        assert bridge.dropped == 15 and len(bridge._outgoing) == 5
        conn.release.set()
        await asyncio.wait_for(bridge._sender, 10)  # type: ignore[arg-type]
        assert conn.sent == [b"0", b"16", b"17", b"18", b"19", b"20"]
        assert bridge.errors == 0

    asyncio.run(main())
