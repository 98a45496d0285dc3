"""Chains: extract_chain, extract_token_chain, messages_prefix_source, extract_model."""

from __future__ import annotations

import math
import random
from collections import UserDict

import numpy as np
import pytest
from xxhash import xxh64_intdigest

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache import (
    DEFAULT_CONFIG,
    MAX_TOKEN_ID,
    Config,
    extract_chain,
    extract_model,
    extract_token_chain,
    messages_prefix_source,
)


def naive_chain(model: str, data: bytes, width: int, max_depth: int) -> tuple[int, ...]:
    """The chain's five steps, written out literally (an independent oracle)."""
    if not data:
        return ()
    depth = min(math.ceil(len(data) / width), max_depth)
    prev = xxh64_intdigest(model.encode(), seed=0)
    out = []
    for i in range(depth):
        prev = xxh64_intdigest(prev.to_bytes(8, "little") + data[i * width : (i + 1) * width], 0)
        out.append(prev)
    return tuple(out)


# -- the reference vectors -------------------------------------------------------------------
def test_known_vector_hello_world() -> None:
    assert extract_chain("modelX", "hello world") == (9021501245760295833,)
    # The literal oracle reproduces the vector too (it is a valid oracle).
    assert naive_chain("modelX", b"hello world", 256, 64) == (9021501245760295833,)


def test_known_vector_one_byte_windows_capped_at_depth_4() -> None:
    # Counterfactual: without max_depth there would be 10 elements.
    assert extract_chain("m", "abcdefghij", Config(window_bytes=1, max_depth=4)) == (
        17493264678289095806,
        3926068787593455989,
        8385462870431144644,
        17917319405532710197,
    )


def test_known_vector_first_block_ignores_what_follows() -> None:
    assert extract_chain("m", "a" * 300)[0] == 17227249611667229844
    assert extract_chain("m", "a" * 256)[0] == 17227249611667229844
    assert naive_chain("m", b"a" * 256, 256, 64) == (17227249611667229844,)


# -- the algorithm ----------------------------------------------------------------------------
def test_empty_prompt_is_empty_chain() -> None:
    assert extract_chain("m", "") == ()
    assert extract_chain("m", b"") == ()
    assert len(extract_chain("m", b"\x00")) == 1  # a NUL byte is data, not emptiness


def test_last_partial_block_is_hashed_short_not_padded() -> None:
    c = extract_chain("m", "abc", Config(window_bytes=2))
    salt = xxh64_intdigest(b"m")
    h0 = xxh64_intdigest(salt.to_bytes(8, "little") + b"ab")
    h1 = xxh64_intdigest(h0.to_bytes(8, "little") + b"c")
    assert c == (h0, h1)
    # Counterfactual: padding the short block with NUL would make these equal.
    assert extract_chain("m", "abc\x00", Config(window_bytes=2))[1] != h1


def test_max_depth_truncates_and_keeps_the_prefix() -> None:
    full = extract_chain("m", "x" * 1000, Config(window_bytes=10, max_depth=1000))
    assert len(full) == 100
    for d in (1, 2, 7, 99, 100, 101, 500):
        c = extract_chain("m", "x" * 1000, Config(window_bytes=10, max_depth=d))
        assert c == full[: min(d, 100)]
    assert len(extract_chain("m", "q" * (256 * 64 - 1))) == 64
    assert len(extract_chain("m", "q" * (256 * 63 + 1))) == 64


def test_model_salt_is_utf8_and_the_empty_model_is_allowed() -> None:
    for model in ("", "ü-model", "模型", "a\x00b"):
        salt = xxh64_intdigest(model.encode("utf-8"))
        h = xxh64_intdigest(salt.to_bytes(8, "little") + b"hi")
        assert extract_chain(model, "hi") == (h,)


def test_non_utf8_bytes_are_hashed_as_is() -> None:
    raw = b"\xff\xfe\x80 not utf-8"
    assert extract_chain("m", raw, Config(window_bytes=4)) == naive_chain("m", raw, 4, 64)
    text = "é" * 5  # 10 bytes, split inside characters by 3-byte windows
    cfg = Config(window_bytes=3, max_depth=64)
    assert extract_chain("m", text, cfg) == extract_chain("m", text.encode(), cfg)
    assert extract_chain("m", text, cfg) == naive_chain("m", text.encode(), 3, 64)


def test_random_prompts_match_the_literal_algorithm() -> None:
    # Seeded random windows, depths, lengths around the window and models, NUL included.
    rng = random.Random(20261129)
    alphabet = "ab é€😀\n\x00"
    for _ in range(400):
        w = rng.choice([1, 2, 3, 4, 7, 64, 256])
        d = rng.choice([1, 2, 3, 5, 64, 100])
        n = rng.choice([0, 1, 2, w - 1, w, w + 1, 3 * w, rng.randrange(0, 60 * w + 5)])
        prompt = "".join(rng.choice(alphabet) for _ in range(max(n, 0)))
        model = rng.choice(["", "m", "llama-3", "ü"])
        cfg = Config(window_bytes=w, max_depth=d)
        assert extract_chain(model, prompt, cfg) == naive_chain(model, prompt.encode(), w, d)


def test_common_full_leading_blocks_are_shared_exactly() -> None:
    cfg = Config(window_bytes=4)
    a = extract_chain("m", "aaaabbbbcc", cfg)
    b = extract_chain("m", "aaaabbbbcd", cfg)
    c = extract_chain("m", "aaaabbbb", cfg)
    assert a[:2] == b[:2] == c and a[2] != b[2]
    assert extract_chain("n", "aaaabbbb", cfg)[0] != c[0]  # the model salts everything


def test_last_block_may_be_short_and_is_hashed() -> None:
    long_chain = extract_chain("m", "a" * 300)
    assert len(long_chain) == 2
    assert long_chain[1] == naive_chain("m", b"a" * 300, 256, 64)[1]
    assert extract_chain("m", "a" * 256) == long_chain[:1]


@pytest.mark.parametrize(
    ("length", "expected_depth"),
    [(1, 1), (255, 1), (256, 1), (257, 2), (512, 2), (64 * 256, 64), (64 * 256 + 1, 64)],
)
def test_depth_is_ceil_len_over_window_capped_at_max_depth(
    length: int, expected_depth: int
) -> None:
    assert len(extract_chain("m", "x" * length)) == expected_depth


@pytest.mark.parametrize("blocks", [1, 2, 46, 47, 48, 49, 50, 64, 200])
@pytest.mark.parametrize("tail", [0, 1, 255])
def test_matches_literal_algorithm_around_the_vectorised_threshold(blocks: int, tail: int) -> None:
    # The implementation switches to a numpy block cut at 48 blocks; both paths must agree
    # with the literal algorithm.
    data = bytes((i * 7 + 3) % 256 for i in range(blocks * 256 + tail))
    cfg = Config(max_depth=1000)
    assert extract_chain("model", data, cfg) == naive_chain("model", data, 256, 1000)
    assert extract_chain("model", data) == naive_chain("model", data, 256, 64)


def test_blocks_are_bytes_and_may_split_a_multibyte_character() -> None:
    prompt = "é€"  # 2 + 3 UTF-8 bytes
    cfg = Config(window_bytes=2, max_depth=10)
    chain = extract_chain("m", prompt, cfg)
    assert len(chain) == 3  # ceil(5 / 2): a character-based split would give 1 or 2
    assert chain == naive_chain("m", prompt.encode(), 2, 10)


@pytest.mark.parametrize("text", ["a" * 20_000, "é" * 20_000, "x€" * 9_000, "a" * 16_383 + "€€"])
def test_long_text_prompts_hash_only_the_encoded_prefix_correctly(text: str) -> None:
    # Only the first max_depth * W characters are encoded; the chain must equal the one
    # over the full encoding (a multibyte character may straddle the last hashed byte).
    assert extract_chain("m", text) == naive_chain("m", text.encode(), 256, 64)
    small = Config(window_bytes=3, max_depth=5)
    assert extract_chain("m", text, small) == naive_chain("m", text.encode(), 3, 5)


def test_bytes_like_prompts_equal_their_text() -> None:
    text = "hello, 世界" * 40
    data = text.encode()
    assert extract_chain("m", data) == extract_chain("m", text)
    assert extract_chain("m", bytearray(data)) == extract_chain("m", text)
    assert extract_chain("m", memoryview(data)) == extract_chain("m", text)


def test_model_salts_every_hash() -> None:
    a = extract_chain("model-a", "same prompt " * 50)
    b = extract_chain("model-b", "same prompt " * 50)
    assert len(a) == len(b) == 3
    assert all(x != y for x, y in zip(a, b, strict=True))


def test_default_config_is_used() -> None:
    assert extract_chain("m", "q" * 1000) == extract_chain("m", "q" * 1000, DEFAULT_CONFIG)


def test_elements_are_uint64() -> None:
    for h in extract_chain("m", "z" * 5000):
        assert 0 <= h < 2**64


def test_lone_surrogates_do_not_fail_routing() -> None:
    # Not UTF-8-encodable; chosen behaviour: hashed as CPython's surrogatepass bytes.
    assert extract_chain("m", "a\ud800b") == naive_chain(
        "m", "a\ud800b".encode("utf-8", "surrogatepass"), 256, 64
    )


@pytest.mark.parametrize("model", [None, 3, b"m"])
def test_non_str_model_is_a_typed_error(model: object) -> None:
    with pytest.raises(InvalidRecordError, match="model") as info:
        extract_chain(model, "hi")  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, ClusterRoutingError)


@pytest.mark.parametrize("prompt", [None, 3, ["a"]])
def test_non_text_prompt_is_a_typed_error(prompt: object) -> None:
    with pytest.raises(InvalidRecordError, match="prompt"):
        extract_chain("m", prompt)  # type: ignore[arg-type]


@pytest.mark.parametrize("config", [None, {"window_bytes": 4}, 256])
def test_non_config_is_a_typed_error(config: object) -> None:
    with pytest.raises(InvalidRecordError, match="config"):
        extract_chain("m", "hi", config)  # type: ignore[arg-type]


# -- token chains -----------------------------------------------------------------------------
def le_u32(tokens: list[int]) -> bytes:
    return b"".join(t.to_bytes(4, "little") for t in tokens)


def test_token_chain_is_the_byte_chain_of_little_endian_uint32() -> None:
    tokens = [0, 1, 255, 256, 65536, MAX_TOKEN_ID, 7, 8, 9]
    got = extract_token_chain("m", tokens, block_tokens=2)
    assert got == naive_chain("m", le_u32(tokens), 8, 10**9)
    assert len(got) == 5  # the trailing partial block (one token) is hashed


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint32, np.uint64, np.uint16, np.uint8, np.int16]
)
def test_numpy_arrays_of_any_integer_dtype_equal_lists(dtype: type) -> None:
    tokens = [(i * 37) % 250 for i in range(1000)]
    expected = extract_token_chain("m", tokens, block_tokens=16)
    assert extract_token_chain("m", np.array(tokens, dtype=dtype), block_tokens=16) == expected


def test_token_chain_of_a_prefix_is_a_prefix() -> None:
    ids = list(range(1, 11))
    c = extract_token_chain("m", ids, block_tokens=4)
    assert len(c) == 3
    assert extract_token_chain("m", np.array(ids, dtype=np.int64), block_tokens=4) == c
    assert extract_token_chain("m", ids[:8], block_tokens=4) == c[:2]


def test_token_arrays_big_endian_and_strided() -> None:
    tokens = [(i * 7919) % 60_000 for i in range(300)]
    expected = extract_token_chain("m", tokens, block_tokens=8)
    for dtype in (">i4", ">u4", ">i8", "<i8", ">u2"):
        arr = np.array(tokens, dtype=dtype)
        assert extract_token_chain("m", arr, block_tokens=8) == expected, dtype
    wide = np.zeros(600, dtype=np.int32)
    wide[::2] = tokens
    assert extract_token_chain("m", wide[::2], block_tokens=8) == expected


def test_token_sequences_of_other_kinds() -> None:
    expected = extract_token_chain("m", [1, 2, 3, 4, 5], block_tokens=2)
    assert extract_token_chain("m", (1, 2, 3, 4, 5), block_tokens=2) == expected
    assert extract_token_chain("m", range(1, 6), block_tokens=2) == expected
    assert extract_token_chain("m", [np.int64(t) for t in range(1, 6)], block_tokens=2) == expected


def test_token_chain_long_input_uses_every_block() -> None:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 150_000, size=32_768, dtype=np.int32)
    chain = extract_token_chain("m", arr, block_tokens=16)
    assert len(chain) == 2048
    assert chain == naive_chain("m", arr.astype("<u4").tobytes(), 64, 10**9)


def test_token_chain_max_depth() -> None:
    tokens = list(range(100))
    full = extract_token_chain("m", tokens, block_tokens=4)
    assert extract_token_chain("m", tokens, block_tokens=4, max_depth=3) == full[:3]
    assert extract_token_chain("m", np.array(tokens), block_tokens=4, max_depth=1000) == full


def test_token_chain_empty() -> None:
    assert extract_token_chain("m", [], block_tokens=4) == ()
    assert extract_token_chain("m", np.array([], dtype=np.int64), block_tokens=4) == ()


def test_token_id_boundaries_are_accepted() -> None:
    # 0 and 2**32 - 1 are the inclusive ends of the range.
    assert len(extract_token_chain("m", [0, MAX_TOKEN_ID], block_tokens=1)) == 2
    assert len(extract_token_chain("m", np.array([0, MAX_TOKEN_ID]), block_tokens=1)) == 2


@pytest.mark.parametrize(
    ("tokens", "where", "bad"),
    [
        ([1, -1], "token_ids[1]", "-1"),
        ([2**32], "token_ids[0]", "4294967296"),
        ([3, 4, 1.5], "token_ids[2]", "1.5"),
        ([3, "4"], "token_ids[1]", "'4'"),
        (np.array([5, -5, 6]), "token_ids[1]", "-5"),
        (np.array([2**32], dtype=np.int64), "token_ids[0]", "4294967296"),
        (np.array([2**63], dtype=np.uint64), "token_ids[0]", str(2**63)),
    ],
)
def test_bad_token_ids_name_position_and_value(tokens: object, where: str, bad: str) -> None:
    with pytest.raises(InvalidRecordError) as info:
        extract_token_chain("m", tokens, block_tokens=2)  # type: ignore[arg-type]
    assert where in str(info.value)
    assert bad in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "tokens", ["abc", b"abc", np.array([1.0, 2.0]), np.zeros((2, 2), dtype=np.int32)]
)
def test_bad_token_containers_are_typed_errors(tokens: object) -> None:
    with pytest.raises(InvalidRecordError, match="token_ids"):
        extract_token_chain("m", tokens, block_tokens=2)  # type: ignore[arg-type]


@pytest.mark.parametrize("block_tokens", [0, -1, 1.5, True, None])
def test_block_tokens_must_be_positive_int(block_tokens: object) -> None:
    with pytest.raises(InvalidRecordError, match="block_tokens"):
        extract_token_chain("m", [1, 2], block_tokens=block_tokens)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_depth", [0, -3, 2.0])
def test_token_max_depth_must_be_positive_int(max_depth: object) -> None:
    with pytest.raises(InvalidRecordError, match="max_depth"):
        extract_token_chain("m", [1, 2], block_tokens=1, max_depth=max_depth)  # type: ignore[arg-type]


def test_token_chain_non_str_model() -> None:
    with pytest.raises(InvalidRecordError, match="model"):
        extract_token_chain(b"m", [1], block_tokens=1)  # type: ignore[arg-type]


# -- messages_prefix_source -------------------------------------------------------------------
def test_messages_role_newline_content_newline_in_order() -> None:
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    assert messages_prefix_source(msgs) == "system\nS\nuser\nU\nassistant\nA\n"


def test_messages_content_parts_concatenate_text_parts_only() -> None:
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look at "},
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                {"type": "text", "text": "this"},
                "junk",
                {"type": "text", "text": 5},
            ],
        }
    ]
    assert messages_prefix_source(msgs) == "user\nlook at this\n"


@pytest.mark.parametrize("content", [None, 5, {"text": "x"}, 1.5])
def test_messages_other_content_contributes_nothing(content: object) -> None:
    assert messages_prefix_source([{"role": "user", "content": content}]) == "user\n\n"


def test_messages_mixed_content_kinds_in_order() -> None:
    msgs = [
        {"role": "system", "content": "S"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image_url"},
                {"type": "text", "text": "b"},
            ],
        },
        {"role": "assistant", "content": None},
        {"role": "tool", "content": 42},
        {"role": "user", "content": ""},
    ]
    assert messages_prefix_source(msgs) == "system\nS\nuser\nab\nassistant\n\ntool\n\nuser\n\n"


def test_messages_missing_or_bad_role_is_empty() -> None:
    assert messages_prefix_source([{"content": "c"}, {"role": 3, "content": "d"}]) == "\nc\n\nd\n"


def test_messages_objects_with_attributes() -> None:
    class Msg:
        def __init__(self, role: str, content: str) -> None:
            self.role = role
            self.content = content

    assert messages_prefix_source([Msg("user", "hi")]) == "user\nhi\n"


@pytest.mark.parametrize("messages", [None, "user", b"x", 5, {"role": "user"}, []])
def test_messages_not_a_list_gives_empty(messages: object) -> None:
    assert messages_prefix_source(messages) == ""  # type: ignore[arg-type]


def test_messages_feed_extract_chain() -> None:
    src = messages_prefix_source([{"role": "user", "content": "x" * 600}])
    assert extract_chain("m", src) == naive_chain("m", src.encode(), 256, 64)


# -- extract_model ----------------------------------------------------------------------------
def test_query_model_wins_as_given() -> None:
    assert extract_model("q", b'{"model": "b"}') == "q"
    assert extract_model(" q ", b'{"model": "b"}') == " q "  # not stripped


@pytest.mark.parametrize("query", [None, "", "   ", "\t\n"])
def test_blank_query_falls_back_to_body(query: object) -> None:
    assert extract_model(query, b'{"model": "b", "x": [1, 2]}') == "b"


def test_body_as_str_bytes_bytearray_memoryview_mapping() -> None:
    doc = '{"messages": [], "model": "m-1"}'
    for body in (doc, doc.encode(), bytearray(doc.encode()), memoryview(doc.encode())):
        assert extract_model(None, body) == "m-1"
    assert extract_model(None, {"model": "m-2"}) == "m-2"
    assert extract_model(None, UserDict({"model": "m-3"})) == "m-3"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", ""),
        (None, ""),
        (b"not json", ""),
        (b'{"model": 5}', ""),  # Go: a type error fails the decode
        (b'{"model": ["a"]}', ""),
        (b'["model", "x"]', ""),  # not an object
        (b'"model"', ""),
        (b"null", ""),
        (b"{}", ""),
        (b'{"messages": []}', ""),
        (b'{"model": "a"} trailing', ""),
        (b'{"model": "a", "t": NaN}', ""),  # Go rejects NaN
        (b'{"Model": "cased"}', "cased"),  # Go matches keys case-insensitively
        (b'{"MODEL": "upper"}', "upper"),
        (b'{"model": "first", "Model": "last"}', "last"),  # last occurrence wins
        (b'{"model": "kept", "model": null}', "kept"),  # null leaves it unset
        (b'{"model": "big", "n": ' + b"9" * 6000 + b"}", "big"),  # beyond int digit limit
        (b'{"model": "x\\u00e9"}', "xé"),
        (b'{"model": "\\ud800"}', "\ufffd"),  # Go decodes a lone surrogate to U+FFFD
        (b'{"model": "caf\xc3\xa9"}', "café"),
        (b'{"model": "bad\xff"}', "bad\ufffd"),  # invalid UTF-8 replaced, as Go does
        (b'{"model": "t\xe2\x82x"}', "t\ufffd\ufffdx"),  # one U+FFFD per bad byte (Go)
        (b'{"model": ""}', ""),
        (b"[" * 100_000, ""),  # RecursionError inside json
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, ""),
    ],
)
def test_body_model_rules(body: object, expected: str) -> None:
    assert extract_model("", body) == expected


@pytest.mark.parametrize("junk", [5, 1.5, object(), ["model"], ("m",), {1: 2}, b"\xff\xfe"])
def test_extract_model_never_raises_on_junk_bodies(junk: object) -> None:
    assert extract_model(None, junk) == ""


@pytest.mark.parametrize("junk", [5, 1.5, object(), ["model"], ("m",), {1: 2}])
def test_extract_model_ignores_junk_query_values(junk: object) -> None:
    assert extract_model(junk, junk) == ""


def test_query_bytes_are_decoded() -> None:
    assert extract_model(b"qb", None) == "qb"


@pytest.mark.parametrize(
    ("query", "body", "expected"),
    [
        ("q", b'{"model":"b"}', "q"),
        (" q ", b"", " q "),  # as given
        ("", b'{"model":"b"}', "b"),
        ("  ", b'{"model":"b"}', "b"),
        (None, b'{"model":"b"}', "b"),
        (None, b"", ""),
        (None, b"   ", ""),
        (None, b"null", ""),
        (None, b'"model"', ""),
        (None, b'["model", "b"]', ""),
        (None, b'{"x": {"model": "nested"}}', ""),  # top-level only
        (None, b'{"model": 1}', ""),
        (None, b'{"model": ["b"]}', ""),
        (None, b'{"model": "b"', ""),  # truncated
        (None, b'{"model": "b"} trailing', ""),
        (None, b"\xff\xfe", ""),
        (None, b'{"model": ""}', ""),
        (None, b'{"model": "b", "messages": [{"role": "user"}]}', "b"),
    ],
)
def test_extract_model_query_then_body_table(query: object, body: object, expected: str) -> None:
    # A non-blank query value wins (as given); else the top-level JSON "model" string of the
    # body; "" for non-JSON, a missing field or an empty body (never raises).
    assert extract_model(query, body) == expected


def test_extract_model_blank_is_go_whitespace() -> None:
    # "Blank" as in the reference (Go's strings.TrimSpace, i.e. unicode.IsSpace): NBSP, NEL
    # and U+3000 are blank, but the ASCII separators U+001C..U+001F (whitespace to Python's
    # str.strip) are not.
    for blank in ("\u00a0", "\u0085", "\u3000", " \t\r\n\v\f"):
        assert extract_model(blank, b'{"model":"b"}') == "b"
    for sep in ("\x1c", "\x1d", "\x1e", "\x1f"):
        assert extract_model(sep, b'{"model":"b"}') == sep


def test_extract_model_never_raises_on_deep_or_huge_bodies() -> None:
    for body in (b"[" * 100000, b'{"a":' * 50000, b"1" * 100000, b'{"model":' + b"9" * 5000 + b"}"):
        assert extract_model(None, body) == ""
    assert extract_model(None, object()) == ""
    assert extract_model(object(), None) == ""


@pytest.mark.parametrize("depth", [10, 2000, 9999])
def test_extract_model_deep_but_valid_json_still_reads_the_model(depth: int) -> None:
    # A document nested deeper than Python's recursion limit is still JSON to the reference
    # (Go's encoding/json accepts 10000 levels, the top-level object included).
    nest = b"[" * depth + b"]" * depth
    assert extract_model(None, b'{"model":"x","a":' + nest + b"}") == "x"
    assert extract_model(None, b'{"a":' + nest + b',"Model":"y"}') == "y"
    deep_obj = b'{"k":' * depth + b"1" + b"}" * depth
    assert extract_model(None, b'{"model":"z","a":' + deep_obj + b"}") == "z"


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"x","a":' + b"[" * 10000 + b"]" * 10000 + b"}",  # 10001 levels: too deep
        b'{"model":"x","a":' + b"[" * 3000 + b"]" * 2999 + b"}",  # unbalanced
        b'{"model":"x","a":' + b"[" * 3000 + b"]" * 3000 + b"} x",  # trailing junk
        b'{"model":"x","a":' + b"[" * 3000 + b"1,]" + b"]" * 2999 + b"}",  # trailing comma
        b"[" * 3000 + b"]" * 3000,  # not an object
    ],
)
def test_extract_model_deep_invalid_json_is_empty(body: bytes) -> None:
    assert extract_model(None, body) == ""


def test_extract_model_a_non_string_model_value_fails_even_after_a_string() -> None:
    # A non-string value is a decode error in the reference (Go's UnmarshalTypeError),
    # whatever came before; null leaves it unset.
    assert extract_model(None, b'{"model":"x","model":1}') == ""
    assert extract_model(None, b'{"model":"x","model":1.5e3}') == ""
    assert extract_model(None, b'{"model":"x","model":true}') == ""
    assert extract_model(None, b'{"model":"x","model":{}}') == ""
    assert extract_model(None, b'{"model":"x","model":null}') == "x"
    deep = b"[" * 3000 + b"]" * 3000
    assert extract_model(None, b'{"model":"x","model":1,"a":' + deep + b"}") == ""
    assert extract_model(None, b'{"model":"x","model":null,"a":' + deep + b"}") == "x"
