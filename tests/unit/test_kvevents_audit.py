"""Conformance audit of ``prefixcache.kvevents`` against ``shared/kv-events.md`` and issue 15.

Every payload here is built either with msgspec structs declared as the engines declare
theirs (``tests/engine_structs.py``) or as raw msgpack, and every expectation is written
by hand from the fact sheet's words (its section is named in each test). Where the fact
sheet leaves a detail open, the engine source that settles it is cited:

* vLLM ``vllm/distributed/kv_events.py`` (main, read 2026-12): ``EventBatch`` and the
  events are plain (map) msgspec structs with ``omit_defaults=True`` and ``tag=True``
  (tag field ``"type"``); ``ExternalBlockHash`` is ``bytes | int``; ``BlockStored`` has no
  default for ``lora_id``, ``medium``, ``lora_name`` (always present) and ``None``
  defaults for ``extra_keys``, ``group_idx``, ``kv_cache_spec_kind``,
  ``kv_cache_spec_sliding_window`` (omitted when unset); ``BlockRemoved.medium`` has no
  default, ``group_idx`` does. The replay ROUTER expects ``[identity, b"", start]`` and
  answers ``[identity, b"", seq, payload]`` then ``[identity, b"", (-1) as 8 signed
  big-endian bytes, b""]``.
* SGLang ``python/sglang/srt/disaggregation/kv_events.py`` (an older release): events and
  ``EventBatch`` are ``array_like=True, omit_defaults=True``; ``EventBatch`` is ``[ts,
  events]`` (no rank), ``BlockStored`` has 5 fields (up to ``lora_id``), ``BlockRemoved``
  only ``block_hashes``. Its radix cache (``mem_cache``'s ``_record_store_event``) emits
  one ``BlockStored`` per page with ``block_size=len(page_tokens)`` and hashes as signed
  int64.
* vLLM ``kv_cache_utils.generate_block_hash_extra_keys``: a block's extra keys are
  ``lora keys + multimodal keys + [cache_salt] (first block only) + prompt-embeds keys``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from engine_structs import (
    PBatch,
    PRemoved,
    PStored,
    SBatch,
    SCleared,
    SRemoved,
    SStored,
    VCleared,
    VMapBatch,
    VRemoved,
    VStored,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from clusterrouting import ClusterRoutingError
from prefixcache import ReplicaKey, extract_token_chain
from prefixcache.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEventDecodeError,
    KvResidency,
    ResidencyState,
    decode_message,
    decode_payload,
)

EXACT, DEGRADED, UNKNOWN = ResidencyState.EXACT, ResidencyState.DEGRADED, ResidencyState.UNKNOWN
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
I64_MIN = -(1 << 63)


def enc(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


def one_event(payload: bytes, flavour: str = "vllm") -> object:
    batch = decode_payload(payload, flavour=flavour)  # type: ignore[arg-type]
    assert batch.dropped == 0 and len(batch.events) == 1, batch
    return batch.events[0]


# ============================================================================ decoding


def test_vllm_map_envelope_and_map_events_with_defaults_omitted() -> None:
    # Section 2: map envelope accepted; fields with a default omitted when equal to it.
    # vLLM main declares EventBatch as a map struct (omit_defaults: no rank key when None).
    raw = enc(
        VMapBatch(
            ts=12.25,
            events=[
                VStored(
                    block_hashes=[U64_MAX, 3],
                    parent_block_hash=None,
                    token_ids=list(range(32)),
                    block_size=16,
                    lora_id=None,
                    medium="GPU",
                    lora_name=None,
                ),
                VRemoved(block_hashes=[3], medium="GPU"),
                VCleared(),
            ],
        )
    )
    doc = msgspec.msgpack.decode(raw)
    assert "data_parallel_rank" not in doc and "extra_keys" not in doc["events"][0]
    batch = decode_payload(raw)
    assert (batch.ts, batch.rank, batch.dropped) == (12.25, None, 0)
    assert batch.events == (
        BlockStored(
            block_hashes=(U64_MAX, 3),
            parent_block_hash=None,
            token_ids=tuple(range(32)),
            block_size=16,
            medium="GPU",
        ),
        BlockRemoved(block_hashes=(3,), medium="GPU"),
        AllBlocksCleared(),
    )


def test_vllm_map_event_with_every_field_set_including_future_ones() -> None:
    # Section 2 table: every field read from its key (kv_cache_spec_kind since vLLM PR
    # #40984); the sliding window and locality (unknown keys to this decoder's records)
    # ignored.
    event = {
        "locality": "rack-7",  # newer versions, map layout only
        "kv_cache_spec_sliding_window": 4096,
        "kv_cache_spec_kind": "full_attention",
        "group_idx": 0,
        "extra_keys": [["lora-a", "salt-1"], ["lora-a"]],
        "lora_name": "lora-a",
        "medium": "CPU",
        "lora_id": 3,
        "block_size": 2,
        "token_ids": [9, 8, 7, 6],
        "parent_block_hash": 41,
        "block_hashes": [42, 43],
        "type": "BlockStored",
    }
    batch = decode_payload(enc({"events": [event], "data_parallel_rank": 2, "ts": 1.0}))
    assert batch.rank == 2
    assert batch.events == (
        BlockStored(
            block_hashes=(42, 43),
            parent_block_hash=41,
            token_ids=(9, 8, 7, 6),
            block_size=2,
            medium="CPU",
            lora_name="lora-a",
            group_idx=0,
            extra_keys=(("lora-a", "salt-1"), ("lora-a",)),
            kv_cache_spec_kind="full_attention",
        ),
    )


def test_vllm_positional_struct_round_trip_of_every_table_position() -> None:
    # Section 2 table, positions 1..11, encoded by an array_like struct declared as vLLM's.
    raw = enc(
        PBatch(
            ts=2.0,
            events=[
                PStored(
                    block_hashes=[1 << 63, 0],
                    parent_block_hash=U64_MAX,
                    token_ids=[0, (1 << 32) - 1],
                    block_size=1,
                    lora_id=None,
                    medium="GPU",
                    lora_name="ad",
                    extra_keys=[("ad", "s"), None],
                    group_idx=1,
                    kv_cache_spec_kind="sliding_window",
                    kv_cache_spec_sliding_window=128,
                ),
                PRemoved(block_hashes=[0], medium=None, group_idx=1),
            ],
            data_parallel_rank=7,
        )
    )
    assert raw[:1] == b"\x93"  # [ts, events, rank]
    batch = decode_payload(raw)
    assert batch.rank == 7
    assert batch.events == (
        BlockStored(
            block_hashes=(1 << 63, 0),
            parent_block_hash=U64_MAX,
            token_ids=(0, (1 << 32) - 1),
            block_size=1,
            medium="GPU",
            lora_name="ad",
            group_idx=1,
            extra_keys=(("ad", "s"), None),
            kv_cache_spec_kind="sliding_window",
        ),
        BlockRemoved(block_hashes=(0,), medium=None, group_idx=1),
    )


def test_old_sglang_positional_without_medium_or_rank() -> None:
    # Section 2: 2-element envelope; positional stores cut after lora_id (the first five
    # fields); BlockRemoved with block_hashes only (SGLang's older declaration). Signed
    # int64 hashes (section 3, SGLang) are kept as they are.
    raw = enc(
        SBatch(
            ts=3.5,
            events=[
                SStored(
                    block_hashes=[I64_MIN, -1],
                    parent_block_hash=(1 << 63) - 1,
                    token_ids=[5, 6, 7, 8],
                    block_size=2,
                    lora_id=None,
                ),
                SRemoved(block_hashes=[-1]),
                SCleared(),
            ],
        )
    )
    doc = msgspec.msgpack.decode(raw)
    assert len(doc) == 2 and len(doc[1][0]) == 6 and len(doc[1][1]) == 2
    batch = decode_payload(raw, flavour="sglang")
    assert (batch.ts, batch.rank, batch.dropped) == (3.5, None, 0)
    assert batch.events == (
        BlockStored(
            block_hashes=(I64_MIN, -1),
            parent_block_hash=(1 << 63) - 1,
            token_ids=(5, 6, 7, 8),
            block_size=2,
        ),
        BlockRemoved(block_hashes=(-1,)),
        AllBlocksCleared(),
    )


def test_the_all_ones_hash_is_msgpack_uint64() -> None:
    # Section 4 edge case: 0xFFFFFFFFFFFFFFFF travels as msgpack "cf" + 8 bytes.
    raw = bytes.fromhex(
        "92cb0000000000000000"  # [0.0,
        "91"  # [
        "95ab426c6f636b53746f726564"  # ["BlockStored",
        "91cfffffffffffffffff"  # [2**64 - 1],
        "cfffffffffffffffff"  # 2**64 - 1,
        "9101"  # [1],
        "01"  # 1]]]
    )
    event = one_event(raw)
    assert isinstance(event, BlockStored)
    assert event.block_hashes == (U64_MAX,) and event.parent_block_hash == U64_MAX


# Section 3: bytes hashes. vLLM: the LAST 8 bytes, big-endian, unsigned; SGLang: the FIRST
# 8 bytes, signed. Expected values below are written out by hand from the bytes.
DIGEST32 = bytes.fromhex("f0e1d2c3b4a59687" + "00" * 16 + "8899aabbccddeeff")
DIGEST16 = bytes.fromhex("0102030405060708fffefdfcfbfaf9f8")
DIGEST8 = bytes.fromhex("8000000000000001")


@pytest.mark.parametrize(
    ("digest", "flavour", "expected"),
    [
        (DIGEST32, "vllm", 0x8899AABBCCDDEEFF),
        (DIGEST32, "sglang", 0xF0E1D2C3B4A59687 - (1 << 64)),
        (DIGEST16, "vllm", 0xFFFEFDFCFBFAF9F8),
        (DIGEST16, "sglang", 0x0102030405060708),
        (DIGEST8, "vllm", 0x8000000000000001),
        (DIGEST8, "sglang", 0x8000000000000001 - (1 << 64)),
    ],
)
def test_bytes_hashes_of_several_lengths_in_both_layouts(
    digest: bytes, flavour: str, expected: int
) -> None:
    positional = enc([0.0, [["BlockStored", [digest, 5], digest, [1], 1, None, "GPU", None]]])
    mapped = enc(
        [0.0, [{"type": "BlockStored", "block_hashes": [5, digest], "parent_block_hash": digest,
                "token_ids": [1], "block_size": 1, "lora_id": None, "medium": "GPU",
                "lora_name": None}]]
    )  # fmt: skip
    removed = enc([0.0, [{"type": "BlockRemoved", "block_hashes": [digest], "medium": "GPU"}]])
    p = one_event(positional, flavour)
    m = one_event(mapped, flavour)
    r = one_event(removed, flavour)
    assert isinstance(p, BlockStored) and isinstance(m, BlockStored)
    assert isinstance(r, BlockRemoved)
    assert p.block_hashes == (expected, 5) and p.parent_block_hash == expected
    assert m.block_hashes == (5, expected) and m.parent_block_hash == expected
    assert r.block_hashes == (expected,)


def test_unknown_tags_keys_and_trailing_extras_are_ignored() -> None:
    # Section 2: unknown keys ignored; positional extras past the table ignored (a future
    # "locality" at position 12); unknown tags skipped (issue 15: "unknown tags ignored").
    raw = enc(
        [
            0.0,
            [
                ["BlockStored", [1], None, [4], 1, None, "GPU", None, None, None, None, None,
                 "rack-1", {"future": True}],
                ["BlockRemoved", [1], "GPU", None, "rack-1"],
                ["AllBlocksCleared", "unexpected"],
                ["BlockMoved", [1], "GPU", "CPU"],
                {"type": "CacheHit", "block_hashes": [1]},
                {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU", "new": [1, 2]},
            ],
            0,
            "a fourth envelope item",
        ]
    )  # fmt: skip
    batch = decode_payload(raw)
    assert batch.dropped == 0 and batch.ignored == 2
    assert batch.events == (
        BlockStored(block_hashes=(1,), token_ids=(4,), block_size=1, medium="GPU"),
        BlockRemoved(block_hashes=(1,), medium="GPU"),
        AllBlocksCleared(),
        BlockRemoved(block_hashes=(1,), medium="GPU"),
    )


def test_missing_optional_fields_and_explicit_nils_mean_the_same() -> None:
    # Section 2: "nil when unset" (positional) and "omitted when equal to the default" (map).
    nil_map = {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
               "token_ids": [4], "block_size": 1, "lora_id": None, "medium": None,
               "lora_name": None, "extra_keys": None, "group_idx": None}  # fmt: skip
    bare_map = {"type": "BlockStored", "block_hashes": [1], "token_ids": [4], "block_size": 1}
    short_positional = ["BlockStored", [1], None, [4], 1]
    nil_positional = ["BlockStored", [1], None, [4], 1, None, None, None, None, None, None, None]
    want = BlockStored(block_hashes=(1,), token_ids=(4,), block_size=1)
    for event in (nil_map, bare_map, short_positional, nil_positional):
        assert one_event(enc([0.0, [event]])) == want


def test_a_bad_event_is_dropped_and_counted_between_good_ones() -> None:
    # Issue 15: "One bad event is dropped and counted, never fatal".
    good = ["AllBlocksCleared"]
    bad = [
        ["BlockStored", [1], None],  # fewer than five fields
        ["BlockStored", [1], None, [4], "16"],  # block_size not an int
        ["BlockStored", [1], None, [-1], 1],  # token id out of range
        ["BlockStored", ["x"], None, [4], 1],  # a hash that is neither int nor bytes
        ["BlockStored", [b""], None, [4], 1],  # an empty digest
        {"type": "BlockStored", "block_hashes": [1], "token_ids": [4]},  # no block_size
        {"type": "BlockRemoved", "medium": "GPU"},  # no block_hashes
        {"block_hashes": [1]},  # no tag
        [],
        None,
        7,
    ]
    batch = decode_payload(enc([0.0, [good, *bad, good], None]))
    assert batch.events == (AllBlocksCleared(), AllBlocksCleared())
    assert batch.dropped == len(bad)


@pytest.mark.parametrize(
    "doc",
    [5, "x", None, [], [1.0], {"ts": 1.0}, {"events": []}, [1.0, "not a list"], [[], []]],
)
def test_a_payload_that_is_not_an_envelope_raises_a_value_error(doc: object) -> None:
    # Issue 15: "a payload that is not an envelope raises KvEventDecodeError (a ValueError)".
    with pytest.raises(KvEventDecodeError) as info:
        decode_payload(enc(doc))
    assert isinstance(info.value, ValueError) and isinstance(info.value, ClusterRoutingError)


def test_envelope_of_two_three_and_four_items_and_a_nil_rank() -> None:
    # Section 2: [ts, events] (older vLLM, SGLang), [ts, events, rank]; rank may be nil.
    assert decode_payload(enc([1.0, []])).rank is None
    assert decode_payload(enc([1.0, [], None])).rank is None
    assert decode_payload(enc([1.0, [], 3])).rank == 3
    assert decode_payload(enc([1.0, [], 3, "later"])).rank == 3
    assert decode_payload(enc({"ts": 1.0, "events": [], "data_parallel_rank": None})).rank is None


def test_decode_message_reads_the_three_frames_of_any_topic_convention() -> None:
    # Section 1: topic (UTF-8), seq (8 bytes big-endian unsigned), payload.
    payload = enc([1.0, [["AllBlocksCleared"]], 1])
    for topic in ("", "kv@pod-1@meta-llama/Llama-3.1-8B", "kv-events", "ключ"):
        for seq in (0, 1, 0x0102030405060708, U64_MAX - 1):
            got = decode_message([topic.encode(), seq.to_bytes(8, "big"), payload])
            assert got[0] == topic and got[1] == seq
            assert got[2].events == (AllBlocksCleared(),) and got[2].rank == 1
    for frames in (
        [b"", (1).to_bytes(4, "big"), payload],
        [b"", payload],
        [b"\xff", bytes(8), payload],
    ):
        with pytest.raises(KvEventDecodeError):
            decode_message(frames)


# ============================================================================ residency

M = "meta-llama/Llama-3.1-8B"
K0, K1 = ReplicaKey("pod-0", 0), ReplicaKey("pod-0", 1)


def res16(**kw: Any) -> KvResidency:
    return KvResidency(block_tokens=16, clock=lambda: 0.0, **kw)


def apply_raw(res: KvResidency, key: ReplicaKey, seq: int, doc: object, **kw: Any) -> Any:
    flavour = kw.pop("flavour", "vllm")
    return res.apply(key, seq, decode_payload(enc(doc), flavour=flavour), model=M, **kw)


def stored_doc(hashes: list[Any], tokens: list[int], parent: Any = None, **fields: Any) -> Any:
    # vLLM's map layout: the fields without a default always present, the others on demand.
    event = {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
    }
    event.update(fields)
    return event


PROMPT = list(range(1000, 1064))  # 4 blocks of 16 (vLLM's default block size)


def test_two_engines_with_different_hash_schemes_match_the_same_request() -> None:
    # Section 3: the engine hash is a foreign key; the chain is ours (extract_token_chain
    # continued from the parent's canonical hash). A vLLM rank (uint64 ints) and an SGLang
    # rank (signed ints, one store per page) holding the same tokens match the same query.
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc([U64_MAX, 7], PROMPT[:32])], 0])
    apply_raw(res, K0, 1, [0.0, [stored_doc([12], PROMPT[32:48], parent=7)], 0])
    pages = [[0.0, [stored_doc([-5], PROMPT[:16])]],
             [0.0, [stored_doc([-6], PROMPT[16:32], parent=-5)]]]  # fmt: skip
    for seq, doc in enumerate(pages):
        apply_raw(res, K1, seq, doc, flavour="sglang")
    assert res.overlap(M, PROMPT, [K0, K1]) == {K0: 3, K1: 2}
    chain = extract_token_chain(M, PROMPT, block_tokens=16)
    assert res.overlap_chain(chain, [K0, K1]) == {K0: 3, K1: 2}
    assert res.state(K0) is EXACT and res.state(K1) is EXACT


def test_bytes_digests_link_parents_and_removals() -> None:
    # Section 3: with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 the hashes are raw digests.
    res = res16()
    d1, d2 = b"\x01" * 32, b"\x02" * 32
    apply_raw(res, K0, 0, [0.0, [stored_doc([d1], PROMPT[:16])]])
    apply_raw(res, K0, 1, [0.0, [stored_doc([d2], PROMPT[16:32], parent=d1)]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 2}
    report = apply_raw(res, K0, 2, [0.0, [{"type": "BlockRemoved", "block_hashes": [d2],
                                           "medium": "GPU"}]])  # fmt: skip
    assert report.removed_blocks == 1 and res.overlap(M, PROMPT, [K0]) == {K0: 1}


def test_the_all_ones_hash_links_a_child_and_is_removed() -> None:
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc([U64_MAX], PROMPT[:16])]])
    apply_raw(res, K0, 1, [0.0, [stored_doc([0], PROMPT[16:32], parent=U64_MAX)]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 2} and res.state(K0) is EXACT
    apply_raw(res, K0, 2, [0.0, [["BlockRemoved", [U64_MAX], "GPU"]]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 0}


@pytest.mark.parametrize(
    ("flavour", "first", "second"),
    [
        ("vllm", 3236607068019569386, 2758186210834249151),  # sha256_cbor
        ("vllm", 7536218907325174565, 9048537298590080561),  # sha256 (pickle)
        ("vllm", 882618318818381833, 12890060145260523405),  # xxhash_cbor
        ("sglang", 8635429971592222890, 1256577331724852459),  # SGLang's chain
        ("vllm", 0, 1),  # a zero hash is a hash, not "no parent"
    ],
)
def test_the_known_engine_vectors_all_give_our_chain(flavour: str, first: int, second: int) -> None:
    # Section 3's vectors (tokens 1..16 then 17..32, block size 16): whichever algorithm
    # the engine used, the blocks are ours, equal to extract_token_chain's.
    res = res16()
    tokens = list(range(1, 33))
    apply_raw(res, K0, 0, [0.0, [stored_doc([first], tokens[:16])]], flavour=flavour)
    apply_raw(res, K0, 1, [0.0, [stored_doc([second], tokens[16:], parent=first)]],
              flavour=flavour)  # fmt: skip
    assert res.overlap_chain(extract_token_chain(M, tokens, block_tokens=16), [K0]) == {K0: 2}
    assert res.state(K0) is EXACT


def test_engine_blocks_of_a_multiple_of_block_tokens_split_and_others_drop() -> None:
    # Issue 15: "Engine block sizes that are multiples of block_tokens are split; others
    # are dropped and counted". Engine blocks of 32 over ours of 16: two of ours each.
    res = res16()
    report = apply_raw(res, K0, 0, [0.0, [stored_doc([1, 2], PROMPT, block_size=32)]])
    assert report.stored_blocks == 2 and res.status(K0).canonical_blocks == 4
    assert res.overlap(M, PROMPT, [K0]) == {K0: 4}
    apply_raw(res, K0, 1, [0.0, [["BlockRemoved", [2], "GPU"]]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 2}  # the removal took both halves
    odd = apply_raw(res, K0, 2, [0.0, [stored_doc([3], PROMPT[:24], block_size=24)]])
    assert odd.dropped_block_size == 1 and odd.stored_blocks == 0
    small = apply_raw(res, K0, 3, [0.0, [stored_doc([4, 5], PROMPT[:16], block_size=8)]])
    assert small.dropped_block_size == 1


def test_tokens_not_filling_the_blocks_are_dropped_and_counted() -> None:
    # Section 2: len(token_ids) == len(block_hashes) * block_size for full attention;
    # sliding-window groups do not align; CPU placeholders carry [] and block_size 0.
    res = res16(media={"GPU", "CPU"})
    short = apply_raw(res, K0, 0, [0.0, [stored_doc([1, 2], PROMPT[:20])]])
    empty = apply_raw(res, K0, 1, [0.0, [stored_doc([3], [], block_size=0, medium="CPU")]])
    assert short.dropped_tokens == 1 and empty.dropped_tokens == 1
    assert res.status(K0).blocks == 0


def test_sglang_partial_last_page_is_dropped_not_stored_as_a_full_block() -> None:
    # SGLang emits block_size=len(page_tokens): a 4-token page at the end of a node is not
    # a full block of 16 and must never match.
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc([-1], PROMPT[:16]),
                                 stored_doc([-2], PROMPT[16:20], parent=-1, block_size=4)]],
              flavour="sglang")  # fmt: skip
    assert res.overlap(M, PROMPT, [K0]) == {K0: 1}


def test_lora_name_and_cache_salt_in_extra_keys_are_namespaces() -> None:
    # Issue 15: lora_name and the cache_salt carried in extra_keys enter the namespace;
    # vLLM's extra keys: (lora, ..., salt) on the first block, (lora,) on the others.
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc(
        [1, 2], PROMPT[:32], lora_name="sql-lora",
        extra_keys=[["sql-lora", "tenant-9"], ["sql-lora"]])]])  # fmt: skip
    child = stored_doc(
        [3], PROMPT[32:48], parent=2, lora_name="sql-lora", extra_keys=[["sql-lora"]]
    )
    apply_raw(res, K0, 1, [0.0, [child]])
    apply_raw(res, K1, 0, [0.0, [stored_doc([1, 2], PROMPT[:32], extra_keys=[["tenant-9"], None])]])
    assert res.overlap(M, PROMPT, [K0, K1], lora_name="sql-lora", cache_salt="tenant-9") == {
        K0: 3,
        K1: 0,
    }
    assert res.overlap(M, PROMPT, [K0, K1], cache_salt="tenant-9") == {K0: 0, K1: 2}
    assert res.overlap(M, PROMPT, [K0, K1], lora_name="sql-lora") == {K0: 0, K1: 0}
    assert res.overlap(M, PROMPT, [K0, K1]) == {K0: 0, K1: 0}


def test_a_lora_store_without_extra_keys_matches_the_lora_query() -> None:
    # Issue 15: lora_name alone (no extra_keys) is the namespace too.
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc([1], PROMPT[:16], lora_name="a")]])
    assert res.overlap(M, PROMPT, [K0], lora_name="a") == {K0: 1}
    assert res.overlap(M, PROMPT, [K0], lora_name="b") == {K0: 0}
    assert res.overlap(M, PROMPT, [K0]) == {K0: 0}


@pytest.mark.parametrize("extra_keys", [[], [None], [None, None], [[]], [[], []]])
def test_empty_or_nil_extra_keys_are_no_keys(extra_keys: list[Any]) -> None:
    # Section 2: extra_keys is "list (one entry per block) or nil"; an empty list or nil
    # entries carry no key, so the block is a plain block. (An empty list once raised
    # IndexError out of apply, which would end a subscriber's thread.)
    res = res16()
    report = apply_raw(res, K0, 0, [0.0, [stored_doc([1, 2], PROMPT[:32], extra_keys=extra_keys)]])
    assert report.stored_blocks == 2 and res.state(K0) is EXACT
    assert res.overlap(M, PROMPT, [K0]) == {K0: 2}
    child = stored_doc([3], PROMPT[32:48], parent=2, extra_keys=extra_keys)
    assert apply_raw(res, K0, 1, [0.0, [child]]).stored_blocks == 1
    assert res.overlap(M, PROMPT, [K0]) == {K0: 3}


def test_media_and_groups_not_routed_on_are_dropped_and_counted() -> None:
    # Section 2: "Drop media you do not route on, and count the drops"; hybrid models:
    # index only the main group. A removal on another medium leaves the GPU copy alone.
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc([1], PROMPT[:16])]])
    report = apply_raw(res, K0, 1, [0.0, [
        stored_doc([2], PROMPT[16:32], parent=1, medium="CPU"),
        stored_doc([2], PROMPT[16:32], parent=1, group_idx=1),
        {"type": "BlockRemoved", "block_hashes": [1], "medium": "CPU"},
        {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU", "group_idx": 1},
    ]])  # fmt: skip
    assert report.dropped_medium == 2 and report.dropped_group == 2
    assert res.overlap(M, PROMPT, [K0]) == {K0: 1}
    # group_idx 0 written out is the main group, as nil is.
    apply_raw(res, K0, 2, [0.0, [stored_doc([2], PROMPT[16:32], parent=1, group_idx=0)]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 2}
    apply_raw(res, K0, 3, [0.0, [["BlockRemoved", [2], None]]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 1}


def test_cpu_medium_when_routed_on_has_its_own_refcounts() -> None:
    # Section 2: the count is per (replica, rank, medium, group, hash).
    res = res16(media={"GPU", "CPU"})
    apply_raw(res, K0, 0, [0.0, [stored_doc([1], PROMPT[:16]),
                                 stored_doc([1], PROMPT[:16], medium="CPU")]])  # fmt: skip
    apply_raw(res, K0, 1, [0.0, [["BlockRemoved", [1], "GPU"]]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 1}  # the CPU copy still holds it
    apply_raw(res, K0, 2, [0.0, [["BlockRemoved", [1], "CPU"]]])
    assert res.overlap(M, PROMPT, [K0]) == {K0: 0}


def test_duplicate_stores_need_as_many_removes_in_both_layouts() -> None:
    # Section 4 edge case: a duplicate store followed by two removes.
    res = res16()
    apply_raw(res, K0, 0, [0.0, [["BlockStored", [9], None, PROMPT[:16], 16, None, "GPU", None]]])
    apply_raw(res, K0, 1, [0.0, [stored_doc([9], PROMPT[:16])]])
    first = apply_raw(res, K0, 2, [0.0, [{"type": "BlockRemoved", "block_hashes": [9],
                                          "medium": "GPU"}]])  # fmt: skip
    assert first.removed_blocks == 1 and res.overlap(M, PROMPT, [K0]) == {K0: 1}
    second = apply_raw(res, K0, 3, [0.0, [["BlockRemoved", [9], "GPU"]]])
    assert second.removed_blocks == 1 and res.overlap(M, PROMPT, [K0]) == {K0: 0}
    third = apply_raw(res, K0, 4, [0.0, [["BlockRemoved", [9], "GPU"]]])
    assert third.unknown_removals == 1 and res.state(K0) is EXACT
    assert res.status(K0).blocks == 0


def test_removal_of_unknown_blocks_is_harmless_and_counted() -> None:
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc([1], PROMPT[:16])]])
    report = apply_raw(res, K0, 1, [0.0, [["BlockRemoved", [77, 78], "GPU"]]])
    assert report.unknown_removals == 2 and report.applied_removes == 1
    assert res.overlap(M, PROMPT, [K0]) == {K0: 1} and res.state(K0) is EXACT


def test_all_blocks_cleared_applies_in_event_order_within_a_batch() -> None:
    # Section 2: AllBlocksCleared is a full reset; events of a batch apply in order.
    res = res16()
    report = apply_raw(res, K0, 0, [0.0, [
        stored_doc([1], PROMPT[:16]),
        {"type": "AllBlocksCleared"},
        stored_doc([5], list(range(16))),
    ]])  # fmt: skip
    assert report.cleared_blocks == 1
    assert res.overlap(M, PROMPT, [K0]) == {K0: 0}
    assert res.overlap(M, list(range(16)), [K0]) == {K0: 1}


def test_a_clear_resets_a_degraded_replica_to_exact() -> None:
    # Issue 15: a gap makes it degraded until a replay closes it or a clear resets it.
    res = res16()
    apply_raw(res, K0, 0, [0.0, [stored_doc([1], PROMPT[:16])]])
    apply_raw(res, K0, 5, [0.0, []])
    assert res.state(K0) is DEGRADED
    apply_raw(res, K0, 6, [0.0, [["AllBlocksCleared"]]])
    assert res.state(K0) is EXACT and res.status(K0).blocks == 0
    # The replay of the batches the clear superseded changes nothing.
    for seq in range(1, 5):
        assert apply_raw(
            res, K0, seq, [0.0, [stored_doc([9], PROMPT[:16])]], replayed=True
        ).duplicate
    assert res.overlap(M, PROMPT, [K0]) == {K0: 0} and res.state(K0) is EXACT


def test_seq_backwards_is_a_restart_and_a_replay_of_the_new_run_fills_its_gap() -> None:
    # Section 1: a lower seq is a publisher restart (its cache is new); replayed batches
    # carry their old numbers and are never a restart.
    res = res16()
    for seq in range(4):
        apply_raw(
            res, K0, seq, [0.0, [stored_doc([seq + 1], list(range(seq * 16, seq * 16 + 16)))]]
        )
    report = apply_raw(res, K0, 2, [0.0, [stored_doc([50], PROMPT[32:48], parent=49)]])
    assert report.restarted and report.cleared_blocks == 4
    assert res.state(K0) is DEGRADED and res.missing_from(K0) == 0
    apply_raw(res, K0, 0, [0.0, [stored_doc([48], PROMPT[:16])]], replayed=True)
    apply_raw(res, K0, 1, [0.0, [stored_doc([49], PROMPT[16:32], parent=48)]], replayed=True)
    assert res.state(K0) is EXACT and res.status(K0).restarts == 1
    assert res.overlap(M, PROMPT, [K0]) == {K0: 3}  # the orphan waited for its parent
    assert res.overlap(M, list(range(16)), [K0]) == {K0: 0}  # the old run's blocks are gone


def test_data_parallel_ranks_are_separate_replicas() -> None:
    # Section 1: one PUB socket (and seq counter) per rank; issue 15: one ReplicaKey each.
    res = res16()
    for key in (K0, K1):
        apply_raw(res, key, 0, [0.0, [stored_doc([1], PROMPT[:16])], key.replica])
    apply_raw(res, K1, 1, [0.0, [["BlockRemoved", [1], "GPU"]], 1])
    assert res.overlap(M, PROMPT, [K0, K1]) == {K0: 1, K1: 0}
    restart = apply_raw(res, K1, 0, [0.0, [], 1])
    assert restart.restarted and res.state(K0) is EXACT and res.status(K0).restarts == 0


# ============================================================== laws, from a tiny engine
# A minimal engine as the fact sheet describes one (section 2 "Meaning"): it caches full
# blocks of prompts, stores a child only while its parent is cached, removes one copy per
# eviction of a block it holds, and can clear everything. Its batches are delivered in
# order to one residency and, to another, with a run of sequence numbers lost and fetched
# again through a replay (everything from the first missing seq on, as the replay socket
# answers). Whatever the losses, once every gap is filled the second record must equal the
# first (issue 15: "a replay that closes the gap -> exact").

SIM_BT = 2
SIM_PROMPTS = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7, 8], [1, 2, 9, 9], [5, 6, 3, 4], [1, 2]]


def _engine_hash(prefix: list[int]) -> int:
    # Any deterministic function of the prefix will do; spread over the whole uint64 range.
    return (hash(tuple(prefix)) * 0x9E3779B97F4A7C15) % (1 << 64)


class TinyEngine:
    def __init__(self) -> None:
        self.copies: dict[int, int] = {}  # engine hash -> copies cached

    def store(self, prompt: list[int], start: int, copy: bool) -> dict[str, Any] | None:
        n = len(prompt) // SIM_BT
        hashes = [_engine_hash(prompt[: (i + 1) * SIM_BT]) for i in range(n)]
        start = min(start, n)
        while start and self.copies.get(hashes[start - 1], 0) == 0:
            start -= 1  # the parent is not cached: the request recomputes it
        new = [h for h in hashes[start:] if copy or not self.copies.get(h)]
        if new != hashes[start:] or not new:
            return None  # keep it simple: store a suffix only when all of it is new
        for h in new:
            self.copies[h] = self.copies.get(h, 0) + 1
        return stored_doc(
            new,
            prompt[start * SIM_BT : n * SIM_BT],
            parent=hashes[start - 1] if start else None,
            block_size=SIM_BT,
        )

    def evict(self, pick: int) -> list[Any] | None:
        held = sorted(h for h, k in self.copies.items() if k)
        if not held:
            return None
        h = held[pick % len(held)]
        self.copies[h] -= 1
        return ["BlockRemoved", [h], "GPU"]

    def clear(self) -> list[Any]:
        self.copies = {}
        return ["AllBlocksCleared"]


_ops = st.one_of(
    st.tuples(st.just("store"), st.integers(0, len(SIM_PROMPTS) - 1), st.integers(0, 3),
              st.booleans()),
    st.tuples(st.just("evict"), st.integers(0, 50)),
    st.tuples(st.just("clear")),
)  # fmt: skip


def _engine_batches(plan: list[list[tuple[Any, ...]]]) -> list[Any]:
    """The engine's payloads for ``plan``, then one batch evicting every copy it holds
    (which leaves a record with a wrong refcount holding a phantom block)."""
    engine = TinyEngine()
    out = []
    for ops in plan:
        events: list[Any] = []
        for op in ops:
            if op[0] == "store":
                event = engine.store(SIM_PROMPTS[op[1]], op[2], op[3])
            elif op[0] == "evict":
                event = engine.evict(op[1])
            else:
                event = engine.clear()
            if event is not None:
                events.append(event)
        out.append([float(len(out)), events, 0])
    last = [["BlockRemoved", [h], "GPU"] for h, k in engine.copies.items() for _ in range(k)]
    out.append([float(len(out)), last, 0])
    return out


def _view(res: KvResidency) -> tuple[Any, ...]:
    status = res.status(K0)
    overlaps = tuple(res.overlap(M, p, [K0])[K0] for p in SIM_PROMPTS)
    return status.state, status.blocks, status.canonical_blocks, overlaps


@given(
    st.lists(st.lists(_ops, max_size=4), min_size=1, max_size=10),
    st.data(),
)
def test_a_gap_filled_by_a_replay_ends_exactly_as_in_order_delivery(
    plan: list[list[tuple[Any, ...]]], data: st.DataObject
) -> None:
    docs = _engine_batches(plan)
    in_order = KvResidency(block_tokens=SIM_BT, clock=lambda: 0.0)
    for seq, doc in enumerate(docs):
        apply_raw(in_order, K0, seq, doc)
    assert in_order.state(K0) is EXACT  # a real engine's stream is always consistent
    lo = data.draw(st.integers(0, len(docs) - 1), label="first lost seq")
    hi = data.draw(st.integers(lo, len(docs) - 1), label="last lost seq")
    gapped = KvResidency(block_tokens=SIM_BT, clock=lambda: 0.0)
    for seq, doc in enumerate(docs):
        if not lo <= seq <= hi:
            apply_raw(gapped, K0, seq, doc)
    for seq in range(lo, len(docs)):  # the replay socket answers every seq >= start
        apply_raw(gapped, K0, seq, docs[seq], replayed=True)
    gapped._check()
    assert _view(gapped) == _view(in_order)
    assert gapped.status(K0).blocks == 0  # the last batch evicted everything


@given(st.lists(st.lists(_ops, max_size=4), min_size=1, max_size=10))
def test_a_stream_played_in_order_matches_the_engine_cache(
    plan: list[list[tuple[Any, ...]]],
) -> None:
    # Issue 15: "overlap never exceeds what was stored" and, for an exact record, equals
    # the engine's cache: a prompt's leading full blocks the engine holds.
    engine_batches = _engine_batches(plan)[:-1]  # not the final eviction of everything
    res = KvResidency(block_tokens=SIM_BT, clock=lambda: 0.0)
    for seq, doc in enumerate(engine_batches):
        apply_raw(res, K0, seq, doc)
    res._check()
    replay = TinyEngine()  # rebuild the engine's final cache from its own events
    for _ts, events, _rank in engine_batches:
        for e in events:
            if isinstance(e, dict):
                for h in e["block_hashes"]:
                    replay.copies[h] = replay.copies.get(h, 0) + 1
            elif e[0] == "BlockRemoved":
                replay.copies[e[1][0]] -= 1
            else:
                replay.copies = {}
    for p in SIM_PROMPTS:
        want = 0
        for i in range(len(p) // SIM_BT):
            if not replay.copies.get(_engine_hash(p[: (i + 1) * SIM_BT])):
                break
            want += 1
        assert res.overlap(M, p, [K0]) == {K0: want}
    assert res.status(K0).blocks == sum(1 for k in replay.copies.values() if k)


def _deliver_with_losses(res: KvResidency, docs: list[Any], data: st.DataObject) -> None:
    """The subscriber's pattern: any seqs lost (never the last: a loss at the very end
    shows only with a later message), a replay (every seq from the first missing one up to
    the newest seen, from the engine's buffer) whenever one is drawn, live batches flowing
    meanwhile, and a last replay once the stream ends."""
    lost = data.draw(st.sets(st.integers(0, len(docs) - 2)), label="lost seqs")
    replay_after = data.draw(st.sets(st.integers(0, len(docs) - 1)), label="replays after")

    def replay() -> None:
        start = res.missing_from(K0)
        if start is not None:
            for seq in range(start, res.status(K0).last_seq + 1):  # type: ignore[operator]
                apply_raw(res, K0, seq, docs[seq], replayed=True)

    for seq, doc in enumerate(docs):
        if seq not in lost:
            apply_raw(res, K0, seq, doc)
        if seq in replay_after:
            replay()
    replay()


def _in_order(docs: list[Any]) -> KvResidency:
    res = KvResidency(block_tokens=SIM_BT, clock=lambda: 0.0)
    for seq, doc in enumerate(docs):
        apply_raw(res, K0, seq, doc)
    return res


@given(
    st.lists(st.lists(_ops, max_size=4), min_size=1, max_size=12),
    st.data(),
)
def test_losses_anywhere_and_replays_while_live_batches_flow_end_as_in_order(
    plan: list[list[tuple[Any, ...]]], data: st.DataObject
) -> None:
    docs = _engine_batches(plan)
    res = KvResidency(block_tokens=SIM_BT, clock=lambda: 0.0)
    _deliver_with_losses(res, docs, data)
    res._check()
    assert res.missing_from(K0) is None
    assert _view(res) == _view(_in_order(docs))


@given(
    st.lists(st.lists(_ops, max_size=4), min_size=1, max_size=8),
    st.lists(st.lists(_ops, max_size=4), min_size=1, max_size=8),
    st.data(),
)
def test_a_restart_amid_losses_ends_as_the_new_run_alone(
    before: list[list[tuple[Any, ...]]],
    after: list[list[tuple[Any, ...]]],
    data: st.DataObject,
) -> None:
    # Section 1: a seq lower than the last one seen is a restart, whose cache is new; its
    # own losses are filled from its own replay buffer. The new run's seq 0 is seen live
    # (a restart first seen at a seq above the last one of the old run cannot be told from
    # a gap by the sequence numbers alone; the subscriber's on_disconnect hook is the
    # host's signal then).
    old, new = _engine_batches(before), _engine_batches(after)
    res = KvResidency(block_tokens=SIM_BT, clock=lambda: 0.0)
    _deliver_with_losses(res, old, data)
    apply_raw(res, K0, 0, new[0])
    assert res.status(K0).restarts == 1
    # The new run's last batch arrives; any between may be lost and come from its replay.
    lost = data.draw(st.sets(st.integers(1, max(1, len(new) - 2))), label="lost after restart")
    for seq in range(1, len(new)):
        if seq not in lost or seq == len(new) - 1:
            apply_raw(res, K0, seq, new[seq])
    start = res.missing_from(K0)
    if start is not None:
        for seq in range(start, len(new)):
            apply_raw(res, K0, seq, new[seq], replayed=True)
    res._check()
    assert res.missing_from(K0) is None
    assert _view(res) == _view(_in_order(new))


_ops_without_clears = st.one_of(
    st.tuples(st.just("store"), st.integers(0, len(SIM_PROMPTS) - 1), st.integers(0, 3),
              st.booleans()),
    st.tuples(st.just("evict"), st.integers(0, 50)),
)  # fmt: skip


@given(st.lists(st.lists(_ops_without_clears, max_size=4), min_size=1, max_size=10), st.data())
def test_missing_batches_replayed_in_any_order_end_as_in_order(
    plan: list[list[tuple[Any, ...]]], data: st.DataObject
) -> None:
    # A host that replays only the missing seqs, in any order (stores and evictions; a
    # replayed clear asks for the batches after it again, see the test above).
    docs = _engine_batches(plan)
    lost = sorted(data.draw(st.sets(st.integers(0, len(docs) - 2)), label="lost seqs"))
    res = KvResidency(block_tokens=SIM_BT, clock=lambda: 0.0)
    for seq, doc in enumerate(docs):
        if seq not in lost:
            apply_raw(res, K0, seq, doc)
    for seq in data.draw(st.permutations(lost), label="replay order"):
        apply_raw(res, K0, seq, docs[seq], replayed=True)
    res._check()
    assert _view(res) == _view(_in_order(docs))


# ============================================================ never raises, on any stream
_hashes = st.sampled_from([0, 1, 2, 3, U64_MAX, -1, I64_MIN, b"\x01" * 32, b"\x02" * 16, b"\x03"])
_fields = st.fixed_dictionaries(
    {
        "block_hashes": st.lists(_hashes, max_size=3),
        "parent_block_hash": st.one_of(st.none(), _hashes),
        "token_ids": st.lists(st.integers(0, 3), max_size=9),
        "block_size": st.sampled_from([0, 1, 2, 3, 4]),
        "lora_id": st.sampled_from([None, 1]),
        "medium": st.sampled_from([None, "GPU", "CPU", "FS"]),
        "lora_name": st.sampled_from([None, "a", ""]),
        "extra_keys": st.sampled_from(
            [
                None,
                [],
                [None],
                [[]],
                [["a"]],
                [["a", "s"], None],
                [["s"], ["a"]],
                [[["mm-hash", 3]]],
                ["x"],
                [{"k": 1}],
                [[None]],
            ]
        ),
        "group_idx": st.sampled_from([None, 0, 1]),
    }
)
_positional_order = ["block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                     "medium", "lora_name", "extra_keys", "group_idx"]  # fmt: skip


@st.composite
def _any_event(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["stored", "removed", "cleared"]))
    fields = draw(_fields)
    if draw(st.integers(0, 3)):  # mostly well-formed stores, so that they reach the ledger
        fields["block_hashes"] = list(dict.fromkeys(fields["block_hashes"])) or [5]
        fields["block_size"] = draw(st.sampled_from([2, 4]))
        size = len(fields["block_hashes"]) * fields["block_size"]
        fields["token_ids"] = draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
    if draw(st.booleans()):  # map layout, some keys left out
        if kind == "cleared":
            return {"type": "AllBlocksCleared"}
        keys = _positional_order if kind == "stored" else ["block_hashes", "medium", "group_idx"]
        kept = draw(st.lists(st.sampled_from(keys), unique=True))
        tag = "BlockStored" if kind == "stored" else "BlockRemoved"
        return {"type": tag, **{k: fields[k] for k in kept}}
    if kind == "cleared":
        return ["AllBlocksCleared"]
    if kind == "removed":
        return ["BlockRemoved", fields["block_hashes"], fields["medium"], fields["group_idx"]]
    n = draw(st.integers(1, len(_positional_order)))
    return ["BlockStored", *(fields[k] for k in _positional_order[:n])]


@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.booleans(), st.lists(_any_event(), max_size=4)),
        max_size=8,
    ),
    st.sampled_from(["vllm", "sglang"]),
)
@example(  # a root store with extra_keys=[] once raised IndexError
    stream=[(0, False, [["BlockStored", [5], None, [1, 2], 2, None, "GPU", None, []]])],
    flavour="vllm",
)
@settings(max_examples=scaled_examples(3))
def test_no_stream_of_decodable_payloads_makes_apply_raise(
    stream: list[tuple[int, bool, list[Any]]], flavour: str
) -> None:
    # Issue 15 / STYLE: network input never raises past the decoder; the subscriber's
    # thread calls apply with whatever decoded. Counts add up and the invariants hold.
    res = KvResidency(block_tokens=2, clock=lambda: 0.0, max_deferred=3, max_blocks_per_replica=5)
    for seq, replayed, events in stream:
        batch = decode_payload(enc([0.0, events, 0]), flavour=flavour)  # type: ignore[arg-type]
        assert len(batch.events) + batch.dropped + batch.ignored == len(events)
        res.apply(K0, seq, batch, model=M, replayed=replayed)
        res._check()
    for lora, salt in ((None, None), ("a", None), ("a", "s"), (None, "s")):
        got = res.overlap(M, [0, 1, 2, 3, 0, 1], [K0], lora_name=lora, cache_salt=salt)
        assert 0 <= got[K0] <= res.status(K0).canonical_blocks
