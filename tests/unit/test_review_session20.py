"""Regressions found by a second review of the kvevents replay rework and the mirror's pins.

Each test states the counterfactual it guards against.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from prefixcache import KvCacheMirror, ReplicaKey
from prefixcache.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KvResidency,
    ResidencyState,
)

A = ReplicaKey("a")
EXACT = ResidencyState.EXACT


def batch(*events: object) -> EventBatch:
    return EventBatch(ts=0.0, rank=0, events=events)  # type: ignore[arg-type]


def one_block(h: int, parent: int | None) -> BlockStored:
    return BlockStored(
        block_hashes=[h], parent_block_hash=parent, token_ids=[h] * 4, block_size=4, medium="GPU"
    )


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

# --- KvCacheMirror: running requests ---------------------------------------------------
M1, M2 = ReplicaKey("m1"), ReplicaKey("m2")


def test_a_finish_after_invalidate_leaves_no_record_behind() -> None:
    # A replica removed from the pool is invalidated; its requests' finish calls still
    # arrive. Each re-created an empty record that nothing removed again, so a pool whose
    # replicas come and go (new keys every scale-up) grew the mirror without bound.
    m = KvCacheMirror(capacity_blocks=8)
    m.start(M1, (1, 2), private_blocks=1)
    assert m.invalidate(M1) == 2
    m.finish(M1, (1, 2), private_blocks=1)
    assert m.blocks(M1) == 0
    assert M1 not in m._lru and M1 not in m._pins and M1 not in m._private
    m._check()


_chains = st.lists(st.integers(0, 12), min_size=0, max_size=5).map(tuple)
_mirror_ops = st.one_of(
    st.tuples(st.just("observe"), st.sampled_from([M1, M2]), _chains, st.just(0)),
    st.tuples(st.just("start"), st.sampled_from([M1, M2]), _chains, st.integers(0, 5)),
    st.tuples(st.just("finish"), st.sampled_from([M1, M2]), _chains, st.integers(0, 5)),
    st.tuples(st.just("invalidate"), st.sampled_from([M1, M2]), _chains, st.just(0)),
)


@settings(max_examples=scaled_examples(0.5), deadline=None)
@given(st.integers(0, 4), st.lists(_mirror_ops, max_size=40))
def test_mirror_bounds_hold_for_any_calls_lost_finishes_included(
    cap: int, ops: list[tuple[str, ReplicaKey, tuple[int, ...], int]]
) -> None:
    # Finish calls may be lost, repeated, or name chains never started: pinned and private
    # blocks still stay within four times the capacity and the unpinned blocks within the
    # room left; without the pin bound, lost finishes would grow the pins forever.
    m = KvCacheMirror(capacity_blocks=cap)
    for op, key, chain, private in ops:
        if op == "observe":
            m.observe(key, chain)
        elif op == "start":
            m.start(key, chain, private_blocks=private)
        elif op == "finish":
            m.finish(key, chain, private_blocks=private)
        else:
            m.invalidate(key)
        m._check()
        assert m.blocks(key) <= 5 * cap
