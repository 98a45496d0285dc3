"""Laws of ``RunningOutput``, the output blocks a running request holds in the router's
``KvCacheMirror`` (the replay's ``CacheCostPolicy`` takes them from it)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import InvalidRecordError
from prefixcache import RunningOutput

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("record"),
            st.integers(0, 5000),
            st.one_of(st.just(0.0), st.floats(1e-6, 1e6), st.floats(1e300, 1.7e308)),
        ),
        st.tuples(st.just("take"), st.just(0), st.just(0.0)),
        st.tuples(st.just("refused"), st.integers(0, 5000), st.integers(2**1024, 2**1100)),
    ),
    max_size=60,
)


@given(ops=ops)
def test_the_estimate_is_the_time_weighted_mean_and_takes_follow_it(
    ops: list[tuple[str, int, float | int]],
) -> None:
    out = RunningOutput()
    records: list[tuple[int, float]] = []
    owed = 0.0  # the estimates at each take, less the blocks taken
    for op, blocks, seconds in ops:
        if op == "refused":  # a duration beyond any float: refused, and nothing recorded
            before = out.estimate
            with pytest.raises(InvalidRecordError, match="seconds"):
                out.record(blocks, seconds=seconds)
            assert out.estimate == before
        elif op == "record":
            out.record(blocks, seconds=seconds)
            records.append((blocks, seconds))
        else:
            est = out.estimate
            got = out.take()
            assert got >= 0
            owed += est - got
            # Taken whole blocks never run ahead of the estimates, nor a block behind them.
            assert -1e-6 <= owed < 1 + 1e-6
        timed = [(b, s) for b, s in records if s > 0]
        if timed:  # weights scaled by the longest, so that their sum stays finite
            top = max(s for _, s in timed)
            want = math.fsum(b * (s / top) for b, s in timed) / math.fsum(s / top for _, s in timed)
        elif records:
            want = sum(b for b, _ in records) / len(records)
        else:
            want = 0.0
        assert math.isclose(out.estimate, want, rel_tol=1e-9, abs_tol=1e-9)
        if records:  # a mean: within the recorded counts
            lo = min(b for b, _ in records)
            hi = max(b for b, _ in records)
            assert lo - 1e-9 <= out.estimate <= hi + 1e-9
