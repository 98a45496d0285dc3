"""prefixcache: prefix chains, the radix index, affinity decisions and cross-router sync."""

from prefixcache._chain import (
    MAX_TOKEN_ID,
    extract_chain,
    extract_model,
    extract_token_chain,
    messages_prefix_source,
)
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
    "MAX_TOKEN_ID",
    "Candidate",
    "Config",
    "ConfigError",
    "CostCandidate",
    "KvCacheMirror",
    "PrefixDecision",
    "ReplicaKey",
    "RoutePolicy",
    "extract_chain",
    "extract_model",
    "extract_token_chain",
    "messages_prefix_source",
    "pick_lowest_cost",
    "validate_thresholds",
]
