"""``select``: tiers, the shared load guard and its exact boundaries."""

from __future__ import annotations

import itertools

import pytest

from clusterrouting import within_load_guard
from prefixcache import Candidate, Config, PrefixDecision, ReplicaKey, select

A, B, C, D = (ReplicaKey(n) for n in "abcd")
A1 = ReplicaKey("a", 1)
STRANGER = ReplicaKey("zz")


def cands(**loads: int) -> list[Candidate]:
    return [Candidate(ReplicaKey(node), f) for node, f in loads.items()]


def test_empty_candidates_give_none() -> None:
    assert select([], PrefixDecision(A, 1.0, (A,))) is None
    assert select([], PrefixDecision(None, 0.0, ())) is None


def test_hot_wins_when_matched_enough_and_eligible() -> None:
    # Counterfactual: without the hot tier, cold order would pick b.
    assert select(cands(a=0, b=0), PrefixDecision(A, 0.5, (B, A))) == A


def test_ratio_exactly_min_prefix_match_is_enough() -> None:
    cfg = Config(min_prefix_match=0.3)
    assert select(cands(a=0, b=0), PrefixDecision(A, 0.3, (B, A)), cfg) == A


def test_ratio_just_below_min_prefix_match_falls_to_cold_order() -> None:
    cfg = Config(min_prefix_match=0.3)
    below = 0.29999999999999993  # the float just under 0.3
    assert below < 0.3
    assert select(cands(a=0, b=0), PrefixDecision(A, below, (B, A)), cfg) == B


def test_min_prefix_match_zero_accepts_any_hot() -> None:
    cfg = Config(min_prefix_match=0.0)
    assert select(cands(a=0, b=0), PrefixDecision(A, 0.0, (B, A)), cfg) == A


def test_min_prefix_match_one_needs_a_full_match() -> None:
    cfg = Config(min_prefix_match=1.0)
    assert select(cands(a=0, b=0), PrefixDecision(A, 1.0, (B, A)), cfg) == A
    assert select(cands(a=0, b=0), PrefixDecision(A, 0.99, (B, A)), cfg) == B


# The absolute guard alone binds when min_if is large: min_if=10, abs=2, rel=1.5 gives
# 10 + 2 = 12 (absolute) against 10 * 1.5 + 1 = 16 (relative).
def test_abs_guard_boundary_in_flight_exactly_min_plus_abs_is_eligible() -> None:
    cfg = Config(balance_abs_threshold=2, balance_rel_threshold=1.5)
    assert select(cands(a=12, b=10), PrefixDecision(A, 1.0, (B, A)), cfg) == A


def test_abs_guard_one_above_is_overloaded() -> None:
    cfg = Config(balance_abs_threshold=2, balance_rel_threshold=1.5)
    assert select(cands(a=13, b=10), PrefixDecision(A, 1.0, (B, A)), cfg) == B


# The relative guard alone binds when abs is large: min_if=2, rel=1.5 gives 2 * 1.5 + 1 = 4
# against 2 + 10 = 12.
def test_rel_guard_boundary_in_flight_exactly_min_times_rel_plus_one_is_eligible() -> None:
    cfg = Config(balance_abs_threshold=10, balance_rel_threshold=1.5)
    assert select(cands(a=4, b=2), PrefixDecision(A, 1.0, (B, A)), cfg) == A


def test_rel_guard_one_above_is_overloaded() -> None:
    cfg = Config(balance_abs_threshold=10, balance_rel_threshold=1.5)
    assert select(cands(a=5, b=2), PrefixDecision(A, 1.0, (B, A)), cfg) == B


def test_rel_guard_with_zero_min_allows_exactly_one() -> None:
    # min_if = 0: 0 * rel + 1 = 1, whatever rel is.
    cfg = Config(balance_abs_threshold=10, balance_rel_threshold=3.0)
    assert select(cands(a=1, b=0), PrefixDecision(A, 1.0, (B, A)), cfg) == A
    assert select(cands(a=2, b=0), PrefixDecision(A, 1.0, (B, A)), cfg) == B


def test_abs_threshold_zero_only_least_loaded_are_eligible() -> None:
    cfg = Config(balance_abs_threshold=0)
    assert select(cands(a=1, b=0, c=0), PrefixDecision(A, 1.0, (A, C, B)), cfg) == C


def test_hot_not_a_candidate_is_not_chosen() -> None:
    assert select(cands(a=0, b=0), PrefixDecision(STRANGER, 1.0, (B, A))) == B


def test_no_hot_uses_cold_order() -> None:
    assert select(cands(a=0, b=0, c=0), PrefixDecision(None, 0.0, (C, A, B))) == C


def test_cold_order_skips_ineligible_and_strangers() -> None:
    # c is overloaded (5 > 0 + 2), the stranger is not a candidate: b is the first eligible.
    decision = PrefixDecision(None, 0.0, (STRANGER, C, B, A))
    assert select(cands(a=0, b=1, c=5), decision) == B


def test_overloaded_hot_falls_to_first_eligible_cold() -> None:
    decision = PrefixDecision(A, 1.0, (A, C, B))
    assert select(cands(a=9, b=0, c=0), decision) == C


def test_fallback_is_least_loaded_ties_by_node_then_replica() -> None:
    # Nothing usable in the decision: least in-flight, then node id, then replica.
    candidates = [
        Candidate(B, 1),
        Candidate(A1, 1),
        Candidate(ReplicaKey("a", 2), 1),
        Candidate(C, 3),
    ]
    assert select(candidates, PrefixDecision(STRANGER, 1.0, (STRANGER,))) == A1
    assert select(candidates, PrefixDecision(None, 0.0, ())) == A1


def test_returns_the_key_not_a_candidate() -> None:
    got = select(cands(a=0), PrefixDecision(None, 0.0, ()))
    assert isinstance(got, ReplicaKey)
    assert got == A


def test_duplicate_key_is_eligible_through_any_entry() -> None:
    # Each candidate entry is tested on its own: a's idle entry is eligible, so the hot a
    # wins although its other entry (9) is overloaded. Counterfactual: letting the last
    # entry stand for the key would send the request to b.
    candidates = [Candidate(A, 0), Candidate(B, 0), Candidate(A, 9)]
    assert select(candidates, PrefixDecision(A, 1.0, (A, B))) == A


def test_agrees_with_the_shared_load_guard_everywhere() -> None:
    # For a hot key, select picks it iff within_load_guard says so (one definition).
    for abs_t, rel_t, hot_load, other_load in itertools.product(
        (0, 1, 2, 5), (1.0, 1.5, 2.0), range(9), range(6)
    ):
        cfg = Config(balance_abs_threshold=abs_t, balance_rel_threshold=rel_t)
        got = select(cands(a=hot_load, b=other_load), PrefixDecision(A, 1.0, (B, A)), cfg)
        min_if = min(hot_load, other_load)
        expected_hot = within_load_guard(hot_load, min_if, slack=abs_t, factor=rel_t)
        assert (got == A) == expected_hot, (abs_t, rel_t, hot_load, other_load)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 1.0])
def test_does_not_read_anything_but_arguments(ratio: float) -> None:
    c = cands(a=0, b=0)
    d = PrefixDecision(A, ratio, (B, A))
    assert select(c, d) == select(c, d) == A
    assert c == cands(a=0, b=0)


def test_duplicate_keys_every_entry_counts_towards_the_minimum() -> None:
    # min_if is over all candidates (0 here), so B at 3 is not eligible (3 > 0 + 2);
    # A is eligible through its idle entry. Counterfactual: taking the last entry per key
    # (A at 5) would make min_if 3 and pick B from the cold order.
    a, b = ReplicaKey("A"), ReplicaKey("B")
    cands = [Candidate(a, 0), Candidate(a, 5), Candidate(b, 3)]
    assert select(cands, PrefixDecision(None, 0.0, (b, a))) == a


def test_decide_accepts_bare_replica_keys_and_empty_decision_defaults() -> None:
    from prefixcache import Index

    ix = Index()
    a, b = ReplicaKey("A"), ReplicaKey("B")
    ix.observe("m", (1, 2, 3), b, 0.0)
    d = ix.decide("m", (1, 2, 3, 4), [a, b], 1.0)
    assert d == ix.decide("m", (1, 2, 3, 4), [Candidate(a), Candidate(b, 7)], 1.0)
    assert d.hot == b and d.match_ratio == 0.75 and d.cold_order == (a, b)
    assert PrefixDecision() == PrefixDecision(None, 0.0, ())
