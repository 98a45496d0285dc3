"""SGLang / SMG ``cache_aware`` against the source's radix nodes: review_42's hand-made
cases. Each expected result was worked out from SMG's code (smg @73da68ca for
``sglang-cache-aware``, @f8daa883 for ``smg-cache-aware``; ``model_gateway/src/policies/
cache_aware.rs`` and ``crates/kv_index/src/string_tree.rs``), where a node is the run of
text one insert created, cut only where a later text ends inside it or branches off it.
Each comment gives what the per-block tree the replay had before would have answered."""

from __future__ import annotations

import pytest
from peer_cases import BT, rq, view

from prefixcache.replay import SglangCacheAwarePolicy, SmgCacheAwarePolicy
from prefixcache.replay._peer_base import CharTree
from prefixcache.replay._peer_radix import map_rank

# --- nodes: created whole by one insert, cut by later ones -----------------------------


def test_an_insert_creates_one_node_and_a_later_branch_cuts_it() -> None:
    # insert_from: the new text below the tree is one node; a text branching off it
    # splits it there, both halves with the node's tenant map and last_tenant.
    tree = CharTree()
    tree.insert((1, 2, 3), (40, 40, 40), tenant=0)
    assert tree.ends == {3} and tree.node_end(1) == 3
    tree.insert((1, 2, 4), (40, 40, 40), tenant=1)
    assert tree.ends == {2, 3, 4}
    assert tree.owner == {2: 0, 3: 0, 4: 1}
    assert tree.origin[2] == tree.origin[3] == 3  # one map's order for both halves
    tree.insert((1,), (40,), tenant=2)  # a text ending inside a node cuts it too
    assert tree.ends == {1, 2, 3, 4} and set(tree.nodes[1]) == {0, 1, 2}
    tree._check()


# --- 1b. smg: which "up to 8" tenants ---------------------------------------------------


def _ten_owners(seed: int) -> SmgCacheAwarePolicy:
    p = SmgCacheAwarePolicy(block_tokens=BT, seed=seed)
    p._start(10)
    for t in range(10):
        p.tree.insert((1,), [40], t)
    return p


def test_smg_up_to_eight_tenants_in_map_order_not_the_lowest_indices() -> None:
    # Node::matched_tenants takes 8 tenants in DashMap order (a hash of the URL under a
    # per-map key): replicas 8 and 9 are among them unless both fall out, 44 times in 45.
    # The 8 lowest indices would always pick among 0..7 here (all busier than 8 and 9).
    picks = []
    for seed in range(50):
        p = _ten_owners(seed)
        kept = sorted(range(10), key=lambda t: map_rank(seed, p.tree.origin[1], t))[:8]
        assert p._candidates(1, 10) == sorted(kept)
        assert p._candidates(1, 10) == sorted(kept)  # fixed for the node, not per request
        r = p.choose(0, rq((1,)), 0.0, view(10, [5] * 8 + [0, 0]))  # mean 4: no spill
        assert (r in (8, 9)) == bool({8, 9} & set(kept))
        picks.append(r)
    assert sum(r in (8, 9) for r in picks) >= 45


def test_smg_with_eight_owners_or_fewer_every_owner_is_a_candidate() -> None:
    # Up to 8 tenants the cap takes them all, whatever the map order: the idle one wins.
    p = SmgCacheAwarePolicy(block_tokens=BT)
    p._start(8)
    for t in range(8):
        p.tree.insert((1,), [40], t)
    assert p.choose(0, rq((1,)), 0.0, view(8, [1] * 7 + [0])) == 7


# --- eviction: whole nodes, on a grid from the gateway's start ---------------------------


def test_eviction_grid_starts_at_t_zero_not_at_the_first_request() -> None:
    # PeriodicTask is spawned with the policy, at gateway start, and sleeps first: passes
    # at 10, 20, ... The pass at 10 finds 80 > 40 characters and drops block 1 (the
    # older). A grid from the first request (15, 25, ...) would keep {1, 2, 3}.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=40, eviction_interval_s=10.0)
    v = view(1, [0])
    p.choose(0, rq((1,)), 5.0, v)
    p.choose(1, rq((2,)), 6.0, v)
    p.choose(2, rq((3,)), 10.5, v)
    assert set(p.tree.nodes) == {2, 3}


def test_sglang_eviction_of_a_whole_node_flips_a_later_decision() -> None:
    # evict_tenant_by_size (per tenant, @73da68ca): replica 0 holds (1, 2, 3) as one node
    # (stamp 4) and (5,) (stamp 6), 160 > 80: the node goes whole, 40 <= 80, stop. (1, 9)
    # then misses -> the min-load replica 1. Trimming block by block would keep block 1,
    # a hit at rate 0.5 on replica 0.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=80, eviction_interval_s=10.0)
    assert p.choose(0, rq((1, 2, 3)), 0.0, view(2, [0, 0])) == 0
    assert p.choose(1, rq((5,)), 1.0, view(2, [0, 5])) == 0
    assert p.choose(2, rq((1, 9)), 11.0, view(2, [5, 0])) == 1


def test_smg_one_budget_is_checked_between_whole_nodes() -> None:
    # @f8daa883: total 160 > 80; the oldest entry, (replica 0, node (1, 2, 3)), goes whole
    # and leaves 40 <= 80. (1, 9) misses -> replica 1. Block-wise trimming would stop at
    # 80 with block 1 kept: a hit on replica 0.
    p = SmgCacheAwarePolicy(block_tokens=BT, max_tree_chars=80, eviction_interval_s=10.0)
    assert p.choose(0, rq((1, 2, 3)), 0.0, view(2, [0, 0])) == 0
    assert p.choose(1, rq((5,)), 1.0, view(2, [0, 0])) == 1  # processed breaks the tie
    assert p.choose(2, rq((1, 9)), 11.0, view(2, [5, 0])) == 1
    assert 2 not in p.tree.nodes and 3 not in p.tree.nodes
    assert p.tree.chars == {0: 0, 1: 120}
    p.tree._check()


# --- the match's stamp refresh and the owner fallback act on the whole node -------------


def test_sglang_refresh_stamps_the_whole_node_and_a_split_keeps_it() -> None:
    # match_and_insert_with: the 1-in-8 touch stamps the node where the match ended,
    # (1, 2, 3), before the insert of (1, 2, 8) splits it, so [1, 2] and [3] both carry
    # 8 and [7] (stamp 4) is the oldest leaf at the pass. Stamping block 2 alone would
    # leave [3] at 2, evicted first: {1, 2, 7, 8, 20}.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=160, eviction_interval_s=10.0)
    v = view(1, [0])
    p.choose(0, rq((1, 2, 3)), 0.0, v)
    p.choose(1, rq((7,)), 1.0, v)
    p.tree.op = 8  # this lookup's stamp is a multiple of 8
    assert p.choose(2, rq((1, 2, 8)), 2.0, v) == 0  # a hit, rate 2/3
    assert p.tree.nodes[2][0] == p.tree.nodes[3][0] == 8
    p.choose(3, rq((20,)), 11.0, v)
    assert set(p.tree.nodes) == {1, 2, 3, 8, 20}


def test_sglang_owner_fallback_is_stored_for_the_whole_node() -> None:
    # match_prefix_with_counts stores the replacement last_tenant on the node, and the
    # split copies it to both halves: once replica 0 rejoins, (1, 2, 3) still resolves to
    # 1. With an owner per block, block 3 would keep owner 0 and win it back.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=120, eviction_interval_s=10.0)
    assert p.choose(0, rq((1, 2, 3)), 0.0, view(3, [0, 0, 0])) == 0
    assert p.choose(1, rq((1, 2, 3)), 1.0, view(3, [100, 0, 0])) == 1  # switch: 1 joins
    assert p.choose(2, rq((4, 5, 6)), 2.0, view(3, [0, 5, 5])) == 0
    # The pass at 10 takes replica 0 (240 > 120) off (1, 2, 3); its owner is gone -> 1.
    assert p.choose(3, rq((1, 2)), 11.0, view(3, [0, 0, 0])) == 1
    assert p.choose(4, rq((1, 2, 3)), 12.0, view(3, [0, 100, 50])) == 0  # switch: 0 rejoins
    assert p.choose(5, rq((1, 2, 3)), 13.0, view(3, [0, 0, 0])) == 1
    p.tree._check()


# --- the stamp counter's phase ------------------------------------------------------------


@pytest.mark.parametrize(("n", "refreshed"), [(2, []), (3, [1, 5, 9]), (8, [2, 6, 10])])
def test_counter_starts_at_n_n_plus_1_over_2_and_a_request_takes_two(
    n: int, refreshed: list[int]
) -> None:
    # Registering n workers one by one runs init_workers over 1, 2, ..., n of them: one
    # empty insert (one tick) each, n (n + 1) / 2 in all. A balanced request ticks twice
    # (match, insert), so the match's tick is a multiple of 8 on every 4th request or on
    # none: n = 3 starts at 6 (ticks 6, 8, ...: requests 1, 5, 9); n = 2 at 3 (odd:
    # never); n = 8 at 36 (requests 2, 6, 10). Starting at n would refresh on none for
    # n = 3, on requests 3, 7, 11 for n = 2 and on 4, 8 for n = 8.
    p = SmgCacheAwarePolicy(block_tokens=BT)
    got = []
    last = None
    for i in range(12):
        assert p.choose(i, rq((1, 2, 3 + i)), float(i), view(n, [0] * n)) == 0
        stamp = p.tree.nodes[p.tree.node_end(2)][0]  # replica 0 on the node holding (1, 2)
        if i > 0 and stamp != last:
            got.append(i)
        last = stamp
    assert got == refreshed


# Review 48: cases from smg's source for mutants the tests above let through.


def test_split_copies_the_cached_owner_not_the_lowest_tenant() -> None:
    # insert_from's split clones last_tenant (S1 string_tree.rs:481-487): replica 1
    # created (1, 2, 3), replica 0 joined it; the cut at 2 keeps owner 1 for [1, 2].
    p = SglangCacheAwarePolicy(block_tokens=BT)
    assert p.choose(0, rq((1, 2, 3)), 0.0, view(2, [5, 0])) == 1  # miss: 1 creates
    assert p.choose(1, rq((1, 2, 3)), 0.0, view(2, [0, 100])) == 0  # switch: 0 joins
    assert p.choose(2, rq((1, 2)), 0.0, view(2, [0, 0])) == 1  # owner 1; the insert cuts
    assert p.tree.owner[2] == 1
    assert p.choose(3, rq((1, 2)), 0.0, view(2, [0, 0])) == 1


def test_owner_fallback_takes_the_lowest_remaining_index() -> None:
    # Fact sheet section 10 resolves SMG's "first in map order" by index.
    p = SglangCacheAwarePolicy(block_tokens=BT)
    p.choose(0, rq((1, 2)), 0.0, view(3, [0, 0, 0]))  # 0 creates
    p.choose(1, rq((1, 2)), 0.0, view(3, [100, 100, 0]))  # switch: 2 joins
    p.choose(2, rq((1, 2)), 0.0, view(3, [100, 0, 100]))  # switch: 1 joins
    p.tree._remove(2, 0)
    assert p.choose(3, rq((1, 2)), 0.0, view(3, [0, 0, 0])) == 1


def test_both_halves_of_a_split_keep_one_map_order() -> None:
    p = SmgCacheAwarePolicy(block_tokens=BT)
    p._start(10)
    for t in range(10):
        p.tree.insert((1, 2, 3), [40] * 3, t)
    p.tree.insert((1, 2, 4), [40] * 3, 0)  # cuts (1, 2, 3) at 2
    assert p._candidates(2, 10) == p._candidates(3, 10)


def test_map_order_depends_on_the_seed() -> None:
    kept = {
        tuple(sorted(sorted(range(10), key=lambda t: map_rank(s, 1, t))[:8])) for s in range(20)
    }
    assert len(kept) > 1


def test_first_request_after_the_first_grid_point() -> None:
    # Passes at 10, 20 find an empty tree; the next is at 30, so nothing runs at 26.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=40, eviction_interval_s=10.0)
    p.choose(0, rq((1, 2)), 25.0, view(1, [0]))
    p.choose(1, rq((3,)), 26.0, view(1, [0]))
    assert set(p.tree.nodes) == {1, 2, 3}


def test_a_long_gap_merges_passes_and_keeps_the_grid() -> None:
    # Passes at 10 and 20 run before the request at 25 (40 <= 40: nothing); the next is
    # at 30, not 26.
    p = SglangCacheAwarePolicy(block_tokens=BT, max_tree_chars=40, eviction_interval_s=10.0)
    p.choose(0, rq((1,)), 1.0, view(1, [0]))
    p.choose(1, rq((2,)), 25.0, view(1, [0]))
    p.choose(2, rq((3,)), 26.0, view(1, [0]))
    assert set(p.tree.nodes) == {1, 2, 3}


def test_a_third_worker_registered_later_adds_three_ticks() -> None:
    # update_policies.rs:112-130: registering worker 3 runs init_workers over all 3
    # (one insert_text("") each): 1 + 2 + 3 = 6 ticks in all, not 1 + 2 + 6.
    p = SglangCacheAwarePolicy(block_tokens=BT)
    p._start(2)
    assert p.tree.op == 3
    p._start(3)
    assert p.tree.op == 6


@pytest.mark.parametrize("every", [0.0, -1.0, float("inf"), float("nan")])
def test_an_eviction_interval_that_is_not_a_finite_positive_number_is_a_typed_error(
    every: float,
) -> None:
    with pytest.raises(ValueError, match="eviction_interval_s"):
        SglangCacheAwarePolicy(block_tokens=BT, eviction_interval_s=every)
