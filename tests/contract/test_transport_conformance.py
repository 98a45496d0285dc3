"""check_transport on every Transport we ship: in-memory (auto and manual), NATS, Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sync_brokers import Broker, nats_server, redis_server

from prefixcache.testing import InMemoryTransport, check_transport
from prefixcache.transports.nats import NatsTransport
from prefixcache.transports.redis import RedisTransport


@pytest.fixture
def nats() -> Iterator[Broker]:
    broker = nats_server()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def redis() -> Iterator[Broker]:
    broker = redis_server()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_in_memory_auto_delivery() -> None:
    hub = InMemoryTransport()
    check_transport(hub.connect)


def test_in_memory_manual_delivery() -> None:
    hub = InMemoryTransport(auto_deliver=False)
    check_transport(hub.connect, pump=hub.deliver)


@pytest.mark.integration
def test_nats(nats: Broker) -> None:
    check_transport(lambda: NatsTransport.connect(nats.url))


@pytest.mark.integration
def test_redis(redis: Broker) -> None:
    check_transport(lambda: RedisTransport.connect(f"{redis.url}/0"))
