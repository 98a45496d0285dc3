"""Regressions found by a second review of the kvevents replay rework and the mirror's pins.

Each test states the counterfactual it guards against.
"""

from __future__ import annotations

from prefixcache import ReplicaKey
from prefixcache.kvevents import (
    AllBlocksCleared,
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
