"""Drift tests for two hand-specialised copies on the ingest path.

``BlockStored`` packs its token ids with its own copy of the chain's packer
(``token_bytes_from_sequence``): both must accept and pack exactly alike.

``BlockLedger.store`` applies a store of one engine block that is one of our blocks, with
no extra keys (a decode step completing a block: the common event), by a hand-unrolled
copy of its general loop. Storing a prompt one block per event must therefore leave
exactly the record that storing it in one event leaves (the general loop), duplicates and
removals included.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterrouting import InvalidRecordError
from prefixcache import ReplicaKey
from prefixcache._chain import token_bytes_from_sequence
from prefixcache.kvevents import BlockRemoved, BlockStored, EventBatch, KvResidency

BT = 4
MODEL = "m"
KEY = ReplicaKey("engine")
OTHER = ReplicaKey("other")


def _residency() -> KvResidency:
    return KvResidency(block_tokens=BT, clock=lambda: 0.0)


@settings(max_examples=150, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 2**32 - 1), min_size=2 * BT, max_size=6 * BT),
    repeat=st.integers(1, 3),
    other_holds=st.booleans(),
    remove_upto=st.integers(0, 6),
)
def test_one_block_events_leave_what_one_event_leaves(
    tokens: list[int], repeat: int, other_holds: bool, remove_upto: int
) -> None:
    n = len(tokens) // BT
    tokens = tokens[: n * BT]
    hashes = [1000 + i for i in range(n)]
    whole = BlockStored(block_hashes=hashes, parent_block_hash=None, token_ids=tokens,
                        block_size=BT)  # fmt: skip
    singles = [
        BlockStored(
            block_hashes=[hashes[i]],
            parent_block_hash=hashes[i - 1] if i else None,
            token_ids=tokens[i * BT : (i + 1) * BT],
            block_size=BT,
        )
        for i in range(n)
    ]
    one, per_block = _residency(), _residency()
    for res in (one, per_block):
        if other_holds:  # shared hashes: the owner map's second-holder bookkeeping
            res.apply(OTHER, 0, EventBatch(ts=0.0, events=[whole]), model=MODEL)
    for k in range(repeat):  # duplicate stores: refcounts
        one.apply(KEY, k, EventBatch(ts=0.0, events=[whole]), model=MODEL)
        per_block.apply(KEY, k, EventBatch(ts=0.0, events=singles), model=MODEL)
    chain = one.chain(MODEL, tokens)
    for res in (one, per_block):
        res._check()
        assert res.overlap_chain(chain, [KEY, OTHER]) == {KEY: n, OTHER: n if other_holds else 0}
        assert res.status(KEY) == one.status(KEY)
    # Remove the deepest blocks once per copy: a block stays until its last copy goes.
    removed = hashes[n - min(remove_upto, n) :]
    for k in range(repeat):
        for res in (one, per_block):
            batch = EventBatch(ts=0.0, events=[BlockRemoved(block_hashes=removed)])
            res.apply(KEY, repeat + k, batch, model=MODEL)
            res._check()
            left = n - len(removed) if k == repeat - 1 else n
            assert res.overlap_chain(chain, [KEY]) == {KEY: left}
        assert per_block.status(KEY) == one.status(KEY)


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.one_of(st.integers(-3, 2**32 + 3), st.integers(0, 2**32 - 1)), max_size=12)
)
def test_record_packs_token_ids_as_the_chain_does(tokens: list[int]) -> None:
    # BlockStored packs its token ids with its own copy of the chain's packer.
    try:
        expected: bytes | None = token_bytes_from_sequence(tokens)
    except InvalidRecordError:
        expected = None
    try:
        got: bytes | None = BlockStored(
            block_hashes=[1], token_ids=tokens, block_size=len(tokens)
        ).token_bytes
    except InvalidRecordError:
        got = None
    assert got == expected
