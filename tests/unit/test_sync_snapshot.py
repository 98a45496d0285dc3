"""Anti-entropy: snapshots replay a peer's index exactly; digests detect ownership drift."""

from __future__ import annotations

import pytest

from prefixcache import (
    Candidate,
    Config,
    Index,
    ReplicaKey,
    Snapshot,
    SnapshotDecodeError,
    SnapshotEntry,
    Sync,
    apply_snapshot,
    digest,
    digests,
    export_snapshot,
)
from prefixcache.testing import RecordingPublisher

K1, K2, K3 = ReplicaKey("n1"), ReplicaKey("n2"), ReplicaKey("n3", 1)
CANDS = [Candidate(K1), Candidate(K2), Candidate(K3)]


def live_items(index: Index, model: str, now: float) -> list[tuple[object, ...]]:
    tree = index.tree(model)
    if tree is None:
        return []
    ttl = tree.ttl
    return sorted(
        (path, value, t) for path, value, t in tree.items() if not (ttl > 0 and now - t > ttl)
    )


def resynced(source: Index, now: float, config: Config | None = None) -> Index:
    target = Index(config or Config())
    target.observe("m", (1, 2), ReplicaKey("stale"), 0.0)  # replaced by the snapshot
    snap = Snapshot.decode(export_snapshot(source, now=now).encode())
    apply_snapshot(target, snap, now=now)
    return target


def test_last_writer_on_equal_timestamps_is_reproduced() -> None:
    a = Index()
    a.observe("m", (1, 9), K2, 5.0)
    a.observe("m", (1, 2, 3), K1, 5.0)  # same instant: takes node (1,) from K2
    b = resynced(a, 5.0)
    # Counterfactual: replaying deepest-first on equal times would hand (1,) back to K2.
    assert b.decide("m", (1, 7), CANDS, 5.0).hot == K1
    assert live_items(b, "m", 5.0) == live_items(a, "m", 5.0)


def test_replay_order_does_not_depend_on_timestamps() -> None:
    a = Index()
    a.observe("m", (1, 2), K1, 10.0)
    a.observe("m", (1,), K2, 5.0)  # the host's clock stepped back
    b = resynced(a, 10.0)
    # Counterfactual: replaying oldest first would let K1's (1, 2) retake (1,) from K2.
    assert b.decide("m", (1, 7), CANDS, 10.0).hot == K2
    assert live_items(b, "m", 10.0) == live_items(a, "m", 10.0)


def test_holes_left_by_an_invalidation_are_reproduced() -> None:
    a = Index()
    a.observe("m", (1, 2, 3), K1, 1.0)
    a.observe("m", (1,), K2, 2.0)
    a.invalidate("m", K2)  # (1,) is now value-less between the root and K1's (1, 2)
    assert a.decide("m", (1, 8), CANDS, 3.0).hot is None
    b = resynced(a, 3.0)
    # Counterfactual: replaying (1, 2, 3) alone would give (1,) to K1 and make it hot here.
    assert b.decide("m", (1, 8), CANDS, 3.0).hot is None
    assert b.decide("m", (1, 2, 3), CANDS, 3.0).hot == K1
    assert live_items(b, "m", 3.0) == live_items(a, "m", 3.0)
    assert all(
        value != ReplicaKey("\x00prefixcache-snapshot-hole") for _, value, _ in b.tree("m").items()
    )


def test_ages_make_weights_and_expiry_match() -> None:
    cfg = Config(ttl=100.0, half_life=10.0)
    a = Index(cfg)
    a.observe("m", (1, 2), K1, 0.0)
    a.observe("m", (5,), K2, 40.0)
    a.observe("m", (6, 7, 8), K3, 90.0)
    b = resynced(a, 95.0, cfg)
    for t in (95.0, 100.0, 100.5, 140.0, 190.0, 191.0):
        assert b.decide("m", (6, 7, 8), CANDS, t) == a.decide("m", (6, 7, 8), CANDS, t)
        assert b.decide("m", (1, 2), CANDS, t) == a.decide("m", (1, 2), CANDS, t)
    # Exported 95 s later, K1's entry (age 95) is live until exactly 100.
    assert b.decide("m", (1, 2), CANDS, 100.0).hot == K1
    assert b.decide("m", (1, 2), CANDS, 100.5).hot is None


def test_expired_entries_are_not_exported_and_a_chain_is_one_entry() -> None:
    cfg = Config(ttl=10.0)
    a = Index(cfg)
    a.observe("m", tuple(range(1, 65)), K1, 0.0)
    a.observe("m", (100,), K2, 20.0)
    snap = export_snapshot(a, now=25.0)
    assert [(e.chain, e.owner, e.age) for e in snap.entries] == [((100,), K2, 5.0)]
    snap2 = export_snapshot(a, now=5.0)
    assert len(snap2.entries) == 2  # a 64-block chain is one entry, not 64


def test_replace_false_merges() -> None:
    a = Index()
    a.observe("m", (1,), K1, 0.0)
    b = Index()
    b.observe("m", (2,), K2, 0.0)
    apply_snapshot(b, export_snapshot(a, now=0.0), now=0.0, replace=False)
    assert b.decide("m", (2,), CANDS, 0.0).hot == K2
    assert b.decide("m", (1,), CANDS, 0.0).hot == K1


def test_replace_clears_models_the_exporter_does_not_know() -> None:
    a = Index()
    b = Index()
    b.observe("other", (2,), K2, 0.0)
    apply_snapshot(b, export_snapshot(a, now=0.0), now=0.0)
    assert b.decide("other", (2,), CANDS, 0.0).hot is None
    assert digests(b, now=0.0) == {}


def test_sync_snapshot_methods_never_publish() -> None:
    pub = RecordingPublisher()
    a = Index()
    a.observe("m", (1, 2), K1, 0.0)
    a.observe("m", (1,), K2, 1.0)
    a.invalidate("m", K2)
    s = Sync(Index(), pub, clock=lambda: 1.0)
    assert s.apply_snapshot(export_snapshot(a, now=1.0)) == 2
    assert pub.published == []
    assert s.digests() == digests(a, now=1.0)
    assert s.export_snapshot().entries == export_snapshot(a, now=1.0).entries


def test_digest_tracks_ownership_not_timestamps() -> None:
    a, b = Index(), Index()
    a.observe("m", (1, 2), K1, 1.0)
    b.observe("m", (1, 2), K1, 1.25)
    assert digest(a, "m", now=2.0) == digest(b, "m", now=2.0) != 0
    b.observe("m", (1, 3), K2, 2.0)  # takes (1,)
    assert digest(a, "m", now=2.0) != digest(b, "m", now=2.0)
    assert digest(a, "unknown", now=2.0) == 0
    assert set(digests(b, now=2.0)) == {"m"}


def test_snapshot_encoding_round_trips_and_validates() -> None:
    snap = Snapshot(
        models=("m", "ø"),
        entries=(
            SnapshotEntry(model="m", chain=(1, 2**64 - 1), owner=K3, age=1.5),
            SnapshotEntry(model="ø", chain=(3,), owner=None, age=0.0),
        ),
    )
    assert Snapshot.decode(snap.encode()) == snap
    for bad in (
        b"\xff",
        b"[]",
        b'{"version":2,"models":[],"entries":[]}',
        b'{"version":1,"models":["m"],"entries":[[5,[1],"n",0,0]]}',
        b'{"version":1,"models":["m"],"entries":[[0,[-1],"n",0,0]]}',
        b'{"version":1,"models":["m"],"entries":[[0,[1],"n",0,-3]]}',
        b'{"version":1,"models":["m"],"entries":[[0,[1],"",0,0]]}',
        b'{"version":1,"models":["m"],"entries":[[0,[],"n",0,0]]}',
    ):
        with pytest.raises(SnapshotDecodeError):
            Snapshot.decode(bad)
    with pytest.raises(ValueError, match="age"):
        SnapshotEntry(model="m", chain=(1,), owner=K1, age=float("nan"))


def test_a_late_joiner_that_applies_a_snapshot_answers_like_the_others() -> None:
    from prefixcache.testing import InMemoryTransport, ManualClock

    hub = InMemoryTransport()
    clock = ManualClock(1000.0)
    cfg = Config(ttl=60.0, half_life=30.0)
    early = [Sync(Index(cfg), clock=clock) for _ in range(3)]
    for i, r in enumerate(early):
        r.attach(hub.connect(f"r{i}"))
    early[0].observe("m", (1, 2, 3), K1, clock())
    clock.advance(5.0)
    early[1].observe("m", (1, 2, 8), K2, clock())
    early[2].observe("m", (4,), K3, clock())
    clock.advance(5.0)
    early[2].invalidate("m", K2)
    early[1].observe("m", (1,), K3, clock())
    clock.advance(5.0)

    late = Sync(Index(cfg), clock=clock)
    late.attach(hub.connect("late"))
    # Counterfactual: without the snapshot it knows nothing (every decide is cold).
    assert late.decide("m", (1, 2, 3), CANDS, clock()).hot is None
    late.apply_snapshot(early[0].export_snapshot())
    chains = [(1,), (1, 2), (1, 2, 3), (1, 2, 8), (1, 9), (4,), (4, 5), (7,)]
    for dt in (0.0, 10.0, 44.0, 45.0, 46.0, 70.0):
        for chain in chains:
            for cands in (CANDS, CANDS[:2], CANDS[1:]):
                want = early[0].decide("m", chain, cands, clock() + dt)
                assert late.decide("m", chain, cands, clock() + dt) == want
                assert all(r.decide("m", chain, cands, clock() + dt) == want for r in early)
    # ...and it keeps up with live events afterwards.
    early[2].observe("m", (4, 5, 6), K1, clock())
    assert late.decide("m", (4, 5, 6), CANDS, clock()).hot == K1
    assert late.digests() == early[0].digests()


def test_decode_refuses_a_payload_over_max_bytes_before_parsing() -> None:
    from prefixcache import MAX_SNAPSHOT_BYTES, Snapshot, SnapshotDecodeError

    ok = Snapshot.decode(b'{"version": 1, "models": [], "entries": []}')
    assert ok.entries == ()
    with pytest.raises(SnapshotDecodeError, match="max_bytes"):
        Snapshot.decode(b" " * 100 + b'{"version": 1, "models": [], "entries": []}', max_bytes=64)
    assert MAX_SNAPSHOT_BYTES == 256 * 2**20
