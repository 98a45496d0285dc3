"""RadixTree's contract case by case, on both backends: defaults, decay, expiry, removal, the
entry cap and key validation (each test quotes the rule it pins)."""

from __future__ import annotations

import math

import pytest

from prefixcache import BACKENDS, RadixTree


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def tree(backend: str, **kw: float) -> RadixTree[str]:
    return RadixTree(backend=backend, **kw)  # type: ignore[arg-type]


def test_tree_defaults_never_expire_weigh_one_unbounded(backend: str) -> None:
    # Contract: "RadixTree(*, ttl=0.0, half_life=0.0, max_entries=0, ...). ttl=0 never expires;
    # half_life<=0 weighs every entry 1; max_entries=0 is unbounded."
    t = tree(backend)
    for i in range(200):
        t.insert((i, i + 1000), "a", float(i))
    assert len(t) == 400
    assert t.longest_match((0, 1000), 1e18) == ("a", 2)
    assert t.weight("a", 1e18) == 400.0
    assert t.evict(1e18) == 0


def test_negative_half_life_weighs_one(backend: str) -> None:
    # Contract: "half_life<=0 weighs every entry 1".
    t = tree(backend, half_life=-5.0, ttl=10.0)
    t.insert((1, 2), "a", 0.0)
    assert t.weight("a", 7.0) == 2.0


def test_weight_decay_formula(backend: str) -> None:
    # Contract: "weight(value, now) -> float: sum over live nodes owned by value of
    # 0.5 ** (age / half_life)".
    t = tree(backend, half_life=10.0, ttl=100.0)
    t.insert((1, 2, 3), "a", 0.0)  # 3 nodes at t=0
    t.insert((7,), "a", 5.0)  # 1 node at t=5
    t.insert((1, 2, 9), "b", 10.0)  # takes nodes 1, 2; adds 9
    assert math.isclose(t.weight("a", 20.0), 0.5**2 + 0.5**1.5, rel_tol=1e-12)
    assert math.isclose(t.weight("b", 20.0), 3 * 0.5**1, rel_tol=1e-12)
    # expired nodes (age > ttl) weigh nothing even before evict
    assert math.isclose(t.weight("a", 105.0), 0.5 ** (100 / 10), rel_tol=1e-12)
    assert t.weight("a", 105.1) == 0.0


def test_weights_for_has_every_requested_value(backend: str) -> None:
    # Contract: "weights_for(values, now) -> dict: ... every requested value present (0.0 if
    # absent)."
    t = tree(backend)
    t.insert((1,), "a", 0.0)
    w = t.weights_for(["a", "zz", "b"], 0.0)
    assert w == {"a": 1.0, "zz": 0.0, "b": 0.0}
    assert t.weights_for([], 0.0) == {}


def test_longest_match_returns_deepest_live_and_depth(backend: str) -> None:
    # Contract: "longest_match(key, now) -> tuple[value, depth] | None: the deepest node on the
    # key's path that holds a live value; walks through value-less or expired nodes."
    t = tree(backend, ttl=10.0)
    t.insert((1, 2, 3, 4), "old", 0.0)
    t.insert((1, 2), "new", 8.0)
    assert t.longest_match((1, 2, 3, 4, 5), 10.0) == ("old", 4)  # age 10 == ttl: live
    assert t.longest_match((1, 2, 3, 4, 5), 10.5) == ("new", 2)  # deeper ones expired
    assert t.longest_match((1, 2, 3, 4), 18.0) == ("new", 2)
    assert t.longest_match((1, 2, 3, 4), 18.01) is None
    assert t.longest_match((2,), 0.0) is None  # not a path from the root
    assert t.longest_match((9, 1, 2), 0.0) is None


def test_future_entries_are_live(backend: str) -> None:
    # Contract: "expired iff ttl > 0 and now - last_seen > ttl": a negative age is live.
    t = tree(backend, ttl=1.0)
    t.insert((1,), "a", 100.0)
    assert t.longest_match((1,), 0.0) == ("a", 1)
    assert t.evict(0.0) == 0


def test_len_counts_unswept_expired_and_evict_returns_count(backend: str) -> None:
    # Contract: "len(tree): number of value-bearing nodes (unswept expired ones included)";
    # "evict(now) -> int: remove expired nodes; prune branches left without values".
    t = tree(backend, ttl=5.0)
    t.insert((1, 2, 3), "a", 0.0)
    t.insert((1, 2, 4), "b", 3.0)  # takes 1, 2
    assert len(t) == 4
    assert t.longest_match((1, 2, 3), 6.0) == ("b", 2)
    assert len(t) == 4  # expired node 3 still counted until a sweep
    assert t.evict(5.0) == 0  # age == ttl: live
    assert t.evict(6.0) == 1  # node 3
    assert len(t) == 3
    assert [p for p, _v, _t in t.items()] == [(1,), (1, 2), (1, 2, 4)]
    assert t.evict(9.0) == 3
    assert len(t) == 0 and t.items() == []


def test_remove_and_remove_if_return_counts_and_prune(backend: str) -> None:
    # Contract: "remove(value) -> int, remove_if(predicate) -> int: drop matching nodes and
    # prune."
    t = tree(backend)
    t.insert((1, 2, 3), "a", 0.0)
    t.insert((1, 2), "b", 1.0)
    t.insert((5,), "c", 1.0)
    assert t.remove("zz") == 0
    assert t.remove("b") == 2
    assert len(t) == 2
    # nodes 1, 2 are now value-less but still lead to "a"
    assert t.longest_match((1, 2, 3), 2.0) == ("a", 3)
    assert t.longest_match((1, 2), 2.0) is None
    assert t.remove_if(lambda v: v in ("a", "c")) == 2
    assert len(t) == 0 and t.items() == []
    assert t.remove_if(lambda v: True) == 0


def test_max_entries_lru_with_ancestors_first(backend: str) -> None:
    # Contract: "max_entries: after an insert that exceeds the cap, evict least-recently-seen
    # entries until within the cap (ancestors before descendants on equal age ...), pruning."
    t = tree(backend, max_entries=3)
    t.insert((1, 2, 3), "a", 0.0)
    assert len(t) == 3
    t.insert((9,), "b", 1.0)
    assert len(t) == 3
    assert t.longest_match((1,), 2.0) is None  # the shallowest of the oldest went first
    assert t.longest_match((1, 2, 3), 2.0) == ("a", 3)
    assert t.longest_match((9,), 2.0) == ("b", 1)
    t.insert((8, 7), "c", 2.0)  # 5 > 3: evicts (1,2) then (1,2,3), pruning the branch
    assert len(t) == 3
    assert t.longest_match((1, 2, 3), 3.0) is None
    assert sorted(p for p, _v, _t in t.items()) == [(8,), (8, 7), (9,)]


def test_max_entries_cap_equal_is_not_exceeded(backend: str) -> None:
    # Contract: "after an insert that exceeds the cap": reaching the cap exactly evicts nothing.
    t = tree(backend, max_entries=2)
    t.insert((1,), "a", 0.0)
    t.insert((2,), "b", 1.0)
    assert len(t) == 2
    assert t.longest_match((1,), 1.0) == ("a", 1)


@pytest.mark.parametrize("bad", [-1, 2**64, 2**70, -(2**63)])
def test_out_of_range_keys_raise_value_error_and_store_nothing(backend: str, bad: int) -> None:
    # Contract: "Keys outside 0 <= h < 2**64 raise ValueError; nothing is stored."
    t = tree(backend)
    t.insert((1,), "a", 0.0)
    with pytest.raises(ValueError):
        t.insert((1, 2, bad), "b", 1.0)
    with pytest.raises(ValueError):
        t.insert((bad,), "b", 1.0)
    assert len(t) == 1
    assert t.longest_match((1, 2), 1.0) == ("a", 1)
    assert t.items() == [((1,), "a", 0.0)]
    t.insert((0, 2**64 - 1), "c", 2.0)
    assert t.longest_match((0, 2**64 - 1), 2.0) == ("c", 2)
