"""``clusterrouting-replay tune``: a seeded search over one policy's parameters.

Each point is a full replay of the trace with the policy built by
``make_policy(name, model, params=point)``; the objective is a metric of its
:class:`PolicyResult` to minimise, subject to upper bounds on other metrics. The search
draws ``budget`` points uniformly from the given ranges with ``random.Random(seed)``
(the policy's defaults are always the first point), so a seed gives the same table on any
machine. It reports the best feasible point and the Pareto front of (objective, the first
constraint's metric) over all points.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache.replay._args import add_trace_shape_args, load_trace_reporting, report_block_size
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._policies import TUNABLE, make_policy
from prefixcache.replay._report import PolicyResult, ReplayJob, auto_speedup
from prefixcache.replay._trace import Request, ideal_hit_ratio

__all__ = ["Objective", "TunePoint", "TuneResult", "parse_objective", "tune", "tune_main"]

METRICS: dict[str, str] = {
    "ttft_mean": "ttft_mean_s",
    "ttft_p50": "ttft_p50_s",
    "ttft_p90": "ttft_p90_s",
    "ttft_p99": "ttft_p99_s",
    "max_over_mean": "max_over_mean_requests",
    "miss_ratio": "miss_ratio",
    "regret": "regret_ratio",
}
"""Metric names the objective may use (all minimised) and the result field they read;
``miss_ratio`` is ``1 - ideal_fraction``."""


def _metric(result: PolicyResult, name: str) -> float:
    if name == "miss_ratio":
        return 1.0 - result.ideal_fraction
    return float(getattr(result, METRICS[name]))


@attrs.frozen
class Objective:
    """Minimise ``metric`` subject to ``constraints`` (``(metric, upper bound)`` pairs)."""

    metric: str
    constraints: tuple[tuple[str, float], ...] = ()


_CONSTRAINT = re.compile(r"^\s*([a-z0-9_]+)\s*<=\s*([0-9.eE+-]+)\s*$")


def parse_objective(text: str) -> Objective:
    """``"ttft_p99 s.t. max_over_mean<=1.15, miss_ratio<=0.05"`` -> :class:`Objective`.

    Raises:
        InvalidRecordError: an unknown metric or a malformed constraint.

    >>> parse_objective("ttft_p99 s.t. max_over_mean<=1.15")
    Objective(metric='ttft_p99', constraints=(('max_over_mean', 1.15),))
    """
    head, _, rest = text.partition("s.t.")
    metric = head.strip()
    if metric not in METRICS:
        raise InvalidRecordError("objective", metric, f"choose from {', '.join(METRICS)}")
    cons = []
    for part in (p for p in rest.split(",") if p.strip()):
        m = _CONSTRAINT.match(part)
        if m is None or m.group(1) not in METRICS:
            raise InvalidRecordError(
                "objective", part.strip(), "constraints read METRIC<=NUMBER with a known metric"
            )
        cons.append((m.group(1), float(m.group(2))))
    return Objective(metric, tuple(cons))


_RANGE = re.compile(r"^([a-z_]+)=([0-9.eE+-]+)\.\.([0-9.eE+-]+)$")


def parse_param(text: str) -> tuple[str, float, float]:
    """``"queue_weight=0.02..0.5"`` -> ``("queue_weight", 0.02, 0.5)``.

    Raises:
        InvalidRecordError: not ``NAME=LO..HI`` with ``LO <= HI``.
    """
    m = _RANGE.match(text.strip())
    if m is None:
        raise InvalidRecordError("param", text, "must read NAME=LO..HI")
    lo, hi = float(m.group(2)), float(m.group(3))
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InvalidRecordError("param", text, "needs finite LO <= HI")
    return m.group(1), lo, hi


@attrs.frozen
class TunePoint:
    """One evaluated point: its parameters, objective value, constraint values, and
    whether it meets every constraint."""

    params: dict[str, float]
    value: float
    constraints: dict[str, float]
    feasible: bool


@attrs.frozen
class TuneResult:
    """Every point in evaluation order, the best feasible one (``None``: none feasible)
    and the Pareto front of (objective, first constraint metric) over all points."""

    policy: str
    objective: Objective
    points: tuple[TunePoint, ...]
    best: TunePoint | None
    pareto: tuple[TunePoint, ...]


def tune(
    requests: Sequence[Request],
    *,
    policy: str = "cache-cost",
    ranges: Sequence[tuple[str, float, float]],
    objective: Objective,
    budget: int = 20,
    seed: int = 0,
    model: ClusterModel = DEFAULT_CLUSTER,
    speedup: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TuneResult:
    """Search ``policy``'s parameters (see :data:`TUNABLE`) over ``ranges``.

    ``budget`` points (int >= 1): the defaults first, then uniform draws from the ranges
    (integers for integer parameters) with ``random.Random(seed)``.

    Raises:
        InvalidRecordError: a parameter the policy does not take, a range end its
            constructor refuses (each end is checked by building the policy with it, before
            any replay), a bad budget.
    """
    allowed = TUNABLE.get(policy, {})
    for name, lo, hi in ranges:
        if name not in allowed:
            raise InvalidRecordError(
                "param",
                name,
                f"not tunable for {policy!r} (tunable: {', '.join(sorted(allowed)) or 'none'})",
            )
        for end in (lo, hi):
            make_policy(policy, model, seed=seed, params={name: end})
    if type(budget) is not int or budget < 1:
        raise InvalidRecordError("budget", budget, "must be an int >= 1")
    rng = random.Random(seed)
    sp = auto_speedup(requests, model) if speedup is None else speedup
    job = ReplayJob(
        requests=requests,
        model=model,
        speedup=sp,
        seed=seed,
        observe_at=None,
        slo_s=None,
        ideal=ideal_hit_ratio(requests),
        total_blocks=sum(len(r.blocks) for r in requests),
    )
    points = []
    for k in range(budget):
        params: dict[str, float] = {}
        if k > 0:
            for name, lo, hi in ranges:
                if allowed[name] is int:
                    params[name] = float(rng.randint(math.ceil(lo), math.floor(hi)))
                else:
                    params[name] = rng.uniform(lo, hi)
        res = job.run(policy, params=params)
        cons = {c: _metric(res, c) for c, _ in objective.constraints}
        ok = all(cons[c] <= bound for c, bound in objective.constraints)
        points.append(TunePoint(params, _metric(res, objective.metric), cons, ok))
        if progress is not None:
            progress(k + 1, budget)
    feasible = [p for p in points if p.feasible]
    best = min(feasible, key=lambda p: p.value) if feasible else None
    if objective.constraints:
        second = objective.constraints[0][0]
        pareto = tuple(
            sorted(
                (
                    p
                    for p in points
                    if not any(
                        q.value <= p.value
                        and q.constraints[second] <= p.constraints[second]
                        and (q.value < p.value or q.constraints[second] < p.constraints[second])
                        for q in points
                    )
                ),
                key=lambda p: p.value,
            )
        )
    else:
        pareto = (best,) if best is not None else ()
    return TuneResult(policy, objective, tuple(points), best, pareto)


def _fmt_params(params: dict[str, float]) -> str:
    if not params:
        return "(defaults)"
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(params.items()))


def format_tune(result: TuneResult) -> str:
    """The plain-text report of a tuning run."""
    obj = result.objective
    cons = ", ".join(f"{c}<={b:g}" for c, b in obj.constraints) or "none"
    lines = [
        f"tune {result.policy}: minimise {obj.metric} subject to {cons}; "
        f"{len(result.points)} points",
    ]
    if result.best is None:
        lines.append("best: no point meets the constraints")
    else:
        b = result.best
        lines.append(f"best: {_fmt_params(b.params)}  {obj.metric} = {b.value:.4f}")
    lines.append("")
    lines.append("Pareto front (no other point is better on both):")
    head = f"  {obj.metric:>12}" + "".join(f" {c:>14}" for c, _ in obj.constraints)
    lines.append(head + "  feasible  params")
    for p in result.pareto:
        row = f"  {p.value:>12.4f}" + "".join(
            f" {p.constraints[c]:>14.4f}" for c, _ in obj.constraints
        )
        lines.append(row + f"  {'yes' if p.feasible else 'no':>8}  {_fmt_params(p.params)}")
    return "\n".join(lines)


def tune_main(argv: Sequence[str]) -> int:
    """``clusterrouting-replay tune``; returns the exit status (0 ok, 2 usage, 1 error)."""
    p = argparse.ArgumentParser(
        prog="clusterrouting-replay tune",
        description="Seeded search over a policy's parameters on a trace: prints the best "
        "point meeting the constraints and the Pareto front.",
    )
    p.add_argument("trace", nargs="?", default=None, help="trace (default: the bundled one)")
    p.add_argument("--policy", default="cache-cost", choices=sorted(TUNABLE))
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=LO..HI",
        help="a parameter range (repeat); tunable per policy: "
        + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in sorted(TUNABLE.items())),
    )
    p.add_argument(
        "--objective",
        default="ttft_p99 s.t. max_over_mean<=1.15",
        help=f"METRIC [s.t. METRIC<=X, ...], metrics: {', '.join(METRICS)} "
        "(default 'ttft_p99 s.t. max_over_mean<=1.15')",
    )
    p.add_argument("--budget", type=int, default=20, help="points evaluated (default 20)")
    p.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    p.add_argument("--replicas", type=int, default=DEFAULT_CLUSTER.replicas)
    add_trace_shape_args(p, time_unit=False)  # the load is always auto: no unit matters
    args = p.parse_args(list(argv))
    from prefixcache.replay._trace import BUNDLED_TRACE

    path = Path(args.trace) if args.trace is not None else BUNDLED_TRACE
    try:
        ranges = [parse_param(x) for x in args.param]
        objective = parse_objective(args.objective)
        requests = load_trace_reporting(path, prog="clusterrouting-replay tune")
        model = attrs.evolve(
            DEFAULT_CLUSTER,
            replicas=args.replicas,
            cache_blocks=args.cache_blocks,
            block_tokens=args.block_tokens,
        )
        report_block_size(requests, model, prog="clusterrouting-replay tune")
        result = tune(
            requests,
            policy=args.policy,
            ranges=ranges,
            objective=objective,
            budget=args.budget,
            seed=args.seed,
            model=model,
        )
    except FileNotFoundError:
        print(f"clusterrouting-replay tune: no such trace file: {path}", file=sys.stderr)
        return 1
    except (ClusterRoutingError, OSError) as exc:
        print(f"clusterrouting-replay tune: {exc}", file=sys.stderr)
        return 1
    print(format_tune(result))
    return 0
