"""RadixTree (both backends) against a naive trie written from the documented tree rules,
step by step (docs/behaviour.md)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from profiles import scaled_examples

from prefixcache import RadixTree, _age, _runs, _tree
from prefixcache._datrie_store import DatrieStore
from prefixcache._weights import Weights

TTL = 10.0
HALF_LIFE = 3.0

# Small alphabets force shared prefixes and same-hash-different-parent collisions.
block = st.one_of(
    st.integers(0, 2), st.integers(0, 2), st.sampled_from([2**64 - 1, 12345678901234567890])
)
keys = st.lists(block, min_size=0, max_size=5).map(tuple)
values = st.sampled_from(["a", "b", "c", "d"])


class NaiveTree:
    """The documented rules, literally: path -> (value, last_seen, insert seq)."""

    def __init__(self, ttl: float, half_life: float, max_entries: int) -> None:
        self.ttl, self.hl, self.cap = ttl, half_life, max_entries
        self.entries: dict[tuple[int, ...], tuple[str, float, int]] = {}
        self.seq = 0

    def expired(self, t: float, now: float) -> bool:
        return self.ttl > 0 and now - t > self.ttl

    def insert(self, key: tuple[int, ...], value: str, now: float) -> None:
        if not key:
            return
        self.seq += 1
        for d in range(1, len(key) + 1):
            self.entries[key[:d]] = (value, now, self.seq)
        if self.cap and len(self.entries) > self.cap:
            order = sorted(
                self.entries, key=lambda p: (self.entries[p][1], len(p), self.entries[p][2])
            )
            for p in order[: len(self.entries) - self.cap]:
                del self.entries[p]

    def longest_match(self, key: tuple[int, ...], now: float) -> tuple[str, int] | None:
        for d in range(len(key), 0, -1):
            e = self.entries.get(key[:d])
            if e is not None and not self.expired(e[1], now):
                return e[0], d
        return None

    def weight(self, value: str, now: float) -> float:
        return sum(
            (0.5 ** ((now - t) / self.hl) if self.hl > 0 else 1.0)
            for v, t, _ in self.entries.values()
            if v == value and not self.expired(t, now)
        )

    def evict(self, now: float) -> int:
        doomed = [p for p, e in self.entries.items() if self.expired(e[1], now)]
        for p in doomed:
            del self.entries[p]
        return len(doomed)

    def remove_if(self, pred: object) -> int:
        doomed = [p for p, e in self.entries.items() if pred(e[0])]  # type: ignore[operator]
        for p in doomed:
            del self.entries[p]
        return len(doomed)


class TreeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.trees: list[RadixTree[str]] = []
        self.naive = NaiveTree(TTL, HALF_LIFE, 0)
        self.inserted: list[tuple[int, ...]] = [()]
        self.times: list[float] = [100.0]

    @precondition(lambda self: not self.trees)
    @rule(
        cap=st.sampled_from([0, 0, 3, 7]),
        ttl=st.sampled_from([TTL, TTL, 0.0]),
        hl=st.sampled_from([HALF_LIFE, HALF_LIFE, 0.0]),
    )
    def setup(self, cap: int, ttl: float, hl: float) -> None:
        self.naive = NaiveTree(ttl, hl, cap)
        d = RadixTree[str](ttl=ttl, half_life=hl, max_entries=cap, backend="dict")
        t = RadixTree[str](ttl=ttl, half_life=hl, max_entries=cap, backend="datrie")
        # Tiny thresholds so that merges, splits and rebuilds of the tries happen constantly.
        t._use_store(DatrieStore(merge_min=2, rebuild_min=1, part_size=2))
        self.trees = [d, t]

    @precondition(lambda self: bool(self.trees))
    @rule(key=keys, value=values)
    def insert(self, key: tuple[int, ...], value: str) -> None:
        self.naive.insert(key, value, self.now)
        self.inserted.append(key)
        self.times.append(self.now)
        for t in self.trees:
            t.insert(key, value, self.now)

    @precondition(lambda self: bool(self.trees))
    @rule(data=st.data(), cut=st.integers(0, 5), tail=keys)
    def match_known(self, data: st.DataObject, cut: int, tail: tuple[int, ...]) -> None:
        """Query a prefix of an inserted key, possibly diverging after it."""
        key = data.draw(st.sampled_from(self.inserted))[:cut] + tail
        expected = self.naive.longest_match(key, self.now)
        for t in self.trees:
            assert t.longest_match(key, self.now) == expected

    @precondition(lambda self: bool(self.trees))
    @rule(key=st.lists(block, min_size=1, max_size=3).map(tuple), bad=st.sampled_from([-1, 2**64]))
    def insert_bad(self, key: tuple[int, ...], bad: int) -> None:
        for t in self.trees:
            with pytest.raises(ValueError):
                t.insert((*key, bad), "a", self.now)

    @precondition(lambda self: bool(self.trees))
    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0, 10.0, 10.0, 11.0, -2.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: bool(self.trees))
    @rule(data=st.data(), offset=st.sampled_from([0.0, -0.5, 0.5]))
    def jump_to_expiry_boundary(self, data: st.DataObject, offset: float) -> None:
        """Move the clock to exactly ``ttl`` (or just around it) after an earlier insert."""
        self.now = data.draw(st.sampled_from(self.times)) + self.naive.ttl + offset

    @precondition(lambda self: bool(self.trees))
    @rule(key=keys)
    def longest_match(self, key: tuple[int, ...]) -> None:
        expected = self.naive.longest_match(key, self.now)
        for t in self.trees:
            assert t.longest_match(key, self.now) == expected

    @precondition(lambda self: bool(self.trees))
    @rule(vs=st.lists(values, max_size=4))
    def weights(self, vs: list[str]) -> None:
        for t in self.trees:
            got = t.weights_for(vs, self.now)
            assert set(got) == set(vs)
            for v in vs:
                assert math.isclose(got[v], self.naive.weight(v, self.now), rel_tol=1e-9)
                assert math.isclose(t.weight(v, self.now), got[v], rel_tol=1e-12)

    @precondition(lambda self: bool(self.trees))
    @rule()
    def evict(self) -> None:
        expected = self.naive.evict(self.now)
        for t in self.trees:
            assert t.evict(self.now) == expected

    @precondition(lambda self: bool(self.trees))
    @rule(value=values)
    def remove(self, value: str) -> None:
        expected = self.naive.remove_if(lambda v: v == value)
        for t in self.trees:
            assert t.remove(value) == expected

    @precondition(lambda self: bool(self.trees))
    @rule(vs=st.sets(values, max_size=2))
    def remove_if(self, vs: set[str]) -> None:
        expected = self.naive.remove_if(lambda v: v in vs)
        for t in self.trees:
            calls: list[str] = []

            def pred(v: str, calls: list[str] = calls) -> bool:
                calls.append(v)
                return v in vs

            assert t.remove_if(pred) == expected
            assert len(calls) == len(set(calls)), "predicate called twice for one value"

    @invariant()
    def agree(self) -> None:
        want = sorted((p, v, ts) for p, (v, ts, _) in self.naive.entries.items())
        for t in self.trees:
            t._check()
            assert len(t) == len(self.naive.entries)
            assert t.items() == want


TreeMachine.TestCase.settings = settings(
    max_examples=settings.default.max_examples,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_tree_machine = TreeMachine.TestCase


def _follow_one_short(nodes: list[int], run: Any, hs: Any, key: Any, d: int) -> int:
    """The walk's run follower, stopping one block early on runs of three or more."""
    lim = min(len(hs), len(key) - d)
    j = 1
    while j < lim - 1 and hs[j] == key[d + j]:
        j += 1
    nodes += run[:j]
    return d + j


def _drop_without_weight(self: Weights, b: Any, nodes: int) -> None:
    """Nodes leave a batch but its owner's weight sum is not lowered."""
    b.live -= nodes
    if not b.live:
        b.counted = False


def _evict_deepest_first(self: RadixTree[str], b: Any, k: int) -> None:
    """LRU eviction that takes a batch's deepest live nodes instead of its shallowest."""
    victims = b.nodes[len(b.nodes) - k :][::-1]
    self._take_nodes(b, k)
    for n in victims:
        self._unset(n)


def _live_off_by_one(t: float, now: float, ttl: float) -> bool:
    """Treats an entry exactly ``ttl`` old as expired."""
    return not (ttl > 0 and now - t >= ttl)


@pytest.mark.parametrize(
    ("target", "name", "mutant"),
    [
        pytest.param(_runs, "follow", _follow_one_short, id="walk"),
        pytest.param(Weights, "drop", _drop_without_weight, id="weights"),
        pytest.param(RadixTree, "_evict_shallowest", _evict_deepest_first, id="eviction-order"),
        # The rule is imported by name where it is used: the tree's walk and the age heap.
        pytest.param((_tree, _age), "live_at", _live_off_by_one, id="expiry-boundary"),
    ],
)
def test_machine_catches_a_broken_tree(
    monkeypatch: pytest.MonkeyPatch, target: object, name: str, mutant: object
) -> None:
    """Self-test: a mutant of a function the hot path really uses must fail the machine."""
    for where in target if isinstance(target, tuple) else (target,):
        monkeypatch.setattr(where, name, mutant)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            TreeMachine,
            settings=settings(
                max_examples=scaled_examples(2.5),
                stateful_step_count=50,
                derandomize=True,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            ),
        )
