"""Federation-style peer choice: affinity_preferred and select_peer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from clusterrouting import NodeData, ReplicaCandidate
from prefixcache import (
    DEFAULT_CONFIG,
    Candidate,
    Config,
    Index,
    PrefixDecision,
    ReplicaKey,
    affinity_preferred,
    select_peer,
)
from prefixcache.reference import ReferenceIndex

Maker = Callable[[Config], Any]


PROVIDERS: list[Maker] = [
    ReferenceIndex,
    lambda cfg: Index(cfg, backend="dict"),
    lambda cfg: Index(cfg, backend="datrie"),
]


class RecordingProvider:
    """Answers a fixed decision and records what it was asked."""

    def __init__(self, decision: PrefixDecision) -> None:
        self.decision = decision
        self.calls: list[tuple[str, tuple[int, ...], list[Candidate], float]] = []

    def decide(
        self, model: str, chain: Sequence[int], candidates: Sequence[Candidate], now: float
    ) -> PrefixDecision:
        self.calls.append((model, tuple(chain), list(candidates), now))
        return self.decision


def rc(node_id: str, in_flight: int = 0, replica: int = 0) -> ReplicaCandidate:
    return ReplicaCandidate(node_id=node_id, in_flight=in_flight, replica_index=replica)


CHAIN = (11, 22, 33, 44)


@pytest.mark.parametrize("make", PROVIDERS)
def test_hot_node_is_preferred(make: Maker) -> None:
    idx = make(DEFAULT_CONFIG)
    idx.observe("m", CHAIN, ReplicaKey("n2"), 0.0)
    got = affinity_preferred(idx, "m", CHAIN, [rc("n1"), rc("n2")], DEFAULT_CONFIG, 1.0)
    assert got == "n2"


@pytest.mark.parametrize("make", PROVIDERS)
def test_ratio_exactly_min_prefix_match_is_preferred(make: Maker) -> None:
    cfg = Config(min_prefix_match=0.25)
    idx = make(cfg)
    idx.observe("m", CHAIN[:1], ReplicaKey("n2"), 0.0)
    # 1 of 4 blocks matched: ratio 0.25 == min_prefix_match.
    assert affinity_preferred(idx, "m", CHAIN, [rc("n1"), rc("n2")], cfg, 1.0) == "n2"
    stricter = Config(min_prefix_match=0.26)
    assert affinity_preferred(idx, "m", CHAIN, [rc("n1"), rc("n2")], stricter, 1.0) is None


@pytest.mark.parametrize("make", PROVIDERS)
def test_owner_not_among_candidates_is_not_preferred(make: Maker) -> None:
    idx = make(DEFAULT_CONFIG)
    idx.observe("m", CHAIN, ReplicaKey("gone"), 0.0)
    assert affinity_preferred(idx, "m", CHAIN, [rc("n1")], DEFAULT_CONFIG, 1.0) is None


@pytest.mark.parametrize("make", PROVIDERS)
def test_expired_entry_is_not_preferred(make: Maker) -> None:
    cfg = Config(ttl=10.0)
    idx = make(cfg)
    idx.observe("m", CHAIN, ReplicaKey("n1"), 0.0)
    cands = [rc("n1"), rc("n2")]
    assert affinity_preferred(idx, "m", CHAIN, cands, cfg, 10.0) == "n1"  # age == ttl: live
    assert affinity_preferred(idx, "m", CHAIN, cands, cfg, 10.5) is None


@pytest.mark.parametrize("make", PROVIDERS)
def test_replica_other_than_zero_does_not_stand_for_the_node(
    make: Maker,
) -> None:
    # Federation addresses nodes: it asks about ReplicaKey(node, 0) only.
    idx = make(DEFAULT_CONFIG)
    idx.observe("m", CHAIN, ReplicaKey("n1", 1), 0.0)
    assert affinity_preferred(idx, "m", CHAIN, [rc("n1")], DEFAULT_CONFIG, 1.0) is None


def test_empty_chain_or_no_candidates_is_none_without_asking() -> None:
    stub = RecordingProvider(PrefixDecision(ReplicaKey("n1"), 1.0, (ReplicaKey("n1"),)))
    assert affinity_preferred(stub, "m", (), [rc("n1")], DEFAULT_CONFIG, 0.0) is None
    assert affinity_preferred(stub, "m", CHAIN, [], DEFAULT_CONFIG, 0.0) is None
    assert stub.calls == []


def test_decide_is_asked_about_replica_zero_of_each_distinct_node() -> None:
    stub = RecordingProvider(PrefixDecision(None, 0.0, ()))
    cands = [rc("n2", 1), rc("n1", 2, replica=1), rc("n2", 3, replica=1)]
    assert affinity_preferred(stub, "m", CHAIN, cands, DEFAULT_CONFIG, 5.0) is None
    ((model, chain, asked, now),) = stub.calls
    assert (model, chain, now) == ("m", CHAIN, 5.0)
    # decide is asked about ReplicaKey(c.node_id, 0) for each candidate (distinct, first seen).
    assert asked == [ReplicaKey("n2"), ReplicaKey("n1")]


def test_no_provider_is_none() -> None:
    assert affinity_preferred(None, "m", CHAIN, [rc("n1")], DEFAULT_CONFIG, 0.0) is None


def test_hot_without_enough_ratio_is_none() -> None:
    stub = RecordingProvider(PrefixDecision(ReplicaKey("n1"), 0.2, (ReplicaKey("n1"),)))
    assert affinity_preferred(stub, "m", CHAIN, [rc("n1")], DEFAULT_CONFIG, 0.0) is None


@pytest.mark.parametrize("make", PROVIDERS)
def test_affinity_preferred_rules_in_one_sequence(make: Maker) -> None:
    # Decide over ReplicaKey(c.node_id, 0) for each candidate; the hot node id when has_hot
    # and match_ratio >= min_prefix_match, else None (also for an empty chain or no
    # candidates).
    idx = make(DEFAULT_CONFIG)
    idx.observe("m", (1, 2, 3), ReplicaKey("a"), 0.0)
    cfg = Config(min_prefix_match=0.5)
    cands = [rc("b"), rc("a")]
    assert affinity_preferred(idx, "m", (1, 2, 3, 4), cands, cfg, 0.0) == "a"
    assert affinity_preferred(idx, "m", (1, 2, 3, 4, 5, 6, 7), cands, cfg, 0.0) is None
    assert affinity_preferred(idx, "m", (1, 2, 3, 4, 5, 6), cands, cfg, 0.0) == "a"  # == 0.5
    assert affinity_preferred(idx, "m", (), cands, cfg, 0.0) is None
    assert affinity_preferred(idx, "m", (1, 2, 3), [], cfg, 0.0) is None
    assert affinity_preferred(idx, "m", (1, 2, 3), [rc("b")], cfg, 0.0) is None
    idx.observe("m", (5,), ReplicaKey("a", 1), 0.0)  # replica 1 does not stand for the node
    assert affinity_preferred(idx, "m", (5,), cands, cfg, 0.0) is None


# -- select_peer --------------------------------------------------------------------------
NOW = 1_800_000_000.0


def node(
    node_id: str, *, age: float = 0.0, models: tuple[str, ...] = (), vram: int = 0
) -> NodeData:
    return NodeData(
        id=node_id,
        name=node_id,
        tunnel_address=f"addr-{node_id}",
        last_seen=NOW - age,
        models=models,
        available_vram=vram,
    )


def test_select_peer_prefers_the_cache_holder_within_slack() -> None:
    idx = ReferenceIndex()
    idx.observe("m", CHAIN, ReplicaKey("n2"), NOW)
    nodes = [node("n1"), node("n2"), node("n3")]
    # n2 is 2 above the least loaded (0): slack 2 still allows it.
    got = select_peer(idx, nodes, {"n2": 2}, model="m", chain=CHAIN, now=NOW)
    assert got is not None
    assert (got.node_id, got.address, got.in_flight) == ("n2", "addr-n2", 2)


def test_select_peer_overloaded_holder_falls_back_to_best_replica() -> None:
    idx = ReferenceIndex()
    idx.observe("m", CHAIN, ReplicaKey("n2"), NOW)
    nodes = [node("n1"), node("n2"), node("n3")]
    got = select_peer(idx, nodes, {"n1": 1, "n2": 3}, model="m", chain=CHAIN, now=NOW)
    assert got is not None and got.node_id == "n3"  # least in flight


def test_select_peer_slack_is_balance_abs_threshold() -> None:
    idx = ReferenceIndex()
    idx.observe("m", CHAIN, ReplicaKey("n2"), NOW)
    nodes = [node("n1"), node("n2")]
    cfg = Config(balance_abs_threshold=0)
    got = select_peer(idx, nodes, {"n2": 1}, model="m", chain=CHAIN, now=NOW, config=cfg)
    assert got is not None and got.node_id == "n1"


def test_select_peer_filters_offline_and_other_models() -> None:
    idx = ReferenceIndex()
    idx.observe("m", CHAIN, ReplicaKey("n2"), NOW)
    nodes = [node("n1", models=("other",)), node("n2", age=40.0), node("n3", models=("m",))]
    got = select_peer(idx, nodes, {}, model="m", chain=CHAIN, now=NOW)
    assert got is not None and got.node_id == "n3"


def test_select_peer_without_affinity_is_pick_best_replica() -> None:
    nodes = [node("n1", vram=1), node("n2", vram=5)]
    got = select_peer(ReferenceIndex(), nodes, {}, model="m", chain=CHAIN, now=NOW)
    assert got is not None and got.node_id == "n2"  # VRAM tiebreak


def test_select_peer_no_nodes_is_none() -> None:
    assert select_peer(ReferenceIndex(), [], {}, model="m", chain=CHAIN, now=NOW) is None
    offline = [node("n1", age=100.0)]
    assert select_peer(ReferenceIndex(), offline, {}, model="m", chain=CHAIN, now=NOW) is None


def test_select_peer_last_used_makes_equal_peers_take_turns() -> None:
    # Without affinity and with equal load, the least recently used peer wins; without
    # last_used the VRAM tiebreak would pick n2 every time.
    nodes = [node("n1", vram=1), node("n2", vram=5)]
    got = select_peer(
        ReferenceIndex(),
        nodes,
        {},
        model="m",
        chain=CHAIN,
        now=NOW,
        last_used={"n1": NOW - 10.0, "n2": NOW - 1.0},
    )
    assert got is not None and (got.node_id, got.last_used) == ("n1", NOW - 10.0)
    got = select_peer(
        ReferenceIndex(), nodes, {}, model="m", chain=CHAIN, now=NOW, last_used={"n1": NOW}
    )
    assert got is not None and got.node_id == "n2"  # never used sorts oldest
