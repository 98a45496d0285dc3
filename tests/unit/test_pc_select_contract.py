"""select's contract case by case: the fractional relative-guard boundary and the tiers in one
table."""

from __future__ import annotations

from prefixcache import Candidate, Config, PrefixDecision, ReplicaKey, select

A, A1, B, C = ReplicaKey("a"), ReplicaKey("a", 1), ReplicaKey("b"), ReplicaKey("c")


def test_select_guard_fractional_rel_boundary() -> None:
    # Contract: "Eligible iff in_flight <= min_if + balance_abs_threshold and in_flight <=
    # min_if * balance_rel_threshold + 1."
    cfg = Config(balance_abs_threshold=100, balance_rel_threshold=1.5)
    hot = PrefixDecision(A, 1.0, (B, A))
    # min_if = 3: rel bound 5.5
    assert select([Candidate(A, 5), Candidate(B, 3)], hot, cfg) == A
    assert select([Candidate(A, 6), Candidate(B, 3)], hot, cfg) == B
    cfg = Config(balance_abs_threshold=2, balance_rel_threshold=100.0)
    assert select([Candidate(A, 5), Candidate(B, 3)], hot, cfg) == A
    assert select([Candidate(A, 6), Candidate(B, 3)], hot, cfg) == B


def test_select_tiers() -> None:
    # Contract: "the hot replica if decision.has_hot, match_ratio >= min_prefix_match and it is
    # eligible; else the first eligible key in cold_order; else the eligible candidate with
    # the least in-flight (ties by node id, replica); else None (empty input)."
    cfg = Config(min_prefix_match=0.5)
    cands = [Candidate(C, 0), Candidate(B, 0), Candidate(A1, 0), Candidate(A, 9)]
    assert select(cands, PrefixDecision(A1, 0.5, (B,)), cfg) == A1
    assert select(cands, PrefixDecision(A1, 0.49, (B,)), cfg) == B
    assert select(cands, PrefixDecision(A, 1.0, (A, C)), cfg) == C  # hot overloaded
    assert select(cands, PrefixDecision(None, 0.0, ()), cfg) == A1  # least, ties by key
    assert select(cands, PrefixDecision(None, 0.0, (ReplicaKey("zz"), A)), cfg) == A1
    assert select([], PrefixDecision(A, 1.0, (A,)), cfg) is None
