"""Pressure(window): the sliding forced-disturb counter."""

from __future__ import annotations

import math
import threading

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import Pressure


def test_counts_events_within_the_window() -> None:
    p = Pressure(60.0)
    for t in (0.0, 10.0, 20.0):
        p.record("m", t)
    assert p.count("m", 20.0) == 3
    assert p.count("m", 65.0) == 2  # t=0 is 65 s old


def test_boundary_event_exactly_window_old_counts() -> None:
    p = Pressure(60.0)
    p.record("m", 100.0)
    assert p.count("m", 160.0) == 1  # now - t == window: counts
    assert p.count("m", math.nextafter(160.0, math.inf)) == 0  # one ulp later: gone


def test_boundary_uses_the_subtraction_as_specified() -> None:
    # 0.3 - 0.1 = 0.19999999999999998 <= 0.2, so the event counts; a rearranged test
    # (t >= now - window) would agree here too, but the spec's expression is the contract.
    p = Pressure(0.2)
    p.record("m", 0.1)
    assert p.count("m", 0.3) == (1 if 0.3 - 0.1 <= 0.2 else 0)


def test_models_are_independent_and_unknown_is_zero() -> None:
    p = Pressure(10.0)
    p.record("a", 1.0)
    p.record("a", 2.0)
    p.record("b", 2.0)
    assert (p.count("a", 2.0), p.count("b", 2.0), p.count("c", 2.0)) == (2, 1, 0)


def test_reset_forgets_one_model() -> None:
    p = Pressure(10.0)
    p.record("a", 1.0)
    p.record("b", 1.0)
    p.reset("a")
    p.reset("never-seen")  # no-op
    assert (p.count("a", 1.0), p.count("b", 1.0)) == (0, 1)


def test_future_events_count() -> None:
    # now - t < 0 <= window: a host clock that stepped back still sees the event.
    p = Pressure(10.0)
    p.record("m", 50.0)
    assert p.count("m", 45.0) == 1


def test_out_of_order_records_are_kept_sorted() -> None:
    p = Pressure(10.0)
    p.record("m", 20.0)
    p.record("m", 15.0)
    p.record("m", 18.0)
    assert p.count("m", 26.0) == 2  # 15 is 11 s old
    assert p.count("m", 20.0) == 3


def test_storage_is_bounded_without_count() -> None:
    # Counterfactual: without pruning on record this would hold 100,000 events.
    p = Pressure(60.0)
    for i in range(100_000):
        p.record("m", float(i))
    assert len(p) <= 61
    assert p.count("m", 99_999.0) == 61


def test_aged_out_models_are_dropped_without_count() -> None:
    p = Pressure(5.0)
    for i in range(100):
        p.record(f"old-{i}", 0.0)
    for i in range(300):
        p.record("busy", 100.0 + i)
    assert p.models() == frozenset({"busy"})
    assert len(p) <= 6


@pytest.mark.parametrize("window", [0, 0.0, -1.0, math.nan, math.inf, "60", True, None])
def test_window_must_be_finite_positive(window: object) -> None:
    with pytest.raises(InvalidRecordError, match="window"):
        Pressure(window)  # type: ignore[arg-type]


def test_window_property() -> None:
    assert Pressure(30).window == 30.0


def test_concurrent_records_are_all_counted() -> None:
    p = Pressure(1e9)

    def worker() -> None:
        for i in range(2000):
            p.record("m", float(i))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.count("m", 2000.0) == 8000


def test_nan_time_is_rejected() -> None:
    p = Pressure(10.0)
    with pytest.raises(InvalidRecordError, match="now"):
        p.record("m", math.nan)
    assert len(p) == 0
