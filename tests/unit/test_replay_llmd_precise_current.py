"""``llm-d-precise-current``: llm-d's precise-prefix-cache-routing guide after llm-d/llm-d
PRs #2071 and #2148 (affinity filter + token-load scorer over the precise producer, with
speculative indexing), with llm-d-router's tie rotation (#2515, #2709) and tier weights
(#2809), against the pinned ``llm-d-precise``. Each case is written from the stored source
cited in ``LlmdPreciseCurrentPolicy``'s docstring (llm-d-router @ebab6879:
``prerequest.go``, ``producer.go``, ``in_memory.go``, ``kvblock_scorer.go``,
``prefixcacheaffinity/plugin.go``, ``tokenload/token_load.go``, ``inflightload/producer.go``)."""

from __future__ import annotations

import pytest
from peer_cases import BT, rq, stored, view

from clusterrouting import InvalidRecordError
from prefixcache.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from prefixcache.replay import (
    PEER_POLICIES,
    ClusterModel,
    LlmdPreciseCurrentPolicy,
    LlmdPrecisePolicy,
    make_policy,
)
from prefixcache.replay._peer_llmd_precise import (
    DEFAULT_MAX_TTFT_PENALTY_MS,
    GUIDE_PEAK_PREFILL_TOKENS_PER_S,
    LlmdBlockIndex,
    LlmdSpeculativeIndex,
    affinity_candidates,
    token_load_scores,
)


def current() -> LlmdPreciseCurrentPolicy:
    return LlmdPreciseCurrentPolicy(block_tokens=BT)


def on_medium(*blocks: int, medium: str, parent: int | None = None) -> EventBatch:
    """One engine store of ``blocks`` on ``medium``."""
    return EventBatch(
        ts=0.0,
        events=(
            BlockStored(
                block_hashes=blocks,
                parent_block_hash=parent,
                token_ids=blocks,
                block_size=1,
                medium=medium,
            ),
        ),
    )


# --- registration -------------------------------------------------------------------------


def test_the_current_precise_profile_is_a_peer_next_to_the_pinned_one() -> None:
    assert PEER_POLICIES.index("llm-d-precise-current") == PEER_POLICIES.index("llm-d-precise") + 1
    p = make_policy("llm-d-precise-current", ClusterModel(replicas=2, block_tokens=BT))
    assert isinstance(p, LlmdPreciseCurrentPolicy) and p.reads_kv_events
    assert type(p.llmd_index) is LlmdSpeculativeIndex  # the engines' events reach it
    # The pinned model is untouched: its own index, no speculation.
    pinned = make_policy("llm-d-precise", ClusterModel(replicas=2, block_tokens=BT))
    assert type(pinned) is LlmdPrecisePolicy and type(pinned.llmd_index) is LlmdBlockIndex


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("peak_prefill_tokens_per_s", 0.0),
        ("peak_prefill_tokens_per_s", float("inf")),
        ("speculative_ttl_s", 0.0),
        ("speculative_ttl_s", float("nan")),
        ("speculative_ttl_s", True),
        ("speculative_ttl_s", None),
        ("peak_prefill_tokens_per_s", "fast"),
    ],
)
def test_bad_rates_and_ttls_are_refused(name: str, value: float) -> None:
    with pytest.raises(InvalidRecordError, match=name):
        LlmdPreciseCurrentPolicy(block_tokens=BT, **{name: value})  # type: ignore[arg-type]


# --- speculative indexing (prerequest.go, in_memory.go) -----------------------------------


def test_a_speculative_entry_makes_the_next_request_match_before_any_event() -> None:
    # PreRequest adds the routed pod on every key of the prompt. The second request then
    # matches 2/2 there (sticky) and stays, although pod 0 carries the first one's 20
    # uncached tokens. Counterfactual: without the entry no pod would match, and the
    # token-load scorer would send it to the idle pod 1.
    p = current()
    assert p.choose(0, rq((1, 2)), 0.0, view(2)) == 0
    assert p.in_flight_tokens == [2 * BT, 0]
    assert p.choose(1, rq((1, 2)), 0.5, view(2)) == 0
    # The pinned model sees nothing before the engines' events.
    pinned = LlmdPrecisePolicy(block_tokens=BT)
    assert pinned.llmd_index.runs((1, 2), 2) == [0.0, 0.0]


def test_a_speculative_entry_lives_until_its_ttl_and_expires_after() -> None:
    # ttlcache's isExpiredUnsafe: expiresAt.Before(now), so at exactly t + 2 s the entry
    # is still there; any later it is gone and the request goes by load.
    p = current()
    p.choose(0, rq((1, 2)), 0.0, view(2))
    assert p.choose(1, rq((1, 2)), 2.0, view(2)) == 0  # entry of t = 0 still present
    q = current()
    q.choose(0, rq((1, 2)), 0.0, view(2))
    assert q.choose(1, rq((1, 2)), 2.0001, view(2)) == 1  # expired: pod 0 is busier


def test_an_earlier_expiry_takes_the_pods_entry_even_after_a_later_re_add() -> None:
    # Evict by request key with the pod's one PodEntry{pod, Speculative}: the expiry of
    # request A removes the entry request B re-added. Counterfactual: a count per request
    # would keep pod 0 on blocks 1-2 until 3.0.
    idx = LlmdSpeculativeIndex()
    idx.speculate(0, (1, 2), expires_at=2.0)
    idx.speculate(0, (1, 2), expires_at=3.0)
    assert idx.expire(2.5) == ((0, (1, 2)),)
    assert idx.runs((1, 2), 1) == [0.0]
    assert idx.keys == {}
    assert idx.expire(3.5) == ((0, (1, 2)),)  # the second one: nothing left to take


def test_a_confirming_event_adds_beside_the_speculative_entry() -> None:
    # pool.go adds PodEntry{pod, "gpu"}; the speculative entry stays until its TTL and the
    # confirmed one outlives it.
    p = current()
    p.choose(0, rq((1, 2)), 0.0, view(2))
    p.on_kv_events(0, 0, stored(1, 2), 0.01)
    assert list(p.llmd_index.keys[1]) == [(0, ""), (0, "GPU")]
    assert p.llmd_index.runs((1, 2), 2) == [2.0, 0.0]  # best weight per block: 1.0
    p.llmd_index.expire(3.0)
    assert list(p.llmd_index.keys[1]) == [(0, "GPU")]
    assert p.llmd_index.runs((1, 2), 2) == [2.0, 0.0]


def test_an_expired_entry_is_gone_before_a_later_remove_is_applied() -> None:
    # ttlcache evicts at expiry, not at the next lookup: pod 0's speculative entry on block
    # 1 (t = 0) is gone when its remove arrives at 3 s, so the remove empties the block
    # and drops its engine mapping, and a store under block 1 is then skipped.
    # Counterfactual: expiring only at the next pick keeps the entry, the mapping and so
    # block 2.
    p = current()
    p.choose(0, rq((1,)), 0.0, view(2))
    p.on_kv_events(0, 0, stored(1), 0.01)
    p.on_kv_events(0, 1, EventBatch(ts=3.0, events=(BlockRemoved(block_hashes=(1,)),)), 3.0)
    p.on_kv_events(1, 0, stored(2, parent=1), 3.0)
    assert p.llmd_index.keys == {}


def test_speculative_entries_count_toward_the_ten_entries_per_key() -> None:
    # One PodCache LRU of podCacheSize = 10 per key holds both kinds: pods 0-9 store block
    # 1, then pod 5 is speculated there; the least recent entry (pod 0's) is dropped.
    idx = LlmdSpeculativeIndex()
    for pod in range(10):
        idx.apply(pod, stored(1))
    idx.speculate(5, (1,), expires_at=2.0)
    assert len(idx.keys[1]) == 10 and (0, "GPU") not in idx.keys[1]
    assert idx.runs((1,), 10) == [0.0] + [1.0] * 9


def test_a_clear_drops_the_pods_speculative_entries_too() -> None:
    # InMemoryIndex.Clear matches every entry by PodIdentifier, speculative ones included.
    idx = LlmdSpeculativeIndex()
    idx.speculate(0, (1, 2), expires_at=2.0)
    idx.speculate(1, (1, 2), expires_at=2.0)
    idx.apply(0, EventBatch(ts=0.0, events=(AllBlocksCleared(),)))
    assert idx.runs((1, 2), 2) == [0.0, 2.0]


def test_a_prompt_without_a_full_block_gets_no_speculative_entry() -> None:
    # No block key, so PreRequest has nothing to add (hasKeys is false).
    p = current()
    p.choose(0, rq((1,), tokens=BT - 1), 0.0, view(2))
    assert p.llmd_index.keys == {}


# --- tier weights (PR #2809) and the run by presence (kvblock_scorer.go) ------------------


@pytest.mark.parametrize(
    ("medium", "weight"),
    [("GPU", 1.0), ("cpu", 0.8), ("SHARED_STORAGE", 0.4), ("object_store", 0.2), ("DISK", 0.0)],
)
def test_tiers_weigh_as_pr_2809_sets_them(medium: str, weight: float) -> None:
    idx = LlmdSpeculativeIndex()
    idx.apply(0, on_medium(1, medium=medium))
    assert idx.runs((1,), 1) == [weight]


def test_a_zero_weight_tier_continues_the_run() -> None:
    # fillMaxWeights records the pod at weight 0 and Score keeps it active: block 1 on
    # DISK (0) then block 2 on GPU (1) scores 1.0. Counterfactual: the pinned index's
    # rule (a pod whose best weight is 0 drops out) would give 0; its unlisted tier
    # weighs 1.0, so it gives 2.0.
    idx = LlmdSpeculativeIndex()
    idx.apply(0, on_medium(1, medium="DISK"))
    idx.apply(0, on_medium(2, medium="GPU", parent=1))
    assert idx.runs((1, 2), 1) == [1.0]
    pinned = LlmdBlockIndex()
    pinned.apply(0, on_medium(1, medium="DISK"))
    pinned.apply(0, on_medium(2, medium="GPU", parent=1))
    assert pinned.runs((1, 2), 1) == [2.0]


def test_a_speculative_entry_weighs_one_beside_a_cpu_copy() -> None:
    idx = LlmdSpeculativeIndex()
    idx.apply(0, on_medium(1, medium="CPU"))
    idx.speculate(0, (1,), expires_at=2.0)
    assert idx.runs((1,), 1) == [1.0]


def test_the_match_is_the_weighted_run_truncated_so_the_threshold_reads_it() -> None:
    # produceFromBlockKeys: matchLen = int(weighted score). Five CPU blocks weigh 4.0:
    # match 4 of 5 = 0.8, sticky (>= is inclusive), so pod 0 wins although busier. Four
    # CPU blocks weigh 3.2 -> 3 of 4 = 0.75, two 1.6 -> 1 of 2 (rounding would make it 2
    # of 2): not sticky, so the idle pod 1 wins.
    for n, expected in ((5, 0), (4, 1), (2, 1)):
        p = current()
        blocks = tuple(range(1, n + 1))
        p.on_kv_events(0, 0, on_medium(*blocks, medium="CPU"), 0.0)
        p.in_flight_tokens = [1000, 0]
        assert p.choose(0, rq(blocks), 0.0, view(2)) == expected


# --- the affinity filter (prefixcacheaffinity/plugin.go) ----------------------------------


def test_the_filter_keeps_the_sticky_pods_or_everyone() -> None:
    assert affinity_candidates([0.8, 0.79, 1.0], [0.0] * 3) == [0, 2]
    assert affinity_candidates([0.5, 0.79], [0.0, 0.0]) == [0, 1]  # none sticky
    assert affinity_candidates([1.0], [0.0]) == [0]
    assert affinity_candidates([1.0, 0.0], [0.0, 0.0], threshold=0.0) == [0, 1]


def test_the_ttft_gate_breaks_stickiness_only_beyond_the_penalty() -> None:
    # bestSticky - bestNonSticky > MaxTTFTPenaltyMs keeps every pod; equal does not.
    pen = DEFAULT_MAX_TTFT_PENALTY_MS
    assert affinity_candidates([1.0, 0.0], [pen, 0.0]) == [0]
    assert affinity_candidates([1.0, 0.0], [pen + 1.0, 0.0]) == [0, 1]
    assert affinity_candidates([1.0, 1.0, 0.0], [pen + 1.0, 5.0, 0.0]) == [0, 1]  # best sticky
    assert affinity_candidates([1.0, 0.0], [1e9, 0.0], max_penalty_ms=0.0) == [0]


def test_the_gate_reads_in_flight_tokens_at_the_guides_prefill_rate() -> None:
    # TTFT_ms = inFlightTokens / 15926 x 1000: 18 s is 286,668 tokens. Pod 0 holds the
    # prompt; with 286,668 tokens in flight it keeps it, one more token and pod 1 wins.
    limit = int(DEFAULT_MAX_TTFT_PENALTY_MS / 1000 * GUIDE_PEAK_PREFILL_TOKENS_PER_S)
    for extra, expected in ((0, 0), (1, 1)):
        p = current()
        p.on_kv_events(0, 0, stored(1, 2), 0.0)
        p.in_flight_tokens = [limit + extra, 0]
        assert p.choose(0, rq((1, 2)), 0.0, view(2)) == expected


# --- the token-load scorer and the in-flight tokens (tokenload, inflightload) -------------


def test_token_load_scores_are_linear_to_the_threshold() -> None:
    assert token_load_scores([0, -5, 1, 4194304, 10**9]) == [1.0, 1.0, 1 - 1 / 4194304, 0.0, 0.0]
    assert token_load_scores([50, 100], threshold_tokens=100) == [0.5, 0.0]


def test_the_request_is_charged_its_uncached_tokens_on_each_pod() -> None:
    # uncachedInputTokens: (total - match) x B plus the tail past the last full block.
    # Request (1, 2, 3) of 35 tokens: pod 0 holds block 1 (uncached 25), pod 1 nothing
    # (35). 1/3 is not sticky; pod 0 has 8 tokens in flight: 33 < 35 wins. Counterfactual:
    # charging the whole prompt would give 43 > 35 and pod 1.
    p = current()
    p.on_kv_events(0, 0, stored(1), 0.0)
    p.in_flight_tokens = [8, 0]
    assert p.choose(0, rq((1, 2, 3), tokens=35), 0.0, view(2)) == 0
    assert p.in_flight_tokens == [8 + 25, 0]


def test_in_flight_tokens_leave_at_the_first_token_and_never_go_negative() -> None:
    # addEstimatedOutputTokens is off: StartOfStream releases the tokens
    # (releaseTokensEarly); decrementClamped keeps the counter >= 0.
    p = current()
    req = rq((1, 2))
    p.choose(7, req, 0.0, view(2))
    p.in_flight_tokens[0] = 5  # less than the 20 charged
    p.on_first_token(7, req, 0, 0.3)
    assert p.in_flight_tokens == [0, 0]
    p.on_first_token(7, req, 0, 0.4)  # a second call: nothing left to release
    assert p.in_flight_tokens == [0, 0]


# --- ties (picker/maxscore, PRs #2515, #2709) ----------------------------------------------


def test_equal_token_loads_rotate_through_the_pods() -> None:
    # Prompts shorter than one block: no key, no match, the same uncached tokens. With
    # each first token in before the next arrival the loads are equal and the picks
    # rotate 0, 1, 2, 0. Counterfactual: the pinned random shuffle is not periodic.
    p = current()
    picks = []
    for i in range(4):
        req = rq((1,), tokens=BT - 1)
        r = p.choose(i, req, float(i), view(3))
        p.on_first_token(i, req, r, i + 0.5)
        picks.append(r)
    assert picks == [0, 1, 2, 0]


def test_ties_rotate_among_the_sticky_pods_only() -> None:
    # The picker sees the filter's survivors in replica order: pods 1 and 2 hold the
    # prompt, so the picks alternate 1, 2 and never reach the idle pod 0.
    p = current()
    p.on_kv_events(1, 0, stored(1, 2), 0.0)
    p.on_kv_events(2, 0, stored(1, 2), 0.0)
    picks = []
    for i in range(4):
        req = rq((1, 2))
        r = p.choose(i, req, 10.0 * i, view(3))  # past each speculative TTL
        p.on_first_token(i, req, r, 10.0 * i + 0.5)
        picks.append(r)
    assert picks == [1, 2, 1, 2]


def test_when_every_pod_is_sticky_the_gate_has_nothing_to_compare() -> None:
    # plugin.go: the TTFT gate needs a non-sticky pod; with every pod sticky all stay,
    # whatever their TTFTs. Counterfactual: comparing against an empty set fails.
    assert affinity_candidates([1.0, 0.9], [5e7, 0.0]) == [0, 1]


def test_the_gate_compares_against_the_best_non_sticky_pod() -> None:
    # bestNonSticky is the lowest TTFT among the non-sticky pods (0 ms here), so the gap
    # is penalty + 1 and stickiness breaks. Counterfactual: the worst one (10 ms) leaves
    # a gap under the penalty and keeps pod 0 alone.
    pen = DEFAULT_MAX_TTFT_PENALTY_MS
    assert affinity_candidates([1.0, 0.0, 0.0], [pen + 1.0, 10.0, 0.0]) == [0, 1, 2]


def test_re_speculating_refreshes_the_entrys_recency() -> None:
    # One PodCache LRU per key (in_memory.go): adding an entry already
    # there refreshes it. Pod 0 is speculated on block 1, pods 1-9 store it, pod 0 is
    # speculated again, then pod 10 stores it: the least recent is now pod 1's.
    # Counterfactual: without the refresh pod 0's speculative entry is dropped.
    idx = LlmdSpeculativeIndex()
    idx.speculate(0, (1,), expires_at=2.0)
    for pod in range(1, 10):
        idx.apply(pod, stored(1))
    idx.speculate(0, (1,), expires_at=2.0)
    idx.apply(10, stored(1))
    assert (0, "") in idx.keys[1] and (1, "GPU") not in idx.keys[1]


def test_speculative_entries_cover_only_the_full_blocks() -> None:
    # PreRequest adds the pod on the prompt's block keys: 25 tokens at B = 10 have two
    # full blocks; the partial third is never keyed. Counterfactual: speculating on every
    # trace block would key block 3.
    p = current()
    p.choose(0, rq((1, 2, 3), tokens=25), 0.0, view(2))
    assert sorted(p.llmd_index.keys) == [1, 2]
