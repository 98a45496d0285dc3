"""The host-started resync loop: digest drift triggers a snapshot pull, chunked, verified,
bounded; over the in-memory hub with a manual clock (no threads, no timings)."""

from __future__ import annotations

import json

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import Candidate, Index, ReplicaKey, Sync, digests
from prefixcache._resync import (
    DIGEST_SUBJECT,
    SNAPSHOT_REQUEST_SUBJECT,
    ResyncLoop,
    reply_subject,
)
from prefixcache._signing import Signer, SigningKeys, Verifier
from prefixcache.testing import InMemoryTransport, ManualClock

KEYS = SigningKeys(keys={"k": b"k" * 32}, active="k")


def router(
    hub: InMemoryTransport, name: str, clock: ManualClock, *, signed: bool = False, **kw: object
) -> tuple[Sync, ResyncLoop]:
    trust: dict[str, object] = {}
    if signed:
        trust = {"signer": Signer(KEYS, origin=name, clock=clock), "verifier": Verifier(KEYS)}
    sync = Sync(Index(), clock=clock, **trust)  # type: ignore[arg-type]
    conn = hub.connect(name)
    sync.attach(conn)
    loop = ResyncLoop(sync, conn, origin=name, **kw)  # type: ignore[arg-type]
    loop.attach()
    return sync, loop


def fill(sync: Sync, n: int, node: str, now: float) -> None:
    # Straight into the index: what a router learned while its peer was cut off.
    index = sync.provider
    for i in range(n):
        index.observe("m", (i, i + 1, i + 2), ReplicaKey(node), now)


def test_drift_is_repaired_by_a_chunked_snapshot() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    a, loop_a = router(hub, "a", clock, chunk_bytes=1024)
    b, loop_b = router(hub, "b", clock, chunk_bytes=1024)
    fill(a, 200, "n1", clock())
    assert digests(a, now=clock()) != digests(b, now=clock())
    loop_a.tick()  # a's digests reach b, b sees drift and asks a
    sb, sa = loop_b.stats(), loop_a.stats()
    assert sb.drift_seen == 1 and sb.requests_sent == 1 and sa.requests_answered == 1
    assert sa.chunks_sent > 5 and sb.chunks_received == sa.chunks_sent  # chunked
    assert sb.snapshots_applied == 1 and sb.entries_applied > 0
    assert digests(b, now=clock()) == digests(a, now=clock())
    assert b.decide("m", (5, 6, 7), [Candidate(ReplicaKey("n1"))], clock()).hot == ReplicaKey("n1")
    loop_b.tick()  # in step now: nobody asks again
    assert loop_a.stats().drift_seen == 0


def test_merging_both_ways_converges_to_the_union() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    a, loop_a = router(hub, "a", clock)
    b, loop_b = router(hub, "b", clock)
    fill(a, 3, "n1", clock())
    b.provider.observe("m", (100, 101), ReplicaKey("n2"), clock())
    loop_a.tick()
    loop_b.tick()
    now = clock()
    assert digests(a, now=now) == digests(b, now=now)
    assert loop_a.stats().snapshots_applied == loop_b.stats().snapshots_applied == 1


def test_requests_are_rate_limited_and_abandoned_after_the_timeout() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport(auto_deliver=False)
    a, loop_a = router(hub, "a", clock, min_request_interval=60.0, request_timeout=5.0)
    _b, loop_b = router(hub, "b", clock, min_request_interval=60.0, request_timeout=5.0)
    fill(a, 3, "n1", clock())
    loop_a.tick()
    # Deliver a's digests to b only (its request will get no answer: dropped below).
    hub.deliver_one()
    assert loop_b.stats().requests_sent == 1
    hub.drop_one()  # the request is lost
    loop_a.tick()
    hub.deliver_one()
    assert loop_b.stats().requests_sent == 1  # one outstanding: no second request
    clock.advance(6.0)
    loop_b.tick()  # abandoned
    while hub.pending():
        hub.drop_one()
    assert loop_b.stats().timeouts == 1
    loop_a.tick()
    hub.deliver_one()
    assert loop_b.stats().requests_sent == 1  # within min_request_interval of the last
    clock.advance(60.0)
    loop_a.tick()
    hub.deliver()
    assert loop_b.stats().requests_sent == 2 and loop_b.stats().snapshots_applied == 1


def test_with_signatures_a_stranger_cannot_feed_a_snapshot() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    a, loop_a = router(hub, "a", clock, signed=True)
    b, loop_b = router(hub, "b", clock, signed=True)
    stranger = hub.connect("x")
    fake = {"origin": "a", "digests": {"m": "1"}}
    stranger.publish(DIGEST_SUBJECT, json.dumps(fake).encode())
    stranger.publish(SNAPSHOT_REQUEST_SUBJECT, b'{"origin":"x","to":"a","id":"1"}')
    assert loop_b.stats().requests_sent == 0 and loop_a.stats().requests_answered == 0
    assert b.stats().dropped_unsigned == 2 and a.stats().dropped_unsigned == 2  # both subjects
    fill(a, 3, "n1", clock())
    loop_a.tick()  # signed digests, request and chunks all verify
    assert loop_b.stats().snapshots_applied == 1
    assert digests(a, now=clock()) == digests(b, now=clock())


def test_unexpected_and_malformed_chunks_are_dropped() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    _b, loop_b = router(hub, "b", clock)
    x = hub.connect("x")
    subject = reply_subject("b")
    for payload in (
        b"junk",
        b'{"origin":"a","id":"zz","seq":0,"total":1,"data":"e30="}',  # nothing was asked
        b'{"origin":"a","id":"zz","seq":5,"total":1,"data":"e30="}',
        b'{"origin":"a","id":"zz","seq":0,"total":1,"data":"%%%"}',
    ):
        x.publish(subject, payload)
    loop_b._on_chunk(subject, None)  # type: ignore[arg-type]
    assert loop_b.stats().dropped == 5 and loop_b.stats().snapshots_applied == 0


def test_arguments_are_validated() -> None:
    sync = Sync(Index())
    hub = InMemoryTransport()
    for bad in ({"origin": ""}, {"interval": 0.0}, {"chunk_bytes": 10}, {"request_timeout": 0}):
        kw: dict[str, object] = {"origin": "r", **bad}
        with pytest.raises(InvalidRecordError):
            ResyncLoop(sync, hub.connect(), **kw)  # type: ignore[arg-type]
    # Counterfactual: these were taken, and failed at the first tick or message.
    for args, kw, field in (
        ((None, hub.connect()), {}, "sync"),
        ((Index(), hub.connect()), {}, "sync"),
        ((sync, None), {}, "transport"),
        ((sync, hub.connect()), {"replace": 1}, "replace"),
    ):
        with pytest.raises(InvalidRecordError) as ei:
            ResyncLoop(*args, origin="r", **kw)  # type: ignore[arg-type]
        assert ei.value.field == field


def test_the_asyncio_runner_ticks_until_cancelled() -> None:
    import asyncio

    async def main() -> None:
        clock = ManualClock(1000.0)
        hub = InMemoryTransport()
        a, loop_a = router(hub, "a", clock, interval=0.01)
        _b, loop_b = router(hub, "b", clock)
        fill(a, 3, "n1", clock())
        task = asyncio.get_running_loop().create_task(loop_a.run())
        for _ in range(2000):  # bounded poll
            if loop_b.stats().snapshots_applied:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop_a.stats().digests_sent >= 1 and loop_b.stats().snapshots_applied == 1

    asyncio.run(main())


def test_a_flood_of_requests_gets_one_snapshot_per_answer_interval() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    a, loop_a = router(hub, "a", clock, min_answer_interval=5.0)
    fill(a, 50, "n1", clock())
    x = hub.connect("x")
    for i in range(100):
        x.publish(SNAPSHOT_REQUEST_SUBJECT, f'{{"origin":"x","to":"a","id":"{i}"}}'.encode())
    # Before: every request made the router export and send its whole index.
    assert loop_a.stats().requests_answered == 1 and loop_a.stats().requests_refused == 99
    clock.advance(5.0)
    x.publish(SNAPSHOT_REQUEST_SUBJECT, b'{"origin":"x","to":"a","id":"again"}')
    assert loop_a.stats().requests_answered == 2


def test_a_flood_of_digests_computes_own_digests_at_most_once_a_second() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    a, loop_a = router(hub, "a", clock)
    calls = []
    real = a.digests

    def counting(now: float | None = None) -> dict[str, int]:
        calls.append(now)
        return real(now)

    a.digests = counting  # type: ignore[method-assign]
    x = hub.connect("x")
    for _ in range(100):
        x.publish(DIGEST_SUBJECT, b'{"origin":"x","digests":{}}')
    assert loop_a.stats().digests_received == 100 and len(calls) == 1
    clock.advance(1.0)
    x.publish(DIGEST_SUBJECT, b'{"origin":"x","digests":{}}')
    assert len(calls) == 2
