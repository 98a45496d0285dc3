"""A broker stopped with SIGSTOP (hung, not refusing) never stalls routing: every observe
returns while it is frozen, the outgoing queue stays bounded, and after SIGCONT the newest
messages reach the peer. NATS and Redis."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
from sync_brokers import Broker, wait_until

from prefixcache import Candidate, Index, ReplicaKey, Sync
from prefixcache.transports.nats import NatsTransport
from prefixcache.transports.redis import RedisTransport

pytestmark = pytest.mark.integration

CALLS = 3000
# The calls' upper bound: before, each waited 2 s on the frozen broker (Redis at once, NATS
# once its buffer was full), thousands of seconds in all.
BOUND = 60.0


def frozen_scenario(broker: Broker, connect: Callable[[], object]) -> None:
    ta, tb = connect(), connect()
    a, b = Sync(Index(), clock=time.time), Sync(Index(), clock=time.time)
    assert broker.proc is not None
    try:
        a.attach(ta)  # type: ignore[arg-type]
        b.attach(tb)  # type: ignore[arg-type]
        os.kill(broker.proc.pid, signal.SIGSTOP)
        try:
            done = threading.Event()

            def route() -> None:
                for i in range(CALLS):  # ~4 KB each: past nats-py's own 2 MiB buffer
                    chain = tuple(range(i * 1000, i * 1000 + 200))
                    a.observe("m", chain, ReplicaKey("n1"), time.time())
                done.set()

            threading.Thread(target=route, daemon=True).start()
            assert done.wait(BOUND), "routing calls blocked on the frozen broker"
            assert ta.pending() <= ta.max_queue  # type: ignore[attr-defined]
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        key = ReplicaKey("n1")
        fresh = (10**9, 1)
        a.observe("m", fresh, key, time.time())  # the newest message: never the one dropped
        wait_until(
            lambda: b.decide("m", fresh, [Candidate(key)], time.time()).hot == key,
            timeout=90,
            what="sync resumed after SIGCONT",
        )
        assert ta.dropped > 0  # type: ignore[attr-defined]
    finally:
        if broker.proc is not None:
            os.kill(broker.proc.pid, signal.SIGCONT)
        ta.close()  # type: ignore[attr-defined]
        tb.close()  # type: ignore[attr-defined]


def test_nats_frozen(nats: Broker) -> None:
    frozen_scenario(nats, lambda: NatsTransport.connect(nats.url, max_queue=20))


def test_redis_frozen(redis: Broker) -> None:
    frozen_scenario(redis, lambda: RedisTransport.connect(redis.url, max_queue=20))
