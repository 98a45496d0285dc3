"""Decoding (and encoding) the engines' KV-event payloads and ZMQ messages.

Wire facts (vLLM ``vllm/distributed/kv_events.py``; SGLang publishes the same framing):

* a message is three frames: ``topic`` (UTF-8), ``seq`` (8 bytes, big-endian unsigned, per
  publisher, from 0) and ``payload`` (msgpack);
* the payload is the batch envelope, an array ``[ts, events, data_parallel_rank]`` (older
  vLLM: ``[ts, events]``) or, defensively, a map with those three keys;
* each event is a tagged union in one of two layouts, both accepted, mixed freely in one
  batch: **positional** ``["BlockStored", block_hashes, parent_block_hash, token_ids,
  block_size, lora_id, medium, lora_name, extra_keys, group_idx, ...]`` (any length from the
  first five items on; trailing extras ignored) and **map** ``{"type": "BlockStored",
  "block_hashes": ..., ...}`` (key order free, unknown keys ignored, defaulted keys omitted);
* SGLang sends a request's ``cache_salt`` apart: a ``cache_salt`` key (map layout) or a
  ``{"cache_salt": ..., "session_id": ...}`` map in ``lora_name``'s place (positional, since
  its ``BlockStoredWithMetadata``); a root store's salt becomes its first block's extra key,
  where vLLM sends it, so both engines' salted blocks share one namespace scheme
  (``session_id`` names the request, not the block's identity: not read);
* SGLang's EAGLE (bigram) pages list ``[token, next token]`` per position: the first of
  each pair is the position's token;
* block hashes are ints, or raw digests as bytes: ``flavour="vllm"`` takes the **last** 8
  bytes big-endian unsigned (vLLM's int form is the digest's low 64 bits), ``"sglang"`` the
  **first** 8 bytes big-endian signed.

Robustness: a payload that is not an envelope raises :class:`KvEventDecodeError`; inside a good
envelope a malformed event is dropped and counted (``EventBatch.dropped``), an unknown tag is
skipped and counted (``EventBatch.ignored``); nothing else is ever raised. Sizes are capped
(:data:`MAX_PAYLOAD_BYTES`, :data:`MAX_BATCH_EVENTS`, :data:`MAX_EVENT_BLOCKS`,
:data:`MAX_EVENT_TOKENS`): events over a cap are dropped and counted.

``msgspec`` (the ``kvevents`` extra) is imported on first use, so importing this module (and
using ``KvResidency``) needs only the core dependencies. Every function here is pure and
thread-safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from clusterrouting import InvalidRecordError
from prefixcache.kvevents._records import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    Event,
    EventBatch,
    KvEventDecodeError,
)

__all__ = [
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_BLOCKS",
    "MAX_EVENT_TOKENS",
    "MAX_PAYLOAD_BYTES",
    "REPLAY_END_SEQ",
    "Flavour",
    "Layout",
    "check_flavour",
    "check_layout",
    "decode_message",
    "decode_payload",
    "encode_payload",
]

#: Largest payload decoded, in bytes (a step prefilling 1M tokens is ~5 MiB of msgpack).
MAX_PAYLOAD_BYTES: Final = 32 * 1024 * 1024
#: Events decoded per batch; the rest are dropped and counted.
MAX_BATCH_EVENTS: Final = 65_536
#: Block hashes per event; a longer event is dropped and counted.
MAX_EVENT_BLOCKS: Final = 65_536
#: Token ids per event; a longer event is dropped and counted.
MAX_EVENT_TOKENS: Final = 1 << 20
#: The ``seq`` frame of a replay's end marker (``b"\\xff" * 8``).
REPLAY_END_SEQ: Final = (1 << 64) - 1

#: How raw-bytes block hashes become ints: ``"vllm"`` (last 8 bytes, unsigned) or
#: ``"sglang"`` (first 8 bytes, signed).
Flavour = Literal["vllm", "sglang"]
#: The event layout :func:`encode_payload` writes.
Layout = Literal["positional", "map"]

_HASH_MIN: Final = -(1 << 63)
_HASH_END: Final = 1 << 64
# Raw digests longer than one: a vLLM with hybrid block sizes once sent a larger block's
# hash as its sub-blocks' digests concatenated (32 bytes each); the last 8 bytes are the
# last sub-block's, the hash later versions send. 4 KiB: 128 SHA-256 sub-blocks.
_MAX_HASH_BYTES: Final = 4096
_MISSING: Final = object()

_decoder: Callable[[bytes], Any] | None = None
_encoder: Callable[[Any], bytes] | None = None
_decode_errors: tuple[type[BaseException], ...] = ()


def _load_msgspec() -> Callable[[bytes], Any]:
    global _decoder, _encoder, _decode_errors
    try:
        import msgspec
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "prefixcache.kvevents needs msgspec to decode payloads: "
            "pip install 'clusterrouting[kvevents]'"
        ) from exc
    _decode_errors = (msgspec.DecodeError, RecursionError, MemoryError, ValueError, TypeError)
    _encoder = msgspec.msgpack.Encoder().encode
    _decoder = msgspec.msgpack.Decoder().decode
    return _decoder


class _BadEvent(Exception):
    """One event is malformed: it is dropped and counted."""


def _hash_of(value: object, flavour: str) -> int:
    # An int parent and a list of int hashes reach the record as they are (its check
    # rejects an int outside the 64-bit range): this is for the other hashes.
    if type(value) is int:
        if _HASH_MIN <= value < _HASH_END:
            return value
        raise _BadEvent
    if type(value) is bytes and 0 < len(value) <= _MAX_HASH_BYTES:
        if flavour == "vllm":
            return int.from_bytes(value[-8:], "big")
        return int.from_bytes(value[:8], "big", signed=True)
    raise _BadEvent


def _hash_list(value: Any, flavour: str) -> list[int]:
    if type(value) is not list or len(value) > MAX_EVENT_BLOCKS:
        raise _BadEvent
    for h in value:
        if type(h) is not int:
            return [_hash_of(h, flavour) for h in value]
    return value  # every hash an int: the record's validator checks the range


def _pair_firsts(tokens: list[Any]) -> list[Any]:
    """SGLang's EAGLE pages list each position as ``[token, next token]`` (its bigram radix
    keys, ``mem_cache/events.py``): the position's token is the first."""
    out = []  # the callers checked the length against MAX_EVENT_TOKENS
    for pair in tokens:
        if type(pair) is not list or len(pair) != 2:
            raise _BadEvent
        out.append(pair[0])
    return out


def _salted(extra: Any, salt: Any, *, parent: Any, hashes: Any) -> Any:
    """``extra_keys`` with SGLang's ``cache_salt`` among the first block's keys, where vLLM
    sends it (after the adapter's name and multimodal ids).

    SGLang names the salt apart (a ``cache_salt`` key, or in a ``{"cache_salt": ...}``
    metadata map where vLLM has ``lora_name``); our chains read it from a root block's extra
    keys. A store with a parent continues its parent's (already salted) chain and is left as
    it is; so is a store without blocks (the residency drops it) and one whose first block's
    keys already hold the salt."""
    if salt is None or salt == "" or parent is not None or hashes == []:
        return extra
    if type(salt) is not str or type(hashes) is not list:
        raise _BadEvent
    if not extra:  # None or []
        return [[salt], *([None] * (len(hashes) - 1))]
    if type(extra) is not list:
        raise _BadEvent
    first = extra[0]
    if first is None:
        return [[salt], *extra[1:]]
    if type(first) is not list:
        first = [first]
    elif salt in first:
        return extra
    return [[*first, salt], *extra[1:]]


def _stored(
    hashes: Any,
    parent: Any,
    tokens: Any,
    block_size: Any,
    medium: Any,
    lora_name: Any,
    extra_keys: Any,
    group_idx: Any,
    kind: Any,
    flavour: str,
) -> BlockStored:
    if type(tokens) is not list or len(tokens) > MAX_EVENT_TOKENS:
        raise _BadEvent
    if tokens and type(tokens[0]) is list:
        tokens = _pair_firsts(tokens)
    if extra_keys is not None and type(extra_keys) is not list:
        raise _BadEvent
    if parent is not None and type(parent) is not int:
        parent = _hash_of(parent, flavour)
    return BlockStored(
        block_hashes=_hash_list(hashes, flavour),
        parent_block_hash=parent,
        token_ids=tokens,
        block_size=block_size,
        medium=medium,
        lora_name=lora_name,
        group_idx=group_idx,
        extra_keys=extra_keys,
        kv_cache_spec_kind=kind,
    )


def _get(items: list[Any], i: int) -> Any:
    return items[i] if len(items) > i else None


def _event(raw: Any, flavour: str) -> Event | None:
    """The event ``raw`` encodes; ``None`` for an unknown tag; raises ``_BadEvent``."""
    if type(raw) is list:
        n = len(raw)
        if not n:
            raise _BadEvent
        tag = raw[0]
        if tag == "BlockStored":
            # The common case (vLLM up to v0.23), spelled out without helper calls.
            if n < 5:
                raise _BadEvent
            tokens = raw[3]
            extra = raw[8] if n > 8 else None
            if (
                type(tokens) is not list
                or len(tokens) > MAX_EVENT_TOKENS
                or (extra is not None and type(extra) is not list)
            ):
                raise _BadEvent
            parent = raw[2]
            if parent is not None and type(parent) is not int:
                parent = _hash_of(parent, flavour)
            if tokens and type(tokens[0]) is list:
                tokens = _pair_firsts(tokens)
            lora = raw[7] if n > 7 else None
            if type(lora) is dict:  # SGLang: its metadata map where vLLM has lora_name
                extra = _salted(extra, lora.get("cache_salt"), parent=parent, hashes=raw[1])
                lora = None
            return BlockStored(
                block_hashes=_hash_list(raw[1], flavour),
                parent_block_hash=parent,
                token_ids=tokens,
                block_size=raw[4],
                medium=raw[6] if n > 6 else None,
                lora_name=lora,
                group_idx=raw[9] if n > 9 else None,
                extra_keys=extra,
                kv_cache_spec_kind=raw[10] if n > 10 else None,
            )
        if tag == "BlockRemoved":
            if len(raw) < 2:
                raise _BadEvent
            return BlockRemoved(
                block_hashes=_hash_list(raw[1], flavour),
                medium=_get(raw, 2),
                group_idx=_get(raw, 3),
            )
        if tag == "AllBlocksCleared":
            return AllBlocksCleared()
    elif type(raw) is dict:
        tag = raw.get("type")
        if tag == "BlockStored":
            hashes = raw.get("block_hashes", _MISSING)
            tokens = raw.get("token_ids", _MISSING)
            size = raw.get("block_size", _MISSING)
            if hashes is _MISSING or tokens is _MISSING or size is _MISSING:
                raise _BadEvent
            parent = raw.get("parent_block_hash")
            extra = _salted(
                raw.get("extra_keys"), raw.get("cache_salt"), parent=parent, hashes=hashes
            )
            return _stored(
                hashes, parent, tokens, size, raw.get("medium"), raw.get("lora_name"), extra,
                raw.get("group_idx"), raw.get("kv_cache_spec_kind"), flavour,
            )  # fmt: skip
        if tag == "BlockRemoved":
            hashes = raw.get("block_hashes", _MISSING)
            if hashes is _MISSING:
                raise _BadEvent
            return BlockRemoved(
                block_hashes=_hash_list(hashes, flavour),
                medium=raw.get("medium"),
                group_idx=raw.get("group_idx"),
            )
        if tag == "AllBlocksCleared":
            return AllBlocksCleared()
    else:
        raise _BadEvent
    if type(tag) is not str:
        raise _BadEvent
    return None


def check_flavour(flavour: object) -> str:
    """``flavour`` if it is a :data:`Flavour`, else :class:`InvalidRecordError`."""
    if flavour == "vllm" or flavour == "sglang":
        return str(flavour)
    raise InvalidRecordError("flavour", flavour, 'must be "vllm" or "sglang"')


def check_layout(layout: object) -> None:
    """Refuse a ``layout`` that is not a :data:`Layout` (:class:`InvalidRecordError`)."""
    if layout != "positional" and layout != "map":
        raise InvalidRecordError("layout", layout, 'must be "positional" or "map"')


def decode_payload(payload: bytes, *, flavour: Flavour = "vllm") -> EventBatch:
    """Decode one msgpack payload (an engine's ``EventBatch``) into an :class:`EventBatch`.

    Accepts the array envelope with 3 or 2 items (a missing rank is ``None``; further items
    are ignored) and the map envelope; events in either layout (see the module docstring).
    A whole-number ``ts`` is read as seconds like a float.

    Args:
        payload: the third frame of a message (bytes-like).
        flavour: how raw-bytes block hashes map to ints (``"vllm"`` or ``"sglang"``).

    Returns:
        The batch: the events that decoded, in order, with ``dropped`` counting malformed
        or over-cap events and ``ignored`` counting unknown tags.

    Raises:
        KvEventDecodeError (a ``ValueError``): the payload is over
            :data:`MAX_PAYLOAD_BYTES`, not msgpack, not an envelope (an array of at least 2
            items or a map with ``ts`` and ``events``), or its ``ts`` is not a finite number,
            its events not an array, or its rank neither nil nor an int >= 0.
        InvalidRecordError: ``flavour`` is neither ``"vllm"`` nor ``"sglang"``; ``payload`` is
            not bytes-like.

    Complexity: O(len(payload)).

    >>> golden = bytes.fromhex(
    ...     "93cb3ff8000000000000939cab426c6f636b53746f7265649107c092010202c0a3475055c0c0c0c0"
    ...     "c094ac426c6f636b52656d6f7665649107a3475055c091b0416c6c426c6f636b73436c6561726564"
    ...     "00")
    >>> batch = decode_payload(golden)
    >>> batch.ts, batch.rank, batch.dropped, [type(e).__name__ for e in batch.events]
    (1.5, 0, 0, ['BlockStored', 'BlockRemoved', 'AllBlocksCleared'])
    >>> batch.events[0].token_ids, batch.events[1].medium
    ((1, 2), 'GPU')
    """
    fl = flavour if flavour == "vllm" else check_flavour(flavour)
    if type(payload) is not bytes and not isinstance(payload, bytearray | memoryview):
        raise InvalidRecordError("payload", payload, "must be bytes")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise KvEventDecodeError(
            "payload", f"{len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte cap"
        )
    decode = _decoder or _load_msgspec()
    try:
        doc = decode(payload)
    except _decode_errors as exc:
        raise KvEventDecodeError("payload", f"not msgpack ({exc})") from None
    if type(doc) is list:
        if len(doc) < 2:
            raise KvEventDecodeError("envelope", f"an array of {len(doc)} items, not 2 or 3")
        ts, raw_events = doc[0], doc[1]
        rank = doc[2] if len(doc) > 2 else None
    elif type(doc) is dict:
        ts = doc.get("ts", _MISSING)
        raw_events = doc.get("events", _MISSING)
        rank = doc.get("data_parallel_rank")
        if ts is _MISSING or raw_events is _MISSING:
            raise KvEventDecodeError("envelope", "a map without 'ts' and 'events'")
    else:
        raise KvEventDecodeError("envelope", f"a msgpack {type(doc).__name__}, not an array")
    if type(ts) is int:
        ts = float(ts)
    if type(ts) is not float or not math.isfinite(ts):
        raise KvEventDecodeError("ts", f"{ts!r} is not a finite number")
    if type(raw_events) is not list:
        raise KvEventDecodeError("events", f"a {type(raw_events).__name__}, not an array")
    if rank is not None and (type(rank) is not int or rank < 0):
        raise KvEventDecodeError("data_parallel_rank", f"{rank!r} is not nil or an int >= 0")
    events: list[Event] = []
    dropped = ignored = 0
    if len(raw_events) > MAX_BATCH_EVENTS:
        dropped = len(raw_events) - MAX_BATCH_EVENTS
        raw_events = raw_events[:MAX_BATCH_EVENTS]
    append = events.append
    for raw in raw_events:
        try:
            event = _event(raw, fl)
        except (_BadEvent, InvalidRecordError, RecursionError):
            dropped += 1
            continue
        if event is None:
            ignored += 1
        else:
            append(event)
    return EventBatch(ts=ts, rank=rank, events=events, dropped=dropped, ignored=ignored)


def _frame_bytes(frame: object, name: str) -> bytes:
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, bytearray | memoryview):
        return bytes(frame)
    data = getattr(frame, "bytes", None)  # a zmq.Frame received with copy=False
    if isinstance(data, bytes):
        return data
    raise KvEventDecodeError(name, f"a {type(frame).__name__}, not bytes")


def decode_message(
    frames: Sequence[object], *, flavour: Flavour = "vllm"
) -> tuple[str, int, EventBatch]:
    """Decode one published message: ``[topic, seq, payload]``.

    Args:
        frames: the three frames (``bytes``, bytes-like, or ``zmq.Frame``).
        flavour: passed to :func:`decode_payload`.

    Returns:
        ``(topic, seq, batch)``: the topic as text (any convention: ``""``,
        ``"kv@pod@model"``, ``"kv-events"``...), the publisher's sequence number, the batch.

    Raises:
        KvEventDecodeError: not exactly three frames; a topic that is not UTF-8; a ``seq``
            frame that is not 8 bytes; any :func:`decode_payload` error.

    >>> topic, seq, batch = decode_message(
    ...     [b"kv@pod-1@m", (5).to_bytes(8, "big"), bytes.fromhex("92cb3ff800000000000090")])
    >>> topic, seq, batch.ts, batch.rank, batch.events
    ('kv@pod-1@m', 5, 1.5, None, ())
    """
    if isinstance(frames, bytes | bytearray | memoryview | str) or not isinstance(frames, Sequence):
        raise KvEventDecodeError("frames", f"a {type(frames).__name__}, not a list of frames")
    if len(frames) != 3:
        raise KvEventDecodeError("frames", f"{len(frames)} frames, not 3 (topic, seq, payload)")
    topic_raw = _frame_bytes(frames[0], "topic")
    seq_raw = _frame_bytes(frames[1], "seq")
    try:
        topic = topic_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KvEventDecodeError("topic", "not UTF-8") from None
    if len(seq_raw) != 8:
        raise KvEventDecodeError("seq", f"{len(seq_raw)} bytes, not 8")
    seq = int.from_bytes(seq_raw, "big")
    return topic, seq, decode_payload(_frame_bytes(frames[2], "payload"), flavour=flavour)


def _encode_event(event: Event, layout: str) -> object:
    if isinstance(event, BlockStored):
        extra = None if event.extra_keys is None else list(event.extra_keys)
        if layout == "positional":
            return [
                "BlockStored", list(event.block_hashes), event.parent_block_hash,
                list(event.token_ids), event.block_size, None, event.medium,
                event.lora_name, extra, event.group_idx, event.kv_cache_spec_kind, None,
            ]  # fmt: skip
        out: dict[str, object] = {
            "type": "BlockStored",
            "block_hashes": list(event.block_hashes),
            "parent_block_hash": event.parent_block_hash,
            "token_ids": list(event.token_ids),
            "block_size": event.block_size,
            "lora_id": None,
            "medium": event.medium,
            "lora_name": event.lora_name,
        }
        if extra is not None:
            out["extra_keys"] = extra
        if event.group_idx is not None:
            out["group_idx"] = event.group_idx
        if event.kv_cache_spec_kind is not None:
            out["kv_cache_spec_kind"] = event.kv_cache_spec_kind
        return out
    if isinstance(event, BlockRemoved):
        if layout == "positional":
            return ["BlockRemoved", list(event.block_hashes), event.medium, event.group_idx]
        removed: dict[str, object] = {
            "type": "BlockRemoved",
            "block_hashes": list(event.block_hashes),
            "medium": event.medium,
        }
        if event.group_idx is not None:
            removed["group_idx"] = event.group_idx
        return removed
    return ["AllBlocksCleared"] if layout == "positional" else {"type": "AllBlocksCleared"}


def encode_payload(batch: EventBatch, *, layout: Layout = "positional") -> bytes:
    """Encode ``batch`` as an engine would publish it (for emulators, simulators and tests).

    The envelope is ``[ts, events, rank]``. ``"positional"`` writes each event as vLLM up to
    v0.23 does (``BlockStored`` as 12 items, ``BlockRemoved`` as 4, ``lora_id`` and the
    sliding window nil); ``"map"`` as later vLLM does (fields without a default always
    present, ``extra_keys``, ``group_idx`` and ``kv_cache_spec_kind`` only when set). Hashes
    are written as ints.

    Raises:
        InvalidRecordError: ``batch`` is not an :class:`EventBatch`; ``layout`` is neither
            ``"positional"`` nor ``"map"``.

    >>> batch = EventBatch(ts=1.5, rank=0, events=[AllBlocksCleared()])
    >>> decode_payload(encode_payload(batch, layout="map")) == batch
    True
    """
    if not isinstance(batch, EventBatch):
        raise InvalidRecordError("batch", batch, "must be an EventBatch")
    check_layout(layout)
    if _encoder is None:
        _load_msgspec()
    assert _encoder is not None
    return _encoder([batch.ts, [_encode_event(e, layout) for e in batch.events], batch.rank])
