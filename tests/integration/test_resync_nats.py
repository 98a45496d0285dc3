"""The resync loop over a real nats-server whose payload limit is small (64 KiB): a snapshot
over twice as large travels in signed chunks under the limit and repairs the drift."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from broker_security import nats_with_config
from sync_brokers import wait_until

from prefixcache import Index, ReplicaKey, Sync, digests
from prefixcache._resync import ResyncLoop
from prefixcache._signing import Signer, SigningKeys, Verifier
from prefixcache.transports.nats import NatsTransport

pytestmark = pytest.mark.integration

KEYS = SigningKeys(keys={"k": b"k" * 32}, active="k")


def test_a_large_snapshot_crosses_a_small_payload_limit_in_signed_chunks(tmp_path: Path) -> None:
    broker = nats_with_config(tmp_path, "max_payload: 65536\n")
    broker.start()
    transports = [NatsTransport.connect(broker.url) for _ in range(2)]
    try:
        routers = []
        for name, t in zip(("a", "b"), transports, strict=True):
            sync = Sync(
                Index(),
                clock=time.time,
                signer=Signer(KEYS, origin=name),
                verifier=Verifier(KEYS),
            )
            sync.attach(t)
            loop = ResyncLoop(sync, t, origin=name, chunk_bytes=16 * 1024)
            loop.attach()
            routers.append((sync, loop))
        (a, loop_a), (b, loop_b) = routers
        now = time.time()
        for i in range(3000):  # learned while b was cut off: never published
            a.provider.observe("m", (i, i + 1, i + 2, i + 3), ReplicaKey(f"n{i % 7}"), now)
        assert len(a.export_snapshot().encode()) > 2 * 65536  # one message could not carry it
        transports[1].flush()
        loop_a.tick()
        wait_until(lambda: loop_b.stats().snapshots_applied == 1, what="snapshot applied")
        assert loop_a.stats().chunks_sent == loop_b.stats().chunks_received > 4
        assert loop_a.stats().errors == 0 and transports[0].publish_errors == 0
        t = time.time()
        assert digests(b, now=t) == digests(a, now=t)
        assert b.stats().dropped == 0
    finally:
        for t in transports:
            t.close()
        broker.stop()
