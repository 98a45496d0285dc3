"""CandidateSet: membership, reservations, the least loaded member, and pick == select over
Index.decide on the same members (on hand-made cases and as a hypothesis property)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from clusterrouting import InvalidRecordError
from prefixcache import (
    BACKENDS,
    Backend,
    CandidateSet,
    Config,
    Index,
    ReplicaKey,
    select,
)

A, B, C, A1 = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c"), ReplicaKey("a", 1)


def test_reserve_release_and_least_loaded_ties_by_node_then_replica() -> None:
    pool = CandidateSet([C, B, A1, A])
    assert pool.least_loaded() == A  # all idle: a/0 before a/1 before b
    assert pool.reserve(A) == 1 and pool.reserve(A) == 2
    assert pool.least_loaded() == A1
    assert pool.reserve(A1) == 1 and pool.reserve(B) == 1
    assert pool.least_loaded() == C
    assert pool.release(A) == 1 and pool.release(A) == 0
    assert pool.least_loaded() == A  # counterfactual: a stale heap entry would say a1
    assert pool.in_flight(A1) == 1 and len(pool) == 4 and B in pool


def test_release_without_a_request_and_non_members_are_typed_errors() -> None:
    pool = CandidateSet([A])
    with pytest.raises(InvalidRecordError, match="in flight"):
        pool.release(A)
    with pytest.raises(InvalidRecordError, match="not a member"):
        pool.reserve(B)
    with pytest.raises(InvalidRecordError, match="ReplicaKey"):
        CandidateSet(["a"])  # type: ignore[list-item]


def test_membership_changes_keep_loads_and_empty_set_picks_nothing() -> None:
    pool = CandidateSet([A, B])
    pool.reserve(B)
    pool.add(C)
    pool.add(B)  # already a member: its load stays
    assert pool.in_flight(B) == 1 and pool.least_loaded() == A
    pool.discard(A)
    pool.discard(A)
    assert pool.least_loaded() == C and set(pool) == {B, C}
    empty = CandidateSet()
    assert empty.least_loaded() is None
    assert empty.pick(Index(), "m", (1, 2), now=0.0) is None


def test_the_heap_stays_bounded_under_churn() -> None:
    pool = CandidateSet([A, B])
    for _ in range(10_000):
        pool.reserve(A)
        pool.release(A)
    assert len(pool._heap) <= 2 * len(pool) + 64
    assert pool.least_loaded() == A


@pytest.mark.parametrize("backend", BACKENDS)
def test_pick_prefers_the_hot_member_until_it_is_overloaded(backend: Backend) -> None:
    ix = Index(backend=backend)
    ix.observe("m", (1, 2, 3), B, now=0.0)
    pool = CandidateSet([A, B, C])
    assert pool.pick(ix, "m", (1, 2, 3), now=1.0) == B
    pool.reserve(B)
    pool.reserve(B)  # 2 > 0 * 1.5 + 1: overloaded
    assert pool.pick(ix, "m", (1, 2, 3), now=1.0) == A  # weightless, first by name
    pool.reserve(A)
    pool.reserve(A)
    pool.reserve(C)
    pool.reserve(C)
    # Every member busy alike: b is hot again.
    assert pool.pick(ix, "m", (1, 2, 3), now=1.0) == B


def test_pick_on_an_unknown_model_is_the_least_eligible_by_name() -> None:
    pool = CandidateSet([C, B])
    assert pool.pick(Index(), "other", (9,), now=0.0) == B
    with pytest.raises(InvalidRecordError):
        pool.pick(Index(), "other", (-1,), now=0.0)


ops = st.lists(
    st.tuples(
        st.sampled_from(("observe", "reserve", "release", "pick", "pick", "add", "discard")),
        st.sampled_from((A, B, C, A1, ReplicaKey("d"))),
        st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple),
        st.sampled_from((0.0, 0.5, 3.0, 200.0)),
    ),
    max_size=40,
)
configs = st.builds(
    Config,
    min_prefix_match=st.sampled_from((0.0, 0.5, 1.0)),
    balance_abs_threshold=st.integers(0, 2),
    balance_rel_threshold=st.sampled_from((1.0, 1.5, float("inf"))),
    ttl=st.sampled_from((10.0, 300.0)),
    half_life=st.sampled_from((0.0, 2.0, 120.0)),
)


@settings(max_examples=scaled_examples(2.0))
@given(steps=ops, cfg=configs, backend=st.sampled_from(BACKENDS))
def test_pick_is_select_over_decide_on_the_same_members(
    steps: list[tuple[str, ReplicaKey, tuple[int, ...], float]], cfg: Config, backend: Backend
) -> None:
    ix = Index(cfg, backend=backend)
    pool = CandidateSet([A, B])
    now = 0.0
    for op, key, chain, dt in steps:
        now += dt
        if op == "observe":
            ix.observe("m", chain, key, now)
        elif op == "reserve" and key in pool:
            pool.reserve(key)
        elif op == "release" and key in pool and pool.in_flight(key):
            pool.release(key)
        elif op == "add":
            pool.add(key)
        elif op == "discard":
            pool.discard(key)
        elif op == "pick":
            cands = pool.candidates()
            want = select(cands, ix.decide("m", chain, cands, now), cfg)
            assert pool.pick(ix, "m", chain, now, cfg) == want


@settings(max_examples=scaled_examples(1.0))
@given(
    writes=st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 5), st.floats(-1e4, 1e4)), max_size=12
    ),
    now=st.floats(-2e4, 2e4),
    ttl=st.sampled_from((0.0, 5.0, 300.0)),
    half_life=st.sampled_from((0.0, 0.25, 2.0, 120.0)),
)
def test_weighs_agrees_with_the_weight_the_tree_reports(
    writes: list[tuple[str, int, float]], now: float, ttl: float, half_life: float
) -> None:
    # first_weightless (CandidateSet.pick) tests weights with Weights.weighs, which skips
    # building the sums: it must say "positive" exactly where the weight is.
    from prefixcache import RadixTree

    tree: RadixTree[str] = RadixTree(ttl=ttl, half_life=half_life)
    for value, h, t in sorted(writes, key=lambda w: w[2]):
        tree.insert((h, h + 1), value, t)
    for value in "abc":
        owner = tree._weights.owners.get(value)
        want = tree.weight(value, now) > 0.0
        assert (owner is not None and tree._weights.weighs(owner, now)) == want
