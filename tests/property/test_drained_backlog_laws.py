"""Laws of ``DrainedBacklog``, the backlog of a router that sees no first token (the
LiteLLM plugin's ledger and the replay's ``CacheCostPolicy(prefill_rate=...)`` share it)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import InvalidRecordError
from prefixcache._backlog import DrainedBacklog

steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3), st.integers(0, 5000)),
        st.tuples(st.just("remove"), st.integers(0, 30), st.just(0)),
    ),
    max_size=40,
)
gaps = st.lists(st.floats(-0.5, 1.0, allow_nan=False), min_size=40, max_size=40)
rates = st.one_of(st.none(), st.floats(100.0, 50_000.0))


@given(steps=steps, gaps=gaps, rate=rates)
def test_the_backlog_stays_within_what_is_held_and_drains_at_the_rate(
    steps: list[tuple[str, int, int]], gaps: list[float], rate: float | None
) -> None:
    b = DrainedBacklog[int](rate)
    alive: list[tuple[int, int]] = []  # (key, tokens) of the requests not yet ended
    now = 0.0
    latest = {k: 0.0 for k in range(4)}  # the latest event time per key
    for (op, arg, tokens), gap in zip(steps, gaps, strict=False):
        before = {k: b.read(k, now) for k in range(4)}
        later = now + gap
        # Between events the backlog only falls, by at most rate x elapsed (+ rounding),
        # and by exactly that while it stays above 0; a clock that went back drains nothing.
        for k in range(4):
            drained = b.read(k, later)
            if rate is None:
                assert drained == before[k]
            elif later <= latest[k]:
                assert drained == b.read(k, latest[k])
            elif later < now:  # an earlier read, still after the key's last event
                assert drained >= before[k]
            else:
                assert drained <= before[k]
                expected = before[k] - rate * (later - max(now, latest[k]))
                if drained > 0:
                    assert abs(drained - expected) <= 1
        now = later
        touched = None
        if op == "add":
            touched = arg
            was = b.read(arg, now)
            b.add(arg, tokens, now)
            alive.append((arg, tokens))
            # an add raises the backlog by the request's tokens, at once
            assert abs(b.read(arg, now) - (was + tokens)) <= 1
        elif alive:
            touched, tokens = alive.pop(arg % len(alive))
            b.remove(touched, tokens, now)
        if touched is not None and tokens:  # the drain restarts from the latest event
            fresh = op == "add" and b.held(touched) == tokens  # nothing was held before
            latest[touched] = now if fresh else max(latest[touched], now)
        for k in range(4):
            held = sum(t for kk, t in alive if kk == k)
            assert b.held(k) == held
            got = b.read(k, now)
            assert 0 <= got <= held
            if rate is None:
                assert got == held
            # reads change nothing
            b.read(k, now + 50.0)
            assert b.read(k, now) == got
    for key, tokens in alive:
        b.remove(key, tokens, now)
    assert len(b) == 0  # every request ended: nothing remembered
    assert all(b.read(k, now) == 0 for k in range(4))


def test_a_release_cuts_the_level_to_what_is_still_held_then_it_keeps_draining() -> None:
    b = DrainedBacklog[str](rate=1000.0)
    b.add("a", 5000, now=0.0)
    b.add("a", 300, now=0.0)
    b.remove("a", 5000, now=1.0)  # 4,300 by the drain, but only 300 are still held
    assert b.read("a", now=1.0) == 300
    # Cut at the release, then drained from there: 0.1 s later 200 (a cap applied only
    # when reading would still say 300 until the level fell below it, at 4.0 s).
    assert b.read("a", now=1.1) == 200
    assert b.read("a", now=2.0) == 0


def test_without_a_rate_tokens_stay_until_their_request_ends() -> None:
    b = DrainedBacklog[str](rate=None)
    b.add("a", 800, now=0.0)
    assert b.read("a", now=1e6) == 800
    b.remove("a", 800, now=1e6)
    assert b.read("a", now=1e6) == 0 and len(b) == 0


def test_a_clock_stepping_back_pauses_the_drain() -> None:
    b = DrainedBacklog[str](rate=100.0)
    b.add("a", 800, now=10.0)
    assert b.read("a", now=5.0) == 800  # before the add: as of the add
    b.add("a", 100, now=5.0)  # a wall clock stepped back: the level is not drained
    assert b.read("a", now=10.0) == 900
    assert b.read("a", now=11.0) == 800


def test_a_request_of_no_tokens_changes_nothing() -> None:
    b = DrainedBacklog[str](rate=100.0)
    b.add("a", 0, now=0.0)
    b.remove("a", 0, now=0.0)
    assert len(b) == 0 and b.read("a", now=0.0) == 0


def test_bookkeeping_errors_are_typed_and_change_nothing() -> None:
    b = DrainedBacklog[str](rate=100.0)
    b.add("a", 500, now=0.0)
    with pytest.raises(InvalidRecordError, match="tokens"):
        b.add("a", -1, now=0.0)
    with pytest.raises(InvalidRecordError, match="at most the 500 held on 'a'"):
        b.remove("a", 501, now=1.0)
    with pytest.raises(InvalidRecordError, match="at most the 0 held on 'b'"):
        b.remove("b", 1, now=1.0)  # never added
    with pytest.raises(InvalidRecordError, match="tokens"):
        b.remove("a", -1, now=1.0)
    assert b.held("a") == 500 and b.read("a", now=1.0) == 400 and len(b) == 1
    b.remove("a", 500, now=1.0)
    with pytest.raises(InvalidRecordError, match="at most the 0 held"):
        b.remove("a", 500, now=1.0)  # removed twice
    for bad in (0, -1.0, float("inf"), float("nan"), True, "fast"):
        with pytest.raises(InvalidRecordError, match="rate"):
            DrainedBacklog[str](rate=bad)  # type: ignore[arg-type]
