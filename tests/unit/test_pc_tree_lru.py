"""The ``max_entries`` LRU of RadixTree: the documented order (last_seen, depth, insert seq)
and its cost when many entries share a ``last_seen`` (counted in heap operations, not time).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from typing import Any

import pytest

from prefixcache import BACKENDS, RadixTree, _age


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class CountingHeapq:
    """Stands in for the ``heapq`` module inside ``prefixcache._age`` (the tree's age
    heap): counts every call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(heapq, name)

        def counted(*args: Any) -> Any:
            self.calls[name] += 1
            return real(*args)

        return counted

    def operations(self) -> int:
        return sum(self.calls.values())


def naive_after(inserts: list[tuple[tuple[int, ...], str, float]], cap: int) -> list[Any]:
    """The documented rule, literally: path -> (value, last_seen, seq), trimmed after each
    insert by (last_seen, depth, seq)."""
    entries: dict[tuple[int, ...], tuple[str, float, int]] = {}
    for seq, (key, value, now) in enumerate(inserts, start=1):
        for d in range(1, len(key) + 1):
            entries[key[:d]] = (value, now, seq)
        if len(entries) > cap:
            order = sorted(entries, key=lambda p: (entries[p][1], len(p), entries[p][2]))
            for p in order[: len(entries) - cap]:
                del entries[p]
    return sorted((p, v, t) for p, (v, t, _) in entries.items())


def test_equal_last_seen_costs_constant_heap_operations_per_insert(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # One `now` per batch of events, a coarse clock or a manual test clock: every entry has
    # the same last_seen. Counterfactual: regrouping the equal-age batches on every insert
    # popped all n of them (and sorted them), O(n log n) per insert at the cap.
    n = 1000
    tree: RadixTree[str] = RadixTree(max_entries=n, backend=backend)  # type: ignore[arg-type]
    for i in range(n):
        tree.insert((i,), "a", 0.0)
    counting = CountingHeapq()
    monkeypatch.setattr(_age, "heapq", counting)
    for i in range(n, 2 * n):
        tree.insert((i,), "b", 0.0)  # each insert evicts the oldest one-block entry
    assert len(tree) == n
    assert counting.operations() <= 4 * n, counting.calls
    assert [p for p, _, _ in tree.items()] == [(i,) for i in range(n, 2 * n)]
    tree._check()


def test_equal_last_seen_across_depths_costs_constant_heap_operations_per_eviction(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # Long chains, all at one last_seen: the order takes every depth-1 entry (oldest insert
    # first), then every depth-2 one, ... so evictions hop between batches. Counterfactual:
    # the regrouping walked every node of every equal-age batch to sort them by depth.
    chains, depth = 200, 8
    cap = chains * depth
    tree: RadixTree[str] = RadixTree(max_entries=cap, backend=backend)  # type: ignore[arg-type]
    inserts = [(tuple(range(i * 100, i * 100 + depth)), "a", 0.0) for i in range(chains)]
    for key, value, now in inserts:
        tree.insert(key, value, now)
    counting = CountingHeapq()
    monkeypatch.setattr(_age, "heapq", counting)
    more = [
        (tuple(range(10**6 + i * 100, 10**6 + i * 100 + depth)), "b", 0.0) for i in range(chains)
    ]
    for key, value, now in more:
        tree.insert(key, value, now)
    evicted = len(more) * depth
    assert counting.operations() <= 4 * evicted, counting.calls
    assert tree.items() == naive_after(inserts + more, cap)
    tree._check()


@pytest.mark.parametrize("seed", range(20))
def test_lru_order_matches_the_literal_rule(backend: str, seed: int) -> None:
    # Few distinct times (many ties), shared prefixes (nodes taken by later inserts, so
    # the heap's depth for a batch falls behind and must be corrected), small caps.
    rng = random.Random(seed)
    cap = rng.choice([1, 2, 5, 9, 20])
    tree: RadixTree[str] = RadixTree(max_entries=cap, backend=backend)  # type: ignore[arg-type]
    inserts: list[tuple[tuple[int, ...], str, float]] = []
    for _ in range(120):
        key = tuple(rng.randrange(3) for _ in range(rng.randrange(1, 7)))
        item = (key, rng.choice("abc"), float(rng.choice([0, 0, 1, 2])))
        inserts.append(item)
        tree.insert(*item)
        tree._check()
        assert tree.items() == naive_after(inserts, cap)


def test_a_batch_whose_top_was_taken_is_ordered_by_its_shallowest_live_node(
    backend: str,
) -> None:
    tree: RadixTree[str] = RadixTree(max_entries=4, backend=backend)  # type: ignore[arg-type]
    tree.insert((1, 2, 3), "a", 0.0)
    tree.insert((1,), "b", 1.0)  # takes (1,): a's shallowest live node is now at depth 2
    tree.insert((7, 8), "c", 0.0)  # 5 entries: (7,) at depth 1 goes before a's (1, 2)
    assert tree.items() == [
        ((1,), "b", 1.0),
        ((1, 2), "a", 0.0),
        ((1, 2, 3), "a", 0.0),
        ((7, 8), "c", 0.0),
    ]
    tree.insert((9,), "d", 2.0)  # then a's (1, 2): depth 2, older insert than (7, 8)
    assert [p for p, _, _ in tree.items()] == [(1,), (1, 2, 3), (7, 8), (9,)]
    tree._check()
