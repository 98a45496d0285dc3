"""prefixcache.kvevents decoding: golden payloads, structs declared here, every edge case.

Expectations are written by hand from the field table of the engines' ``BlockStored``
(tag, block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
extra_keys, group_idx, kv_cache_spec_kind, kv_cache_spec_sliding_window), never produced
by this package's own encoder.
"""

from __future__ import annotations

import msgspec
import pytest
from engine_structs import (
    SgMapBatch,
    SgMapStored,
    SmBatch,
    SmMetadata,
    SmRemoved,
    SmStored,
    SmStoredWithMetadata,
    vllm_events,
)

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache.kvevents import (
    MAX_BATCH_EVENTS,
    MAX_PAYLOAD_BYTES,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KvEventDecodeError,
    decode_message,
    decode_payload,
    encode_payload,
)

GOLDEN_POSITIONAL = bytes.fromhex(
    "93cb3ff8000000000000939cab426c6f636b53746f7265649107c092010202c0a3475055c0c0c0c0"
    "c094ac426c6f636b52656d6f7665649107a3475055c091b0416c6c426c6f636b73436c6561726564"
    "00"
)
GOLDEN_MAP = bytes.fromhex(
    "93cb3ff80000000000009388a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368"
    "65739107b1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f696473920102aa626c6f"
    "636b5f73697a6502a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c083"
    "a474797065ac426c6f636b52656d6f766564ac626c6f636b5f6861736865739107a66d656469756d"
    "a347505581a474797065b0416c6c426c6f636b73436c656172656400"
)

GOLDEN_EVENTS = (
    BlockStored(
        block_hashes=(7,),
        parent_block_hash=None,
        token_ids=(1, 2),
        block_size=2,
        medium="GPU",
        lora_name=None,
        group_idx=None,
        extra_keys=None,
    ),
    BlockRemoved(block_hashes=(7,), medium="GPU", group_idx=None),
    AllBlocksCleared(),
)


# --- structs declared like vLLM's (positional, unset trailing fields omitted) ----------
VBlockStored, VBlockRemoved, VAllBlocksCleared = vllm_events(array_like=True, omit_defaults=True)


class VEventBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[VBlockStored | VBlockRemoved | VAllBlocksCleared]
    data_parallel_rank: int | None


class VOldEventBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[VBlockStored | VBlockRemoved | VAllBlocksCleared]


def _enc(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


# --- golden payloads ------------------------------------------------------------------
def test_golden_positional_decodes_to_the_hand_written_batch() -> None:
    batch = decode_payload(GOLDEN_POSITIONAL)
    assert batch == EventBatch(ts=1.5, rank=0, events=GOLDEN_EVENTS, dropped=0)
    assert batch.ignored == 0


def test_golden_map_decodes_to_the_same_batch() -> None:
    # Counterfactual: a decoder reading only the positional layout drops all three.
    assert decode_payload(GOLDEN_MAP) == EventBatch(ts=1.5, rank=0, events=GOLDEN_EVENTS)


def test_encoder_reproduces_both_golden_payloads_byte_for_byte() -> None:
    batch = EventBatch(ts=1.5, rank=0, events=GOLDEN_EVENTS)
    assert encode_payload(batch) == GOLDEN_POSITIONAL
    assert encode_payload(batch, layout="map") == GOLDEN_MAP


# --- structs declared in this test ----------------------------------------------------
def test_positional_struct_with_every_field_set() -> None:
    payload = _enc(
        VEventBatch(
            ts=12.25,
            events=[
                VBlockStored(
                    block_hashes=[101, 102],
                    parent_block_hash=100,
                    token_ids=[1, 2, 3, 4, 5, 6, 7, 8],
                    block_size=4,
                    lora_id=3,
                    medium="CPU",
                    lora_name="adapter-a",
                    extra_keys=[["adapter-a", "salt-1"], None],
                    group_idx=1,
                    kv_cache_spec_kind="full_attention",
                    kv_cache_spec_sliding_window=None,
                )
            ],
            data_parallel_rank=3,
        )
    )
    assert decode_payload(payload) == EventBatch(
        ts=12.25,
        rank=3,
        events=[
            BlockStored(
                block_hashes=(101, 102),
                parent_block_hash=100,
                token_ids=(1, 2, 3, 4, 5, 6, 7, 8),
                block_size=4,
                medium="CPU",
                lora_name="adapter-a",
                group_idx=1,
                extra_keys=(("adapter-a", "salt-1"), None),
                kv_cache_spec_kind="full_attention",
            )
        ],
    )


def test_positional_store_cut_after_five_fields_is_accepted() -> None:
    # Positional arrays grow with the engine version: the first five items suffice.
    payload = _enc([0.5, [["BlockStored", [9], None, [4, 4], 2]], None])
    (event,) = decode_payload(payload).events
    assert event == BlockStored(block_hashes=(9,), token_ids=(4, 4), block_size=2)


def test_positional_store_shorter_than_five_fields_is_dropped() -> None:
    batch = decode_payload(_enc([0.5, [["BlockStored", [9], None, [4, 4]]], None]))
    assert (batch.events, batch.dropped) == ((), 1)


def test_positional_trailing_extras_beyond_the_table_are_ignored() -> None:
    raw = ["BlockStored", [9], None, [4, 4], 2, None, "GPU", None, None, 0, "x", 7, "new", 1]
    (event,) = decode_payload(_enc([0.5, [raw], 0])).events
    assert event == BlockStored(
        block_hashes=(9,),
        token_ids=(4, 4),
        block_size=2,
        medium="GPU",
        group_idx=0,
        kv_cache_spec_kind="x",
    )


def test_map_layout_key_order_and_unknown_keys_do_not_matter() -> None:
    raw = {
        "locality": "rack-2",
        "token_ids": [5, 6],
        "medium": "GPU",
        "future_field": {"a": 1},
        "block_size": 2,
        "type": "BlockStored",
        "parent_block_hash": 4,
        "block_hashes": [8],
    }
    (event,) = decode_payload(_enc([2.0, [raw], 1])).events
    assert event == BlockStored(
        block_hashes=(8,), parent_block_hash=4, token_ids=(5, 6), block_size=2, medium="GPU"
    )


def test_map_store_without_a_required_field_is_dropped() -> None:
    raw = {"type": "BlockStored", "block_hashes": [8], "block_size": 2}  # no token_ids
    batch = decode_payload(_enc([2.0, [raw], 1]))
    assert (batch.events, batch.dropped) == ((), 1)


def test_removed_with_group_in_both_layouts() -> None:
    payload = _enc(
        [
            1.0,
            [
                ["BlockRemoved", [1, 2], "CPU", 1, "extra-locality"],
                {"type": "BlockRemoved", "block_hashes": [3], "medium": None, "group_idx": 2},
            ],
            None,
        ]
    )
    assert decode_payload(payload).events == (
        BlockRemoved(block_hashes=(1, 2), medium="CPU", group_idx=1),
        BlockRemoved(block_hashes=(3,), medium=None, group_idx=2),
    )


# --- fact-sheet edge cases ------------------------------------------------------------
def test_hash_all_ones_is_the_unsigned_max() -> None:
    payload = _enc([0.0, [["BlockRemoved", [0xFFFFFFFFFFFFFFFF], "GPU"]], 0])
    assert b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff" in payload  # msgpack uint64
    (event,) = decode_payload(payload).events
    assert event.block_hashes == (18446744073709551615,)


DIGEST32 = bytes(range(32))  # 00 01 02 ... 1f
DIGEST16 = bytes(range(0xF0, 0x100))  # f0 f1 ... ff


def test_bytes_hashes_vllm_take_the_last_eight_bytes_unsigned() -> None:
    payload = _enc(VEventBatch(ts=0.0, events=[VBlockRemoved([DIGEST32, DIGEST16], "GPU")],
                               data_parallel_rank=0))  # fmt: skip
    (event,) = decode_payload(payload, flavour="vllm").events
    assert event.block_hashes == (0x18191A1B1C1D1E1F, 0xF8F9FAFBFCFDFEFF)


def test_bytes_hashes_sglang_take_the_first_eight_bytes_signed() -> None:
    payload = _enc(VEventBatch(ts=0.0, events=[VBlockRemoved([DIGEST32, DIGEST16], "GPU")],
                               data_parallel_rank=0))  # fmt: skip
    (event,) = decode_payload(payload, flavour="sglang").events
    # f0f1f2f3f4f5f6f7 read as a signed int64 is negative.
    assert event.block_hashes == (0x0001020304050607, 0xF0F1F2F3F4F5F6F7 - (1 << 64))


def test_bytes_parent_follows_the_flavour_too() -> None:
    raw = ["BlockStored", [DIGEST16], DIGEST32, [1], 1]
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert event.parent_block_hash == 0x18191A1B1C1D1E1F


def test_sglang_signed_int_hashes_are_kept() -> None:
    (event,) = decode_payload(
        _enc([0.0, [["BlockRemoved", [-5], None]], 0]), flavour="sglang"
    ).events
    assert event.block_hashes == (-5,)


def test_two_element_envelope_has_no_rank() -> None:
    payload = _enc(VOldEventBatch(ts=3.0, events=[VAllBlocksCleared()]))
    assert payload[0] == 0x92
    assert decode_payload(payload) == EventBatch(ts=3.0, rank=None, events=[AllBlocksCleared()])


def test_map_envelope_is_accepted() -> None:
    payload = _enc({"ts": 4.0, "events": [["AllBlocksCleared"]], "data_parallel_rank": 2})
    assert decode_payload(payload) == EventBatch(ts=4.0, rank=2, events=[AllBlocksCleared()])


def test_integer_ts_is_seconds() -> None:
    assert decode_payload(_enc([7, [], None])).ts == 7.0


def test_unknown_tags_are_ignored_not_dropped() -> None:
    payload = _enc(
        [0.0, [["KVCacheTransferred", 1, 2], {"type": "SomethingNew"}, ["AllBlocksCleared"]], 0]
    )
    batch = decode_payload(payload)
    assert batch.events == (AllBlocksCleared(),)
    assert (batch.dropped, batch.ignored) == (0, 2)


def test_tokens_not_a_multiple_of_block_size_still_decode() -> None:
    # The decoder reports what the engine said; KvResidency drops such a store and counts it.
    raw = ["BlockStored", [1, 2], None, [1, 2, 3], 2, None, "GPU", None, None, None]
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert (event.token_ids, event.block_size, len(event.block_hashes)) == ((1, 2, 3), 2, 2)


def test_mixed_layouts_in_one_batch_keep_their_order() -> None:
    payload = _enc(
        [
            9.0,
            [
                {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
                 "token_ids": [1, 2], "block_size": 2, "lora_id": None, "medium": "GPU",
                 "lora_name": None},
                ["BlockStored", [2], 1, [3, 4], 2, None, "GPU", None, None, None, None, None],
                {"type": "BlockRemoved", "block_hashes": [2], "medium": "GPU"},
                ["BlockRemoved", [1], "GPU", None],
                ["AllBlocksCleared"],
            ],
            0,
        ]
    )  # fmt: skip
    assert decode_payload(payload).events == (
        BlockStored(block_hashes=(1,), token_ids=(1, 2), block_size=2, medium="GPU"),
        BlockStored(
            block_hashes=(2,), parent_block_hash=1, token_ids=(3, 4), block_size=2, medium="GPU"
        ),
        BlockRemoved(block_hashes=(2,), medium="GPU"),
        BlockRemoved(block_hashes=(1,), medium="GPU"),
        AllBlocksCleared(),
    )


@pytest.mark.parametrize(
    "bad",
    [
        ["BlockStored", "not-a-list", None, [1], 1],
        ["BlockStored", [1.5], None, [1], 1],
        ["BlockStored", [1], 2.5, [1], 1],
        ["BlockStored", [b""], None, [1], 1],
        ["BlockStored", [1], "parent", [1], 1],
        ["BlockStored", [1], True, [1], 1],  # a msgpack bool is not a hash
        {
            "type": "BlockStored",
            "block_hashes": [1],
            "parent_block_hash": False,
            "token_ids": [1],
            "block_size": 1,
        },
        ["BlockStored", [1], None, [-1], 1],
        ["BlockStored", [1], None, [1 << 32], 1],
        ["BlockStored", [1], None, ["x"], 1],
        ["BlockStored", [1], None, [1], -2],
        ["BlockStored", [1], None, [1], True],
        ["BlockStored", [1], None, [1], 1, None, 5],  # medium not a str
        ["BlockStored", [1], None, [1], 1, None, "GPU", 7],  # lora_name not a str
        ["BlockStored", [1], None, [1], 1, None, "GPU", None, "not-a-list"],
        ["BlockStored", [1], None, [1], 1, None, "GPU", None, None, -1],
        ["BlockRemoved"],
        ["BlockRemoved", None],
        [],
        [17],
        "BlockStored",
        42,
        {"type": 5},
    ],
)
def test_one_bad_event_is_dropped_and_counted_never_fatal(bad: object) -> None:
    payload = _enc([0.0, [bad, ["AllBlocksCleared"]], 0])
    batch = decode_payload(payload)
    assert batch.events == (AllBlocksCleared(),)
    assert batch.dropped == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "payload"),
        (b"\xc1", "payload"),  # never-used msgpack byte
        (GOLDEN_POSITIONAL[:-5], "payload"),  # truncated
        (GOLDEN_POSITIONAL + b"\x00", "payload"),  # trailing bytes
        (_enc(5), "envelope"),
        (_enc("hello"), "envelope"),
        (_enc([1.0]), "envelope"),
        (_enc([]), "envelope"),
        (_enc({"ts": 1.0}), "envelope"),
        (_enc(["x", []]), "ts"),
        (_enc([float("nan"), []]), "ts"),
        (_enc([True, []]), "ts"),
        (_enc([1.0, {"a": 1}]), "events"),
        (_enc([1.0, [], "r0"]), "data_parallel_rank"),
        (_enc([1.0, [], -1]), "data_parallel_rank"),
    ],
)
def test_a_payload_that_is_not_an_envelope_raises(payload: bytes, field: str) -> None:
    with pytest.raises(KvEventDecodeError) as info:
        decode_payload(payload)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ClusterRoutingError)


def test_payload_over_the_cap_raises_without_decoding() -> None:
    with pytest.raises(KvEventDecodeError, match="cap"):
        decode_payload(b"\x00" * (MAX_PAYLOAD_BYTES + 1))


def test_events_over_the_batch_cap_are_dropped_and_counted() -> None:
    payload = _enc([0.0, [["AllBlocksCleared"]] * (MAX_BATCH_EVENTS + 3), 0])
    batch = decode_payload(payload)
    assert (len(batch.events), batch.dropped) == (MAX_BATCH_EVENTS, 3)


def test_misuse_raises_invalid_record_error() -> None:
    with pytest.raises(InvalidRecordError, match="flavour"):
        decode_payload(GOLDEN_MAP, flavour="trtllm")  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="payload"):
        decode_payload("93")  # type: ignore[arg-type]


# --- messages -------------------------------------------------------------------------
def test_decode_message_reads_topic_seq_and_payload() -> None:
    seq = (2**63 + 5).to_bytes(8, "big")
    topic, n, batch = decode_message([b"kv@pod-3@llama", seq, GOLDEN_MAP])
    assert (topic, n) == ("kv@pod-3@llama", 2**63 + 5)
    assert batch.events == GOLDEN_EVENTS


def test_decode_message_accepts_memoryview_frames_and_empty_topic() -> None:
    topic, n, _ = decode_message(
        [memoryview(b""), bytearray((0).to_bytes(8, "big")), GOLDEN_POSITIONAL]
    )
    assert (topic, n) == ("", 0)


@pytest.mark.parametrize(
    ("frames", "field"),
    [
        ([b"", (0).to_bytes(8, "big")], "frames"),
        ([b"", (0).to_bytes(8, "big"), GOLDEN_MAP, b""], "frames"),
        ([b"\xff", (0).to_bytes(8, "big"), GOLDEN_MAP], "topic"),
        ([b"", b"\x00" * 4, GOLDEN_MAP], "seq"),
        ([b"", (0).to_bytes(8, "big"), b"\xc1"], "payload"),
        ([b"", 5, GOLDEN_MAP], "seq"),
        (b"abc", "frames"),
    ],
)
def test_decode_message_rejects_bad_frames(frames: object, field: str) -> None:
    with pytest.raises(KvEventDecodeError) as info:
        decode_message(frames)  # type: ignore[arg-type]
    assert info.value.field == field


# --- records --------------------------------------------------------------------------
def test_records_are_frozen_and_validate() -> None:
    stored = GOLDEN_EVENTS[0]
    with pytest.raises(AttributeError):
        stored.block_size = 4  # type: ignore[misc]
    with pytest.raises(InvalidRecordError, match="token_ids"):
        BlockStored(block_hashes=[1], token_ids=[-1], block_size=1)
    with pytest.raises(InvalidRecordError, match="ts"):
        EventBatch(ts=float("inf"), events=[])
    with pytest.raises(InvalidRecordError, match="events"):
        EventBatch(ts=0.0, events=["BlockStored"])  # type: ignore[list-item]


def test_token_bytes_are_little_endian_uint32() -> None:
    stored = BlockStored(block_hashes=[1], token_ids=[1, 258], block_size=2)
    assert stored.token_bytes == b"\x01\x00\x00\x00\x02\x01\x00\x00"


def test_ignored_is_diagnostic_and_not_part_of_equality() -> None:
    assert EventBatch(ts=0.0, events=[], ignored=2) == EventBatch(ts=0.0, events=[])


def test_deeply_nested_extra_keys_drop_the_event_not_the_decoder() -> None:
    nested: object = "salt"
    for _ in range(600):  # past Python's recursion limit for a recursive converter
        nested = [nested]
    raw = ["BlockStored", [1], None, [1], 1, None, "GPU", None, [nested], None]
    batch = decode_payload(_enc([0.0, [raw, ["AllBlocksCleared"]], 0]))
    assert (batch.events, batch.dropped) == ((AllBlocksCleared(),), 1)


def test_map_valued_extra_keys_are_frozen_to_pairs() -> None:
    raw = ["BlockStored", [1], None, [1], 1, None, "GPU", None, [{"mm": "h1"}], None]
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert event.extra_keys == ((("mm", "h1"),),)
    assert hash(event) == hash(event)  # hashable all the way down


# --- SGLang's own structs: medium, the salted store's metadata map, tagged maps ----------
def _sglang_salted(parent: int | None) -> SmStoredWithMetadata:
    return SmStoredWithMetadata(
        block_hashes=[-5, 6],
        parent_block_hash=parent,
        token_ids=[1, 2, 3, 4],
        block_size=2,
        lora_id=None,
        medium="GPU",
        metadata=SmMetadata(cache_salt="tenant-9", session_id="s1"),
    )


def test_sglang_positional_store_with_medium_decodes() -> None:
    ev = SmStored(
        block_hashes=[-5],
        parent_block_hash=None,
        token_ids=[1, 2],
        block_size=2,
        lora_id=None,
        medium="CPU_PINNED",
    )
    payload = msgspec.msgpack.encode(SmBatch(ts=1.0, events=[ev, SmRemoved([-5], "GPU")]))
    assert decode_payload(payload, flavour="sglang").events == (
        BlockStored(block_hashes=(-5,), token_ids=(1, 2), block_size=2, medium="CPU_PINNED"),
        BlockRemoved(block_hashes=(-5,), medium="GPU"),
    )


def test_sglang_metadata_map_in_lora_names_place_is_the_root_blocks_salt() -> None:
    # [tag, hashes, parent, tokens, size, lora_id, medium, {"cache_salt", "session_id"}]:
    # the map is not an adapter name; its salt is the first block's key, as vLLM sends it.
    payload = msgspec.msgpack.encode(SmBatch(ts=1.0, events=[_sglang_salted(None)]))
    batch = decode_payload(payload, flavour="sglang")
    assert batch.dropped == 0
    assert batch.events == (
        BlockStored(
            block_hashes=(-5, 6),
            token_ids=(1, 2, 3, 4),
            block_size=2,
            medium="GPU",
            extra_keys=[["tenant-9"], None],
        ),
    )


def test_sglang_salt_on_a_child_store_is_its_parents_and_not_repeated() -> None:
    payload = msgspec.msgpack.encode(SmBatch(ts=1.0, events=[_sglang_salted(7)]))
    (event,) = decode_payload(payload, flavour="sglang").events
    assert (event.parent_block_hash, event.extra_keys, event.lora_name) == (7, None, None)


def test_sglang_tagged_map_store_with_cache_salt_and_session() -> None:
    salted = SgMapStored(
        block_hashes=[3],
        parent_block_hash=None,
        token_ids=[1, 2],
        block_size=2,
        lora_id=None,
        medium="GPU",
        cache_salt="t",
        session_id="s",
    )
    plain = SgMapStored(
        block_hashes=[4],
        parent_block_hash=3,
        token_ids=[5, 6],
        block_size=2,
        lora_id=None,
        medium="GPU",
        cache_salt="t",
    )
    payload = msgspec.msgpack.encode(SgMapBatch(ts=1.0, events=[salted, plain], attn_dp_rank=0))
    assert decode_payload(payload, flavour="sglang").events == (
        BlockStored(
            block_hashes=(3,), token_ids=(1, 2), block_size=2, medium="GPU", extra_keys=[["t"]]
        ),
        BlockStored(
            block_hashes=(4,), parent_block_hash=3, token_ids=(5, 6), block_size=2, medium="GPU"
        ),
    )


_ROOT_STORE = {
    "type": "BlockStored",
    "block_hashes": [1, 2],
    "parent_block_hash": None,
    "token_ids": [1, 2],
    "block_size": 1,
}


@pytest.mark.parametrize(
    ("engine_keys", "expected"),
    [
        # An engine sending both (SGLang's proposal to align with vLLM keeps cache_salt).
        ([["t"], ["img"]], (("t",), ("img",))),
        ([["lora", "t"], None], (("lora", "t"), None)),
        # Keys without the salt: it joins the first block's keys, after them (vLLM's order).
        ([None, ["img"]], (("t",), ("img",))),
        ([["img0"], None], (("img0", "t"), None)),
        ([], (("t",), None)),
    ],
)
def test_a_cache_salt_joins_the_engines_own_extra_keys_once(
    engine_keys: list[object], expected: tuple[object, ...]
) -> None:
    raw = {**_ROOT_STORE, "cache_salt": "t", "extra_keys": engine_keys}
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert event.extra_keys == expected


def test_a_salted_store_without_blocks_is_not_malformed() -> None:
    # The residency drops it as it drops the same store unsalted (nothing was lost).
    raw = {**_ROOT_STORE, "block_hashes": [], "token_ids": [], "cache_salt": "t"}
    batch = decode_payload(_enc([0.0, [raw], 0]))
    assert batch.dropped == 0
    assert batch.events[0].extra_keys is None


def test_a_metadata_map_without_a_salt_adds_no_key() -> None:
    raw = ["BlockStored", [1], None, [1], 1, None, "GPU", {"session_id": "chat-7"}]
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert (event.extra_keys, event.lora_name) == (None, None)


_MAP_STORE = {
    "type": "BlockStored",
    "block_hashes": [1],
    "parent_block_hash": None,
    "token_ids": [1],
    "block_size": 1,
}


@pytest.mark.parametrize(
    "raw",
    [
        ["BlockStored", [1], None, [1], 1, None, "GPU", {"cache_salt": 5}],
        {**_MAP_STORE, "cache_salt": 5},
        {**_MAP_STORE, "block_hashes": 7, "cache_salt": "t"},
    ],
    ids=["metadata-map", "map-key", "hashes-not-a-list"],
)
def test_a_salt_that_is_not_a_str_drops_the_event(raw: object) -> None:
    batch = decode_payload(_enc([0.0, [raw, ["AllBlocksCleared"]], 0]))
    assert (batch.events, batch.dropped) == ((AllBlocksCleared(),), 1)


def test_an_empty_sglang_salt_is_no_salt() -> None:
    raw = ["BlockStored", [1], None, [1], 1, None, "GPU", {"cache_salt": ""}]
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert (event.extra_keys, event.lora_name) == (None, None)


def test_sglang_eagle_bigram_pages_keep_each_positions_token() -> None:
    # SGLang with EAGLE keys its radix tree by (token, next token) pairs and publishes them
    # as such (mem_cache/events.py, "bigram pages expose tuples"): [[1, 2], [2, 3]].
    pairs = [[1, 2], [2, 3], [3, 4], [4, 9]]
    positional = ["BlockStored", [5, 6], None, pairs, 2, None, "GPU"]
    mapped = {**_MAP_STORE, "block_hashes": [5, 6], "token_ids": pairs, "block_size": 2}
    for raw in (positional, mapped):
        (event,) = decode_payload(_enc([0.0, [raw], 0]), flavour="sglang").events
        assert event.token_ids == (1, 2, 3, 4)


@pytest.mark.parametrize(
    "tokens", [[[1, 2], 3], [[1, 2], [3]], [[1, 2], [3, 4, 5]], [[[1], 2], [3, 4]]]
)
def test_malformed_bigram_pages_drop_the_event(tokens: list[object]) -> None:
    raw = ["BlockStored", [5], None, tokens, 2, None, "GPU"]
    batch = decode_payload(_enc([0.0, [raw, ["AllBlocksCleared"]], 0]))
    assert (batch.events, batch.dropped) == ((AllBlocksCleared(),), 1)


def test_concatenated_sub_block_digests_take_the_last_eight_bytes() -> None:
    # A hybrid block of 3 hash blocks, as a vLLM with int hashes off once sent it: the three
    # SHA-256 digests end to end; the last 8 bytes are the last sub-block's (review 59).
    digest = bytes(range(32)) * 2 + bytes(range(100, 132))
    raw = ["BlockStored", [digest], None, [1], 1]
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert event.block_hashes == (int.from_bytes(bytes(range(124, 132)), "big"),)
    huge = ["BlockStored", [bytes(4097)], None, [1], 1]
    assert decode_payload(_enc([0.0, [huge], 0])).dropped == 1


@pytest.mark.parametrize("layout", ["positional", "map"])
def test_the_kv_cache_spec_kind_survives_encoding_in_both_layouts(layout: str) -> None:
    event = BlockStored(block_hashes=[1], token_ids=[1, 2], block_size=2, group_idx=1,
                        kv_cache_spec_kind="sliding_window")  # fmt: skip
    batch = EventBatch(ts=1.0, rank=0, events=[event])
    assert decode_payload(encode_payload(batch, layout=layout)) == batch  # type: ignore[arg-type]


def test_a_kv_cache_spec_kind_that_is_not_a_str_is_refused() -> None:
    with pytest.raises(InvalidRecordError, match="kv_cache_spec_kind"):
        BlockStored(block_hashes=[1], token_ids=[1], block_size=1, kv_cache_spec_kind=1)  # type: ignore[arg-type]


def test_a_digest_of_exactly_the_cap_is_read() -> None:
    raw = ["BlockStored", [bytes(4088) + (7).to_bytes(8, "big")], None, [1], 1]
    (event,) = decode_payload(_enc([0.0, [raw], 0])).events
    assert event.block_hashes == (7,)
