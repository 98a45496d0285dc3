"""A trace's block ids stand for prefixes (``parse_trace``): a chained trace comes back
unchanged, and ids that are not chained are re-keyed per prefix, with a warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixcache.replay import TraceRekeyedWarning, ideal_hit_ratio, load_trace, parse_trace
from prefixcache.replay._sim import TOKEN_MASK


def lines(chains: list[list[int]]) -> list[str]:
    return [
        json.dumps({"timestamp": t, "input_length": len(c), "output_length": 1, "hash_ids": c})
        for t, c in enumerate(chains)
    ]


def test_ids_named_by_content_are_re_keyed_per_prefix_with_a_warning() -> None:
    # Block 4 follows 3 first, then 1: a second prefix, so a new id; block 5 repeats in
    # its own chain; [1, 4] again reuses the id its prefix got.
    with pytest.warns(TraceRekeyedWarning, match="^2 block ids .* with 2 fresh ids$"):
        reqs = parse_trace(lines([[1, 2], [3, 4], [1, 4], [5, 5], [1, 4]]))
    blocks = [r.blocks for r in reqs]
    top = 2**64 - 1
    assert blocks == [(1, 2), (3, 4), (1, top), (5, top - 1), (1, top)]
    # Leading ids seen before: 1 of [1, 4] (its 4 was cached under 3), all of the repeat.
    assert ideal_hit_ratio(reqs) == 3 / 10


def test_a_fresh_id_skips_ids_the_trace_uses() -> None:
    top = 2**64 - 1
    with pytest.warns(TraceRekeyedWarning, match="^1 block ids .* with 1 fresh ids$"):
        reqs = parse_trace(lines([[top, 7], [8, 7]]))
    assert [r.blocks for r in reqs] == [(top, 7), (8, top - 1)]


@st.composite
def chained(draw: st.DrawFn) -> list[list[int]]:
    """Chains from a random prefix tree: every id has one parent."""
    chains: list[list[int]] = []
    next_id = draw(st.integers(0, 2**64 - 1000))
    for _ in range(draw(st.integers(0, 12))):
        base = draw(st.sampled_from(chains)) if chains and draw(st.booleans()) else []
        keep = draw(st.integers(0, len(base)))
        chain = base[:keep]
        for _ in range(draw(st.integers(0, 5))):
            chain.append(next_id)
            next_id += 1
        chains.append(chain)
    return chains


@given(chains=chained())
def test_a_prefix_chained_trace_comes_back_unchanged_and_silent(chains: list[list[int]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reqs = parse_trace(lines(chains))
    assert [list(r.blocks) for r in reqs] == chains


@given(chains=st.lists(st.lists(st.integers(0, 6), max_size=6), max_size=10))
def test_after_re_keying_every_id_has_one_parent_and_equal_prefixes_keep_equal_ids(
    chains: list[list[int]],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reqs = parse_trace(lines(chains))
    parent: dict[int, int | None] = {}
    for r in reqs:
        prev = None
        for b in r.blocks:
            assert parent.setdefault(b, prev) == prev
            prev = b
    by_prefix: dict[tuple[int, ...], int] = {}
    for raw, r in zip(chains, reqs, strict=True):
        for k, b in enumerate(r.blocks):
            assert by_prefix.setdefault(tuple(raw[: k + 1]), b) == b
    assert len(set(by_prefix.values())) == len(by_prefix)  # and different prefixes differ


def test_the_warning_counts_ids_and_fresh_ids_and_points_at_the_caller(tmp_path: Path) -> None:
    # Id 5 stands under three prefixes (none, [1], [2]): one id, two fresh ids.
    text = lines([[1, 5], [5], [2, 5]])
    with pytest.warns(TraceRekeyedWarning, match="^1 block ids .* with 2 fresh ids$") as rec:
        parse_trace(text)
    assert rec[0].filename == __file__
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(text) + "\n")
    with pytest.warns(TraceRekeyedWarning) as rec:
        load_trace(path)
    assert rec[0].filename == __file__


def test_a_fresh_id_shares_no_stand_in_token_with_a_trace_id() -> None:
    # The replay's engines send a block's low 32 bits as its one token, and token-keyed
    # indexes (EngineIndex, llm-d-precise, Dynamo) key blocks by it: 2**64 - 1 would
    # share 2**32 - 1 with the first chain's block.
    with pytest.warns(TraceRekeyedWarning):
        reqs = parse_trace(lines([[2**32 - 1], [1, 5], [5]]))
    ids = {b for r in reqs for b in r.blocks}
    assert len({b & TOKEN_MASK for b in ids}) == len(ids) == 4
