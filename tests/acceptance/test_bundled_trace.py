"""Acceptance on the whole bundled trace (the Mooncake conversation trace).

Each test replays or reads all of its 12,031 requests and checks simulated quantities only
(deterministic); wall-time speed is measured by ``benchmarks/``, never asserted here.
"""

from __future__ import annotations

import pytest

from prefixcache.replay import (
    BUNDLED_TRACE,
    DEFAULT_CLUSTER,
    ClusterModel,
    Request,
    ideal_hit_ratio,
    load_trace,
    run_replay,
)


@pytest.fixture(scope="module")
def reqs() -> list[Request]:
    return load_trace(BUNDLED_TRACE)


def test_bundled_trace_is_the_mooncake_conversation_trace(reqs: list[Request]) -> None:
    assert len(reqs) == 12_031
    assert sum(len(r.blocks) for r in reqs) == 288_500
    assert ideal_hit_ratio(reqs) == pytest.approx(0.3664, abs=5e-5)


def test_cache_cost_meets_the_targets_on_the_bundled_trace(reqs: list[Request]) -> None:
    # The documented targets with the documented defaults.
    res = run_replay(reqs, model=DEFAULT_CLUSTER, policies=["round-robin", "cache-cost"])
    rr = res.policy("round-robin")
    ours = res.policy("cache-cost")
    assert ours.ideal_fraction >= 0.95
    assert ours.max_over_mean_requests <= 1.15
    assert rr.ttft_mean_s >= 2.0 * ours.ttft_mean_s
    # The defaults really put the cluster under pressure: round-robin queues.
    assert rr.ttft_p99_s > 5.0
    assert 3.0 < res.speedup < 3.3


def test_round_robin_infinite_cache_matches_independent_count(reqs: list[Request]) -> None:
    replicas = 8
    # Independent count: request i lands on i % 8; its hits are its leading block ids that
    # some earlier request on the same replica had (prefix-chained ids: membership of the
    # id means the whole prefix is there). No simulator code involved.
    seen: list[set[int]] = [set() for _ in range(replicas)]
    hits = 0
    total = 0
    for i, r in enumerate(reqs):
        s = seen[i % replicas]
        k = 0
        while k < len(r.blocks) and r.blocks[k] in s:
            k += 1
        hits += k
        total += len(r.blocks)
        s.update(r.blocks)
    expected = hits / total
    model = ClusterModel(replicas=replicas, cache_blocks=None)
    res = run_replay(reqs, model=model, policies=["round-robin"], speedup=1.0)
    got = res.policy("round-robin")
    assert got.hit_ratio == expected
    assert 0.1 < expected < res.ideal_hit_ratio  # sessions split across replicas lose hits
    assert got.requests_per_replica == tuple(
        len(range(k, len(reqs), replicas)) for k in range(replicas)
    )
