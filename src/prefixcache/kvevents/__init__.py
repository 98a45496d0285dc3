"""prefixcache.kvevents: route on what the engines really cache, from their KV-cache events.

vLLM and SGLang publish KV-cache events (blocks stored, removed, cache cleared) over ZMQ.
This package decodes them (:func:`decode_payload`, :func:`decode_message`), keeps the exact
multi-owner record of which replica holds which blocks (:class:`KvResidency`), subscribes to
the engines' sockets (:class:`KvEventSubscriber`, :class:`AsyncKvEventSubscriber`, started
only by the host) and feeds the cost policy (:func:`fill_cached_tokens`).

Needs the ``kvevents`` extra (``msgspec`` to decode, ``pyzmq`` for the sockets); both are
imported on first use, so :class:`KvResidency` works with the core dependencies alone.
"""

from prefixcache._cost import CacheSource
from prefixcache.kvevents._decode import (
    MAX_BATCH_EVENTS,
    MAX_EVENT_BLOCKS,
    MAX_EVENT_TOKENS,
    MAX_PAYLOAD_BYTES,
    REPLAY_END_SEQ,
    Flavour,
    Layout,
    decode_message,
    decode_payload,
    encode_payload,
)
from prefixcache.kvevents._kvchain import extract_kv_chain
from prefixcache.kvevents._outcomes import IngestReport, ResidencyState, ResidencyStatus
from prefixcache.kvevents._policy import cache_source_of, fill_cached_tokens
from prefixcache.kvevents._publish import KvEventPublisher
from prefixcache.kvevents._records import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    Event,
    EventBatch,
    KvEventDecodeError,
)
from prefixcache.kvevents._replica import MAIN_KINDS
from prefixcache.kvevents._residency import (
    DEFAULT_MAX_BLOCKS_PER_REPLICA,
    DEFAULT_MAX_DEFERRED,
    DEFAULT_MAX_REPLICAS,
    KvResidency,
)
from prefixcache.kvevents._stream import DEFAULT_REPLAY_TIMEOUT, SubscriberStats
from prefixcache.kvevents._subscribe import (
    AsyncKvEventSubscriber,
    KvEventSubscriber,
    rank_endpoints,
)

__all__ = [
    "AllBlocksCleared",
    "AsyncKvEventSubscriber",
    "BlockRemoved",
    "BlockStored",
    "CacheSource",
    "DEFAULT_MAX_BLOCKS_PER_REPLICA",
    "DEFAULT_MAX_DEFERRED",
    "DEFAULT_MAX_REPLICAS",
    "DEFAULT_REPLAY_TIMEOUT",
    "Event",
    "EventBatch",
    "Flavour",
    "IngestReport",
    "KvEventDecodeError",
    "KvEventPublisher",
    "KvEventSubscriber",
    "KvResidency",
    "Layout",
    "MAIN_KINDS",
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_BLOCKS",
    "MAX_EVENT_TOKENS",
    "MAX_PAYLOAD_BYTES",
    "REPLAY_END_SEQ",
    "ResidencyState",
    "ResidencyStatus",
    "SubscriberStats",
    "cache_source_of",
    "decode_message",
    "decode_payload",
    "encode_payload",
    "extract_kv_chain",
    "fill_cached_tokens",
    "rank_endpoints",
]
