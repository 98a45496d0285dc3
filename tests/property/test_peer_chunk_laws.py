"""``text_chunks`` (the peers' fixed-size chunk hashes over the stand-in text) against a
naive reference that spells the text out character by character."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from prefixcache.replay import Request
from prefixcache.replay._peer_base import block_chars, text_chunks


def naive(request: Request, bt: int, cpt: int, size: int, partial: bool) -> list[tuple[int, int]]:
    """Every character as (block, its 1-based offset in the block); a chunk is named by its
    last character."""
    text = [
        (b, k + 1)
        for b, c in zip(request.blocks, block_chars(request, bt, cpt), strict=True)
        for k in range(c)
    ]
    ends = list(range(size, len(text) + 1, size))
    if partial and len(text) % size:
        ends.append(len(text))
    return [text[e - 1] for e in ends]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Request, int, int, int, bool, int | None]:
    bt = draw(st.integers(1, 40))
    n = draw(st.integers(0, 8))
    blocks = tuple(draw(st.lists(st.integers(0, 50), min_size=n, max_size=n, unique=True)))
    tokens = draw(st.integers(max(0, bt * (n - 1)), bt * n)) if n else 0
    request = Request(arrival=0.0, input_tokens=tokens, output_tokens=1, blocks=blocks)
    cpt = draw(st.integers(1, 4))
    size = draw(st.integers(1, 300))
    limit = draw(st.none() | st.integers(0, 40))
    return request, bt, cpt, size, draw(st.booleans()), limit


@settings(max_examples=scaled_examples(1.0), deadline=None)
@given(cases())
def test_chunks_are_the_text_cut_from_its_start(
    case: tuple[Request, int, int, int, bool, int | None],
) -> None:
    request, bt, cpt, size, partial, limit = case
    want = naive(request, bt, cpt, size, partial)
    if limit is not None:
        want = want[:limit]
    assert text_chunks(request, bt, cpt, size, partial=partial, limit=limit) == want
