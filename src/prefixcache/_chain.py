"""Prefix chains: chained XXH64 hashes of a prompt's leading blocks, and request parsing.

A *chain* is a tuple of unsigned 64-bit ints, shallow to deep. Element ``i`` hashes the model
and the whole prefix up to the end of block ``i``, so two prompts for the same model share
exactly their common full leading blocks (and nothing after the first differing block).

The byte scheme (:func:`extract_chain`) is bit-identical to the reference router, so routers in
different languages can exchange these hashes. :func:`extract_token_chain` applies the same
chaining to token ids for hosts that tokenize, so chains can follow an engine's KV blocks.

Every function here is pure (no clock, no I/O) and thread-safe.
"""

from __future__ import annotations

import array
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Union, cast

from xxhash import xxh64_intdigest

from clusterrouting import InvalidRecordError
from clusterrouting._gojson import (
    GoJSONError,
    GoSlice,
    GoStruct,
    Pairs,
    decode_any,
    decode_int64,
    decode_optional_string,
    decode_slice,
    decode_string,
    loads,
)
from prefixcache._config import DEFAULT_CONFIG, Config

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "MAX_TOKEN_ID",
    "extract_chain",
    "extract_model",
    "extract_token_chain",
    "messages_prefix_source",
    "messages_prefix_source_from_body",
]

#: The largest token id :func:`extract_token_chain` accepts (ids are encoded as uint32).
MAX_TOKEN_ID: Final[int] = 2**32 - 1

_NATIVE_LITTLE: Final[bool] = sys.byteorder == "little"
#: ``isinstance`` targets as tuples built once (an inline ``bytes | bytearray`` builds a
#: ``types.UnionType`` on every call, about 2k instructions per request).
_BYTES_LIKE: Final = (bytes, bytearray, memoryview)
_TEXT_OR_BYTES: Final = (str, bytes, bytearray, memoryview)
_LIST_OR_TUPLE: Final = (list, tuple)
_ARRAY_U32: Final[str | None] = next(
    (code for code in ("I", "L") if array.array(code).itemsize == 4), None
)


#: Token ids: a sequence of ints or a one-dimensional integer numpy array.
TokenIds = Union[Sequence[int], "npt.NDArray[np.generic]"]


# Plain dicts, not functools.lru_cache: a hit costs ~40 ns instead of ~120 ns, which is a
# third of a one-block chain. Bounded by clearing when full (model names and prompt shapes
# are few in practice; a clear only costs a recomputation).
_SALTS: dict[str, int] = {}
_SLICES: dict[tuple[int, int], tuple[slice, ...]] = {}
_CACHE_MAX: Final[int] = 1024


def model_salt(model: str) -> int:
    salt = _SALTS.get(model)
    if salt is None:
        if len(_SALTS) >= _CACHE_MAX:
            _SALTS.clear()
        salt = _SALTS[model] = xxh64_intdigest(model.encode("utf-8", "surrogatepass"))
    return salt


def _block_slices(blocks: int, width: int) -> tuple[slice, ...]:
    # Prebuilt slice objects leave one slice, one concat and one hash per block in the hot
    # loop (no offset arithmetic): measured ~15% faster on a 16 KiB prompt.
    key = (blocks, width)
    slices = _SLICES.get(key)
    if slices is None:
        if len(_SLICES) >= _CACHE_MAX:
            _SLICES.clear()
        slices = _SLICES[key] = tuple(slice(o, o + width) for o in range(0, blocks * width, width))
    return slices


#: From this many blocks on, numpy cuts the blocks out in one C call (a void-dtype view's
#: ``tolist()`` makes each block's ``bytes`` in ~15 ns against ~50 ns per Python slice); below
#: it numpy's fixed overhead (~2 us) loses. Measured crossover: 32-64 blocks.
_VECTOR_MIN_BLOCKS: Final[int] = 48


def chain_of_bytes(salt: int, data: bytes, width: int, depth: int) -> tuple[int, ...]:
    prev = salt
    if depth == 1:  # the common short prompt: no comprehension, no slice table
        return (xxh64_intdigest(prev.to_bytes(8, "little") + data[:width]),)
    if depth < _VECTOR_MIN_BLOCKS:
        return tuple(
            [
                prev := xxh64_intdigest(prev.to_bytes(8, "little") + data[s])
                for s in _block_slices(depth, width)
            ]
        )
    import numpy as np  # deferred: short prompts never import numpy

    full = min(len(data) // width, depth)
    blocks: list[bytes] = np.frombuffer(data, f"V{width}", count=full).tolist()
    if full < depth:
        blocks.append(data[full * width : (full + 1) * width])
    return tuple([prev := xxh64_intdigest(prev.to_bytes(8, "little") + b) for b in blocks])


def extract_chain(
    model: str, prompt: str | bytes, config: Config = DEFAULT_CONFIG
) -> tuple[int, ...]:
    """Hash a prompt into its prefix chain, bit-identical to the reference router.

    Algorithm (``W = config.window_bytes``):

    1. an empty prompt gives ``()``;
    2. ``data`` is the prompt's UTF-8 bytes (``bytes``/``bytearray``/``memoryview`` are used
       as is); blocks are byte offsets from 0 and may split a multibyte character;
    3. ``depth = min(ceil(len(data) / W), config.max_depth)``;
    4. ``prev = XXH64(model.encode("utf-8"), seed=0)`` (the model salt);
    5. for each block ``i < depth``:
       ``h = XXH64(prev.to_bytes(8, "little") + data[i*W:(i+1)*W], seed=0)``; append ``h``;
       ``prev = h``. The last block may be short.

    Args:
        model: the model name (salts every hash, so models never share entries).
        prompt: the prompt text, or its bytes.
        config: supplies ``window_bytes`` and ``max_depth``.

    Returns:
        The chain, shallow to deep; each element in ``[0, 2**64)``. ``()`` for an empty prompt.

    Raises:
        InvalidRecordError: ``model`` is not a ``str``, ``prompt`` is neither ``str`` nor
            bytes-like, or ``config`` is not a :class:`Config` (a ``TypeError`` and a
            ``ValueError``).

    Complexity: O(min(len(data), W * max_depth)): only the hashed prefix of a ``str`` prompt
    is encoded.

    >>> extract_chain("modelX", "hello world")
    (9021501245760295833,)
    >>> extract_chain("m", "")
    ()
    """
    if type(model) is not str:
        raise InvalidRecordError("model", model, "must be a str")
    if config is not DEFAULT_CONFIG and not isinstance(config, Config):
        raise InvalidRecordError("config", config, "must be a prefixcache.Config")
    width = config.window_bytes
    if type(prompt) is str:
        # Only the first max_depth * W bytes are hashed, and every character encodes to at
        # least one byte, so encoding that many characters is enough (and equal to the
        # prefix of the full encoding): long prompts cost O(max_depth * W), not O(len).
        limit = config.max_depth * width
        text = prompt if len(prompt) <= limit else prompt[:limit]
        # Lone surrogates cannot be UTF-8; keep them as the bytes CPython would write with
        # "surrogatepass" rather than failing a routing decision.
        try:
            data = text.encode()
        except UnicodeEncodeError:
            data = text.encode("utf-8", "surrogatepass")
    elif type(prompt) is bytes:
        data = prompt
    elif isinstance(prompt, _BYTES_LIKE):
        data = bytes(prompt)
    else:
        raise InvalidRecordError("prompt", prompt, "must be a str or bytes")
    if not data:
        return ()
    blocks = -(-len(data) // width)
    max_depth = config.max_depth
    return chain_of_bytes(
        model_salt(model), data, width, blocks if blocks < max_depth else max_depth
    )


def token_bytes_from_array(token_ids: npt.NDArray[np.generic]) -> bytes:
    import numpy as np  # deferred: only hosts passing arrays pay for numpy's import

    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise InvalidRecordError(
            "token_ids", f"<array shape={arr.shape}>", "must be one-dimensional"
        )
    kind = arr.dtype.kind
    if kind not in "iu":
        raise InvalidRecordError(
            "token_ids", f"<array dtype={arr.dtype}>", "must have an integer dtype"
        )
    if arr.size == 0:
        return b""
    # Vectorised range check (reductions, not a Python loop): unsigned dtypes of <= 4 bytes
    # cannot hold an out-of-range id, signed ones of <= 4 bytes only a negative one.
    itemsize = arr.dtype.itemsize
    if kind == "i" and itemsize <= 4:
        out_of_range = int(arr.min()) < 0
    elif kind == "u" and itemsize <= 4:
        out_of_range = False
    else:
        out_of_range = int(arr.min()) < 0 or int(arr.max()) > MAX_TOKEN_ID
    if out_of_range:
        bad = int(np.flatnonzero((arr < 0) | (arr > MAX_TOKEN_ID))[0])
        raise InvalidRecordError(
            f"token_ids[{bad}]", int(arr[bad]), f"must be in [0, {MAX_TOKEN_ID}]"
        )
    order = arr.dtype.byteorder
    if itemsize == 4 and (order == "<" or (order == "=" and _NATIVE_LITTLE)):
        # Non-negative little-endian int32 has the bits of uint32: reinterpret, don't cast.
        return arr.view("<u4").tobytes()
    return arr.astype("<u4").tobytes()


def token_bytes_from_sequence(token_ids: Iterable[object]) -> bytes:
    if isinstance(token_ids, _TEXT_OR_BYTES):
        raise InvalidRecordError(
            "token_ids", token_ids, "must be a sequence of ints or an integer array"
        )
    items = token_ids if isinstance(token_ids, _LIST_OR_TUPLE) else list(token_ids)
    try:
        if _ARRAY_U32 is None:  # pragma: no cover - no 4-byte C integer on this platform
            raise OverflowError
        # array.array converts and range-checks in C (~6 ns per id).
        packed = array.array(_ARRAY_U32, items)
    except (OverflowError, TypeError, ValueError):
        for i, t in enumerate(items):
            if isinstance(t, bool) or not hasattr(t, "__index__"):
                raise InvalidRecordError(f"token_ids[{i}]", t, "must be an int") from None
            v = t.__index__()
            if not 0 <= v <= MAX_TOKEN_ID:
                raise InvalidRecordError(
                    f"token_ids[{i}]", t, f"must be in [0, {MAX_TOKEN_ID}]"
                ) from None
        raise  # pragma: no cover - array.array rejected something the scan accepts
    if not _NATIVE_LITTLE:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


def extract_token_chain(
    model: str,
    token_ids: TokenIds,
    *,
    block_tokens: int,
    max_depth: int | None = None,
) -> tuple[int, ...]:
    """Hash token ids into a prefix chain, one hash per block of ``block_tokens`` tokens.

    The same chained scheme as :func:`extract_chain`, over a fixed byte encoding of the ids:

    1. every id must be an int in ``[0, 2**32)`` (``MAX_TOKEN_ID``); the ids are encoded as
       consecutive **little-endian uint32** (4 bytes each, on every platform), so a block of
       ``B`` tokens is ``4 * B`` bytes;
    2. ``prev = XXH64(model.encode("utf-8"), seed=0)``;
    3. for each block ``i`` (``i < max_depth`` when given):
       ``h = XXH64(prev.to_bytes(8, "little") + ids_le_u32[i*B:(i+1)*B], seed=0)``; append
       ``h``; ``prev = h``. A trailing partial block is hashed like a full one (as the byte
       scheme does), so equal token lists give equal chains.

    Hence ``extract_token_chain(m, ids, block_tokens=B)`` equals
    ``extract_chain(m, ids_le_u32_bytes, Config(window_bytes=4 * B, max_depth=...))`` and two
    token lists sharing ``k`` full leading blocks share exactly ``k`` leading hashes. Chains
    from this function and from :func:`extract_chain` never collide by construction only up
    to XXH64's collision probability: do not mix the two schemes for one model.

    Args:
        model: the model name (the salt).
        token_ids: a sequence of ints (anything with ``__index__``, e.g. numpy integers), or a
            one-dimensional numpy array of any integer dtype (converted and range-checked
            vectorised).
        block_tokens: tokens per block (> 0), e.g. the engine's KV block size.
        max_depth: hash at most this many blocks (> 0); ``None`` hashes every block.

    Returns:
        The chain, shallow to deep; ``()`` for no tokens.

    Raises:
        InvalidRecordError (a ``ValueError`` and ``TypeError``): ``model`` is not a ``str``;
            ``block_tokens`` or ``max_depth`` is not a positive int; ``token_ids`` is a
            string, a non-integer or multi-dimensional array; an id is not an int or lies
            outside ``[0, 2**32)`` (the message names ``token_ids[i]`` and the value).

    Complexity: O(len(token_ids)): one vectorised conversion, one hash call per block.

    >>> extract_token_chain("m", [1, 2, 3], block_tokens=2) == extract_chain(
    ...     "m", bytes([1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]), Config(window_bytes=8))
    True
    """
    if type(model) is not str:
        raise InvalidRecordError("model", model, "must be a str")
    return chain_of_tokens(model_salt(model), token_ids, block_tokens, max_depth)


def chain_of_tokens(
    root: int, token_ids: TokenIds, block_tokens: int, max_depth: int | None
) -> tuple[int, ...]:
    """The chain of ``token_ids`` in blocks of ``block_tokens`` tokens, continued from
    ``root`` (a namespace's salt): the steps of :func:`extract_token_chain` after the
    model's salt, for namespaces that salt differently.

    Raises:
        InvalidRecordError: as :func:`extract_token_chain`, for everything but ``model``.
    """
    if type(block_tokens) is not int or block_tokens <= 0:
        raise InvalidRecordError("block_tokens", block_tokens, "must be an int > 0")
    if max_depth is not None and (type(max_depth) is not int or max_depth <= 0):
        raise InvalidRecordError("max_depth", max_depth, "must be an int > 0 or None")
    if hasattr(token_ids, "dtype") and hasattr(token_ids, "ndim"):
        data = token_bytes_from_array(cast("npt.NDArray[np.generic]", token_ids))
    else:
        data = token_bytes_from_sequence(token_ids)
    if not data:
        return ()
    width = 4 * block_tokens
    depth = -(-len(data) // width)
    if max_depth is not None and max_depth < depth:
        depth = max_depth
    return chain_of_bytes(root, data, width, depth)


# Field names of the Go structs a chat request decodes into.
_REQUEST: Final = GoStruct(("model", "messages"))
_MESSAGE: Final = GoStruct(
    (
        "role",
        "name",
        "content",
        "function_call",
        "tool_calls",
        "tool_call_id",
        "reasoning",
        "reasoning_content",
    )
)
_TOOL_CALL: Final = GoStruct(("index", "id", "type", "function"))
_TOOL_FUNCTION: Final = GoStruct(("name", "arguments"))
_PART: Final = GoStruct(("type", "text", "image_url", "audio_url", "video_url", "input_audio"))


def _parts_text(parts: Iterable[object]) -> str:
    """The text of a list of content parts, read as Go reads it.

    Go decodes each part as a map (the last of duplicate keys wins, ``null`` included),
    encodes the list again (map keys sorted by code point) and decodes that into its part
    struct, ignoring errors: so for ``type`` and ``text`` the last key in sorted order that
    selects the field (exact name or simple case folding) and holds a string wins, ``null``
    and other types leave it as it was. Parts typed exactly ``"text"`` contribute their text.
    """
    out: list[str] = []
    for part in parts:
        if isinstance(part, Pairs):
            members: dict[object, object] = dict(part)
        elif isinstance(part, Mapping):
            members = dict(part)
        else:
            continue  # Go: a type error, ignored; the part stays empty
        kind = text = ""
        keys = [k for k in members if type(k) is str]
        if len(keys) > 1:
            keys.sort()
        for key in keys:
            value = members[key]
            if type(value) is not str:
                continue
            name = _PART.match(key)
            if name == "text":
                text = value
            elif name == "type":
                kind = value
        if kind == "text":
            out.append(text)
    return "".join(out)


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, _LIST_OR_TUPLE):
        return _parts_text(content)
    return ""


def _message_fields(message: object) -> tuple[object, object]:
    """``(role, content)`` of a decoded message: keys matched as Go matches struct fields, a
    later string role wins and ``null`` keeps the earlier one, a later content wins (``null``
    included, as for Go's ``any``)."""
    if isinstance(message, Mapping):
        role: object = ""
        content: object = None
        for key, value in message.items():
            if type(key) is not str:
                continue
            name = _MESSAGE.match(key)
            if name == "role":
                if value is not None:
                    role = value
            elif name == "content":
                content = value
        return role, content
    return getattr(message, "role", None), getattr(message, "content", None)


def messages_prefix_source(messages: Iterable[object]) -> str:
    """The text whose chain keys a chat request: each message's role and text, in order.

    For each message, ``role + "\\n" + content + "\\n"`` where, as the Go routers read them:

    - keys match as Go matches struct fields: the exact name (``"role"``, ``"content"``), else
      under Unicode simple case folding (``"Role"``, ``"ROLE"``); a ``null`` role leaves the
      role as it was, a ``null`` content clears the content;
    - ``role`` is the role string (``""`` if missing or not a string);
    - ``content`` is a string as is; for a list of content parts, the concatenation of the
      ``"text"`` of the parts whose ``"type"`` is exactly ``"text"`` (images and other parts
      contribute nothing; where a part has several spellings of one key, the last in code-point
      order holding a string wins, as Go's re-decoding of the parts does); anything else
      (missing, ``None``, numbers) contributes ``""``;
    - every lone surrogate becomes U+FFFD (Go's decoder never yields one), so the text always
      encodes as UTF-8.

    Messages are mappings (decoded JSON) or objects with ``role``/``content`` attributes.
    Anything that is not an iterable of messages (``None``, a string, a number) gives ``""``.
    Never raises. A decoded mapping cannot show duplicate keys or the values Go rejects, so
    for a raw request body use :func:`messages_prefix_source_from_body`, which reads the body
    with Go's rules end to end.

    Args:
        messages: the request's ``messages`` array.

    Returns:
        The prefix source text (feed it to :func:`extract_chain`).

    Complexity: O(total text length).

    >>> messages_prefix_source([{"role": "system", "content": "Be brief."},
    ...                         {"Role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    'system\\nBe brief.\\nuser\\nHi\\n'
    """
    if isinstance(messages, (*_TEXT_OR_BYTES, Mapping)):
        return ""
    try:
        items = list(messages)
    except Exception:
        return ""
    out: list[str] = []
    try:
        for message in items:
            role, content = _message_fields(message)
            out.append(role if isinstance(role, str) else "")
            out.append("\n")
            out.append(_content_text(content))
            out.append("\n")
    except Exception:  # a hostile mapping or attribute; never raise into request handling
        return ""
    text = "".join(out)
    if not text.isascii() and _LONE_SURROGATE.search(text) is not None:
        text = _LONE_SURROGATE.sub("\ufffd", text)
    return text


class _Message:
    """A chat message as Go's decoder fills it (only what the prefix source reads is kept;
    the other fields are type-checked)."""

    __slots__ = ("content", "role")

    def __init__(self) -> None:
        self.role = ""
        self.content: object = None


def _check_tool_calls(value: object, field: str) -> None:
    if value is None:
        return
    if type(value) is not list:
        raise GoJSONError(field, "must be an array")
    for call in value:
        if call is None:
            continue
        if type(call) is not Pairs:
            raise GoJSONError(field, "must hold objects")
        for key, item in call:
            name = _TOOL_CALL.match(key)
            if name == "index":
                decode_int64(0, item, "tool_calls.index")
            elif name == "function":
                if item is None:
                    continue
                if type(item) is not Pairs:
                    raise GoJSONError("tool_calls.function", "must be an object")
                for fkey, fitem in item:
                    if _TOOL_FUNCTION.match(fkey) is not None:
                        decode_string("", fitem, "tool_calls.function")
            elif name is not None:
                decode_string("", item, f"tool_calls.{name}")


def _decode_message(old: _Message, value: object, field: str) -> _Message:
    # The reference's message type decodes itself, so null leaves the element as it was and
    # a value of the wrong type anywhere in it fails the whole request.
    if value is None:
        return old
    if type(value) is not Pairs:
        raise GoJSONError(field, "must hold objects")
    for key, item in value:
        name = _MESSAGE.match(key)
        if name is None:
            continue
        if name == "role":
            old.role = decode_string(old.role, item, name)
        elif name == "content":
            old.content = decode_any(item, name)
        elif name == "function_call":
            decode_any(item, name)
        elif name == "tool_calls":
            _check_tool_calls(item, name)
        elif name in ("reasoning", "reasoning_content"):
            decode_optional_string(None, item, name)
        else:
            decode_string("", item, name)
    return old


def messages_prefix_source_from_body(body: bytes | bytearray | memoryview | str) -> str | None:
    """The prefix source of a raw chat request body, read exactly as the Go routers read it.

    The body is decoded as Go's HTTP handlers decode it (``json.Decoder.Decode``: the first
    JSON value; bytes after it are ignored) into the reference's request struct, of which the
    ``model`` string and the ``messages`` array are checked; then each message contributes
    ``role + "\\n" + content + "\\n"`` as in :func:`messages_prefix_source`. The rules that a
    decoded mapping cannot show are applied too:

    - duplicate keys: the last wins, but a ``null`` role leaves the role as it was (a
      ``null`` content clears the content); a second ``messages`` array decodes into the
      first one's messages, so keys it lacks keep their earlier values;
    - keys match by exact name, else by Unicode simple case folding (``"ROLE"``,
      ``"meſſages"`` with a long s);
    - invalid UTF-8 bytes and escaped lone surrogates decode to U+FFFD;
    - a value Go's decoder rejects fails the request: a non-string ``role``, ``name``,
      ``tool_call_id`` or ``model``, a message that is not an object, a number beyond the
      float64 range inside ``content``, ill-typed ``tool_calls``, invalid JSON, a leading
      byte-order mark, nesting deeper than 10000 levels.

    Only the ``model`` and ``messages`` fields are checked: a type error in another field of
    the reference's request struct also fails the Go request, but not this function.

    Args:
        body: the request body as received (``str`` is taken as already-decoded text).

    Returns:
        The prefix source; ``""`` for an empty body, ``null`` or no messages; ``None`` when
        Go's decoder rejects the body (the Go router answers 400 and routes nothing).

    Never raises. Complexity: O(len(body)).

    >>> messages_prefix_source_from_body(b'{"messages": [{"Role": "o", "role": null}]}')
    'o\\n\\n'
    >>> messages_prefix_source_from_body(b'{"messages": [{"role": 5}]}') is None
    True
    """
    try:
        if not isinstance(body, _TEXT_OR_BYTES):
            return None
        if not body:
            return ""
        doc = loads(body, first_value_only=True)
        if doc is None:
            return ""
        if type(doc) is not Pairs:
            return None
        messages: GoSlice | None = None
        for key, value in doc:
            name = _REQUEST.match(key)
            if name == "messages":
                messages = decode_slice(messages, value, name, _decode_message, _Message)
            elif name == "model":
                decode_string("", value, name)
    except GoJSONError:
        return None
    except Exception:  # never raise into request handling
        return None
    if messages is None:
        return ""
    out: list[str] = []
    for message in messages.items():
        out.append(message.role)
        out.append("\n")
        out.append(_content_text(message.content))
        out.append("\n")
    return "".join(out)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

#: Go's ``unicode.IsSpace`` set (``strings.TrimSpace`` in the reference): Python's
#: ``str.isspace`` minus the ASCII separators U+001C..U+001F, which Go does not trim.
_GO_SPACE: Final = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_MODEL_ONLY: Final = GoStruct(("model",))


def _model_from_pairs(pairs: Iterable[tuple[object, object]]) -> str:
    # Go's encoding/json (the reference) matches keys case-insensitively, lets the last
    # occurrence win, leaves the field unset for null, and fails on a non-string value.
    model = ""
    for key, value in pairs:
        if type(key) is not str or _MODEL_ONLY.match(key) is None or value is None:
            continue
        if not isinstance(value, str):
            return ""
        model = value
    # A decoded mapping may hold a lone surrogate; Go's decoder never yields one.
    return _LONE_SURROGATE.sub("\ufffd", model)


def extract_model(query_model: object, body: object) -> str:
    """The model a request names: the query parameter, else the JSON body's ``"model"``.

    Rules, in order:

    1. a non-blank ``query_model`` string (``str``, or UTF-8 ``bytes``) wins, returned as
       given (not stripped); blank means only Go ``unicode.IsSpace`` characters, as the
       reference's ``strings.TrimSpace`` (so U+001C..U+001F are not blank);
    2. else the top-level ``"model"`` string of the JSON ``body`` (``bytes``, ``bytearray``,
       ``memoryview`` or ``str``; a decoded ``Mapping`` is read directly), read with the
       rules every decoder of network input shares (:mod:`clusterrouting._gojson`, Go's
       ``encoding/json`` ones): each invalid UTF-8 byte and each escaped lone surrogate
       becomes U+FFFD, the key matches by exact name or Unicode simple case folding and the
       last occurrence wins, ``null`` leaves it unset, a non-string value, a non-object
       document or invalid JSON (``NaN``, nesting deeper than 10000 levels) gives ``""``;
    3. else ``""`` (empty or missing body, any other type).

    Never raises, whatever the input (deep nesting, huge numbers, junk types).

    Args:
        query_model: the ``model`` query parameter, or ``None``.
        body: the raw request body.

    Returns:
        The model name, or ``""``.

    Complexity: O(len(body)) (one JSON parse).

    >>> extract_model("", b'{"model": "qwen", "messages": []}')
    'qwen'
    >>> extract_model("llama", b'{"model": "qwen"}')
    'llama'
    >>> extract_model(None, b"not json")
    ''
    """
    try:
        if isinstance(query_model, bytes):
            query_model = query_model.decode("utf-8", "replace")
        if isinstance(query_model, str) and query_model.strip(_GO_SPACE):
            return query_model
        if isinstance(body, Mapping):
            return _model_from_pairs(body.items())
        if not isinstance(body, _TEXT_OR_BYTES) or not body:
            return ""
        try:
            doc = loads(body)
        except GoJSONError:
            return ""
        return _model_from_pairs(doc) if isinstance(doc, Pairs) else ""
    except Exception:  # never raise into request handling (RecursionError included)
        return ""
