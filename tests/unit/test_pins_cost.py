"""pick_lowest_cost with a session pin (CostCandidate.pinned_tokens) and a host tie rank
(CostCandidate.tie_rank): both default to 0, which keeps the policy as it was."""

from __future__ import annotations

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import (
    DEFAULT_PIN_TOKENS,
    DEFAULT_SHARE_FACTOR,
    CostCandidate,
    ReplicaKey,
    explain_lowest_cost,
    pick_lowest_cost,
)

A, B = ReplicaKey("a"), ReplicaKey("b")


def test_a_pin_outweighs_cached_savings_elsewhere() -> None:
    pinned = CostCandidate(key=A, pinned_tokens=DEFAULT_PIN_TOKENS)
    cached = CostCandidate(key=B, cached_tokens=30_000)
    assert pick_lowest_cost([pinned, cached], prompt_tokens=30_000) == A
    # Counterfactual: without the pin the cached replica wins.
    assert pick_lowest_cost([CostCandidate(key=A), cached], prompt_tokens=30_000) == B


def test_a_pinned_replica_is_exempt_from_the_fair_share_guard() -> None:
    guard = {"share_factor": DEFAULT_SHARE_FACTOR, "share_tokens": 0.0}
    hot = CostCandidate(key=A, recent_dispatches=50, pinned_tokens=DEFAULT_PIN_TOKENS)
    cold = CostCandidate(key=B, recent_dispatches=0)
    assert pick_lowest_cost([hot, cold], prompt_tokens=100, **guard) == A
    # Counterfactual: 50 > 25 * 1.1 + 2, so without the pin it is filtered out.
    unpinned = CostCandidate(key=A, recent_dispatches=50)
    assert pick_lowest_cost([unpinned, cold], prompt_tokens=100, **guard) == B
    e = explain_lowest_cost([hot, cold], prompt_tokens=100, **guard)
    assert [t.excluded_by for t in e.candidates] == [None, None]


def test_a_pinned_replica_pays_no_share_price() -> None:
    # 40,000 dispatches above the other replica's would cost 32 x 40,000 = 1,280,000 tokens,
    # more than the pin's 2**20: a session's turns are not the traffic's share.
    hot = CostCandidate(key=A, recent_dispatches=40_000, pinned_tokens=DEFAULT_PIN_TOKENS)
    cold = CostCandidate(key=B, recent_dispatches=0)
    assert pick_lowest_cost([hot, cold], prompt_tokens=100) == A
    e = explain_lowest_cost([hot, cold], prompt_tokens=100)
    assert [t.share_term for t in e.candidates] == [0.0, 0.0]
    # Counterfactual: unpinned, the same share costs 1,280,000 tokens and the request moves.
    unpinned = CostCandidate(key=A, recent_dispatches=40_000)
    assert pick_lowest_cost([unpinned, cold], prompt_tokens=100) == B
    e = explain_lowest_cost([unpinned, cold], prompt_tokens=100)
    assert [t.share_term for t in e.candidates] == [1_280_000.0, 0.0]


def test_tie_rank_orders_ties_before_the_key_and_only_ties() -> None:
    a = CostCandidate(key=A, tie_rank=3)
    b = CostCandidate(key=B, tie_rank=1)
    assert pick_lowest_cost([a, b], prompt_tokens=100) == B
    # Counterfactual: equal ranks fall back to the key.
    assert pick_lowest_cost([CostCandidate(key=A), CostCandidate(key=B)], prompt_tokens=100) == A
    # A rank beats a lower cost within the margin (90 vs 100 tokens) ...
    cheaper = CostCandidate(key=A, cached_tokens=10, tie_rank=9)
    assert pick_lowest_cost([cheaper, b], prompt_tokens=100) == B
    # ... never beyond it (1000 vs 2000 tokens, more than 512 apart).
    much_cheaper = CostCandidate(key=A, cached_tokens=1000, tie_rank=9)
    assert pick_lowest_cost([much_cheaper, b], prompt_tokens=2000) == A


@pytest.mark.parametrize("field", ["pinned_tokens", "tie_rank"])
@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_new_fields_are_validated(field: str, bad: object) -> None:
    with pytest.raises(InvalidRecordError) as err:
        CostCandidate(key=A, **{field: bad})  # type: ignore[arg-type]
    assert err.value.field == field
