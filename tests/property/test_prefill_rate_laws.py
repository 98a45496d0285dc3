"""``PrefillRateEstimator``: the rate a router that sees first tokens only when requests
end (LiteLLM's streamed ``completion_start_time``) learns its backlog's drain rate from,
and ``DrainedBacklog.set_rate``, which applies it."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import InvalidRecordError
from prefixcache._backlog import (
    DEFAULT_RATE_MIN_OBSERVATIONS,
    DEFAULT_RATE_WINDOW,
    DrainedBacklog,
    PrefillRateEstimator,
)


def test_one_request_teaches_its_tokens_over_its_time_to_first_token() -> None:
    r = PrefillRateEstimator[str](min_observations=1)
    assert r.rate() is None
    assert r.observe("a", sent=10.0, first_token=10.5, tokens=1000)
    assert r.rate() == 2000.0


def test_a_request_queued_behind_another_adds_only_the_time_after_its_first_token() -> None:
    # Both sent at 0 to one replica prefilling 1,000 tokens/s: first tokens at 1 s and 2 s.
    # Per request the second would read 500 tokens/s; the replica was busy 2 s for 2,000.
    r = PrefillRateEstimator[str](min_observations=2)
    r.observe("a", sent=0.0, first_token=2.0, tokens=1000)  # told first: order is free
    r.observe("a", sent=0.0, first_token=1.0, tokens=1000)
    assert r.rate() == 1000.0


def test_replicas_busy_at_the_same_time_each_count_their_own_busy_time() -> None:
    r = PrefillRateEstimator[str](min_observations=3)
    r.observe("a", sent=0.0, first_token=1.0, tokens=1000)
    r.observe("b", sent=0.0, first_token=1.0, tokens=3000)
    r.observe("a", sent=3.0, first_token=4.0, tokens=2000)  # a gap: idle time is not busy
    assert r.rate() == 6000 / 3.0


def test_requests_out_of_order_or_with_nothing_to_prefill_teach_nothing() -> None:
    r = PrefillRateEstimator[str](min_observations=1)
    assert not r.observe("a", sent=5.0, first_token=5.0, tokens=100)
    assert not r.observe("a", sent=5.0, first_token=4.0, tokens=100)  # clocks out of step
    assert not r.observe("a", sent=0.0, first_token=1.0, tokens=0)  # all cached
    assert len(r) == 0 and r.rate() is None


def test_it_estimates_after_every_min_observations_and_keeps_the_last_window() -> None:
    r = PrefillRateEstimator[str](window=4, min_observations=2)
    r.observe("a", sent=0.0, first_token=1.0, tokens=100)
    assert r.rate() is None
    r.observe("a", sent=2.0, first_token=3.0, tokens=100)
    assert r.rate() == 100.0
    r.observe("a", sent=4.0, first_token=5.0, tokens=700)
    assert r.rate() == 100.0  # not yet due
    r.observe("a", sent=6.0, first_token=7.0, tokens=700)
    assert r.rate() == 1600 / 4
    for k in range(4):  # the first four leave the window
        r.observe("a", sent=10.0 + k, first_token=10.5 + k, tokens=50)
    assert len(r) == 4 and r.rate() == 100.0
    assert DEFAULT_RATE_WINDOW == 512 and DEFAULT_RATE_MIN_OBSERVATIONS == 16


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window": 0}, "window"),
        ({"window": 2.0}, "window"),
        ({"window": True}, "window"),
        ({"min_observations": 0}, "min_observations"),
        ({"window": 4, "min_observations": 5}, "min_observations"),
    ],
)
def test_bad_parameters_are_typed_errors(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRecordError, match=field):
        PrefillRateEstimator[str](**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sent", "first", "tokens", "field"),
    [
        (math.nan, 1.0, 10, "sent"),
        (0.0, math.inf, 10, "first_token"),
        ("0", 1.0, 10, "sent"),
        (True, 1.0, 10, "sent"),
        (0.0, 1.0, -1, "tokens"),
        (0.0, 1.0, 1.5, "tokens"),
        (0.0, 1.0, True, "tokens"),
    ],
)
def test_bad_observations_are_typed_errors(
    sent: object, first: object, tokens: object, field: str
) -> None:
    r = PrefillRateEstimator[str](min_observations=1)
    with pytest.raises(InvalidRecordError, match=field):
        r.observe("a", sent=sent, first_token=first, tokens=tokens)  # type: ignore[arg-type]
    assert len(r) == 0


fifo = st.lists(
    st.tuples(st.floats(0.0, 2.0), st.integers(1, 20_000)),  # (gap to the next arrival, tokens)
    min_size=1,
    max_size=60,
)


@given(arrivals=fifo, rate=st.floats(500.0, 100_000.0), replicas=st.integers(1, 4))
def test_replicas_prefilling_first_come_first_served_are_learned_at_their_rate(
    arrivals: list[tuple[float, int]], rate: float, replicas: int
) -> None:
    # However requests queue, the union of their waits is the time their replica was busy
    # prefilling, so the estimate is the replicas' rate (the naive tokens / time to first
    # token of each request would read queueing as slowness).
    est = PrefillRateEstimator[int](window=len(arrivals), min_observations=len(arrivals))
    now = 0.0
    free = [0.0] * replicas
    for k, (gap, tokens) in enumerate(arrivals):
        now += gap
        r = k % replicas
        free[r] = max(now, free[r]) + tokens / rate
        assert est.observe(r, sent=now, first_token=free[r], tokens=tokens)
    learned = est.rate()
    assert learned is not None and math.isclose(learned, rate, rel_tol=1e-6)


observations = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.floats(0.0, 100.0),
        st.floats(0.001, 10.0),
        st.integers(1, 50_000),
    ),
    min_size=1,
    max_size=40,
)


def learned(obs: list[tuple[int, float, float, int]], *, scale: float = 1.0) -> float:
    est = PrefillRateEstimator[int](window=len(obs), min_observations=len(obs))
    for key, sent, wait, tokens in obs:
        est.observe(key, sent=sent * scale, first_token=(sent + wait) * scale, tokens=tokens)
    rate = est.rate()
    assert rate is not None
    return rate


@given(obs=observations, data=st.data())
def test_the_estimate_does_not_depend_on_the_order_requests_are_told(
    obs: list[tuple[int, float, float, int]], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(obs))
    assert math.isclose(learned(obs), learned(shuffled), rel_tol=1e-9)


@given(obs=observations, scale=st.floats(0.01, 100.0))
def test_a_slower_clock_reads_a_proportionally_lower_rate(
    obs: list[tuple[int, float, float, int]], scale: float
) -> None:
    assert math.isclose(learned(obs, scale=scale) * scale, learned(obs), rel_tol=1e-6)


@given(obs=observations)
def test_the_estimate_lies_between_the_naive_mean_and_the_longest_wait_alone(
    obs: list[tuple[int, float, float, int]],
) -> None:
    tokens = sum(t for *_, t in obs)
    waits = [(s + w) - s for _, s, w, _ in obs]
    rate = learned(obs)
    assert tokens / sum(waits) * (1 - 1e-9) <= rate <= tokens / max(waits) * (1 + 1e-9)


def test_a_new_rate_keeps_the_level_reached_and_drains_at_the_new_rate_from_then() -> None:
    b = DrainedBacklog[str](rate=100.0)
    b.add("a", 1000, now=0.0)
    b.add("b", 500, now=1.0)
    assert (b.read("a", now=2.0), b.read("b", now=2.0)) == (800, 400)
    b.set_rate(300.0, now=2.0)
    assert (b.read("a", now=2.0), b.read("b", now=2.0)) == (800, 400)
    assert (b.read("a", now=3.0), b.read("b", now=3.0)) == (500, 100)
    assert b.rate == 300.0
    for bad in (0.0, -5.0, math.nan, math.inf, True, None):
        with pytest.raises(InvalidRecordError, match="rate"):
            b.set_rate(bad, now=3.0)  # type: ignore[arg-type]
    held = DrainedBacklog[str](rate=None)  # tokens held until their request ends: no level
    with pytest.raises(InvalidRecordError, match="rate"):
        held.set_rate(100.0, now=0.0)


def test_untimed_requests_sent_while_their_replica_was_busy_add_their_tokens() -> None:
    # A response not streamed tells no first token, but its prefill took part of the busy
    # time of the timed requests around it: its tokens count when it was sent inside a
    # busy period of its replica, and not otherwise.
    r = PrefillRateEstimator[str](min_observations=5)
    r.observe("a", sent=0.0, first_token=2.0, tokens=1000)
    r.observe("a", sent=1.0, first_token=None, tokens=600)  # inside a's busy period
    r.observe("a", sent=3.0, first_token=None, tokens=900)  # a was idle
    r.observe("b", sent=1.0, first_token=None, tokens=700)  # b was never seen busy
    assert r.rate() is None  # four observed, the estimate is due at five
    r.observe("a", sent=2.0, first_token=2.5, tokens=400)  # touches the first: one period
    assert r.rate() == (1000 + 600 + 400) / 2.5


def test_untimed_requests_alone_give_no_estimate() -> None:
    r = PrefillRateEstimator[str](min_observations=2)
    r.observe("a", sent=0.0, first_token=None, tokens=100)
    r.observe("a", sent=1.0, first_token=None, tokens=100)
    assert len(r) == 2 and r.rate() is None


@pytest.mark.parametrize(
    ("sent", "first", "tokens", "field"),
    [
        (10**400, 1.0, 10, "sent"),
        (-1e308, 1e308, 10, "first_token"),  # an interval longer than any float
        (0.0, 1.0, 2**53 + 1, "tokens"),
        (0.0, None, 10**400, "tokens"),
    ],
)
def test_values_beyond_a_float_are_typed_errors_and_leave_it_usable(
    sent: float, first: float | None, tokens: int, field: str
) -> None:
    r = PrefillRateEstimator[str](min_observations=1)
    with pytest.raises(InvalidRecordError, match=field):
        r.observe("a", sent=sent, first_token=first, tokens=tokens)
    assert r.observe("a", sent=0.0, first_token=1.0, tokens=100) and r.rate() == 100.0


@given(obs=observations, sent=st.floats(-50.0, 150.0), tokens=st.integers(1, 50_000))
def test_an_untimed_request_adds_its_tokens_exactly_when_sent_while_its_replica_was_busy(
    obs: list[tuple[int, float, float, int]], sent: float, tokens: int
) -> None:
    before = learned(obs)
    est = PrefillRateEstimator[int](window=len(obs) + 1, min_observations=len(obs) + 1)
    for key, s, wait, n in obs:
        est.observe(key, sent=s, first_token=s + wait, tokens=n)
    est.observe(0, sent=sent, first_token=None, tokens=tokens)
    after = est.rate()
    assert after is not None
    busy = any(k == 0 and s <= sent <= s + w for k, s, w, _ in obs)
    total = sum(n for *_, n in obs)
    expected = before * (total + tokens) / total if busy else before
    assert math.isclose(after, expected, rel_tol=1e-9)


def test_a_new_rate_keeps_a_level_set_after_now_when_the_clock_went_back() -> None:
    # "a" was last added at 10; the clock steps back and a rate is learned at 5. The level
    # stays where it was at 10 and drains at the new rate from 10 on, not from 5.
    b = DrainedBacklog[str](rate=100.0)
    b.add("a", 1000, now=10.0)
    b.set_rate(200.0, now=5.0)
    assert [b.read("a", now=t) for t in (5.0, 10.0, 11.0)] == [1000, 1000, 800]


def test_a_backlog_that_learns_applies_each_estimate_from_the_time_it_is_learned() -> None:
    # DrainedBacklog.learn is the one path the plugin's ledger and the replay's model use.
    b = DrainedBacklog[str](rate=100.0, learn=True)
    b.add("a", 1000, now=0.0)
    for k in range(DEFAULT_RATE_MIN_OBSERVATIONS - 1):
        assert b.learn("x", sent=10.0 * k, first_token=10.0 * k + 1, tokens=400, now=1.0)
    assert b.rate == 100.0  # not yet estimated: the configured rate
    assert b.learn("x", sent=500.0, first_token=501.0, tokens=400, now=2.0)
    assert b.rate == 400.0
    assert (b.read("a", now=2.0), b.read("a", now=3.0)) == (800, 400)  # 100/s, then 400/s
    assert not b.learn("x", sent=1.0, first_token=1.0, tokens=400, now=3.0)  # out of order
    for fixed in (DrainedBacklog[str](rate=100.0), DrainedBacklog[str](rate=None, learn=True)):
        assert not fixed.learn("x", sent=0.0, first_token=1.0, tokens=400, now=1.0)
