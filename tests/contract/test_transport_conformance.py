"""check_transport on every Transport we ship: in-memory (auto and manual), NATS, Redis."""

from __future__ import annotations

import pytest
from sync_brokers import Broker

from prefixcache import AsyncUnsubscribe, MessageHandler
from prefixcache.testing import InMemoryTransport, check_async_transport, check_transport
from prefixcache.transports.nats import AsyncNatsTransport, NatsTransport
from prefixcache.transports.redis import AsyncRedisTransport, RedisTransport


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


def test_async_in_memory_adapter() -> None:
    hub = InMemoryTransport()

    class AsyncConn:
        def __init__(self) -> None:
            self.conn = hub.connect()

        async def publish(self, subject: str, payload: bytes) -> None:
            self.conn.publish(subject, payload)

        async def subscribe(self, subject: str, handler: MessageHandler) -> AsyncUnsubscribe:
            unsub = self.conn.subscribe(subject, handler)

            async def cancel() -> None:
                unsub()

            return cancel

    async def connect() -> AsyncConn:
        return AsyncConn()

    check_async_transport(connect)


@pytest.mark.integration
def test_async_nats(nats: Broker) -> None:
    check_async_transport(lambda: AsyncNatsTransport.connect(nats.url))


@pytest.mark.integration
def test_async_redis(redis: Broker) -> None:
    check_async_transport(lambda: AsyncRedisTransport.connect(redis.url))
