"""``prodstack-prefix`` against a string trie written from production-stack's
``prefixaware`` as its source reads (vllm-project/production-stack @a6c01db0:
``src/vllm_router/prefix/hashtrie.py``, ``src/vllm_router/routers/routing_logic.py``):
the same candidates on random traces, over the replay's stand-in text."""

from __future__ import annotations

import random
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from prefixcache.replay import ClusterModel, ClusterView, ProdstackPrefixPolicy, Request
from prefixcache.replay._peer_base import block_chars


def rq(blocks: tuple[int, ...], tokens: int) -> Request:
    return Request(arrival=0.0, input_tokens=tokens, output_tokens=1, blocks=blocks)


# --- a clean-room reference: the source's trie over the stand-in string --------------------


class RefHashTrie:
    """hashtrie.py in our words: a path of 128-character slices of the string from its start,
    the last one possibly shorter (``range(0, len, 128)``, l.56-57); each node a set of
    endpoints (l.28), the whole path written for one endpoint (l.66-75); the walk
    intersects from the available set and stops at a missing child or an empty
    intersection, keeping the last non-empty set (l.86-104). Chunks are keyed by their
    text, not their xxh64 (a collision-free hash)."""

    def __init__(self, chunk: int = 128) -> None:
        self.chunk = chunk
        self.root: dict[str, tuple[set[int], dict]] = {}

    def _pieces(self, s: str) -> list[str]:
        return [s[i : i + self.chunk] for i in range(0, len(s), self.chunk)]

    def insert(self, s: str, endpoint: int) -> None:
        children = self.root
        for piece in self._pieces(s):
            eps, children = children.setdefault(piece, (set(), {}))
            eps.add(endpoint)

    def match(self, s: str, available: set[int]) -> set[int]:
        sel, children = available, self.root
        for piece in self._pieces(s):
            if piece not in children:
                break
            eps, children = children[piece]
            if not eps & sel:
                break
            sel = eps & sel
        return sel


def stand_in(request: Request, bt: int, cpt: int) -> str:
    """The replay's stand-in text spelled out: each block's own text (same id, same text),
    the last block cut to its characters (fact sheet section 10). A block's text starts
    with a code point of its own, so texts differ as soon as their blocks do, however short
    the cut (random letters alone let two one-character tails collide)."""
    out = []
    for b, c in zip(request.blocks, block_chars(request, bt, cpt), strict=True):
        r = random.Random(b)
        letters = "".join(r.choice(string.ascii_letters) for _ in range(bt * cpt - 1))
        out.append((chr(0x10000 + b) + letters)[:c])
    return "".join(out)


@st.composite
def traces(draw: st.DrawFn) -> tuple[int, int, int, list[Request]]:
    bt = draw(st.sampled_from([10, 16, 32, 37, 100]))
    cpt = draw(st.integers(1, 4))
    reps = draw(st.integers(1, 4))
    prefixes: list[tuple[int, ...]] = [()]
    out, nxt = [], 1
    for _ in range(draw(st.integers(1, 25))):
        base = draw(st.sampled_from(prefixes))
        keep = base[: draw(st.integers(0, len(base)))]
        new = tuple(range(nxt, nxt + draw(st.integers(0 if keep else 1, 3))))
        nxt += len(new)
        blocks = keep + new
        prefixes.append(blocks)
        tokens = draw(st.integers(bt * (len(blocks) - 1) + 1, bt * len(blocks)))
        out.append(rq(blocks, tokens))
    return bt, cpt, reps, out


@settings(max_examples=scaled_examples(1.0), deadline=None)
@given(traces(), st.integers(0, 2**16))
def test_prodstack_prefix_agrees_with_a_string_hashtrie(
    case: tuple[int, int, int, list[Request]], seed: int
) -> None:
    # Counterfactual: chunk names that ignored the partial tail, or 64-character chunks,
    # disagree on these traces (review_53 mutants: 203 and 2,226 of ~4,000 decisions).
    bt, cpt, reps, reqs = case
    ours = ProdstackPrefixPolicy(block_tokens=bt, chars_per_token=cpt, seed=seed)
    ref = RefHashTrie()
    v = ClusterView(ClusterModel(replicas=reps, block_tokens=bt, chars_per_token=cpt))
    for i, q in enumerate(reqs):
        s = stand_in(q, bt, cpt)
        assert ours.candidates(q, reps) == sorted(ref.match(s, set(range(reps))))
        ref.insert(s, ours.choose(i, q, 0.0, v))
