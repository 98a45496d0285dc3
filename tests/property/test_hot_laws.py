"""Laws of HotPrefixes: under a constant demand the warm set never changes (no flapping);
copies never exceed the replicas nor fall below the ceiling of the copies the demand needs
while it lasts; the warm set holds distinct candidate replicas; the demand is a lower
bound of the observed share that rises with the count and nears the share as the window
fills."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from prefixcache import HotPrefixes


@given(
    replicas=st.integers(1, 16),
    share=st.integers(1, 20),
    period=st.integers(1, 20),
    window_periods=st.integers(1, 20),
    lower=st.sampled_from([0.5, 0.75, 0.9, 1.0]),
    per_copy=st.sampled_from([0.5, 0.75, 1.0, 2.0]),
    rounds=st.integers(1, 30),
    loads=st.lists(st.integers(0, 50), min_size=16, max_size=16),
)
def test_constant_demand_never_flaps(
    replicas: int,
    share: int,
    period: int,
    window_periods: int,
    lower: float,
    per_copy: float,
    rounds: int,
    loads: list[int],
) -> None:
    # A periodic dispatch pattern: `share` of every `period + share` dispatches carry the
    # prefix; the window is a whole number of periods, so the demand is exactly constant.
    cycle = [(7, 8)] * share + [(9,)] * period
    hot = HotPrefixes(window=len(cycle) * window_periods, lower=lower, per_copy=per_copy)
    for _ in range(window_periods):
        for chain in cycle:
            hot.record(chain)
    c = hot.demand(7, replicas) / per_copy  # copies the demand needs
    in_flight = {r: loads[r] for r in range(replicas)}
    first = hot.warm(7, holders=[0], in_flight=in_flight)
    expected = min(replicas, math.ceil(c)) if c > 1 else 1
    assert hot.copies(7) == expected
    assert len(first) == (expected if expected > 1 else 0)
    for i in range(rounds):
        for chain in cycle:  # the window slides by whole periods: demand unchanged
            hot.record(chain)
        # Loads change between calls; the warm set must not.
        shifted = {r: loads[(r + i) % 16] for r in range(replicas)}
        assert hot.warm(7, holders=[0], in_flight=shifted) == first


@given(
    replicas=st.integers(1, 8),
    chains=st.lists(st.lists(st.integers(0, 5), max_size=4).map(tuple), min_size=1, max_size=60),
    window=st.integers(1, 30),
    lower=st.sampled_from([0.5, 0.75, 1.0]),
    per_copy=st.sampled_from([0.5, 0.75, 1.0]),
    holders=st.lists(st.integers(0, 7), max_size=4),
)
def test_copies_stay_within_bounds_and_warm_sets_are_distinct_candidates(
    replicas: int,
    chains: list[tuple[int, ...]],
    window: int,
    lower: float,
    per_copy: float,
    holders: list[int],
) -> None:
    hot = HotPrefixes(window=window, lower=lower, per_copy=per_copy)
    in_flight = dict.fromkeys(range(replicas), 0)
    for i, chain in enumerate(chains):
        hot.record(chain)
        assert len(hot) == min(window, i + 1)
        for prefix in range(6):
            before = hot.copies(prefix)
            warm = hot.warm(prefix, holders=holders, in_flight=in_flight)
            u = hot.demand(prefix, replicas) / per_copy  # copies the demand needs
            k = hot.copies(prefix)
            assert 1 <= k <= replicas
            assert len(warm) == (k if k > 1 else 0)
            assert len(set(warm)) == len(warm) and set(warm) <= set(in_flight)
            # Rises to the demand's ceiling at once; falls only below lower x (k - 1) ...
            if u > before:
                assert k >= min(replicas, math.ceil(u))
            if k < min(before, replicas):
                assert u < k * lower
            # ... and never keeps a copy the demand's hysteresis band does not cover.
            assert k == 1 or u >= (k - 1) * lower


def _demand(with_prefix: int, without: int, confidence: float, replicas: int = 1) -> float:
    hot = HotPrefixes(window=with_prefix + without, confidence=confidence)
    for _ in range(with_prefix):
        hot.record((7,))
    for _ in range(without):
        hot.record((8,))
    return hot.demand(7, replicas=replicas)


@given(
    n=st.integers(1, 300),
    data=st.data(),
    z=st.floats(0, 3),
    dz=st.floats(0, 1),
    replicas=st.integers(1, 64),
)
def test_demand_is_a_lower_bound_rising_with_the_count(
    n: int, data: st.DataObject, z: float, dz: float, replicas: int
) -> None:
    c = data.draw(st.integers(0, n))
    p = c / n
    # No confidence: the observed share, counted exactly.
    assert _demand(c, n - c, 0, replicas) == c * replicas / n
    low = _demand(c, n - c, z)
    assert 0 <= low <= p + 1e-12
    # The class docstring's formula, as written there.
    a = z * z / n
    textbook = (p + a / 2 - z * math.sqrt(p * (1 - p) / n + a / (4 * n))) / (1 + a)
    assert math.isclose(low, max(0.0, textbook), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(_demand(c, n - c, z, replicas), low * replicas, rel_tol=1e-12)
    # It misses the share by at most z standard errors plus the interval's shift.
    assert p - low <= z * math.sqrt(p * (1 - p) / n) + a + 1e-12
    # One more dispatch with the prefix (of as many) never lowers it; more confidence
    # never raises it.
    if c < n:
        assert _demand(c + 1, n - c - 1, z) >= low - 1e-12
    assert _demand(c, n - c, z + dz) <= low + 1e-12
