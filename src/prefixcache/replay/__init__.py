"""Trace replay: choose a routing policy by replaying a real trace on a simulated cluster.

Run ``clusterrouting-replay`` (or :func:`main`), or call :func:`run_replay` on requests from
:func:`load_trace`. The cluster model and every default are described in
:class:`ClusterModel` and in docs/replay.md.
"""

from prefixcache.replay._bench import bench_policies
from prefixcache.replay._cli import BUNDLED_TRACE, main
from prefixcache.replay._policies import (
    DEFAULT_POLICIES,
    POLICY_NAMES,
    CacheCostPolicy,
    FederationPolicy,
    LeastLoadedPolicy,
    ObserveAt,
    PrefixPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    make_policy,
)
from prefixcache.replay._report import (
    DEFAULT_TARGET_LOAD,
    PolicyResult,
    ReplayResult,
    auto_speedup,
    format_table,
    percentile,
    plot_result,
    run_replay,
)
from prefixcache.replay._sim import (
    DEFAULT_CLUSTER,
    ClusterModel,
    ClusterView,
    ReplayPolicy,
    SimulationOutcome,
    simulate,
)
from prefixcache.replay._synth import synthetic_trace
from prefixcache.replay._trace import (
    Request,
    TraceFormatError,
    ideal_hit_ratio,
    load_trace,
    parse_trace,
)

__all__ = [
    "BUNDLED_TRACE",
    "DEFAULT_CLUSTER",
    "DEFAULT_POLICIES",
    "DEFAULT_TARGET_LOAD",
    "POLICY_NAMES",
    "CacheCostPolicy",
    "ClusterModel",
    "ClusterView",
    "FederationPolicy",
    "LeastLoadedPolicy",
    "ObserveAt",
    "PolicyResult",
    "PrefixPolicy",
    "RandomPolicy",
    "ReplayPolicy",
    "ReplayResult",
    "Request",
    "RoundRobinPolicy",
    "SimulationOutcome",
    "TraceFormatError",
    "auto_speedup",
    "bench_policies",
    "format_table",
    "ideal_hit_ratio",
    "load_trace",
    "main",
    "make_policy",
    "parse_trace",
    "percentile",
    "plot_result",
    "run_replay",
    "simulate",
    "synthetic_trace",
]
