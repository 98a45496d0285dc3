"""The LiteLLM plugin's routing policy on the replay's cases, next to the replay's default.

The plugin runs ``cache-cost`` but learns what a deployment caches from success callbacks,
which come when a request ends; until then it counts the prompt of each request in flight
as held where it runs, and it applies the hot-prefix rule only to a holder beyond its load
guard (issue 17: a prompt keeps its deployment while that deployment is not overloaded).
The replay models that with ``CacheCostPolicy(observe_at="completion",
hot_overloaded=<the load guard>)``. One router sees every request here; each plugin only
sees its own.

Run: ``python benchmarks/litellm_policy.py [SEEDS]`` (default 4: seeds 0-3; about a
minute on 2 cores). Prints a markdown table of mean / p99 TTFT, averaged over the seeds,
for docs/litellm.md.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
from collections.abc import Callable
from typing import Any

import attrs

from clusterrouting import within_load_guard
from prefixcache import DEFAULT_CONFIG
from prefixcache.replay import (
    BUNDLED_TRACE,
    DEFAULT_CLUSTER,
    CacheCostPolicy,
    ClusterModel,
    Request,
    auto_speedup,
    eviction_case,
    load_trace,
    percentile,
    shared_prefix_trace,
    simulate,
    synthetic_trace,
)


def load_guard_exceeded(in_flight: int, least: int) -> bool:
    """The plugin's test of a busy holder: beyond the load guard of ``DEFAULT_CONFIG``."""
    return not within_load_guard(
        in_flight,
        least,
        slack=DEFAULT_CONFIG.balance_abs_threshold,
        factor=DEFAULT_CONFIG.balance_rel_threshold,
    )


VARIANTS: dict[str, dict[str, Any]] = {
    "replay default (dispatch)": {},
    "--observe completion": {"observe_at": "completion"},
    "LiteLLM plugin": {"observe_at": "completion", "hot_overloaded": load_guard_exceeded},
}

CASES: dict[str, Callable[[int], tuple[list[Request], ClusterModel, float]]] = {
    "bundled trace": lambda s: (list(load_trace(BUNDLED_TRACE)), DEFAULT_CLUSTER, 0.8),
    "8 Zipf prompts, 8 replicas": lambda s: (
        list(shared_prefix_trace(seed=s, groups=8, prompts=2000, duration_s=120.0)),
        DEFAULT_CLUSTER,
        2.2,
    ),
    "synthetic chat": lambda s: (list(synthetic_trace(seed=s)), DEFAULT_CLUSTER, 0.8),
    "1 prompt, 2 replicas": lambda s: (
        list(shared_prefix_trace(seed=s)),
        attrs.evolve(DEFAULT_CLUSTER, replicas=2),
        2.2,
    ),
    "1 prompt, 8 replicas": lambda s: (list(shared_prefix_trace(seed=s)), DEFAULT_CLUSTER, 2.2),
    "eviction case": lambda s: (*eviction_case(s), 0.8),
}


def run_one(task: tuple[str, int, str]) -> tuple[str, int, str, float, float]:
    case, seed, variant = task
    requests, model, target_load = CASES[case](seed)
    policy = CacheCostPolicy(
        capacity_blocks=model.cache_blocks, block_tokens=model.block_tokens, **VARIANTS[variant]
    )
    speedup = auto_speedup(requests, model, target_load=target_load)
    ttft = simulate(requests, policy, model, speedup=speedup).ttft_s
    return case, seed, variant, statistics.fmean(ttft), percentile(sorted(ttft), 0.99)


def main(seeds: int) -> str:
    tasks = [
        (case, seed, variant)
        for case in CASES
        for seed in (range(1) if case == "bundled trace" else range(seeds))
        for variant in VARIANTS
    ]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(run_one, tasks, chunksize=1)
    by: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for case, _seed, variant, mean, p99 in results:
        by.setdefault((case, variant), []).append((mean, p99))
    lines = [
        f"Mean / p99 TTFT in seconds, averaged over seeds 0-{seeds - 1} (the bundled trace: "
        "one run).",
        "",
        "| case | " + " | ".join(VARIANTS) + " |",
        "|---" * (len(VARIANTS) + 1) + "|",
    ]
    for case in CASES:
        cells = []
        for variant in VARIANTS:
            runs = by[case, variant]
            mean = statistics.fmean(m for m, _ in runs)
            p99 = statistics.fmean(p for _, p in runs)
            cells.append(f"{mean:.3f} / {p99:.3f}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 4))
