"""``llm-d-default-current``: llm-d's EPP default profile after the fact sheet's pin
(llm-d-router PRs #1160, #1548, #1018/#1445, #2515/#2709), against the pinned
``llm-d-default``. Each case is written from the stored llm-d-router source cited in
``LlmdCurrentPolicy``'s docstring."""

from __future__ import annotations

import pytest
from peer_cases import rq, view

from clusterrouting import InvalidRecordError
from prefixcache.replay import (
    PEER_POLICIES,
    ClusterModel,
    LlmdCurrentPolicy,
    LlmdDefaultPolicy,
    Request,
    make_policy,
)
from prefixcache.replay._peer_llmd import MAX_PREFIX_TOKENS, MIN_CHUNK_TOKENS, TieRotation


def current(
    replicas: int = 2, block_tokens: int = 16, cache_blocks: int | None = None
) -> LlmdCurrentPolicy:
    p = make_policy(
        "llm-d-default-current",
        ClusterModel(replicas=replicas, block_tokens=block_tokens, cache_blocks=cache_blocks),
    )
    assert isinstance(p, LlmdCurrentPolicy)
    return p


def pinned(
    replicas: int = 2, block_tokens: int = 16, cache_blocks: int | None = None
) -> LlmdDefaultPolicy:
    p = make_policy(
        "llm-d-default",
        ClusterModel(replicas=replicas, block_tokens=block_tokens, cache_blocks=cache_blocks),
    )
    assert isinstance(p, LlmdDefaultPolicy) and not isinstance(p, LlmdCurrentPolicy)
    return p


# --- registration -------------------------------------------------------------------------


def test_the_current_profile_is_a_peer_next_to_the_pinned_one() -> None:
    assert PEER_POLICIES.index("llm-d-default-current") == PEER_POLICIES.index("llm-d-default") + 1
    assert current().name == "llm-d-default-current"
    # The pinned model is untouched: 64-character chunks, at most 256, random ties.
    p = pinned()
    assert p.name == "llm-d-default" and p.max_chunks == 256 and p._chunk == 64
    assert p._ties is None and not p.short_prompt_hash


def test_an_unknown_tie_break_is_refused() -> None:
    with pytest.raises(InvalidRecordError, match="tie_break"):
        LlmdDefaultPolicy(block_tokens=16, num_gpu_blocks=None, tie_break="random")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["min_chunk_tokens", "max_prefix_tokens"])
@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_chunk_parameters_are_refused(name: str, value: object) -> None:
    with pytest.raises(InvalidRecordError, match=name):
        LlmdDefaultPolicy(block_tokens=16, num_gpu_blocks=None, **{name: value})  # type: ignore[arg-type]


def test_the_pinned_cap_is_256_chunks_whatever_the_engine_block() -> None:
    # Counterfactual: a default max_prefix_tokens equal to 256 x 16 tokens would cap the
    # pinned model at 128 chunks for a 32-token engine block.
    p = LlmdDefaultPolicy(block_tokens=16, num_gpu_blocks=None, engine_block_tokens=32)
    assert (p.max_chunks, p._chunk) == (256, 128)


# --- 1. chunks of 4 x 64 characters (PR #1160) --------------------------------------------


def test_chunks_are_256_characters_at_the_64_token_floor() -> None:
    # GetBlockSize floors vLLM's B = 16 at 64 tokens: 256 characters, four 16-token trace
    # blocks (64 characters each) per chunk. Eight blocks are two chunks, each ending at the
    # end of its fourth block; the pinned model cuts the same text into eight.
    r = rq(tuple(range(1, 9)), bt=16)
    assert current()._chunk == 4 * MIN_CHUNK_TOKENS == 256
    assert current()._chunks(r) == [(4, 64), (8, 64)]
    assert pinned()._chunks(r) == [(b, 64) for b in range(1, 9)]
    # Five blocks: one full chunk and a trailing 64-character partial one in block 5.
    assert current()._chunks(rq((1, 2, 3, 4, 5), bt=16)) == [(4, 64), (5, 64)]


def test_an_engine_block_above_the_floor_is_kept() -> None:
    # The floor only raises: a 128-token engine block stays 128 tokens (512 characters).
    p = LlmdCurrentPolicy(block_tokens=16, num_gpu_blocks=None, engine_block_tokens=128)
    assert p._chunk == 512 and p.max_chunks == MAX_PREFIX_TOKENS // 128


def test_a_shared_head_scores_by_the_whole_prompt_at_chunk_granularity() -> None:
    # Pod 0 got blocks 1-4 (one chunk). A request for 1-8 matches that chunk of its two:
    # 0.5. The pinned model matches 4 of its 8 64-character chunks: also 0.5, but a request
    # sharing only blocks 1-3 matches 3/8 there and nothing here (its first chunk ends in
    # block 4, which differs).
    p, q = current(), pinned()
    v = view(2, waiting=[0, 0], kv_usage=[0.0, 0.5])
    assert p.choose(0, rq((1, 2, 3, 4), bt=16), 0.0, v) == 0
    assert q.choose(0, rq((1, 2, 3, 4), bt=16), 0.0, v) == 0
    assert p.prefix_scores(rq(tuple(range(1, 9)), bt=16), 2) == [0.5, 0.0]
    diverged = rq((1, 2, 3, 40, 50, 60, 70, 80), bt=16)
    assert p.prefix_scores(diverged, 2) == [0.0, 0.0]
    assert q.prefix_scores(diverged, 2) == [3 / 8, 0.0]


# --- 2. the 131,072-token cap (PR #1548) --------------------------------------------------


def test_at_most_131072_tokens_are_hashed() -> None:
    # maxBlocks = 131072 / 64 = 2048 chunks. With 1024-token trace blocks (4096 characters,
    # 16 chunks each) a 130-block prompt has 2080 chunks; only the first 128 blocks' count.
    p = current(block_tokens=1024)
    assert p.max_chunks == MAX_PREFIX_TOKENS // MIN_CHUNK_TOKENS == 2048
    long = rq(tuple(range(1, 131)), bt=1024)
    chunks = p._chunks(long)
    assert len(chunks) == 2048 and chunks[-1] == (128, 4096)
    # The pinned model stops at 256 64-character chunks: the first 4 blocks.
    assert pinned(block_tokens=1024)._chunks(long)[-1] == (4, 4096)
    # Two prompts differing only after token 131,072 are the same prompt to the scorer.
    v = view(2, waiting=[0, 0], kv_usage=[0.0, 0.5])
    assert p.choose(0, long, 0.0, v) == 0
    tail = rq((*range(1, 129), 900, 901), bt=1024)
    assert p.prefix_scores(tail, 2) == [1.0, 0.0]
    # One block less in common and the last chunk differs.
    other = rq((*range(1, 128), 900, 901, 902), bt=1024)
    assert p.prefix_scores(other, 2) == [2032 / 2048, 0.0]


# --- 3. a text shorter than one chunk gets one partial hash (PRs #1018, #1445) -----------


def test_a_short_prompt_gets_one_partial_hash_and_can_match() -> None:
    # 10 tokens = 40 characters, under one 256-character chunk. GetBlockHashes yields one
    # partial block; the pinned hashPrompt returned nil (score 0, nothing remembered).
    short = Request(arrival=0.0, input_tokens=10, output_tokens=1, blocks=(7,))
    p, q = current(), pinned()
    assert p._chunks(short) == [(7, 40)]
    assert q._chunks(short) == []
    v = view(2, waiting=[0, 0], kv_usage=[0.5, 0.0])
    assert p.choose(0, short, 0.0, v) == 1 and q.choose(0, short, 0.0, v) == 1
    assert p.prefix_scores(short, 2) == [0.0, 1.0]
    assert q.prefix_scores(short, 2) == [0.0, 0.0]
    # The repeat goes back to pod 1 even when pod 0 has less KV in use:
    # pod 0: 2 + 2 x 0.9 = 3.8; pod 1: 2 + 2 x 0.6 + 3 = 6.2 (pinned: 3.8 against 3.2).
    w = view(2, waiting=[0, 0], kv_usage=[0.1, 0.4])
    assert p.choose(1, short, 0.0, w) == 1 and q.choose(1, short, 0.0, w) == 0
    # An empty text still has no hash.
    assert p._chunks(Request(arrival=0.0, input_tokens=0, output_tokens=1, blocks=())) == []


# --- 4. ties rotate over the equal top scores (PRs #2515, #2709) --------------------------


def test_rotation_cycles_through_an_all_equal_group_evenly() -> None:
    # picker_test.go TestEqualScoreDistribution: 8 equal scores, 80 picks, 10 each, in
    # candidate order.
    t = TieRotation()
    picks = [t.pick([50.0] * 8) for _ in range(80)]
    assert picks[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    assert all(picks.count(k) == 10 for k in range(8))


def test_rotation_covers_only_the_top_group() -> None:
    # TestEqualScoreDistribution_WithLowerScoredCandidates: two top scores among six lower
    # ones alternate; the lower ones never win (the whole-list rotation of #2515 alone
    # would hand them wins).
    t = TieRotation()
    scores = [50.0, 50.0] + [0.0] * 6
    assert [t.pick(scores) for _ in range(6)] == [0, 1, 0, 1, 0, 1]
    # Top group in the middle of the list keeps its list order: 3, then 5.
    assert [t.pick([1.0, 2.0, 1.0, 3.0, 0.0, 3.0]) for _ in range(3)] == [3, 5, 3]


def test_a_unique_top_leaves_the_counter_and_a_smaller_group_resets_it() -> None:
    t = TieRotation()
    assert [t.pick([1.0, 1.0, 1.0]) for _ in range(2)] == [0, 1]
    assert t.counter == 2
    assert t.pick([0.0, 5.0, 1.0]) == 1 and t.counter == 2  # no tie: untouched
    # Group of 2 with counter 2: rotation 2 % 2 = 0, then 3 >= 2 resets to 0, so the next
    # pick over the same pair rotates by 0 again (counterfactual: an unbounded counter
    # would give 0, 1).
    assert [t.pick([4.0, 0.0, 4.0]) for _ in range(3)] == [0, 0, 2]


def test_the_policy_spreads_a_cold_fleet_in_replica_order() -> None:
    # Distinct prompts, equal queue and KV: every score ties at 2 + 2 = 4. The current
    # profile visits 0, 1, 2, 0; the pinned one shuffles (seeded), so not in that order.
    p = current(replicas=3)
    v = view(3, waiting=[0, 0, 0], kv_usage=[0.0, 0.0, 0.0])
    picks = [p.choose(i, rq((100 + i,), bt=16), 0.0, v) for i in range(6)]
    assert picks == [0, 1, 2, 0, 1, 2]
    q = pinned(replicas=3)
    assert [q.choose(i, rq((100 + i,), bt=16), 0.0, v) for i in range(6)] != picks


# --- unchanged: the LRU holds CacheNumBlocks entries, now of 64-token chunks --------------


def test_the_lru_holds_num_gpu_blocks_chunks_of_64_tokens() -> None:
    # One 512-token trace block of KV = 32 engine blocks of 16 tokens: 32 LRU entries
    # (makeserver: CacheNumBlocks), each now a 256-character chunk, so 32 x 64 = 2048
    # tokens remembered against the pod's 512.
    p = current(block_tokens=512, cache_blocks=1)
    assert p._cap == 32
    v = view(2, waiting=[0, 0], kv_usage=[0.0, 1.0])  # pod 0 wins every pick: 4 against 2
    for b in range(1, 34):  # 64-token prompts: one chunk each
        one = Request(arrival=0.0, input_tokens=64, output_tokens=1, blocks=(b,))
        assert p.choose(b, one, 0.0, v) == 0
    assert len(p.lru[0]) == 32 and (1, 256) not in p.holders and (2, 256) in p.holders
