"""prefixcache: prefix chains, the radix index, affinity decisions and cross-router sync."""

from prefixcache._config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    RoutePolicy,
    validate_thresholds,
)
from prefixcache._cost import (
    DEFAULT_QUEUE_WEIGHT,
    CostCandidate,
    KvCacheMirror,
    pick_lowest_cost,
)
from prefixcache._types import Candidate, PrefixDecision, ReplicaKey

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_QUEUE_WEIGHT",
    "Candidate",
    "Config",
    "ConfigError",
    "CostCandidate",
    "KvCacheMirror",
    "PrefixDecision",
    "ReplicaKey",
    "RoutePolicy",
    "pick_lowest_cost",
    "validate_thresholds",
]
