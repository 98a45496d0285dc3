"""The Sync decorator: publish rules, applying peer events, failure isolation."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import InvalidRecordError
from prefixcache import (
    INVALIDATE_SUBJECT,
    OBSERVE_SUBJECT,
    Candidate,
    Config,
    EvictionTicker,
    Index,
    InvalidateEvent,
    ObserveEvent,
    ReplicaKey,
    Sync,
    SyncStats,
    eviction_interval,
)
from prefixcache.testing import InMemoryTransport, ManualClock, RecordingPublisher

A0, A1, B0 = ReplicaKey("a"), ReplicaKey("a", 1), ReplicaKey("b")
CANDS = [Candidate(A0), Candidate(A1), Candidate(B0)]


def make(clock: ManualClock | None = None) -> tuple[Sync, RecordingPublisher, Index]:
    index = Index()
    pub = RecordingPublisher()
    return Sync(index, pub, clock=clock or ManualClock(0.0)), pub, index


def test_observe_publishes_only_when_new_or_extended() -> None:
    sync, pub, _ = make()
    assert sync.observe("m", (1, 2), A0, 0.0) is True
    assert sync.observe("m", (1, 2), A0, 1.0) is False  # same owner, whole chain: silent
    assert sync.observe("m", (1,), A0, 2.0) is False  # a prefix of what it owns: silent
    assert sync.observe("m", (1, 2, 3), A0, 3.0) is True  # extended
    assert sync.observe("m", (1, 2, 3), B0, 4.0) is True  # taken over
    assert sync.observe("m", (), A0, 5.0) is False  # empty chain: ignored, silent
    assert pub.events() == [
        ObserveEvent(model="m", chain=(1, 2), node_id="a"),
        ObserveEvent(model="m", chain=(1, 2, 3), node_id="a"),
        ObserveEvent(model="m", chain=(1, 2, 3), node_id="b"),
    ]
    assert sync.stats().published == 3


def test_invalidations_always_publish_and_never_create_a_tree() -> None:
    sync, pub, index = make()
    sync.invalidate("unknown", A1)
    sync.invalidate_node("unknown", "a")
    # Counterfactual: publishing only when something was removed would leave a peer that
    # holds an entry this router never had with a stale owner.
    assert pub.events() == [
        InvalidateEvent(model="unknown", node_id="a", replica=1),
        InvalidateEvent(model="unknown", node_id="a", replica=-1),
    ]
    assert index.models() == frozenset()
    assert [json.loads(p)["replica"] for _, p in pub.published] == [1, -1]


def test_evict_and_decide_are_local() -> None:
    sync, pub, _ = make()
    sync.observe("m", (1,), A0, 0.0)
    pub.clear()
    sync.evict(10_000.0)
    sync.decide("m", (1,), CANDS, 0.0)
    assert pub.published == []


def test_decide_passes_through() -> None:
    sync, _, index = make()
    sync.observe("m", (1, 2), B0, 0.0)
    assert sync.decide("m", (1, 2, 3), CANDS, 1.0) == index.decide("m", (1, 2, 3), CANDS, 1.0)
    assert sync.decide("m", (1, 2, 3), CANDS, 1.0).hot == B0


def test_apply_never_republishes_and_uses_the_receivers_clock() -> None:
    clock = ManualClock(500.0)
    sync, pub, index = make(clock)
    sync.apply_observe(ObserveEvent(model="m", chain=(7, 8), node_id="b"))
    sync.apply_invalidate(InvalidateEvent.for_key("m", A0))
    assert pub.published == []
    tree = index.tree("m")
    assert tree is not None
    # Stamped with the receiver's clock (500), not a sender time (the wire has none).
    assert {t for _, _, t in tree.items()} == {500.0}
    assert sync.apply_observe(ObserveEvent(model="m", chain=(9,), node_id="b"), now=3.0)


def test_apply_invalidate_whole_node_and_single_replica() -> None:
    sync, _, index = make()
    for k, chain in ((A0, (1,)), (A1, (2,)), (B0, (3,))):
        sync.apply_observe(ObserveEvent.from_key("m", chain, k), now=0.0)
    sync.apply_invalidate(InvalidateEvent.for_key("m", A1))
    assert index.decide("m", (2,), CANDS, 0.0).hot is None
    assert index.decide("m", (1,), CANDS, 0.0).hot == A0
    sync.apply_invalidate(InvalidateEvent.for_node("m", "a"))
    assert index.decide("m", (1,), CANDS, 0.0).hot is None
    assert index.decide("m", (3,), CANDS, 0.0).hot == B0


def test_a_raising_publisher_never_breaks_routing() -> None:
    seen: list[tuple[str, BaseException]] = []
    index = Index()
    pub = RecordingPublisher()
    pub.fail_with = ConnectionError("broker down")
    sync = Sync(index, pub, on_publish_error=lambda s, e: seen.append((s, e)))
    assert sync.observe("m", (1,), A0, 0.0) is True
    sync.invalidate("m", A0)
    sync.invalidate_node("m", "a")
    assert sync.stats().publish_errors == 3 and sync.stats().published == 0
    assert [s for s, _ in seen] == [OBSERVE_SUBJECT, INVALIDATE_SUBJECT, INVALIDATE_SUBJECT]
    assert all(isinstance(e, ConnectionError) for _, e in seen)
    # The local state changed regardless.
    assert index.decide("m", (1,), CANDS, 0.0).hot is None


def test_the_default_hook_logs(caplog: pytest.LogCaptureFixture) -> None:
    pub = RecordingPublisher()
    pub.fail_with = TimeoutError("slow")
    sync = Sync(Index(), pub)
    with caplog.at_level("WARNING", logger="prefixcache.sync"):
        sync.invalidate("m", A0)
    assert "prefixcache.invalidate" in caplog.text and "slow" in caplog.text


def test_a_raising_hook_is_contained() -> None:
    def bad_hook(subject: str, error: BaseException) -> None:
        raise RuntimeError("hook bug")

    pub = RecordingPublisher()
    pub.fail_with = OSError("x")
    sync = Sync(Index(), pub, on_publish_error=bad_hook)
    sync.invalidate("m", A0)  # must not raise
    assert sync.stats().publish_errors == 1


@pytest.mark.parametrize(
    ("subject", "payload", "counter"),
    [
        (OBSERVE_SUBJECT, b"not json", "dropped_malformed"),
        (OBSERVE_SUBJECT, b'{"model":"m","chain":[-5],"node_id":"n"}', "dropped_malformed"),
        (OBSERVE_SUBJECT, b'{"model":"m","chain":[1],"node_id":""}', "dropped_malformed"),
        (INVALIDATE_SUBJECT, b'{"model":"m","node_id":"n","replica":"all"}', "dropped_malformed"),
        (
            "prefixcache.other",
            b'{"model":"m","chain":[1],"node_id":"n"}',
            "dropped_unknown_subject",
        ),
        (OBSERVE_SUBJECT, b" " * 200_000, "dropped_oversized"),
    ],
)
def test_bad_messages_are_dropped_and_counted(subject: str, payload: bytes, counter: str) -> None:
    sync, pub, index = make()
    sync.handle(subject, payload)  # never raises
    stats = sync.stats()
    assert getattr(stats, counter) == 1 and stats.dropped == 1 and stats.received == 1
    assert index.models() == frozenset() and pub.published == []


def test_max_payload_bytes_is_configurable() -> None:
    sync = Sync(Index(), max_payload_bytes=10)
    sync.handle(OBSERVE_SUBJECT, ObserveEvent(model="m", chain=(1,), node_id="n").encode())
    assert sync.stats().dropped_oversized == 1


def test_a_provider_error_while_applying_is_contained() -> None:
    class Broken(Index):
        def observe(self, model: str, chain: object, key: ReplicaKey, now: float) -> bool:  # type: ignore[override]
            raise RuntimeError("bug")

    sync = Sync(Broken())
    sync.handle(OBSERVE_SUBJECT, ObserveEvent(model="m", chain=(1,), node_id="n").encode())
    assert sync.stats().apply_errors == 1


def test_attach_over_in_memory_hub_shares_affinity_and_detaches() -> None:
    hub = InMemoryTransport()
    clock = ManualClock(0.0)
    a = Sync(Index(), clock=clock)
    b = Sync(Index(), clock=clock)
    ca, cb = hub.connect("a"), hub.connect("b")
    detach_a = a.attach(ca)
    detach_b = b.attach(cb)
    assert a.publisher is ca  # adopted: no publisher was given
    a.observe("m", (1, 2, 3), B0, 0.0)
    assert b.decide("m", (1, 2, 3, 4), CANDS, 0.0).hot == B0
    assert b.stats().applied_observe == 1 and a.stats().received == 0  # no echo
    b.invalidate_node("m", "b")
    assert a.decide("m", (1, 2, 3), CANDS, 0.0).hot is None
    detach_b()
    detach_b()  # idempotent
    a.observe("m", (5,), A0, 0.0)
    assert b.decide("m", (5,), CANDS, 0.0).hot is None
    assert b.publisher is None
    detach_a()


def test_attach_keeps_an_explicit_publisher() -> None:
    hub = InMemoryTransport()
    pub = RecordingPublisher()
    sync = Sync(Index(), pub)
    detach = sync.attach(hub.connect())
    assert sync.publisher is pub
    detach()
    assert sync.publisher is pub


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="publish_timeout"):
        Sync(Index(), publish_timeout=0)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        Sync(Index(), max_payload_bytes=0)
    # Counterfactual: these were accepted and failed at the first call or event.
    for args, kw, field in (
        ((None,), {}, "provider"),
        (({},), {}, "provider"),
        ((Index(), object()), {}, "publisher"),
        ((Index(),), {"clock": 0.0}, "clock"),
        ((Index(),), {"clock": None}, "clock"),
        ((Index(),), {"on_publish_error": "log"}, "on_publish_error"),
    ):
        with pytest.raises(InvalidRecordError) as ei:
            Sync(*args, **kw)
        assert ei.value.field == field
    Sync(Sync(Index()))  # a Sync is a provider too


def test_stats_is_a_frozen_record() -> None:
    stats = Sync(Index()).stats()
    assert stats == SyncStats()
    with pytest.raises(AttributeError):
        stats.published = 3  # type: ignore[misc]


# -- asynchronous publishers -------------------------------------------------------------


class AsyncRecorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: BaseException | None = None

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append((subject, payload))


def test_async_publisher_sends_in_call_order() -> None:
    async def main() -> None:
        pub = AsyncRecorder()
        pub.gate.clear()
        sync = Sync(Index(), pub)
        sync.observe("m", (1,), A0, 0.0)
        sync.invalidate("m", A0)
        sync.observe("m", (2,), B0, 0.0)
        pub.gate.set()
        await sync.flush()
        assert [s for s, _ in pub.sent] == [OBSERVE_SUBJECT, INVALIDATE_SUBJECT, OBSERVE_SUBJECT]
        assert sync.stats().published == 3

    asyncio.run(main())


def test_async_publisher_failure_and_timeout_are_counted() -> None:
    async def main() -> None:
        pub = AsyncRecorder()
        errors: list[BaseException] = []
        sync = Sync(
            Index(), pub, publish_timeout=0.05, on_publish_error=lambda s, e: errors.append(e)
        )
        pub.fail = ConnectionError("down")
        sync.invalidate("m", A0)
        await sync.flush()
        pub.fail = None
        pub.gate.clear()  # never completes: times out
        sync.invalidate("m", A0)
        await sync.flush()
        assert sync.stats().publish_errors == 2
        assert isinstance(errors[0], ConnectionError) and isinstance(errors[1], TimeoutError)

    asyncio.run(main())


def test_async_publisher_outside_a_loop_is_reported_not_raised() -> None:
    pub = AsyncRecorder()
    sync = Sync(Index(), pub)
    sync.invalidate("m", A0)
    assert sync.stats().publish_errors == 1


def test_attach_async() -> None:
    class AsyncHub:
        def __init__(self) -> None:
            self.hub = InMemoryTransport()

        def connect(self) -> AsyncConn:
            return AsyncConn(self.hub.connect())

    class AsyncConn:
        def __init__(self, conn: object) -> None:
            self.conn = conn

        async def publish(self, subject: str, payload: bytes) -> None:
            self.conn.publish(subject, payload)  # type: ignore[attr-defined]

        async def subscribe(self, subject: str, handler: object) -> object:
            unsub = self.conn.subscribe(subject, handler)  # type: ignore[attr-defined]

            async def cancel() -> None:
                unsub()

            return cancel

    async def main() -> None:
        hub = AsyncHub()
        clock = ManualClock(0.0)
        a, b = Sync(Index(), clock=clock), Sync(Index(), clock=clock)
        detach_a = await a.attach_async(hub.connect())  # type: ignore[arg-type]
        await b.attach_async(hub.connect())  # type: ignore[arg-type]
        a.observe("m", (4, 5), A1, 0.0)
        await a.flush()
        assert b.decide("m", (4, 5), CANDS, 0.0).hot == A1
        await detach_a()
        await detach_a()
        b.observe("m", (6,), B0, 0.0)
        await b.flush()
        assert a.decide("m", (6,), CANDS, 0.0).hot is None

    asyncio.run(main())


# -- eviction ticker ------------------------------------------------------------------------


def test_eviction_interval() -> None:
    assert eviction_interval(300.0) == 150.0
    assert eviction_interval(0.0) == 60.0
    assert eviction_interval(-1.0) == 60.0


class CountingEvict:
    def __init__(self, want: int) -> None:
        self.calls: list[float] = []
        self.want = want
        self.enough = threading.Event()

    def evict(self, now: float) -> int:
        self.calls.append(now)
        if len(self.calls) >= self.want:
            self.enough.set()
        return 0


def test_ticker_does_nothing_until_started_and_tick_uses_the_clock() -> None:
    target = CountingEvict(1)
    clock = ManualClock(42.0)
    ticker = EvictionTicker(target, ttl=Config().ttl, clock=clock)
    assert ticker.interval == 150.0 and not ticker.running
    assert target.calls == []
    ticker.tick()
    ticker.tick(now=50.0)
    assert target.calls == [42.0, 50.0] and ticker.ticks == 2


def test_ticker_thread_start_stop() -> None:
    target = CountingEvict(3)
    ticker = EvictionTicker(target, interval=0.001, clock=ManualClock(1.0))
    with ticker:
        assert ticker.running
        with pytest.raises(RuntimeError):
            ticker.start()
        assert target.enough.wait(10.0)
    assert not ticker.running
    ticker.stop()  # idempotent
    assert set(target.calls) == {1.0}


def test_ticker_survives_a_failing_evict() -> None:
    class Failing:
        def evict(self, now: float) -> int:
            raise RuntimeError("boom")

    ticker = EvictionTicker(Failing(), interval=1.0)
    assert ticker.tick() is None and ticker.errors == 1


def test_ticker_refuses_what_it_could_never_tick() -> None:
    # Counterfactual: a target without evict, or a clock that is not callable, was taken
    # and then failed (and was counted) on every tick.
    for args, kw, field in (
        ((None,), {}, "target"),
        ((object(),), {}, "target"),
        ((CountingEvict(1),), {"clock": 1.0}, "clock"),
    ):
        with pytest.raises(InvalidRecordError) as ei:
            EvictionTicker(*args, interval=1.0, **kw)  # type: ignore[arg-type]
        assert ei.value.field == field


def test_ticker_asyncio_form() -> None:
    async def main() -> None:
        target = CountingEvict(2)
        ticker = EvictionTicker(target, interval=0.001)
        task = ticker.start_async()
        assert ticker.running
        while len(target.calls) < 2:
            await asyncio.sleep(0.001)
        await ticker.stop_async()
        assert task.cancelled() and not ticker.running

    asyncio.run(main())
    with pytest.raises(RuntimeError):
        EvictionTicker(CountingEvict(1), interval=1.0).start_async()
    with pytest.raises(ValueError, match="interval"):
        EvictionTicker(CountingEvict(1), interval=0.0)


# -- fuzzing the transport-facing handler ------------------------------------------------


_json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=4)
_docs = st.fixed_dictionaries(
    {},
    optional={
        "model": _json_scalars,
        "chain": st.lists(_json_scalars | st.integers(-5, 2**64 + 5), max_size=4) | _json_scalars,
        "node_id": _json_scalars,
        "replica": _json_scalars,
    },
)


@given(
    subject=st.sampled_from([OBSERVE_SUBJECT, INVALIDATE_SUBJECT, "prefixcache.x", ""]),
    payload=st.binary(max_size=200) | _docs.map(lambda d: json.dumps(d).encode()),
)
def test_fuzzed_messages_never_raise_and_only_valid_events_change_state(
    subject: str, payload: bytes
) -> None:
    sync, pub, index = make()
    sync.observe("m", (1, 2), A0, 0.0)
    pub.clear()
    before = index.tree("m").items()  # type: ignore[union-attr]
    sync.handle(subject, payload)  # must not raise
    stats = sync.stats()
    assert stats.received == 1 and stats.apply_errors == 0 and pub.published == []
    applied = stats.applied_observe + stats.applied_invalidate
    assert applied + stats.dropped == 1
    if applied == 0:
        # Counterfactual: a partially parsed message must not leave anything behind.
        assert index.tree("m").items() == before  # type: ignore[union-attr]
        assert index.models() == frozenset({"m"})


def test_a_chain_longer_than_an_event_allows_is_published_truncated() -> None:
    import numpy as np

    from prefixcache import MAX_EVENT_CHAIN

    sync, pub, _ = make()
    long_chain = tuple(range(1, MAX_EVENT_CHAIN + 2))
    assert sync.observe("m", long_chain, A0, 0.0) is True  # routing state still updated
    # The first MAX_EVENT_CHAIN hashes are a true claim (a prefix of what A0 holds); before,
    # the event failed to build and every such observe was a publish error.
    assert sync.stats().publish_errors == 0
    assert pub.events() == [
        ObserveEvent(model="m", chain=long_chain[:MAX_EVENT_CHAIN], node_id="a")
    ]
    pub.clear()
    # numpy hashes (a tokenizing host) are published as plain JSON integers.
    assert sync.observe("m", np.array([2**64 - 1, 5], dtype=np.uint64), B0, 0.0)
    assert pub.events() == [ObserveEvent(model="m", chain=(2**64 - 1, 5), node_id="b")]


def test_the_default_hook_does_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    pub = RecordingPublisher()
    pub.fail_with = ConnectionError("down")
    sync = Sync(Index(), pub)
    with caplog.at_level("WARNING", logger="prefixcache.sync"):
        for _ in range(250):
            sync.invalidate("m", A0)
        pub.fail_with = None
        sync.invalidate("m", A0)  # a success ends the streak
        pub.fail_with = ConnectionError("down again")
        sync.invalidate("m", A0)
    # Failures 1, 100 and 200 of the first streak, then the first of the next one.
    assert len(caplog.records) == 4
    assert sync.stats().publish_errors == 251


def test_apply_takes_wire_payloads_and_json_objects_too() -> None:
    sync, pub, index = make(ManualClock(10.0))
    sync.apply_observe({"model": "m", "chain": [1, 2], "node_id": "a", "replica": 1})
    sync.apply_observe(b'{"model":"m","chain":[5],"node_id":"b","replica":0}')
    sync.apply_observe('{"model":"m","chain":[6],"node_id":"b","replica":0}')
    assert index.decide("m", (1, 2), CANDS, 10.0).hot == A1
    assert index.decide("m", (5,), CANDS, 10.0).hot == B0
    sync.apply_invalidate({"model": "m", "node_id": "a", "replica": -1})
    sync.apply_invalidate(b'{"model":"m","node_id":"b","replica":0}')
    assert index.decide("m", (1, 2), CANDS, 10.0).hot is None
    assert index.decide("m", (6,), CANDS, 10.0).hot is None
    assert pub.published == []


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "m", "chain": [2**64], "node_id": "a", "replica": 0},
        {"model": "m", "chain": [1], "node_id": "", "replica": 0},
        {"model": "m", "chain": [1], "node_id": "a", "replica": 0, "x": float("nan")},
        b"not json",
        42,
    ],
)
def test_apply_rejects_bad_events_with_a_typed_error(bad: object) -> None:
    from prefixcache import EventDecodeError

    sync, _, index = make()
    with pytest.raises(EventDecodeError):
        sync.apply_observe(bad)  # type: ignore[arg-type]
    assert index.models() == frozenset()


def test_retaking_a_prefix_another_key_took_is_broadcast() -> None:
    # Found by the commuting-histories property: A owns (1, 2); B takes the prefix (1,);
    # A re-observes (1, 2). A did not own the whole chain any more, so the observe is news:
    # if it were not broadcast, b would keep B on (1,) while a holds A.
    hub = InMemoryTransport()
    clock = ManualClock(100.0)
    a = Sync(Index(), clock=clock)
    b = Sync(Index(), clock=clock)
    a.attach(hub.connect("a"))
    b.attach(hub.connect("b"))
    assert a.observe("m", (1, 2), A0, 100.0) is True
    assert a.observe("m", (1,), B0, 100.0) is True
    assert a.observe("m", (1,), B0, 100.0) is False  # owned whole: no message
    assert a.observe("m", (1, 2), A0, 100.0) is True
    for s in (a, b):
        assert s.decide("m", (1,), CANDS, 100.0).hot == A0
    assert a.stats().published == 3 and b.stats().applied_observe == 3
