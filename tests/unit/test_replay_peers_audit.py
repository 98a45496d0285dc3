"""An audit of the peer policies against their sources: small hand-made cases whose
expected decision was worked out from the peer's own code (the file and function named
in each test), not from ours. ``test_replay_peers.py`` pins the fact sheet's headline
tiers; these cases cover what it leaves open: units, strict versus inclusive thresholds,
tie-break order, what is inserted and when, eviction order, one replica and all-equal
loads."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from peer_cases import BT, rq, stored, view
from test_replay_peers import aibrix_hold

from clusterrouting import InvalidRecordError
from prefixcache.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, EventBatch
from prefixcache.replay import (
    PEER_POLICIES,
    AibrixPrefixCachePolicy,
    ClusterModel,
    DynamoKvPolicy,
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
from prefixcache.replay._peer_llmd_precise import LlmdBlockIndex
from prefixcache.replay._peer_prodstack import LmcacheKvPool

# --- SGLang router / SMG cache_aware (smg @73da68ca) -------------------------------------


def test_sglang_one_replica_and_equal_loads_spread_misses_by_processed() -> None:
    # select_worker: min key (load, processed, idx); a miss goes there, processed += 1.
    one = SglangCacheAwarePolicy(block_tokens=BT)
    assert [one.choose(i, rq((100 + i,)), 0.0, view(1, [0])) for i in range(3)] == [0, 0, 0]
    p = SglangCacheAwarePolicy(block_tokens=BT)
    picks = [p.choose(i, rq((100 + i,)), 0.0, view(3, [2, 2, 2])) for i in range(4)]
    # Equal in-flight: processed 0,0,0 -> 0; then 1,0,0 -> 1; 1,1,0 -> 2; 1,1,1 -> 0.
    assert picks == [0, 1, 2, 0]
    assert p.processed == [2, 1, 1]


def test_sglang_global_switch_inserts_for_the_min_load_worker() -> None:
    # select_worker_min_load inserts the text for the min-load worker and bumps processed,
    # so the next request with that text (balanced again) follows the new owner only if
    # it created the node: the original creator stays the owner.
    p = SglangCacheAwarePolicy(block_tokens=BT)
    p.choose(0, rq((1, 2)), 0.0, view(2, [0, 0]))  # replica 0 creates (1, 2)
    assert p.choose(1, rq((1, 2)), 0.0, view(2, [100, 0])) == 1  # switch
    assert set(p.tree.nodes[2]) == {0, 1}
    assert p.processed == [1, 1]
    assert p.choose(2, rq((1, 2)), 0.0, view(2, [3, 0])) == 0  # owner: the creator


def test_sglang_owner_evicted_from_its_node_is_replaced_for_good() -> None:
    # match_prefix_with_counts: a stale last_tenant cache falls back to the first tenant
    # left on the node and *stores* it; the cached owner then stays even after the old
    # owner rejoins the node.
    p = SglangCacheAwarePolicy(block_tokens=BT)
    p.choose(0, rq((1, 2)), 0.0, view(3, [0, 0, 0]))  # owner 0
    p.choose(1, rq((1, 2)), 0.0, view(3, [100, 0, 0]))  # switch: replica 1 joins
    p.tree._remove(2, 0)  # replica 0 evicted from the deepest node (the whole [1, 2])
    assert p.choose(2, rq((1, 2)), 0.0, view(3, [0, 0, 0])) == 1
    p.choose(3, rq((1, 2)), 0.0, view(3, [0, 100, 50]))  # switch: replica 0 rejoins
    assert 0 in p.tree.nodes[2]
    assert p.choose(4, rq((1, 2)), 0.0, view(3, [0, 0, 0])) == 1


def test_sglang_eviction_removes_leaves_first() -> None:
    # evict_tenant_by_size: only (tenant, leaf node) entries enter the heap; a parent is
    # pushed when its last child with that tenant goes, so a prefix never loses a block
    # while a deeper block of the same tenant stays. (1, 2, 3) is one new leaf node (one
    # stamp); (5,) is later. Cap 2 blocks, 160 > 80: the node (1, 2, 3) goes whole, 40
    # <= 80, stop. Trimming block by block would stop at 80 with block 1 kept.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=80, eviction_interval_s=10.0)
    v = view(1, [0])
    p.choose(0, rq((1, 2, 3)), 0.0, v)
    p.choose(1, rq((5,)), 1.0, v)
    p.choose(2, rq((9,)), 11.0, v)  # the eviction pass runs first
    assert set(p.tree.nodes) == {5, 9}
    assert p.tree.chars[0] == 80


def test_sglang_eviction_passes_fall_on_a_fixed_grid() -> None:
    # policies/utils.rs PeriodicTask: sleep interval, run, repeat; a late request does not
    # shift the grid. Interval 10 from t=0: passes at 10, 20, 30, ...
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=40, eviction_interval_s=10.0)
    v = view(1, [0])
    p.choose(0, rq((1,)), 0.0, v)
    p.choose(1, rq((2,)), 25.0, v)  # the pass due at 20 runs now: 40 chars, nothing to do
    p.choose(2, rq((3,)), 30.0, v)  # the pass at 30 drops the older leaf, block 1
    assert set(p.tree.nodes) == {2, 3}


def test_sglang_eviction_keeps_every_kept_block_under_its_parent() -> None:
    # Leaf-first eviction never leaves a tenant on a block whose parent it lost (a radix
    # tree cannot express that), whatever the stamps. Two tenants, branching prompts.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=200, eviction_interval_s=5.0)
    prompts = [(1, 2, 3), (1, 2, 4), (1, 5), (6, 7, 8, 9), (1, 2, 3, 10), (6, 11), (1, 5, 12)]
    for i in range(40):
        loads = [0, 100] if i % 3 else [100, 0]  # alternate the switch between replicas
        p.choose(i, rq(prompts[i % len(prompts)]), float(i), view(2, loads))
        tree = p.tree
        for b, tenants in tree.nodes.items():
            par = tree.parent[b]
            assert par is None or set(tenants) <= set(tree.nodes[par])
        for t, held in tree.chars.items():
            assert held == sum(tree.chars_of[b] for b, ts in tree.nodes.items() if t in ts)
        tree._check()
    p.tree.evict(200, per_tenant=True)
    assert all(c <= 200 for c in p.tree.chars.values())


def test_smg_eviction_budget_is_one_per_model() -> None:
    # smg @f8daa883 string_tree.rs evict_tenant_by_size: the tree-wide total is trimmed,
    # least recent leaves first across tenants.
    p = SmgCacheAwarePolicy(block_tokens=BT)
    p.max_tree_chars = 80
    p.eviction_interval_s = 10.0
    p.choose(0, rq((1,)), 0.0, view(2, [0, 0]))  # miss -> replica 0
    p.choose(1, rq((2,)), 1.0, view(2, [0, 0]))  # miss -> replica 1 (processed)
    p.choose(2, rq((3,)), 2.0, view(2, [0, 0]))  # miss -> replica 0
    p.choose(3, rq((4,)), 11.0, view(2, [0, 0]))  # pass first: 120 chars > 80
    assert 1 not in p.tree.nodes and {2, 3, 4} <= set(p.tree.nodes)


def test_smg_spill_gate_is_strict_on_both_bounds() -> None:
    # cache_aware.rs gate_selected_candidate: load > avg x 1.5 and load > avg + 64, both
    # strict, avg over the healthy workers; a spill goes to min (load, processed, idx).
    def owned_by_0(n: int) -> SmgCacheAwarePolicy:
        p = SmgCacheAwarePolicy(block_tokens=BT)
        p.choose(0, rq((1,)), 0.0, view(n, [0] * n))  # miss -> replica 0 owns block 1
        return p

    # avg 36: 100 is not above 36 + 64 -> stays; 101 is above 36.25 + 64 -> spills.
    assert owned_by_0(4).choose(1, rq((1,)), 0.0, view(4, [100, 44, 0, 0])) == 0
    assert owned_by_0(4).choose(1, rq((1,)), 0.0, view(4, [101, 44, 0, 0])) == 2
    # avg 200: 300 is not above 1.5 x 200 -> stays; 301 is above 1.5 x 200.5 -> spills.
    assert owned_by_0(2).choose(1, rq((1,)), 0.0, view(2, [300, 100])) == 0
    assert owned_by_0(2).choose(1, rq((1,)), 0.0, view(2, [301, 100])) == 1


# --- llm-d default profile (llm-d-inference-scheduler @520af478) ---------------------------


def test_llmd_default_input_shorter_than_one_chunk_has_no_hashes() -> None:
    # approximateprefix/hashing.go hashPrompt: len(input) < blockSizeTokens x 4 -> nil.
    # 15 tokens = 60 characters < 64: prefix 0 everywhere and nothing is added.
    p = LlmdDefaultPolicy(block_tokens=16, num_gpu_blocks=None, engine_block_tokens=16)
    short = rq((1,), tokens=15, bt=16)
    p.choose(0, short, 0.0, view(2, waiting=[0, 0], kv_usage=[0.0, 0.0]))
    assert all(len(lru) == 0 for lru in p.lru)
    assert p.prefix_scores(short, 2) == [0.0, 0.0]
    # 16 tokens = 64 characters: exactly one full chunk, hashed and added.
    p.choose(1, rq((1,), tokens=16, bt=16), 0.0, view(2, waiting=[0, 0], kv_usage=[0.0, 0.0]))
    assert sum(len(lru) for lru in p.lru) == 1


def test_llmd_default_trailing_partial_chunk_counts() -> None:
    # hashPrompt hashes the trailing partial chunk too. Engine block 16 with 16-token trace
    # blocks: 64 chars = one chunk per full block; a 4-token tail is a 16-char chunk.
    p = LlmdDefaultPolicy(block_tokens=16, num_gpu_blocks=None, engine_block_tokens=16)
    r = rq((1, 2, 3), tokens=36, bt=16)
    assert p._chunks(r) == [(1, 64), (2, 64), (3, 16)]
    p.lru = [OrderedDict(), OrderedDict()]
    p.remember(0, [(1, 64), (2, 64)])
    p.remember(1, p._chunks(r))
    assert p.prefix_scores(r, 2) == pytest.approx([2 / 3, 1.0])
    # A pod that holds block 3 whole holds another chunk: 64 characters, not this 16.
    p.remember(0, [(3, 64)])
    assert p.prefix_scores(r, 2) == pytest.approx([2 / 3, 1.0])


def test_llmd_default_chunks_straddle_blocks_when_their_size_does_not_divide_a_block() -> None:
    # Fact sheet sections 2 and 10: the text is cut into 64-character chunks from its
    # start; with 8-token blocks (32 characters) one chunk covers two blocks, so a request
    # whose second block differs shares no chunk with the first.
    m = ClusterModel(replicas=2, block_tokens=8, cache_blocks=None)
    p = make_policy("llm-d-default", m)
    assert isinstance(p, LlmdDefaultPolicy)
    p.choose(0, rq((1, 5), bt=8), 0.0, view(2, waiting=[0, 0], kv_usage=[0.0, 0.5]))
    b = rq((1, 2), bt=8)
    assert p._chunks(b) == [(2, 32)]
    assert p.prefix_scores(b, 2) == [0.0, 0.0]
    # pod 0: 0 + 2 + 2 x 0.7 = 3.4; pod 1: 0 + 2 + 2 = 4.
    assert p.choose(1, b, 0.0, view(2, waiting=[0, 0], kv_usage=[0.3, 0.0])) == 1
    # 10-token blocks (40 characters): (1, 2, 3) is 120 characters, two hashes, the second
    # partial; a pod that got (1, 2) holds the first and a 16-character partial of block 2.
    q = make_policy("llm-d-default", ClusterModel(replicas=2, block_tokens=10))
    assert isinstance(q, LlmdDefaultPolicy)
    q.choose(0, rq((1, 2)), 0.0, view(2, waiting=[0, 0], kv_usage=[0.0, 0.5]))
    three = rq((1, 2, 3))
    assert q._chunks(three) == [(2, 24), (3, 40)] and q._chunks(rq((1, 2))) == [(2, 24), (2, 40)]
    assert q.prefix_scores(three, 2) == [0.5, 0.0]


def test_llmd_default_lru_counts_chunks_not_blocks() -> None:
    # Section 2: the LRU holds num_gpu_blocks chunks. One 512-token trace block reported as
    # 32 engine blocks of 16 tokens: room for 32 one-chunk prompts.
    m = ClusterModel(replicas=2, block_tokens=512, cache_blocks=1)
    p = make_policy("llm-d-default", m)
    assert isinstance(p, LlmdDefaultPolicy)
    v = view(2, waiting=[0, 0], kv_usage=[0.0, 0.5])
    a = Request(arrival=0, input_tokens=16, output_tokens=1, blocks=(1,))
    b = Request(arrival=0, input_tokens=16, output_tokens=1, blocks=(2,))
    assert p.choose(0, a, 0.0, v) == 0 and p.choose(1, b, 0.0, v) == 0
    assert list(p.lru[0]) == [(1, 64), (2, 64)]
    assert p.prefix_scores(a, 2) == [1.0, 0.0]


def test_llmd_default_equal_queues_leave_kv_and_prefix_to_decide() -> None:
    # queue.go: max == min -> 1.0 for every endpoint; kvcache_utilization.go: 1 - kv.
    p = LlmdDefaultPolicy(block_tokens=BT, num_gpu_blocks=None)
    assert p.choose(0, rq((5,)), 0.0, view(3, waiting=[4, 4, 4], kv_usage=[0.5, 0.2, 0.3])) == 1
    one = LlmdDefaultPolicy(block_tokens=BT, num_gpu_blocks=None)
    assert one.choose(0, rq((5,)), 0.0, view(1, waiting=[9], kv_usage=[1.0])) == 0


BT16 = 16  # llm-d's 64-character chunk is then exactly one trace block


def test_llmd_default_adds_its_scorers_in_the_default_profile_order() -> None:
    # config/loader/defaults.go:46-103 (and the guide's inference-scheduling.values.yaml
    # @086f217d): queue-scorer 2, kv-cache-utilization-scorer 2, prefix-cache-scorer 3, in
    # that order; configloader.go:224-247 registers them in it and scheduler_profile.go:
    # 155-168 adds weight x clamped score from 0 in it. Pod 0 served (1,2,3), pod 1 (1,):
    # prefix [3/5, 1/5]; waiting [2, 1] -> queue [0, 1]; kv [0.2, 0.6].
    # Source: pod 0 (0 + 1.6) + 1.8 = 3.4, pod 1 (2 + 0.8) + 0.6 = 3.4: a tie, so the
    # picker's shuffle (picker/maxscore/picker.go:91-102) takes either.
    # Added prefix, KV, queue (the precise guide's order), pod 1 is
    # 0.6000000000000001 + 0.8 + 2 = 3.4000000000000004, so always pod 1.
    picks = set()
    for seed in range(32):
        p = LlmdDefaultPolicy(block_tokens=BT16, num_gpu_blocks=None, seed=seed)
        p.lru = [OrderedDict(), OrderedDict()]
        p.remember(0, p._chunks(rq((1, 2, 3), bt=BT16)))
        p.remember(1, p._chunks(rq((1,), bt=BT16)))
        v = view(2, waiting=[2, 1], kv_usage=[0.2, 0.6])
        picks.add(p.choose(0, rq((1, 2, 3, 4, 5), bt=BT16), 0.0, v))
    assert picks == {0, 1}


def test_llmd_default_hashes_a_request_pushes_out_of_the_lru_stay_in_the_reverse_map() -> None:
    # approximateprefix/indexer.go:52-83: Add first puts every hash into the pod's LRU
    # (hashicorp golang-lru/v2 v2.0.7 Add evicts the oldest and calls the eviction callback,
    # indexer.go:105-115, which drops the pod from hashToPods), THEN adds the pod to
    # hashToPods for every hash. A request with more hashes than the LRU holds therefore
    # leaves its first hashes in hashToPods although the LRU no longer has them, and no
    # later eviction of that LRU removes them.
    # num_gpu_blocks=2 trace blocks of 16 tokens: the pod reports 2 blocks of 16 (B = 16), an
    # LRU of 2 hashes; (1,2,3) has 3. Following the LRU exactly would drop (1,64) at once.
    p = LlmdDefaultPolicy(block_tokens=BT16, num_gpu_blocks=2, seed=0)
    assert p.choose(0, rq((1, 2, 3), bt=BT16), 0.0, view(2, waiting=[0, 1])) == 0
    for k in range(10):  # pod 0's LRU turns over: (2,64) and (3,64) go, (1,64) is not in it
        p.remember(0, p._chunks(rq((100 + k,), bt=BT16)))
    assert p.prefix_scores(rq((1,), bt=BT16), 2) == [1.0, 0.0]
    # pod 0: 2*0 + 2*1 + 3*1 = 5 > pod 1: 2*1 + 2*1 + 0 = 4 (without the ghost: 2 < 4)
    assert p.choose(1, rq((1,), bt=BT16), 0.0, view(2, waiting=[1, 0])) == 0


# --- llm-d precise prefix-cache scorer -------------------------------------------------------


def test_llmd_precise_run_is_consecutive_from_block_zero_and_full_blocks_only() -> None:
    # kvblock_scorer.go: consecutive blocks from the first; utils.go absoluteScoredPods:
    # min(1, run / total full blocks), 0 with no full block.
    p = LlmdPrecisePolicy(block_tokens=BT)
    p.on_kv_events(0, 0, stored(2), 0.0)  # block 2 only: no run from block 0
    p.on_kv_events(1, 0, stored(1, 2, 3), 0.0)  # the tail block too
    r = rq((1, 2, 3), tokens=2 * BT + 3)
    # pod 1: 2 x 1 + 1 x 0 + 1 x 1 = 3 against pod 0: 0 + 1 + 1 = 2, though pod 1 queues.
    assert p.choose(0, r, 0.0, view(2, waiting=[0, 2], kv_usage=[0.0, 0.0])) == 1
    tiny = rq((1,), tokens=BT - 1)  # no full block: prefix 0, queue and KV decide
    assert p.choose(1, tiny, 0.0, view(2, waiting=[0, 2], kv_usage=[0.0, 0.0])) == 0


def _batch(*events: object) -> EventBatch:
    return EventBatch(ts=0.0, rank=None, events=events)  # type: ignore[arg-type]


def _stored(*blocks: int, medium: str = "GPU", parent: int | None = None) -> BlockStored:
    return BlockStored(
        block_hashes=blocks, parent_block_hash=parent, token_ids=blocks, block_size=1, medium=medium
    )


def test_a_cached_owner_gone_from_the_pool() -> None:
    # Section 1 step 4: a found tenant that is gone -> the first healthy worker, no insert.
    # SMG (1b) picks among the owners still in the pool; none left is a miss.
    m3 = ClusterModel(replicas=3, block_tokens=BT)
    p = make_policy("sglang-cache-aware", m3)
    assert isinstance(p, SglangCacheAwarePolicy)
    assert p.choose(0, rq((1,)), 0.0, view(3, [5, 5, 0])) == 2  # a miss: replica 2 owns 1
    assert p.choose(1, rq((1,)), 0.0, view(2, [3, 0])) == 0  # owner gone: first, no insert
    assert p.processed[:2] == [0, 0] and set(p.tree.nodes[1]) == {2}
    q = make_policy("smg-cache-aware", m3)
    assert isinstance(q, SmgCacheAwarePolicy)
    assert q.choose(0, rq((1,)), 0.0, view(3, [5, 5, 0])) == 2
    assert q.choose(1, rq((1,)), 0.0, view(2, [3, 0])) == 1  # a miss: the min-load worker


def test_llmd_precise_index_adds_once_and_removes_on_the_first_remove() -> None:
    # in_memory.go: a per-key LRU set of (pod, tier); Add is idempotent, one Evict removes.
    p = LlmdPrecisePolicy(block_tokens=BT)
    p.on_kv_events(0, 0, stored(1, 2), 0.0)
    p.on_kv_events(0, 1, stored(1, 2), 0.0)
    p.on_kv_events(0, 2, _batch(BlockRemoved(block_hashes=(1, 2), medium="GPU")), 0.0)
    assert p.llmd_index.runs((1, 2), 2) == [0.0, 0.0]
    # No prefix anywhere: pod 0 = 0 + 1 + 0.5 = 1.5 < pod 1 = 0 + 1 + 1 = 2.
    assert p.choose(0, rq((1, 2)), 0.0, view(2, waiting=[0, 0], kv_usage=[0.5, 0.0])) == 1


def test_llmd_precise_index_keeps_ten_pods_per_key_the_latest_stored() -> None:
    # Section 3: <= 10 pods per key, LRU: the 11th store drops the least recently stored.
    p = LlmdPrecisePolicy(block_tokens=BT)
    for pod in range(11):
        p.on_kv_events(pod, 0, stored(1, 2), 0.0)
    assert p.llmd_index.runs((1, 2), 11) == [0.0] + [2.0] * 10
    v = view(11, waiting=[0] * 11, kv_usage=[0.0] + [0.1] * 10)
    # pod 0: 0 + 1 + 1 = 2; the others 2 + 1 + 0.9 = 3.9.
    assert p.choose(0, rq((1, 2)), 0.0, v) != 0
    p.on_kv_events(0, 1, stored(1, 2), 0.0)  # stored again: most recent, pod 1 drops out
    assert p.llmd_index.runs((1, 2), 11) == [2.0, 0.0] + [2.0] * 9


def test_llmd_precise_weighs_cpu_blocks_at_0_8() -> None:
    # kvblock_scorer.go / backend.go: GPU 1.0, CPU 0.8 per block of the run.
    p = LlmdPrecisePolicy(block_tokens=BT)
    p.on_kv_events(1, 0, _batch(_stored(1, 2, medium="CPU")), 0.0)
    p.on_kv_events(2, 0, _batch(_stored(1, medium="GPU"), _stored(2, medium="CPU", parent=1)), 0.0)
    assert p.llmd_index.runs((1, 2), 3) == pytest.approx([0.0, 1.6, 1.8])
    # pod 1: 2 x 0.8 + 1 + 0.5 = 3.1 > pod 0: 0 + 1 + 1 = 2.
    assert p.choose(0, rq((1, 2)), 0.0, view(2, waiting=[0, 0], kv_usage=[0.0, 0.5])) == 1
    p.on_kv_events(1, 1, _batch(BlockRemoved(block_hashes=(2,), medium="CPU")), 0.0)
    assert p.llmd_index.runs((1, 2), 2) == pytest.approx([0.0, 0.8])  # the run ends at 2


def test_llmd_precise_ignores_sequence_numbers_and_a_clear_drops_the_pod() -> None:
    # pool.go processEvent only logs seq. At llm-d-kv-cache @7be76e11 AllBlocksCleared
    # calls Index.Clear(pod) (pool.go:453-473, in_memory.go:324-350): that pod's entries go,
    # other pods keep theirs, and the engine -> request mapping stays (a later store under a
    # cleared block is still accepted). (v0.8.x only logged the clear: review 52.)
    p = LlmdPrecisePolicy(block_tokens=BT)
    idx = p.llmd_index
    p.on_kv_events(0, 0, stored(1), 0.0)
    p.on_kv_events(0, 0, stored(7), 0.0)  # the same seq again: no restart for llm-d
    assert idx.runs((1,), 1) == [1.0] and idx.runs((7,), 1) == [1.0]
    p.on_kv_events(1, 0, stored(1), 0.0)
    p.on_kv_events(0, 5, _batch(AllBlocksCleared()), 0.0)
    assert idx.runs((1,), 2) == [0.0, 1.0] and idx.runs((7,), 2) == [0.0, 0.0]
    p.on_kv_events(1, 1, stored(8, parent=7), 0.0)  # 7's mapping outlived the clear
    assert 8 in idx.keys
    # A store under a block llm-d has no mapping for is skipped (pool.go:343-353,
    # GetRequestKey fails): it is not recorded and never matches.
    p.on_kv_events(1, 2, stored(9, parent=99), 0.0)
    assert idx.runs((99, 9), 2) == [0.0, 0.0] and 9 not in idx.keys
    # A remove that leaves a block with no pod drops its mapping (in_memory.go:256-266):
    # a store under it is then skipped.
    p.on_kv_events(1, 3, _batch(BlockRemoved(block_hashes=(8,), medium="GPU")), 0.0)
    p.on_kv_events(1, 4, stored(10, parent=8), 0.0)
    assert 10 not in idx.keys


def _store(*blocks: int, medium: str | None = "GPU", lora: str | None = None) -> EventBatch:
    return _batch(
        BlockStored(
            block_hashes=blocks,
            token_ids=blocks,
            block_size=1,
            medium=medium,
            lora_name=lora,
        )
    )


def test_llmd_precise_weighs_a_tier_it_does_not_list_at_one() -> None:
    # kvblock_scorer.go:91-103 fillMaxWeights: weight 1.0 unless the tier is in the map
    # (backend.go:26-31 lists gpu 1.0 and cpu 0.8); media are lower-cased on ingest.
    idx = LlmdBlockIndex()
    idx.apply(0, _store(1, 2, medium="DISK"))
    idx.apply(1, _store(1, 2, medium="cpu"))
    assert idx.runs((1, 2), 2) == pytest.approx([2.0, 1.6])


def test_llmd_precise_keeps_a_lora_adapter_s_blocks_apart() -> None:
    # pool.go:319-323: a store with lora_name is keyed from the adapter's model name
    # (token_processor.go), and a base-model request is keyed from its target model
    # (precise_prefix_cache.go:789): it never matches the adapter's blocks.
    idx = LlmdBlockIndex()
    idx.apply(0, _store(1, 2, lora="adapter-a"))
    idx.apply(1, _store(1))
    assert idx.runs((1, 2), 2) == [0.0, 1.0]
    idx.apply(0, _batch(BlockRemoved(block_hashes=(1, 2), medium="GPU")))
    assert not idx.adapters["adapter-a"] and idx.runs((1, 2), 2) == [0.0, 1.0]


def test_llmd_precise_adds_its_scores_in_the_profile_order() -> None:
    # scheduler_profile.go:160-167 adds the scorers in the profile's order; the guide's is
    # precise (2), kv-cache-utilization (1), queue (1). Pods 0 and 1 then tie exactly:
    # (2 x 0.5 + 0.4) + 1/6 == (0 + 0.9) + 4/6, and the picker's shuffle (picker.go:91-102)
    # takes either. Added as prefix, queue, KV, pod 0 is one ulp ahead and always wins.
    picks = set()
    for seed in range(32):
        p = LlmdPrecisePolicy(block_tokens=BT, seed=seed)
        p.on_kv_events(0, 0, stored(1), 0.0)
        v = view(4, waiting=[5, 2, 6, 0], kv_usage=[0.6, 0.1, 0.0, 1.0])
        picks.add(p.choose(0, rq((1, 2)), 0.0, v))
    assert picks == {0, 1}


# --- Dynamo KV router (dynamo @2a6da14c) -----------------------------------------------------


STALE = rq((1, 2, 3, 4))  # 40 tokens: never gets its first token in these tests
PROBE = rq((5, 6))  # 20 tokens: idle cost (20/10) + 2 = 4.0


@pytest.mark.parametrize("kv_events", [True, False])
def test_dynamo_forgets_a_request_active_for_more_than_300_s(kv_events: bool) -> None:
    # lib/llm/src/kv_router/sequence.rs:447,474 builds the tracker with
    # ActiveSequencesMultiWorker::new -> expiry 300 s (sequences/multi_worker.rs:52-82, 426;
    # single.rs:36) and starts a 60 s interval over all workers (multi_worker.rs:42,
    # 1061-1115; first tick at start). force_expiry (single.rs:306-339) runs at most every
    # 30 s per worker and drops requests with started_at < now - 300 s (strict). Tick
    # 300 s: 0 < 0 is false, kept; tick 360 s: dropped. Without the rule STALE's 40 prefill
    # tokens and 4 blocks stayed forever: [4.0, 12.0] at 361 s.
    pol = DynamoKvPolicy(block_tokens=BT, kv_events=kv_events)
    r = pol.choose(0, STALE, 0.0, view(2))
    busy = [4.0, 4.0]
    busy[r] = 12.0  # (40 + 20)/10 + (4 + 2)
    assert pol.costs(PROBE, 359.9, 2)[0] == busy
    assert pol.costs(PROBE, 360.0, 2)[0] == [4.0, 4.0]
    # a tie again, so uniformly random (default.rs:373-394), not "the other worker"
    same = set()
    for seed in range(40):
        p = DynamoKvPolicy(block_tokens=BT, kv_events=kv_events, seed=seed)
        w = p.choose(0, STALE, 0.0, view(2))
        same.add(p.choose(1, PROBE, 361.0, view(2)) == w)
    assert same == {True, False}


def test_dynamo_a_late_first_token_or_completion_of_an_expired_request_is_ignored() -> None:
    # single.rs:246-277: mark_prefill_completed / free of an id the guard already dropped
    # only log ("Trying to free non-existent request"). One worker: STALE (0 s) is dropped at
    # the 360 s tick; C is booked at 361 s (20 prefill tokens, 2 blocks). STALE's first token
    # at 400 s must not take 40 tokens off C, nor its completion C's blocks:
    # (20 + 20)/10 + (2 + 2) = 8.0 throughout. Without the rule STALE was still held:
    # 12.0 between its first token and its completion.
    pol = DynamoKvPolicy(block_tokens=BT)
    pol.choose(0, STALE, 0.0, view(1))
    pol.choose(1, rq((7, 8)), 361.0, view(1))
    assert pol.costs(PROBE, 362.0, 1)[0] == [8.0]
    pol.on_first_token(0, STALE, 0, 400.0)
    assert pol.costs(PROBE, 400.5, 1)[0] == [8.0]
    pol.on_complete(0, STALE, 0, 401.0)
    assert pol.costs(PROBE, 402.0, 1)[0] == [8.0]


@pytest.mark.parametrize(("at", "cost"), [(310.0, 22.0), (335.0, 14.0)])
def test_dynamo_an_add_expires_stale_requests_of_its_worker_30_s_after_a_check(
    at: float, cost: float
) -> None:
    # single.rs:199: add_request calls force_expiry before booking, gated like the sweep:
    # at most once per 30 s per worker (single.rs:306-339). The 300 s tick checked w
    # (STALE, booked at 0, kept: 0 < 0 is false). D (100 tokens, cached on w) is booked on
    # w at `at`: at 335 s (>= 330) STALE is dropped then, 25 s before the 360 s tick, and w
    # carries D's 10 blocks only: 20/10 + (10 + 2) = 14.0; at 310 s the add is within 30 s
    # of the check, so STALE stays (its 40 tokens and 4 blocks too: 22.0).
    pol = DynamoKvPolicy(block_tokens=BT)
    w = pol.choose(0, STALE, 0.0, view(2))
    pol.on_kv_events(w, 0, stored(*range(7, 17)), 1.0)
    assert pol.choose(1, rq(tuple(range(7, 17))), at, view(2)) == w
    exp = [4.0, 4.0]
    exp[w] = cost
    assert pol.costs(PROBE, at + 1.0, 2)[0] == exp


def test_dynamo_active_expiry_must_be_a_positive_finite_number_or_none() -> None:
    for bad in (0, -1.0, float("nan"), float("inf"), True, "300"):
        with pytest.raises(InvalidRecordError) as exc:
            DynamoKvPolicy(block_tokens=BT, active_expiry_s=bad)  # type: ignore[arg-type]
        assert exc.value.field == "active_expiry_s"
    pol = DynamoKvPolicy(block_tokens=BT, active_expiry_s=None)  # the rule off
    r = pol.choose(0, STALE, 0.0, view(2))
    busy = [4.0, 4.0]
    busy[r] = 12.0
    assert pol.costs(PROBE, 10_000.0, 2)[0] == busy


def test_dynamo_a_quiet_gap_leaves_the_state_of_its_sweeps() -> None:
    # The 60 s sweeps of a quiet gap only move the check times, so the gap runs its last
    # due sweep alone (not 10**7 of them) and leaves the state the whole series would:
    # every worker last checked at that sweep, the next one due 60 s later, and a booking
    # 45 s after it checking its worker again (45 >= 30).
    pol = DynamoKvPolicy(block_tokens=BT)
    r = pol.choose(0, STALE, 0.0, view(2))
    pol.on_first_token(0, STALE, r, 1.0)
    pol.on_complete(0, STALE, r, 2.0)
    far = 60.0 * 10**7 + 45.0
    w = pol.choose(1, STALE, far, view(2))
    assert pol._last_check[w] == far
    assert pol._last_check[1 - w] == 60.0 * 10**7
    assert pol._next_sweep == 60.0 * (10**7 + 1)


def test_dynamo_queries_full_blocks_only() -> None:
    # protocols.rs compute_block_hash_for_seq hashes complete blocks only, so the overlap
    # never counts the tail; selector/mod.rs: raw prefill = (active + ISL) / B.
    p = DynamoKvPolicy(block_tokens=BT)
    p.on_kv_events(0, 0, stored(1, 2, 3), 0.0)  # the engine also cached the tail block
    r = rq((1, 2, 3), tokens=25)
    cost, ovl = p.costs(r, 0.0, 2)
    assert ovl == [2, 0]
    # w0: prefill 2.5 - 2 = 0.5, decode 0 + 2 full blocks -> 2.5; w1: 2.5 + 2 = 4.5.
    # (The tail block adds nothing to the decode term: review 43 Q1; 3.5 / 5.5 before.)
    assert cost == pytest.approx([2.5, 4.5])


def test_dynamo_active_blocks_track_full_prompt_blocks() -> None:
    # The cost's decode term is potential_decode_blocks = active blocks + (full blocks -
    # depth already active) (selector/mod.rs:196, sequences/prompt_registry.rs:41-43, 338):
    # only the tracked (full) prompt blocks count, the tail neither there nor after
    # admission. The ceiling of scheduling/types.rs potential_decode_blocks_after_admission
    # feeds the response, not the cost (review 43 Q1; this test expected 8.0 and 5.5).
    p = DynamoKvPolicy(block_tokens=BT)
    a = rq((1, 2, 3), tokens=25)
    assert p.choose(0, a, 0.0, view(1)) == 0
    assert p.active_prefill == [25]
    b = rq((1, 2, 4), tokens=25)  # same full blocks, another tail
    cost, _ = p.costs(b, 0.0, 1)
    # prefill (25 + 25)/10 = 5; decode: 2 active + (2 - 2 shared) = 2.
    assert cost == pytest.approx([7.0])
    p.on_first_token(0, a, 0, 0.0)
    p.on_complete(0, a, 0, 0.0)
    # prefill 25/10 = 2.5; decode 0 active + 2 full blocks = 2.
    assert p.active_prefill == [0] and p.costs(b, 0.0, 1)[0] == pytest.approx([4.5])


def test_dynamo_approx_index_writes_full_blocks_at_route_time() -> None:
    p = DynamoKvPolicy(block_tokens=BT, kv_events=False)
    p.choose(0, rq((1, 2, 3), tokens=25), 0.0, view(1))
    # full blocks (1, 2) are recorded; the tail is not part of the query or the index.
    assert p.costs(rq((1, 2, 3), tokens=30), 1.0, 1)[1] == [2]


def test_dynamo_a_partial_tail_adds_nothing_to_the_cost() -> None:
    # review 43 Q1: decode = active blocks + floor(ISL/B) - depth (prompt_registry.rs:338,
    # selector/mod.rs:196). 25 tokens, nothing cached, idle: prefill 2.5 + decode 2 on both
    # workers (with the tail counted: 5.5 each). The same shift on every worker, so the
    # pick is unchanged: an exact tie, uniformly random.
    r = rq((1, 2, 3), tokens=25)
    assert DynamoKvPolicy(block_tokens=BT).costs(r, 0.0, 2) == ([4.5, 4.5], [0, 0])
    picks = {DynamoKvPolicy(block_tokens=BT, seed=s).choose(0, r, 0.0, view(2)) for s in range(20)}
    assert picks == {0, 1}


def test_dynamo_a_cached_tail_block_is_never_asked_for() -> None:
    # review 43 Q1 (review 40 A1): worker 0 served (1, 2, 3) and cached its tail block, worker
    # 1 served (1, 2, 9). The router hashes full blocks only, so both overlap 2 and tie:
    # 2.5 - 2 + 2 each; a tail-aware overlap would have sent it to worker 0 every time.
    r = rq((1, 2, 3), tokens=25)
    picks = set()
    for s in range(20):
        p = DynamoKvPolicy(block_tokens=BT, seed=s)
        p.on_kv_events(0, 0, stored(1, 2, 3), 0.0)
        p.on_kv_events(1, 0, stored(1, 2, 9), 0.0)
        assert p.costs(r, 0.0, 2) == ([2.5, 2.5], [2, 2])
        picks.add(p.choose(0, r, 0.0, view(2)))
    assert picks == {0, 1}


def test_dynamo_approx_expiry_rounds_up_to_100_ms_from_the_workers_first_insert() -> None:
    # indexer/pruning.rs insert_at: expiry = origin + round_up(now + 120 s - origin, 100 ms)
    # with origin = the worker's PruneManager creation, at its first non-empty insert;
    # pop_expired drops an entry once expiry <= now.
    p = DynamoKvPolicy(block_tokens=BT, kv_events=False)
    p.choose(0, rq((9,)), 0.0, view(1))  # worker 0's first insert: origin 0.0
    p.choose(1, rq((1, 2)), 0.05, view(1))  # expiry ceil(120.05) = 120.1, not 120.05
    assert p.costs(rq((1, 2)), 120.07, 1)[1] == [2]  # an exact TTL would have dropped it
    assert p.costs(rq((1, 2)), 120.099, 1)[1] == [2]
    assert p.costs(rq((1, 2)), 120.1, 1)[1] == [0]
    assert p.costs(rq((9,)), 119.999, 1)[1] == [1]  # written at the origin: exactly 120 s
    assert p.costs(rq((9,)), 120.0, 1)[1] == [0]
    # review 43's own case wrote first at 0.05: that write is the origin, so its expiry
    # is 0.05 + 120 exactly (review 43 assumed an origin at 0 and 120.1).
    q = DynamoKvPolicy(block_tokens=BT, kv_events=False)
    q.choose(0, rq((1, 2)), 0.05, view(1))
    assert q.costs(rq((1, 2)), 120.049, 1)[1] == [2]
    assert q.costs(rq((1, 2)), 120.05, 1)[1] == [0]
    # A prompt without a full block inserts nothing (insert_block_entries returns early):
    # no origin yet, so the next write's own time is the origin.
    r = DynamoKvPolicy(block_tokens=BT, kv_events=False)
    r.choose(0, rq((7,), tokens=5), 0.0, view(1))
    r.choose(1, rq((1, 2)), 0.05, view(1))
    assert r.costs(rq((1, 2)), 120.07, 1)[1] == [0]
    # A new write moves the expiry: written again at 100.0 -> ceil(220.05) = 220.1.
    p.choose(2, rq((1, 2)), 100.0, view(1))
    p.choose(3, rq((1, 2)), 100.05, view(1))
    assert p.costs(rq((1, 2)), 220.07, 1)[1] == [2]
    assert p.costs(rq((1, 2)), 220.1, 1)[1] == [0]


# --- production-stack ------------------------------------------------------------------------


def test_prodstack_prefix_one_endpoint_and_partial_paths() -> None:
    # hashtrie.py longest_prefix_match: stop at a missing chunk or an empty intersection.
    p = ProdstackPrefixPolicy(block_tokens=32)  # one 128-character chunk per block
    assert p.choose(0, rq((1, 2), bt=32), 0.0, view(1)) == 0
    assert p.trie == {(1, 128): 0b1, (2, 128): 0b1}  # endpoint bit masks
    p.trie = {(1, 128): 0b111, (2, 128): 0b110, (3, 128): 0b100, (4, 128): 0b001}
    assert p.candidates(rq((1, 2, 3), bt=32), 3) == [2]
    assert p.candidates(rq((1, 2, 4), bt=32), 3) == [1, 2]  # 4's endpoints miss {1, 2}


def test_prodstack_prefix_chunks_straddle_blocks_and_keep_the_partial_tail() -> None:
    # Section 5 (hashtrie.py): 128-character chunks of the text, the trailing partial one
    # hashed too. 10-token blocks are 40 characters: the first chunk spans blocks 1-4, so
    # a prompt whose fourth block differs shares no chunk with the first one.
    p = make_policy("prodstack-prefix", ClusterModel(replicas=3, block_tokens=BT))
    assert isinstance(p, ProdstackPrefixPolicy)
    r = p.choose(0, rq((1, 2, 3, 4, 5)), 0.0, view(3))
    assert p.trie == {(4, 8): 1 << r, (5, 40): 1 << r}  # 128 characters, then a 72-char tail
    assert p.candidates(rq((1, 2, 3, 4, 6)), 3) == [r]  # the tail differs: first chunk only
    assert p.candidates(rq((1, 2, 3, 9, 5)), 3) == [0, 1, 2]  # nothing shared


def test_prodstack_loadaware_fallback_prefers_an_endpoint_never_routed_to() -> None:
    # routing_logic.py _qps_routing: scanning in URL order, an endpoint without request
    # stats wins at once; others compare QPS over the window with a strict <. Endpoint 0
    # got a request at t=0 (stats kept, QPS 0 after 60 s); endpoint 1 never did.
    p = ProdstackLoadAwarePolicy(block_tokens=BT)
    assert p.choose(0, rq((5,)), 0.0, view(2, [0, 0])) == 0
    assert p.choose(1, rq((6,)), 100.0, view(2, [0, 0])) == 1
    # both have stats now, both QPS 0 at t=300: the first in URL order.
    assert p.choose(2, rq((7,)), 300.0, view(2, [0, 0])) == 0


def test_prodstack_loadaware_one_endpoint_and_all_equal() -> None:
    # 512-token blocks (two whole LMCache chunks each): with BT = 10 every prompt here
    # would be shorter than a chunk, match nothing and leave the QPS fallback to decide.
    p = ProdstackLoadAwarePolicy(block_tokens=512)
    p.on_kv_events(0, 0, stored(1), 0.0)
    assert p.choose(0, rq((1, 2), bt=512), 0.0, view(1, [7])) == 0
    # both hold the whole prompt at equal load, but LMCache credits each chunk to the
    # holder registered first only: replica 0 has benefit 1, replica 1 none (it tied before).
    q = ProdstackLoadAwarePolicy(block_tokens=512)
    q.on_kv_events(0, 0, stored(1, 2), 0.0)
    q.on_kv_events(1, 0, stored(1, 2), 0.0)
    assert q.kv_pool.matched_tokens(rq((1, 2), bt=512), 2) == [1024, 0]
    assert q.choose(0, rq((1, 2), bt=512), 0.0, view(2, [3, 3])) == 0
    # half a hit on replica 1 (benefit 0.5) beats an idle replica 0 only while its relative
    # load stays under 0.5 above replica 0's: loads [1, 2], mean 1.5 -> rel -1/3, +1/3.
    r = ProdstackLoadAwarePolicy(block_tokens=512)
    r.on_kv_events(1, 0, stored(1), 0.0)
    assert r.choose(0, rq((1, 2), bt=512), 0.0, view(2, [1, 2])) == 0  # 1/3 vs 0.5 - 1/3
    assert r.choose(1, rq((1, 2), bt=512), 0.0, view(2, [2, 2])) == 1  # 0 vs 0.5


def test_prodstack_loadaware_credits_a_chunk_to_the_holder_registered_first_only() -> None:
    # review 43 Q2a, review 50. lmcache 0.3.11 (production-stack's pin): lookup credits
    # each chunk to RegistryTree.find_kv's answer, the first instance in registration
    # order that holds it; the others get nothing for it. Replica 1 registered after
    # replica 0 and stored block 1 (two chunks) first: replica 0 still scores 1 and
    # replica 1 scores 0; the load decides against replica 0 only beyond the benefit.
    p = ProdstackLoadAwarePolicy(block_tokens=512)
    p.on_kv_events(1, 0, stored(1), 0.0)
    assert p.kv_pool.matched_tokens(rq((1,), bt=512), 2) == [0, 512]
    p.on_kv_events(0, 0, stored(1), 1.0)
    assert p.kv_pool.matched_tokens(rq((1,), bt=512), 2) == [512, 0]
    assert p.choose(0, rq((1,), bt=512), 0.0, view(2, [0, 0])) == 0
    # rel = (2 - 1) / 1 = 1 for replica 0, -1 for replica 1: 1 - 1 < 0 + 1.
    assert p.choose(1, rq((1,), bt=512), 0.0, view(2, [2, 0])) == 1


def test_prodstack_loadaware_a_match_shorter_than_a_chunk_lists_nobody() -> None:
    # review 43 Q2b. Engines store whole 256-token chunks only (save_unfull_chunk=False):
    # a 25-token prompt has none, layout_info is empty and _qps_routing picks replica 1,
    # never routed to (matching 20 tokens on replica 0, benefit 0.8, picked replica 0).
    p = ProdstackLoadAwarePolicy(block_tokens=BT)
    assert p.choose(0, rq((7,)), 0.0, view(2, [0, 0])) == 0  # QPS: first never routed
    p.on_kv_events(0, 0, stored(1, 2), 0.0)
    assert p.kv_pool.matched_tokens(rq((1, 2, 3), tokens=25), 2) == [0, 0]
    assert p.choose(1, rq((1, 2, 3), tokens=25), 0.0, view(2, [0, 0])) == 1


def test_lmcache_pool_matches_whole_chunks_only() -> None:
    # token_database.py: 256-token chunks; only whole ones are ever admitted, so a match
    # is floored to a chunk boundary (a cached 600-token prompt matched 600 before).
    pool = LmcacheKvPool(block_tokens=512)
    pool.apply(0, 0, stored(1, 2))
    assert pool.matched_tokens(rq((1, 2), tokens=600, bt=512), 1) == [512]
    assert pool.matched_tokens(rq((1, 2), tokens=768, bt=512), 1) == [768]
    assert pool.matched_tokens(rq((1,), tokens=255, bt=512), 1) == [0]


def test_lmcache_pool_walk_stops_at_a_chunk_nobody_holds() -> None:
    # lookup breaks at the first key missing from kv_pool; a replica's value is the end
    # of the last chunk credited to it, wherever the walk reached.
    pool = LmcacheKvPool(block_tokens=512)
    pool.apply(0, 0, stored(1, 2))
    pool.apply(1, 0, stored(1, 2, 3))
    assert pool.matched_tokens(rq((1, 2, 3), bt=512), 2) == [1024, 1536]
    assert pool.matched_tokens(rq((1, 9, 3), bt=512), 2) == [512, 0]


def test_lmcache_pool_small_blocks_a_chunk_is_held_once_all_its_blocks_are() -> None:
    # 100-token blocks: chunk 0 (tokens 0-255) spans blocks 1-3. A replica holds it once
    # it holds all three; among the holders the one registered first is credited.
    pool = LmcacheKvPool(block_tokens=100)
    three = rq((1, 2, 3), bt=100)
    pool.apply(0, 0, stored(1, 2))  # replica 0: no whole chunk yet
    assert pool.matched_tokens(three, 2) == [0, 0]
    pool.apply(1, 0, stored(1, 2, 3))
    assert pool.matched_tokens(three, 2) == [0, 256]
    pool.apply(0, 1, stored(3, parent=2))  # replica 0's copy completes: registered first
    assert pool.matched_tokens(three, 2) == [256, 0]
    removed = EventBatch(ts=0.0, events=(BlockRemoved(block_hashes=(2,), medium="GPU"),))
    pool.apply(0, 2, removed)  # replica 0's copy is gone with one of its blocks
    assert pool.matched_tokens(three, 2) == [0, 256]


def test_lmcache_pool_eviction_restart_and_clear() -> None:
    pool = LmcacheKvPool(block_tokens=512)
    one = rq((1,), bt=512)
    pool.apply(1, 0, stored(1))
    pool.apply(0, 0, stored(1))
    assert pool.matched_tokens(one, 2) == [512, 0]  # replica 0 registered first
    removed = EventBatch(ts=0.0, events=(BlockRemoved(block_hashes=(1,), medium="GPU"),))
    pool.apply(0, 1, removed)  # evict removes replica 0's entry: replica 1 is first now
    assert pool.matched_tokens(one, 2) == [0, 512]
    pool.apply(0, 2, stored(1))  # admitted again: registration order, not admission
    assert pool.matched_tokens(one, 2) == [512, 0]
    # seq 0 again: replica 0 restarted, its blocks went and it registered again, now
    # after replica 1.
    pool.apply(0, 0, stored(1))
    assert pool.rank(0) > pool.rank(1)
    assert pool.matched_tokens(one, 2) == [0, 512]
    pool.apply(1, 1, EventBatch(ts=0.0, events=(AllBlocksCleared(),)))
    assert pool.matched_tokens(one, 2) == [512, 0]
    pool.apply(0, 1, EventBatch(ts=0.0, events=(AllBlocksCleared(),)))
    assert pool.matched_tokens(one, 2) == [0, 0]
    assert pool.holders == {}


# Review 51: restarts, clears and registration order.
def test_lmcache_pool_a_restart_drops_the_replicas_blocks_even_at_seq_0_again() -> None:
    # deregister drops a departed worker's chunks; the restarted engine's first batch
    # (seq 0, equal to the last one seen) stores block 5 only: block 1 is gone.
    pool = LmcacheKvPool(block_tokens=512)
    pool.apply(0, 0, stored(1))
    pool.apply(0, 0, stored(5))
    assert pool.holders == {5: {0}}
    assert pool.matched_tokens(rq((1,), bt=512), 1) == [0]
    assert pool.rank(0) == (1, 0)


def test_lmcache_pool_a_cleared_cache_keeps_its_registration_place() -> None:
    # AllBlocksCleared empties the worker's store; it does not deregister it, so it stays
    # ahead of replica 1 (review 50: only a timeout or restart moves it to the back).
    pool = LmcacheKvPool(block_tokens=512)
    pool.apply(0, 0, stored(1))
    pool.apply(1, 0, stored(1))
    pool.apply(0, 1, EventBatch(ts=0.0, events=(AllBlocksCleared(),)))
    assert pool.matched_tokens(rq((1,), bt=512), 2) == [0, 512]
    pool.apply(0, 2, stored(1))
    assert pool.rank(0) < pool.rank(1)
    assert pool.matched_tokens(rq((1,), bt=512), 2) == [512, 0]


def test_lmcache_pool_restarted_replicas_register_again_in_restart_order() -> None:
    pool = LmcacheKvPool(block_tokens=512)
    for r in (0, 1, 2):
        pool.apply(r, 0, stored(9))
    pool.apply(1, 0, stored(1))  # replica 1 restarts first ...
    pool.apply(0, 0, stored(1))  # ... then replica 0: both now behind replica 2
    assert pool.rank(2) < pool.rank(1) < pool.rank(0)
    assert pool.matched_tokens(rq((1,), bt=512), 3) == [0, 512, 0]
    pool.apply(2, 1, stored(1))
    assert pool.matched_tokens(rq((1,), bt=512), 3) == [0, 0, 512]


def test_lmcache_pool_a_clear_then_a_store_in_one_batch_is_tracked_for_the_next_clear() -> None:
    pool = LmcacheKvPool(block_tokens=512)
    pool.apply(0, 0, stored(2))
    (store,) = stored(1).events
    pool.apply(0, 1, EventBatch(ts=0.0, events=(AllBlocksCleared(), store)))
    assert pool.holders == {1: {0}}
    pool.apply(0, 2, EventBatch(ts=0.0, events=(AllBlocksCleared(),)))
    assert pool.holders == {}


def test_prodstack_loadaware_sees_a_store_only_after_the_event_delay() -> None:
    # The pool is fed by the simulated engines' events, published when a prefill ends
    # (1024 tokens: ~0.05 s) and delivered kv_event_delay_s (here 1 s) later. A repeat at
    # 0.5 s finds nothing yet (QPS fallback: replica 1, never routed to); at 1.5 s it
    # finds replica 0's copy.
    model = ClusterModel(replicas=2, block_tokens=512, cache_blocks=None, kv_event_delay_s=1.0)
    for gap_ms, second in ((500, 1), (1500, 0)):
        trace = [
            Request(arrival=float(t), input_tokens=1024, output_tokens=1, blocks=(1, 2))
            for t in (0, gap_ms)
        ]
        out = simulate(trace, make_policy("prodstack-loadaware", model), model, speedup=1000.0)
        assert out.replica == (0, second)


def test_prodstack_loadaware_a_restarted_replica_loses_its_credit_when_it_restarts() -> None:
    # LMCacheWorker.close() sends DeRegisterMsg (lmcache 0.3.11 cache_controller/worker.py:
    # 164-176, 413-414) and the new process registers at startup (worker.py:143-162):
    # RegistryTree.deregister_worker drops the worker's kv_store and the instance, which
    # register_worker appends at the back (cache_controller/utils.py:143-188). So from the
    # restart on, find_kv (utils.py:272-295) credits the next holder, whether or not the
    # restarted engine has published anything since. Both replicas cache block 1 (request 1
    # finds nothing yet and takes the QPS fallback's never-routed replica 1); replica 0
    # restarts at t=2 and is idle after. At t=3 the source credits replica 1 ([0, 512]) and
    # picks it (a hit). Learning of the restart only from replica 0's next batch (seq 0
    # again) credited its empty cache and sent the request there (a miss).
    model = ClusterModel(replicas=2, restarts=((2.0, 0),))
    trace = [
        Request(arrival=t, input_tokens=512, output_tokens=1, blocks=(1,))
        for t in (0.0, 0.001, 3.0)
    ]
    out = simulate(trace, make_policy("prodstack-loadaware", model), model)
    assert out.replica == (0, 1, 1)
    assert out.hit_blocks[2] == 1


def test_lmcache_pool_a_told_restart_starts_the_replica_s_sequence_anew() -> None:
    # After restart() the new process's first batch (seq 0 again) is not a second restart:
    # replica 0 restarted first, so it registered again before replica 1 and is credited
    # first, whichever of the two new processes' first batches arrives first.
    pool = LmcacheKvPool(block_tokens=512)
    pool.apply(0, 0, stored(1))
    pool.apply(1, 0, stored(1))
    pool.restart(0)
    pool.restart(1)
    pool.apply(1, 0, stored(1))
    pool.apply(0, 0, stored(1))
    assert pool.matched_tokens(rq((1,), 512, bt=512), 2) == [512, 0]


def test_lmcache_pool_credit_follows_the_first_registered_holder_chunk_by_chunk() -> None:
    # kv_controller.py:178-190 (0.3.11): every chunk is credited to find_kv's instance, and
    # layout_info[instance] is overwritten with the chunk's end, so an instance that lost a
    # middle block is still credited with a later chunk it holds: not contiguous from token 0
    # (the "mis-credit" LMCache PR #4471 describes; that unmerged PR would credit every
    # holder's contiguous run, [512, 1536]). LMCache 0.3.11's own lookup gives [1536, 1024] too.
    pool = LmcacheKvPool(block_tokens=512)
    pool.apply(1, 0, stored(1, 2, 3))
    pool.apply(0, 0, stored(1, 2, 3))
    pool.apply(0, 1, EventBatch(ts=0.0, events=(BlockRemoved(block_hashes=[2]),)))
    assert pool.matched_tokens(rq((1, 2, 3), 1536, bt=512), 2) == [1536, 1024]


# --- AIBrix prefix-cache (aibrix @e3e10f9e) ----------------------------------------------------


def test_aibrix_prefix_cache_dropped_pod_keeps_its_pct_and_the_gate_uses_all_pods() -> None:
    # hash.go:140-157 + 193-204: a pod that stops holding the next hash keeps the pct it
    # had; getTargetPodFromMatchedPods (prefix_cache.go:950-987) orders by pct, then
    # in-flight, and takes the first with in-flight <= mean + 2 x sample sigma over ALL
    # ready pods (util.go:31-54; factor 2 from gateway-plugin.yaml:105-106). bt=32: one
    # 128-byte chunk per trace block. Pod 1 serves (1,2); pod 0 then serves (1,2,3,4)
    # (in-flight spread 17 > 16: only pod 0 may match, nothing matches, least in-flight).
    # For (1,2,3,4): pct {0: 100, 1: 50}.
    #   in-flight [1,0,1,1,1,1]: mean 5/6, sigma 0.408, limit 1.65 -> pod 0 passes.
    #   in-flight [3,0,0,0,0,1]: mean 2/3, sample sigma 1.211, limit 3.089 -> pod 0 passes
    #   (a population sigma, 1.106, would give 2.878 and pod 1).
    #   in-flight [5,0,0,0,0,0]: mean 5/6, sigma 2.041, limit 4.92 -> pod 0 fails; pod 1
    #   (pct 50, kept after it dropped out at chunk 3) passes.
    cases = (([1, 0, 1, 1, 1, 1], 0), ([3, 0, 0, 0, 0, 1], 0), ([5, 0, 0, 0, 0, 0], 1))
    for load, want in cases:
        for seed in range(8):
            p = AibrixPrefixCachePolicy(block_tokens=32, seed=seed)
            assert p.choose(0, rq((1, 2), bt=32), 0.0, view(6, [1, 0, 1, 1, 1, 1])) == 1
            assert p.choose(1, rq((1, 2, 3, 4), bt=32), 0.0, view(6, [0, 17, 1, 1, 1, 1])) == 0
            assert p.choose(2, rq((1, 2, 3, 4), bt=32), 0.0, view(6, load)) == want


def _aibrix(**kw: float) -> AibrixPrefixCachePolicy:
    return AibrixPrefixCachePolicy(block_tokens=32 * BT, **kw)  # 1280 chars: 10 chunks


def _one(block: int = 1) -> Request:
    return Request(arrival=0, input_tokens=32 * BT, output_tokens=1, blocks=(block,))


def test_aibrix_ttl_is_per_block_entry_refreshed_by_any_write() -> None:
    # lru_store.go: Put refreshes the entry's lastAccessTime whoever writes it; evict drops
    # entries idle > 20 min, whole; matchPods reads no per-pod time. Pod 0 wrote at 0, pod 1
    # at 1000: at 1300 both still hold the block, and pod 0 (fewer in flight) wins.
    p = _aibrix()
    assert p.choose(0, _one(), 0.0, view(2, [0, 1])) == 0
    assert p.choose(1, _one(), 1000.0, view(2, [17, 0])) == 1  # spread 17 > 16: pod 1
    assert p.choose(2, _one(), 1300.0, view(2, [0, 1])) == 0
    # Idle for more than 20 min: the entry is gone, all its pods with it.
    q = _aibrix()
    assert q.choose(0, _one(), 0.0, view(3, [0, 1, 1])) == 0
    assert q.choose(1, _one(), 1205.0, view(3, [2, 0, 1])) == 1  # no match: least
    assert [v for (b, _), v in q.table.items() if b == 1] == [{1: 1205.0}] * 10


def test_aibrix_table_is_an_lru_of_writes() -> None:
    # lru_store.go Put: a write moves the entry to the head; past capacity the tail goes.
    p = _aibrix(max_entries=20)  # 2 trace blocks of 10 chunks each
    for i, b in enumerate((1, 2, 1, 3)):
        p.choose(i, _one(b), 0.0, view(2, [0, 1]))
    assert list(dict.fromkeys(b for b, _ in p.table)) == [1, 3]
    assert len(p.table) == 20


def test_aibrix_entries_expire_only_at_the_one_second_ticks() -> None:
    # review 43 Q3. lru_store.go: only the sweep of a 1 s ticker from gateway start (replay
    # time 0) evicts, when now - lastAccessTime > 20 min; Get never checks the age. Written
    # at 10.0: the tick at 1210 keeps it (1200 is not > 1200), the one at 1211 drops it.
    # Matched, pod 0 (100 %, in flight 1 <= 0.5 + 2 x 0.707) wins; swept, the least in
    # flight, pod 1 (an age check at lookup dropped it at 1210.5 already).
    for now, pick in ((1210.0, 0), (1210.5, 0), (1211.0, 1)):
        p = _aibrix()
        assert p.choose(0, _one(), 10.0, view(2, [0, 1])) == 0
        assert p.choose(1, _one(), now, view(2, [1, 0])) == pick, now
    # Written at 10.7: idle 1199.3 s at the tick at 1210, 1200.3 s at 1211.
    for now, pick in ((1210.99, 0), (1211.0, 1)):
        p = _aibrix()
        assert p.choose(0, _one(), 10.7, view(2, [0, 1])) == 0
        assert p.choose(1, _one(), now, view(2, [1, 0])) == pick, now


def test_aibrix_percent_is_floored_over_all_chunks_and_best_first() -> None:
    # hash.go seqSearchPrefix: pct = (i + 1) x 100 / len(hashes), integer division; the
    # deepest match first, then fewer in flight, within mean + 2 sigma.
    p = _aibrix()
    two = Request(arrival=0, input_tokens=32 * BT * 2 + 200, output_tokens=1, blocks=(1, 2, 3))
    # 10 + 10 + 6 chunks (the 32-byte remainder of the tail is dropped): 26 hashes.
    aibrix_hold(p, 1, {0: 0.0, 1: 0.0})
    aibrix_hold(p, 2, {1: 0.0})
    assert p.choose(0, two, 0.0, view(3, [0, 3, 0])) == 1  # 76 % beats 38 %
    # with pod 1 far above mean + 2 sigma the shallower match (pod 0) is taken instead.
    q = _aibrix()
    aibrix_hold(q, 1, {0: 0.0, 1: 0.0})
    aibrix_hold(q, 2, {1: 0.0})
    assert q.choose(0, two, 0.0, view(8, [1, 9, 0, 0, 0, 0, 0, 0])) == 0


def test_aibrix_chunks_are_cut_across_blocks_smaller_than_a_chunk() -> None:
    # Section 7: the text is cut into 128-byte blocks, the trailing partial one dropped.
    # 16-token trace blocks are 64 characters: two per chunk. 10 blocks = 640 characters =
    # 5 hashes, and the same prompt again goes back to the pod that wrote them.
    m = ClusterModel(replicas=2, block_tokens=16)
    p = make_policy("aibrix-prefix-cache", m)
    assert isinstance(p, AibrixPrefixCachePolicy)
    prompt = rq(tuple(range(1, 11)), bt=16)
    first = p.choose(0, prompt, 0.0, view(2, [0, 0]))
    assert list(p.table) == [(2, 64), (4, 64), (6, 64), (8, 64), (10, 64)]
    loads = [0, 0]
    loads[first] = 1  # the writer is busier, but within mean + 2 sigma
    assert p.choose(1, prompt, 1.0, view(2, loads)) == first
    # 88 tokens = 352 characters: 2 hashes; the 96-character partial third is dropped.
    odd = rq((1, 2, 3, 4, 5, 6), tokens=88, bt=16)
    r = p.choose(2, odd, 2.0, view(2, [0, 0]))
    assert list(p.table) == [(6, 64), (8, 64), (10, 64), (2, 64), (4, 64)]  # written last
    assert p.table[(4, 64)][r] == 2.0 and p.table[(6, 64)] == {first: 1.0}


def test_aibrix_one_pod() -> None:
    p = _aibrix()
    assert [p.choose(i, _one(), float(i), view(1, [i])) for i in range(3)] == [0, 0, 0]


# --- Ray Serve PrefixCacheAffinityRouter --------------------------------------------------------


def test_ray_candidates_are_the_tenants_of_the_deepest_node_only() -> None:
    # prefix_tree.py prefix_match: the tenants of the last node reached, not of the path.
    p = RayPrefixAffinityPolicy(block_tokens=BT)
    p.choose(0, rq((1,)), 0.0, view(3, [0, 0, 0]))  # cold -> 0 (smallest, list order)
    p.choose(1, rq((1, 2)), 0.0, view(3, [0, 0, 0]))  # rate 0.5 -> tenants of 1: {0}
    p.tree.insert((1, 2, 3), [40, 40, 40], 2)  # replica 2 also holds (1, 2, 3)
    # (1, 2, 3, 4): deepest node 3 -> {2}, though 0 is idle and holds (1, 2).
    assert p.choose(2, rq((1, 2, 3, 4)), 0.0, view(3, [0, 0, 5])) == 2
    # (1, 2, 9): deepest node 2 -> {0, 2}: lowest queue, then list order.
    assert p.choose(3, rq((1, 2, 9)), 0.0, view(3, [4, 0, 4])) == 0
    assert p.choose(4, rq((1, 2, 13)), 0.0, view(3, [5, 0, 4])) == 2


def test_ray_one_replica_and_below_threshold_goes_to_the_smallest_tree() -> None:
    one = RayPrefixAffinityPolicy(block_tokens=BT)
    assert [one.choose(i, rq((i,)), 0.0, view(1, [i])) for i in range(3)] == [0, 0, 0]
    p = RayPrefixAffinityPolicy(block_tokens=BT)
    p.tree.insert((1,), [40], 0)
    p.tree.insert((5, 6), [40, 40], 1)
    # 1 of 11 blocks = 0.09 < 0.1: smallest totals {2} (0 chars), not the tenants of 1.
    eleven = rq((1, *range(100, 110)))
    assert p.choose(0, eleven, 0.0, view(3, [0, 0, 9])) == 2


def test_ray_request_partial_block_against_a_stored_full_one_is_a_full_match() -> None:
    # prefix_tree.py:423-431: the request's text ends inside the stored node, so all of it
    # matches (rate 1.0) and the node's tenants are the candidates, however busy.
    p = RayPrefixAffinityPolicy(block_tokens=BT)
    p.tree.insert((1, 2), [40, 40], 0)
    assert p.tree.match((1, 2), [40, 20]).chars == 60
    assert p.choose(0, rq((1, 2), 15), 0.0, view(2, [3, 0])) == 0
    assert p.tree.chars == {0: 80}


def test_ray_ties_go_to_the_first_in_list_on_both_paths() -> None:
    # request_router.py _select_from_candidate_replicas: strictly lower queue replaces the
    # choice, so equal queues keep the first candidate; candidates come in the tree's
    # tenant order (prefix_tree.py:436-441, :569-574), replica order in the replay.
    # (Review 56: Ray's own prefix_tree.py beside ours, 0 differences in 114,434 decisions.)
    p = RayPrefixAffinityPolicy(block_tokens=BT)
    p.tree.insert((1, 2), [40, 40], 2)
    p.tree.insert((1, 2), [40, 40], 1)
    assert p.choose(0, rq((1, 2, 3)), 0.0, view(3, [0, 0, 0])) == 1
    assert p.choose(1, rq((60,)), 0.0, view(3, [0, 0, 0])) == 0


# --- every peer ----------------------------------------------------------------------------


def test_every_peer_is_deterministic_for_a_seed() -> None:
    # Each peer draws only from its own seeded random.Random (fact sheet section 10), so a
    # replay repeats decision for decision.
    reqs = synthetic_trace(seed=3, sessions=30, duration_s=40.0)
    model = ClusterModel(replicas=4)
    for name in PEER_POLICIES:
        runs = [
            simulate(reqs, make_policy(name, model, seed=7), model, speedup=4.0).replica
            for _ in range(2)
        ]
        assert runs[0] == runs[1], name


def test_prodstack_loadaware_ties_go_to_the_smallest_url_not_the_lowest_index() -> None:
    # Fact sheet section 6 step 4: scanned in URL order with a strict >. With 101 replicas
    # "replica-100" sorts before "replica-11". Two holders of a prompt never tie (LMCache
    # credits each chunk to the holder registered first only), so replica 5 holds it and the tie
    # is between the idle replicas 11 and 100 (score 1.0, above replica 5's 1 - 0.02).
    p = make_policy("prodstack-loadaware", ClusterModel(replicas=101, block_tokens=512))
    p.on_kv_events(5, 0, stored(1, 2), 0.0)
    v = view(101, [2] * 101)
    v.in_flight[11] = v.in_flight[100] = 0
    assert v.node_ids[p.choose(0, rq((1, 2), bt=512), 0.0, v)] == "replica-100"
    v = view(101)
    # No holder: the first endpoint in URL order never routed to wins at once.
    fresh = make_policy("prodstack-loadaware", ClusterModel(replicas=101, block_tokens=BT))
    assert fresh.choose(0, rq((9,)), 0.0, v) == 0  # "replica-00"
    assert v.node_ids[fresh.choose(1, rq((9,)), 0.0, v)] == "replica-01"
    picks = {v.node_ids[fresh.choose(i, rq((9,)), 0.0, v)] for i in range(2, 12)}
    assert "replica-100" in picks and "replica-11" not in picks  # 100 sorts first


def test_chars_per_token_sets_the_stand_in_text_of_the_character_based_peers() -> None:
    # Fact sheet section 10: C = 4 T by default, C = T for the sensitivity run. With 16-token
    # blocks AIBrix's 128-byte chunks are 2 blocks at C = 4 T and 8 blocks at C = T.
    prompt = rq(tuple(range(1, 17)), bt=16)
    for cpt, hashes in ((4, 8), (1, 2)):
        m = ClusterModel(replicas=2, block_tokens=16, chars_per_token=cpt)
        p = make_policy("aibrix-prefix-cache", m)
        p.choose(0, prompt, 0.0, view(2, [0, 0]))
        assert isinstance(p, AibrixPrefixCachePolicy) and len(p.table) == hashes
        for name in ("sglang-cache-aware", "smg-cache-aware", "ray-prefix-affinity"):
            tree = make_policy(name, m)
            tree.choose(0, prompt, 0.0, view(2, [0, 0]))
            assert tree.tree.chars[0] == 16 * 16 * cpt  # type: ignore[attr-defined]
        llmd = make_policy("llm-d-default", m)
        assert isinstance(llmd, LlmdDefaultPolicy)
        assert len(llmd._chunks(prompt)) == 16 * 16 * cpt // 64
        pp = make_policy("prodstack-prefix", m)
        assert isinstance(pp, ProdstackPrefixPolicy)
        assert len(pp._chunks(prompt)) == hashes
    for bad in (0, True, 1.5):
        with pytest.raises(InvalidRecordError):
            ClusterModel(chars_per_token=bad)  # type: ignore[arg-type]


# --- review 41: cases that killed surviving mutants ------------------------------------------


def test_llmd_default_a_re_added_chunk_becomes_the_most_recent() -> None:
    # Section 2: hashes are added as the most recent; the LRU holds num_gpu_blocks chunks
    # (one 16-token block each here, 2 of them).
    m = ClusterModel(replicas=1, block_tokens=16, cache_blocks=2)
    p = make_policy("llm-d-default", m)
    assert isinstance(p, LlmdDefaultPolicy)
    for i, b in enumerate((1, 2, 1, 3)):
        p.choose(i, rq((b,), bt=16), 0.0, view(1))
    assert p.prefix_scores(rq((1,), bt=16), 1) == [1.0]  # refreshed, kept
    assert p.prefix_scores(rq((2,), bt=16), 1) == [0.0]  # the least recent, evicted


def test_llmd_default_scores_only_the_candidate_pods() -> None:
    m3 = ClusterModel(replicas=3, block_tokens=16)
    p = make_policy("llm-d-default", m3)
    assert isinstance(p, LlmdDefaultPolicy)
    v3 = view(3, waiting=[0, 0, 0], kv_usage=[0.9, 0.9, 0.0])
    assert p.choose(0, rq((1,), bt=16), 0.0, v3) == 2
    # Pod 2 holds the prompt but is no candidate: nobody among 0-1 does, the walk stops.
    assert p.prefix_scores(rq((1,), bt=16), 2) == [0.0, 0.0]
    # Fewer replicas in the view: the index starts over rather than credit a gone pod.
    p.choose(1, rq((1,), bt=16), 0.0, view(2, waiting=[0, 0], kv_usage=[0.0, 0.5]))
    assert all(pods < 0b100 for pods in p.holders.values())  # bit masks of pods 0-1 only


def test_llmd_block_index_re_store_refreshes_and_best_tier_counts() -> None:
    idx = LlmdBlockIndex(pods_per_key=2)
    for pod in (0, 1, 0, 2):  # pod 0 stored again: pod 1 is now the least recent
        idx.apply(pod, stored(7))
    assert sorted(p for p, _ in idx.keys[7]) == [0, 2]
    both = LlmdBlockIndex()
    both.apply(0, stored(7))
    both.apply(0, _batch(_stored(7, medium="CPU")))
    assert both.runs((7,), 1) == [1.0]  # GPU and CPU copies: the better tier


def test_aibrix_an_entry_is_alive_at_exactly_twenty_minutes() -> None:
    # lru_store.go evicts entries idle for more than 20 min: at exactly 1200 s it matches.
    m = ClusterModel(replicas=2, block_tokens=40, cache_blocks=None)
    p = make_policy("aibrix-prefix-cache", m)
    assert p.choose(0, rq((1, 2), bt=40), 0.0, view(2, [0, 1])) == 0
    assert p.choose(1, rq((1, 2), bt=40), 1200.0, view(2, [1, 0])) == 0


def test_aibrix_percent_counts_matched_hashes_from_one() -> None:
    # hash.go: pct = (i + 1) x 100 / len(hashes). 32-token blocks: one 128-byte hash each.
    m = ClusterModel(replicas=2, block_tokens=32, cache_blocks=None)
    p = make_policy("aibrix-prefix-cache", m)
    assert p.choose(0, rq((1, 2, 3, 4), bt=32), 0.0, view(2, [1, 0])) == 1
    assert p.choose(1, rq((1, 2, 3), bt=32), 0.0, view(2, [0, 20])) == 0  # imbalance > 16
    # 300 hashes: pod 0 matched 3 (1 %), pod 1 matched 4 (4 x 100 // 300 = 1 %): a tie on
    # pct, so fewer in flight decides.
    assert p.choose(2, rq(tuple(range(1, 301)), bt=32), 0.0, view(2, [0, 1])) == 0
