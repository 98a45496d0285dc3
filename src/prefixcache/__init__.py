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
    DEFAULT_IN_FLIGHT_TOKENS,
    DEFAULT_QUEUE_WEIGHT,
    CostCandidate,
    KvCacheMirror,
    pick_lowest_cost,
)
from prefixcache._select import (
    DecisionProvider,
    Pressure,
    affinity_preferred,
    select,
    select_peer,
)
from prefixcache._tree import BACKENDS, DEFAULT_BACKEND, Backend, RadixTree
from prefixcache._types import Candidate, PrefixDecision, ReplicaKey

__all__ = [
    "BACKENDS",
    "Backend",
    "Candidate",
    "Config",
    "ConfigError",
    "CostCandidate",
    "DEFAULT_BACKEND",
    "DEFAULT_CONFIG",
    "DEFAULT_IN_FLIGHT_TOKENS",
    "DEFAULT_QUEUE_WEIGHT",
    "DecisionProvider",
    "KvCacheMirror",
    "MAX_TOKEN_ID",
    "PrefixDecision",
    "Pressure",
    "RadixTree",
    "ReplicaKey",
    "RoutePolicy",
    "affinity_preferred",
    "extract_chain",
    "extract_model",
    "extract_token_chain",
    "messages_prefix_source",
    "pick_lowest_cost",
    "select",
    "select_peer",
    "validate_thresholds",
]
