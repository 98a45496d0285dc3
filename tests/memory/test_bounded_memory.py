"""Memory stays bounded on both backends (RSS, since datrie allocates in C).

1,000,000 random chains go through a capped tree: the entry count never exceeds the cap and
the process RSS after the second half is not meaningfully above the RSS after the first
(warm-up) half. Then a TTL sweep reclaims every entry and every internal structure.
"""

from __future__ import annotations

import gc

import psutil
import pytest

from prefixcache import BACKENDS, RadixTree

CHAINS = 1_000_000
CAP = 20_000
MASK = (1 << 64) - 1
# Generous: allocator fragmentation and the test's own garbage, not growth with the input.
RSS_MARGIN = 24 * 1024 * 1024


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _feed(tree: RadixTree[int], start: int, stop: int) -> None:
    insert = tree.insert
    cap = CAP
    for i in range(start, stop):
        # Short pseudo-random chains (1-2 blocks), distinct blocks, a few owners, time moving.
        h = (i * 0x9E3779B97F4A7C15) & MASK
        chain = (h,) if i & 1 else (h, (h * 31 + 7) & MASK)
        insert(chain, i & 7, i * 0.001)
        if len(tree) > cap:
            raise AssertionError(f"len {len(tree)} exceeds the cap {cap} at chain {i}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_capped_tree_memory_stops_growing_and_ttl_reclaims_everything(backend: str) -> None:
    tree: RadixTree[int] = RadixTree(ttl=60.0, half_life=30.0, max_entries=CAP, backend=backend)  # type: ignore[arg-type]
    half = CHAINS // 2
    _feed(tree, 0, half)
    warm = _rss()
    _feed(tree, half, CHAINS)
    end = _rss()
    assert len(tree) == CAP
    assert end <= warm + RSS_MARGIN, f"RSS grew {(end - warm) / 2**20:.1f} MiB after warm-up"
    tree._check()

    # Everything ages out: one sweep reclaims every entry and every internal structure.
    last = (CHAINS - 1) * 0.001
    first = tree.evict(last + 60.0)  # the newest chain: age == ttl is still live
    assert tree.evict(last + 60.5) == 1  # ... until it is older than ttl
    assert first == CAP - 1
    assert len(tree) == 0 and tree.items() == []
    assert tree._store.size() == 0
    assert not tree._weights.owners and len(tree._age) <= 64 and tree._weights.pending() <= 64
    assert tree.weights_for(list(range(8)), last + 61.0) == dict.fromkeys(range(8), 0.0)
    tree._check()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_ttl_churn_at_fixed_live_size_does_not_grow(backend: str) -> None:
    # No cap: periodic TTL sweeps alone keep ~20k live chains while 200k chains go through.
    tree: RadixTree[int] = RadixTree(ttl=2.0, backend=backend)  # type: ignore[arg-type]
    insert = tree.insert
    warm = 0
    for i in range(200_000):
        h = (i * 0x9E3779B97F4A7C15) & MASK
        now = i * 0.0001  # 20,000 chains per ttl
        insert((h, (h * 31 + 7) & MASK), i & 7, now)
        if i % 5_000 == 0:
            tree.evict(now)
            assert len(tree) <= 2 * 2 * 20_000 + 2 * 5_000
        if i == 100_000:
            warm = _rss()
    assert _rss() <= warm + RSS_MARGIN
    assert tree.evict(1e9) > 0 and len(tree) == 0 and tree._store.size() == 0
