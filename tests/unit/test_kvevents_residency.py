"""KvResidency: identity by our chain, refcounts, sequence rules, namespaces, caps.

Each test states the counterfactual it guards against.
"""

from __future__ import annotations

import msgspec
import pytest
from engine_structs import SgMapBatch, SgMapStored, SmBatch, SmMetadata, SmStoredWithMetadata
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from clusterrouting import InvalidRecordError
from prefixcache import Candidate, ReplicaKey, extract_token_chain
from prefixcache.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KvResidency,
    ResidencyState,
    decode_payload,
    extract_kv_chain,
)

A, B, C = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")
EXACT, DEGRADED, UNKNOWN = ResidencyState.EXACT, ResidencyState.DEGRADED, ResidencyState.UNKNOWN
TOKENS = list(range(100, 132))  # 8 blocks of 4


def stored(hashes, tokens, *, parent=None, size=4, medium="GPU", **kw) -> BlockStored:  # type: ignore[no-untyped-def]
    return BlockStored(
        block_hashes=hashes,
        parent_block_hash=parent,
        token_ids=tokens,
        block_size=size,
        medium=medium,
        **kw,
    )


def batch(*events) -> EventBatch:  # type: ignore[no-untyped-def]
    return EventBatch(ts=0.0, rank=0, events=events)


def residency(**kw) -> KvResidency:  # type: ignore[no-untyped-def]
    kw.setdefault("block_tokens", 4)
    return KvResidency(clock=lambda: 0.0, **kw)


def test_chain_without_lora_or_salt_equals_extract_token_chain() -> None:
    # Counterfactual: a different root would silently invalidate every user's chains.
    assert extract_kv_chain("m", TOKENS, block_tokens=4) == extract_token_chain(
        "m", TOKENS, block_tokens=4
    )
    res = residency()
    assert res.chain("m", [*TOKENS, 1, 2]) == extract_token_chain("m", TOKENS, block_tokens=4)


def test_stored_blocks_are_identified_by_our_chain_not_the_engine_hash() -> None:
    res = residency()
    # Engine hashes are arbitrary (any algorithm, any seed): only the tokens matter.
    res.apply(A, 0, batch(stored([999, 5], TOKENS[:8])), model="m")
    res.apply(B, 0, batch(stored([1, 2], TOKENS[:8])), model="m")
    assert res.overlap("m", TOKENS, [A, B, C]) == {A: 2, B: 2, C: 0}
    assert res.overlap("other-model", TOKENS, [A]) == {A: 0}
    res._check()


def test_child_store_continues_from_the_parent_canonical_hash() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([10], TOKENS[:4])), model="m")
    report = res.apply(A, 1, batch(stored([11, 12], TOKENS[4:12], parent=10)), model="m")
    assert (report.applied_stores, report.stored_blocks) == (1, 2)
    # The child's hashes equal the chain of the whole prompt: a prefix query matches 3.
    assert res.overlap("m", TOKENS, [A]) == {A: 3}
    assert res.overlap_chain(extract_token_chain("m", TOKENS, block_tokens=4), [A]) == {A: 3}


def test_engine_blocks_of_a_multiple_size_are_split() -> None:
    res = residency()
    report = res.apply(A, 0, batch(stored([1, 2], TOKENS[:16], size=8)), model="m")
    assert report.stored_blocks == 2
    assert res.overlap("m", TOKENS, [A]) == {A: 4}  # 2 engine blocks = 4 of ours
    assert res.status(A).canonical_blocks == 4


def test_engine_block_size_not_a_multiple_is_dropped_counted_and_degrades() -> None:
    # Counterfactual: left exact, a replica whose engine blocks never fit ours (block_tokens
    # not dividing the engine's block size: SGLang's page size 1, say) looks cold to
    # fill_cached_tokens, which trusts exact replicas, instead of falling back to the mirror.
    res = residency()
    report = res.apply(A, 0, batch(stored([1], TOKENS[:6], size=6)), model="m")
    assert (report.dropped_block_size, report.applied_stores) == (1, 0)
    assert res.overlap("m", TOKENS, [A]) == {A: 0}
    assert res.state(A) is DEGRADED
    res.apply(A, 1, batch(AllBlocksCleared()), model="m")
    assert res.state(A) is EXACT


@pytest.mark.parametrize(
    "event",
    [
        stored([1], TOKENS[:2], size=2),  # a page shorter than our block (SGLang's last page)
        stored([1], [], size=0),  # a placeholder: no tokens
        stored([], []),  # no block
    ],
)
def test_a_drop_that_held_no_block_of_ours_keeps_the_replica_exact(event: BlockStored) -> None:
    # Counterfactual: degrading on every drop would turn SGLang's short last pages and the
    # CPU tier's placeholders into a replica that never routes on its events.
    res = residency()
    res.apply(A, 0, batch(event), model="m")
    assert res.state(A) is EXACT


@pytest.mark.parametrize(
    "event",
    [
        stored([1], TOKENS[:5], size=4),  # 5 tokens in a 4-token block: one block of ours
        stored([1, 2], TOKENS[:4], size=4),  # 4 tokens for two blocks: exactly one of ours
        stored([1, 2], TOKENS[:4], size=2),  # two 2-token pages: exactly one block of ours
    ],
)
def test_a_drop_that_held_a_whole_block_of_ours_degrades(event: BlockStored) -> None:
    # Counterfactual: left exact, the replica would be priced as holding nothing.
    res = residency()
    res.apply(A, 0, batch(event), model="m")
    assert res.state(A) is DEGRADED


def test_sglang_pages_shorter_than_our_block_degrade_a_chain_not_a_last_page() -> None:
    # SGLang sends one store per page (block_size = the page's length; its page size is 1
    # by default): no single page holds a block of ours, but the second page of a chain
    # continues one we do not hold. Counterfactual: the replica stayed exact and empty.
    res = residency()
    res.apply(A, 0, batch(*[stored([h], TOKENS[h - 1 : h], parent=h - 1 if h > 1 else None,
                                   size=1) for h in range(1, 9)]), model="m")  # fmt: skip
    assert res.state(A) is DEGRADED
    # A short last page after a block we hold is only the prompt's tail.
    ok = residency()
    ok.apply(A, 0, batch(stored([1], TOKENS[:4]), stored([2], TOKENS[4:6], parent=1, size=2)),
             model="m")  # fmt: skip
    assert (ok.state(A), ok.overlap("m", TOKENS, [A])) == (EXACT, {A: 1})


@pytest.mark.parametrize(
    "event",
    [
        stored([1, 2], TOKENS[:7]),  # tokens not a multiple of block_size
        stored([1], [], size=0),  # CPU placeholder
        stored([], []),  # no block
    ],
)
def test_tokens_that_do_not_fill_the_blocks_are_dropped(event: BlockStored) -> None:
    report = residency().apply(A, 0, batch(event), model="m")
    assert (report.dropped_tokens, report.stored_blocks) == (1, 0)


def test_media_not_routed_on_are_dropped_and_none_means_gpu() -> None:
    res = residency()
    report = res.apply(
        A,
        0,
        batch(stored([1], TOKENS[:4], medium="CPU"), stored([2], TOKENS[:4], medium=None)),
        model="m",
    )
    assert (report.dropped_medium, report.applied_stores) == (1, 1)
    assert res.overlap("m", TOKENS, [A]) == {A: 1}
    # With CPU routed on too, the CPU copy counts as well.
    both = residency(media={"GPU", "CPU"})
    both.apply(A, 0, batch(stored([1], TOKENS[:4], medium="CPU")), model="m")
    assert both.overlap("m", TOKENS, [A]) == {A: 1}


def test_only_the_main_group_is_indexed() -> None:
    res = residency()
    report = res.apply(A, 0, batch(stored([1], TOKENS[:4], group_idx=1)), model="m")
    assert report.dropped_group == 1
    assert res.overlap("m", TOKENS, [A]) == {A: 0}


FA, SWA = "full_attention", "sliding_window"


def test_a_hybrid_models_full_attention_group_is_found_by_its_kind() -> None:
    # Counterfactual: indexing group 0 by number indexes a sliding-window group when the
    # model's first layers are sliding-window ones (Gemma), and keeps crediting a prefix
    # after the engine evicted its full-attention blocks (vLLM PR #40984: group numbers
    # are layout details; kv_cache_spec_kind says what a group caches).
    res = residency()
    first = res.apply(A, 0, batch(
        stored([1, 2], TOKENS[:8], group_idx=0, kv_cache_spec_kind=SWA),
        stored([1, 2], TOKENS[:8], group_idx=1, kv_cache_spec_kind=FA),
    ), model="m")  # fmt: skip
    assert (first.dropped_group, first.applied_stores) == (1, 1)
    assert res.overlap("m", TOKENS, [A]) == {A: 2}
    # The window's blocks go: nothing changes; the full-attention ones go: the prefix goes.
    res.apply(A, 1, batch(BlockRemoved(block_hashes=[1, 2], medium="GPU", group_idx=0)),
              model="m")  # fmt: skip
    assert res.overlap("m", TOKENS, [A]) == {A: 2}
    res.apply(A, 2, batch(BlockRemoved(block_hashes=[2], medium="GPU", group_idx=1)), model="m")
    assert res.overlap("m", TOKENS, [A]) == {A: 1}
    assert res.state(A) is EXACT


def test_a_dense_models_group_zero_says_full_attention() -> None:
    # Counterfactual: a later store of the main group without its kind must still go to it.
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4], group_idx=0, kv_cache_spec_kind=FA)),
              model="m")  # fmt: skip
    report = res.apply(A, 1, batch(stored([2], TOKENS[4:8], parent=1, group_idx=0)), model="m")
    assert report.applied_stores == 1  # the same group, its kind already known
    assert res.overlap("m", TOKENS, [A]) == {A: 2}


def test_the_main_group_is_learned_per_replica_and_again_after_a_restart() -> None:
    # Counterfactual: one main group for every replica, or kept across a restart, would
    # index the wrong group of a replica running another model.
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4], group_idx=1, kv_cache_spec_kind=FA)),
              model="m")  # fmt: skip
    res.apply(B, 0, batch(stored([1], TOKENS[:4], group_idx=0, kv_cache_spec_kind=FA)),
              model="m")  # fmt: skip
    assert res.overlap("m", TOKENS, [A, B]) == {A: 1, B: 1}
    # A restarts (seq back to 0) as a model whose full attention is group 0.
    res.apply(A, 0, batch(stored([1], TOKENS[:4], group_idx=0, kv_cache_spec_kind=FA)),
              model="m")  # fmt: skip
    assert res.status(A).restarts == 1
    assert res.overlap("m", TOKENS, [A]) == {A: 1}


def test_explicit_groups_override_the_kinds() -> None:
    # Counterfactual: a host that names its groups (a model it knows) must get them whatever
    # the kinds say, and nothing else.
    res = residency(groups={0})
    report = res.apply(A, 0, batch(
        stored([1], TOKENS[:4], group_idx=0, kv_cache_spec_kind=SWA),
        stored([1], TOKENS[:4], group_idx=1, kv_cache_spec_kind=FA),
    ), model="m")  # fmt: skip
    assert (report.applied_stores, report.dropped_group) == (1, 1)
    assert res.overlap("m", TOKENS, [A]) == {A: 1}
    with pytest.raises(InvalidRecordError, match="groups"):
        residency(groups={-1})


@pytest.mark.parametrize("kind", ["mla_attention", "sink_full_attention"])
def test_other_full_attention_kinds_are_main(kind: str) -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4], group_idx=2, kv_cache_spec_kind=kind)),
              model="m")  # fmt: skip
    assert res.overlap("m", TOKENS, [A]) == {A: 1}


def test_an_engine_naming_no_main_kind_degrades_its_replica() -> None:
    # Counterfactual: an engine whose groups all say another kind ("unknown" for a group of
    # mixed layers) had nothing indexed and stayed exact: priced as cold.
    res = residency()
    report = res.apply(A, 0, batch(stored([1], TOKENS[:4], kv_cache_spec_kind="unknown")),
                       model="m")  # fmt: skip
    assert report.dropped_group == 1
    assert res.state(A) is DEGRADED
    # A batch that names the main group after another kind's store does not degrade.
    ok = residency()
    ok.apply(A, 0, batch(stored([1], TOKENS[:4], group_idx=0, kv_cache_spec_kind=SWA),
                         stored([1], TOKENS[:4], group_idx=1, kv_cache_spec_kind=FA)),
             model="m")  # fmt: skip
    assert ok.state(A) is EXACT


def test_a_removal_before_the_main_group_is_named_waits_for_the_replay() -> None:
    # A late joiner's first live batch removes a block of group 1; the replay then brings
    # the store that names group 1 main. Counterfactual: the removal was dropped for its
    # group and the evicted block stayed credited on an exact replica.
    res = residency()
    res.apply(A, 5, batch(BlockRemoved(block_hashes=[1], medium="GPU", group_idx=1)), model="m")
    res.apply(A, 0, batch(stored([1], TOKENS[:4], group_idx=1, kv_cache_spec_kind=FA)),
              model="m", replayed=True)  # fmt: skip
    for seq in range(1, 5):
        res.apply(A, seq, batch(), model="m", replayed=True)
    assert (res.state(A), res.overlap("m", TOKENS, [A])) == (EXACT, {A: 0})


def test_blocks_of_a_group_that_named_no_kind_go_when_another_is_named_main() -> None:
    # Counterfactual: group 0's blocks (stored before any kind was named) stayed credited
    # after group 1 was named main, and their removals were dropped for their group.
    res = residency()
    res.apply(A, 0, batch(stored([1, 2], TOKENS[:8], group_idx=0)), model="m")
    res.apply(A, 1, batch(stored([3], TOKENS[:4], group_idx=1, kv_cache_spec_kind=FA)),
              model="m")  # fmt: skip
    assert res.overlap("m", TOKENS, [A]) == {A: 1}
    assert res.status(A).blocks == 1


def test_a_group_less_store_naming_another_kind_is_dropped_on_a_warm_replica_too() -> None:
    # Counterfactual: the group-less route skipped the kind, so the same store was applied
    # on a replica that had seen a group-less store before and dropped on a fresh one.
    warm = residency()
    warm.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    report = warm.apply(A, 1, batch(stored([9], TOKENS[8:12], kv_cache_spec_kind=SWA)),
                        model="m")  # fmt: skip
    fresh = residency().apply(A, 0, batch(stored([9], TOKENS[8:12], kv_cache_spec_kind=SWA)),
                              model="m")  # fmt: skip
    assert report.dropped_group == fresh.dropped_group == 1


def test_duplicate_store_needs_two_removes() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([7], TOKENS[:4]), stored([7], TOKENS[:4])), model="m")
    first = res.apply(A, 1, batch(BlockRemoved(block_hashes=[7], medium="GPU")), model="m")
    # Counterfactual: forgetting at the first remove would lose a copy still cached.
    assert first.removed_blocks == 1
    assert res.overlap("m", TOKENS, [A]) == {A: 1}
    res.apply(A, 2, batch(BlockRemoved(block_hashes=[7], medium="GPU")), model="m")
    assert res.overlap("m", TOKENS, [A]) == {A: 0}
    assert res.status(A).blocks == 0
    res._check()


def test_refcounts_are_per_medium() -> None:
    res = residency(media={"GPU", "CPU"})
    res.apply(
        A, 0, batch(stored([7], TOKENS[:4]), stored([7], TOKENS[:4], medium="CPU")), model="m"
    )
    res.apply(A, 1, batch(BlockRemoved(block_hashes=[7], medium="CPU")), model="m")
    assert res.overlap("m", TOKENS, [A]) == {A: 1}  # the GPU copy is still there
    res.apply(A, 2, batch(BlockRemoved(block_hashes=[7], medium="GPU")), model="m")
    assert res.overlap("m", TOKENS, [A]) == {A: 0}


def test_a_block_of_ours_held_by_several_engine_blocks_stays_until_the_last_goes() -> None:
    # Two engine hashes (and a CPU copy) for the same tokens are one block of ours, held
    # three times. Counterfactual: releasing it with its first holder (or counting it once
    # per holder in the status) would lose or double a block still cached.
    res = residency(media={"GPU", "CPU"})
    res.apply(
        A,
        0,
        batch(
            stored([7], TOKENS[:4]), stored([8], TOKENS[:4]), stored([9], TOKENS[:4], medium="CPU")
        ),
        model="m",
    )
    res.apply(B, 0, batch(stored([7], TOKENS[:4])), model="m")
    assert (res.status(A).blocks, res.status(A).canonical_blocks) == (3, 1)
    res._check()
    for seq, (h, medium) in enumerate([(8, "GPU"), (9, "CPU")], start=1):
        res.apply(A, seq, batch(BlockRemoved(block_hashes=[h], medium=medium)), model="m")
        assert res.overlap("m", TOKENS, [A, B]) == {A: 1, B: 1}
        assert res.status(A).canonical_blocks == 1
        res._check()
    res.apply(A, 3, batch(BlockRemoved(block_hashes=[7], medium="GPU")), model="m")
    assert res.overlap("m", TOKENS, [A, B]) == {A: 0, B: 1}
    assert res.status(A).canonical_blocks == 0
    res._check()


def test_dropping_a_replica_releases_blocks_of_ours_held_several_times() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([7], TOKENS[:4]), stored([8], TOKENS[:4])), model="m")
    res.apply(B, 0, batch(stored([7], TOKENS[:4])), model="m")
    # Counterfactual: a clear that walked the shared hash twice would strip B's bit or fail.
    res.apply(A, 1, batch(AllBlocksCleared()), model="m")
    assert res.overlap("m", TOKENS, [A, B]) == {A: 0, B: 1}
    assert res.status(A).canonical_blocks == 0
    res._check()
    assert res.forget(B) == 1
    assert res.overlap("m", TOKENS, [A, B]) == {A: 0, B: 0}
    res._check()


def test_removal_of_an_unknown_block_is_counted_and_harmless() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([7], TOKENS[:4])), model="m")
    report = res.apply(A, 1, batch(BlockRemoved(block_hashes=[8, 9], medium="GPU")), model="m")
    assert (report.unknown_removals, report.removed_blocks) == (2, 0)
    assert res.overlap("m", TOKENS, [A]) == {A: 1}
    assert res.state(A) is EXACT


def test_self_referencing_store_is_dropped() -> None:
    res = residency()
    report = res.apply(
        A, 0, batch(stored([5, 5], TOKENS[:8]), stored([6], TOKENS[:4], parent=6)), model="m"
    )
    assert report.dropped_self_reference == 2
    assert res.status(A).blocks == 0


def test_orphan_without_a_gap_is_dropped_and_degrades() -> None:
    res = residency()
    res.apply(A, 0, batch(), model="m")
    report = res.apply(A, 1, batch(stored([2], TOKENS[4:8], parent=1)), model="m")
    # Counterfactual: hashing from the model salt would invent a block at the wrong depth.
    assert report.dropped_orphan == 1
    assert res.state(A) is DEGRADED
    assert res.status(A).blocks == 0


def test_all_blocks_cleared_drops_everything_and_resets_to_exact() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1, 2], TOKENS[:8])), model="m")
    res.apply(A, 1, batch(stored([3], TOKENS[8:12], parent=9)), model="m")  # orphan: degraded
    assert res.state(A) is DEGRADED
    report = res.apply(A, 2, batch(AllBlocksCleared(), stored([4], TOKENS[:4])), model="m")
    assert (report.applied_clears, report.cleared_blocks) == (1, 2)
    assert res.state(A) is EXACT
    assert res.overlap("m", TOKENS, [A]) == {A: 1}  # stored after the clear, in the same batch


# --- sequence numbers -----------------------------------------------------------------
def test_first_batch_at_zero_is_exact_unknown_before() -> None:
    res = residency()
    assert res.state(A) is UNKNOWN
    assert res.apply(A, 0, batch(), model="m").state is EXACT


def test_first_batch_above_zero_is_degraded_until_replayed() -> None:
    res = residency()
    report = res.apply(A, 3, batch(stored([4], TOKENS[12:16], parent=3)), model="m")
    assert (report.state, report.missed, report.deferred) == (DEGRADED, 3, 1)
    assert res.missing_from(A) == 0
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m", replayed=True)
    res.apply(A, 1, batch(stored([2], TOKENS[4:8], parent=1)), model="m", replayed=True)
    assert res.state(A) is DEGRADED
    last = res.apply(A, 2, batch(stored([3], TOKENS[8:12], parent=2)), model="m", replayed=True)
    # The deferred store of seq 3 found its parent: the whole prefix is held.
    assert (last.state, last.filled, last.resumed) == (EXACT, 1, 1)
    assert res.overlap("m", TOKENS, [A]) == {A: 4}
    res._check()


def test_seq_gap_degrades_and_a_replay_that_closes_it_restores_exact() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    gap = res.apply(A, 3, batch(), model="m")
    assert (gap.state, gap.missed) == (DEGRADED, 2)
    assert res.missing_from(A) == 1
    res.apply(A, 1, batch(stored([2], TOKENS[4:8], parent=1)), model="m", replayed=True)
    assert res.state(A) is DEGRADED
    res.apply(A, 2, batch(), model="m", replayed=True)
    assert res.state(A) is EXACT
    assert res.missing_from(A) is None
    assert res.overlap("m", TOKENS, [A]) == {A: 2}


def test_replayed_batches_already_applied_are_duplicates() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    res.apply(A, 1, batch(stored([1], TOKENS[:4])), model="m")
    again = res.apply(A, 1, batch(stored([1], TOKENS[:4])), model="m", replayed=True)
    # Counterfactual: re-applying would add a third copy that no removal will ever match.
    assert (again.duplicate, again.stored_blocks, again.restarted) == (True, 0, False)
    res.apply(A, 2, batch(BlockRemoved(block_hashes=[1, 1], medium="GPU")), model="m")
    assert res.overlap("m", TOKENS, [A]) == {A: 0}


def test_seq_going_backwards_is_a_restart_that_drops_everything() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1, 2], TOKENS[:8])), model="m")
    res.apply(A, 1, batch(), model="m")
    report = res.apply(A, 0, batch(stored([5], TOKENS[16:20])), model="m")
    assert (report.restarted, report.cleared_blocks, report.state) == (True, 2, EXACT)
    assert res.overlap("m", TOKENS, [A]) == {A: 0}
    assert res.status(A).restarts == 1
    res._check()


def test_restart_seen_late_is_degraded() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    res.apply(A, 9, batch(), model="m")
    report = res.apply(A, 4, batch(), model="m")  # a new publisher, its 0..3 missed
    assert (report.restarted, report.state, report.missed) == (True, DEGRADED, 4)


def test_repeated_live_seq_counts_as_a_restart() -> None:
    # A publisher that sent only seq 0 and restarted sends seq 0 again: non-increasing.
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    assert res.apply(A, 0, batch(), model="m").restarted
    assert res.overlap("m", TOKENS, [A]) == {A: 0}


def test_replayed_batch_is_never_a_restart() -> None:
    res = residency()
    res.apply(A, 5, batch(stored([1], TOKENS[:4])), model="m")
    report = res.apply(A, 2, batch(), model="m", replayed=True)
    assert (report.restarted, report.filled) == (False, 1)
    assert res.overlap("m", TOKENS, [A]) == {A: 1}


def test_a_replay_beyond_the_live_stream_then_the_live_copy() -> None:
    res = residency()
    res.apply(A, 0, batch(), model="m")
    res.apply(A, 2, batch(), model="m")  # gap: 1
    res.apply(A, 1, batch(), model="m", replayed=True)
    res.apply(A, 3, batch(stored([1], TOKENS[:4])), model="m", replayed=True)  # ahead of live
    live = res.apply(A, 3, batch(stored([1], TOKENS[:4])), model="m")
    # Counterfactual: comparing with the highest applied seq would call this a restart.
    assert (live.restarted, live.duplicate) == (False, True)
    assert res.state(A) is EXACT
    assert res.status(A).blocks == 1


def test_removal_during_a_gap_waits_for_the_store_it_removes() -> None:
    res = residency()
    res.apply(A, 0, batch(), model="m")
    res.apply(A, 2, batch(BlockRemoved(block_hashes=[1], medium="GPU")), model="m")
    res.apply(A, 1, batch(stored([1], TOKENS[:4])), model="m", replayed=True)
    # Store (seq 1) then remove (seq 2): nothing is held, though they arrived reversed.
    assert res.overlap("m", TOKENS, [A]) == {A: 0}
    assert res.state(A) is EXACT
    res._check()


def test_replayed_clear_is_followed_by_the_later_batches_again() -> None:
    # A replay sends every seq from its start on: after a replayed clear, the batches
    # after it are applied again, in order, on the cleared record. Counterfactual: keeping
    # what they stored out of order mixes copies the clear removed with later ones.
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    res.apply(A, 2, batch(stored([9], TOKENS[16:20])), model="m")
    report = res.apply(A, 1, batch(AllBlocksCleared()), model="m", replayed=True)
    assert report.missed == 1 and res.missing_from(A) == 2
    assert res.overlap("m", TOKENS, [A]) == {A: 0}  # block 1 (seq 0) cleared
    assert res.state(A) is DEGRADED  # seq 2 must be applied again
    res.apply(A, 2, batch(stored([9], TOKENS[16:20])), model="m", replayed=True)
    assert res.overlap("m", TOKENS[16:], [A]) == {A: 1}  # block 9 (seq 2) back
    assert res.state(A) is EXACT and res.status(A).blocks == 1


def test_malformed_events_degrade() -> None:
    res = residency()
    report = res.apply(A, 0, EventBatch(ts=0.0, events=[], dropped=1), model="m")
    assert (report.decode_dropped, report.state) == (1, DEGRADED)


# --- namespaces -----------------------------------------------------------------------
def test_lora_blocks_match_only_the_same_adapter() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4], lora_name="sql")), model="m")
    res.apply(B, 0, batch(stored([1], TOKENS[:4])), model="m")
    assert res.overlap("m", TOKENS, [A, B]) == {A: 0, B: 1}
    assert res.overlap("m", TOKENS, [A, B], lora_name="sql") == {A: 1, B: 0}


def test_cache_salt_in_extra_keys_is_a_namespace() -> None:
    res = residency()
    # vLLM: the first block's extra keys carry the LoRA name, then the cache salt.
    res.apply(
        A,
        0,
        batch(
            stored([1, 2], TOKENS[:8], lora_name="sql", extra_keys=[["sql", "tenant-1"], ["sql"]])
        ),
        model="m",
    )
    res.apply(B, 0, batch(stored([1], TOKENS[:4], extra_keys=[["tenant-1"]])), model="m")
    assert res.overlap("m", TOKENS, [A, B]) == {A: 0, B: 0}
    assert res.overlap("m", TOKENS, [A, B], cache_salt="tenant-1") == {A: 0, B: 1}
    assert res.overlap("m", TOKENS, [A, B], lora_name="sql", cache_salt="tenant-1") == {A: 2, B: 0}


def test_a_salt_equal_to_the_adapter_name_is_still_a_salt() -> None:
    # Counterfactual: dropping every key equal to the adapter's name also dropped such a
    # salt, so the tenant that wrote the blocks got 0 and an unsalted request got them
    # (vLLM lists the adapter's name first, then the salt on the first block).
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4], lora_name="acme", extra_keys=[["acme", "acme"]])),
              model="m")  # fmt: skip
    assert res.overlap("m", TOKENS, [A], lora_name="acme", cache_salt="acme") == {A: 1}
    assert res.overlap("m", TOKENS, [A], lora_name="acme") == {A: 0}


def test_salted_child_continues_in_its_namespace() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4], extra_keys=[["t"]])), model="m")
    res.apply(A, 1, batch(stored([2], TOKENS[4:8], parent=1)), model="m")
    assert res.overlap("m", TOKENS, [A], cache_salt="t") == {A: 2}
    assert res.overlap("m", TOKENS, [A]) == {A: 0}


def test_sglang_salted_stores_off_the_wire_live_in_the_salts_namespace() -> None:
    # Counterfactual: SGLang's salt (a metadata map where vLLM has lora_name, or a
    # cache_salt key) read as an adapter, or not read, would drop its salted blocks or
    # credit them to unsalted requests, which the engine never serves from them.
    root = SmStoredWithMetadata(
        block_hashes=[-1],
        parent_block_hash=None,
        token_ids=TOKENS[:4],
        block_size=4,
        lora_id=None,
        medium="GPU",
        metadata=SmMetadata(cache_salt="t", session_id="chat-1"),
    )
    child = SmStoredWithMetadata(
        block_hashes=[-2],
        parent_block_hash=-1,
        token_ids=TOKENS[4:8],
        block_size=4,
        lora_id=None,
        medium="GPU",
        metadata=SmMetadata(cache_salt="t", session_id="chat-2"),
    )
    mapped = SgMapStored(
        block_hashes=[-3],
        parent_block_hash=None,
        token_ids=TOKENS[:4],
        block_size=4,
        lora_id=None,
        medium="GPU",
        cache_salt="t",
    )
    res = residency()
    for key, events in ((A, [root, child]), (B, [mapped])):
        payload = msgspec.msgpack.encode(
            SmBatch(ts=0.0, events=events) if key == A else SgMapBatch(ts=0.0, events=events)
        )
        report = res.apply(key, 0, decode_payload(payload, flavour="sglang"), model="m")
        assert (report.applied_stores, report.decode_dropped) == (len(events), 0)
    assert res.overlap("m", TOKENS, [A, B], cache_salt="t") == {A: 2, B: 1}
    assert res.overlap("m", TOKENS, [A, B]) == {A: 0, B: 0}
    assert res.overlap("m", TOKENS, [A, B], cache_salt="u") == {A: 0, B: 0}


def test_multimodal_keys_on_a_later_block_stop_a_token_only_match() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1, 2, 3], TOKENS[:12], extra_keys=[None, ["img-hash"], None])),
              model="m")  # fmt: skip
    # Tokens alone cannot tell two images apart: only the block before the image matches.
    assert res.overlap("m", TOKENS, [A]) == {A: 1}


# --- queries, caps, misuse ------------------------------------------------------------
def test_overlap_accepts_candidate_records_and_ignores_unknown_keys() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1, 2, 3], TOKENS[:12])), model="m")
    res.apply(B, 0, batch(stored([1], TOKENS[:4])), model="m")
    got = res.overlap("m", TOKENS, [Candidate(A), Candidate(B, in_flight=3), Candidate(C)])
    assert got == {A: 3, B: 1, C: 0}
    assert res.overlap("m", TOKENS[:3], [A]) == {A: 0}  # no full block
    assert res.overlap("m", [], []) == {}


def test_overlap_counts_leading_blocks_only() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    other = [1, 1, 1, 1, *TOKENS[4:8]]
    res.apply(A, 1, batch(stored([7, 8], other)), model="m")
    assert res.overlap("m", TOKENS, [A]) == {A: 1}  # block 2 of TOKENS is not held


def test_forget_makes_a_replica_unknown_and_frees_everything() -> None:
    res = residency()
    res.apply(A, 0, batch(stored([1, 2], TOKENS[:8])), model="m")
    res.apply(B, 0, batch(stored([1], TOKENS[:4])), model="m")
    assert res.forget(A) == 2
    assert res.state(A) is UNKNOWN
    assert res.overlap("m", TOKENS, [A, B]) == {A: 0, B: 1}
    res._check()
    res.apply(C, 0, batch(stored([1], TOKENS[:4])), model="m")  # reuses A's slot
    assert res.overlap("m", TOKENS, [A, B, C]) == {A: 0, B: 1, C: 1}
    res._check()


def test_block_cap_forgets_the_oldest_stored() -> None:
    res = residency(max_blocks_per_replica=2)
    res.apply(A, 0, batch(stored([1], TOKENS[:4])), model="m")
    report = res.apply(A, 1, batch(stored([2, 3], TOKENS[4:12], parent=1)), model="m")
    assert report.evicted_blocks == 1
    assert res.status(A).blocks == 2
    assert res.overlap("m", TOKENS, [A]) == {A: 0}  # the root block went first
    res._check()


def test_replica_cap_refuses_new_replicas() -> None:
    res = residency(max_replicas=1)
    res.apply(A, 0, batch(), model="m")
    report = res.apply(B, 0, batch(stored([1], TOKENS[:4])), model="m")
    assert (report.refused, report.state) == (True, UNKNOWN)
    assert res.replicas() == frozenset({A})


def test_status_reports_sizes_sequence_and_time() -> None:
    res = KvResidency(block_tokens=4, clock=lambda: 123.0)
    res.apply(A, 0, batch(stored([1], TOKENS[:8], size=8)), model="m")
    res.apply(A, 4, batch(), model="m", now=130.0)
    status = res.status(A)
    assert (status.blocks, status.canonical_blocks, status.last_seq) == (1, 2, 4)
    assert (status.missing, status.updated_at, status.state) == (3, 130.0, DEGRADED)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"replica": "a"}, "replica"),
        ({"seq": -1}, "seq"),
        ({"seq": 1 << 64}, "seq"),
        ({"batch": [AllBlocksCleared()]}, "batch"),
        ({"model": None}, "model"),
    ],
)
def test_apply_misuse_raises_naming_the_argument(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"replica": A, "seq": 0, "batch": batch(), "model": "m"}
    args.update(kwargs)
    with pytest.raises(InvalidRecordError) as info:
        residency().apply(args["replica"], args["seq"], args["batch"], model=args["model"])  # type: ignore[arg-type]
    assert info.value.field == field


def test_constructor_misuse() -> None:
    with pytest.raises(InvalidRecordError, match="block_tokens"):
        KvResidency(block_tokens=0)
    with pytest.raises(InvalidRecordError, match="media"):
        KvResidency(media="GPU")
    # Counterfactual: no medium was accepted, and every stored block then ignored.
    for none in ([], (), frozenset()):
        with pytest.raises(InvalidRecordError, match="at least one medium"):
            KvResidency(media=none)
    assert KvResidency(media=["GPU", "CPU"]).media == {"GPU", "CPU"}
    with pytest.raises(InvalidRecordError, match="candidates"):
        residency().overlap_chain((1,), ["a"])


def test_report_counts_only_what_happened_and_names_are_checked() -> None:
    report = residency().apply(A, 0, batch(stored([1, 2], TOKENS[:8])), model="m")
    assert report.counts == (("applied_stores", 1), ("stored_blocks", 2))
    assert (report.stored_blocks, report.removed_blocks, report.count("applied_stores")) == (
        2,
        0,
        1,
    )
    with pytest.raises(InvalidRecordError, match="name"):
        report.count("stored")


def test_reports_of_equal_outcomes_are_equal_and_sorted_whatever_the_counting_order() -> None:
    # Counterfactual: reports shared by their tally in counting order would leak that order
    # into `counts` (or give two different reports for one outcome) if they were not sorted.
    res = residency()
    removal_first = res.apply(
        A, 0, batch(BlockRemoved(block_hashes=[9]), stored([1], TOKENS[:4])), model="m"
    )
    store_first = res.apply(
        B, 0, batch(stored([1], TOKENS[:4]), BlockRemoved(block_hashes=[9])), model="m"
    )
    expected = (
        ("applied_removes", 1),
        ("applied_stores", 1),
        ("stored_blocks", 1),
        ("unknown_removals", 1),
    )
    assert removal_first.counts == store_first.counts == expected
    assert removal_first == store_first


def test_a_parent_in_another_routed_medium_links_the_chain() -> None:
    res = residency(media={"GPU", "CPU"})
    res.apply(A, 0, batch(stored([1], TOKENS[:4], medium="CPU")), model="m")
    report = res.apply(A, 1, batch(stored([2], TOKENS[4:8], parent=1)), model="m")
    # Counterfactual: looking only in the GPU table would call the store an orphan.
    assert (report.applied_stores, report.dropped_orphan) == (1, 0)
    assert res.overlap("m", TOKENS, [A]) == {A: 2}


# --- Regressions of the replay rework (each states the counterfactual it guards against) ---


def one_block(h: int, parent: int | None) -> BlockStored:
    return stored([h], [h] * 4, parent=parent)


def test_a_long_chain_of_waiting_stores_resumes_without_recursion() -> None:
    # A decode stream completing one block per batch while a gap is open defers one store
    # per block, each waiting for the one before. Resuming them by nested calls raised
    # RecursionError out of apply (network input ending the subscriber's thread) once the
    # chain passed Python's recursion limit.
    n = 3000
    res = KvResidency(block_tokens=4, clock=lambda: 0.0)
    res.apply(A, 0, batch(), model="m")
    res.apply(A, n + 2, batch(), model="m")  # gap [1, n + 1]
    res.apply(A, n + 1, batch(), model="m", replayed=True)
    for i in range(n, 1, -1):  # block i in batch i, its parent stored in batch i - 1
        res.apply(A, i, batch(one_block(i, i - 1)), model="m", replayed=True)
    report = res.apply(A, 1, batch(one_block(1, None)), model="m", replayed=True)
    assert report.resumed == n - 1
    assert report.state is EXACT
    assert res.status(A).blocks == n
    res._check()


def test_a_replayed_clear_counts_as_missed_only_batches_not_already_missing() -> None:
    # Batches 1..9 are missing; the replayed clear of batch 5 marks 6..10 missing again, of
    # which only 10 was applied (6..9 were already missing). Counting high - seq said 5.
    res = KvResidency(block_tokens=4, clock=lambda: 0.0)
    res.apply(A, 0, batch(), model="m")
    assert res.apply(A, 10, batch(), model="m").missed == 9
    report = res.apply(A, 5, batch(AllBlocksCleared()), model="m", replayed=True)
    assert report.missed == 1
    assert res.missing_from(A) == 6


def test_check_catches_waiting_events_left_once_no_gap_is_open() -> None:
    # A settle skipped when the last gap closes would leave pending removals that cancel
    # later stores; _check must notice (it checked only the deferred count before).
    res = KvResidency(block_tokens=4, clock=lambda: 0.0)
    res.apply(A, 0, batch(), model="m")
    res.apply(A, 2, batch(BlockRemoved(block_hashes=[9], medium="GPU")), model="m")
    res._check()
    res._replicas[A].missing = []  # the gap closed without settling
    with pytest.raises(AssertionError):
        res._check()


_event = st.one_of(
    st.builds(
        one_block,
        st.integers(1, 6),
        st.one_of(st.none(), st.integers(1, 6)),
    ),
    st.builds(
        lambda hs: BlockRemoved(block_hashes=hs, medium="GPU"),
        st.lists(st.integers(1, 6), min_size=1, max_size=3),
    ),
    st.just(AllBlocksCleared()),
)


@settings(max_examples=scaled_examples(0.5), deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.booleans(), st.lists(_event, max_size=4)),
        max_size=30,
    )
)
def test_waiting_state_stays_within_max_deferred_for_any_seq_order(
    steps: list[tuple[int, bool, list[object]]],
) -> None:
    # Pending removals, deferred stores and remembered removed blocks are each capped by
    # max_deferred (past it the replica degrades instead), whatever order batches come in;
    # without the caps a long gap with many removals would grow them without bound.
    res = KvResidency(block_tokens=4, clock=lambda: 0.0, max_deferred=2)
    for seq, replayed, events in steps:
        res.apply(A, seq, batch(*events), model="m", replayed=replayed)
        res._check()


GOOD = one_block(7, None)


def test_a_pending_removal_cancels_a_store_before_it_in_the_same_batch() -> None:
    # Batch 2 stores 8 under 7 (7 is in lost batch 1, so the store waits) and then removes
    # 8: once 7 arrives, 8 is stored and its waiting removal takes it away. A rule letting a
    # removal match only stores of earlier batches would keep 8.
    child = BlockStored(
        block_hashes=[8], parent_block_hash=7, token_ids=[8] * 4, block_size=4, medium="GPU"
    )
    res = KvResidency(block_tokens=4, clock=lambda: 0.0)
    res.apply(A, 0, batch(), model="m")
    res.apply(A, 2, batch(child, BlockRemoved(block_hashes=[8], medium="GPU")), model="m")
    res.apply(A, 1, batch(GOOD), model="m", replayed=True)
    assert res.status(A).blocks == 1  # 7 only
    assert res.status(A).state is EXACT


def test_a_pending_removal_spares_a_store_after_it_in_the_same_batch() -> None:
    # Batch 2 removes 8 (its copy is in lost batch 1), then stores 8 under 7 again (7 also
    # in batch 1, so that store waits): one copy is removed, the later one stays. Letting
    # the waiting removal take every copy stored meanwhile would lose 8.
    child = BlockStored(
        block_hashes=[8], parent_block_hash=7, token_ids=[8] * 4, block_size=4, medium="GPU"
    )
    res = KvResidency(block_tokens=4, clock=lambda: 0.0)
    res.apply(A, 0, batch(), model="m")
    res.apply(A, 2, batch(BlockRemoved(block_hashes=[8], medium="GPU"), child), model="m")
    res.apply(A, 1, batch(GOOD, child), model="m", replayed=True)
    assert res.status(A).blocks == 2  # 7 and the later copy of 8
    assert res.status(A).state is EXACT
    res._check()


def test_a_waiting_store_resumes_when_its_parent_arrives_in_another_medium() -> None:
    # A CPU block whose parent is a GPU block (an offloaded prefix): a store continues the
    # chain across media, but a waiting store was filed under its own medium and looked up
    # under the parent's, so it was abandoned and the replica stayed degraded until a clear.
    gpu = one_block(1, None)
    cpu = BlockStored(
        block_hashes=[2], parent_block_hash=1, token_ids=[2] * 4, block_size=4, medium="CPU"
    )
    media = frozenset({"GPU", "CPU"})
    in_order = KvResidency(block_tokens=4, clock=lambda: 0.0, media=media)
    for seq, b in enumerate([batch(), batch(gpu), batch(cpu)]):
        in_order.apply(A, seq, b, model="m")
    res = KvResidency(block_tokens=4, clock=lambda: 0.0, media=media)
    res.apply(A, 0, batch(), model="m")
    res.apply(A, 2, batch(cpu), model="m")
    report = res.apply(A, 1, batch(gpu), model="m", replayed=True)
    assert report.resumed == 1
    assert res.status(A) == in_order.status(A)
    assert res.status(A).state is EXACT
    res._check()
