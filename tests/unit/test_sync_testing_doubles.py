"""prefixcache.testing: the in-memory hub's delivery order and faults, and the small doubles."""

from __future__ import annotations

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import Clock, Publisher, Transport
from prefixcache.testing import (
    InMemoryTransport,
    ManualClock,
    RecordingPublisher,
    TransportConformanceError,
    check_transport,
)


def collect(hub: InMemoryTransport, name: str, subject: str = "s") -> list[bytes]:
    got: list[bytes] = []
    hub.connect(name).subscribe(subject, lambda _s, p: got.append(p))
    return got


def test_doubles_satisfy_the_protocols() -> None:
    hub = InMemoryTransport()
    assert isinstance(hub, Transport) and isinstance(hub.connect(), Transport)
    assert isinstance(RecordingPublisher(), Publisher)
    assert isinstance(ManualClock(), Clock)


def test_fifo_delivery_and_no_echo() -> None:
    hub = InMemoryTransport(auto_deliver=False)
    a = hub.connect("a")
    mine: list[bytes] = []
    a.subscribe("s", lambda _s, p: mine.append(p))
    got = collect(hub, "b")
    for i in range(5):
        a.publish("s", b"%d" % i)
    assert [d.payload for d in hub.pending()] == [b"0", b"1", b"2", b"3", b"4"]
    assert hub.deliver() == 5
    assert got == [b"0", b"1", b"2", b"3", b"4"] and mine == []


def test_handlers_publishing_are_not_reentrant() -> None:
    hub = InMemoryTransport()
    a, b = hub.connect("a"), hub.connect("b")
    order: list[str] = []

    def on_b(_s: str, p: bytes) -> None:
        order.append(f"b got {p.decode()}")
        if p == b"1":
            b.publish("s", b"reply")

    b.subscribe("s", on_b)
    a.subscribe("s", lambda _s, p: order.append(f"a got {p.decode()}"))
    hub.connect("c").publish("s", b"1")
    # Counterfactual: re-entrant delivery would deliver "reply" to a before b finished.
    assert order == ["b got 1", "a got 1", "a got reply"]


def test_explicit_fault_controls() -> None:
    hub = InMemoryTransport(auto_deliver=False)
    a = hub.connect("a")
    got = collect(hub, "b")
    a.publish("s", b"x")
    a.publish("s", b"y")
    hub.duplicate_one(0)
    hub.drop_one(1)  # drops y
    assert [d.payload for d in hub.pending()] == [b"x", b"x"]
    hub.deliver_one(1)
    hub.deliver()
    assert got == [b"x", b"x"]
    assert (hub.dropped, hub.duplicated, hub.delivered) == (1, 1, 2)
    with pytest.raises(IndexError):
        hub.deliver_one(0)


def test_seeded_faults_are_deterministic() -> None:
    def run(seed: int) -> list[bytes]:
        hub = InMemoryTransport(
            auto_deliver=False, drop=0.2, duplicate=0.3, reorder=True, seed=seed
        )
        a = hub.connect("a")
        got = collect(hub, "b")
        for i in range(50):
            a.publish("s", b"%d" % i)
        hub.deliver()
        return got

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert sorted(set(run(1))) != sorted(b"%d" % i for i in range(50))  # something dropped
    assert len(run(3)) != len(set(run(3)))  # something duplicated


def test_raising_handler_is_recorded_and_delivery_goes_on() -> None:
    hub = InMemoryTransport()

    def bad(_s: str, _p: bytes) -> None:
        raise RuntimeError("handler bug")

    hub.connect("b").subscribe("s", bad)
    got = collect(hub, "c")
    hub.publish("s", b"1")
    assert got == [b"1"] and len(hub.handler_errors) == 1


def test_unsubscribe_and_close() -> None:
    hub = InMemoryTransport(auto_deliver=False)
    b = hub.connect("b")
    got: list[bytes] = []
    unsub = b.subscribe("s", lambda _s, p: got.append(p))
    hub.publish("s", b"queued before unsubscribe")
    unsub()
    unsub()
    hub.deliver()
    assert got == []  # pending deliveries to a cancelled subscription are discarded
    b.subscribe("s", lambda _s, p: got.append(p))
    b.close()
    hub.publish("s", b"x")
    hub.deliver()
    assert got == []


def test_connection_names_are_unique() -> None:
    hub = InMemoryTransport()
    hub.connect("a")
    with pytest.raises(ValueError, match="name"):
        hub.connect("a")
    with pytest.raises(ValueError, match="drop"):
        InMemoryTransport(drop=1.5)


def test_manual_clock() -> None:
    c = ManualClock(5.0)
    assert c() == 5.0 == c.now
    assert c.advance(1.5) == 6.5
    c.set(1.0)
    assert c() == 1.0
    with pytest.raises(ValueError, match="dt"):
        c.advance(-1.0)
    # Counterfactual: a NaN start or jump was taken, and every later reading was NaN.
    for bad in (float("nan"), "1.0", True, None):
        with pytest.raises(InvalidRecordError, match="start"):
            ManualClock(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError, match="t="):
            c.set(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError, match="dt"):
            c.advance(bad)  # type: ignore[arg-type]
    assert c() == 1.0


def test_recording_publisher_fail_switch() -> None:
    p = RecordingPublisher()
    p.fail_with = ConnectionError("x")
    with pytest.raises(ConnectionError):
        p.publish("s", b"1")
    p.fail_with = None
    p.publish("s", b"2")
    assert p.published == [("s", b"2")]


def test_check_transport_catches_a_broken_transport() -> None:
    class Echoing:
        """Delivers a publisher's messages to itself: breaks the no-echo rule."""

        def __init__(self, hub: InMemoryTransport) -> None:
            self.hub = hub

        def publish(self, subject: str, payload: bytes) -> None:
            self.hub.publish(subject, payload)

        def subscribe(self, subject: str, handler: object) -> object:
            return self.hub.connect().subscribe(subject, handler)  # type: ignore[arg-type]

    hub = InMemoryTransport()
    with pytest.raises(TransportConformanceError, match="echo"):
        check_transport(lambda: Echoing(hub), timeout=0.5)  # type: ignore[arg-type,return-value]

    class Lossy:
        def __init__(self, conn: Transport) -> None:
            self.conn = conn
            self.n = 0

        def publish(self, subject: str, payload: bytes) -> None:
            self.n += 1
            if self.n % 7:
                self.conn.publish(subject, payload)

        def subscribe(self, subject: str, handler: object) -> object:
            return self.conn.subscribe(subject, handler)  # type: ignore[arg-type]

    hub2 = InMemoryTransport()
    with pytest.raises(TransportConformanceError, match="not delivered") as exc:
        check_transport(lambda: Lossy(hub2.connect()), timeout=0.2)  # type: ignore[arg-type,return-value]
    assert "counters" not in str(exc.value)  # it keeps none

    class Counting(Lossy):
        """Keeps a transport's counters, one of them on the transport it wraps."""

        def __init__(self, conn: Transport) -> None:
            super().__init__(conn)
            self.publish_errors = 0
            self.transport = type("Inner", (), {"disconnects": 1, "reconnects": 1})()

    hub3 = InMemoryTransport()
    with pytest.raises(TransportConformanceError) as exc:
        check_transport(lambda: Counting(hub3.connect()), timeout=0.2)  # type: ignore[arg-type,return-value]
    assert "transport counters A: publish_errors=0 disconnects=1 reconnects=1; B:" in str(exc.value)
    # Counterfactual: a factory that returns no transport failed with an AttributeError.
    for made in (None, object(), RecordingPublisher()):
        with pytest.raises(TransportConformanceError, match="publish and subscribe"):
            check_transport(lambda made=made: made, timeout=0.2)  # type: ignore[misc]
