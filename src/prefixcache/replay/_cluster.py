"""The simulated deployment: :class:`ClusterModel`, its constants and where each comes
from, and :data:`DEFAULT_CLUSTER` (the engines that run it are in :mod:`._sim`)."""

from __future__ import annotations

import math
from typing import Any

import attrs

from clusterrouting import InvalidRecordError

__all__ = ["DEFAULT_CLUSTER", "ClusterModel", "finite_nonneg"]


def _positive(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRecordError(attr.name, value, "must be a number")
    if math.isnan(value) or value <= 0:
        raise InvalidRecordError(attr.name, value, "must be > 0")


def finite_nonneg(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: a finite number >= 0 (not a bool), else :class:`InvalidRecordError`
    naming the field."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRecordError(attr.name, value, "must be a number")
    if not math.isfinite(value) or value < 0:
        raise InvalidRecordError(attr.name, value, "must be a finite number >= 0")


def _cache_blocks(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRecordError(attr.name, value, "must be an int >= 0 or None (infinite)")


def _loss(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InvalidRecordError(attr.name, value, "must be a number in [0, 1)")


def _restarts(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise InvalidRecordError(attr.name, value, "must be a tuple of (time_s, replica)")
    for item in value:
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or isinstance(item[0], bool)
            or not isinstance(item[0], int | float)
            or not math.isfinite(item[0])
            or item[0] < 0
            or type(item[1]) is not int
            or item[1] < 0
        ):
            raise InvalidRecordError(attr.name, item, "each restart is (time_s >= 0, replica)")


@attrs.frozen(kw_only=True)
class ClusterModel:
    """The simulated deployment (all rates per replica).

    **Engine.** A replica is one inference server running a continuous-batching engine
    with chunked prefill (vLLM V1's scheduler). It runs one forward *step* after another
    while it has work. Each step first gives every decoding request one token, then gives
    prefill chunks to running requests still prefilling (oldest first), then admits waiting
    requests (FIFO) while the step has token budget left (``max_batch_tokens`` tokens per
    step), fewer than ``max_running`` requests run, and the KV cache can hold the admitted
    request. A request that cannot be admitted waits (queueing). A step lasts::

        1 / decode_tokens_per_s                          # weights read once per step
        + prefill_tokens_in_step / prefill_tokens_per_s  # compute-bound prefill chunks
        + decode_s_per_request * decoding_requests       # per-sequence overhead
        + decode_s_per_context_token * decoding_context  # KV read by attention

    so decode slows down as the batch and its contexts grow, and a prefill chunk stalls
    every decode in its step. A request's first token is produced by the step that
    finishes its prefill (TTFT = arrival to the end of that step); it then produces one
    token per step and completes with its ``output_tokens``-th token. A prompt entirely in
    cache still needs one token computed (as in vLLM).

    **KV cache.** ``cache_blocks`` blocks of ``block_tokens`` tokens per replica
    (``None``: infinite), shared by running requests and cached prefixes. On admission a
    request pins its prompt blocks (the leading ones already resident are hits; the others
    are allocated) plus ``ceil(output_tokens / block_tokens)`` private blocks for its
    output; the hit ratio counts the leading resident blocks at admission. When a request
    completes its prompt blocks stay cached, unpinned, in LRU order (deepest first, so a
    prefix is more recent than its extensions); allocation evicts the least recent unpinned
    blocks, and a request waits while pinned blocks leave no room (a request alone on an
    idle replica is always admitted). A block counts as cached from its request's admission:
    a request is admitted only in a step whose budget is left over after the remaining
    tokens of every earlier prefill, so by then every block of a running request is
    scheduled, and vLLM V1 (which caches a block in the step that schedules its last
    token: ``KVCacheManager.allocate_slots`` in ``vllm/v1/core/kv_cache_manager.py``) would
    hit it too.

    **Engine events** (issue-15 stream, only built when a policy reads it): after each
    step with changes, the engine publishes one ``prefixcache.kvevents.EventBatch``
    (``seq`` counting from 0 per publisher): a ``BlockStored`` for the blocks a request
    computed, when its prefill completes, and a ``BlockRemoved`` for evicted blocks.
    Engine block = trace block: ``block_hashes`` are the trace's block ids, ``block_size``
    is 1 and each block's one stand-in token is its id (``TOKEN_MASK``), so a consumer's
    chain over those tokens identifies trace blocks exactly. A batch reaches the router
    ``kv_event_delay_s`` after its step ends and is lost with probability
    ``kv_event_loss`` (a seeded ``random.Random(kv_event_seed)``). ``restarts`` lists
    ``(time_s, replica)``: at that (simulated) time the engine's cache is emptied (pinned
    blocks are freed when their request ends, never hit again) and its publisher restarts
    at ``seq`` 0.

    **Constants** (defaults; one 8xH100-80GB server, Llama-3.1-70B shape, FP8 KV cache,
    host-DRAM KV offload, as docs/replay.md derives for ``cache_blocks`` and the prefill rate):

    * ``prefill_tokens_per_s`` 20,000: ~157 GFLOP/token (2 x 70.6 B weights + attention
      at ~6 k context) against 8 x 989 TFLOP/s dense BF16 (H100 SXM datasheet) at 40 %
      MFU.
    * ``decode_tokens_per_s`` 80 (a lone request's step, 12.5 ms): 141 GB of BF16 weights
      over 8 x 3.35 TB/s HBM3 (datasheet) = 5.3 ms at peak, ~7.5 ms at the ~70 % of peak
      bandwidth measured by memory-bound kernels, plus ~5 ms of TP-8 all-reduces (80
      layers x 2 per step) and launch overhead.
    * ``decode_s_per_context_token`` 8.7e-9: 160 KiB of FP8 KV per token (2 x 80 layers x
      8 KV heads x 128) read once per step at that 70 % of 26.8 TB/s.
    * ``decode_s_per_request`` 1e-4: sampling, scheduling and output processing per
      sequence per step (vLLM's CPU overhead per sequence is of this order).
    * ``max_batch_tokens`` 8,192 and ``max_running`` 1,024: vLLM V1's defaults for the
      OpenAI server on GPUs with >= 70 GiB (``max_num_batched_tokens``,
      ``max_num_seqs``).
    * ``kv_bytes_per_token`` 163,840: only converts blocks to the bytes policies see.
    * ``scrape_interval_s`` 0.05: engine metrics (``waiting``, ``running``, KV use)
      are what a scraper saw at most this long ago (llm-d scrapes every 50 ms).
    * ``kv_event_delay_s`` 0.01 (the peer fact sheet's baseline; sweep 0-0.2 s).
    * ``chars_per_token`` 4: the stand-in text the character- and byte-based peers
      (SGLang, SMG, Ray, production-stack, AIBrix, llm-d's default profile) match gives a
      trace block of ``T`` tokens ``4 x T`` characters, llm-d's own constant (fact sheet
      section 10's baseline ``C = 4 T``; 1 gives its sensitivity run ``C = T``). No other
      policy reads it.

    Raises:
        InvalidRecordError: a field out of range (each names itself).
    """

    replicas: int = attrs.field(default=8, validator=_positive)
    cache_blocks: int | None = attrs.field(default=16_384, validator=_cache_blocks)
    block_tokens: int = attrs.field(default=512, validator=_positive)
    prefill_tokens_per_s: float = attrs.field(default=20_000.0, validator=_positive)
    decode_tokens_per_s: float = attrs.field(default=80.0, validator=_positive)
    kv_bytes_per_token: int = attrs.field(default=163_840, validator=_positive)
    decode_s_per_request: float = attrs.field(default=1e-4, validator=finite_nonneg)
    decode_s_per_context_token: float = attrs.field(default=8.7e-9, validator=finite_nonneg)
    max_batch_tokens: int = attrs.field(default=8192, validator=_positive)
    max_running: int = attrs.field(default=1024, validator=_positive)
    scrape_interval_s: float = attrs.field(default=0.05, validator=finite_nonneg)
    kv_event_delay_s: float = attrs.field(default=0.01, validator=finite_nonneg)
    kv_event_loss: float = attrs.field(default=0.0, validator=_loss)
    kv_event_seed: int = 0
    restarts: tuple[tuple[float, int], ...] = attrs.field(default=(), validator=_restarts)
    chars_per_token: int = attrs.field(default=4, validator=_positive)

    def __attrs_post_init__(self) -> None:
        for name in (
            "replicas",
            "block_tokens",
            "max_batch_tokens",
            "max_running",
            "chars_per_token",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise InvalidRecordError(name, v, "must be an int >= 1")
        for _t, r in self.restarts:
            if r >= self.replicas:
                raise InvalidRecordError("restarts", r, "replica out of range")


DEFAULT_CLUSTER = ClusterModel()
