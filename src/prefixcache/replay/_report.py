"""Running a replay across policies and reporting the results (table, JSON, plot)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from clusterrouting import InvalidRecordError
from prefixcache.replay._policies import DEFAULT_POLICIES, ObserveAt, make_policy
from prefixcache.replay._sim import DEFAULT_CLUSTER, ClusterModel, simulate
from prefixcache.replay._trace import Request, ideal_hit_ratio

__all__ = [
    "DEFAULT_TARGET_LOAD",
    "PolicyResult",
    "ReplayResult",
    "auto_speedup",
    "format_table",
    "percentile",
    "plot_result",
    "run_replay",
]

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

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this policy (``--json``); non-finite numbers become ``null``."""
        d = attrs.asdict(self)
        d["requests_per_replica"] = list(self.requests_per_replica)
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

    def policy(self, name: str) -> PolicyResult:
        """The result of policy ``name``. Raises ``KeyError`` if it was not replayed."""
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document (keys listed in docs/replay.md)."""
        return {
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
    """
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

    Returns:
        A :class:`ReplayResult` (``hit_ratio`` counts cached leading blocks over all blocks;
        ``decisions_per_s`` = requests / wall time spent inside the policy).

    Raises:
        InvalidRecordError: unknown policy, bad ``speedup`` or ``observe_at``, or an empty
            policy list.
    """
    if not policies:
        raise InvalidRecordError("policies", list(policies), "must name at least one policy")
    names = list(policies)
    for name in names:  # fail before a long replay, not in the middle of it
        make_policy(name, model, seed=seed, observe_at=observe_at)
    sp = auto_speedup(requests, model, target_load=target_load) if speedup is None else speedup
    total_blocks = sum(len(r.blocks) for r in requests)
    ideal = ideal_hit_ratio(requests)
    results = []
    for name in names:
        policy = make_policy(name, model, seed=seed, observe_at=observe_at)
        cb = None if progress is None else functools.partial(progress, name)

        out = simulate(requests, policy, model, speedup=sp, progress=cb)
        hits = sum(out.hit_blocks)
        hr = hits / total_blocks if total_blocks else 0.0
        ttft = sorted(out.ttft_s)
        rpr = out.requests_per_replica
        mean_req = sum(rpr) / len(rpr)
        results.append(
            PolicyResult(
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
            )
        )
    return ReplayResult(
        trace=trace_name,
        requests=len(requests),
        blocks=total_blocks,
        ideal_hit_ratio=ideal,
        speedup=sp,
        model=model,
        seed=seed,
        policies=tuple(results),
    )


def format_table(result: ReplayResult) -> str:
    """The plain-text report printed on stdout."""
    m = result.model
    cache = "infinite" if m.cache_blocks is None else f"{m.cache_blocks} blocks"
    lines = [
        f"trace: {result.trace}  requests: {result.requests}  blocks: {result.blocks}",
        f"cluster: {m.replicas} replicas, KV cache {cache} x {m.block_tokens} tokens/replica, "
        f"prefill {m.prefill_tokens_per_s:g} tok/s, decode {m.decode_tokens_per_s:g} tok/s, "
        f"speedup {result.speedup:.2f}",
        f"ideal hit ratio (one infinite cache, arrival order): {result.ideal_hit_ratio:.4f}",
        "",
    ]
    head = (
        f"{'policy':<13} {'observe':<10} {'hit':>6} {'of ideal':>8} {'ttft mean':>9} "
        f"{'p50':>7} {'p99':>7} {'max/mean':>8} {'decisions/s':>11}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for p in result.policies:
        obs = p.observe_at
        lines.append(
            f"{p.name:<13} {obs:<10} {p.hit_ratio:>6.4f} {p.ideal_fraction:>8.1%} "
            f"{p.ttft_mean_s:>8.3f}s {p.ttft_p50_s:>6.3f}s {p.ttft_p99_s:>6.3f}s "
            f"{p.max_over_mean_requests:>8.3f} {p.decisions_per_s:>11,.0f}"
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
        out.append(
            f"vs round-robin: {rr.ttft_mean_s / best.ttft_mean_s:.2f}x lower mean TTFT, "
            f"{rr.ttft_p99_s / best.ttft_p99_s:.2f}x lower p99, "
            f"{best.hit_ratio / rr.hit_ratio if rr.hit_ratio else float('inf'):.2f}x the hits"
        )
    return out


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
