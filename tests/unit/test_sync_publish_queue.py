"""Publishing never waits on the network: ThreadedTransport's bounded outgoing queue.

A broker that accepted the connection and then hung (SIGSTOP) used to block every routing
call for the publish timeout (2 s). The double below hangs its sends on an event, so each
check is exact and needs no timing.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import Index, ObserveEvent, ReplicaKey, Sync
from prefixcache.testing import GatedAsyncTransport
from prefixcache.transports import DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_BYTES, ThreadedTransport
from prefixcache.transports.nats import AsyncNatsTransport
from prefixcache.transports.redis import AsyncRedisTransport

BOUND = 10.0  # a bound on waits for the loop thread, never a timing assertion
NEVER = 3600.0  # a send timeout no test reaches


def gated(**kwargs: object) -> tuple[ThreadedTransport[GatedAsyncTransport], GatedAsyncTransport]:
    double = GatedAsyncTransport()

    async def connect() -> GatedAsyncTransport:
        return double

    return ThreadedTransport(connect, timeout=NEVER, **kwargs), double  # type: ignore[arg-type]


def test_routing_calls_return_while_the_broker_hangs() -> None:
    transport, double = gated(max_queue=10)
    sync = Sync(Index(), transport, clock=lambda: 0.0)
    try:
        assert sync.observe("m", (0,), ReplicaKey("a"), 0.0)
        assert double.entered.wait(BOUND)  # the first send is now hung
        # Before: each of these waited for the hung send (TimeoutError after 2 s).
        for i in range(1, 50):
            assert sync.observe("m", (i,), ReplicaKey("a"), 0.0) is True
        assert transport.pending() == 10
        assert transport.dropped == 49 - 10  # the oldest queued ones
        assert sync.stats().published == 50 and sync.stats().publish_errors == 0
        double.open()
        assert transport.drain(BOUND)
        chains = [ObserveEvent.decode(p).chain for _, p in double.published]
        # The hung one, then the newest ten, in order.
        assert chains == [(0,)] + [(i,) for i in range(40, 50)]
        assert transport.sent == 11 and transport.pending() == 0
    finally:
        double.open()
        transport.close()


def test_the_byte_cap_drops_oldest_but_keeps_one_oversized_message() -> None:
    transport, double = gated(max_queue_bytes=100)
    try:
        transport.publish("s", b"first")
        assert double.entered.wait(BOUND)
        for i in range(5):
            transport.publish("s", bytes([i]) * 40)  # 40 bytes each: two fit in 100
        assert transport.pending() == 2 and transport.dropped == 3
        transport.publish("s", b"x" * 500)  # larger than the cap: held alone
        assert transport.pending() == 1 and transport.dropped == 5
        double.open()
        assert transport.drain(BOUND)
        assert [p for _, p in double.published] == [b"first", b"x" * 500]
    finally:
        double.open()
        transport.close()


class _Failing(GatedAsyncTransport):
    async def publish(self, subject: str, payload: bytes) -> None:
        raise ConnectionError("refused")


def test_send_failures_are_counted_and_logged_once_per_streak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    double = _Failing()

    async def connect() -> GatedAsyncTransport:
        return double

    transport = ThreadedTransport(connect, timeout=NEVER)
    try:
        with caplog.at_level(logging.WARNING, logger="prefixcache.transports"):
            for _ in range(3):
                transport.publish("s", b"x")
            assert transport.drain(BOUND)
        assert transport.publish_errors == 3 and transport.sent == 0
        assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1
    finally:
        transport.close()


def test_publish_after_close_raises_and_caps_are_validated() -> None:
    transport, _double = gated()
    assert (transport.max_queue, transport.max_queue_bytes) == (
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_QUEUE_BYTES,
    )
    transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        transport.publish("s", b"x")
    for bad in ({"max_queue": 0}, {"max_queue_bytes": 0}, {"max_queue": 1.5}):
        with pytest.raises(InvalidRecordError):
            gated(**bad)
    # Counterfactual: a connect that is not callable failed as a TypeError, a name that is
    # not a str was taken as the thread's.
    for kw, field in (({"connect": 5}, "connect"), ({"name": 5}, "name")):
        args = {"connect": GatedAsyncTransport, **kw}
        with pytest.raises(InvalidRecordError) as ei:
            ThreadedTransport(args.pop("connect"), **args)  # type: ignore[arg-type]
        assert ei.value.field == field


def test_the_async_broker_adapters_refuse_bad_timings_when_built() -> None:
    # Counterfactual: a zero flush or subscribe timeout, a negative reconnect wait, a NaN
    # echo window, or objects that cannot publish or subscribe were all accepted.
    for bad in (0, -1.0, float("nan"), float("inf"), None):
        with pytest.raises(InvalidRecordError) as ei:
            AsyncNatsTransport(None, flush_timeout=bad)  # type: ignore[arg-type]
        assert ei.value.field == "flush_timeout"

    class Client:
        async def publish(self, channel: str, data: bytes) -> None: ...

    class PubSub:
        async def subscribe(self, *channels: str) -> None: ...

    for args, kw, field in (
        ((None, PubSub()), {}, "publisher"),
        ((Client(), object()), {}, "pubsub"),
        ((Client(), PubSub()), {"reconnect_wait": -0.1}, "reconnect_wait"),
        ((Client(), PubSub()), {"echo_window": float("nan")}, "echo_window"),
        ((Client(), PubSub()), {"subscribe_timeout": 0}, "subscribe_timeout"),
    ):
        with pytest.raises(InvalidRecordError) as ei:
            AsyncRedisTransport(*args, **kw)
        assert ei.value.field == field
    AsyncRedisTransport(Client(), PubSub(), reconnect_wait=0, echo_window=0)  # the edges


class _HungAsyncPublisher:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent: list[bytes] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.release.wait()
        self.sent.append(payload)


@pytest.mark.filterwarnings("error")  # a dropped, never-started send is closed, not leaked
def test_an_async_publisher_that_hangs_keeps_at_most_the_cap_in_flight() -> None:
    async def main() -> None:
        pub = _HungAsyncPublisher()
        sync = Sync(Index(), pub, clock=lambda: 0.0, max_pending_publishes=3, publish_timeout=NEVER)
        for i in range(10):
            assert sync.observe("m", (i,), ReplicaKey("a"), 0.0)  # returns at once
        # Before: ten tasks, one per routing call, however long the broker hangs.
        assert len(sync._pending_order) == 3
        pub.release.set()
        await asyncio.wait_for(sync.flush(), BOUND)
        stats = sync.stats()
        assert stats.publish_dropped == 7 and stats.published == 3
        assert [ObserveEvent.decode(p).chain for p in pub.sent] == [(7,), (8,), (9,)]

    asyncio.run(main())
