"""``clusterrouting-replay claim``: every policy on the cases the project's claim covers.

The cases (fixed before any tuning; every policy at its defaults):

* the bundled Mooncake conversation trace with the default cluster;
* sglang issue #21199's shape, 400 prompts sharing a ~2.5k-token system prompt, on 2 and
  on 8 replicas; and 8 system prompts with Zipf popularity (2,000 prompts) on 8 replicas.
  Auto speed-up at ``--target-load 2.2``: two thirds of each prompt is the shared prompt,
  so the uncached load is about 0.75 of the prefill capacity;
* two synthetic multi-turn chat traces (:func:`synthetic_trace` seeds 0 and 1);
* the eviction case (:func:`eviction_case`, working set near the KV capacity).

For each case the report lists every policy's mean and p99 TTFT, hit fraction of the
ideal and max/mean requests, and names the lowest mean and p99 among policies at
max/mean <= 1.15, with the default policy's rank and the balanced policies better than it
on both (at or below its mean and p99, below on one). :func:`run_seeds` and
:func:`format_seeds` do the same for the generated cases over several seeds
(``clusterrouting-replay claim --seeds N``), ranking by the means over the seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from clusterrouting import InvalidRecordError
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._policies import POLICY_NAMES
from prefixcache.replay._report import (
    DEFAULT_POLICY,
    PolicyResult,
    ReplayResult,
    run_replay,
)
from prefixcache.replay._synth import eviction_case, shared_prefix_trace, synthetic_trace
from prefixcache.replay._trace import Request, load_trace

__all__ = [
    "SUMMARY_HEADER",
    "CaseSummary",
    "claim_cases",
    "format_claim",
    "format_seeds",
    "plot_claim",
    "run_claim",
    "run_seeds",
    "seeded_cases",
    "summarize",
    "summary_row",
]


@attrs.frozen
class ClaimCase:
    """One case: a name, its requests, the cluster and the load level."""

    name: str
    requests: Sequence[Request]
    model: ClusterModel
    target_load: float = 0.8


def _shared_prefix_cases(seed: int) -> list[ClaimCase]:
    """sglang #21199's shape on 2 and 8 replicas, and 8 Zipf-popular system prompts."""
    return [
        ClaimCase(
            "1 system prompt x 400, 2 replicas",
            shared_prefix_trace(seed=seed),
            attrs.evolve(DEFAULT_CLUSTER, replicas=2),
            2.2,
        ),
        ClaimCase(
            "1 system prompt x 400, 8 replicas",
            shared_prefix_trace(seed=seed),
            DEFAULT_CLUSTER,
            2.2,
        ),
        ClaimCase(
            "8 Zipf system prompts x 2000, 8 repl.",
            shared_prefix_trace(seed=seed, groups=8, prompts=2000, duration_s=120.0),
            DEFAULT_CLUSTER,
            2.2,
        ),
    ]


def claim_cases() -> list[ClaimCase]:
    """The claim's cases (see the module docstring)."""
    from prefixcache.replay._trace import BUNDLED_TRACE

    ev_reqs, ev_model = eviction_case(0)
    return [
        ClaimCase("mooncake conversation, 8 replicas", load_trace(BUNDLED_TRACE), DEFAULT_CLUSTER),
        *_shared_prefix_cases(0),
        ClaimCase("synthetic chat, seed 0", synthetic_trace(seed=0), DEFAULT_CLUSTER),
        ClaimCase("synthetic chat, seed 1", synthetic_trace(seed=1), DEFAULT_CLUSTER),
        ClaimCase("eviction case (KV ~ working set)", ev_reqs, ev_model),
    ]


def seeded_cases(seed: int) -> list[ClaimCase]:
    """The claim's generated cases drawn with ``seed``: the three shared-prefix shapes, a
    synthetic chat trace and the eviction case (the bundled trace has no seed)."""
    ev_reqs, ev_model = eviction_case(seed)
    return [
        *_shared_prefix_cases(seed),
        ClaimCase("synthetic chat", synthetic_trace(seed=seed), DEFAULT_CLUSTER),
        ClaimCase("eviction case (KV ~ working set)", ev_reqs, ev_model),
    ]


def _replay(
    cases: Sequence[ClaimCase],
    policies: Sequence[str],
    jobs: int | None,
    progress: Callable[[str, int, int], None] | None,
) -> list[ReplayResult]:
    return [
        run_replay(
            c.requests,
            trace_name=c.name,
            model=c.model,
            policies=policies,
            target_load=c.target_load,
            jobs=jobs,
            progress=progress,
        )
        for c in cases
    ]


def run_claim(
    *,
    policies: Sequence[str] = POLICY_NAMES,
    jobs: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ReplayResult]:
    """Replay every claim case with ``policies``."""
    return _replay(claim_cases(), policies, jobs, progress)


def run_seeds(
    seeds: Sequence[int],
    *,
    policies: Sequence[str] = POLICY_NAMES,
    jobs: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[list[ReplayResult]]:
    """Replay :func:`seeded_cases` for each seed; one list of results per seed."""
    return [_replay(seeded_cases(seed), policies, jobs, progress) for seed in seeds]


def format_seeds(per_seed: Sequence[Sequence[ReplayResult]]) -> str:
    """A Markdown summary over seeds: per case, every policy's mean TTFT and p99 TTFT
    averaged over the seeds, and the lowest of each among the policies balanced on every
    seed (max/mean <= 1.15), with the default policy's rank and the policies better than it
    on both averages."""
    n = len(per_seed)
    lines = [
        f"| case (mean over {n} seeds) | lowest mean TTFT (balanced) | lowest p99 TTFT "
        f"(balanced) | {DEFAULT_POLICY} mean / p99 | rank of {DEFAULT_POLICY} (mean, p99) | "
        "better on both (balanced) |",
        "|---|---|---|---|---|---|",
    ]
    for k, first in enumerate(per_seed[0]):
        names = [p.name for p in first.policies]
        mean: dict[str, float] = {}
        p99: dict[str, float] = {}
        ok = []
        for name in names:
            runs = [seed_results[k].policy(name) for seed_results in per_seed]
            mean[name] = sum(r.ttft_mean_s for r in runs) / n
            p99[name] = sum(r.ttft_p99_s for r in runs) / n
            if all(r.balanced for r in runs):
                ok.append(name)
        if DEFAULT_POLICY not in mean or not ok:
            continue
        bm = min(ok, key=lambda x: mean[x])
        bp = min(ok, key=lambda x: p99[x])
        rank_m = 1 + sum(1 for x in ok if mean[x] < mean[DEFAULT_POLICY])
        rank_p = 1 + sum(1 for x in ok if p99[x] < p99[DEFAULT_POLICY])
        both = _better_on_both(
            (mean[DEFAULT_POLICY], p99[DEFAULT_POLICY]),
            {x: (mean[x], p99[x]) for x in ok if x != DEFAULT_POLICY},
        )
        lines.append(
            f"| {first.trace} | {bm} ({mean[bm]:.4f} s) | {bp} ({p99[bp]:.4f} s) | "
            f"{mean[DEFAULT_POLICY]:.4f} / {p99[DEFAULT_POLICY]:.4f} s | "
            f"{rank_m}, {rank_p} of {len(ok)} | {both} |"
        )
    return "\n".join(lines)


def _beats(mean: float, p99: float, mean0: float, p990: float) -> bool:
    """At or below (``mean0``, ``p990``) on both and below on one: better on both counts (a
    policy that is not only trades one for the other)."""
    return mean <= mean0 and p99 <= p990 and (mean < mean0 or p99 < p990)


def _better_on_both(ours: tuple[float, float], others: dict[str, tuple[float, float]]) -> str:
    """The policies of ``others`` (name -> mean, p99) better than ``ours`` on both counts
    (:func:`_beats`; each with its mean / p99, four digits), or ``none``."""
    won = [
        f"{name} ({m:.4f} / {p:.4f} s)" for name, (m, p) in others.items() if _beats(m, p, *ours)
    ]
    return ", ".join(won) or "none"


SUMMARY_HEADER = (
    "| {case} | lowest mean TTFT (balanced) | lowest p99 TTFT (balanced) | "
    "{policy} mean / p99 | rank of {policy} (mean, p99) | better on both (balanced) |\n"
    "|---|---|---|---|---|---|"
)
"""The header of :func:`summary_row`'s table (``case``: the first column's title)."""


@attrs.frozen(kw_only=True)
class CaseSummary:
    """How one policy (``ours``) placed in one replay among the balanced policies
    (:attr:`PolicyResult.balanced`; ``ours`` counts as one if it is).

    ``lowest_mean`` / ``lowest_p99``: the balanced policy with the lowest mean / p99 TTFT
    (the first in table order on a tie), ``None`` if none is balanced; ``rank_mean`` /
    ``rank_p99``: 1 + the balanced policies strictly below ``ours``; ``balanced``: how many
    are balanced; ``better_on_both``: the balanced policies at or below ``ours`` on both
    and below it on one.
    """

    ours: PolicyResult
    lowest_mean: PolicyResult | None
    lowest_p99: PolicyResult | None
    rank_mean: int = attrs.field(validator=attrs.validators.ge(1))
    rank_p99: int = attrs.field(validator=attrs.validators.ge(1))
    balanced: int = attrs.field(validator=attrs.validators.ge(0))
    better_on_both: tuple[PolicyResult, ...]

    @property
    def leads(self) -> bool:
        """``ours`` is balanced and no balanced policy is below it on the mean or the p99
        (a tie counts in its favour)."""
        return self.ours.balanced and self.rank_mean == 1 and self.rank_p99 == 1


def summarize(res: ReplayResult, *, policy: str = DEFAULT_POLICY) -> CaseSummary:
    """Where ``policy`` placed in ``res`` (see :class:`CaseSummary`).

    Raises:
        InvalidRecordError: ``policy`` was not replayed in ``res``.
    """
    me = next((p for p in res.policies if p.name == policy), None)
    if me is None:
        replayed = ", ".join(p.name for p in res.policies)
        raise InvalidRecordError("policy", policy, f"was not replayed (replayed: {replayed})")
    ok = [p for p in res.policies if p.balanced]
    m0, p0 = me.ttft_mean_s, me.ttft_p99_s
    return CaseSummary(
        ours=me,
        lowest_mean=min(ok, key=lambda p: p.ttft_mean_s) if ok else None,
        lowest_p99=min(ok, key=lambda p: p.ttft_p99_s) if ok else None,
        rank_mean=1 + sum(1 for p in ok if p.ttft_mean_s < m0),
        rank_p99=1 + sum(1 for p in ok if p.ttft_p99_s < p0),
        balanced=len(ok),
        better_on_both=tuple(p for p in ok if _beats(p.ttft_mean_s, p.ttft_p99_s, m0, p0)),
    )


def summary_row(case: str, s: CaseSummary) -> str:
    """One row of the table under :data:`SUMMARY_HEADER` (TTFTs in seconds, 3 digits); the
    rank column reads ``unbalanced (1.152x)`` when the policy itself is not balanced."""

    def best(p: PolicyResult | None, attr: str) -> str:
        return "none" if p is None else f"{p.name} ({getattr(p, attr):.3f} s)"

    both = ", ".join(
        f"{p.name} ({p.ttft_mean_s:.4f} / {p.ttft_p99_s:.4f} s)" for p in s.better_on_both
    )
    me = s.ours
    rank = (
        f"{s.rank_mean}, {s.rank_p99} of {s.balanced}"
        if me.balanced
        else f"unbalanced ({me.max_over_mean_requests:.3f}x)"
    )
    return (
        f"| {case} | {best(s.lowest_mean, 'ttft_mean_s')} | {best(s.lowest_p99, 'ttft_p99_s')} "
        f"| {me.ttft_mean_s:.3f} / {me.ttft_p99_s:.3f} s | {rank} | {both or 'none'} |"
    )


def format_claim(results: Sequence[ReplayResult]) -> str:
    """A Markdown report: a summary line per case, then one table per case."""
    out = []
    summary = [SUMMARY_HEADER.format(case="case", policy=DEFAULT_POLICY)]
    for res in results:
        out.append(f"### {res.trace}")
        out.append("")
        out.append(
            f"{res.requests} requests, {res.model.replicas} replicas, speedup "
            f"{res.speedup:.2f}, ideal hit ratio {res.ideal_hit_ratio:.3f}"
        )
        out.append("")
        out.append("| policy | hit / ideal | TTFT mean (s) | p90 | p99 | max/mean |")
        out.append("|---|---|---|---|---|---|")
        for p in res.policies:
            out.append(
                f"| {p.name} | {p.ideal_fraction:.1%} | {p.ttft_mean_s:.3f} | "
                f"{p.ttft_p90_s:.3f} | {p.ttft_p99_s:.3f} | {p.max_over_mean_requests:.2f} |"
            )
        out.append("")
        if any(p.name == DEFAULT_POLICY for p in res.policies):
            summary.append(summary_row(res.trace, summarize(res)))
    return "\n".join([*summary, "", *out])


def plot_claim(results: Sequence[ReplayResult], path: str) -> None:
    """Mean TTFT of every policy per case, relative to round-robin (log scale), as a PNG.

    Raises:
        ModuleNotFoundError: matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [p.name for p in results[0].policies]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(results)
    for k, res in enumerate(results):
        rr = next((p.ttft_mean_s for p in res.policies if p.name == "round-robin"), 1.0)
        vals = [p.ttft_mean_s / rr for p in res.policies]
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, vals, width, label=res.trace)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=40, ha="right")
    ax.set_ylabel("mean TTFT / round-robin's (log)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
