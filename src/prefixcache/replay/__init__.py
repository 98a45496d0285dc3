"""Trace replay: choose a routing policy by replaying a real trace on a simulated cluster.

Run ``clusterrouting-replay`` (or :func:`main`), or call :func:`run_replay` on requests from
:func:`load_trace`. The cluster model and every default are described in
:class:`ClusterModel` and in docs/replay.md.
"""

from prefixcache.replay._bench import bench_policies
from prefixcache.replay._cli import main
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._grid import GridCell, format_grid, run_grid
from prefixcache.replay._peers import (
    AibrixPrefixCachePolicy,
    DynamoKvPolicy,
    EngineIndex,
    LlmdDefaultPolicy,
    LlmdPrecisePolicy,
    ProdstackLoadAwarePolicy,
    ProdstackPrefixPolicy,
    RayPrefixAffinityPolicy,
    SglangCacheAwarePolicy,
    SmgCacheAwarePolicy,
)
from prefixcache.replay._policies import (
    DEFAULT_POLICIES,
    KV_EVENT_PAIRS,
    PEER_POLICIES,
    POLICY_NAMES,
    TUNABLE,
    CacheCostPolicy,
    FederationPolicy,
    HotPrefixes,
    LeastLoadedPolicy,
    ObserveAt,
    PrefixPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    make_policy,
)
from prefixcache.replay._report import (
    BALANCE_LIMIT,
    DEFAULT_POLICY,
    DEFAULT_TARGET_LOAD,
    SCHEMA_VERSION,
    PolicyResult,
    ReplayResult,
    auto_speedup,
    format_kv_events,
    format_table,
    percentile,
    plot_result,
    run_replay,
)
from prefixcache.replay._sim import SimulationOutcome, simulate
from prefixcache.replay._synth import eviction_case, shared_prefix_trace, synthetic_trace
from prefixcache.replay._trace import (
    BUNDLED_TRACE,
    Request,
    TimeUnit,
    TraceFormatError,
    ideal_hit_ratio,
    load_trace,
    parse_trace,
)
from prefixcache.replay._tune import Objective, TuneResult, parse_objective, tune
from prefixcache.replay._view import ClusterView, ReplayPolicy

__all__ = [
    "AibrixPrefixCachePolicy",
    "BALANCE_LIMIT",
    "BUNDLED_TRACE",
    "CacheCostPolicy",
    "ClusterModel",
    "ClusterView",
    "DEFAULT_CLUSTER",
    "DEFAULT_POLICIES",
    "DEFAULT_POLICY",
    "DEFAULT_TARGET_LOAD",
    "DynamoKvPolicy",
    "EngineIndex",
    "FederationPolicy",
    "GridCell",
    "HotPrefixes",
    "KV_EVENT_PAIRS",
    "LeastLoadedPolicy",
    "LlmdDefaultPolicy",
    "LlmdPrecisePolicy",
    "Objective",
    "ObserveAt",
    "PEER_POLICIES",
    "POLICY_NAMES",
    "PolicyResult",
    "PrefixPolicy",
    "ProdstackLoadAwarePolicy",
    "ProdstackPrefixPolicy",
    "RandomPolicy",
    "RayPrefixAffinityPolicy",
    "ReplayPolicy",
    "ReplayResult",
    "Request",
    "RoundRobinPolicy",
    "SCHEMA_VERSION",
    "SglangCacheAwarePolicy",
    "SimulationOutcome",
    "SmgCacheAwarePolicy",
    "TUNABLE",
    "TimeUnit",
    "TraceFormatError",
    "TuneResult",
    "auto_speedup",
    "bench_policies",
    "eviction_case",
    "format_grid",
    "format_kv_events",
    "format_table",
    "ideal_hit_ratio",
    "load_trace",
    "main",
    "make_policy",
    "parse_objective",
    "parse_trace",
    "percentile",
    "plot_result",
    "run_grid",
    "run_replay",
    "shared_prefix_trace",
    "simulate",
    "synthetic_trace",
    "tune",
]
