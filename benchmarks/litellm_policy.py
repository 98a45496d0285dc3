"""The LiteLLM plugin's routing policy on the claim's cases (``prefixcache.replay._claim``:
the bundled trace and the generated cases per seed), next to the replay's default.

The plugin runs ``cache-cost`` but learns what a deployment caches from success callbacks,
which come when a request ends; until then it counts the prompt of each request in flight
as held where it runs, and it applies the hot-prefix rule only to a holder beyond its load
guard (issue 17: a prompt keeps its deployment while that deployment is not overloaded),
and, seeing no first token until a request ends, it drains each deployment's backlog at
``DEFAULT_PREFILL_TOKENS_PER_S`` (the simulated servers' prefill rate), or, with streamed
responses, at the rate it learns from their first-token times. The replay models that
with ``CacheCostPolicy(observe_at="completion", hot_overloaded=<the load guard>,
prefill_rate=DEFAULT_PREFILL_TOKENS_PER_S, learn_prefill_rate=<streamed>,
hot_confidence=HOT_CONFIDENCE)`` (the plugin's hot-prefix demand is the observed share).
One router sees every request here; each plugin only sees its own.

Run: ``python benchmarks/litellm_policy.py [SEEDS] [--rates]`` (default 4: seeds 0-3;
about 20 s on 2 cores). Prints a markdown table of mean / p99 TTFT, averaged over the
seeds, for docs/litellm.md; ``--rates`` replays the plugin configured at 5,000, 20,000
and 80,000 tokens per second instead, its rate fixed and learned.
"""

from __future__ import annotations

import functools
import multiprocessing
import statistics
import sys
from typing import Any

from clusterrouting import within_load_guard
from prefixcache import DEFAULT_CONFIG
from prefixcache.integrations._litellm_costs import HOT_CONFIDENCE
from prefixcache.integrations._litellm_ledger import DEFAULT_PREFILL_TOKENS_PER_S
from prefixcache.replay import CacheCostPolicy, auto_speedup, percentile, simulate
from prefixcache.replay._claim import ClaimCase, claim_cases, seeded_cases


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
    # Streamed responses (the plugin's default learn_prefill_rate=True): the rate is learned
    # from first-token times told at completion, from the configured rate on.
    "LiteLLM plugin, streamed": {
        "observe_at": "completion",
        "hot_overloaded": load_guard_exceeded,
        "prefill_rate": DEFAULT_PREFILL_TOKENS_PER_S,
        "learn_prefill_rate": True,
        "hot_confidence": HOT_CONFIDENCE,  # the plugin's: the observed share
    },
    # Responses not streamed teach nothing: the configured rate throughout.
    "LiteLLM plugin, not streamed": {
        "observe_at": "completion",
        "hot_overloaded": load_guard_exceeded,
        "prefill_rate": DEFAULT_PREFILL_TOKENS_PER_S,
        "hot_confidence": HOT_CONFIDENCE,
    },
    # prefill_tokens_per_s=None: a backlog drains only as its requests end (a rate of 1e-9
    # tokens per second drains nothing, and the backlog is capped by the requests not ended).
    "backlog held until the request ends": {
        "observe_at": "completion",
        "hot_overloaded": load_guard_exceeded,
        "prefill_rate": 1e-9,
        "hot_confidence": HOT_CONFIDENCE,
    },
}


@functools.cache
def cases(seed: int) -> tuple[ClaimCase, ...]:
    """The claim's generated cases for ``seed`` and, for seed 0, its bundled trace (the
    first claim case). Built once per process."""
    return (*([claim_cases()[0]] if seed == 0 else []), *seeded_cases(seed))


def run_one(task: tuple[int, int, str]) -> tuple[str, int, str, float, float]:
    seed, k, variant = task
    case = cases(seed)[k]
    model = case.model
    policy = CacheCostPolicy(
        capacity_blocks=model.cache_blocks, block_tokens=model.block_tokens, **VARIANTS[variant]
    )
    speedup = auto_speedup(case.requests, model, target_load=case.target_load)
    ttft = simulate(case.requests, policy, model, speedup=speedup).ttft_s
    return case.name, seed, variant, statistics.fmean(ttft), percentile(sorted(ttft), 0.99)


def main(seeds: int) -> str:
    tasks = [
        (seed, k, variant)
        for seed in range(seeds)
        for k in range(len(cases(seed)))
        for variant in VARIANTS
    ]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(run_one, tasks, chunksize=1)
    by: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name, _seed, variant, mean, p99 in results:
        by.setdefault((name, variant), []).append((mean, p99))
    lines = [
        f"Mean / p99 TTFT in seconds, averaged over seeds 0-{seeds - 1} (the bundled trace: "
        "one run).",
        "",
        "| case | " + " | ".join(VARIANTS) + " |",
        "|---" * (len(VARIANTS) + 1) + "|",
    ]
    for name in dict.fromkeys(n for n, _v in by):
        cells = []
        for variant in VARIANTS:
            runs = by[name, variant]
            mean = statistics.fmean(m for m, _ in runs)
            p99 = statistics.fmean(p for _, p in runs)
            cells.append(f"{mean:.3f} / {p99:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rate_variants() -> dict[str, dict[str, Any]]:
    """The plugin configured 4x under, at and 4x over the replayed servers' rate, with the
    rate fixed (not streamed) and learned (streamed)."""
    streamed = VARIANTS["LiteLLM plugin, streamed"]
    fixed = VARIANTS["LiteLLM plugin, not streamed"]
    out: dict[str, dict[str, Any]] = {}
    for rate in (5_000.0, 20_000.0, 80_000.0):
        out[f"{rate:,.0f} fixed"] = {**fixed, "prefill_rate": rate}
        out[f"{rate:,.0f} learned"] = {**streamed, "prefill_rate": rate}
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--rates" in args:  # the configured rate's sensitivity, fixed and learned
        args.remove("--rates")
        VARIANTS = rate_variants()
    print(main(int(args[0]) if args else 4))
