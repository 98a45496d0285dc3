"""Laws of prefixcache's chains and decisions, as properties over generated inputs."""

from __future__ import annotations

import json

from hypothesis import assume, given
from hypothesis import strategies as st

from clusterrouting import within_load_guard
from prefixcache import (
    Candidate,
    Config,
    PrefixDecision,
    Pressure,
    ReplicaKey,
    extract_chain,
    extract_model,
    extract_token_chain,
    messages_prefix_source,
    select,
)
from prefixcache.strategies import candidate_lists, chains, prefix_decisions

configs = st.builds(
    Config,
    min_prefix_match=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    balance_abs_threshold=st.integers(0, 4),
    balance_rel_threshold=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
)
small_windows = st.builds(Config, window_bytes=st.integers(1, 40), max_depth=st.integers(1, 30))


# -- chains -------------------------------------------------------------------------------
@given(
    cfg=small_windows,
    k=st.integers(0, 12),
    common=st.data(),
    tails=st.tuples(st.binary(max_size=60), st.binary(max_size=60)),
)
def test_prompts_sharing_k_full_blocks_share_exactly_k_hashes(
    cfg: Config, k: int, common: st.DataObject, tails: tuple[bytes, bytes]
) -> None:
    w = cfg.window_bytes
    prefix = common.draw(st.binary(min_size=k * w, max_size=k * w))
    a, b = prefix + tails[0], prefix + tails[1]
    # The next block (k) must differ (or one prompt ends): that makes "exactly" k.
    assume(a[k * w : (k + 1) * w] != b[k * w : (k + 1) * w])
    ca, cb = extract_chain("m", a, cfg), extract_chain("m", b, cfg)
    shared = 0
    for x, y in zip(ca, cb, strict=False):
        if x != y:
            break
        shared += 1
    assert shared == min(k, cfg.max_depth, len(ca), len(cb))


@given(cfg=small_windows, data=st.binary(max_size=500), k=st.integers(0, 40))
def test_chain_of_a_block_aligned_prefix_is_a_prefix_of_the_chain(
    cfg: Config, data: bytes, k: int
) -> None:
    full = extract_chain("m", data, cfg)
    head = extract_chain("m", data[: k * cfg.window_bytes], cfg)
    assert full[: len(head)] == head
    assert len(full) == min(-(-len(data) // cfg.window_bytes), cfg.max_depth)


@given(text=st.text(max_size=300), cfg=small_windows)
def test_text_and_its_utf8_bytes_give_the_same_chain(text: str, cfg: Config) -> None:
    assert extract_chain("m", text, cfg) == extract_chain("m", text.encode(), cfg)


@given(
    tokens=st.lists(st.integers(0, 2**32 - 1), max_size=200),
    block=st.integers(1, 9),
)
def test_token_chain_is_the_byte_chain_of_the_encoding(tokens: list[int], block: int) -> None:
    data = b"".join(t.to_bytes(4, "little") for t in tokens)
    expected = extract_chain("m", data, Config(window_bytes=4 * block, max_depth=10**6))
    assert extract_token_chain("m", tokens, block_tokens=block) == expected


@given(
    common=st.lists(st.integers(0, 1000), max_size=40),
    tails=st.tuples(
        st.lists(st.integers(0, 1000), max_size=20), st.lists(st.integers(0, 1000), max_size=20)
    ),
    block=st.integers(1, 5),
)
def test_token_lists_sharing_k_full_blocks_share_k_hashes(
    common: list[int], tails: tuple[list[int], list[int]], block: int
) -> None:
    k = len(common) // block
    a, b = common[: k * block] + tails[0], common[: k * block] + tails[1]
    assume(a[k * block : (k + 1) * block] != b[k * block : (k + 1) * block])
    ca = extract_token_chain("m", a, block_tokens=block)
    cb = extract_token_chain("m", b, block_tokens=block)
    assert ca[:k] == cb[:k]
    if len(ca) > k and len(cb) > k:
        assert ca[k] != cb[k]


# -- request parsing never raises -----------------------------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
junk = st.one_of(
    st.binary(),
    st.floats(),
    st.lists(st.floats()).map(lambda v: json.dumps(v).encode()),
    st.text(),
    json_values,
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=6), json_values, max_size=4).map(
        lambda d: json.dumps(d).encode()
    ),
    st.builds(object),
)


@given(query=junk, body=junk)
def test_extract_model_never_raises_and_returns_str(query: object, body: object) -> None:
    assert isinstance(extract_model(query, body), str)


@given(model=st.text(min_size=1), extra=st.dictionaries(st.text(max_size=8), json_values))
def test_extract_model_reads_the_model_field(model: str, extra: dict[str, object]) -> None:
    doc = {k: v for k, v in extra.items() if k.lower() != "model"}
    doc["model"] = model
    assert extract_model("", json.dumps(doc).encode()) == model
    assert extract_model("", json.dumps(doc, ensure_ascii=False)) == model


@given(messages=json_values)
def test_messages_prefix_source_never_raises(messages: object) -> None:
    assert isinstance(messages_prefix_source(messages), str)  # type: ignore[arg-type]


# -- select -------------------------------------------------------------------------------
@st.composite
def select_inputs(draw: st.DrawFn) -> tuple[list[Candidate], object, Config]:
    cands = draw(candidate_lists())
    decision = draw(prefix_decisions([c.key for c in cands], thresholds=(0.3, 0.5)))
    return cands, decision, draw(configs)


@given(select_inputs())
def test_select_returns_a_candidate_key_or_none_for_empty(inp: tuple) -> None:  # type: ignore[type-arg]
    cands, decision, cfg = inp
    got = select(cands, decision, cfg)
    if not cands:
        assert got is None
    else:
        assert got in {c.key for c in cands}


@given(select_inputs())
def test_select_result_is_never_overloaded(inp: tuple) -> None:  # type: ignore[type-arg]
    cands, decision, cfg = inp
    assume(cands)
    got = select(cands, decision, cfg)
    load = {c.key: c.in_flight for c in cands}
    min_if = min(load.values())
    assert within_load_guard(
        load[got], min_if, slack=cfg.balance_abs_threshold, factor=cfg.balance_rel_threshold
    )


@given(
    cands=candidate_lists(min_size=1),
    pick=st.integers(0, 10),
    cfg=configs,
    extra=st.floats(0.0, 1.0),
)
def test_select_takes_an_acceptable_hot_iff_it_is_eligible(
    cands: list[Candidate], pick: int, cfg: Config, extra: float
) -> None:
    hot = cands[pick % len(cands)].key
    ratio = cfg.min_prefix_match + (1.0 - cfg.min_prefix_match) * extra  # >= threshold
    decision = PrefixDecision(hot, ratio, tuple(c.key for c in cands))
    load = {c.key: c.in_flight for c in cands}
    ok = within_load_guard(
        load[hot],
        min(load.values()),
        slack=cfg.balance_abs_threshold,
        factor=cfg.balance_rel_threshold,
    )
    # Eligible: the hot tier takes it. Overloaded: no tier can (the fallback's least
    # loaded candidate is always eligible).
    assert (select(cands, decision, cfg) == hot) == ok


@given(select_inputs())
def test_select_ignores_candidate_order(inp: tuple) -> None:  # type: ignore[type-arg]
    cands, decision, cfg = inp
    assert select(cands, decision, cfg) == select(list(reversed(cands)), decision, cfg)


# -- Pressure -----------------------------------------------------------------------------
@given(
    window=st.sampled_from([0.5, 1.0, 10.0, 60.0]),
    steps=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 10.0, 60.0]), max_size=60),
    probe=st.sampled_from([0.0, 0.25, 0.5, 1.0, 10.0, 60.0, 61.0]),
)
def test_pressure_count_matches_brute_force(
    window: float, steps: list[float], probe: float
) -> None:
    p = Pressure(window)
    now = 0.0
    recorded = []
    for s in steps:
        now += s
        p.record("m", now)
        recorded.append(now)
    at = now + probe
    assert p.count("m", at) == sum(1 for t in recorded if at - t <= window)


# -- strategies ---------------------------------------------------------------------------
@given(chains(min_size=1), chains(min_size=1))
def test_strategy_chains_never_reconverge(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    assert not set(a[i:]) & set(b[i:])


@given(candidate_lists(min_size=1))
def test_strategy_candidate_keys_are_distinct(cands: list[Candidate]) -> None:
    assert len({c.key for c in cands}) == len(cands)
    assert all(isinstance(c.key, ReplicaKey) for c in cands)
