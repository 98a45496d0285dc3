"""Go-compatible JSON decoding: one rule for every document that arrives from the network.

The Go routers read gossip records, sync events and chat requests with Go's
``encoding/json``. A Python router must read each such document exactly as they do, or the two
sides disagree about names, owners and chains. The rules live here once and every decoder
(``NodeData.from_json``, the sync events, snapshots, chat request bodies) builds on them.

**Text.** A document given as bytes is UTF-8 in which every byte that is not part of a valid
sequence decodes to its own U+FFFD (inside strings Go does the same; outside strings both sides
reject the document). An escaped lone surrogate (``"\\ud800"``; a high surrogate not followed by
an escaped low one, or a low one on its own) decodes to U+FFFD, an escaped pair to its code
point. A document given as ``str`` has each lone surrogate code point replaced by U+FFFD. So
every decoded string can be encoded as UTF-8 again.

**Syntax.** RFC 8259 exactly: no ``NaN``/``Infinity``, comments, trailing commas, raw control
characters in strings or leading byte-order mark, and at most :data:`NESTING_LIMIT` nested
arrays and objects (Go's limit; deeper documents are rejected with an error, never a
``RecursionError``).

**Values.** Objects decode to :class:`Pairs` (every ``(key, value)`` in document order,
duplicates kept), arrays to ``list``, strings to ``str``, literals to ``True``/``False``/``None``,
numbers with a fraction or exponent to ``float`` (``inf`` beyond the float range), integers to
``int``, except ``-0``, which decodes to :data:`NEGATIVE_ZERO` (a Go ``uint64`` rejects it,
an ``int`` reads 0), and integers too long for ``int()``, which decode to :class:`HugeNumber`.

**Struct fields** (Go's rules when the target is a struct): a key selects the field of that
exact name, else the field whose :func:`fold_key` equals the key's; keys that select no field
are ignored whatever their value; a later key overrides an earlier one for the same field,
except that ``null`` leaves a string, number, time or struct field as it was (a slice or
interface field becomes nil); a value of the wrong type fails the document. Slices decode into
the previous slice's storage, as Go's do (:func:`decode_slice`).

Everything here is pure and thread-safe.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Final

from clusterrouting._gofold import FOLD

__all__ = [
    "GoJSONError",
    "GoSlice",
    "GoStruct",
    "HugeNumber",
    "NEGATIVE_ZERO",
    "NESTING_LIMIT",
    "NegativeZero",
    "Pairs",
    "check_float64",
    "decode_any",
    "decode_int64",
    "decode_optional_string",
    "decode_slice",
    "decode_string",
    "decode_uint64",
    "decode_uint64_slice",
    "fold_key",
    "loads",
    "network_text",
]

#: Most arrays and objects one document may nest (Go's ``encoding/json`` limit).
NESTING_LIMIT: Final = 10_000

_UINT64_END: Final = 1 << 64
_INT64_MIN: Final = -(1 << 63)
_INT64_END: Final = 1 << 63


class GoJSONError(ValueError):
    """A document Go's decoder would reject. ``field`` names the struct field whose value was
    wrong (``"<document>"`` for the document as a whole); ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class Pairs(list[tuple[str, object]]):
    """A decoded JSON object: its ``(key, value)`` members in document order."""

    __slots__ = ()


class NegativeZero(int):
    """The integer literal ``-0``: equal to 0, but a Go ``uint64`` rejects it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "-0"

    __str__ = __repr__


#: What ``-0`` decodes to.
NEGATIVE_ZERO: Final = NegativeZero(0)


class HugeNumber:
    """An integer literal too long for ``int()`` (thousands of digits), out of range for
    every Go number type; ``text`` is the literal."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<{len(self.text)}-digit number>"

    __str__ = __repr__


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _parse_int(text: str) -> object:
    if text == "-0":
        return NEGATIVE_ZERO
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return HugeNumber(text)


# The C string scanner of the json module (not in its typed interface).
_scanstring: Final[Callable[[str, int, bool], tuple[str, int]]] = json.decoder.scanstring  # type: ignore[attr-defined]
_PLAIN: Final = json.JSONDecoder(object_pairs_hook=Pairs, parse_constant=_reject_constant)
_HOOKED: Final = json.JSONDecoder(
    object_pairs_hook=Pairs, parse_constant=_reject_constant, parse_int=_parse_int
)


def _replace_each_byte(error: UnicodeError) -> tuple[str, int]:
    # Go's decoder replaces every invalid byte with its own U+FFFD (utf8.DecodeRune reports
    # width 1); Python's "replace" would fold a truncated sequence into one U+FFFD.
    assert isinstance(error, UnicodeDecodeError)
    return ("\ufffd", error.start + 1)


_GO_REPLACE: Final = "clusterrouting.go-replace"
codecs.register_error(_GO_REPLACE, _replace_each_byte)

_RAW_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# An escape that could be a surrogate: the cheap test before the full pass.
_SURROGATE_HINT: Final = re.compile(r"\\u[dD][89a-fA-F]")
# Scanned left to right, an escaped backslash is consumed whole, so a match always starts at
# a real escape; group 1 is set for a lone surrogate only (a valid pair is matched as a unit).
_SURROGATE_ESCAPE: Final = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|(u[dD][89a-fA-F][0-9a-fA-F]{2})|\\)"
)


def _lone_to_replacement(m: re.Match[str]) -> str:
    return "\\ufffd" if m.group(1) else m.group(0)


def network_text(data: bytes | bytearray | memoryview | str) -> str:
    """The text of a document from the network, by the rules in the module docstring (invalid
    UTF-8 bytes and raw lone surrogates become U+FFFD; escapes are left for :func:`loads`).

    >>> network_text(b'"a\\xffb"')
    '"a\\ufffdb"'
    """
    if isinstance(data, str):
        if data.isascii():
            return data
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return _RAW_SURROGATE.sub("\ufffd", data)
        return data
    raw = bytes(data)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", _GO_REPLACE)


def loads(data: bytes | bytearray | memoryview | str, *, first_value_only: bool = False) -> object:
    """Decode one JSON document as Go's decoder reads it (see the module docstring).

    Args:
        data: the document (bytes as received, or text).
        first_value_only: decode the first value and ignore whatever follows it, as
            ``json.Decoder.Decode`` does (HTTP frameworks read request bodies this way);
            otherwise only whitespace may follow.

    Returns:
        The decoded value.

    Raises:
        GoJSONError: the document is not valid JSON, or nests deeper than
            :data:`NESTING_LIMIT` (``field="<document>"``).

    Complexity: O(len(data)); the C decoder first, an iterative one for nesting deeper than
    the interpreter's recursion limit.

    >>> loads(b'{"a": "\\\\ud800", "a": -0}')
    [('a', '\\ufffd'), ('a', -0)]
    """
    text = network_text(data)
    if "\\u" in text and _SURROGATE_HINT.search(text) is not None:
        text = _SURROGATE_ESCAPE.sub(_lone_to_replacement, text)
    decoder = _HOOKED if "-0" in text else _PLAIN
    try:
        try:
            return _decode(decoder, text, first_value_only)
        except json.JSONDecodeError:
            raise
        except ValueError:
            if decoder is _HOOKED:
                raise
            # An integer too long for int(): decode again with the hook that keeps it.
            return _decode(_HOOKED, text, first_value_only)
    except RecursionError:
        return _decode_iterative(text, first_value_only)
    except ValueError as exc:
        raise GoJSONError("<document>", f"not valid JSON ({exc})") from None


_WS: Final = re.compile(r"[ \t\n\r]*")


def _decode(decoder: json.JSONDecoder, text: str, first_value_only: bool) -> object:
    start = _WS.match(text).end()  # type: ignore[union-attr]
    value, end = decoder.raw_decode(text, start)
    if not first_value_only and _WS.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise ValueError(f"extra data after the document at offset {end}")
    return value


_TOKEN: Final = re.compile(
    r'[ \t\n\r]*(?:(")|(-?(?:0|[1-9][0-9]*)(?:(\.[0-9]+)?([eE][+-]?[0-9]+)?))|(true|false|null)'
    r"|([\[\]{}:,]))"
)
_LITERALS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}

# Parser states of the iterative decoder.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _NEXT = range(6)


def _decode_iterative(text: str, first_value_only: bool) -> object:
    """The same language as the C decoder, with an explicit stack instead of recursion."""
    stack: list[tuple[list[object] | Pairs, str]] = []  # container, pending object key
    pos = 0
    state = _VALUE
    match = _TOKEN.match
    while True:
        m = match(text, pos)
        if m is None:
            raise GoJSONError("<document>", f"not valid JSON (at offset {pos})")
        pos = m.end()
        quote, number, fraction, exponent, literal, punct = m.groups()
        value: object
        if state in (_KEY, _KEY_OR_CLOSE):
            if quote:
                key, pos = _string(text, pos)
                container, _ = stack[-1]
                stack[-1] = (container, key)
                state = _COLON
                continue
            if punct != "}" or state == _KEY:
                raise GoJSONError("<document>", f"not valid JSON (at offset {pos})")
            value = stack.pop()[0]
        elif state == _COLON:
            if punct != ":":
                raise GoJSONError("<document>", f"not valid JSON (at offset {pos})")
            state = _VALUE
            continue
        elif state == _NEXT:
            container, _ = stack[-1]
            is_object = type(container) is Pairs
            if punct == ",":
                state = _KEY if is_object else _VALUE
                continue
            if punct != ("}" if is_object else "]"):
                raise GoJSONError("<document>", f"not valid JSON (at offset {pos})")
            value = stack.pop()[0]
        elif punct == "[" or punct == "{":
            if len(stack) >= NESTING_LIMIT:
                raise GoJSONError("<document>", f"nested deeper than {NESTING_LIMIT} levels")
            if punct == "[":
                stack.append(([], ""))
                state = _VALUE_OR_CLOSE
            else:
                stack.append((Pairs(), ""))
                state = _KEY_OR_CLOSE
            continue
        elif punct == "]" and state == _VALUE_OR_CLOSE:
            value = stack.pop()[0]
        elif quote:
            value, pos = _string(text, pos)
        elif number:
            value = float(number) if fraction or exponent else _parse_int(number)
        elif literal:
            value = _LITERALS[literal]
        else:
            raise GoJSONError("<document>", f"not valid JSON (at offset {pos})")
        # A complete value: store it in its container, or finish.
        if not stack:
            if not first_value_only and _WS.match(text, pos).end() != len(text):  # type: ignore[union-attr]
                raise GoJSONError("<document>", f"extra data after the document at {pos}")
            return value
        container, key = stack[-1]
        if isinstance(container, Pairs):
            container.append((key, value))
        else:
            container.append(value)
        state = _NEXT


def _string(text: str, pos: int) -> tuple[str, int]:
    try:
        return _scanstring(text, pos, True)
    except ValueError as exc:
        raise GoJSONError("<document>", f"not valid JSON ({exc})") from None


_ASCII_UPPER: Final = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}
_FOLD_TABLE: Final[dict[int, int]] = {**_ASCII_UPPER, **FOLD}


def fold_key(key: str) -> str:
    """Fold an object key as Go matches it to a struct field case-insensitively.

    Each character maps to the least member of its Unicode simple case-folding class
    (``unicode.SimpleFold``): ASCII letters to upper case, ``ſ`` (U+017F) to ``S``, the Kelvin
    sign to ``K``; ``İ`` and ``ı`` fold only to themselves. Two keys match iff their folds are
    equal (Go's ``strings.EqualFold``).

    >>> fold_key("\\u017ferviceid") == fold_key("ServiceID") == "SERVICEID"
    True
    """
    if key.isascii():
        return key.upper()
    return key.translate(_FOLD_TABLE)


class GoStruct:
    """The JSON field names of a Go struct, for matching object keys to fields.

    >>> s = GoStruct(["ID", "Name"])
    >>> s.match("ID"), s.match("id"), s.match("ıd"), s.match("other")
    ('ID', 'ID', None, None)
    """

    __slots__ = ("_exact", "_folded")

    def __init__(self, names: Iterable[str]) -> None:
        self._exact = frozenset(names)
        folded: dict[str, str] = {}
        for name in self._exact:
            folded.setdefault(fold_key(name), name)
        self._folded = folded

    def match(self, key: str) -> str | None:
        """The field ``key`` selects (exact name first, then the folded one), or ``None``."""
        if key in self._exact:
            return key
        return self._folded.get(fold_key(key))


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Pairs):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a number"


def decode_string(old: str, value: object, field: str) -> str:
    """A Go ``string`` field: a string replaces it, ``null`` keeps it, anything else fails."""
    if type(value) is str:
        return value
    if value is None:
        return old
    raise GoJSONError(field, f"must be a string, not {_type_name(value)}")


def decode_optional_string(old: str | None, value: object, field: str) -> str | None:
    """A Go ``*string`` field: a string replaces it, ``null`` makes it nil (``None``)."""
    if value is None or type(value) is str:
        return value
    raise GoJSONError(field, f"must be a string or null, not {_type_name(value)}")


def decode_uint64(old: int, value: object, field: str) -> int:
    """A Go ``uint64`` field: only an integer literal in ``[0, 2**64)`` without a sign (so not
    ``-0``, ``1.0`` or ``1e3``); ``null`` keeps it."""
    if type(value) is int and 0 <= value < _UINT64_END:
        return value
    if value is None:
        return old
    if isinstance(value, int | float | HugeNumber) and not isinstance(value, bool):
        raise GoJSONError(field, f"{value!s:.40} is not an integer in [0, 2**64)")
    raise GoJSONError(field, f"must be a number, not {_type_name(value)}")


def decode_int64(old: int, value: object, field: str) -> int:
    """A Go ``int`` (64-bit) field: an integer literal in ``[-2**63, 2**63)`` (``-0`` is 0,
    ``1.0`` is not an integer); ``null`` keeps it."""
    if isinstance(value, int) and not isinstance(value, bool):
        if _INT64_MIN <= value < _INT64_END:
            return int(value)
    elif value is None:
        return old
    if isinstance(value, int | float | HugeNumber) and not isinstance(value, bool):
        raise GoJSONError(field, f"{value!s:.40} is not an integer in [-2**63, 2**63)")
    raise GoJSONError(field, f"must be a number, not {_type_name(value)}")


def check_float64(value: object, field: str) -> None:
    """Fail if a number cannot be a Go ``float64`` (out of range); other values pass."""
    if type(value) is float:
        if math.isinf(value):
            raise GoJSONError(field, "holds a number out of the float64 range")
    elif isinstance(value, HugeNumber):
        raise GoJSONError(field, "holds a number out of the float64 range")
    elif type(value) is int:
        try:
            float(value)
        except OverflowError:
            raise GoJSONError(field, "holds a number out of the float64 range") from None


def decode_any(value: object, field: str) -> object:
    """A Go ``any`` field: any value replaces it (``null`` makes it nil), but every number
    inside must fit a ``float64``, which Go converts it to. Iterative: any nesting depth.
    Returns ``value``."""
    todo = [value]
    while todo:
        item = todo.pop()
        if type(item) is Pairs:
            todo.extend(v for _, v in item)
        elif type(item) is list:
            todo.extend(item)
        else:
            check_float64(item, field)
    return value


class GoSlice:
    """A Go slice as the decoder sees it: the storage (``buf``) and the length in use.

    Go decodes an array into the slice a field already holds, reusing its storage: an element
    decoded from ``null`` keeps what that storage held, even beyond the previous length. An
    empty array allocates new storage; ``null`` makes the slice nil (``None``).
    """

    __slots__ = ("buf", "length")

    def __init__(self, buf: list[Any], length: int) -> None:
        self.buf = buf
        self.length = length

    def items(self) -> list[Any]:
        """The elements in use."""
        return self.buf[: self.length]


def decode_slice(
    old: GoSlice | None,
    value: object,
    field: str,
    element: Callable[[Any, object, str], object],
    zero: Callable[[], object],
) -> GoSlice | None:
    """A Go slice field: an array decodes element by element into the old storage (see
    :class:`GoSlice`) with ``element(old_item, json_item, field)``; ``zero()`` makes a new
    element; ``null`` gives nil (``None``); anything else fails."""
    if value is None:
        return None
    if type(value) is not list:
        raise GoJSONError(field, f"must be an array, not {_type_name(value)}")
    if not value:
        return GoSlice([], 0)
    buf = old.buf if old is not None else []
    for i, item in enumerate(value):
        if i >= len(buf):
            buf.append(zero())
        buf[i] = element(buf[i], item, field)
    return GoSlice(buf, len(value))


def decode_uint64_slice(old: GoSlice | None, value: object, field: str) -> GoSlice | None:
    """:func:`decode_slice` of :func:`decode_uint64` elements, with a fast path for an array
    of plain in-range integers (the usual chain: a few C-level passes instead of a call per
    element)."""
    if (
        type(value) is list
        and value
        and set(map(type, value)) == {int}
        and min(value) >= 0
        and max(value) < _UINT64_END
    ):
        if old is not None and len(old.buf) > len(value):
            return GoSlice(value + old.buf[len(value) :], len(value))
        return GoSlice(list(value), len(value))
    return decode_slice(old, value, field, decode_uint64, int)
