"""Weights at the edges of the float range: a weight agrees with the plain per-node sum of
``0.5 ** (age / half_life)`` within 1e-11 relative wherever that sum is a normal float, and
is nonzero wherever it is nonzero, however far the shared scale ``2 ** ((t0 - now) /
half_life)`` of the per-owner sums has drifted from the normal range."""

from __future__ import annotations

import math
import sys

import pytest

from prefixcache import BACKENDS, Candidate, Config, Index, RadixTree, ReplicaKey
from prefixcache._weights import Owner, Weights

REL = 1e-11
MIN_NORMAL = sys.float_info.min


def plain(ages: list[float], half_life: float) -> float:
    """The per-node sum the weight must match (each age in seconds)."""
    return sum(0.5 ** (a / half_life) for a in ages)


@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_reproducer_orders_the_underflowing_weight_after_the_empty_one(
    backend: str,
) -> None:
    ix = Index(Config(ttl=300, half_life=0.25), backend=backend)
    b, c, z = ReplicaKey("b"), ReplicaKey("c"), ReplicaKey("z")
    ix.observe("m", (1,), c, 1000.0)
    ix.observe("m", (2,), b, 1122.44921875)
    d = ix.decide("m", (9,), [Candidate(b, 0), Candidate(z, 0)], 1269.5)
    # b weighs 2**-588.2 (8.6e-178), z nothing: z first. With the shared scale 2**-1078
    # flushed to 0.0, b weighed 0 too and the tie put b first by name.
    assert d.cold_order == (z, b)
    tree = ix.tree("m")
    assert tree is not None
    w = tree.weight(b, 1269.5)
    want = plain([1269.5 - 1122.44921875], 0.25)
    assert 8.5e-178 < want < 8.7e-178
    assert w == pytest.approx(want, rel=REL, abs=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_normal_weight_keeps_its_precision_under_a_subnormal_scale(backend: str) -> None:
    # The scale 2**-1050.81 is subnormal (24 bits); the weight 2**-550.44 is normal. A
    # weight computed as sum * scale was off by up to 6e-8 relative.
    t = RadixTree[str](ttl=0.0, half_life=1.0, backend=backend)
    t.insert((1,), "b", 500.37)
    now = 1050.81
    want = plain([now - 500.37], 1.0)
    assert want > MIN_NORMAL
    assert t.weight("b", now) == pytest.approx(want, rel=REL, abs=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_subnormal_weight_is_nonzero_and_is_the_plain_sum(backend: str) -> None:
    # Scale 2**-1080.5 flushes to 0.0; the weight 2**-1060.5 is subnormal but not zero.
    t = RadixTree[str](ttl=0.0, half_life=1.0, backend=backend)
    t.insert((1, 2, 3), "b", 20.0)
    now = 1080.5
    want = plain([now - 20.0] * 3, 1.0)
    assert 0.0 < want < MIN_NORMAL
    assert t.weight("b", now) == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_of_several_owners_across_the_range(backend: str) -> None:
    # One query, owners whose weights are normal, subnormal and zero: each answered on its
    # own terms (a shared scale cannot represent all three).
    hl = 0.25
    t = RadixTree[str](ttl=0.0, half_life=hl, backend=backend)
    t.insert((1,), "old", 0.0)  # 2**-1400 at now: zero
    t.insert((2,), "mid", 83.0)  # 2**-1068: subnormal
    t.insert((3, 4), "new", 127.5)  # 2 * 2**-562: normal
    now = 350.0
    got = t.weights_for(["old", "mid", "new", "none"], now)
    assert got["old"] == plain([now], hl) == 0.0
    assert got["mid"] == plain([now - 83.0], hl) > 0.0
    assert got["new"] == pytest.approx(plain([now - 127.5] * 2, hl), rel=REL, abs=0.0)
    assert got["none"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_weight_beyond_the_float_range_is_inf_not_an_error(backend: str) -> None:
    # Entries 1100 half-lives in the future of ``now`` (a clock far behind the writer's):
    # each term overflows, as 0.5 ** -1100 does; the weight is inf, nothing raises.
    t = RadixTree[str](ttl=0.0, half_life=1.0, backend=backend)
    t.insert((1,), "a", 0.0)
    t.insert((2,), "x", -450.0)  # a factor below 2**-400: off the fast path
    t.insert((3,), "b", 511.0)
    got = t.weights_for(["a", "x", "b"], -589.0)
    assert got["a"] == pytest.approx(2.0**589, rel=REL)
    assert got["x"] == pytest.approx(2.0**139, rel=REL)
    assert got["b"] == math.inf


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rebase_forgets_the_small_factors_it_replaced(backend: str) -> None:
    # A factor below 2**-400 takes every weight off the shared scale; once its owner is gone
    # and a later write moves the origin, weights return to the shared scale.
    t = RadixTree[str](ttl=0.0, half_life=1.0, backend=backend)
    t.insert((1,), "a", 300.0)
    t.insert((2,), "far", -1000.0)
    weights = t._weights  # the fast-path flag is internal state
    assert weights.tiny
    t.remove("far")
    t.insert((3,), "b", 600.0)  # beyond 2**512: the origin moves to 600
    assert not weights.tiny
    assert t.weight("a", 600.0) == pytest.approx(plain([300.0], 1.0), rel=REL, abs=0.0)
    assert t.weight("b", 600.0) == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_factor_gone_subnormal_costs_only_its_own_owner_a_term_by_term_sum(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "far" was written 1050 half-lives before the origin: its factor is subnormal, so its
    # weight is summed term by term, and is nonzero; the others keep their O(1) sums.
    t = RadixTree[str](ttl=0.0, half_life=1.0, backend=backend)
    t.insert((1,), "a", 0.0)
    t.insert((2, 3), "b", 100.0)
    t.insert((4,), "far", -1050.0)
    summed: list[object] = []
    exact = Weights.exact

    def recording_exact(w: Weights, o: Owner, now: float) -> float:
        summed.append(o.value)
        return exact(w, o, now)

    monkeypatch.setattr(Weights, "exact", recording_exact)
    got = t.weights_for(["a", "b", "far"], 20.0)
    assert summed == ["far"]
    assert got["far"] == plain([1070.0], 1.0) > 0.0
    assert got["a"] == pytest.approx(plain([20.0], 1.0), rel=REL, abs=0.0)
    assert got["b"] == pytest.approx(plain([-80.0] * 2, 1.0), rel=REL, abs=0.0)
