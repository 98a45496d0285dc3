"""``prefixcache.strategies`` yields only valid values, with the shapes it promises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prefixcache import Candidate, Config, PrefixDecision, ReplicaKey
from prefixcache._events import InvalidateEvent, ObserveEvent, decode_event
from prefixcache.reference import Advance
from prefixcache.strategies import (
    DEFAULT_MODELS,
    DEFAULT_NODE_IDS,
    advances,
    block_hashes,
    candidates,
    chains,
    events,
    operations,
    prefix_decisions,
    replica_keys,
)


@given(events())
def test_events_are_valid_and_survive_the_wire(event: ObserveEvent | InvalidateEvent) -> None:
    assert event.model in DEFAULT_MODELS
    assert event.node_id in DEFAULT_NODE_IDS
    assert decode_event(event.subject, event.encode()) == event


@given(chains(branching=1, max_size=6), chains(branching=1, max_size=6))
def test_branching_one_draws_prefixes_of_one_path(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    short, long = sorted((a, b), key=len)
    assert long[: len(short)] == short


@given(chains(min_size=1, max_size=4, salt=1), chains(min_size=1, max_size=4, salt=2))
def test_different_salts_never_share(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    assert not set(a) & set(b)


@given(chains(max_size=8))
def test_chains_are_uint64_and_bounded(chain: tuple[int, ...]) -> None:
    assert len(chain) <= 8
    assert all(0 <= h < 2**64 for h in chain)


@given(block_hashes())
def test_block_hashes_are_uint64(h: int) -> None:
    assert 0 <= h < 2**64


@given(replica_keys(("x", "y"), max_replica=2), candidates(max_in_flight=3))
def test_keys_and_candidates_respect_their_pools(key: ReplicaKey, cand: Candidate) -> None:
    assert key.node_id in ("x", "y") and 0 <= key.replica <= 2
    assert 0 <= cand.in_flight <= 3


@given(st.data())
def test_prefix_decisions_talk_about_the_given_keys(data: st.DataObject) -> None:
    pool = [ReplicaKey("a"), ReplicaKey("b", 1)]
    d = data.draw(prefix_decisions(pool))
    assert isinstance(d, PrefixDecision)
    assert d.hot is None or d.hot in pool or d.hot.node_id == "stranger-node"
    if d.hot is None:
        assert d.match_ratio == 0.0
    assert set(d.cold_order) <= {*pool, ReplicaKey("stranger-node")}


@given(advances(Config(ttl=10.0, half_life=120.0)))
def test_advances_stay_within_two_ttls_or_a_half_life(step: float) -> None:
    assert 0.0 <= step <= 20.0 or step == 120.0


@given(operations())
def test_operations_are_operation_records(op: object) -> None:
    assert type(op).__module__ == "prefixcache.reference"
    if isinstance(op, Advance):
        assert op.seconds >= 0
