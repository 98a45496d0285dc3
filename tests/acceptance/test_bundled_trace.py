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


def test_every_policy_on_the_bundled_trace(reqs: list[Request]) -> None:
    # The claim on the bundled trace: among policies keeping max/mean requests <= 1.15,
    # cache-cost has the lowest mean and p99 TTFT; peers run at their defaults.
    from prefixcache.replay import BALANCE_LIMIT, POLICY_NAMES

    res = run_replay(reqs, model=DEFAULT_CLUSTER)
    assert [p.name for p in res.policies] == list(POLICY_NAMES)
    doc = res.to_json()
    assert doc["schema_version"] == 2 and doc["default_policy"] == "cache-cost"
    assert doc["best_policy"] == "cache-cost"
    balanced = [p for p in res.policies if p.max_over_mean_requests <= BALANCE_LIMIT]
    ours = res.policy("cache-cost")
    assert ours.ttft_mean_s == min(p.ttft_mean_s for p in balanced)
    assert ours.ttft_p99_s == min(p.ttft_p99_s for p in balanced)
    for p in res.policies:
        # The workload's share (reachable) is the same for everyone within a few percent;
        # what differs is how much of it the router takes.
        assert 0.07 < p.reachable_hit_ratio <= res.ideal_hit_ratio + 1e-12
        assert p.regret_ratio >= 0.0
    # Every prompt starts with the same block: production-stack's prefix trie, with no
    # load signal, sends everything to one replica.
    assert res.policy("prodstack-prefix").max_over_mean_requests == 8.0


def test_precise_policies_win_where_engines_evict() -> None:
    # eviction_case: KV capacity below the working set. The router's own record of what it
    # sent drifts from what the engines hold; the engines' events do not.
    from prefixcache.replay import eviction_case

    reqs, model = eviction_case(0)
    names = ["llm-d-default", "llm-d-precise"]
    res = run_replay(reqs, model=model, policies=names)
    a, p = res.policy("llm-d-default"), res.policy("llm-d-precise")
    assert p.ttft_mean_s < a.ttft_mean_s
    assert p.ttft_p99_s < 1.05 * a.ttft_p99_s
    assert p.hit_ratio >= a.hit_ratio
    assert p.kv_batches[1] == p.kv_batches[0] > 0  # every batch delivered (no loss)
    assert a.kv_batches == (0, 0, 0)  # approximate policies cost the stream nothing


def test_cache_cost_leads_the_eviction_case() -> None:
    # cache-cost's mirror uses KV as the engines do (running requests pin their prompt
    # blocks and hold output blocks, weighted by how long they run; blocks become evictable
    # when their request ends), so its record of what it sent stays about as close to the
    # engines as their events: the two cache-cost variants have the two lowest mean and p99
    # TTFT of every balanced policy (0.180 s / 1.019 s and 0.182 s / 1.037 s on this seed;
    # over 32 seeds of the case the mirror leads on 25 and 23 seeds), at least 10 % below
    # the best peer's (llm-d-precise, 0.214 s / 1.285 s), and hit about as often.
    from prefixcache.replay import BALANCE_LIMIT, POLICY_NAMES, eviction_case

    reqs, model = eviction_case(0)
    res = run_replay(reqs, model=model, policies=POLICY_NAMES)
    balanced = [p for p in res.policies if p.max_over_mean_requests <= BALANCE_LIMIT]
    ours = res.policy("cache-cost")
    assert ours in balanced
    ours_both = [p for p in balanced if p.name.startswith("cache-cost")]
    peers = [p for p in balanced if not p.name.startswith("cache-cost")]
    assert len(ours_both) == 2
    for metric in ("ttft_mean_s", "ttft_p99_s"):
        best_peer = min(getattr(p, metric) for p in peers)
        assert max(getattr(p, metric) for p in ours_both) <= 0.9 * best_peer
    precise = res.policy("cache-cost-precise")
    assert abs(ours.hit_ratio - precise.hit_ratio) <= 0.005
    assert precise.kv_batches[1] == precise.kv_batches[0] > 0
    assert ours.kv_batches == (0, 0, 0)
