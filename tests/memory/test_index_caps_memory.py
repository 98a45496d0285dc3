"""An index fed by a peer that invents model names and chains stays within its caps (RSS,
since datrie allocates in C).

100,000 peer events, each for a model name never seen before with an 8-block chain, go
through ``Sync`` into an ``Index`` capped for untrusted writers: the models held never exceed
``max_models``, no tree exceeds ``max_entries``, and the process grows by a bounded amount.
Then the caps churn with distinct chains on the models that were admitted.
"""

from __future__ import annotations

import gc

import psutil
import pytest

from prefixcache import BACKENDS, Config, Index, ObserveEvent, Sync

EVENTS = 100_000
# The caps of a router exposed to untrusted writers (docs/security.md): at most 8 trees of
# 25,000 entries. Before the caps this flood kept one tree per name (+405 MiB).
RSS_LIMIT = 256 * 1024 * 1024
CAPPED = Config(max_entries=25_000, max_models=8)


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flood_of_invented_models_and_chains_stays_within_the_caps(backend: str) -> None:
    config = CAPPED
    index = Index(config, backend=backend)  # type: ignore[arg-type]
    sync = Sync(index, None, clock=lambda: 1.0)
    before = _rss()
    for i in range(EVENTS):
        chain = tuple(range(i * 8, i * 8 + 8))
        sync.apply_observe(ObserveEvent(model=f"invented-{i}", chain=chain, node_id="peer"))
    assert len(index.models()) == config.max_models
    assert index.refused_observes == EVENTS - config.max_models
    admitted = sorted(index.models())
    for i in range(EVENTS):
        chain = tuple(range(10**9 + i * 8, 10**9 + i * 8 + 8))
        sync.apply_observe(
            ObserveEvent(model=admitted[i % len(admitted)], chain=chain, node_id="p")
        )
    for model in admitted:
        tree = index.tree(model)
        assert tree is not None and len(tree) == config.max_entries
    grown = _rss() - before
    assert grown <= RSS_LIMIT, f"RSS grew {grown / 2**20:.1f} MiB"
