"""The values of an engine's KV-cache event stream, and the decoder's error.

The three event records mirror the engines' tagged union (vLLM ``vllm/distributed/
kv_events.py``, SGLang ``python/sglang/srt/disaggregation/kv_events.py``) with the fields a
router reads; :class:`EventBatch` is one published payload. All are frozen, slotted,
keyword-only attrs records whose validators make invalid values impossible (errors are
:class:`clusterrouting.InvalidRecordError`); collections are stored as tuples. Immutable,
hence safe to share between threads.
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError

__all__ = [
    "AllBlocksCleared",
    "BlockRemoved",
    "BlockStored",
    "Event",
    "EventBatch",
    "KvEventDecodeError",
]

#: Engine block hashes are 64-bit: unsigned on vLLM's wire, signed on SGLang's.
_HASH_MIN: Final = -(1 << 63)
_HASH_END: Final = 1 << 64
_TOKEN_END: Final = 1 << 32
_LITTLE: Final = sys.byteorder == "little"
_U32: Final[str | None] = next((c for c in ("I", "L") if array.array(c).itemsize == 4), None)


class KvEventDecodeError(ClusterRoutingError, ValueError):
    """A KV-event payload or message could not be decoded as a whole.

    Raised only when the envelope itself is unusable (not msgpack, not an array or map of
    the batch's shape, over a size cap, wrong frame count). A single malformed event inside
    a good envelope is never raised: it is dropped and counted in ``EventBatch.dropped``.

    Attributes:
        field: what was wrong (``"payload"``, ``"envelope"``, ``"ts"``, ``"events"``,
            ``"data_parallel_rank"``, ``"frames"``, ``"seq"``, ``"topic"``).
        reason: why, in words.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"KV event {field}: {reason}")


# The converters are the builtin ``tuple`` itself: a Python wrapper around it would cost one
# more call per field of every decoded event. mypy's attrs plugin cannot derive an __init__
# argument type from ``converter=tuple`` (a generic class), so it reads these signatures.
if TYPE_CHECKING:

    def _ints(value: Iterable[int], /) -> tuple[int, ...]: ...

    def _events(value: Iterable[Event], /) -> tuple[Event, ...]: ...

else:
    _ints = _events = tuple


# Validation runs as one __attrs_post_init__ call per record rather than one validator per
# field: records are built once per decoded event, on the ingest path, where each Python call
# costs as much as hashing a block.


def _check_hashes(value: tuple[object, ...]) -> None:
    for h in value:
        if type(h) is not int or not _HASH_MIN <= h < _HASH_END:
            raise InvalidRecordError("block_hashes", value, f"holds {h!r}, not a 64-bit int")


def _check_optional_str(name: str, value: object) -> None:
    if value is not None and type(value) is not str:
        raise InvalidRecordError(name, value, "must be None or a str")


def _check_group(value: object) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise InvalidRecordError("group_idx", value, "must be None or an int >= 0")


def _check_stored(e: BlockStored) -> None:
    for h in e.block_hashes:
        if type(h) is not int or not _HASH_MIN <= h < _HASH_END:
            _check_hashes(e.block_hashes)  # raises, naming the field
    parent = e.parent_block_hash
    if parent is not None and (type(parent) is not int or not _HASH_MIN <= parent < _HASH_END):
        raise InvalidRecordError("parent_block_hash", parent, "must be None or a 64-bit int")
    if type(e.block_size) is not int or e.block_size < 0:
        raise InvalidRecordError("block_size", e.block_size, "must be an int >= 0")
    medium, lora, group, kind = e.medium, e.lora_name, e.group_idx, e.kv_cache_spec_kind
    if medium is not None and type(medium) is not str:
        _check_optional_str("medium", medium)
    if lora is not None and type(lora) is not str:
        _check_optional_str("lora_name", lora)
    if group is not None:
        _check_group(group)
    if kind is not None and type(kind) is not str:
        _check_optional_str("kv_cache_spec_kind", kind)


def _pack_tokens(self: BlockStored) -> bytes:
    # prefixcache._chain.token_bytes_from_sequence, specialised to the tuple the record
    # holds: its type checks cost ~5k instructions per event more on the ingest path
    # (callgrind, 1-block ingest: 213.6k -> 234.1k per batch of 4 with it).
    # tests/property/test_kvevents_one_block_path.py fails if the two drift apart.
    value = self.token_ids
    try:
        # array.array converts and range-checks in C (a few ns per id): events carry
        # thousands of ids, and a Python loop here would cost more than hashing them.
        if _U32 is None:  # pragma: no cover - no 4-byte C integer on this platform
            raise OverflowError
        packed = array.array(_U32, value)
    except (OverflowError, TypeError, ValueError):
        for t in value:
            if type(t) is not int or not 0 <= t < _TOKEN_END:
                raise InvalidRecordError(
                    "token_ids", value, f"holds {t!r}, not an int in [0, 2**32)"
                ) from None
        raise  # pragma: no cover - array.array rejected something the scan accepts
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


#: Deepest nesting accepted inside ``extra_keys`` (vLLM's are two levels deep).
_MAX_KEY_DEPTH: Final = 16


def _freeze(value: object, depth: int = 0) -> object:
    # Decoded msgpack arrays are lists and maps dicts; a frozen, hashable record holds
    # tuples all the way down (a map becomes its (key, value) pairs).
    if isinstance(value, list | tuple | dict):
        if depth >= _MAX_KEY_DEPTH:
            raise InvalidRecordError(
                "extra_keys", "<nested>", f"nested deeper than {_MAX_KEY_DEPTH} levels"
            )
        items = value.items() if isinstance(value, dict) else value
        return tuple(_freeze(v, depth + 1) for v in items)
    return value


def _to_extra_keys(value: Iterable[object] | None) -> tuple[object, ...] | None:
    if value is None:
        return None
    return tuple(_freeze(v) for v in value)


@attrs.frozen(kw_only=True, slots=True)
class BlockStored:
    """Blocks newly cached by the engine for one request in one step.

    Attributes:
        block_hashes: the engine's ids of the new blocks, in chain order (64-bit ints; only
            foreign keys to the router, see ``KvResidency``).
        parent_block_hash: the engine id of the block before the first new one, ``None`` at
            the root of a prompt.
        token_ids: the tokens of the new blocks, concatenated (ints in ``[0, 2**32)``); for
            full attention ``len(token_ids) == len(block_hashes) * block_size``.
        block_size: tokens per engine block (``0`` for CPU-offload placeholders).
        medium: where the blocks live (``"GPU"``, ``"CPU"``, ``"FS"``, ...); ``None`` when the
            engine did not say (engines before the field existed cached on the GPU only).
        lora_name: the LoRA adapter the blocks were computed with, ``None`` for the base model.
        group_idx: the KV-cache group (hybrid models), ``None`` when the engine did not say.
        extra_keys: one entry per block (``None`` or a tuple of keys: LoRA name, multimodal
            ids, and on a prompt's first block its ``cache_salt``), or ``None`` for none.
        kv_cache_spec_kind: the kind of attention the group caches (vLLM since PR #40984:
            ``"full_attention"``, ``"mla_attention"``, ``"sliding_window"``, ``"mamba"``,
            ...), ``None`` when the engine did not say.
        token_bytes: derived, not an argument: ``token_ids`` packed as little-endian uint32.

    Raises:
        InvalidRecordError: a hash outside the 64-bit range, a token id outside
            ``[0, 2**32)``, a negative ``block_size`` or group, a non-str medium, adapter or
            kind.

    Immutable: safe to share between threads.

    >>> BlockStored(block_hashes=[7], parent_block_hash=None, token_ids=[1, 2], block_size=2)
    ... # doctest: +NORMALIZE_WHITESPACE
    BlockStored(block_hashes=(7,), parent_block_hash=None, token_ids=(1, 2), block_size=2,
                medium=None, lora_name=None, group_idx=None, extra_keys=None,
                kv_cache_spec_kind=None)
    """

    block_hashes: tuple[int, ...] = attrs.field(converter=_ints)
    parent_block_hash: int | None = None
    token_ids: tuple[int, ...] = attrs.field(converter=_ints)
    block_size: int
    medium: str | None = None
    lora_name: str | None = None
    group_idx: int | None = None
    extra_keys: tuple[object, ...] | None = attrs.field(default=None, converter=_to_extra_keys)
    kv_cache_spec_kind: str | None = None
    #: ``token_ids`` as consecutive little-endian uint32 (the bytes our chain hashes),
    #: computed at construction, which checks every id is an int in ``[0, 2**32)``.
    token_bytes: bytes = attrs.field(
        init=False, eq=False, repr=False, default=attrs.Factory(_pack_tokens, takes_self=True)
    )

    __attrs_post_init__ = _check_stored


@attrs.frozen(kw_only=True, slots=True)
class BlockRemoved:
    """Blocks the engine evicted (one copy each: a block stored twice is removed twice).

    Attributes:
        block_hashes: the engine ids of the evicted blocks.
        medium: where they were evicted from (``None``: not said, i.e. the GPU).
        group_idx: the KV-cache group, ``None`` when not said.

    Immutable: safe to share between threads.

    >>> BlockRemoved(block_hashes=[7], medium="GPU").block_hashes
    (7,)
    """

    block_hashes: tuple[int, ...] = attrs.field(converter=_ints)
    medium: str | None = None
    group_idx: int | None = None

    def __attrs_post_init__(self) -> None:
        _check_hashes(self.block_hashes)
        _check_optional_str("medium", self.medium)
        _check_group(self.group_idx)


@attrs.frozen(slots=True)
class AllBlocksCleared:
    """The engine emptied its whole prefix cache (no fields). Immutable.

    >>> AllBlocksCleared() == AllBlocksCleared()
    True
    """


#: One event of a batch.
Event: TypeAlias = BlockStored | BlockRemoved | AllBlocksCleared

_EVENT_TYPES: Final = (BlockStored, BlockRemoved, AllBlocksCleared)


def _to_ts(value: Any) -> Any:
    # msgpack writes whole numbers as ints; the envelope's ts is seconds either way.
    return float(value) if type(value) is int else value


def _check_batch(b: EventBatch) -> None:
    if type(b.ts) is not float or not math.isfinite(b.ts):
        raise InvalidRecordError("ts", b.ts, "must be a finite float")
    if b.rank is not None and (type(b.rank) is not int or b.rank < 0):
        raise InvalidRecordError("rank", b.rank, "must be None or an int >= 0")
    for e in b.events:
        if type(e) not in _EVENT_TYPES:
            raise InvalidRecordError("events", b.events, f"holds {e!r}, not a KV event")
    if type(b.dropped) is not int or b.dropped < 0:
        raise InvalidRecordError("dropped", b.dropped, "must be an int >= 0")
    if type(b.ignored) is not int or b.ignored < 0:
        raise InvalidRecordError("ignored", b.ignored, "must be an int >= 0")


@attrs.frozen(kw_only=True, slots=True)
class EventBatch:
    """One published payload: the events of one engine step, in order.

    Attributes:
        ts: the engine's wall-clock time of the step, in seconds (Unix epoch).
        rank: the engine's data-parallel rank, ``None`` when the envelope does not say.
        events: the decoded events, in publication order.
        dropped: events of the payload that were malformed and left out.
        ignored: events with a tag this decoder does not know (a newer engine's), left out
            and not counted as ``dropped``. Diagnostic only: not part of equality, so a batch
            equals the same batch from an engine that sends no such events.

    Immutable: safe to share between threads.

    >>> EventBatch(ts=1.5, rank=0, events=[AllBlocksCleared()], dropped=0).events
    (AllBlocksCleared(),)
    """

    ts: float = attrs.field(converter=_to_ts)
    rank: int | None = None
    events: tuple[Event, ...] = attrs.field(converter=_events)
    dropped: int = 0
    ignored: int = attrs.field(default=0, eq=False)

    __attrs_post_init__ = _check_batch
