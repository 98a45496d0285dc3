"""Peer routers' policies on small hand-made cases: the tiers, thresholds and tie-breaks
their sources document (one test group per router)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from peer_cases import BT, rq, stored, view

from prefixcache.kvevents import AllBlocksCleared, BlockRemoved, EventBatch
from prefixcache.replay import (
    PEER_POLICIES,
    AibrixPrefixCachePolicy,
    ClusterModel,
    ClusterView,
    DynamoKvPolicy,
    EngineIndex,
    LlmdDefaultPolicy,
    LlmdPrecisePolicy,
    ProdstackLoadAwarePolicy,
    ProdstackPrefixPolicy,
    RayPrefixAffinityPolicy,
    Request,
    SglangCacheAwarePolicy,
    SmgCacheAwarePolicy,
    make_policy,
    simulate,
    synthetic_trace,
)

# --- SGLang / SMG ----------------------------------------------------------------------


def test_sglang_hit_needs_rate_strictly_above_threshold() -> None:
    p = SglangCacheAwarePolicy(block_tokens=BT)
    v = view(2, [0, 0])
    assert p.choose(0, rq((1, 2, 3)), 0.0, v) == 0  # miss: min (in_flight, processed, idx)
    assert p.processed == [1, 0]
    # 3 of 10 blocks = rate 0.3 exactly: a miss -> the min-load worker, replica 1.
    ten = rq((1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    assert p.choose(1, ten, 0.0, v) == 1
    # 4 of 10 blocks cached on replica 0 (rate 0.4 > 0.3): its owner, though busier.
    p2 = SglangCacheAwarePolicy(block_tokens=BT)
    p2.choose(0, rq((1, 2, 3, 4)), 0.0, view(2, [0, 0]))
    assert p2.choose(1, ten, 0.0, view(2, [5, 0])) == 0


def test_sglang_global_switch_needs_both_thresholds() -> None:
    p = SglangCacheAwarePolicy(block_tokens=BT)
    p.choose(0, rq((1, 2)), 0.0, view(2, [0, 0]))  # replica 0 owns (1, 2)
    # spread 64 is not > 64: affinity holds.
    assert p.choose(1, rq((1, 2)), 0.0, view(2, [64, 0])) == 0
    # spread 65 > 64 and 65 > 1.5 x 0: the min-load worker.
    assert p.choose(2, rq((1, 2)), 0.0, view(2, [65, 0])) == 1
    # spread 65 but 200 <= 1.5 x 135: affinity holds.
    assert p.choose(3, rq((1, 2)), 0.0, view(2, [200, 135])) == 0


def test_sglang_owner_is_the_creator_of_the_deepest_node() -> None:
    p = SglangCacheAwarePolicy(block_tokens=BT)
    v = view(3, [0, 0, 0])
    p.choose(0, rq((1,)), 0.0, v)  # replica 0 creates node 1
    p.processed[0] = 5
    assert p.choose(1, rq((1, 2)), 0.0, view(3, [9, 0, 0])) == 0  # rate 0.5: owner 0
    # (1, 2) inserted for 0 again; a miss goes to min (in_flight, processed, index).
    assert p.choose(2, rq((7, 8)), 0.0, view(3, [0, 0, 0])) == 1


def test_sglang_legacy_miss_goes_to_the_smallest_tree() -> None:
    p = SglangCacheAwarePolicy(block_tokens=BT, miss_fallback="smallest_tree")
    p.choose(0, rq((1, 2, 3)), 0.0, view(2, [0, 0]))  # replica 0: 120 chars
    # replica 1 is busier, but its tree is empty.
    assert p.choose(1, rq((7,)), 0.0, view(2, [0, 50])) == 1


def test_sglang_eviction_trims_each_tenant_least_recent_first() -> None:
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=80, eviction_interval_s=10.0)
    v = view(1, [0])
    p.choose(0, rq((1, 2)), 0.0, v)
    p.choose(1, rq((5, 6)), 1.0, v)
    assert p.tree.chars[0] == 160
    p.choose(2, rq((9,)), 11.0, v)  # eviction pass first: the older (1, 2) go
    assert 1 not in p.tree.nodes and 5 in p.tree.nodes


def test_smg_least_loaded_owner_and_spill_gate() -> None:
    p = SmgCacheAwarePolicy(block_tokens=BT)
    p.choose(0, rq((1, 2)), 0.0, view(3, [0, 0, 0]))  # owner 0
    p.choose(1, rq((1, 2)), 0.0, view(3, [100, 0, 0]))  # spill: 100 > 1.5*33 and > 33+64
    assert sorted(p.tree.nodes[2]) == [0, 1]
    # Both own it now: the lower in-flight owner, even if replica 2 is idler.
    assert p.choose(2, rq((1, 2)), 0.0, view(3, [5, 3, 0])) == 1
    # No spill at 90 (not > 30 + 64): the owner keeps it.
    assert p.choose(3, rq((1, 2)), 0.0, view(3, [0, 90, 0])) == 0


def test_smg_ties_among_owners_are_random_but_seeded() -> None:
    picks = set()
    for seed in range(12):
        p = SmgCacheAwarePolicy(block_tokens=BT, seed=seed)
        p.choose(0, rq((1,)), 0.0, view(2, [0, 0]))
        p.choose(1, rq((1,)), 0.0, view(2, [200, 0]))  # spill: both own block 1
        picks.add(p.choose(2, rq((1,)), 0.0, view(2, [4, 4])))
    assert picks == {0, 1}


# --- llm-d --------------------------------------------------------------------------------


def test_llmd_default_scores_only_the_first_256_chunks() -> None:
    # 512-token blocks, engine block 16: 64-char chunks, 32 per block, 8 blocks scored.
    p = LlmdDefaultPolicy(block_tokens=512, num_gpu_blocks=None)
    v = ClusterView(ClusterModel(replicas=2))
    a = Request(arrival=0, input_tokens=512 * 10, output_tokens=1, blocks=tuple(range(10)))
    r = p.choose(0, a, 0.0, v)
    b = Request(arrival=0, input_tokens=512 * 10, output_tokens=1, blocks=(*range(8), 100, 101))
    assert p.prefix_scores(b, 2)[r] == 1.0  # differs only after 4k tokens: a full match
    assert p.prefix_scores(b, 2)[1 - r] == 0.0


def test_llmd_default_weighted_sum_and_random_ties() -> None:
    # pod 0 holds the prefix (3 x 1) but has the longest queue and half its KV used (2 x 0
    # + 2 x 0.5): 4; pod 1: 0 + 2 + 2 = 4. Exact tie: either, at random.
    def holding(seed: int = 0) -> LlmdDefaultPolicy:
        p = LlmdDefaultPolicy(block_tokens=BT, num_gpu_blocks=None, seed=seed)
        p.lru = [OrderedDict(), OrderedDict()]
        p.remember(0, p._chunks(rq((1, 2))))
        return p

    picks = set()
    for seed in range(16):
        p = holding(seed)
        picks.add(p.choose(0, rq((1, 2)), 0.0, view(2, waiting=[5, 0], kv_usage=[0.5, 0.0])))
    assert picks == {0, 1}
    p = holding()
    assert p.choose(0, rq((1, 2)), 0.0, view(2, waiting=[5, 0], kv_usage=[0.4, 0.0])) == 0


def test_llmd_default_walk_counts_every_holder_until_nobody_holds() -> None:
    p = LlmdDefaultPolicy(block_tokens=BT, num_gpu_blocks=None, engine_block_tokens=BT // 4)
    # chunk = 8 chars, 5 per block of 40; 15 chunks for 3 blocks.
    # Pod 2 kept block 3's hashes but lost the earlier ones (chained hashes: it did hold
    # the prefix once). The walk goes on while anybody holds the hash, so pod 2 scores too.
    chunks = p._chunks(rq((1, 2, 3)))
    assert len(chunks) == 15 and chunks[:2] == [(1, 8), (1, 16)] and chunks[-1] == (3, 40)
    p.lru = [OrderedDict(), OrderedDict(), OrderedDict()]
    p.remember(0, chunks[:5])
    p.remember(1, chunks[:10])
    p.remember(2, chunks[10:])
    assert p.prefix_scores(rq((1, 2, 3)), 3) == pytest.approx([5 / 15, 10 / 15, 5 / 15])
    q = LlmdDefaultPolicy(block_tokens=BT, num_gpu_blocks=None, engine_block_tokens=BT // 4)
    q.lru = [OrderedDict(), OrderedDict(), OrderedDict()]
    q.remember(0, chunks[:5])
    q.remember(1, chunks[:5])
    q.remember(2, chunks[10:])
    assert q.prefix_scores(rq((1, 2, 3)), 3) == pytest.approx([5 / 15, 5 / 15, 0.0])


def test_llmd_default_lru_holds_num_gpu_blocks_worth_of_chunks() -> None:
    # Engine block = trace block of 10 tokens: 40-char chunks, one per block; 2 blocks held.
    p = LlmdDefaultPolicy(block_tokens=BT, num_gpu_blocks=2, engine_block_tokens=BT)
    v = view(1)
    p.choose(0, rq((1, 2)), 0.0, v)
    p.choose(1, rq((3,)), 0.0, v)
    assert list(p.lru[0]) == [(2, 40), (3, 40)]
    assert set(p.holders) == {(2, 40), (3, 40)}  # the evicted chunk left the reverse map


def test_llmd_precise_reads_engine_events_only() -> None:
    p = LlmdPrecisePolicy(block_tokens=BT)
    p.on_kv_events(1, 0, stored(1, 2), 0.0)
    # run 2 of 2 full blocks: 2 x 1 on pod 1; the partial tail block is never keyed.
    r = rq((1, 2, 3), tokens=2 * BT + 5)
    assert p.choose(0, r, 0.0, view(2, waiting=[0, 0], kv_usage=[0.0, 0.0])) == 1
    # pod 1: 2 x 1 + 1 x 0 (longest queue) + 1 x 0.1 = 2.1 > pod 0: 0 + 1 + 1 = 2.
    assert p.choose(1, r, 0.0, view(2, waiting=[0, 3], kv_usage=[0.0, 0.9])) == 1
    # pod 1 with all its KV used: 2.0, a tie with pod 0, broken at random (seeded).
    picks = set()
    for seed in range(16):
        q = LlmdPrecisePolicy(block_tokens=BT, seed=seed)
        q.on_kv_events(1, 0, stored(1, 2), 0.0)
        picks.add(q.choose(0, r, 0.0, view(2, waiting=[0, 3], kv_usage=[0.0, 1.0])))
    assert picks == {0, 1}
    # nothing routed is recorded: only pod 1's stored blocks are in the index.
    assert p.llmd_index.runs((1, 2), 2) == [0.0, 2.0]


# --- Dynamo --------------------------------------------------------------------------------


def test_dynamo_cost_is_prefill_plus_decode_blocks() -> None:
    p = DynamoKvPolicy(block_tokens=BT)
    p.on_kv_events(0, 0, stored(1, 2, 3), 0.0)
    # 4 blocks (ISL 40): worker 0 overlaps 3 -> 1 + 4 = 5; worker 1: 4 + 4 = 8.
    assert p.choose(0, rq((1, 2, 3, 4)), 0.0, view(2)) == 0
    # booked: 10 uncached tokens in prefill, 4 active blocks on worker 0.
    assert p.active_prefill == [10, 0]
    cost, ovl = p.costs(rq((1, 2, 3, 4, 5)), 0.0, 2)
    # w0: prefill (10 + 50)/10 - 3 = 3; decode 4 active + (5 - 4 already active) = 5 -> 8
    # w1: prefill 5; decode 0 + 5 -> 10
    assert cost == [8.0, 10.0] and ovl == [3, 0]
    p.on_first_token(0, rq((1, 2, 3, 4)), 0, 0.0)
    assert p.active_prefill == [0, 0]
    p.on_complete(0, rq((1, 2, 3, 4)), 0, 0.0)
    assert p.active_blocks == [{}, {}]


def test_dynamo_ties_are_uniformly_random_and_approx_mode_expires() -> None:
    assert {
        DynamoKvPolicy(block_tokens=BT, seed=s).choose(0, rq((1,)), 0.0, view(3)) for s in range(20)
    } == {0, 1, 2}
    p = DynamoKvPolicy(block_tokens=BT, kv_events=False)
    assert p.name == "dynamo-kv-approx" and not p.reads_kv_events
    r = p.choose(0, rq((1, 2)), 0.0, view(2))
    p.on_first_token(0, rq((1, 2)), r, 0.0)
    p.on_complete(0, rq((1, 2)), r, 0.0)
    assert p.costs(rq((1, 2)), 100.0, 2)[1][r] == 2  # written at route time
    assert p.costs(rq((1, 2)), 119.999, 2)[1][r] == 2
    assert p.costs(rq((1, 2)), 120.0, 2)[1][r] == 0  # 120 s TTL: gone at its expiry


# --- production-stack -------------------------------------------------------------------


def test_prodstack_prefix_intersects_and_picks_uniformly() -> None:
    # 32-token blocks: 128 characters, one chunk each, named (block, 128).
    p = ProdstackPrefixPolicy(block_tokens=32)
    p.trie = {(1, 128): 0b011, (2, 128): 0b010, (3, 128): 0b100}  # endpoint bit masks
    assert p.candidates(rq((1, 2), bt=32), 3) == [1]
    assert p.candidates(rq((1, 3), bt=32), 3) == [0, 1]  # empty intersection: stop before it
    assert p.candidates(rq((9,), bt=32), 3) == [0, 1, 2]
    picks = {
        ProdstackPrefixPolicy(block_tokens=32, seed=s).choose(0, rq((9,), bt=32), 0.0, view(3))
        for s in range(20)
    }
    assert picks == {0, 1, 2}


def test_prodstack_prefix_pins_a_shared_first_block_to_one_endpoint() -> None:
    # No load signal: once block 0 is on one endpoint every later prompt starting with it
    # goes there (the bundled trace starts every prompt with the same block).
    trace = [  # 32-token blocks: 128 characters, one chunk each
        Request(arrival=float(t), input_tokens=64, output_tokens=1, blocks=(0, 100 + t))
        for t in range(20)
    ]
    model = ClusterModel(replicas=4, block_tokens=32)
    out = simulate(trace, make_policy("prodstack-prefix", model), model)
    assert len(set(out.replica)) == 1


def test_prodstack_loadaware_benefit_minus_relative_load() -> None:
    # 512-token blocks, two whole 256-token LMCache chunks each: at BT = 10 a 20-token
    # prompt is no whole chunk, LMCache matches nothing and the QPS fallback decides.
    p = ProdstackLoadAwarePolicy(block_tokens=512)
    p.on_kv_events(0, 0, stored(1, 2), 0.0)
    # pod 0: benefit 1, rel (4 - 2)/2 = 1 -> 0; pod 1: 0 - (0 - 2)/2 = 1 -> pod 1.
    assert p.choose(0, rq((1, 2), bt=512), 0.0, view(2, [4, 0])) == 1
    # pod 0: 1 - (2 - 1.5)/1.5 = 0.67; pod 1: 0 - (1 - 1.5)/1.5 = 0.33 -> pod 0.
    assert p.choose(1, rq((1, 2), bt=512), 0.0, view(2, [2, 1])) == 0
    # Equal scores go to the first endpoint. Two holders of a chunk never tie (LMCache
    # credits only the holder registered first), so the tie is between pods 0 and 1, which hold
    # nothing and carry the same load, while the holder, pod 2, is busy: 1 - 8/7 < 4/7.
    p2 = ProdstackLoadAwarePolicy(block_tokens=512)
    p2.on_kv_events(2, 0, stored(1), 0.0)
    assert p2.choose(0, rq((1,), bt=512), 0.0, view(3, [1, 1, 5])) == 0


def test_prodstack_loadaware_without_match_takes_the_lowest_qps() -> None:
    p = ProdstackLoadAwarePolicy(block_tokens=BT)
    assert p.choose(0, rq((5,)), 0.0, view(2, [0, 9])) == 0
    assert p.choose(1, rq((6,)), 1.0, view(2, [0, 9])) == 1  # 0 had one request
    assert p.choose(2, rq((7,)), 70.0, view(2, [0, 9])) == 0  # both aged out of 60 s


# --- AIBrix -----------------------------------------------------------------------------


def aibrix_hold(p: AibrixPrefixCachePolicy, block: int, pods: dict[int, float]) -> None:
    """Table entries for every 128-byte chunk of ``block``, a whole 1280-character block
    (``block_tokens=32 x BT``) written by ``pods`` at those times."""
    for end in range(128, 1281, 128):
        p.table[(block, end)] = dict(pods)


def test_aibrix_imbalance_restricts_matching_to_the_least_loaded() -> None:
    p = AibrixPrefixCachePolicy(block_tokens=32 * BT)  # 1280 chars: 10 chunks per block
    aibrix_hold(p, 1, {0: 0.0})
    one = Request(arrival=0, input_tokens=32 * BT, output_tokens=1, blocks=(1,))
    assert p.choose(0, one, 1.0, view(3, [10, 0, 0])) == 0  # spread 10: pod 0 matches
    # spread 17 > 16: only pods at the minimum may match; none holds it -> least in-flight.
    assert p.choose(1, one, 1.0, view(3, [17, 0, 5])) == 1
    # a write 20 min + 1 s ago no longer matches.
    p2 = AibrixPrefixCachePolicy(block_tokens=32 * BT)
    aibrix_hold(p2, 1, {2: 0.0})
    assert p2.choose(0, one, 1201.0, view(3, [0, 0, 1])) in (0, 1)


def test_aibrix_std_guard_and_partial_chunks() -> None:
    p = AibrixPrefixCachePolicy(block_tokens=32 * BT)
    aibrix_hold(p, 1, {0: 0.0, 1: 0.0})
    one = Request(arrival=0, input_tokens=32 * BT, output_tokens=1, blocks=(1,))
    # in-flight [9, 8, 0, 0]: mean 4.25, sample std 4.92 -> limit 14.1: pod 1 (fewer).
    assert p.choose(0, one, 0.0, view(4, [9, 8, 0, 0])) == 1
    # [16,16,0,0,0,...]: with 10 pods mean 3.2, std 6.7 -> 16.7 still fine; with the pods
    # at 15, 15 and 14 zeros mean 1.9 std 5.2 -> 12.3: both fail -> least in-flight.
    assert p.choose(1, one, 0.0, view(16, [15, 15] + [0] * 14)) >= 2
    # A prompt shorter than one 128-byte chunk has no hash at all.
    tiny = Request(arrival=0, input_tokens=10, output_tokens=1, blocks=(1,))
    p3 = AibrixPrefixCachePolicy(block_tokens=32 * BT)
    p3.choose(0, tiny, 0.0, view(2, [0, 0]))
    assert len(p3.table) == 0


# --- Ray -----------------------------------------------------------------------------------


def test_ray_threshold_is_inclusive_and_cold_goes_to_the_smallest_tree() -> None:
    p = RayPrefixAffinityPolicy(block_tokens=BT)
    p.choose(0, rq((1,)), 0.0, view(3, [0, 0, 0]))  # cold: all trees empty -> first, 0
    assert p.tree.chars == {0: 40}
    ten = rq((1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    # 1 of 10 blocks = rate 0.1 >= 0.1: the tenants of block 1, though replica 0 is busiest.
    assert p.choose(1, ten, 0.0, view(3, [7, 0, 0])) == 0
    # cold: smallest character totals are replicas 1 and 2; lowest queue, then list order.
    assert p.choose(2, rq((50,)), 0.0, view(3, [0, 3, 3])) == 1
    assert p.choose(3, rq((60,)), 0.0, view(3, [0, 3, 1])) == 2


def test_ray_at_a_threshold_of_zero_a_request_with_no_match_goes_to_the_lowest_queue() -> None:
    # prefix_aware_router.py @06c16f2f: with match_rate_threshold <= 0 a match rate of 0
    # passes, and the deepest matched node is the root, whose tenants are every replica;
    # the lowest queue wins, not the smallest tree (which the default threshold would use).
    def pick(threshold: float) -> int:
        p = RayPrefixAffinityPolicy(block_tokens=BT, match_rate_threshold=threshold)
        p.choose(0, rq((1,)), 0.0, view(2, [0, 0]))  # replica 0: 40 characters
        p.choose(1, rq((2, 3)), 0.0, view(2, [5, 0]))  # cold: the smaller tree, 1: 80
        assert p.tree.chars == {0: 40, 1: 80}
        return p.choose(2, rq((9,)), 0.0, view(2, [5, 0]))

    assert pick(0.0) == 1
    assert pick(0.1) == 0


# --- engine index ---------------------------------------------------------------------------


def test_engine_index_refcounts_restarts_and_gaps() -> None:
    idx = EngineIndex()
    assert idx.state(0) == "unknown"
    idx.apply(0, 0, stored(1, 2))
    idx.apply(0, 1, stored(1))  # a second copy of block 1
    rm = EventBatch(ts=0.0, rank=None, events=(BlockRemoved(block_hashes=(1,)),))
    idx.apply(0, 2, rm)
    assert idx.run(0, (1, 2)) == 2 and idx.state(0) == "exact"
    assert idx.overlaps((1, 2), 2) == [2, 0]
    idx.apply(0, 3, rm)
    assert idx.run(0, (1, 2)) == 0
    idx.apply(0, 5, stored(7))  # seq 4 lost
    assert idx.state(0) == "degraded"
    idx.apply(0, 0, stored(8))  # publisher restarted: everything before is gone
    assert idx.state(0) == "exact" and idx.run(0, (7,)) == 0 and idx.run(0, (8,)) == 1
    idx.apply(0, 1, stored(9, parent=8))  # a continuation is found under its parent
    assert idx.run(0, (8, 9)) == 2 and idx.run(0, (9,)) == 0
    clear = EventBatch(ts=0.0, rank=None, events=(AllBlocksCleared(),))
    idx.apply(0, 2, clear)
    assert idx.run(0, (8,)) == 0


def test_every_peer_runs_on_a_synthetic_trace_within_the_ideal() -> None:
    reqs = synthetic_trace(seed=2, sessions=40, duration_s=60.0)
    model = ClusterModel(replicas=3)
    for name in PEER_POLICIES:
        out = simulate(reqs, make_policy(name, model), model, speedup=4.0)
        assert sum(out.requests_per_replica) == len(reqs)
        assert all(0 <= k <= len(r.blocks) for k, r in zip(out.hit_blocks, reqs, strict=True))


# --- the shared character tree ----------------------------------------------------------


def test_char_tree_match_counts_leading_blocks_and_their_characters() -> None:
    from prefixcache.replay._peer_base import CharTree, TreeMatch

    tree = CharTree()
    tree.insert((1, 2), (100, 60), tenant=0)
    m = tree.match((1, 2, 3), (100, 60, 40))
    assert m == TreeMatch(blocks=2, chars=160, text=200)
    assert m.rate == 0.8
    # a gap ends the match: block 2 without block 1 in front counts nothing
    assert tree.match((5, 2), (10, 60)) == TreeMatch(blocks=0, chars=0, text=70)
    assert tree.match((), ()).rate == 0.0


@pytest.mark.parametrize("bad", [-1, 1.0, True, None])
def test_tree_match_counts_are_ints_at_least_zero(bad: object) -> None:
    from clusterrouting import InvalidRecordError
    from prefixcache.replay._peer_base import TreeMatch

    with pytest.raises(InvalidRecordError, match="chars"):
        TreeMatch(blocks=0, chars=bad, text=0)  # type: ignore[arg-type]
