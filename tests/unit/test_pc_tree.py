"""The radix tree: every documented rule and boundary, on both backends."""

from __future__ import annotations

import math
import threading

import pytest

from clusterrouting import ClusterRoutingError
from prefixcache import BACKENDS, DEFAULT_BACKEND, RadixTree
from prefixcache._datrie_store import DatrieStore

U64_MAX = 2**64 - 1


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(backend: str, **kw: float) -> RadixTree[str]:
    return RadixTree(backend=backend, **kw)  # type: ignore[arg-type]


def test_default_backend_is_one_of_the_backends() -> None:
    assert DEFAULT_BACKEND in BACKENDS
    assert RadixTree().backend == DEFAULT_BACKEND


def test_empty_key_is_a_noop_and_never_matches(backend: str) -> None:
    t = make(backend)
    t.insert((), "a", 0.0)
    assert len(t) == 0 and t.items() == []
    assert t.longest_match((), 0.0) is None
    t.insert((1,), "a", 0.0)
    assert t.longest_match((), 0.0) is None  # would be ("a", 0) if empty keys matched root


def test_insert_sets_every_node_of_the_path(backend: str) -> None:
    t = make(backend)
    t.insert((1, 2, 3), "a", 5.0)
    assert len(t) == 3
    assert t.items() == [((1,), "a", 5.0), ((1, 2), "a", 5.0), ((1, 2, 3), "a", 5.0)]


def test_diverging_query_matches_at_shared_depth(backend: str) -> None:
    t = make(backend)
    t.insert((1, 2, 3), "a", 0.0)
    assert t.longest_match((1, 2, 9, 9), 0.0) == ("a", 2)
    assert t.longest_match((1, 2, 3, 4), 0.0) == ("a", 3)
    assert t.longest_match((9, 1, 2), 0.0) is None


def test_last_writer_owns_shared_prefix(backend: str) -> None:
    t = make(backend)
    t.insert((1, 2, 3), "a", 0.0)
    t.insert((1, 2, 4), "b", 1.0)
    assert t.longest_match((1, 2), 1.0) == ("b", 2)
    assert t.longest_match((1, 2, 3), 1.0) == ("a", 3)  # the deeper node keeps its owner
    assert t.weight("a", 1.0) == 1.0 and t.weight("b", 1.0) == 3.0


def test_same_hash_under_different_parents_are_different_nodes(backend: str) -> None:
    # Not chains: [1, 2] and [3, 2] end in the same hash but are different trie nodes.
    t = make(backend)
    t.insert((1, 2), "a", 0.0)
    assert t.longest_match((3, 2), 0.0) is None
    t.insert((3, 2), "b", 0.0)
    assert t.longest_match((1, 2), 0.0) == ("a", 2)
    assert t.longest_match((3, 2), 0.0) == ("b", 2)
    t.insert((2,), "c", 0.0)
    t.insert((2, 2, 2), "d", 0.0)
    assert t.longest_match((2, 2), 0.0) == ("d", 2)
    assert t.remove("a") == 2
    assert t.longest_match((3, 2), 0.0) == ("b", 2)
    assert t.longest_match((1, 2), 0.0) is None
    t._check()


def test_expiry_boundary_age_equal_ttl_is_live(backend: str) -> None:
    t = make(backend, ttl=10.0)
    t.insert((1,), "a", 100.0)
    assert t.longest_match((1,), 110.0) == ("a", 1)  # age == ttl: live
    assert t.weight("a", 110.0) == 1.0
    assert t.longest_match((1,), 110.5) is None  # age > ttl: expired
    assert t.weight("a", 110.5) == 0.0
    assert len(t) == 1  # expired but not swept
    assert t.evict(110.0) == 0
    assert t.evict(110.5) == 1
    assert len(t) == 0


def test_ttl_zero_never_expires(backend: str) -> None:
    t = make(backend, ttl=0.0)
    t.insert((1,), "a", 0.0)
    assert t.longest_match((1,), 1e12) == ("a", 1)
    assert t.evict(1e12) == 0


def test_longest_match_walks_through_expired_and_valueless_nodes(backend: str) -> None:
    t = make(backend, ttl=10.0)
    t.insert((1, 2, 3), "a", 0.0)
    t.insert((1, 2), "b", 8.0)  # refreshes depth 1-2 only
    # at 15: (1,2,3) expired, (1,2) live -> shallower live match
    assert t.longest_match((1, 2, 3), 15.0) == ("b", 2)
    t2 = make(backend)
    t2.insert((1, 2, 3), "a", 0.0)
    t2.insert((1,), "b", 0.0)
    t2.remove("b")  # (1,) is now value-less but keeps its child
    assert t2.longest_match((1, 2, 3), 0.0) == ("a", 3)
    assert t2.longest_match((1,), 0.0) is None
    assert len(t2) == 2


def test_evict_prunes_branches_without_values(backend: str) -> None:
    t = make(backend, ttl=5.0)
    t.insert((1, 2, 3), "a", 0.0)
    t.insert((1, 9), "b", 4.0)
    assert t.evict(6.0) == 2  # (1,2) and (1,2,3); (1,) was refreshed by "b"
    assert t.items() == [((1,), "b", 4.0), ((1, 9), "b", 4.0)]
    t._check()
    assert t.evict(100.0) == 2
    assert len(t) == 0 and t.items() == []
    t._check()


def test_weights_with_half_life(backend: str) -> None:
    t = make(backend, ttl=100.0, half_life=10.0)
    t.insert((1, 2), "a", 0.0)
    t.insert((5,), "b", 10.0)
    assert math.isclose(t.weight("a", 10.0), 2 * 0.5)
    assert math.isclose(t.weight("a", 30.0), 2 * 0.125)
    assert t.weights_for(["a", "b", "zz"], 20.0) == pytest.approx(
        {"a": 2 * 0.25, "b": 0.5, "zz": 0.0}, rel=1e-12
    )
    assert t.weight("b", 5.0) == pytest.approx(2**0.5)  # a future last_seen weighs more than 1


def test_half_life_zero_weighs_one_per_live_node(backend: str) -> None:
    t = make(backend, ttl=10.0, half_life=0.0)
    t.insert((1, 2, 3), "a", 0.0)
    t.insert((7,), "a", 5.0)
    assert t.weight("a", 9.0) == 4.0
    assert t.weight("a", 12.0) == 1.0  # three expired


def test_weights_when_the_clock_goes_backwards(backend: str) -> None:
    t = make(backend, ttl=10.0, half_life=5.0)
    t.insert((1,), "a", 0.0)
    t.insert((2,), "a", 20.0)
    assert t.weight("a", 25.0) == pytest.approx(0.5)  # (1,) expired
    assert t.weight("a", 5.0) == pytest.approx(0.5 + 8.0)  # both live again at 5
    assert t.weight("a", 25.0) == pytest.approx(0.5)


def test_weights_survive_long_time_spans(backend: str) -> None:
    # Thousands of half-lives: the weight origin must be rebased without overflow.
    t = make(backend, ttl=50.0, half_life=1.0)
    now = 0.0
    for i in range(300):
        now = i * 40.0
        t.insert((i % 7, i), "a", now)
    exact = sum(0.5 ** (now - ts) for _, _, ts in t.items() if now - ts <= 50.0)
    assert t.weight("a", now) == pytest.approx(exact, rel=1e-9)


def test_remove_and_remove_if(backend: str) -> None:
    t = make(backend)
    t.insert((1, 2), "a", 0.0)
    t.insert((1, 3), "b", 0.0)
    t.insert((4,), "c", 0.0)
    assert t.remove("zz") == 0
    assert t.remove("b") == 2  # (1,) and (1,3)
    assert t.items() == [((1, 2), "a", 0.0), ((4,), "c", 0.0)]
    seen: list[str] = []

    def pred(v: str) -> bool:
        seen.append(v)
        return v in ("a", "c")

    assert t.remove_if(pred) == 2
    assert sorted(seen) == ["a", "c"]  # once per distinct value
    assert len(t) == 0
    t._check()


def test_max_entries_evicts_least_recently_seen(backend: str) -> None:
    t = make(backend, max_entries=3)
    t.insert((1,), "a", 0.0)
    t.insert((2,), "b", 1.0)
    t.insert((3,), "c", 2.0)
    t.insert((4,), "d", 3.0)
    assert [p for p, _, _ in t.items()] == [(2,), (3,), (4,)]
    assert len(t) == 3
    t._check()


def test_max_entries_ancestors_before_descendants_on_equal_age(backend: str) -> None:
    t = make(backend, max_entries=2)
    t.insert((1, 2, 3), "a", 0.0)  # 3 entries of equal age: the root-side one goes first
    assert t.items() == [((1, 2), "a", 0.0), ((1, 2, 3), "a", 0.0)]
    assert t.longest_match((1,), 0.0) is None
    assert t.longest_match((1, 2, 3), 0.0) == ("a", 3)
    t2 = make(backend, max_entries=1)
    t2.insert((5,), "x", 0.0)
    t2.insert((6,), "y", 0.0)  # equal age, equal depth: the older insert goes first
    assert t2.items() == [((6,), "y", 0.0)]


def test_max_entries_is_never_exceeded(backend: str) -> None:
    t = make(backend, max_entries=5)
    for i in range(50):
        t.insert((i % 3, i, i + 1), "a", float(i // 4))
        assert len(t) <= 5
    t._check()


@pytest.mark.parametrize("bad", [-1, 2**64, 2**70, 1.5, "x", None, True])
def test_keys_outside_uint64_raise_and_store_nothing(backend: str, bad: object) -> None:
    t = make(backend)
    t.insert((1,), "a", 0.0)
    before = t.items()
    with pytest.raises(ValueError) as info:
        t.insert((1, 2, bad), "b", 1.0)  # type: ignore[arg-type]
    assert isinstance(info.value, ClusterRoutingError)
    assert t.items() == before
    with pytest.raises(ValueError):
        t.longest_match((7, bad), 0.0)  # type: ignore[arg-type]
    t._check()


def test_extreme_uint64_keys(backend: str) -> None:
    t = make(backend)
    t.insert((0, U64_MAX, 0), "a", 0.0)
    assert t.longest_match((0, U64_MAX, 0, 5), 0.0) == ("a", 3)


def test_numpy_integers_are_accepted(backend: str) -> None:
    import numpy as np

    t = make(backend)
    t.insert(tuple(np.array([1, 2**63 + 5], dtype=np.uint64)), "a", 0.0)
    assert t.longest_match((1, 2**63 + 5), 0.0) == ("a", 2)


def test_invalid_constructor_arguments() -> None:
    for kw in ({"ttl": -1.0}, {"ttl": math.nan}, {"max_entries": -1}, {"backend": "btree"}):
        with pytest.raises(ValueError):
            RadixTree(**kw)  # type: ignore[arg-type]


def test_items_is_a_snapshot(backend: str) -> None:
    t = make(backend)
    t.insert((1, 2), "a", 0.0)
    snap = t.items()
    t.remove("a")
    assert snap == [((1,), "a", 0.0), ((1, 2), "a", 0.0)]


def test_threads_hammering_one_tree_keep_invariants(backend: str) -> None:
    t = make(backend, ttl=5.0, half_life=2.0, max_entries=200)

    def worker(seed: int) -> None:
        for i in range(400):
            k = (seed, i % 13, i % 7)
            t.insert(k, f"v{seed}", float(i))
            t.longest_match(k, float(i))
            t.weights_for(["v0", "v1", "v2"], float(i))
            if i % 50 == 0:
                t.evict(float(i))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t._check()
    assert len(t) <= 200


def test_datrie_store_merges_and_rebuilds_keep_results() -> None:
    t: RadixTree[str] = RadixTree(backend="datrie", ttl=3.0)
    t._use_store(DatrieStore(merge_min=4, rebuild_min=4))
    for i in range(300):
        t.insert((i % 5, i % 11, i), f"v{i % 3}", float(i))
        if i % 10 == 0:
            t.evict(float(i))
            t._check()
        assert t.longest_match((i % 5, i % 11, i), float(i)) == (f"v{i % 3}", 3)
    t._check()


def test_datrie_key_validation_rejects_corrupting_keys() -> None:
    from prefixcache._datrie_store import _validate

    for bad in ("", "abc", "ab\x00d", "abcde", "\u0100bcd"):
        with pytest.raises(ValueError):
            _validate(bad)
    _validate("\x01\x02\x03\xff")
