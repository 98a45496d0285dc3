"""The datrie store's runs, keys and forest: every case against the dict backend."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from prefixcache import RadixTree
from prefixcache._datrie_store import DatrieStore


class Pair:
    """The same operations on a dict-backed and a datrie-backed tree, compared after each."""

    def __init__(self, ttl: float = 0.0, cap: int = 0, **store: int) -> None:
        self.ref: RadixTree[str] = RadixTree(ttl=ttl, max_entries=cap, backend="dict")
        self.dt: RadixTree[str] = RadixTree(ttl=ttl, max_entries=cap, backend="datrie")
        self.dt._use_store(DatrieStore(**store))
        self.store: Any = self.dt._store
        self.keys: list[tuple[int, ...]] = []

    def insert(self, key: Sequence[int], value: str, now: float) -> None:
        self.ref.insert(key, value, now)
        self.dt.insert(key, value, now)
        self.keys.append(tuple(key))
        self.agree(now)

    def evict(self, now: float) -> None:
        assert self.ref.evict(now) == self.dt.evict(now)
        self.agree(now)

    def remove(self, value: str, now: float) -> None:
        assert self.ref.remove(value) == self.dt.remove(value)
        self.agree(now)

    def agree(self, now: float, probes: Sequence[Sequence[int]] = ()) -> None:
        self.dt._check()
        self.ref._check()
        assert self.dt.items() == self.ref.items()
        for k in [*self.keys, *probes]:
            for d in range(len(k) + 1):
                q = k[:d]
                assert self.dt.longest_match(q, now) == self.ref.longest_match(q, now), q
                for extra in (0, 7, 2**64 - 1):
                    q2 = (*q, extra)
                    assert self.dt.longest_match(q2, now) == self.ref.longest_match(q2, now)

    def runs(self) -> list[list[int]]:
        return [r for r in self.store.runs if r is not None]


def test_appending_to_a_runs_end_writes_no_new_run() -> None:
    p = Pair(merge_min=1, part_size=2)
    p.insert((1, 2, 3), "a", 0.0)
    assert len(p.runs()) == 1
    p.insert((1, 2, 3, 4, 5), "b", 1.0)
    p.insert((1, 2, 3, 4, 5, 6), "a", 2.0)
    assert len(p.runs()) == 1 and len(p.runs()[0]) == 6
    assert p.dt.longest_match((1, 2, 3, 4, 9), 3.0) == ("a", 4)


def test_branching_mid_run_starts_a_new_run() -> None:
    p = Pair(merge_min=1, part_size=2)
    p.insert((1, 2, 3, 4), "a", 0.0)
    p.insert((1, 2, 9, 10), "b", 1.0)  # under node 2, mid-run
    p.insert((7,), "c", 2.0)  # another root child
    p.insert((1, 5), "d", 3.0)  # under node 1, mid-run
    assert sorted(map(len, p.runs())) == [1, 1, 2, 4]
    p.insert((1, 2, 9, 10, 11), "e", 4.0)  # appends to the (9, 10) run
    assert sorted(map(len, p.runs())) == [1, 1, 3, 4]


@pytest.mark.parametrize("merge_min", [1, 1000])  # the run is in a trie / in the overlay
def test_discarding_a_run_to_empty_then_recreating_its_path(merge_min: int) -> None:
    p = Pair(ttl=5.0, merge_min=merge_min, rebuild_min=1000, part_size=2)
    p.insert((1, 2, 3), "a", 0.0)
    p.insert((1, 2, 7, 8), "b", 10.0)  # a second run under node 2
    p.evict(10.0)  # drops node 3 only: the first run shrinks to (1, 2)
    assert sorted(map(len, p.runs())) == [2, 2]
    p.insert((1, 2, 3, 4), "c", 11.0)  # appends to the shrunk run
    p.evict(100.0)  # everything: both runs die
    assert p.runs() == [] and p.store.size() == 0
    if merge_min == 1:
        assert p.store._dead == 2  # tombstones, not deletes
    p.insert((1, 2, 7, 8), "d", 101.0)  # same paths again (ids and keys reused)
    p.insert((1, 2, 3), "e", 102.0)
    p.evict(102.0)
    assert p.dt.longest_match((1, 2, 7, 8), 102.0) == ("d", 4)


def test_tombstones_are_rebuilt_away_and_ids_recycled() -> None:
    p = Pair(ttl=1.0, merge_min=1, rebuild_min=2, part_size=2)
    for i in range(60):
        p.insert((1000 + i, i, i + 1), "a" if i % 2 else "b", float(i))
        if i % 3 == 0:
            p.evict(float(i))
        assert p.store._dead <= max(2, p.store._in_trie) + 1
    # Interned ids recycle: only live run starts keep one (plus bounded slack).
    assert len(p.store._cstr) <= 4 * len(p.runs()) + 32
    p.evict(1e9)
    assert p.store.size() == 0 and p.runs() == []
    assert set(p.store.runs) <= {None} and p.store._in_trie == 0


def test_tiny_merges_split_the_forest_and_keep_results() -> None:
    p = Pair(merge_min=1, part_size=2)
    for i in range(40):
        p.insert((i % 3, 100 + i, 200 + i), f"v{i % 4}", float(i))
    assert len(p.store._parts) > 4
    assert all(len(part.members) <= 4 for part in p.store._parts)


def test_same_hash_at_several_depths_and_paths() -> None:
    p = Pair(ttl=50.0, merge_min=2, rebuild_min=1, part_size=2)
    keys = [
        (5, 5, 5),
        (1, 5),
        (2, 5, 5),
        (5, 1, 5),
        (1, 2, 5),
        (5,),
        (2, 1, 5, 5, 5),
        (0, 5, 0, 5),
        (5, 0, 5, 0),
    ]
    for i, k in enumerate(keys):
        p.insert(k, f"v{i % 3}", float(i))
    # Hash 5 starts runs under several parents: all but one are fallback keys.
    keyed = [s for s in p.store._key if s]
    assert any(len(s) == 8 for s in keyed)
    p.agree(9.0, probes=[(5, 5, 5, 5), (2, 1, 5, 5), (1, 2, 5, 5), (0, 5, 0, 5, 0)])
    p.remove("v0", 10.0)  # primaries die first: fallbacks must still be found
    p.insert((9, 5, 5), "x", 11.0)
    p.evict(55.0)
    p.insert((5, 5), "y", 56.0)
    p.agree(56.0, probes=[(5, 5, 5), (1, 5)])


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_agree_with_the_dict_backend(seed: int) -> None:
    rng = random.Random(seed)
    p = Pair(
        ttl=rng.choice([0.0, 4.0]),
        cap=rng.choice([0, 12]),
        merge_min=rng.choice([1, 3]),
        rebuild_min=rng.choice([1, 4]),
        part_size=rng.choice([1, 2, 3]),
    )
    alphabet = [0, 1, 2, 3, 2**64 - 1]
    now = 0.0
    for _ in range(120):
        now += rng.choice([0.0, 0.5, 1.0])
        op = rng.random()
        if op < 0.7:
            reuse = p.keys and rng.random() < 0.5
            base = rng.choice(p.keys)[: rng.randint(0, 4)] if reuse else ()
            tail = tuple(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
            p.insert((*base, *tail), rng.choice("abc"), now)
        elif op < 0.85:
            p.evict(now)
        else:
            p.remove(rng.choice("abc"), now)
