"""Round-robin with an infinite cache on the bundled trace, against an independent count."""

from __future__ import annotations

from prefixcache.replay import BUNDLED_TRACE, ClusterModel, load_trace, run_replay


def test_round_robin_infinite_cache_matches_independent_count() -> None:
    reqs = load_trace(BUNDLED_TRACE)
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
