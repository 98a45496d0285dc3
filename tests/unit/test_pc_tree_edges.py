"""Edge cases of the radix tree and the index: weights of entries far in the future of
``now`` (no OverflowError) and non-integer block hashes equal to stored ones."""

from __future__ import annotations

import math

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import BACKENDS, Candidate, Config, Index, RadixTree, ReplicaKey
from prefixcache.reference import ReferenceIndex


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(backend: str, **kw: float) -> RadixTree[str]:
    return RadixTree(backend=backend, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------- weights far behind the writes
def test_weight_of_entries_far_after_now_is_inf_not_overflow(backend: str) -> None:
    t = make(backend, half_life=120.0)
    t.insert((1, 2, 3), "a", now=1.7e9)
    t.insert((9,), "b", now=0.0)
    # 0.5 ** ((0 - 1.7e9) / 120) overflows a float: the weight is inf, never an error.
    assert t.weight("a", now=0.0) == math.inf
    assert t.weights_for(["a", "b", "c"], now=0.0) == {"a": math.inf, "b": 1.0, "c": 0.0}
    # Later queries still work and are finite again.
    assert t.weight("a", now=1.7e9) == 3.0


def test_weight_of_entries_just_below_overflow_is_exact(backend: str) -> None:
    hl = 1.0
    t = make(backend, half_life=hl)
    t.insert((1,), "a", now=1000.0)
    t.insert((2,), "b", now=1023.5)
    w = t.weights_for(["a", "b"], now=0.0)
    assert w["a"] == 0.5 ** ((0.0 - 1000.0) / hl) == 2.0**1000
    assert math.isclose(w["b"], 2.0**1023.5, rel_tol=1e-12)
    assert math.isfinite(w["b"])
    t.insert((3,), "c", now=1024.0)
    assert t.weight("c", now=0.0) == math.inf


@pytest.mark.parametrize("backend_or_ref", [*BACKENDS, "reference"])
def test_decide_with_inf_weights_orders_them_last_and_ties_by_node(
    backend_or_ref: str,
) -> None:
    cfg = Config(ttl=1e12, half_life=120.0)
    ix = (
        ReferenceIndex(cfg) if backend_or_ref == "reference" else Index(cfg, backend=backend_or_ref)
    )  # type: ignore[arg-type]
    a, b, c, d = (ReplicaKey(n) for n in "abcd")
    ix.observe("m", (5, 6), c, now=1.7e9)
    ix.observe("m", (7,), a, now=1.7e9)
    ix.observe("m", (8,), d, now=0.0)
    dec = ix.decide("m", (5, 6, 7), [Candidate(k) for k in (d, c, b, a)], now=0.0)
    # b: 0.0, d: 1.0, then a and c both inf (tied: by node id).
    assert [k.node_id for k in dec.cold_order] == ["b", "d", "a", "c"]
    assert dec.hot == c and dec.match_ratio == pytest.approx(2 / 3)


# ------------------------------------------------- non-integer hashes equal to stored
NON_INTS = [1.0, True, "1", 1 + 0j]


@pytest.mark.parametrize("bad", NON_INTS, ids=repr)
def test_non_int_hash_equal_to_a_stored_one_raises_on_insert(backend: str, bad: object) -> None:
    t = make(backend, ttl=10.0)
    t.insert((1, 2), "a", now=0.0)
    before = t.items()
    with pytest.raises(InvalidRecordError) as info:
        t.insert((bad, 2), "b", now=1.0)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError):
        t.insert((1, 2, bad), "b", now=1.0)  # type: ignore[arg-type]
    assert t.items() == before
    assert len(t) == 2


@pytest.mark.parametrize("bad", NON_INTS, ids=repr)
def test_non_int_hash_equal_to_a_stored_one_raises_on_longest_match(
    backend: str, bad: object
) -> None:
    t = make(backend)
    t.insert((1, 2), "a", now=0.0)
    with pytest.raises(InvalidRecordError):
        t.longest_match((bad, 2), now=0.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError):
        t.longest_match((1, bad), now=0.0)  # type: ignore[arg-type]
    assert t.longest_match((1, 2), now=0.0) == ("a", 2)


@pytest.mark.parametrize("bad", NON_INTS, ids=repr)
def test_non_int_hash_raises_on_index_decide_and_observe(backend: str, bad: object) -> None:
    ix = Index(Config(), backend=backend)  # type: ignore[arg-type]
    a, b = ReplicaKey("a"), ReplicaKey("b")
    assert ix.observe("m", (1, 2, 3), a, now=0.0)
    cands = [Candidate(a), Candidate(b)]
    with pytest.raises(InvalidRecordError):
        ix.decide("m", (1, bad, 3), cands, now=1.0)  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError):
        ix.observe("m", (1, 2, bad), b, now=1.0)  # type: ignore[arg-type]
    # A decide of a valid chain, then an observe of an invalid one, must not reuse the walk.
    ix.decide("m", (1, 2, 3), cands, now=1.0)
    with pytest.raises(InvalidRecordError):
        ix.observe("m", (bad, 2, 3), b, now=1.0)  # type: ignore[arg-type]
    tree = ix.tree("m")
    assert tree is not None
    assert [(p, v) for p, v, _ in tree.items()] == [((1,), a), ((1, 2), a), ((1, 2, 3), a)]
    assert ix.decide("m", (1, 2, 3), cands, now=1.0).hot == a
