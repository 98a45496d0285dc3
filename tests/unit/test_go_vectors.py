"""Differential tests against Go's standard library, from committed vectors.

``tests/vectors/go_*.json`` hold documents and what Go's ``encoding/json`` and ``time`` made of
them (written by ``make vectors``, which runs ``tools/govectors`` with Go; these tests need no
Go). Every decoder must answer as Go does; where the library deliberately differs (listed in
``docs/behaviour.md``) the test checks that the case is one of those documented differences.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from clusterrouting import NodeData, NodeDataDecodeError
from clusterrouting._gofold import FOLD, UNICODE_VERSION
from clusterrouting._gojson import GoStruct, Pairs, fold_key, loads
from clusterrouting._rfc3339 import MAX_TIME, MIN_TIME, parse_rfc3339
from prefixcache import (
    MAX_EVENT_CHAIN,
    EventDecodeError,
    decode_event,
    extract_model,
    messages_prefix_source_from_body,
)
from prefixcache._events import MAX_NAME_BYTES

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _cases(name: str) -> Iterator[tuple[bytes, dict[str, Any]]]:
    for case in _load(name)["cases"]:
        given = case["in"]
        raw = given["text"].encode() if "text" in given else base64.b64decode(given["b64"])
        yield raw, case


# Go's time.Parse falls back to a parser that also takes these non-RFC 3339 forms: a ","
# before the fraction, a one-digit hour, an offset of 24 hours or 60 minutes.
_GO_LENIENT_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([0-9]{1,2}):[0-9]{2}:[0-9]{2}(?:([.,])[0-9]+)?"
    r"(?:Z|[+-]([0-9]{2}):([0-9]{2}))"
)


def documented_time_difference(text: str) -> bool:
    """Whether Go accepting ``text`` while the library rejects it is a documented difference:
    a non-RFC 3339 form Go's fallback parser takes, or an instant outside years 1..9999 UTC."""
    m = _GO_LENIENT_TIME.fullmatch(text)
    if m is not None:
        hour, sep, off_hour, off_min = m.groups()
        if len(hour) == 1 or sep == "," or off_hour == "24" or off_min == "60":
            return True
    try:
        ns = parse_rfc3339(text)
    except ValueError:
        return False
    return ns is not None and not MIN_TIME < ns / 1e9 < MAX_TIME


def _go_time_ns(value: dict[str, Any]) -> int | None:
    return None if value["zero"] else value["sec"] * 10**9 + value["nsec"]


def test_vectors_are_present_and_from_go() -> None:
    for name in ("go_nodedata", "go_events", "go_messages", "go_rfc3339", "go_fold"):
        data = _load(f"{name}.json")
        assert data["generator"] == "tools/govectors" and data["go"].startswith("go")
        assert len(data["cases"]) > 500


def test_rfc3339_agrees_with_go_except_documented_differences() -> None:
    lenient = 0
    for raw, case in _cases("go_rfc3339.json"):
        text = raw.decode("utf-8", "replace")
        try:
            ns: int | None = parse_rfc3339(text)
            ok = True
        except ValueError:
            ns, ok = None, False
        for mode in ("parse", "json"):
            if ok and case[f"{mode}_ok"]:
                go_ns = _go_time_ns(case[mode])
                assert ns == go_ns or (ns is None and go_ns == MIN_TIME * 10**9), text
            elif ok:
                pytest.fail(f"accepted what Go rejects: {text!r}")
            elif case[f"{mode}_ok"]:
                assert documented_time_difference(text), text
                lenient += 1
    assert lenient > 0  # the vectors exercise the documented differences


def _last_seen_texts(raw: bytes) -> list[str]:
    doc = loads(raw)
    struct = GoStruct(["Name", "ID", "TunnelAddress", "ServiceID", "LastSeen", "AvailableVRAM"])
    assert isinstance(doc, Pairs)
    return [v for k, v in doc if struct.match(k) == "LastSeen" and isinstance(v, str)]


def test_nodedata_decodes_as_go_except_documented_differences() -> None:
    compared = 0
    for raw, case in _cases("go_nodedata.json"):
        try:
            record: NodeData | None = NodeData.from_json(raw)
            error: NodeDataDecodeError | None = None
        except NodeDataDecodeError as exc:
            record, error = None, exc
        if error is not None:
            if case["ok"]:
                # Go accepted: only a documented LastSeen difference may make us reject.
                assert error.field == "LastSeen", (raw[:200], error)
                assert any(documented_time_difference(t) for t in _last_seen_texts(raw)), raw
            continue
        assert case["ok"], f"accepted what Go rejects: {raw[:200]!r}"
        assert record is not None
        out = case["out"]
        expected_seen = _go_time_ns(out["LastSeen"])
        assert (record.name, record.id, record.tunnel_address, record.service_id) == (
            out["Name"],
            out["ID"],
            out["TunnelAddress"],
            out["ServiceID"],
        ), raw
        assert str(record.available_vram) == out["AvailableVRAM"], raw
        assert list(record.models) == (out["Models"] or []), raw
        if expected_seen is None:
            assert record.last_seen is None, raw
        else:
            assert record.last_seen == expected_seen / 1e9, raw
        # Whatever Go read, the record re-encodes and reads back the same.
        assert NodeData.from_json(record.to_json().encode()) == record
        compared += 1
    assert compared > 300


_LAST_SEEN = re.compile(r'"LastSeen":"([^"]*)"')


def test_nodedata_reencodes_byte_for_byte_as_go_marshal() -> None:
    identical = 0
    for raw, case in _cases("go_nodedata.json"):
        if "encoded" not in case:
            continue
        try:
            ours = NodeData.from_json(raw).to_json()
        except NodeDataDecodeError:
            continue  # a documented LastSeen difference (checked above)
        go = case["encoded"]
        if ours == go:
            identical += 1
            continue
        # Two documented representation limits, nothing else may differ: float seconds keep
        # LastSeen to ~0.24 us, and an empty Models is written as null (Go's nil slice), where
        # Go re-encodes a decoded [] as []; both mean "any model" to every router.
        ours_seen, go_seen = _LAST_SEEN.search(ours), _LAST_SEEN.search(go)
        assert ours_seen is not None and go_seen is not None
        ours_ns, go_ns = parse_rfc3339(ours_seen.group(1)), parse_rfc3339(go_seen.group(1))
        assert abs((ours_ns or 0) - (go_ns or 0)) < 1000, (ours, go)
        assert _LAST_SEEN.sub("", ours) == _LAST_SEEN.sub("", go).replace(
            '"Models":[]', '"Models":null'
        ), (ours, go)
    assert identical > 300


def _library_limit(subject: str, out: dict[str, Any]) -> bool:
    """The library's own limits on top of Go's decoding (see ``prefixcache._events``)."""
    observe = subject.endswith("observe")
    return (
        out["node_id"] == ""
        or len(out["model"].encode()) > MAX_NAME_BYTES
        or len(out["node_id"].encode()) > MAX_NAME_BYTES
        or (observe and (not out["chain"] or len(out["chain"]) > MAX_EVENT_CHAIN))
        or (observe and int(out["replica"]) < 0)
    )


@pytest.mark.parametrize("kind", ["observe", "invalidate"])
def test_events_decode_as_go(kind: str) -> None:
    subject = f"prefixcache.{kind}"
    applied = 0
    for raw, case in _cases("go_events.json"):
        try:
            event = decode_event(subject, raw)
        except EventDecodeError as exc:
            if case[f"{kind}_ok"]:
                assert _library_limit(subject, case[kind]), (raw[:200], exc)
            continue
        assert case[f"{kind}_ok"], f"accepted what Go rejects: {raw[:200]!r}"
        out = case[kind]
        assert (event.model, event.node_id, str(event.replica)) == (
            out["model"],
            out["node_id"],
            out["replica"],
        ), raw
        if kind == "observe":
            assert [str(h) for h in event.chain] == out["chain"], raw  # type: ignore[union-attr]
        applied += 1
    assert applied > 100


def test_chat_bodies_give_go_prefix_sources() -> None:
    rejected = 0
    for raw, case in _cases("go_messages.json"):
        expected = case["source"] if case["ok"] else None
        assert messages_prefix_source_from_body(raw) == expected, raw[:300]
        rejected += expected is None
    assert rejected > 50


def test_extract_model_reads_bodies_as_go_unmarshal() -> None:
    named = 0
    for raw, case in _cases("go_messages.json"):
        # "model" is absent where Go's json.Unmarshal failed: the model is then "".
        assert extract_model(None, raw) == case.get("model", ""), raw[:300]
        named += bool(case.get("model"))
    assert named > 50


def test_fold_table_is_go_unicode_simple_folding() -> None:
    go = {r: least for r, least in _load("go_fold.json")["cases"]}
    assert go == FOLD
    assert UNICODE_VERSION.count(".") == 2
    for r, least in list(go.items())[::37]:
        assert fold_key(chr(r)) == chr(least)
    assert fold_key("\u017f") == "S" and fold_key("\u212a") == "K"
    assert fold_key("\u0131") == "\u0131" and fold_key("\u0130") == "\u0130"
