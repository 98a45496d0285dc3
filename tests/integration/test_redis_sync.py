"""Sync over a real redis-server (pub/sub) on loopback: conformance, convergence, restart."""

from __future__ import annotations

import time

import pytest
from sync_brokers import Broker, async_host_scenario, converge_scenario, restart_scenario

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
    """AsyncRedisTransport with Sync.attach_async and async publishers on one loop."""
    async_host_scenario(lambda: AsyncRedisTransport.connect(redis.url))
