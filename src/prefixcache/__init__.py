"""prefixcache: prefix chains, the radix index, affinity decisions and cross-router sync."""

from prefixcache._config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    RoutePolicy,
    validate_thresholds,
)
from prefixcache._types import Candidate, PrefixDecision, ReplicaKey

__all__ = [
    "DEFAULT_CONFIG",
    "Candidate",
    "Config",
    "ConfigError",
    "PrefixDecision",
    "ReplicaKey",
    "RoutePolicy",
    "validate_thresholds",
]
