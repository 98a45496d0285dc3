"""Index rules, checked on the naive ReferenceIndex and on Index (both backends).

The same hand-written cases run against every provider, so the reference model itself is
tested against the contract (the stateful agreement machine only shows that the two agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from prefixcache import Candidate, Config, Index, ReplicaKey
from prefixcache.reference import (
    Advance,
    Decide,
    Observe,
    ReferenceIndex,
    order_by_weight,
    run_operations,
)

Maker = Callable[[Config], Any]


def _providers() -> list[Any]:
    makers: list[Any] = [pytest.param(ReferenceIndex, id="reference")]
    for backend in ("dict", "datrie"):
        makers.append(
            pytest.param(lambda cfg, b=backend: Index(cfg, backend=b), id=f"index-{backend}")
        )
    return makers


providers = pytest.mark.parametrize("make", _providers())

A, B, C = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")
A1 = ReplicaKey("a", 1)
CFG = Config(ttl=100.0, half_life=10.0)


def cands(*keys: ReplicaKey) -> list[Candidate]:
    return [Candidate(k) for k in keys]


@providers
def test_no_tree_no_match_cold_order_by_key(make: Maker) -> None:
    idx = make(CFG)
    d = idx.decide("m", (1, 2), cands(C, A1, B, A), 0.0)
    assert (d.hot, d.match_ratio) == (None, 0.0)
    assert d.cold_order == (A, A1, B, C)
    assert idx.models() == frozenset()  # decide never creates a tree


@providers
def test_match_ratio_is_depth_over_chain_length(make: Maker) -> None:
    idx = make(CFG)
    assert idx.observe("m", (1, 2, 3), A, 0.0) is True
    d = idx.decide("m", (1, 2, 3, 4, 5, 6), cands(A, B), 0.0)
    assert (d.hot, d.match_ratio) == (A, 0.5)
    d = idx.decide("m", (1, 2, 3), cands(A, B), 0.0)
    assert (d.hot, d.match_ratio) == (A, 1.0)


@providers
def test_empty_chain_decides_cold_only(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1,), A, 0.0)
    d = idx.decide("m", (), cands(A, B), 0.0)
    assert (d.hot, d.match_ratio, d.cold_order) == (None, 0.0, (B, A))


@providers
def test_match_owner_must_be_a_candidate(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2), A, 0.0)
    d = idx.decide("m", (1, 2), cands(B, C), 0.0)
    # Counterfactual: with A among the candidates this is a full match.
    assert (d.hot, d.match_ratio) == (None, 0.0)


@providers
def test_last_writer_owns_shared_prefix_nodes(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2, 3), A, 0.0)
    idx.observe("m", (1, 2), B, 1.0)
    # Deepest live node on (1, 2, 3) is node 3, still A's.
    assert idx.decide("m", (1, 2, 3), cands(A, B), 1.0).hot == A
    # A diverging query matches at the shared depth, now B's.
    d = idx.decide("m", (1, 2, 9), cands(A, B), 1.0)
    assert (d.hot, d.match_ratio) == (B, 2 / 3)


@providers
def test_observe_true_unless_same_key_owned_whole_chain_live(make: Maker) -> None:
    idx = make(CFG)
    assert idx.observe("m", (1, 2), A, 0.0) is True  # new
    assert idx.observe("m", (1, 2), A, 1.0) is False  # already A's, live
    assert idx.observe("m", (1, 2, 3), A, 2.0) is True  # extended
    assert idx.observe("m", (1, 2), A, 3.0) is False  # A owns (1, 2) fully (deepest = 2)
    assert idx.observe("m", (1, 2), B, 4.0) is True  # another key
    assert idx.observe("m", (1, 2), A, 5.0) is True  # taken back
    assert idx.observe("m", (1, 2), A, 5.0 + 100.0) is False  # age == ttl: still live
    assert idx.observe("m", (1, 2), A, 205.5) is True  # expired: new again


@providers
def test_observe_ignores_empty_chain_and_empty_node_id(make: Maker) -> None:
    idx = make(CFG)
    assert idx.observe("m", (), A, 0.0) is False
    assert idx.observe("m", (1,), ReplicaKey(""), 0.0) is False
    assert idx.decide("m", (1,), cands(A, ReplicaKey("")), 0.0).hot is None


@providers
def test_expiry_boundary_age_equal_ttl_is_live(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1,), A, 0.0)
    assert idx.decide("m", (1,), cands(A), 100.0).hot == A
    assert idx.decide("m", (1,), cands(A), math.nextafter(100.0, math.inf)).hot is None


@providers
def test_longest_match_walks_through_expired_nodes(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2, 3), A, 0.0)
    idx.observe("m", (1, 2, 3, 4), B, 50.0)  # refreshes 1..4 for B
    idx.observe("m", (1,), C, 60.0)
    # At 151, node 1..4 (B, seen 50) are expired, node 1 (C, seen 60) is live.
    d = idx.decide("m", (1, 2, 3, 4), cands(A, B, C), 151.0)
    assert (d.hot, d.match_ratio) == (C, 0.25)


@providers
def test_cold_order_by_decayed_weight_then_key(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2), A, 0.0)  # 2 nodes seen at 0
    idx.observe("m", (5,), B, 10.0)  # 1 node seen at 10
    # At 10: A weighs 2 * 0.5 = 1.0, B weighs 1.0: tied, so by node id.
    assert idx.decide("m", (), cands(B, A, C), 10.0).cold_order == (C, A, B)
    # At 20: A weighs 2 * 0.25 = 0.5, B 0.5: still tied.
    assert idx.decide("m", (), cands(B, A, C), 20.0).cold_order == (C, A, B)
    idx.observe("m", (6,), B, 20.0)
    # B: 0.5 + 1 = 1.5 > A 0.5.
    assert idx.decide("m", (), cands(B, A, C), 20.0).cold_order == (C, A, B)
    idx.observe("m", (7, 8, 9, 10), A, 20.0)
    assert idx.decide("m", (), cands(B, A, C), 20.0).cold_order == (C, B, A)


@providers
def test_expired_entries_weigh_nothing(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2, 3), A, 0.0)
    idx.observe("m", (9,), B, 10.0)
    # At 100: A weighs 3 * 2**-10 > B 2**-9.
    assert idx.decide("m", (), cands(A, B), 100.0).cold_order == (B, A)
    # At 101: A is expired and weighs 0 < B 2**-9.1.
    assert idx.decide("m", (), cands(A, B), 101.0).cold_order == (A, B)


@providers
def test_invalidate_drops_one_replica(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2), A, 0.0)
    idx.observe("m", (3,), A1, 0.0)
    idx.invalidate("m", A)
    assert idx.decide("m", (1, 2), cands(A, A1), 0.0).hot is None
    assert idx.decide("m", (3,), cands(A, A1), 0.0).hot == A1


@providers
def test_invalidate_node_drops_every_replica(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2), A, 0.0)
    idx.observe("m", (3,), A1, 0.0)
    idx.observe("m", (4,), B, 0.0)
    idx.invalidate_node("m", "a")
    assert idx.decide("m", (1, 2), cands(A, A1, B), 0.0).hot is None
    assert idx.decide("m", (3,), cands(A, A1, B), 0.0).hot is None
    assert idx.decide("m", (4,), cands(A, A1, B), 0.0).hot == B


@providers
def test_invalidate_shallower_owner_keeps_deeper_entries(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2, 3), A, 0.0)
    idx.observe("m", (1,), B, 1.0)
    idx.invalidate("m", B)
    d = idx.decide("m", (1, 2, 3), cands(A, B), 1.0)
    assert (d.hot, d.match_ratio) == (A, 1.0)
    d = idx.decide("m", (1, 7), cands(A, B), 1.0)
    assert (d.hot, d.match_ratio) == (None, 0.0)  # node 1 now has no owner


@providers
def test_invalidate_never_creates_a_tree(make: Maker) -> None:
    idx = make(CFG)
    idx.invalidate("m", A)
    idx.invalidate_node("m2", "a")
    idx.evict(0.0)
    assert idx.models() == frozenset()


@providers
def test_models_are_separate(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m1", (1,), A, 0.0)
    idx.observe("m2", (1,), B, 0.0)
    assert idx.decide("m1", (1,), cands(A, B), 0.0).hot == A
    assert idx.decide("m2", (1,), cands(A, B), 0.0).hot == B
    assert idx.models() == frozenset({"m1", "m2"})
    idx.invalidate_node("m1", "a")
    assert idx.decide("m2", (1,), cands(A, B), 0.0).hot == B


@providers
def test_evict_sweeps_expired_and_keeps_live(make: Maker) -> None:
    idx = make(CFG)
    idx.observe("m", (1, 2), A, 0.0)
    idx.observe("m", (1, 2, 3), B, 50.0)
    idx.observe("m", (7,), C, 120.0)
    idx.evict(151.0)  # B's nodes (seen 50) expire; C's (seen 120) stay
    assert idx.decide("m", (1, 2, 3), cands(A, B, C), 151.0).hot is None
    assert idx.decide("m", (7,), cands(A, B, C), 151.0).hot == C
    # After the sweep, going back in time does not resurrect B.
    assert idx.decide("m", (1, 2, 3), cands(A, B, C), 120.0).hot is None


def test_reference_entry_count_and_pruning() -> None:
    idx = ReferenceIndex(CFG)
    idx.observe("m", (1, 2, 3), A, 0.0)
    idx.observe("m", (1, 4), B, 0.0)
    assert idx.entry_count("m") == 4  # 1 (B), 2, 3 (A), 4 (B)
    assert idx.invalidate("m", A) == 2
    assert idx.entry_count("m") == 2
    assert idx.invalidate_node("m", "b") == 2
    assert idx.entry_count("m") == 0
    assert idx.evict(1e9) == 0
    assert idx.models() == frozenset()  # the emptied tree was dropped


def test_reference_weights_are_exact_sums() -> None:
    idx = ReferenceIndex(CFG)
    idx.observe("m", (1, 2), A, 0.0)
    idx.observe("m", (3,), A, 10.0)
    w = idx.weights_for("m", [A, B], 10.0)
    assert w == {A: 2 * 0.5 + 1.0, B: 0.0}


def test_reference_half_life_zero_weighs_one() -> None:
    idx = ReferenceIndex(Config(ttl=100.0, half_life=0.0))
    idx.observe("m", (1, 2, 3), A, 0.0)
    assert idx.weights_for("m", [A], 99.0) == {A: 3.0}


def test_reference_very_deep_chain_does_not_recurse() -> None:
    idx = ReferenceIndex(CFG)
    chain = tuple(range(5000))
    idx.observe("m", chain, A, 0.0)
    assert idx.invalidate("m", A) == 5000


def test_order_by_weight_ties_near_equal_weights() -> None:
    w = {A: 0.1 + 0.2, C: 0.3, B: 0.30001}
    # 0.1 + 0.2 > 0.3 in floats, but within 1e-9: a tie, ordered by node id (a plain sort
    # would put C first).
    assert order_by_weight(w) == (A, C, B)


def test_run_operations_clock_and_results() -> None:
    ops = [
        Observe(model="m", chain=(1,), key=A),
        Advance(seconds=100.0),
        Decide(model="m", chain=(1,), candidates=(Candidate(A),)),
        Advance(seconds=0.5),
        Decide(model="m", chain=(1,), candidates=(Candidate(A),)),
    ]
    res = run_operations(ReferenceIndex(CFG), ops)
    assert res[0] is True and res[1] is None
    assert res[2].hot == A  # type: ignore[union-attr]
    assert res[4].hot is None  # type: ignore[union-attr]


@providers
@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "7"])
def test_out_of_range_block_hashes_raise_and_store_nothing(make: Maker, bad: object) -> None:
    idx = make(CFG)
    with pytest.raises(ValueError, match=r"chain|key|hash"):
        idx.observe("m", (1, bad), A, 0.0)
    with pytest.raises(ValueError, match=r"chain|key|hash"):
        idx.decide("m", (1, bad), cands(A), 0.0)
    assert idx.decide("m", (1,), cands(A), 0.0).hot is None  # the valid prefix was not stored


@providers
def test_uint64_boundaries_are_valid_block_hashes(make: Maker) -> None:
    idx = make(CFG)
    chain = (0, 2**64 - 1)
    assert idx.observe("m", chain, A, 0.0) is True
    assert idx.decide("m", chain, cands(A), 0.0).match_ratio == 1.0
