"""msgspec structs declared as the engines declare their KV-event payloads (for tests).

Written from ``shared/kv-events.md`` and the engine sources it cites:

* vLLM ``vllm/distributed/kv_events.py`` (main, read 2026-12): ``EventBatch`` and the
  events are plain (map) msgspec structs with ``omit_defaults=True`` and ``tag=True``
  (tag field ``"type"``); ``BlockStored`` always carries ``lora_id``, ``medium`` and
  ``lora_name`` and omits unset ``extra_keys``, ``group_idx`` and the KV-cache spec fields.
* vLLM up to v0.23: the same events as positional (``array_like``) structs.
* An older SGLang (``python/sglang/srt/disaggregation/kv_events.py``): ``array_like=True,
  omit_defaults=True``, ``EventBatch`` is ``[ts, events]``, ``BlockStored`` has 5 fields
  and ``BlockRemoved`` only ``block_hashes``.
* SGLang since its ``medium`` field (PR #18205; ``StorageMedium``: ``"GPU"``,
  ``"CPU_PINNED"``, ``"DISK"``, ``"EXTERNAL"``): positional events without
  ``omit_defaults``, ``medium`` after ``lora_id``; a salted store is a
  ``BlockStoredWithMetadata`` whose ``metadata`` (a plain struct: a map) follows ``medium``,
  ``{"cache_salt": ..., "session_id": ...}`` (PR #37482 added ``session_id``).
* SGLang's tagged-map events (its newest): ``BlockStored`` maps with ``cache_salt`` and
  ``session_id`` keys, omitted when unset.
"""

from __future__ import annotations

from typing import Any

import msgspec


def vllm_events(*, array_like: bool, omit_defaults: bool) -> tuple[Any, Any, Any]:
    """vLLM's ``BlockStored``, ``BlockRemoved`` and ``AllBlocksCleared`` in one layout:
    tagged (field ``"type"``) structs, positional with ``array_like``, unset trailing
    fields left out with ``omit_defaults``."""

    class Event(msgspec.Struct, array_like=array_like, omit_defaults=omit_defaults, tag=True):
        pass

    class Stored(Event, tag="BlockStored"):
        block_hashes: list[int | bytes]
        parent_block_hash: int | bytes | None
        token_ids: list[int]
        block_size: int
        lora_id: int | None
        medium: str | None
        lora_name: str | None
        extra_keys: list[tuple[Any, ...] | None] | None = None
        group_idx: int | None = None
        kv_cache_spec_kind: str | None = None
        kv_cache_spec_sliding_window: int | None = None

    class Removed(Event, tag="BlockRemoved"):
        block_hashes: list[int | bytes]
        medium: str | None
        group_idx: int | None = None

    class Cleared(Event, tag="AllBlocksCleared"):
        pass

    return Stored, Removed, Cleared


# --- vLLM today: map events in a map envelope (section 2 "Map"; vLLM main) -------------
VStored, VRemoved, VCleared = vllm_events(array_like=False, omit_defaults=True)


class VMapBatch(msgspec.Struct, omit_defaults=True):
    ts: float
    events: list[VStored | VRemoved | VCleared]
    data_parallel_rank: int | None = None


# --- vLLM up to v0.23: positional events (section 2 "Positional") ------------------------
PStored, PRemoved, PCleared = vllm_events(array_like=True, omit_defaults=False)


class PBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[PStored | PRemoved | PCleared]
    data_parallel_rank: int | None


# --- an older SGLang: positional, defaults omitted, no rank -------------------------------
class SEvent(msgspec.Struct, array_like=True, omit_defaults=True, tag=True):
    pass


class SStored(SEvent, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None


class SRemoved(SEvent, tag="BlockRemoved"):
    block_hashes: list[int]


class SCleared(SEvent, tag="AllBlocksCleared"):
    pass


class SBatch(msgspec.Struct, array_like=True, omit_defaults=True):
    ts: float
    events: list[SStored | SRemoved | SCleared]


# --- SGLang with medium and a salted store's metadata map (positional) --------------------
class SmEvent(msgspec.Struct, array_like=True, tag=True):
    pass


class SmStored(SmEvent, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None = None


class SmMetadata(msgspec.Struct, omit_defaults=True):
    cache_salt: str
    session_id: str | None = None


class SmStoredWithMetadata(SmStored, tag="BlockStored", kw_only=True):
    metadata: SmMetadata


class SmRemoved(SmEvent, tag="BlockRemoved"):
    block_hashes: list[int]
    medium: str | None = None


class SmBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[SmStored | SmStoredWithMetadata | SmRemoved]
    attn_dp_rank: int | None = None


# --- SGLang's tagged-map events ---------------------------------------------------------
class SgMapEvent(msgspec.Struct, omit_defaults=True, tag=True):
    pass


class SgMapStored(SgMapEvent, tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None = None
    cache_salt: str | None = None
    session_id: str | None = None


class SgMapBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[SgMapStored]
    attn_dp_rank: int | None = None
