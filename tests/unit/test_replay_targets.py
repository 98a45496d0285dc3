"""The issue's targets on the bundled trace with the documented defaults (simulated
quantities, deterministic; wall-time speed is measured by benchmarks, not asserted here)."""

from __future__ import annotations

from prefixcache.replay import BUNDLED_TRACE, DEFAULT_CLUSTER, load_trace, run_replay


def test_cache_cost_meets_the_targets_on_the_bundled_trace() -> None:
    reqs = load_trace(BUNDLED_TRACE)
    res = run_replay(reqs, model=DEFAULT_CLUSTER, policies=["round-robin", "cache-cost"])
    rr = res.policy("round-robin")
    ours = res.policy("cache-cost")
    assert ours.ideal_fraction >= 0.95
    assert ours.max_over_mean_requests <= 1.15
    assert rr.ttft_mean_s >= 2.0 * ours.ttft_mean_s
    # The defaults really put the cluster under pressure: round-robin queues.
    assert rr.ttft_p99_s > 5.0
    assert 3.0 < res.speedup < 3.3
