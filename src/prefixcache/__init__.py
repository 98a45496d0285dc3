"""prefixcache: prefix chains, the radix index, affinity decisions and cross-router sync."""

from clusterrouting import __version__ as __version__  # one version for the distribution
from prefixcache._answers import TreeClosedError
from prefixcache._backends import BACKENDS, DEFAULT_BACKEND, Backend, BackendUnavailableError
from prefixcache._chain import (
    MAX_TOKEN_ID,
    extract_chain,
    extract_model,
    extract_token_chain,
    messages_prefix_source,
    messages_prefix_source_from_body,
)
from prefixcache._config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    RoutePolicy,
    validate_thresholds,
)
from prefixcache._cost import (
    DEFAULT_COST_MARGIN,
    DEFAULT_IN_FLIGHT_TOKENS,
    DEFAULT_PIN_TOKENS,
    DEFAULT_QUEUE_WEIGHT,
    DEFAULT_SHARE_FACTOR,
    DEFAULT_SHARE_SLACK,
    CostCandidate,
    pick_lowest_cost,
)
from prefixcache._cost_explain import CostExplanation, CostTerms, explain_lowest_cost
from prefixcache._decision import DecisionBasis, PrefixDecision
from prefixcache._events import (
    EVENT_SUBJECTS,
    INVALIDATE_SUBJECT,
    MAX_EVENT_BYTES,
    MAX_EVENT_CHAIN,
    OBSERVE_SUBJECT,
    EventDecodeError,
    InvalidateEvent,
    ObserveEvent,
    decode_event,
)
from prefixcache._explain import SelectCandidate, SelectExplanation, explain_select
from prefixcache._hot import (
    DEFAULT_HOT_LOWER,
    DEFAULT_HOT_MAX_CHAIN,
    DEFAULT_HOT_PER_COPY,
    HotPrefixes,
)
from prefixcache._index import Index, Provider
from prefixcache._mirror import DispatchWindow, KvCacheMirror
from prefixcache._pins import (
    MAX_PIN_BYTES,
    PIN_SUBJECT,
    Pin,
    PinDecodeError,
    PinStats,
    SessionPins,
)
from prefixcache._pool import CandidateSet
from prefixcache._protocols import (
    AsyncPublisher,
    AsyncTransport,
    AsyncUnsubscribe,
    Clock,
    MessageHandler,
    Publisher,
    Transport,
    Unsubscribe,
)
from prefixcache._resync import ResyncLoop, ResyncStats
from prefixcache._select import (
    DecisionProvider,
    Pressure,
    affinity_preferred,
    select,
    select_peer,
)
from prefixcache._signing import (
    RateLimit,
    RateLimiter,
    SignedTransport,
    Signer,
    SigningKeys,
    Verifier,
)
from prefixcache._snapshot import (
    MAX_SNAPSHOT_BYTES,
    Snapshot,
    SnapshotDecodeError,
    SnapshotEntry,
    apply_snapshot,
    digest,
    digests,
    export_snapshot,
)
from prefixcache._sync import Sync, SyncStats
from prefixcache._ticker import EvictionTicker, eviction_interval
from prefixcache._tree import RadixTree
from prefixcache._types import Candidate, ReplicaKey

__all__ = [
    "AsyncPublisher",
    "AsyncTransport",
    "AsyncUnsubscribe",
    "BACKENDS",
    "Backend",
    "BackendUnavailableError",
    "Candidate",
    "CandidateSet",
    "Clock",
    "Config",
    "ConfigError",
    "CostCandidate",
    "CostExplanation",
    "CostTerms",
    "DEFAULT_BACKEND",
    "DEFAULT_CONFIG",
    "DEFAULT_COST_MARGIN",
    "DEFAULT_HOT_LOWER",
    "DEFAULT_HOT_MAX_CHAIN",
    "DEFAULT_HOT_PER_COPY",
    "DEFAULT_IN_FLIGHT_TOKENS",
    "DEFAULT_PIN_TOKENS",
    "DEFAULT_QUEUE_WEIGHT",
    "DEFAULT_SHARE_FACTOR",
    "DEFAULT_SHARE_SLACK",
    "DecisionBasis",
    "DecisionProvider",
    "DispatchWindow",
    "EVENT_SUBJECTS",
    "EventDecodeError",
    "EvictionTicker",
    "HotPrefixes",
    "INVALIDATE_SUBJECT",
    "Index",
    "InvalidateEvent",
    "KvCacheMirror",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_CHAIN",
    "MAX_PIN_BYTES",
    "MAX_SNAPSHOT_BYTES",
    "MAX_TOKEN_ID",
    "MessageHandler",
    "OBSERVE_SUBJECT",
    "ObserveEvent",
    "PIN_SUBJECT",
    "Pin",
    "PinDecodeError",
    "PinStats",
    "PrefixDecision",
    "Pressure",
    "Provider",
    "Publisher",
    "RadixTree",
    "RateLimit",
    "RateLimiter",
    "ReplicaKey",
    "ResyncLoop",
    "ResyncStats",
    "RoutePolicy",
    "SelectCandidate",
    "SelectExplanation",
    "SessionPins",
    "SignedTransport",
    "Signer",
    "SigningKeys",
    "Snapshot",
    "SnapshotDecodeError",
    "SnapshotEntry",
    "Sync",
    "SyncStats",
    "Transport",
    "TreeClosedError",
    "Unsubscribe",
    "Verifier",
    "affinity_preferred",
    "apply_snapshot",
    "decode_event",
    "digest",
    "digests",
    "eviction_interval",
    "explain_lowest_cost",
    "explain_select",
    "export_snapshot",
    "extract_chain",
    "extract_model",
    "extract_token_chain",
    "messages_prefix_source",
    "messages_prefix_source_from_body",
    "pick_lowest_cost",
    "select",
    "select_peer",
    "validate_thresholds",
]
