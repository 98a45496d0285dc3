"""Errors keep their documented type: a None payload, a timed-out Redis publish's echo."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from prefixcache import Index, ReplicaKey, Sync
from prefixcache.transports.redis import AsyncRedisTransport


def test_a_none_payload_is_a_malformed_message_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sync = Sync(Index(), clock=lambda: 0.0)
    with caplog.at_level(logging.DEBUG, logger="prefixcache.sync"):
        for payload in (None, 5, "text"):
            sync.handle("prefixcache.observe", payload)  # type: ignore[arg-type]
    stats = sync.stats()
    # Before: len(None) raised inside handle, counted as an apply error with a traceback.
    assert stats.dropped_malformed == 3 and stats.apply_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


class _FakePubSub:
    def __init__(self) -> None:
        self.transport: AsyncRedisTransport | None = None
        self.connection = None

    async def subscribe(self, channel: str) -> None:
        transport = self.transport
        assert transport is not None
        asyncio.get_running_loop().call_soon(
            transport._dispatch, {"type": "subscribe", "channel": channel.encode()}
        )


class _HungPublisher:
    async def publish(self, channel: str, payload: bytes) -> None:
        raise TimeoutError("no reply within socket_timeout")


def test_a_timed_out_redis_publish_does_not_echo_back() -> None:
    got: list[bytes] = []

    async def main() -> None:
        pubsub = _FakePubSub()
        transport = AsyncRedisTransport(_HungPublisher(), pubsub)
        pubsub.transport = transport
        await transport.subscribe("s", lambda _s, p: got.append(p))
        with pytest.raises(TimeoutError):
            await transport.publish("s", b"mine")
        # The server did deliver it after all: the echo must be recognised and dropped.
        message: dict[str, Any] = {"type": "message", "channel": b"s", "data": b"mine"}
        transport._dispatch(message)
        transport._dispatch({"type": "message", "channel": b"s", "data": b"theirs"})
        assert transport.echoes_dropped == 1

    asyncio.run(main())
    assert got == [b"theirs"]  # before: [b"mine", b"theirs"]


def test_a_sync_of_a_long_chain_does_not_log_the_chain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefixcache.testing import RecordingPublisher

    pub = RecordingPublisher()
    pub.fail_with = ConnectionError("x" * 10_000)
    sync = Sync(Index(), pub, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="prefixcache.sync"):
        sync.observe("m", tuple(range(1, 6000)), ReplicaKey("a"), 0.0)
    assert sync.stats().publish_errors == 1
    assert caplog.records and all(len(r.getMessage()) < 400 for r in caplog.records)


def test_a_max_depth_above_the_event_limit_still_publishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefixcache import MAX_EVENT_CHAIN, Config, ObserveEvent, extract_chain
    from prefixcache.testing import RecordingPublisher

    config = Config(max_depth=MAX_EVENT_CHAIN + 500)
    chain = extract_chain("m", "x" * (config.window_bytes * config.max_depth), config)
    assert len(chain) == MAX_EVENT_CHAIN + 500
    pub = RecordingPublisher()
    sync = Sync(Index(config), pub, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="prefixcache.sync"):
        assert sync.observe("m", chain, ReplicaKey("a"), 0.0)
    # Before: every observe failed to publish and logged the whole chain (~100 KB a line).
    assert sync.stats().publish_errors == 0 and not caplog.records
    (event,) = pub.events()
    assert isinstance(event, ObserveEvent) and event.chain == tuple(chain[:MAX_EVENT_CHAIN])
