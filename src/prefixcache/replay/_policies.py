"""The replay's policies by name: the registry (``POLICY_NAMES``, the peers, the
precise/approximate pairs), their tunable parameters and :func:`make_policy`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from clusterrouting import InvalidRecordError
from prefixcache._hot import HotPrefixes
from prefixcache.replay._baselines import (
    FederationPolicy,
    LeastLoadedPolicy,
    ObserveAt,
    PrefixPolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from prefixcache.replay._cache_cost import CacheCostPolicy
from prefixcache.replay._cluster import ClusterModel
from prefixcache.replay._peers import (
    AibrixPrefixCacheCurrentPolicy,
    AibrixPrefixCachePolicy,
    DynamoKvPolicy,
    LlmdCurrentPolicy,
    LlmdDefaultPolicy,
    LlmdPreciseCurrentPolicy,
    LlmdPrecisePolicy,
    ProdstackLoadAwarePolicy,
    ProdstackPrefixPolicy,
    RayPrefixAffinityPolicy,
    SglangCacheAwarePolicy,
    SmgCacheAwareCurrentPolicy,
    SmgCacheAwarePolicy,
)
from prefixcache.replay._view import ReplayPolicy

__all__ = [
    "DEFAULT_POLICIES",
    "POLICY_NAMES",
    "KV_EVENT_PAIRS",
    "PEER_POLICIES",
    "TUNABLE",
    "CacheCostPolicy",
    "FederationPolicy",
    "HotPrefixes",
    "LeastLoadedPolicy",
    "ObserveAt",
    "PrefixPolicy",
    "RandomPolicy",
    "RoundRobinPolicy",
    "make_policy",
]

PEER_POLICIES: tuple[str, ...] = (
    "sglang-cache-aware",
    "smg-cache-aware",
    "smg-cache-aware-current",
    "llm-d-default",
    "llm-d-default-current",
    "llm-d-precise",
    "llm-d-precise-current",
    "dynamo-kv",
    "dynamo-kv-approx",
    "prodstack-prefix",
    "prodstack-loadaware",
    "aibrix-prefix-cache",
    "aibrix-prefix-cache-current",
    "ray-prefix-affinity",
)
"""The peer routers' default policies (see ``prefixcache.replay._peers``)."""

POLICY_NAMES: tuple[str, ...] = (
    "round-robin",
    "random",
    "least-loaded",
    "prefix",
    "federation",
    "cache-cost",
    "cache-cost-precise",
    *PEER_POLICIES,
)
DEFAULT_POLICIES = POLICY_NAMES

KV_EVENT_PAIRS: tuple[tuple[str, str], ...] = (
    ("cache-cost", "cache-cost-precise"),
    ("llm-d-default", "llm-d-precise"),
    ("dynamo-kv-approx", "dynamo-kv"),
)
"""(approximate, precise) counterparts compared by ``--kv-events``: the same policy with
its cached-block view written from its own dispatches, then read from engine events."""


_COST_PARAMS: dict[str, Callable[[float], Any]] = {
    "queue_weight": float,
    "in_flight_tokens": float,
    "share_tokens": float,
    "share_factor": float,
    "share_slack": int,
    "hot_lower": float,
    "cost_margin": float,
    "tie_queue_tokens": float,
    "hot_per_copy": float,
    "hot_confidence": float,
    "shared_queue_weight": float,
    "shared_demand": float,
    "shared_kv_usage": float,
    "room_queue_weight": float,
    "room_kv_fill": float,
    "room_backlog_tokens": float,
    "guard_demand": float,
}

TUNABLE: dict[str, dict[str, Callable[[float], Any]]] = {
    "cache-cost": _COST_PARAMS,
    "cache-cost-precise": _COST_PARAMS,
    "sglang-cache-aware": {
        "cache_threshold": float,
        "balance_abs_threshold": int,
        "balance_rel_threshold": float,
    },
    "dynamo-kv": {"overlap_credit": float},
    "dynamo-kv-approx": {"overlap_credit": float},
    "aibrix-prefix-cache": {"imbalance": int, "std_factor": float},
    "aibrix-prefix-cache-current": {
        "min_gap": int,
        "imbalance_factor": float,
        "std_factor": float,
    },
    "ray-prefix-affinity": {"match_rate_threshold": float},
}
"""Per policy, the parameters ``make_policy(params=...)`` accepts and their types."""


def make_policy(
    name: str,
    model: ClusterModel,
    *,
    seed: int = 0,
    observe_at: ObserveAt | None = None,
    params: Mapping[str, float | None] | None = None,
) -> ReplayPolicy:
    """A fresh policy by name (one of :data:`POLICY_NAMES`).

    ``observe_at=None`` keeps each indexing policy's own default (``prefix`` and
    ``federation``: completion, as the reference; ``cache-cost``: dispatch). ``params``
    overrides constructor parameters listed in :data:`TUNABLE` for that policy (the tuner
    uses it; ``None`` passes the constructor's own "unset", as ``share_factor=None``);
    every other policy takes none.

    Raises:
        InvalidRecordError: unknown ``name``, ``observe_at`` or parameter, or a parameter
            value that is not a number (or that its constructor refuses).
    """
    if observe_at not in (None, "dispatch", "completion"):
        raise InvalidRecordError("observe_at", observe_at, "must be 'dispatch' or 'completion'")
    kw: dict[str, Any] = {}
    if params:
        allowed = TUNABLE.get(name, {})
        for k, v in params.items():
            if k not in allowed:
                raise InvalidRecordError(
                    "params",
                    k,
                    f"not a tunable parameter of {name!r} (tunable: "
                    f"{', '.join(sorted(allowed)) or 'none'})",
                )
            if v is None:  # the constructor's own "unset" (e.g. share_factor, guard_demand)
                kw[k] = None
                continue
            try:
                kw[k] = allowed[k](v)
            except (TypeError, ValueError, OverflowError):
                raise InvalidRecordError(k, v, "must be a number") from None
    if name == "round-robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy(seed)
    if name == "least-loaded":
        return LeastLoadedPolicy()
    if name == "prefix":
        return PrefixPolicy(observe_at or "completion")
    if name == "federation":
        return FederationPolicy(observe_at or "completion")
    if name in ("cache-cost", "cache-cost-precise"):
        return CacheCostPolicy(
            capacity_blocks=model.cache_blocks,
            block_tokens=model.block_tokens,
            observe_at=observe_at or "dispatch",
            precise=name == "cache-cost-precise",
            **kw,
        )
    bt = model.block_tokens
    cpt = model.chars_per_token  # the stand-in text of the character-based peers
    if name == "sglang-cache-aware":
        return SglangCacheAwarePolicy(block_tokens=bt, chars_per_token=cpt, **kw)
    if name == "smg-cache-aware":
        return SmgCacheAwarePolicy(block_tokens=bt, seed=seed, chars_per_token=cpt)
    if name == "smg-cache-aware-current":
        return SmgCacheAwareCurrentPolicy(block_tokens=bt, seed=seed, chars_per_token=cpt)
    if name == "llm-d-default":
        return LlmdDefaultPolicy(
            block_tokens=bt, num_gpu_blocks=model.cache_blocks, seed=seed, chars_per_token=cpt
        )
    if name == "llm-d-default-current":
        return LlmdCurrentPolicy(
            block_tokens=bt, num_gpu_blocks=model.cache_blocks, seed=seed, chars_per_token=cpt
        )
    if name == "llm-d-precise":
        return LlmdPrecisePolicy(block_tokens=bt, seed=seed)
    if name == "llm-d-precise-current":
        return LlmdPreciseCurrentPolicy(block_tokens=bt, seed=seed)
    if name in ("dynamo-kv", "dynamo-kv-approx"):
        return DynamoKvPolicy(block_tokens=bt, seed=seed, kv_events=name == "dynamo-kv", **kw)
    if name == "prodstack-prefix":
        return ProdstackPrefixPolicy(block_tokens=bt, seed=seed, chars_per_token=cpt)
    if name == "prodstack-loadaware":
        return ProdstackLoadAwarePolicy(block_tokens=bt)
    if name == "aibrix-prefix-cache":
        return AibrixPrefixCachePolicy(block_tokens=bt, seed=seed, chars_per_token=cpt, **kw)
    if name == "aibrix-prefix-cache-current":
        return AibrixPrefixCacheCurrentPolicy(block_tokens=bt, seed=seed, chars_per_token=cpt, **kw)
    if name == "ray-prefix-affinity":
        return RayPrefixAffinityPolicy(block_tokens=bt, seed=seed, chars_per_token=cpt, **kw)
    raise InvalidRecordError(
        "policies", name, f"unknown policy; choose from {', '.join(POLICY_NAMES)}"
    )
