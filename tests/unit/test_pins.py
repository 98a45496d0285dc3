"""SessionPins: reads, ttl boundaries, refresh, tombstones, last-writer-wins, bounded memory,
network input that is dropped and counted, and two routers converging through a transport."""

from __future__ import annotations

import json

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import PIN_SUBJECT, Pin, PinDecodeError, SessionPins
from prefixcache.testing import InMemoryTransport, ManualClock, RecordingPublisher


def make(**kw: object) -> SessionPins:
    args: dict[str, object] = {"ttl": 60.0, "max_entries": 100, "clock": ManualClock(0.0)}
    args.update(kw)
    return SessionPins(**args)  # type: ignore[arg-type]


def test_get_is_live_until_exactly_ttl() -> None:
    pins = make()
    assert pins.pin("m", "s", "d1", now=10.0)
    assert pins.get("m", "s", now=70.0) == "d1"  # age == ttl: still live
    # Counterfactual: one tick later it is gone (expired, not cleared).
    assert pins.get("m", "s", now=70.001) is None
    assert pins.get("m", "other", now=10.0) is None
    assert pins.get("other-namespace", "s", now=10.0) is None


def test_refresh_publishes_only_after_half_the_ttl() -> None:
    pub = RecordingPublisher()
    pins = make(publisher=pub, origin="r1")
    assert pins.pin("m", "s", "d1", now=0.0)
    assert not pins.pin("m", "s", "d1", now=30.0)  # age == ttl/2: no write, no message
    assert pins.pin("m", "s", "d1", now=30.5)  # older: refreshed for the peers
    assert pins.pin("m", "s", "d2", now=31.0)  # another deployment: always written
    assert [s for s, _ in pub.published] == [PIN_SUBJECT] * 3
    last = Pin.decode(pub.published[-1][1])
    assert (last.deployment, last.stamp, last.origin) == ("d2", 31.0, "r1")


def test_unpin_writes_a_tombstone_that_a_late_older_pin_cannot_undo() -> None:
    pins = make(origin="r1")
    pins.pin("m", "s", "d1", now=1.0)
    assert not pins.unpin("m", "s", deployment="d2", now=2.0)  # names another deployment
    assert pins.get("m", "s", now=2.0) == "d1"
    assert pins.unpin("m", "s", deployment="d1", now=3.0)
    assert pins.get("m", "s", now=3.0) is None
    late = Pin(namespace="m", session="s", deployment="d9", stamp=2.5, origin="r2")
    assert not pins.apply(late)  # older than the clear
    assert pins.get("m", "s", now=4.0) is None
    entry = pins.entry("m", "s")
    assert entry is not None and entry.cleared
    assert not pins.unpin("m", "s", now=5.0)  # nothing live to clear


def test_last_writer_wins_by_stamp_then_origin() -> None:
    pins = make()
    a = Pin(namespace="m", session="s", deployment="da", stamp=5.0, origin="a")
    b = Pin(namespace="m", session="s", deployment="db", stamp=5.0, origin="b")
    older = Pin(namespace="m", session="s", deployment="dz", stamp=4.0, origin="z")
    assert pins.apply(b)
    assert not pins.apply(a)  # equal time, smaller origin: loses
    assert not pins.apply(older)
    assert not pins.apply(b)  # a duplicate changes nothing
    assert pins.get("m", "s", now=5.0) == "db"
    st = pins.stats()
    assert (st.applied, st.stale) == (1, 3)


def test_local_write_loses_to_a_peer_write_stamped_later() -> None:
    pins = make(origin="a")
    pins.apply(Pin(namespace="m", session="s", deployment="dp", stamp=100.0, origin="b"))
    # Our clock is behind the peer's: writing at 50 would go back in time.
    assert not pins.pin("m", "s", "dmine", now=50.0)
    assert pins.get("m", "s", now=100.0) == "dp"


def test_memory_is_bounded_by_max_entries_dropping_the_least_recently_written() -> None:
    pins = make(max_entries=3)
    for i in range(5):
        pins.pin("m", f"s{i}", "d", now=float(i))
    assert len(pins) == 3
    assert [p.session for p in pins.entries()] == ["s2", "s3", "s4"]
    assert pins.stats().evicted == 2
    pins.pin("m", "s2", "d-new", now=6.0)  # rewritten: now the most recent
    pins.pin("m", "s5", "d", now=7.0)
    assert [p.session for p in pins.entries()] == ["s4", "s2", "s5"]


def test_evict_drops_only_entries_older_than_ttl() -> None:
    pins = make()
    pins.pin("m", "old", "d", now=0.0)
    pins.pin("m", "edge", "d", now=10.0)
    pins.pin("m", "new", "d", now=50.0)
    assert pins.evict(70.0) == 1  # "edge" is exactly ttl old: kept
    assert {p.session for p in pins.entries()} == {"edge", "new"}
    assert pins.stats().expired == 1


def test_network_input_is_dropped_and_counted_never_raised() -> None:
    pins = make()
    good = Pin(namespace="m", session="s", deployment="d", stamp=1.0, origin="o").encode()
    pins.handle("prefixcache.observe", good)  # not our subject
    pins.handle(PIN_SUBJECT, b"\xff\xfe")
    pins.handle(PIN_SUBJECT, b"[1, 2]")
    pins.handle(PIN_SUBJECT, json.dumps({"ns": "m"}).encode())
    pins.handle(PIN_SUBJECT, b"x" * 100_000)
    pins.handle(PIN_SUBJECT, good)
    st = pins.stats()
    assert (st.received, st.dropped_unknown_subject, st.dropped_malformed, st.applied) == (
        6,
        1,
        4,
        1,
    )
    assert pins.get("m", "s", now=1.0) == "d"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"ns": "", "session": "s", "deployment": "d", "t": 1, "origin": "o"}, "ns"),
        ({"ns": "m", "session": 3, "deployment": "d", "t": 1, "origin": "o"}, "session"),
        ({"ns": "m", "session": "s", "deployment": None, "t": 1, "origin": "o"}, "deployment"),
        ({"ns": "m", "session": "s", "deployment": "d", "t": True, "origin": "o"}, "t"),
        ({"ns": "m", "session": "s", "deployment": "d", "t": -1, "origin": "o"}, "t"),
        ({"ns": "m", "session": "s", "deployment": "d", "t": 1, "origin": ""}, "origin"),
        ({"ns": "m", "session": "s" * 513, "deployment": "d", "t": 1, "origin": "o"}, "session"),
        ({"ns": "m", "session": "s", "deployment": "d", "origin": "o"}, "t"),
    ],
)
def test_decode_names_the_bad_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(PinDecodeError) as err:
        Pin.decode(json.dumps(doc).encode())
    assert err.value.field == field
    assert isinstance(err.value, ValueError)


def test_misuse_raises_typed_errors_naming_the_argument() -> None:
    for kw, name in (
        ({"ttl": 0}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"max_entries": 0}, "max_entries"),
        ({"origin": ""}, "origin"),
        # Counterfactual for these three: accepted, then failing at the first call.
        ({"clock": 5.0}, "clock"),
        ({"clock": None}, "clock"),
        ({"on_publish_error": "warn"}, "on_publish_error"),
        ({"publisher": object()}, "publisher"),
    ):
        with pytest.raises(InvalidRecordError) as err:
            make(**kw)
        assert err.value.field == name
    pins = make()
    with pytest.raises(InvalidRecordError) as err:
        pins.pin("m", "s", "", now=0.0)
    assert err.value.field == "deployment"
    with pytest.raises(InvalidRecordError) as err:
        pins.pin("", "s", "d", now=0.0)
    assert err.value.field == "namespace"
    # A time that is not a number, or NaN, is refused by name (get read a NaN as "not
    # expired", unpin and evict as "nothing to do").
    pins.pin("m", "s", "d", now=0.0)
    calls = (
        lambda t: pins.get("m", "s", now=t),
        lambda t: pins.pin("m", "s2", "d", now=t),
        lambda t: pins.unpin("m", "s", now=t),
        lambda t: pins.evict(t),
    )
    for call in calls:
        for bad in (float("nan"), "1.0", True):
            with pytest.raises(InvalidRecordError) as err:
                call(bad)
            assert err.value.field == "now"
    assert pins.get("m", "s", now=1.0) == "d"


def test_two_routers_converge_through_a_transport_and_detach_stops_it() -> None:
    hub = InMemoryTransport()
    a, b = make(origin="a"), make(origin="b")
    detach_a = a.attach(hub.connect("a"))
    b.attach(hub.connect("b"))
    a.pin("m", "s1", "d1", now=1.0)
    b.pin("m", "s2", "d2", now=2.0)
    assert b.get("m", "s1", now=3.0) == "d1"
    assert a.get("m", "s2", now=3.0) == "d2"
    b.unpin("m", "s1", now=4.0)
    assert a.get("m", "s1", now=4.0) is None
    assert a.entries() == b.entries()
    detach_a()
    detach_a()  # idempotent
    b.pin("m", "s3", "d3", now=5.0)
    assert a.get("m", "s3", now=5.0) is None  # counterfactual: attached, it would be d3
    assert a.stats().published == 1 and b.stats().published == 3


def test_a_failing_publisher_is_counted_and_the_write_still_holds() -> None:
    class Broken:
        def publish(self, subject: str, payload: bytes) -> None:
            raise ConnectionError("down")

    seen: list[str] = []
    pins = make(publisher=Broken(), on_publish_error=lambda s, e: seen.append(s))
    assert pins.pin("m", "s", "d", now=0.0)
    assert pins.get("m", "s", now=0.0) == "d"
    assert pins.stats().publish_errors == 1 and seen == [PIN_SUBJECT]


def test_decode_of_deep_nesting_and_lone_surrogates_follows_the_network_text_rule() -> None:
    from prefixcache import Pin, PinDecodeError

    with pytest.raises(PinDecodeError, match="nests too deeply"):
        Pin.decode(b"[" * 5000)
    raw = b'{"ns": "m\\ud800", "session": "s", "deployment": "d", "t": 1.0, "origin": "o"}'
    pin = Pin.decode(raw)
    assert pin.namespace == "m\ufffd"  # counterfactual: a kept surrogate could not encode
    assert Pin.decode(pin.encode()) == pin
