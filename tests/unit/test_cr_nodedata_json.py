"""NodeData JSON: Go field names, RFC 3339 with nanoseconds, lenient decoding."""

from __future__ import annotations

import json

import pytest

from clusterrouting import NodeData, NodeDataDecodeError

T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def test_encodes_go_field_names_and_values() -> None:
    n = NodeData(
        name="n",
        id="i",
        tunnel_address="t",
        service_id="s",
        last_seen=T0 + 0.5,
        available_vram=2**40,
        models=("a", "b"),
    )
    doc = json.loads(n.to_json())
    assert doc == {
        "Name": "n",
        "ID": "i",
        "TunnelAddress": "t",
        "ServiceID": "s",
        "LastSeen": "2026-01-01T00:00:00.5Z",
        "AvailableVRAM": 2**40,
        "Models": ["a", "b"],
    }


def test_none_last_seen_encodes_as_go_zero_time_and_back() -> None:
    n = NodeData(id="x")
    assert json.loads(n.to_json())["LastSeen"] == "0001-01-01T00:00:00Z"
    assert NodeData.from_json(n.to_json()) == n


def test_whole_second_has_no_fraction() -> None:
    assert json.loads(NodeData(last_seen=T0).to_json())["LastSeen"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T00:00:00.123456789Z", T0 + 0.123456789),
        ("2026-01-01T02:00:00+02:00", T0),
        ("2025-12-31T19:30:00.25-04:30", T0 + 0.25),
        ("2026-01-01T00:00:00.1234567891234Z", T0 + 0.123456789),  # truncated to ns
    ],
)
def test_decodes_rfc3339_with_nanoseconds_and_offsets(text: str, expected: float) -> None:
    n = NodeData.from_json(json.dumps({"ID": "a", "LastSeen": text}))
    assert n.last_seen == expected


def test_keys_match_case_insensitively() -> None:
    n = NodeData.from_json(
        '{"name":"n","id":"i","tunneladdress":"t","SERVICEID":"s","lastSeen":'
        '"2026-01-01T00:00:00Z","availableVram":7,"models":["m"]}'
    )
    assert n == NodeData(
        name="n",
        id="i",
        tunnel_address="t",
        service_id="s",
        last_seen=T0,
        available_vram=7,
        models=("m",),
    )


def test_missing_keys_take_defaults_old_peer() -> None:
    n = NodeData.from_json('{"ID": "old", "LastSeen": "2026-01-01T00:00:00Z"}')
    assert n.available_vram == 0 and n.models == () and n.name == ""
    assert NodeData.from_json("{}") == NodeData()


def test_nulls_are_accepted() -> None:
    n = NodeData.from_json('{"ID": "a", "Models": null, "LastSeen": null, "Name": null}')
    assert n == NodeData(id="a")


def test_go_zero_time_decodes_to_none() -> None:
    assert NodeData.from_json('{"LastSeen": "0001-01-01T00:00:00Z"}').last_seen is None
    # The same instant written with an offset is still the zero time.
    assert NodeData.from_json('{"LastSeen": "0001-01-01T01:00:00+01:00"}').last_seen is None


def test_unknown_keys_are_ignored_and_bytes_accepted() -> None:
    assert NodeData.from_json(b'{"ID": "a", "Extra": [1, 2]}') == NodeData(id="a")


@pytest.mark.parametrize("literal", ["1.0", "1e3", "-0", "0.0", "1E2", "0e0"])
def test_vram_takes_only_plain_integer_literals_as_go_uint64(literal: str) -> None:
    # Go's uint64 parses the literal's digits: a whole float or -0 is a type error there, so
    # accepting it would let in a record every Go router rejects.
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json('{"AvailableVRAM": ' + literal + "}")
    assert info.value.field == "AvailableVRAM"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ('{"ID": 5}', "ID"),
        ('{"Name": ["x"]}', "Name"),
        ('{"AvailableVRAM": -1}', "AvailableVRAM"),
        ('{"AvailableVRAM": "12"}', "AvailableVRAM"),
        ('{"AvailableVRAM": 1.5}', "AvailableVRAM"),
        ('{"AvailableVRAM": true}', "AvailableVRAM"),
        ('{"AvailableVRAM": 18446744073709551616}', "AvailableVRAM"),
        ('{"Models": "llama"}', "Models"),
        ('{"Models": ["a", 1]}', "Models"),
        ('{"LastSeen": "yesterday"}', "LastSeen"),
        ('{"LastSeen": 1767225600}', "LastSeen"),
        ('{"LastSeen": "2026-02-30T00:00:00Z"}', "LastSeen"),
        ('{"LastSeen": "2026-01-01T24:00:00Z"}', "LastSeen"),
        ('{"LastSeen": "2026-01-01 00:00:00Z"}', "LastSeen"),
        ('{"LastSeen": "2026-01-01T00:00:00"}', "LastSeen"),
        ('{"LastSeen": "2026-01-01t00:00:00z"}', "LastSeen"),  # Go: upper-case T and Z only
        ("[1, 2]", "<document>"),
        ("not json", "<document>"),
        ("", "<document>"),
    ],
)
def test_malformed_raises_typed_error_naming_field(doc: str, field: str) -> None:
    with pytest.raises(NodeDataDecodeError) as info:
        NodeData.from_json(doc)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_last_spelling_of_a_key_wins() -> None:
    assert NodeData.from_json('{"ID": "a", "id": "b"}').id == "b"


def test_bytes_match_go_encoding() -> None:
    # Go: compact separators, declaration order, HTML-safe escapes, UTF-8 kept, nil slice null.
    n = NodeData(name="a<b>&é", id="x", last_seen=T0 + 0.25)
    assert n.to_json() == (
        '{"Name":"a\\u003cb\\u003e\\u0026é","ID":"x","TunnelAddress":"","ServiceID":"",'
        '"LastSeen":"2026-01-01T00:00:00.25Z","AvailableVRAM":0,"Models":null}'
    )
    assert NodeData.from_json(n.to_json()) == n


def test_nanosecond_timestamp_survives_at_float_precision() -> None:
    n = NodeData.from_json('{"LastSeen": "2026-01-01T00:00:00.123456789Z"}')
    # A float near 1.7e9 s holds ~0.24 us; the nearest float is what we keep and re-emit.
    again = NodeData.from_json(n.to_json())
    assert again == n
    assert json.loads(n.to_json())["LastSeen"].startswith("2026-01-01T00:00:00.1234567")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (T0 + 0.123, "2026-01-01T00:00:00.123Z"),
        (T0 + 0.1, "2026-01-01T00:00:00.1Z"),
        (T0 + 59.999, "2026-01-01T00:00:59.999Z"),
        (T0 - 0.5, "2025-12-31T23:59:59.5Z"),
    ],
)
def test_milliseconds_encode_without_float_noise(seconds: float, text: str) -> None:
    # Counterfactual: the float's exact binary value would print ".122999907".
    assert json.loads(NodeData(last_seen=seconds).to_json())["LastSeen"] == text


def test_null_model_entry_decodes_to_empty_string_as_in_go() -> None:
    assert NodeData.from_json('{"Models": ["a", null]}').models == ("a", "")


@pytest.mark.parametrize(
    ("text", "online_far_future"),
    [("0001-01-01T00:00:00.000001Z", False), ("9999-12-31T23:59:59.999999999Z", True)],
)
def test_last_seen_at_the_calendar_edges_is_kept_inside(text: str, online_far_future: bool) -> None:
    # Go accepts both; floats round them onto the bounds, which NodeData cannot hold.
    # Counterfactual: rejecting them would drop a record every Go router keeps.
    n = NodeData.from_json(json.dumps({"LastSeen": text}))
    assert n.is_online_at(T0) is online_far_future
    assert NodeData.from_json(n.to_json()) == n
