"""Laws of prefixcache.kvevents: the decoder never fails but with KvEventDecodeError and
accounts for every event; KvResidency agrees with a naive model of what was stored."""

from __future__ import annotations

import contextlib
import itertools

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from prefixcache import ReplicaKey, extract_token_chain
from prefixcache.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KvEventDecodeError,
    KvResidency,
    decode_payload,
    encode_payload,
)

BT = 2
KEYS = [ReplicaKey("r0"), ReplicaKey("r1"), ReplicaKey("r2")]

# --- the decoder ------------------------------------------------------------------------
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=40)
    | st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "GPU", "type"]),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)

hashes = st.integers(0, (1 << 64) - 1) | st.binary(min_size=8, max_size=32)
positional_stored = st.builds(
    lambda hs, parent, toks, size, tail: ["BlockStored", hs, parent, toks, size, *tail],
    st.lists(hashes, max_size=4),
    st.none() | hashes,
    st.lists(st.integers(0, 2**32 - 1), max_size=8),
    st.integers(0, 8),
    st.lists(st.none() | st.sampled_from(["GPU", "CPU"]), max_size=7),
)
map_removed = st.fixed_dictionaries(
    {"type": st.just("BlockRemoved"), "block_hashes": st.lists(hashes, max_size=4)},
    optional={"medium": st.none() | st.just("GPU"), "group_idx": st.none() | st.integers(0, 3),
              "locality": st.text(max_size=3)},
)  # fmt: skip
raw_events = st.one_of(
    positional_stored,
    map_removed,
    st.just(["AllBlocksCleared"]),
    st.just({"type": "AllBlocksCleared"}),
    st.just(["FutureEvent", 1]),
    msgpack_values,
)


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_kv_event_decode_error(payload: bytes) -> None:
    try:
        batch = decode_payload(payload)
    except KvEventDecodeError:
        return
    assert isinstance(batch, EventBatch)


@given(msgpack_values)
def test_any_msgpack_document_decodes_or_raises_kv_event_decode_error(doc: object) -> None:
    with contextlib.suppress(KvEventDecodeError):
        decode_payload(msgspec.msgpack.encode(doc))


@given(st.lists(raw_events, max_size=12), st.floats(0, 1e9), st.none() | st.integers(0, 8))
def test_every_event_is_decoded_dropped_or_ignored(
    events: list[object], ts: float, rank: int | None
) -> None:
    payload = msgspec.msgpack.encode([ts, events, rank])
    batch = decode_payload(payload)
    assert len(batch.events) + batch.dropped + batch.ignored == len(events)
    assert (batch.ts, batch.rank) == (ts, rank)


@given(st.lists(raw_events, max_size=6), st.data())
def test_truncated_payloads_only_raise_kv_event_decode_error(
    events: list[object], data: st.DataObject
) -> None:
    payload = msgspec.msgpack.encode([1.0, events, 0])
    cut = data.draw(st.integers(0, len(payload) - 1))
    with contextlib.suppress(KvEventDecodeError):
        decode_payload(payload[:cut])


# --- the residency against a naive model ----------------------------------------------
# Prompts over a tiny alphabet share prefixes; a store covers a prompt's first k blocks,
# either from the root or as a child of the store of its first j blocks.
prompts = st.lists(
    st.lists(st.integers(0, 2), min_size=BT, max_size=4 * BT), min_size=1, max_size=6
)


def engine_hash(tokens: list[int]) -> int:
    # Any engine hash will do (only a foreign key): here, our own chain's last hash + 1.
    return (extract_token_chain("m", tokens, block_tokens=BT)[-1] + 1) % (1 << 64)


def store_events(prompt: list[int], split: int) -> list[BlockStored]:
    """Stores covering the prompt's full blocks: one from the root, or two (parent, child)."""
    n = len(prompt) // BT
    cuts = [0, n] if not 0 < split < n else [0, split, n]
    out = []
    for lo, hi in itertools.pairwise(cuts):
        out.append(
            BlockStored(
                block_hashes=[engine_hash(prompt[: (i + 1) * BT]) for i in range(lo, hi)],
                parent_block_hash=engine_hash(prompt[: lo * BT]) if lo else None,
                token_ids=prompt[lo * BT : hi * BT],
                block_size=BT,
                medium="GPU",
            )
        )
    return out


def naive_overlap(held: set[int], query: list[int]) -> int:
    k = 0
    for h in extract_token_chain("m", query[: len(query) // BT * BT], block_tokens=BT):
        if h not in held:
            break
        k += 1
    return k


plans = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(KEYS), st.integers(0, 3)), min_size=1, max_size=12
)


@given(prompts, plans, st.lists(st.integers(0, 2), max_size=8))
def test_overlap_equals_the_naive_model_and_never_exceeds_what_was_stored(
    ps: list[list[int]], plan: list[tuple[int, ReplicaKey, int]], query: list[int]
) -> None:
    res = KvResidency(block_tokens=BT, clock=lambda: 0.0)
    held: dict[ReplicaKey, set[int]] = {k: set() for k in KEYS}
    seqs = dict.fromkeys(KEYS, 0)
    for i, key, split in plan:
        prompt = ps[i % len(ps)]
        if len(prompt) < BT:
            continue
        res.apply(key, seqs[key], EventBatch(ts=0.0, events=store_events(prompt, split)), model="m")
        seqs[key] += 1
        held[key].update(
            extract_token_chain("m", prompt[: len(prompt) // BT * BT], block_tokens=BT)
        )
    res._check()
    got = res.overlap("m", query, KEYS)
    for key in KEYS:
        assert got[key] == naive_overlap(held[key], query)
        assert got[key] <= min(len(held[key]), len(query) // BT)


@given(prompts, plans)
def test_store_then_remove_everything_leaves_nothing(
    ps: list[list[int]], plan: list[tuple[int, ReplicaKey, int]]
) -> None:
    res = KvResidency(block_tokens=BT, clock=lambda: 0.0)
    removals: dict[ReplicaKey, list[int]] = {k: [] for k in KEYS}
    seqs = dict.fromkeys(KEYS, 0)
    for i, key, split in plan:
        events = store_events(ps[i % len(ps)], split)
        if not events[0].block_hashes:
            continue
        res.apply(key, seqs[key], EventBatch(ts=0.0, events=events), model="m")
        seqs[key] += 1
        for e in events:
            removals[key].extend(e.block_hashes)  # one remove per stored copy
    for key in KEYS:
        removed = BlockRemoved(block_hashes=list(reversed(removals[key])), medium="GPU")
        report = res.apply(key, seqs[key], EventBatch(ts=0.0, events=[removed]), model="m")
        assert report.unknown_removals == 0
        assert res.status(key).blocks == 0
        assert res.status(key).canonical_blocks == 0
    res._check()
    for p in ps:
        assert set(res.overlap("m", p, KEYS).values()) <= {0}


def batches_for(ps: list[list[int]], plan: list[tuple[int, ReplicaKey, int]]) -> list[EventBatch]:
    out = []
    for i, _key, split in plan:
        prompt = ps[i % len(ps)]
        events: list[object] = list(store_events(prompt, split)) if len(prompt) >= BT else []
        if split == 3 and events:
            events.append(BlockRemoved(block_hashes=[events[-1].block_hashes[-1]], medium="GPU"))  # type: ignore[attr-defined]
        if split == 0 and i == 5:
            events.append(AllBlocksCleared())
        out.append(EventBatch(ts=0.0, events=events))
    return out


def snapshot(res: KvResidency, ps: list[list[int]]) -> list[object]:
    key = KEYS[0]
    return [res.status(key), *(res.overlap("m", p, [key])[key] for p in ps)]


@given(prompts, plans, st.data())
def test_replayed_batches_are_idempotent(
    ps: list[list[int]], plan: list[tuple[int, ReplicaKey, int]], data: st.DataObject
) -> None:
    batches = batches_for(ps, plan)
    res = KvResidency(block_tokens=BT, clock=lambda: 0.0)
    for seq, b in enumerate(batches):
        res.apply(KEYS[0], seq, b, model="m")
    before = snapshot(res, ps)
    replay_from = data.draw(st.integers(0, len(batches) - 1))
    for seq in range(replay_from, len(batches)):
        report = res.apply(KEYS[0], seq, batches[seq], model="m", replayed=True)
        assert report.duplicate
    assert snapshot(res, ps) == before
    res._check()


@given(prompts, plans, st.data())
def test_a_gap_filled_by_replay_of_stores_ends_as_in_order(
    ps: list[list[int]], plan: list[tuple[int, ReplicaKey, int]], data: st.DataObject
) -> None:
    batches = [EventBatch(ts=0.0, events=[e for e in b.events if isinstance(e, BlockStored)])
               for b in batches_for(ps, plan)]  # fmt: skip
    in_order = KvResidency(block_tokens=BT, clock=lambda: 0.0)
    for seq, b in enumerate(batches):
        in_order.apply(KEYS[0], seq, b, model="m")
    lo = data.draw(st.integers(0, len(batches) - 1))
    hi = data.draw(st.integers(lo, len(batches) - 1))
    gapped = KvResidency(block_tokens=BT, clock=lambda: 0.0)
    for seq, b in enumerate(batches):
        if not lo <= seq <= hi:
            gapped.apply(KEYS[0], seq, b, model="m")
    for seq in range(lo, hi + 1):
        gapped.apply(KEYS[0], seq, batches[seq], model="m", replayed=True)
    gapped._check()
    assert gapped.state(KEYS[0]) == in_order.state(KEYS[0])
    for p in ps:
        assert gapped.overlap("m", p, KEYS) == in_order.overlap("m", p, KEYS)


@given(st.lists(raw_events.filter(lambda e: isinstance(e, list | dict)), max_size=8))
def test_encode_decode_round_trip_in_both_layouts(events: list[object]) -> None:
    batch = decode_payload(msgspec.msgpack.encode([2.5, events, 1]))
    for layout in ("positional", "map"):
        again = decode_payload(encode_payload(batch, layout=layout))  # type: ignore[arg-type]
        assert (again.ts, again.rank, again.events) == (batch.ts, batch.rank, batch.events)


# --- any event history keeps the residency consistent ----------------------------------
small_hash = st.integers(0, 7)
any_event = st.one_of(
    st.builds(
        lambda hs, parent, size, medium, ex: BlockStored(
            block_hashes=hs,
            parent_block_hash=parent,
            token_ids=[h % 3 for h in hs for _ in range(size)],
            block_size=size,
            medium=medium,
            extra_keys=ex,
        ),
        st.lists(small_hash, min_size=1, max_size=3),
        st.none() | small_hash,
        st.sampled_from([BT, 2 * BT, 3]),
        st.sampled_from(["GPU", "CPU", None]),
        st.none() | st.just([["salt"]]),
    ),
    st.builds(
        lambda hs, medium: BlockRemoved(block_hashes=hs, medium=medium),
        st.lists(small_hash, max_size=3),
        st.sampled_from(["GPU", "CPU", None]),
    ),
    st.just(AllBlocksCleared()),
)
steps = st.lists(
    st.tuples(
        st.sampled_from(KEYS[:2]),
        st.sampled_from(["next", "skip", "back", "replay"]),
        st.lists(any_event, max_size=4),
    ),
    max_size=25,
)


@given(steps)
def test_any_history_keeps_the_invariants(
    history: list[tuple[ReplicaKey, str, list[object]]],
) -> None:
    res = KvResidency(block_tokens=BT, media={"GPU", "CPU"}, max_blocks_per_replica=6,
                      max_deferred=3, clock=lambda: 0.0)  # fmt: skip
    sent: dict[ReplicaKey, list[EventBatch]] = {k: [] for k in KEYS}
    live: dict[ReplicaKey, int] = dict.fromkeys(KEYS, -1)
    for key, how, events in history:
        batch = EventBatch(ts=0.0, events=events)
        if how == "replay" and sent[key]:
            seq = len(sent[key]) - 1
            res.apply(key, seq, sent[key][seq], model="m", replayed=True)
        else:
            seq = {"next": live[key] + 1, "skip": live[key] + 3, "back": 0}.get(how, live[key] + 1)
            if how == "back":
                sent[key] = []
            while len(sent[key]) < seq:
                sent[key].append(EventBatch(ts=0.0, events=[]))
            sent[key][seq:] = [batch]
            live[key] = seq
            report = res.apply(key, seq, batch, model="m")
            assert report.state is res.state(key)
        res._check()
    for key in KEYS:
        assert res.status(key).blocks <= 6
        held = res.overlap("m", [0, 1, 2] * BT, KEYS)
        assert all(0 <= v <= 3 for v in held.values())
