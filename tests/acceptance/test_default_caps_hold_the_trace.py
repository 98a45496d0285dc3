"""The default entry cap holds the bundled conversation trace's working set: routing the
whole trace with the default ``Config`` evicts nothing by the cap (the tree ends as large as
with no cap at all), so the caps bound memory without degrading ordinary affinity."""

from __future__ import annotations

import gzip
import json
import random

from prefixcache import Candidate, Config, Index, ReplicaKey, select
from prefixcache.replay import BUNDLED_TRACE


def _route_trace(config: Config) -> int:
    rng = random.Random(1)
    ids: dict[int, int] = {}
    keys = [ReplicaKey(f"node-{i}") for i in range(8)]
    cands = [Candidate(k) for k in keys]
    ix = Index(config)
    with gzip.open(BUNDLED_TRACE, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            chain = tuple(ids.setdefault(h, rng.getrandbits(64)) for h in rec["hash_ids"])
            now = rec["timestamp"] / 1000.0
            ix.observe("m", chain, select(cands, ix.decide("m", chain, cands, now), config), now)
    tree = ix.tree("m")
    assert tree is not None
    return len(tree)


def test_the_default_cap_never_evicts_on_the_bundled_trace() -> None:
    capped = _route_trace(Config())
    uncapped = _route_trace(Config(max_entries=0, max_models=0))
    assert capped == uncapped  # counterfactual: a cap below the working set would shrink it
    assert uncapped < Config().max_entries
