"""The fused loop of ``benchmarks/ceiling.py`` is only a fair comparison with ``Index[dict]``
if it does the same work: it must route every request of the bundled trace exactly as
``Index`` + ``select`` do."""

from __future__ import annotations

import sys
from pathlib import Path

from prefixcache import Candidate, Config, Index, ReplicaKey, select

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_fused_ceiling_loop_routes_like_index_and_select() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import ceiling
        import run
    finally:
        sys.path.remove(str(BENCH))
    chains, times = run.load_trace()
    keys = [ReplicaKey(f"node-{i}") for i in range(8)]
    cands = [Candidate(k, 0) for k in keys]
    cfg = Config()
    route = ceiling.fused_router(keys, cfg)
    ix = Index(cfg)
    picks = set()
    for chain, now in zip(chains, times, strict=True):
        want = select(cands, ix.decide("m", chain, cands, now), cfg)
        assert want is not None
        ix.observe("m", chain, want, now)
        assert route(chain, now) is want
        picks.add(want)
    assert len(picks) == 8  # every replica was chosen at some point: not a degenerate run
