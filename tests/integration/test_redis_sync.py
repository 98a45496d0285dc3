"""Sync over a real redis-server (pub/sub) on loopback: conformance, convergence, restart."""

from __future__ import annotations

import asyncio
import time

import pytest
from sync_brokers import Broker, converge_scenario, restart_scenario

from prefixcache import Candidate, Index, ReplicaKey, Sync
from prefixcache.testing import check_transport
from prefixcache.transports.redis import AsyncRedisTransport, RedisTransport

pytestmark = pytest.mark.integration


def test_conformance(redis: Broker) -> None:
    check_transport(lambda: RedisTransport.connect(redis.url))


def test_three_routers_converge(redis: Broker) -> None:
    converge_scenario(lambda: RedisTransport.connect(redis.url), n=3)


def test_broker_restart_mid_stream(redis: Broker) -> None:
    # Redis PUBLISH fails fast while the server is down: Sync counts it and routes on.
    restart_scenario(
        redis, lambda: RedisTransport.connect(redis.url), publishes_fail_while_down=True
    )


def test_own_messages_are_not_echoed(redis: Broker) -> None:
    t = RedisTransport.connect(redis.url)
    other = RedisTransport.connect(redis.url)
    try:
        mine: list[bytes] = []
        theirs: list[bytes] = []
        t.subscribe("s", lambda _s, p: mine.append(p))
        other.subscribe("s", lambda _s, p: theirs.append(p))
        t.publish("s", b"x")
        t.publish("s", b"x")
        other.publish("s", b"x")  # identical bytes from a peer still arrive
        deadline = time.monotonic() + 15
        while len(mine) < 1 or len(theirs) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert mine == [b"x"] and theirs == [b"x", b"x"]
        assert t.transport.echoes_dropped == 2
    finally:
        t.close()
        other.close()


def test_asyncio_host(redis: Broker) -> None:
    async def main() -> None:
        ta = await AsyncRedisTransport.connect(redis.url)
        tb = await AsyncRedisTransport.connect(redis.url)
        a, b = Sync(Index(), clock=time.time), Sync(Index(), clock=time.time)
        try:
            await a.attach_async(ta)
            await b.attach_async(tb)
            b.invalidate_node("m", "n1")
            a.observe("m", (5, 6), ReplicaKey("n1"), time.time())
            await a.flush()
            cands = [Candidate(ReplicaKey("n1"))]
            deadline = time.monotonic() + 15
            while b.decide("m", (5, 6), cands, time.time()).hot is None:
                assert time.monotonic() < deadline, "not delivered"
                await asyncio.sleep(0.01)
            await b.flush()
            assert a.stats().applied_invalidate == 1
        finally:
            await ta.close()
            await tb.close()

    asyncio.run(main())
