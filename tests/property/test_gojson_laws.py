"""Laws of Go-compatible decoding, written from Go's documented ``encoding/json`` rules.

The rules, as the package documentation states them:

- keys: "preferring an exact match but also accepting a case-insensitive match", where
  case-insensitive is ``strings.EqualFold`` (Unicode simple folding: ``ſ`` matches ``s`` and
  ``S``, the Kelvin sign matches ``k``; dotted and dotless i match nothing but themselves);
  keys with no matching field are ignored; a later key overwrites an earlier one;
- null: "has no effect" on a string or number; sets a slice or interface to nil;
- a value that does not fit the field's type is an error (decoding of the document fails);
- strings: "invalid UTF-8 or invalid UTF-16 surrogate pairs are not treated as an error.
  Instead, they are replaced by the Unicode replacement character U+FFFD";
- numbers: an integer field takes the literal as ``strconv.ParseUint``/``ParseInt`` read
  it: digits only (a sign for signed fields), no fraction or exponent, within range.

Each law compares a decoder with a small model of these rules, never with the decoder's own
helpers, so the next case of each family is caught too.
"""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import NodeData, NodeDataDecodeError
from prefixcache import EventDecodeError, Snapshot, decode_event, messages_prefix_source_from_body

# -- the model ---------------------------------------------------------------------------------
# Simple case folding restricted to the alphabet the strategies use: ASCII letters, the long s
# (U+017F), the Kelvin sign (U+212A), dotted capital I (U+0130) and dotless i (U+0131).
_SIMPLE_FOLD = {"\u017f": "s", "\u212a": "k"}


def _equal_fold(a: str, b: str) -> bool:
    def fold(s: str) -> str:
        return "".join(_SIMPLE_FOLD.get(c, c.lower() if c.isascii() else c) for c in s)

    return fold(a) == fold(b)


def _field_of(key: str, fields: list[str]) -> str | None:
    if key in fields:
        return key
    return next((f for f in fields if _equal_fold(key, f)), None)


def _spellings(name: str) -> st.SearchStrategy[str]:
    """Keys a client might send for ``name``: case changes, letters that fold to its letters
    (long s for s, Kelvin for k), dotted/dotless i (which do not), a trailing space."""

    def respell(flags: list[int]) -> str:
        out = []
        for c, f in zip(name, flags, strict=False):
            if f == 1:
                c = c.swapcase()
            elif f == 2 and c in "sS":
                c = "\u017f"
            elif f == 2 and c in "kK":
                c = "\u212a"
            elif f == 3 and c in "iI":
                c = "\u0131" if c == "i" else "\u0130"
            out.append(c)
        return "".join(out)

    variants = st.lists(st.integers(0, 3), min_size=len(name), max_size=len(name)).map(respell)
    return st.one_of(st.just(name), variants, st.just(name + " "), st.just(name.upper()))


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters='"\\'), max_size=8)
_STRING_VALUE = st.one_of(_TEXT.map(json.dumps), st.just("null"), st.sampled_from(["1", "true"]))

_NODE_STRINGS = ["Name", "ID", "TunnelAddress", "ServiceID"]


@st.composite
def _node_documents(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    members = draw(
        st.lists(
            st.tuples(st.sampled_from([*_NODE_STRINGS, "Other"]), _STRING_VALUE).flatmap(
                lambda fv: st.tuples(_spellings(fv[0]), st.just(fv[1]))
            ),
            max_size=8,
        )
    )
    text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members) + "}"
    return text, members


def _model_node(members: list[tuple[str, str]]) -> dict[str, str] | None:
    """What Go makes of a document of string fields: the fields, or None for an error."""
    out = dict.fromkeys(_NODE_STRINGS, "")
    for key, literal in members:
        field = _field_of(key, _NODE_STRINGS)
        if field is None:
            continue
        value = json.loads(literal)
        if value is None:
            continue
        if not isinstance(value, str):
            return None
        out[field] = value
    return out


# -- family: key folding and duplicate keys --------------------------------------------------
@given(_node_documents())
def test_nodedata_keys_fold_and_duplicates_resolve_as_go_documents(
    doc: tuple[str, list[tuple[str, str]]],
) -> None:
    text, members = doc
    expected = _model_node(members)
    try:
        n = NodeData.from_json(text.encode())
    except NodeDataDecodeError:
        assert expected is None, text
        return
    assert expected is not None, text
    got = {"Name": n.name, "ID": n.id, "TunnelAddress": n.tunnel_address, "ServiceID": n.service_id}
    assert got == expected, text


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["model", "node_id", "replica", "other"]).flatmap(_spellings),
            st.one_of(_TEXT.map(json.dumps), st.just("null"), st.sampled_from(["0", "2", "-1"])),
        ),
        max_size=8,
    )
)
def test_event_keys_fold_and_a_later_null_keeps_the_value(members: list[tuple[str, str]]) -> None:
    payload = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members) + "}"
    fields = ["model", "node_id", "replica"]
    state: dict[str, object] = {"model": "", "node_id": "", "replica": 0}
    failed = False
    for key, literal in members:
        field = _field_of(key, fields)
        value = json.loads(literal)
        if field is None or value is None:
            continue
        if (field == "replica") != isinstance(value, int):
            failed = True
        state[field] = value
    try:
        event = decode_event("prefixcache.invalidate", payload.encode())
    except EventDecodeError:
        assert failed or state["node_id"] == "", payload
        return
    assert not failed, payload
    assert (event.model, event.node_id, event.replica) == (
        state["model"],
        state["node_id"],
        state["replica"],
    ), payload


@given(st.lists(st.sampled_from(["role", "content", "x"]).flatmap(_spellings), max_size=4))
def test_chat_message_keys_fold_like_struct_fields(keys: list[str]) -> None:
    members = [(k, f"v{i}") for i, k in enumerate(keys)]
    body = json.dumps({"messages": [dict(members)]}).encode()
    role = content = ""
    for key, value in dict(members).items():
        field = _field_of(key, ["role", "content"])
        if field == "role":
            role = value
        elif field == "content":
            content = value
    assert messages_prefix_source_from_body(body) == f"{role}\n{content}\n"


# -- family: surrogates and invalid UTF-8 -------------------------------------------------------
_UNIT = st.one_of(
    st.characters(codec="utf-8", exclude_characters='"\\', exclude_categories=["Cc"]).map(
        lambda c: ("raw", c)
    ),
    st.integers(0xD800, 0xDFFF).map(lambda u: ("escape", u)),
    st.integers(0, 0xFFFF).map(lambda u: ("escape", u)),
    st.just(("raw", "\\\\")),
)


def _model_string(units: list[tuple[str, object]]) -> str:
    """Decode per RFC 8259, then pair UTF-16 surrogates; what is left unpaired is U+FFFD."""
    out: list[str] = []
    i = 0
    while i < len(units):
        kind, unit = units[i]
        if kind == "raw":
            out.append("\\" if unit == "\\\\" else str(unit))
        else:
            assert isinstance(unit, int)
            nxt = units[i + 1] if i + 1 < len(units) else None
            if 0xD800 <= unit < 0xDC00 and nxt is not None and nxt[0] == "escape":
                low = nxt[1]
                assert isinstance(low, int)
                if 0xDC00 <= low < 0xE000:
                    out.append(chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)))
                    i += 2
                    continue
            out.append("\ufffd" if 0xD800 <= unit < 0xE000 else chr(unit))
        i += 1
    return "".join(out)


def _literal(units: list[tuple[str, object]]) -> str:
    return "".join(str(u) if k == "raw" else f"\\u{u:04x}" for k, u in units)


@given(st.lists(_UNIT, max_size=10))
def test_escaped_surrogates_decode_to_replacement_everywhere(
    units: list[tuple[str, object]],
) -> None:
    literal = _literal(units)
    expected = _model_string(units)
    record = NodeData.from_json(f'{{"Name":"{literal}","Models":["{literal}"]}}'.encode())
    assert record.name == expected and record.models == (expected,)
    assert NodeData.from_json(record.to_json().encode()) == record  # always re-encodes
    event = decode_event("prefixcache.observe", f'{{"chain":[1],"node_id":"n{literal}"}}'.encode())
    assert event.node_id == "n" + expected
    snap = Snapshot.decode(
        f'{{"version":1,"models":["{literal}"],"entries":[[0,[1],"n{literal}",0,1]]}}'.encode()
    )
    assert snap.models == (expected,) and Snapshot.decode(snap.encode()) == snap
    body = f'{{"messages":[{{"role":"{literal}"}}]}}'.encode()
    assert messages_prefix_source_from_body(body) == expected + "\n\n"


@given(st.binary(max_size=12))
def test_invalid_utf8_bytes_each_decode_to_one_replacement(data: bytes) -> None:
    # Go's decoder reads strings rune by rune; each byte that does not start a valid rune is
    # one U+FFFD. The model: decode valid runes greedily, one U+FFFD per invalid byte.
    expected: list[str] = []
    i = 0
    while i < len(data):
        for width in (1, 2, 3, 4):
            try:
                expected.append(data[i : i + width].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += width
            break
        else:
            expected.append("\ufffd")
            i += 1
    text = "".join(expected)
    if any(c in text for c in '"\\') or any(ord(c) < 0x20 for c in text):
        return  # not a plain string body (quotes, escapes, control characters)
    record = NodeData.from_json(b'{"ID":"' + data + b'"}')
    assert record.id == text


# -- family: number forms ----------------------------------------------------------------------
_NUMBER = st.builds(
    lambda sign, whole, frac, exp: sign + whole + frac + exp,
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,21}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,3}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"[eE][+-]?[0-9]{1,2}", fullmatch=True)),
)


@given(_NUMBER)
def test_uint64_fields_take_exactly_what_parseuint_takes(literal: str) -> None:
    parseuint_ok = re.fullmatch(r"0|[1-9][0-9]*", literal) is not None and int(literal) < 2**64
    try:
        vram = NodeData.from_json(f'{{"AvailableVRAM":{literal}}}').available_vram
    except NodeDataDecodeError:
        assert not parseuint_ok, literal
    else:
        assert parseuint_ok and vram == int(literal), literal
    try:
        payload = f'{{"chain":[{literal}],"node_id":"n"}}'.encode()
        event = decode_event("prefixcache.observe", payload)
    except EventDecodeError:
        assert not parseuint_ok, literal
    else:
        assert parseuint_ok and event.chain == (int(literal),), literal  # type: ignore[union-attr]


@given(_NUMBER)
def test_int_fields_take_exactly_what_parseint_takes(literal: str) -> None:
    parseint_ok = (
        re.fullmatch(r"-?(0|[1-9][0-9]*)", literal) is not None and -(2**63) <= int(literal) < 2**63
    )
    payload = f'{{"node_id":"n","replica":{literal}}}'.encode()
    try:
        event = decode_event("prefixcache.invalidate", payload)
    except EventDecodeError:
        assert not parseint_ok, literal
    else:
        assert parseint_ok and event.replica == int(literal), literal
