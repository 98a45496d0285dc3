"""Convergence of routers sharing affinity through Sync over an InMemoryTransport.

What holds (the guarantees documented in ``prefixcache._sync``):

1. No loss, any duplication and reordering, histories whose concurrent events commute
   (within a round of concurrent operations, a first block is claimed by at most one replica,
   and a replica is either observed or invalidated, never both): once delivery completes,
   every router holds the same live owners (equal digests) and the same hot replica and
   match ratio for every chain. Re-observing a chain its owner already holds refreshes
   ``last_seen`` locally but is not broadcast (published only when new or extended), so
   ``last_seen`` -- hence weights, cold order and expiry -- can differ by that refresh
   history; when time does not move between operations, every router holds exactly the same
   entries and answers ``decide`` identically for every chain and candidate set.
2. With loss (same histories): each router holds exactly the state of the set of events it
   applied (its own and those delivered to it), whatever their order and multiplicity; so
   routers that missed different messages disagree, and a snapshot resync repairs it.
3. Arbitrary histories (conflicting concurrent claims, races between observe and invalidate),
   with loss, duplication and reordering: routers may disagree; digests differ exactly when
   the live ownership differs, and resyncing from one router makes all identical.
4. A snapshot replays any index exactly (live entries, times, holes), even when the host's
   clock went backwards between observations.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from prefixcache import (
    Candidate,
    Config,
    Index,
    InvalidateEvent,
    ObserveEvent,
    ReplicaKey,
    Sync,
    apply_snapshot,
    decode_event,
    digests,
    export_snapshot,
)
from prefixcache.testing import InMemoryTransport, ManualClock

NODES = ("a", "b", "c")
KEYS = tuple(ReplicaKey(n, r) for n in NODES for r in (0, 1))
FIRST_BLOCKS = (1, 2, 3, 4)
CFG = Config(ttl=50.0, half_life=20.0)
CANDIDATE_SETS = (
    tuple(Candidate(k) for k in KEYS),
    (Candidate(KEYS[0]), Candidate(KEYS[3]), Candidate(KEYS[5])),
)


class Cluster:
    def __init__(self, n: int) -> None:
        self.hub = InMemoryTransport(auto_deliver=False)
        self.clock = ManualClock(100.0)
        self.routers = [Sync(Index(CFG), clock=self.clock) for _ in range(n)]
        self.names = [f"r{i}" for i in range(n)]
        for name, r in zip(self.names, self.routers, strict=True):
            r.attach(self.hub.connect(name))
        # seq -> (sender, subject, payload, time published); receiver -> delivered seqs
        self.log: dict[int, tuple[str, str, bytes, float]] = {}
        self.applied: dict[str, set[int]] = {name: set() for name in self.names}
        self.seen = 0

    def record_publishes(self) -> None:
        for d in self.hub.pending():
            if d.seq not in self.log:
                self.log[d.seq] = (d.sender, d.subject, d.payload, self.clock())
                self.applied[d.sender].add(d.seq)

    def step(self, data: st.DataObject, *, drop: bool) -> None:
        """Deliver, duplicate or (if allowed) drop one pending delivery chosen by ``data``."""
        self.record_publishes()
        pending = self.hub.pending()
        i = data.draw(st.integers(0, len(pending) - 1))
        action = data.draw(
            st.sampled_from(["deliver", "duplicate", "drop"] if drop else ["deliver", "duplicate"])
        )
        if action == "deliver":
            d = self.hub.deliver_one(i)
            self.applied[d.receiver].add(d.seq)
        elif action == "duplicate":
            self.hub.duplicate_one(i)
        else:
            self.hub.drop_one(i)

    def drain(self, data: st.DataObject, *, drop: bool) -> None:
        self.record_publishes()
        while self.hub.pending():
            self.step(data, drop=drop)


def live(index: Index, now: float) -> list[tuple[Any, ...]]:
    out = []
    for model in sorted(index.models()):
        tree = index.tree(model)
        if tree is None:
            continue
        out += [(model, path, value, t) for path, value, t in tree.items() if not now - t > CFG.ttl]
    return sorted(out)


def ownership(index: Index, now: float) -> list[tuple[Any, ...]]:
    return sorted((m, p, v) for m, p, v, _ in live(index, now))


def probes(cluster: Cluster) -> list[tuple[int, ...]]:
    chains = {(b,) for b in FIRST_BLOCKS}
    for _, subject, payload, _ in cluster.log.values():
        event = decode_event(subject, payload)
        if isinstance(event, ObserveEvent):
            c = event.chain
            chains.update({c, (*c, 9), (*c[:-1], 9)})
    return sorted(chains)


def assert_identical(cluster: Cluster) -> None:
    now = cluster.clock()
    first = cluster.routers[0]
    want = live(first.provider, now)  # type: ignore[arg-type]
    chains = probes(cluster)
    for r in cluster.routers[1:]:
        assert live(r.provider, now) == want  # type: ignore[arg-type]
        for chain in chains:
            for cands in CANDIDATE_SETS:
                for t in (now, now + 30.0):
                    assert r.decide("m", chain, cands, t) == first.decide("m", chain, cands, t)


chains_after = st.lists(st.integers(1, 3), max_size=3)


def commuting_round(
    data: st.DataObject, cluster: Cluster, *, drop: bool, advance: bool = True
) -> None:
    """One round of concurrent operations whose events commute, interleaved with deliveries."""
    observing = data.draw(st.sets(st.sampled_from(NODES)), label="observing nodes")
    obs_keys = [k for k in KEYS if k.node_id in observing]
    inv_nodes = [n for n in NODES if n not in observing]
    claims = {
        b: data.draw(st.sampled_from(obs_keys)) for b in FIRST_BLOCKS if obs_keys
    }  # first block -> the one replica that may observe under it this round
    for _ in range(data.draw(st.integers(0, 6), label="ops")):
        r = data.draw(st.integers(0, len(cluster.routers) - 1))
        router = cluster.routers[r]
        kinds = (["observe"] if claims else []) + (
            ["invalidate", "invalidate_node"] if inv_nodes else []
        )
        if not kinds:
            break
        kind = data.draw(st.sampled_from(kinds))
        if kind == "observe":
            b = data.draw(st.sampled_from(sorted(claims)))
            chain = (b, *data.draw(chains_after))
            router.observe("m", chain, claims[b], cluster.clock())
        elif kind == "invalidate":
            node = data.draw(st.sampled_from(inv_nodes))
            router.invalidate("m", ReplicaKey(node, data.draw(st.integers(0, 1))))
        else:
            router.invalidate_node("m", data.draw(st.sampled_from(inv_nodes)))
        cluster.record_publishes()
        while cluster.hub.pending() and data.draw(st.booleans(), label="deliver now"):
            cluster.step(data, drop=drop)
    cluster.drain(data, drop=drop)
    if advance:
        cluster.clock.advance(data.draw(st.sampled_from([0.0, 1.0, 7.5])))


@settings(max_examples=scaled_examples(0.5), deadline=None)
@given(data=st.data(), n=st.integers(2, 5))
def test_commuting_histories_converge_under_duplication_and_reordering(
    data: st.DataObject, n: int
) -> None:
    cluster = Cluster(n)
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        commuting_round(data, cluster, drop=False, advance=False)
    assert_identical(cluster)
    now = cluster.clock()
    assert len({tuple(sorted(digests(r, now=now).items())) for r in cluster.routers}) == 1


@settings(max_examples=scaled_examples(0.3), deadline=None)
@given(data=st.data(), n=st.integers(2, 5))
def test_commuting_histories_agree_on_owners_as_time_moves(data: st.DataObject, n: int) -> None:
    cluster = Cluster(n)
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        commuting_round(data, cluster, drop=False, advance=True)
    now = cluster.clock()
    first = cluster.routers[0]
    for r in cluster.routers[1:]:
        assert ownership(r.provider, now) == ownership(first.provider, now)  # type: ignore[arg-type]
        assert digests(r, now=now) == digests(first, now=now)
        for chain in probes(cluster):
            mine, theirs = (x.decide("m", chain, CANDIDATE_SETS[0], now) for x in (r, first))
            assert (mine.hot, mine.match_ratio) == (theirs.hot, theirs.match_ratio)


def replay(events: list[tuple[str, bytes, float]]) -> Index:
    index = Index(CFG)
    for subject, payload, t in events:
        e = decode_event(subject, payload)
        if isinstance(e, ObserveEvent):
            index.observe(e.model, e.chain, e.key, t)
        elif isinstance(e, InvalidateEvent):
            if e.key is None:
                index.invalidate_node(e.model, e.node_id)
            else:
                index.invalidate(e.model, e.key)
    return index


@settings(max_examples=scaled_examples(0.75), deadline=None)
@given(data=st.data(), n=st.integers(2, 5))
def test_under_loss_each_router_holds_exactly_what_it_received_and_resync_repairs(
    data: st.DataObject, n: int
) -> None:
    cluster = Cluster(n)
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        commuting_round(data, cluster, drop=True)
    now = cluster.clock()
    for name, router in zip(cluster.names, cluster.routers, strict=True):
        got = [cluster.log[s][1:] for s in sorted(cluster.applied[name])]
        # The state is a function of the *set* of events applied: replaying them in publish
        # order into a fresh index gives the same live entries.
        assert ownership(router.provider, now) == ownership(replay(got), now)  # type: ignore[arg-type]
    # Resync: every router applies router 0's snapshot and ends identical.
    snap = cluster.routers[0].export_snapshot()
    for r in cluster.routers[1:]:
        r.apply_snapshot(snap)
    assert_identical(cluster)


@settings(max_examples=scaled_examples(0.75), deadline=None)
@given(data=st.data(), n=st.integers(2, 4))
def test_arbitrary_histories_digests_detect_drift_and_resync_repairs(
    data: st.DataObject, n: int
) -> None:
    cluster = Cluster(n)
    for _ in range(data.draw(st.integers(1, 12), label="ops")):
        router = cluster.routers[data.draw(st.integers(0, n - 1))]
        kind = data.draw(st.sampled_from(["observe", "observe", "invalidate", "invalidate_node"]))
        if kind == "observe":
            chain = (data.draw(st.sampled_from(FIRST_BLOCKS)), *data.draw(chains_after))
            router.observe("m", chain, data.draw(st.sampled_from(KEYS)), cluster.clock())
        elif kind == "invalidate":
            router.invalidate("m", data.draw(st.sampled_from(KEYS)))
        else:
            router.invalidate_node("m", data.draw(st.sampled_from(NODES)))
        cluster.record_publishes()
        while cluster.hub.pending() and data.draw(st.booleans()):
            cluster.step(data, drop=True)
        cluster.clock.advance(data.draw(st.sampled_from([0.0, 2.0])))
    cluster.drain(data, drop=True)
    now = cluster.clock()
    base = cluster.routers[0]
    for r in cluster.routers[1:]:
        same = ownership(r.provider, now) == ownership(base.provider, now)  # type: ignore[arg-type]
        assert (digests(r, now=now) == digests(base, now=now)) == same
    snap = export_snapshot(base, now=now)
    for r in cluster.routers[1:]:
        apply_snapshot(r, snap, now=now)
    assert_identical(cluster)


def test_a_conflict_resolved_by_arrival_order_diverges_until_resync() -> None:
    # Two routers claim the same prefix concurrently; each applies the other's claim last.
    cluster = Cluster(2)
    a, b = cluster.routers
    a.observe("m", (1, 2), KEYS[0], 100.0)
    b.observe("m", (1, 3), KEYS[2], 100.0)
    cluster.hub.deliver()
    assert a.decide("m", (1,), CANDIDATE_SETS[0], 100.0).hot == KEYS[2]
    assert b.decide("m", (1,), CANDIDATE_SETS[0], 100.0).hot == KEYS[0]
    assert a.digests() != b.digests()
    b.apply_snapshot(a.export_snapshot())
    assert a.digests() == b.digests()
    assert b.decide("m", (1,), CANDIDATE_SETS[0], 100.0).hot == KEYS[2]


def test_a_lost_message_is_not_repaired_by_the_protocol() -> None:
    cluster = Cluster(3)
    a, b, c = cluster.routers
    a.observe("m", (4, 1), KEYS[1], 100.0)
    cluster.hub.drop_one(1)  # the delivery to c
    cluster.hub.deliver()
    assert b.decide("m", (4, 1), CANDIDATE_SETS[0], 100.0).hot == KEYS[1]
    assert c.decide("m", (4, 1), CANDIDATE_SETS[0], 100.0).hot is None
    # Re-observing the warm chain at a does not re-publish (it already owns it)...
    assert a.observe("m", (4, 1), KEYS[1], 101.0) is False
    assert cluster.hub.pending() == ()
    # ...so only a resync (or a new owner, or expiry) brings c back in line.
    assert c.digests() != a.digests()
    c.apply_snapshot(b.export_snapshot())
    assert c.decide("m", (4, 1), CANDIDATE_SETS[0], 100.0).hot == KEYS[1]


@settings(max_examples=scaled_examples(0.75), deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["observe", "observe", "observe", "invalidate", "invalidate_node"]),
            st.lists(st.integers(1, 3), min_size=1, max_size=5),
            st.sampled_from(KEYS),
            st.sampled_from([10.0, 11.0, 12.0, 30.0, 61.0]),  # not monotone on purpose
        ),
        max_size=30,
    ),
    now=st.sampled_from([61.0, 62.0, 75.0]),
)
def test_a_snapshot_replays_any_index_exactly(
    ops: list[tuple[str, list[int], ReplicaKey, float]], now: float
) -> None:
    source = Index(CFG)
    for kind, chain, key, t in ops:
        if kind == "observe":
            source.observe("m", chain, key, t)
        elif kind == "invalidate":
            source.invalidate("m", key)
        else:
            source.invalidate_node("m", key.node_id)
    target = Index(CFG)
    target.observe("m", (1, 1), ReplicaKey("stale"), now)
    apply_snapshot(target, export_snapshot(source, now=now), now=now)
    assert live(target, now) == live(source, now)
    assert digests(target, now=now) == digests(source, now=now)
    for chain in [
        (a, b, c)[:n] for a in (1, 2, 3) for b in (1, 2) for c in (1, 3) for n in (1, 2, 3)
    ]:
        for t in (now, now + 20.0):
            assert target.decide("m", chain, CANDIDATE_SETS[0], t) == source.decide(
                "m", chain, CANDIDATE_SETS[0], t
            )
