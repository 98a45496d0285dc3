"""Index-specific behaviour beyond the shared rules of tests/unit/test_pc_provider_rules.py."""

from __future__ import annotations

import pytest

from prefixcache import BACKENDS, Candidate, Config, Index, Provider, RadixTree, ReplicaKey
from prefixcache._decision import order_cold
from prefixcache.reference import ReferenceIndex

A, B, C = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")


@pytest.fixture(params=BACKENDS)
def index(request: pytest.FixtureRequest) -> Index:
    return Index(Config(ttl=10.0, half_life=5.0), backend=request.param)


def test_index_and_reference_satisfy_provider() -> None:
    assert isinstance(Index(), Provider)
    assert isinstance(ReferenceIndex(), Provider)


def test_tree_is_created_by_observe_only(index: Index) -> None:
    assert index.tree("m") is None
    index.decide("m", (1, 2), [Candidate(A)], 0.0)
    assert index.invalidate("m", A) == 0
    assert index.invalidate_node("m", "a") == 0
    assert index.evict(0.0) == 0
    assert index.tree("m") is None and index.models() == frozenset()
    assert index.observe("m", (1, 2), A, 0.0) is True
    tree = index.tree("m")
    assert isinstance(tree, RadixTree)
    assert (tree.ttl, tree.half_life, tree.backend) == (10.0, 5.0, index.backend)
    assert tree.items() == [((1,), A, 0.0), ((1, 2), A, 0.0)]
    assert index.models() == frozenset({"m"})


def test_emptied_tree_is_dropped(index: Index) -> None:
    # An emptied tree kept forever is memory a stream of model names never gives back.
    index.observe("m", (1,), A, 0.0)
    index.observe("n", (1, 2), A, 0.0)
    index.observe("n", (3,), B, 0.0)
    emptied = index.tree("m")
    assert index.invalidate("m", A) == 1
    assert index.models() == frozenset({"n"}) and index.tree("m") is None
    assert emptied is not None and emptied.closed
    assert index.invalidate_node("n", "a") == 2
    assert index.models() == frozenset({"n"})  # B's entry keeps it
    assert index.evict(20.0) == 1
    assert index.models() == frozenset() and index.tree("n") is None
    # The model comes back with its next observe, in a new tree.
    assert index.observe("m", (1,), B, 20.0) is True
    assert index.tree("m") is not emptied and index.models() == frozenset({"m"})


def test_observe_return_values(index: Index) -> None:
    assert index.observe("m", (1, 2), A, 0.0) is True  # new
    assert index.observe("m", (1, 2), A, 1.0) is False  # already owned, live
    assert index.observe("m", (1, 2, 3), A, 1.0) is True  # extended
    assert index.observe("m", (1, 2), B, 1.0) is True  # another owner
    assert index.observe("m", (1, 2), A, 20.0) is True  # A's entry had expired
    assert index.observe("m", (), A, 0.0) is False
    assert index.observe("m", (1,), ReplicaKey(""), 0.0) is False


def test_decide_then_observe_reuses_the_walk_only_when_unchanged(index: Index) -> None:
    chain = (1, 2, 3)
    index.observe("m", chain, A, 0.0)
    cands = [Candidate(A), Candidate(B)]
    d = index.decide("m", chain, cands, 1.0)
    assert d.hot == A and d.match_ratio == 1.0
    # The tree changes between decide and observe: the remembered walk must not be used.
    index.invalidate("m", A)
    assert index.observe("m", chain, B, 1.0) is True
    tree = index.tree("m")
    assert tree is not None
    tree._check()
    assert tree.items() == [((1,), B, 1.0), ((1, 2), B, 1.0), ((1, 2, 3), B, 1.0)]
    d = index.decide("m", chain, cands, 1.0)
    assert index.observe("m", chain, B, 1.0) is False
    tree._check()


def test_decide_hot_must_be_a_candidate(index: Index) -> None:
    index.observe("m", (1, 2), A, 0.0)
    d = index.decide("m", (1, 2), [Candidate(B), Candidate(C)], 0.0)
    assert d.hot is None and d.match_ratio == 0.0
    assert d.cold_order == (B, C)


def test_cold_order_by_weight_then_key_with_duplicates(index: Index) -> None:
    index.observe("m", (1, 2, 3), A, 0.0)
    index.observe("m", (7,), C, 0.0)
    d = index.decide("m", (9,), [Candidate(A), Candidate(C), Candidate(B), Candidate(B)], 0.0)
    assert d.cold_order == (B, B, C, A)


def test_invalid_chain_raises_even_without_a_tree(index: Index) -> None:
    with pytest.raises(ValueError, match="key"):
        index.decide("m", (1, -1), [Candidate(A)], 0.0)
    with pytest.raises(ValueError):
        index.observe("m", (1, 2**64), A, 0.0)
    assert index.tree("m") is None  # a rejected observe leaves no tree behind
    assert len(index.tree("m") or ()) == 0


def test_observe_requires_a_replica_key(index: Index) -> None:
    with pytest.raises(TypeError):
        index.observe("m", (1,), "a", 0.0)  # type: ignore[arg-type]


def test_invalidate_node_drops_every_replica_only_of_that_node(index: Index) -> None:
    a1 = ReplicaKey("a", 1)
    index.observe("m", (1,), A, 0.0)
    index.observe("m", (2,), a1, 0.0)
    index.observe("m", (3,), B, 0.0)
    index.observe("other", (1,), A, 0.0)
    assert index.invalidate_node("m", "a") == 2
    tree = index.tree("m")
    assert tree is not None and [v for _, v, _ in tree.items()] == [B]
    assert index.decide("other", (1,), [Candidate(A)], 0.0).hot == A


def test_evict_sweeps_every_model(index: Index) -> None:
    index.observe("m1", (1,), A, 0.0)
    index.observe("m2", (1, 2), A, 0.0)
    index.observe("m2", (5,), B, 8.0)
    assert index.evict(10.0) == 0  # age == ttl is live
    assert index.evict(10.5) == 3
    assert index.models() == frozenset({"m2"})  # m1, emptied, was dropped; B's entry lives


def test_order_cold_near_equal_weights_tie_by_key() -> None:
    # 1e-12 apart: equal for ordering, so the key decides (not the float noise).
    assert order_cold([C, B, A], [1.0, 2.0, 1.0 + 1e-12]) == (A, C, B)
    # Clearly different weights order by weight.
    assert order_cold([C, B, A], [1.0, 2.0, 1.5]) == (C, A, B)
    assert order_cold([], []) == ()


def test_index_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Index(backend="btree")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Index(config={"ttl": 1})  # type: ignore[arg-type]


def test_a_rejected_chain_creates_no_tree() -> None:
    from clusterrouting import InvalidRecordError
    from prefixcache import Index, ReplicaKey

    for backend in ("dict", "datrie"):
        ix = Index(backend=backend)
        with pytest.raises(InvalidRecordError):
            ix.observe("m", (1, 2**64), ReplicaKey("a"), 0.0)
        assert ix.models() == frozenset()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "gap",
    # Not exactly 1e-9: there the answer rests on the last bit of each weight, which the contract
    # lets differ from the naive sum (1e-9 relative).
    [0.0, 1e-12, 0.5e-9, 0.999e-9, 1.001e-9, 1.5e-9, 1.999e-9, 2.0e-9, 2.001e-9, 2.5e-9, 1e-6],
)
def test_cold_order_matches_reference_around_the_near_tie_boundary(
    backend: str, gap: float
) -> None:
    # Two owners whose weights differ by about ``gap`` relative (b's entry is written later,
    # so it decays less): decide orders by the unscaled sums only when every gap exceeds
    # 2e-9 and otherwise applies order_cold's rule; both must equal the reference's answer.
    import math

    cfg = Config(ttl=1e9, half_life=1.0)
    dt = math.log2(1.0 + gap)
    keys = [ReplicaKey("z"), ReplicaKey("a"), ReplicaKey("m")]
    ix = Index(cfg, backend=backend)  # type: ignore[arg-type]
    ref = ReferenceIndex(cfg)
    for p in (ix, ref):
        p.observe("m", (1, 2), keys[0], 0.0)
        p.observe("m", (3, 4), keys[1], dt)
        p.observe("m", (5,), keys[2], 0.0)  # half z's weight: the pair holds the largest
    cands = [Candidate(k) for k in keys]
    for now in (5.0, 40.0):
        got = ix.decide("m", (9,), cands, now)
        assert got == ref.decide("m", (9,), cands, now)
        order = [k.node_id for k in got.cold_order]
        if gap > 1.01e-9:
            assert order == ["m", "z", "a"]  # distinct weights: ascending
        elif gap < 0.99e-9:
            assert order == ["m", "a", "z"]  # near-equal or equal: by node id
