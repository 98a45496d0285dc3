"""Running a replay across policies and reporting the results (table, JSON, plot)."""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_number
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._policies import (
    DEFAULT_POLICIES,
    KV_EVENT_PAIRS,
    ObserveAt,
    make_policy,
)
from prefixcache.replay._sim import simulate
from prefixcache.replay._trace import Request, ideal_hit_ratio

__all__ = [
    "BALANCE_LIMIT",
    "DEFAULT_POLICY",
    "DEFAULT_TARGET_LOAD",
    "SCHEMA_VERSION",
    "PolicyResult",
    "ReplayResult",
    "auto_speedup",
    "format_kv_events",
    "format_table",
    "percentile",
    "plot_result",
    "run_replay",
]

SCHEMA_VERSION = 2
"""Version of the ``--json`` document (2 added ``schema_version``, ``default_policy``,
``best_policy``, ``slo_s`` and the per-policy metrics after ``wall_s``)."""

DEFAULT_POLICY = "cache-cost"
"""The policy the project recommends."""

BALANCE_LIMIT = 1.15
"""``best_policy`` only considers policies with max/mean requests per replica <= this."""

DEFAULT_TARGET_LOAD = 0.8
"""``speedup="auto"``: prompt tokens offered per second, as a fraction of the cluster's
prefill capacity when nothing is cached."""


@attrs.frozen(kw_only=True)
class PolicyResult:
    """One policy's replay. Times in seconds; ratios in [0, 1]."""

    name: str
    observe_at: str
    hit_ratio: float
    ideal_fraction: float
    ttft_mean_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    max_over_mean_requests: float
    requests_per_replica: tuple[int, ...]
    decisions_per_s: float
    routing_s: float
    wall_s: float
    reachable_hit_ratio: float = math.nan
    regret_ratio: float = math.nan
    ttft_p90_s: float = math.nan
    throughput_tokens_per_s: float = math.nan
    slo_share: float | None = None
    max_over_mean_prefill: float = math.nan
    kv_batches: tuple[int, int, int] = (0, 0, 0)

    @property
    def balanced(self) -> bool:
        """Ranked in the reports: its busiest replica took at most ``BALANCE_LIMIT`` times
        the mean requests, and its mean TTFT is a number (not NaN: it served requests)."""
        return self.max_over_mean_requests <= BALANCE_LIMIT and math.isfinite(self.ttft_mean_s)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this policy (``--json``); non-finite numbers become ``null``."""
        d = attrs.asdict(self)
        d["requests_per_replica"] = list(self.requests_per_replica)
        d["kv_batches"] = dict(
            zip(("published", "delivered", "lost"), self.kv_batches, strict=True)
        )
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


@attrs.frozen(kw_only=True)
class ReplayResult:
    """A replay of one trace across policies."""

    trace: str
    requests: int
    blocks: int
    ideal_hit_ratio: float
    speedup: float
    model: ClusterModel
    seed: int
    policies: tuple[PolicyResult, ...]
    slo_s: float | None = None

    @property
    def best_policy(self) -> str | None:
        """The policy with the lowest mean TTFT among the balanced ones
        (:attr:`PolicyResult.balanced`), or ``None`` if none qualifies."""
        ok = [p for p in self.policies if p.balanced]
        return min(ok, key=lambda p: p.ttft_mean_s).name if ok else None

    def policy(self, name: str) -> PolicyResult:
        """The result of policy ``name``. Raises ``KeyError`` if it was not replayed."""
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document (keys listed in docs/replay.md)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "default_policy": DEFAULT_POLICY,
            "best_policy": self.best_policy,
            "slo_s": self.slo_s,
            "trace": self.trace,
            "requests": self.requests,
            "blocks": self.blocks,
            "ideal_hit_ratio": self.ideal_hit_ratio,
            "speedup": self.speedup,
            "seed": self.seed,
            "cluster": attrs.asdict(self.model),
            "policies": [p.to_json() for p in self.policies],
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ascending values, linear interpolation; NaN if empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
    2.5

    Raises:
        InvalidRecordError: ``q`` is not a number in [0, 1].
    """
    check_number("q", q, 0.0, 1.0)
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


def auto_speedup(
    requests: Sequence[Request],
    model: ClusterModel = DEFAULT_CLUSTER,
    *,
    target_load: float = DEFAULT_TARGET_LOAD,
) -> float:
    """The arrival speed-up at which the trace offers ``target_load`` of the cluster's
    prefill capacity in prompt tokens (as if nothing were cached).

    ``speedup = target_load * replicas * prefill_tokens_per_s * duration / prompt_tokens``
    with ``duration`` the span of arrivals. 1.0 for a trace without span or tokens.

    Raises:
        InvalidRecordError: ``target_load`` is not a finite number > 0.
    """
    if isinstance(target_load, bool) or not math.isfinite(target_load) or target_load <= 0:
        raise InvalidRecordError("target_load", target_load, "must be a finite number > 0")
    if len(requests) < 2:
        return 1.0
    span = requests[-1].arrival - requests[0].arrival
    tokens = sum(r.input_tokens for r in requests)
    if span <= 0 or tokens <= 0:
        return 1.0
    capacity = model.replicas * model.prefill_tokens_per_s
    return target_load * capacity * span / tokens


@attrs.frozen(kw_only=True)
class ReplayJob:
    """One trace and cluster, replayed once per policy."""

    requests: Sequence[Request]
    model: ClusterModel
    speedup: float
    seed: int
    observe_at: ObserveAt | None
    slo_s: float | None
    ideal: float
    total_blocks: int

    def run(
        self,
        name: str,
        progress: Callable[[int, int], None] | None = None,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
        decision_every: int = 100,
        params: dict[str, float] | None = None,
    ) -> PolicyResult:
        requests = self.requests
        sp = self.speedup
        total_blocks = self.total_blocks
        ideal = self.ideal
        slo_s = self.slo_s
        policy = make_policy(
            name, self.model, seed=self.seed, observe_at=self.observe_at, params=params
        )
        if on_decision is not None:
            policy.log_every = decision_every  # type: ignore[attr-defined]
            policy.log_sink = on_decision  # type: ignore[attr-defined]
        out = simulate(requests, policy, self.model, speedup=sp, progress=progress)
        hits = sum(out.hit_blocks)
        hr = hits / total_blocks if total_blocks else 0.0
        ttft = sorted(out.ttft_s)
        rpr = out.requests_per_replica
        mean_req = sum(rpr) / len(rpr)
        reach = sum(out.reachable_blocks)
        regret = sum(
            max(0, a - b) for a, b in zip(out.reachable_blocks, out.hit_blocks, strict=True)
        )
        ppr = out.prefill_tokens_per_replica
        mean_pf = sum(ppr) / len(ppr) if ppr else 0.0
        start = requests[0].arrival / sp if requests else 0.0
        span = out.end_s - start
        out_tokens = sum(r.output_tokens for r in requests)
        return PolicyResult(
            name=name,
            observe_at=policy.observe_at,
            hit_ratio=hr,
            ideal_fraction=hr / ideal if ideal > 0 else (1.0 if hr == 0 else math.inf),
            ttft_mean_s=sum(ttft) / len(ttft) if ttft else math.nan,
            ttft_p50_s=percentile(ttft, 0.5),
            ttft_p99_s=percentile(ttft, 0.99),
            max_over_mean_requests=max(rpr) / mean_req if mean_req else math.nan,
            requests_per_replica=rpr,
            decisions_per_s=len(requests) / out.routing_s if out.routing_s > 0 else math.inf,
            routing_s=out.routing_s,
            wall_s=out.wall_s,
            reachable_hit_ratio=reach / total_blocks if total_blocks else 0.0,
            regret_ratio=regret / total_blocks if total_blocks else 0.0,
            ttft_p90_s=percentile(ttft, 0.9),
            throughput_tokens_per_s=out_tokens / span if span > 0 else math.nan,
            slo_share=(
                None
                if slo_s is None
                else (sum(1 for x in ttft if x <= slo_s) / len(ttft) if ttft else 1.0)
            ),
            max_over_mean_prefill=max(ppr) / mean_pf if mean_pf else math.nan,
            kv_batches=out.kv_batches,
        )


_JOB: ReplayJob | None = None
"""The job forked workers inherit (set only while a pool runs)."""


def _run_job(name: str) -> PolicyResult:
    assert _JOB is not None
    return _JOB.run(name)


def run_replay(
    requests: Sequence[Request],
    *,
    trace_name: str = "<memory>",
    model: ClusterModel = DEFAULT_CLUSTER,
    policies: Sequence[str] = DEFAULT_POLICIES,
    speedup: float | None = None,
    target_load: float = DEFAULT_TARGET_LOAD,
    seed: int = 0,
    observe_at: ObserveAt | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    slo_s: float | None = None,
    on_decision: Callable[[dict[str, Any]], None] | None = None,
    decision_every: int = 100,
    jobs: int | None = None,
) -> ReplayResult:
    """Replay ``requests`` through each named policy on a fresh cluster ``model``.

    Args:
        requests: the trace, sorted by arrival (see ``load_trace``).
        trace_name: the name reported.
        model: the cluster.
        policies: policy names (see ``POLICY_NAMES``), replayed in this order.
        speedup: arrival-time divisor; ``None`` picks :func:`auto_speedup` at
            ``target_load``.
        target_load: the load level for ``speedup=None``.
        seed: seed of the ``random`` policy.
        observe_at: override when indexing policies observe (``None``: each one's default).
        progress: ``progress(policy, done, total)`` as the replay advances.
        slo_s: a TTFT objective; each policy then reports the share of requests meeting it.
        on_decision: receives every ``decision_every``-th decision of the policies built on
            ``pick_lowest_cost`` or ``select`` (``cache-cost``, ``cache-cost-precise``,
            ``prefix``), explained: ``{"policy", "request", "time_s", "prompt_tokens",
            "prompt_blocks", "explanation"}`` (counts only, no prompt content).
        decision_every: the sampling period of ``on_decision`` (int >= 1).
        jobs: policies replayed at once in forked worker processes (``None``: up to 2, the
            CPUs available; 1: in this process). Results do not depend on it; with
            ``on_decision`` the replay stays in this process, and ``progress`` then only
            hears of each policy when it finishes.

    Returns:
        A :class:`ReplayResult`. Per policy: ``hit_ratio`` (cached leading blocks at
        admission over all blocks), ``reachable_hit_ratio`` (blocks cached on *some*
        replica when the request arrived: what a perfect router could have hit),
        ``regret_ratio`` (blocks cached elsewhere but not where it went, over all blocks),
        TTFT mean and p50/p90/p99, ``throughput_tokens_per_s`` (output tokens over the
        span from the first arrival to the last completion), ``slo_share``,
        ``max_over_mean_requests`` and ``max_over_mean_prefill`` (prefilled tokens of the
        busiest replica over the mean), ``decisions_per_s`` (requests / wall time inside
        the policy).

    Raises:
        InvalidRecordError: unknown policy, bad ``speedup``, ``observe_at`` or ``slo_s``
            (a finite number > 0), or a policy list that is empty or names a policy twice.
    """
    if not policies:
        raise InvalidRecordError("policies", list(policies), "must name at least one policy")
    if type(decision_every) is not int or decision_every < 1:
        raise InvalidRecordError("decision_every", decision_every, "must be an int >= 1")
    if slo_s is not None:
        check_number("slo_s", slo_s, 0.0, above=True)
    names = list(policies)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # results are looked up by name
        raise InvalidRecordError("policies", names, f"names {', '.join(twice)} more than once")
    for name in names:  # fail before a long replay, not in the middle of it
        make_policy(name, model, seed=seed, observe_at=observe_at)
    sp = auto_speedup(requests, model, target_load=target_load) if speedup is None else speedup
    total_blocks = sum(len(r.blocks) for r in requests)
    ideal = ideal_hit_ratio(requests)
    job = ReplayJob(
        requests=requests,
        model=model,
        speedup=sp,
        seed=seed,
        observe_at=observe_at,
        slo_s=slo_s,
        ideal=ideal,
        total_blocks=total_blocks,
    )
    if jobs is None:
        jobs = min(2, os.cpu_count() or 1)
    parallel = (
        jobs > 1
        and len(names) > 1
        and on_decision is None
        and "fork" in multiprocessing.get_all_start_methods()
    )
    results: list[PolicyResult] = []
    if parallel:
        global _JOB
        _JOB = job
        try:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(min(jobs, len(names))) as pool:
                for res in pool.imap(_run_job, names):
                    results.append(res)
                    if progress is not None:
                        progress(res.name, len(requests), len(requests))
        finally:
            _JOB = None
    else:
        for name in names:
            cb = None if progress is None else functools.partial(progress, name)
            results.append(job.run(name, cb, on_decision, decision_every))
    return ReplayResult(
        trace=trace_name,
        requests=len(requests),
        blocks=total_blocks,
        ideal_hit_ratio=ideal,
        speedup=sp,
        model=model,
        seed=seed,
        policies=tuple(results),
        slo_s=slo_s,
    )


def format_table(result: ReplayResult) -> str:
    """The plain-text report printed on stdout."""
    m = result.model
    cache = "infinite" if m.cache_blocks is None else f"{m.cache_blocks} blocks"
    lines = [
        f"trace: {result.trace}  requests: {result.requests}  blocks: {result.blocks}",
        f"cluster: {m.replicas} replicas, KV cache {cache} x {m.block_tokens} tokens/replica, "
        f"prefill {m.prefill_tokens_per_s:g} tok/s, lone decode {m.decode_tokens_per_s:g} "
        f"tok/s, batch budget {m.max_batch_tokens} tokens, speedup {result.speedup:.2f}",
        f"ideal hit ratio (one infinite cache, arrival order): {result.ideal_hit_ratio:.4f}",
        "",
    ]
    slo = result.slo_s is not None
    w = max([20, *(len(p.name) for p in result.policies)])  # the policy column
    head = (
        f"{'policy':<{w}} {'hit':>6} {'reach':>6} {'of ideal':>8} {'regret':>6} "
        f"{'ttft mean':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'max/mean':>8} "
        f"{'out tok/s':>9}" + (f" {'slo':>6}" if slo else "") + f" {'decisions/s':>11}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for p in result.policies:
        slo_col = ""
        if slo:
            slo_col = f" {p.slo_share:>6.1%}" if p.slo_share is not None else f" {'-':>6}"
        lines.append(
            f"{p.name:<{w}} {p.hit_ratio:>6.4f} {p.reachable_hit_ratio:>6.4f} "
            f"{p.ideal_fraction:>8.1%} {p.regret_ratio:>6.4f} "
            f"{p.ttft_mean_s:>8.3f}s {p.ttft_p50_s:>6.3f}s {p.ttft_p90_s:>6.3f}s "
            f"{p.ttft_p99_s:>6.3f}s {p.max_over_mean_requests:>8.3f} "
            f"{p.throughput_tokens_per_s:>9,.0f}{slo_col} {p.decisions_per_s:>11,.0f}"
        )
    lines.extend(_summary(result))
    return "\n".join(lines)


def _summary(result: ReplayResult) -> list[str]:
    """What a reader should take from the table: the policy with the lowest mean TTFT,
    and how it compares with round-robin (when both were replayed)."""
    if not result.policies:
        return []
    best = min(result.policies, key=lambda p: p.ttft_mean_s)
    out = [
        "",
        f"lowest mean TTFT: {best.name} ({best.ttft_mean_s:.3f}s, {best.ideal_fraction:.1%} "
        f"of the ideal hit ratio, busiest replica {best.max_over_mean_requests:.2f}x the mean)",
    ]
    rr = next((p for p in result.policies if p.name == "round-robin"), None)
    if rr is not None and best is not rr and best.ttft_mean_s > 0:
        if rr.hit_ratio:
            hits = f"{best.hit_ratio / rr.hit_ratio:.2f}x the hits"
        else:  # a ratio to no hits says nothing
            hits = f"hit ratio {best.hit_ratio:.4f} against none" if best.hit_ratio else "no hits"
        out.append(
            f"vs round-robin: {rr.ttft_mean_s / best.ttft_mean_s:.2f}x lower mean TTFT, "
            f"{rr.ttft_p99_s / best.ttft_p99_s:.2f}x lower p99, {hits}"
        )
    bp = result.best_policy
    out.append(
        f"best policy (lowest mean TTFT at max/mean <= {BALANCE_LIMIT}): "
        + (bp if bp is not None else "none qualifies")
    )
    ours = next((p for p in result.policies if p.name == DEFAULT_POLICY), None)
    if ours is not None and bp is not None and bp != DEFAULT_POLICY:
        b = result.policy(bp)
        if not ours.balanced:
            why = (
                f"the default {DEFAULT_POLICY} is unbalanced here (busiest replica "
                f"{ours.max_over_mean_requests:.2f}x the mean requests)"
            )
        else:
            why = f"{bp} beats the default {DEFAULT_POLICY} here"
        out.append(
            f"  {why}: mean TTFT {b.ttft_mean_s:.3f}s ({bp}) vs {ours.ttft_mean_s:.3f}s, "
            f"p99 {b.ttft_p99_s:.3f}s vs {ours.ttft_p99_s:.3f}s"
        )
    return out


def format_kv_events(results: Sequence[ReplayResult]) -> str:
    """The ``--kv-events`` table: each approximate policy next to its precise counterpart
    (``KV_EVENT_PAIRS``) on each replayed case."""
    lines = []
    head = (
        f"{'case':<34} {'approximate':<18} {'precise':<18} {'hit':>13} "
        f"{'ttft mean':>15} {'ttft p90':>15} {'ttft p99':>15}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for res in results:
        names = {p.name for p in res.policies}
        for a, b in KV_EVENT_PAIRS:
            if a not in names or b not in names:
                continue
            pa = res.policy(a)
            pb = res.policy(b)
            lines.append(
                f"{res.trace[:34]:<34} {a:<18} {b:<18} "
                f"{pa.hit_ratio:>6.3f}/{pb.hit_ratio:<6.3f} "
                f"{pa.ttft_mean_s:>7.3f}/{pb.ttft_mean_s:<7.3f} "
                f"{pa.ttft_p90_s:>7.3f}/{pb.ttft_p90_s:<7.3f} "
                f"{pa.ttft_p99_s:>7.3f}/{pb.ttft_p99_s:<7.3f}"
            )
    return "\n".join(lines)


def plot_result(result: ReplayResult, path: str | Path) -> None:
    """Draw hit ratio (with the ideal) and mean/p99 TTFT per policy into a PNG at ``path``.

    Raises:
        ModuleNotFoundError: matplotlib is not installed (``pip install
            'clusterrouting[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ModuleNotFoundError(
            "--plot needs matplotlib: pip install 'clusterrouting[plot]'", name="matplotlib"
        ) from exc
    names = [p.name for p in result.policies]
    xs = list(range(len(names)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.bar(xs, [p.hit_ratio for p in result.policies], color="tab:blue")
    ax1.axhline(result.ideal_hit_ratio, color="k", linestyle="--", label="ideal")
    ax1.set_xticks(xs, names, rotation=30, ha="right")
    ax1.set_ylabel("block hit ratio")
    ax1.legend()
    w = 0.4
    ax2.bar([x - w / 2 for x in xs], [p.ttft_mean_s for p in result.policies], w, label="mean")
    ax2.bar([x + w / 2 for x in xs], [p.ttft_p99_s for p in result.policies], w, label="p99")
    ax2.set_xticks(xs, names, rotation=30, ha="right")
    ax2.set_ylabel("TTFT (s)")
    ax2.set_yscale("log")
    ax2.legend()
    fig.suptitle(
        f"{result.trace}: {result.requests} requests, {result.model.replicas} replicas, "
        f"speedup {result.speedup:.2f}"
    )
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
