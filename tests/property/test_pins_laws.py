"""Laws of SessionPins: replicas that received the same writes hold the same pins whatever the
delivery order and duplication (last writer wins by (stamp, origin)); memory never exceeds
max_entries; the wire format round-trips."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prefixcache import Pin, SessionPins
from prefixcache.testing import InMemoryTransport

names = st.sampled_from(["a", "b", "c"])
pins_st = st.builds(
    Pin,
    namespace=st.sampled_from(["m1", "m2"]),
    session=st.sampled_from(["s1", "s2", "s3"]),
    deployment=st.sampled_from(["", "d1", "d2"]),
    stamp=st.integers(0, 20).map(float),
    origin=names,
)


def by_key(p: Pin) -> tuple[str, str, tuple[float, str, str]]:
    return (p.namespace, p.session, p.order_key())


def fresh(max_entries: int = 1000) -> SessionPins:
    return SessionPins(ttl=1e9, max_entries=max_entries, clock=lambda: 0.0)


@given(st.lists(pins_st, max_size=30), st.randoms(use_true_random=False))
def test_any_delivery_order_with_duplicates_converges(writes: list[Pin], rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    a, b = fresh(), fresh()
    for w in writes:
        a.apply(w)
    shuffled = writes + rnd.sample(writes, k=len(writes) // 2)  # some duplicated
    rnd.shuffle(shuffled)
    for w in shuffled:
        b.apply(w.encode())
    assert sorted(a.entries(), key=by_key) == sorted(b.entries(), key=by_key)
    # Each held entry is the greatest write of its key.
    for held in a.entries():
        same = [w for w in writes if (w.namespace, w.session) == (held.namespace, held.session)]
        assert held.order_key() == max(w.order_key() for w in same)


@given(st.lists(pins_st, max_size=40), st.integers(1, 4))
def test_memory_never_exceeds_max_entries(writes: list[Pin], cap: int) -> None:
    pins = fresh(cap)
    for w in writes:
        pins.apply(w)
        assert len(pins) <= cap


@given(pins_st)
def test_wire_round_trip(pin: Pin) -> None:
    assert Pin.decode(pin.encode()) == pin


@given(st.lists(st.tuples(names, st.sampled_from(["s1", "s2"]), st.sampled_from(["d1", "d2"]))))
def test_routers_on_a_transport_hold_the_same_pins(ops: list[tuple[str, str, str]]) -> None:
    hub = InMemoryTransport()
    routers = {n: SessionPins(ttl=1e9, max_entries=100, origin=n, clock=lambda: 0.0) for n in "abc"}
    for n, p in routers.items():
        p.attach(hub.connect(n))
    for t, (who, session, deployment) in enumerate(ops):
        routers[who].pin("m", session, deployment, now=float(t))
    views = [sorted(p.entries(), key=by_key) for p in routers.values()]
    assert views[0] == views[1] == views[2]
