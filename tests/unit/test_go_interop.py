"""One test per interoperability case with the Go routers (each reproducer answered as Go does,
or as documented where Go is wrong), plus the decoder error types of network input."""

from __future__ import annotations

import json
import math

import pytest

from clusterrouting import NodeData, NodeDataDecodeError
from clusterrouting._gojson import GoJSONError, fold_key, loads
from prefixcache import (
    Candidate,
    Config,
    EventDecodeError,
    InvalidateEvent,
    ObserveEvent,
    PrefixDecision,
    ReplicaKey,
    Snapshot,
    SnapshotDecodeError,
    decode_event,
    extract_chain,
    messages_prefix_source,
    messages_prefix_source_from_body,
    select,
    validate_thresholds,
)


# -- case 1: an infinite relative threshold is no relative cap --------------------------------
def test_case1_infinite_relative_threshold_selects_least_loaded() -> None:
    # Counterfactual: 0 * inf is NaN, nobody passed the guard and min() of nothing raised;
    # Go returns no replica here. Documented answer: the least loaded replica.
    config = Config(balance_abs_threshold=0, balance_rel_threshold=float("inf"))
    b = ReplicaKey("b")
    assert select([Candidate(b, 0)], PrefixDecision(None, 0.0, ()), config) == b


def test_case1_infinite_threshold_keeps_the_absolute_slack() -> None:
    config = Config(balance_abs_threshold=1, balance_rel_threshold=float("inf"))
    a, b = ReplicaKey("a"), ReplicaKey("b")
    hot_a = PrefixDecision(a, 1.0, (b, a))
    # a at 2 exceeds 0 + slack 1: not eligible; the cold order then names b.
    assert select([Candidate(a, 2), Candidate(b, 0)], hot_a, config) == b
    assert select([Candidate(a, 1), Candidate(b, 0)], hot_a, config) == a


@pytest.mark.parametrize("field", ["balance_rel_threshold", "min_prefix_match"])
def test_nan_thresholds_are_rejected_where_go_lets_them_through(field: str) -> None:
    # Go's ValidateThresholds compares with < and >, which NaN never satisfies.
    args = {
        "route_policy": "",
        "balance_abs_threshold": 0,
        "balance_rel_threshold": 0.0,
        "min_prefix_match": 0.5,
        field: math.nan,
    }
    with pytest.raises(ValueError, match="NaN"):
        validate_thresholds(**args)  # type: ignore[arg-type]


# -- case 2: a lone surrogate in a gossip record --------------------------------------------
def test_case2_lone_surrogate_in_models_decodes_to_replacement_and_reencodes() -> None:
    n = NodeData.from_json(b'{"Models":["x","\\ud800"]}')
    assert n.models == ("x", "\ufffd")
    # Counterfactual: the surrogate was kept and to_json().encode() raised.
    assert NodeData.from_json(n.to_json().encode()) == n


# -- cases 3-5: chat messages --------------------------------------------------------------
def test_case3_keys_match_case_insensitively_in_messages_and_parts() -> None:
    assert messages_prefix_source([{"Role": "o"}]) == "o\n\n"
    assert messages_prefix_source_from_body(b'{"messages":[{"Role":"o"}]}') == "o\n\n"
    parts = [{"TYPE": "text", "Text": "hi"}]
    assert messages_prefix_source([{"role": "u", "CONTENT": parts}]) == "u\nhi\n"


def test_case3_text_and_Text_in_one_part_keeps_text() -> None:
    # Go re-encodes a part with sorted keys ("Text" < "text"), so "text" is applied last.
    for part in ('{"type":"text","text":"a","Text":"b"}', '{"type":"text","Text":"b","text":"a"}'):
        body = b'{"messages":[{"content":[%s]}]}' % part.encode()
        assert messages_prefix_source_from_body(body) == "\na\n"
        assert messages_prefix_source([{"content": [json.loads(part)]}]) == "\na\n"


def test_case4_later_null_does_not_overwrite_role() -> None:
    assert messages_prefix_source_from_body(b'{"messages":[{"role":"x","role":null}]}') == "x\n\n"
    # A later null content does clear the content (Go's interface field).
    body = b'{"messages":[{"role":"x","content":"a","content":null}]}'
    assert messages_prefix_source_from_body(body) == "x\n\n"
    assert messages_prefix_source([{"role": "x", "Role": None}]) == "x\n\n"


def test_case4_second_messages_array_merges_into_the_first() -> None:
    body = b'{"messages":[{"role":"a","content":"x"}],"messages":[{"content":"y"}]}'
    assert messages_prefix_source_from_body(body) == "a\ny\n"


def test_case4_body_go_rejects_gives_none() -> None:
    for body in (
        b'{"messages":[{"role":5}]}',
        b'{"messages":["hi"]}',
        b'{"messages":{}}',
        b'{"messages":[{"content":[1e400]}]}',
        b'\xef\xbb\xbf{"messages":[]}',
        b"[" * 5000,
    ):
        assert messages_prefix_source_from_body(body) is None, body
    # Bytes after the first value are ignored, as json.Decoder.Decode does.
    assert messages_prefix_source_from_body(b'{"messages":[{"role":"u"}]} x') == "u\n\n"


def test_case5_lone_surrogate_in_content_hashes_as_replacement() -> None:
    expected = "\na\ufffdb\n"
    assert messages_prefix_source([{"content": "a\ud800b"}]) == expected
    assert messages_prefix_source_from_body(b'{"messages":[{"content":"a\\ud800b"}]}') == expected
    # Counterfactual: the chain hashed the bytes ED A0 80.
    chain = extract_chain("m", messages_prefix_source([{"content": "a\ud800b"}]))
    assert chain == extract_chain("m", expected.encode())


# -- cases 7-11: gossip records ------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "2026-01-01T00:00:00,5Z",  # Go's fallback parser takes a comma fraction
        "2026-01-01T00:00:00+24:00",  # and offsets of 24 hours
        "2026-01-01T00:00:00+23:60",  # or 60 minutes
        "2026-01-01T1:00:00Z",  # and one-digit hours
        "0000-01-01T00:00:00Z",  # Go: year 0; here outside years 1..9999 UTC
        "9999-12-31T23:59:59-01:00",  # Go: year 10000 in UTC
    ],
)
def test_last_seen_forms_go_accepts_are_rejected_as_documented(text: str) -> None:
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json(json.dumps({"LastSeen": text}))
    assert info.value.field == "LastSeen"


@pytest.mark.parametrize("literal", ["1.0", "1e3", "-0", "0.0"])
def test_case7_uint64_rejects_non_integer_literals(literal: str) -> None:
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json('{"AvailableVRAM": ' + literal + "}")
    assert info.value.field == "AvailableVRAM"


def test_case8_keys_fold_with_unicode_simple_folding() -> None:
    assert NodeData.from_json('{"\\u017ferviceID": "x"}').service_id == "x"  # long s -> S
    assert NodeData.from_json('{"TUNNELADDRESS": "t"}').tunnel_address == "t"
    # Dotless i and dotted I fold only to themselves in simple folding: no match.
    assert NodeData.from_json('{"\\u0131d": "y"}').id == ""
    assert fold_key("\u212a") == "K"


def test_case9_duplicate_key_type_error_is_rejected_even_if_a_null_follows() -> None:
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json('{"TunnelAddress": true, "TunnelAddress": null}')
    assert info.value.field == "TunnelAddress"


def test_case10_last_seen_takes_ascii_digits_only() -> None:
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json('{"LastSeen": "２０２６-01-01T00:00:00Z"}')
    assert info.value.field == "LastSeen"


def test_case11_byte_order_mark_is_rejected() -> None:
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json(b"\xef\xbb\xbf{}")
    assert info.value.field == "<document>"


# -- cases 12-13: events -------------------------------------------------------------------
def test_case12_later_null_does_not_overwrite_node_id() -> None:
    event = decode_event("prefixcache.invalidate", b'{"node_id":"n1","node_id":null}')
    assert isinstance(event, InvalidateEvent) and event.node_id == "n1"


def test_case13_negative_zero_hash_is_rejected() -> None:
    payload = b'{"chain": [-0], "node_id": "n1", "model": "m", "replica": 0}'
    with pytest.raises(EventDecodeError) as info:
        decode_event("prefixcache.observe", payload)
    assert info.value.field == "chain"
    # -0 is fine for Go's int replica.
    ok = decode_event("prefixcache.observe", b'{"chain":[0],"node_id":"n","replica":-0}')
    assert ok == ObserveEvent(model="", chain=(0,), node_id="n", replica=0)


def test_events_text_rule_replaces_invalid_bytes_and_lone_surrogates() -> None:
    event = decode_event("prefixcache.observe", b'{"chain":[1],"node_id":"\\udc00","model":"\xff"}')
    assert (event.model, event.node_id) == ("\ufffd", "\ufffd")


def test_invalidate_ignores_its_chain_key_like_go() -> None:
    # Go's invalidate event has no chain field: any value there is skipped.
    event = decode_event("prefixcache.invalidate", b'{"chain":"x","node_id":"n"}')
    assert event == InvalidateEvent(model="", node_id="n", replica=0)


# -- issue 14, item 6: snapshots follow the same text rule ----------------------------------
def test_snapshot_names_decode_lone_surrogates_to_replacement() -> None:
    payload = b'{"version":1,"models":["a\\ud800"],"entries":[[0,[1],"n\\udfff",0,1]]}'
    snap = Snapshot.decode(payload)
    assert snap.models == ("a\ufffd",)
    assert snap.entries[0].owner == ReplicaKey("n\ufffd", 0)
    # Counterfactual: the surrogate was kept and every later encode() raised.
    assert Snapshot.decode(snap.encode()) == snap


# -- issue 14, item 8: decoder errors keep their documented types ---------------------------
def test_nodedata_deep_nesting_raises_its_typed_error() -> None:
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json("[" * 5000)
    assert info.value.field == "<document>"


def test_nodedata_accepts_nesting_up_to_go_limit_in_unknown_keys() -> None:
    deep = '{"u":' + "[" * 9999 + "]" * 9999 + ',"ID":"a"}'
    assert NodeData.from_json(deep).id == "a"
    with pytest.raises(NodeDataDecodeError):
        NodeData.from_json('{"u":' + "[" * 10000 + "]" * 10000 + "}")


@pytest.mark.parametrize("payload", ["{}", None, 5, 1.5, ["x"]])
def test_snapshot_decode_of_non_bytes_raises_its_typed_error(payload: object) -> None:
    with pytest.raises(SnapshotDecodeError) as info:
        Snapshot.decode(payload)  # type: ignore[arg-type]
    assert info.value.field == "<payload>"


def test_snapshot_deep_nesting_raises_its_typed_error() -> None:
    with pytest.raises(SnapshotDecodeError):
        Snapshot.decode(b"[" * 20000)


def test_loads_error_is_typed_for_every_kind_of_bad_document() -> None:
    for doc in (b"", b"{", b"NaN", b'{"a":1,}', b"01", b'"\x01"', b"[" * 10001 + b"]" * 10001):
        with pytest.raises(GoJSONError):
            loads(doc)
    assert loads(b"[" * 10000 + b"]" * 10000) is not None
