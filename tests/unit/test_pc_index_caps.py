"""Index hardening: validation before a tree exists, emptied trees dropped without losing a
concurrent write, and the ``max_entries`` / ``max_models`` caps through Index, Sync, snapshots
and the example gateway's flags."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from prefixcache import (
    BACKENDS,
    Candidate,
    Config,
    ConfigError,
    Index,
    ObserveEvent,
    ReplicaKey,
    Sync,
    TreeClosedError,
    _tree,
    digests,
    export_snapshot,
)
from prefixcache.testing import RecordingPublisher

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

A, B = ReplicaKey("a"), ReplicaKey("b")
WAIT = 10.0  # seconds: a bound on waits for another thread, never reached when it works


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class _GateLock:
    """A tree lock that runs ``on_enter`` when thread ``who`` is about to acquire it."""

    def __init__(self, who: str, on_enter: Any) -> None:
        self._lock = threading.RLock()
        self._who = who
        self._on_enter = on_enter

    def __enter__(self) -> bool:
        if threading.current_thread().name == self._who:
            self._on_enter()
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _IntLike:
    """A block hash whose ``__index__`` runs a hook first (to hold a thread in validation)."""

    def __init__(self, value: int, hook: Any) -> None:
        self.value = value
        self.hook = hook

    def __index__(self) -> int:
        self.hook()
        return self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return other == self.value


# -- finding: a rejected observe deleted the tree a concurrent valid observe wrote to --------
def test_a_rejected_observe_never_drops_the_tree_a_valid_one_writes_to(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # Counterfactual: when the invalid observe created the tree and removed it again on
    # failure, B (which had found that tree and was waiting for its lock) wrote into a tree
    # no longer in the index: observe returned True (and would be broadcast) but the entry
    # was gone. Validating before any tree exists leaves B nothing to lose.
    b_inside = threading.Event()  # B is in observe: at the tree's lock, or validating
    a_failed = threading.Event()
    monkeypatch.setattr(
        _tree,
        "threading",
        SimpleNamespace(RLock=lambda: _GateLock("observer-b", b_inside.set)),
    )
    ix = Index(backend=backend)  # type: ignore[arg-type]
    result: list[bool] = []

    def hold_b() -> None:
        b_inside.set()
        assert a_failed.wait(WAIT)

    def observe_b() -> None:
        result.append(ix.observe("m", (1, _IntLike(7, hold_b)), B, 0.0))  # type: ignore[arg-type]

    b = threading.Thread(target=observe_b, name="observer-b")

    def start_b_then_fail() -> None:
        b.start()
        assert b_inside.wait(WAIT)

    try:
        with pytest.raises(ValueError):
            ix.observe("m", (1, _IntLike(2**64, start_b_then_fail)), A, 0.0)  # type: ignore[arg-type]
    finally:
        a_failed.set()
        b.join(WAIT)
    assert result == [True]
    tree = ix.tree("m")
    assert tree is not None and tree.items() == [((1,), B, 0.0), ((1, 7), B, 0.0)]
    assert ix.decide("m", (1, 7), [Candidate(A), Candidate(B)], 0.0).hot == B


def test_a_rejected_observe_creates_no_tree(backend: str) -> None:
    ix = Index(backend=backend)  # type: ignore[arg-type]
    for chain, now in (((1, 2**64), 0.0), ((1, -1), 0.0), ((1,), float("nan")), ((1,), "0")):
        with pytest.raises(ValueError):
            ix.observe("m", chain, A, now)  # type: ignore[arg-type]
        assert ix.models() == frozenset() and ix.tree("m") is None


# -- emptied trees are dropped, and a racing observe is never lost --------------------------
def test_an_observe_that_finds_its_tree_dropped_writes_to_the_new_one(backend: str) -> None:
    # X looked the tree up; before X got the tree's lock, an invalidation emptied the tree
    # and the index dropped it. Counterfactual: without closing the tree as it is dropped,
    # X's write would land in the dropped tree and be lost.
    ix = Index(backend=backend)  # type: ignore[arg-type]
    ix.observe("m", (1,), A, 0.0)
    old = ix.tree("m")
    assert old is not None
    at_lock = threading.Event()
    dropped = threading.Event()

    def wait_for_drop() -> None:
        at_lock.set()
        assert dropped.wait(WAIT)

    old._lock = _GateLock("observer-x", wait_for_drop)  # type: ignore[assignment]
    result: list[bool] = []
    x = threading.Thread(
        target=lambda: result.append(ix.observe("m", (2,), B, 1.0)), name="observer-x"
    )
    x.start()
    try:
        assert at_lock.wait(WAIT)
        assert ix.invalidate("m", A) == 1
        assert ix.tree("m") is None and old.closed
    finally:
        dropped.set()
        x.join(WAIT)
    assert result == [True]
    new = ix.tree("m")
    assert new is not None and new is not old
    assert new.items() == [((2,), B, 1.0)] and len(old) == 0
    assert ix.models() == frozenset({"m"})


def test_a_closed_tree_refuses_writes_and_stays_empty(backend: str) -> None:
    ix = Index(backend=backend)  # type: ignore[arg-type]
    ix.observe("m", (1,), A, 0.0)
    tree = ix.tree("m")
    assert tree is not None and not tree.close_if_empty() and not tree.closed  # not empty
    ix.invalidate_node("m", "a")
    assert tree.closed and ix.models() == frozenset()
    with pytest.raises(TreeClosedError):
        tree.insert((1,), A, 0.0)
    assert isinstance(TreeClosedError("x"), RuntimeError)
    assert len(tree) == 0 and tree.longest_match((1,), 0.0) is None


def test_emptied_models_leave_snapshots_and_digests(backend: str) -> None:
    # Counterfactual: a tree kept after its last entry went was still exported as a model.
    ix = Index(Config(ttl=10.0), backend=backend)  # type: ignore[arg-type]
    ix.observe("gone", (1,), A, 0.0)
    ix.observe("expired", (1,), A, 0.0)
    ix.observe("kept", (1,), B, 0.0)
    ix.invalidate("gone", A)
    ix.observe("kept", (2,), B, 20.0)
    ix.evict(20.0)
    assert ix.models() == frozenset({"kept"})
    snap = export_snapshot(ix, now=20.0)
    assert snap.models == ("kept",)
    assert set(digests(ix, now=20.0)) == {"kept"}


# -- caps -------------------------------------------------------------------------------------
def test_config_caps_are_validated_with_documented_defaults() -> None:
    from prefixcache._config import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_MODELS

    c = Config()
    assert (c.max_entries, c.max_models) == (DEFAULT_MAX_ENTRIES, DEFAULT_MAX_MODELS)
    assert c.max_entries * c.max_models <= 1_000_000  # the documented bound
    assert Config(max_entries=0, max_models=0).max_entries == 0  # 0: no cap
    for field, bad in (
        ("max_entries", -1),
        ("max_entries", 1.5),
        ("max_entries", True),
        ("max_models", -3),
        ("max_models", "8"),
    ):
        with pytest.raises(ConfigError, match=field):
            Config(**{field: bad})


def test_max_models_refuses_new_models_until_one_empties(backend: str) -> None:
    # Counterfactual: every model name ever seen kept a tree (~4-10 KiB each) for good.
    ix = Index(Config(max_models=2, ttl=10.0), backend=backend)  # type: ignore[arg-type]
    assert ix.observe("m1", (1,), A, 0.0) is True
    assert ix.observe("m2", (1,), A, 0.0) is True
    assert ix.observe("m3", (1,), A, 0.0) is False  # refused: nothing stored
    assert ix.models() == frozenset({"m1", "m2"}) and ix.refused_observes == 1
    assert ix.decide("m3", (1,), [Candidate(A)], 0.0).hot is None
    assert ix.observe("m1", (1, 2), B, 1.0) is True  # existing models still learn
    ix.invalidate("m2", A)  # m2 empties and is dropped: a place is free
    assert ix.observe("m3", (1,), A, 2.0) is True
    assert ix.models() == frozenset({"m1", "m3"})
    assert ix.evict(12.5) == 3  # m1 (seen at 1.0) and m3 (2.0) expire
    assert ix.models() == frozenset()
    many = Index(Config(), backend=backend)  # type: ignore[arg-type]
    for i in range(100):
        many.observe(f"model-{i}", (i,), A, 0.0)
    assert len(many.models()) == Config().max_models
    assert many.refused_observes == 100 - Config().max_models


def test_max_entries_caps_each_tree_in_lru_order(backend: str) -> None:
    ix = Index(Config(max_entries=4), backend=backend)  # type: ignore[arg-type]
    ix.observe("m", (1, 2, 3), A, 0.0)
    ix.observe("m", (7, 8, 9), B, 0.0)  # equal last_seen: ancestors first, then older
    tree = ix.tree("m")
    assert tree is not None and tree.max_entries == 4
    assert [p for p, _, _ in tree.items()] == [(1, 2), (1, 2, 3), (7, 8), (7, 8, 9)]
    ix.observe("m", (5,), A, 1.0)  # the oldest, shallowest goes: (1, 2)
    assert [p for p, _, _ in tree.items()] == [(1, 2, 3), (5,), (7, 8), (7, 8, 9)]
    ix.observe("other", (1, 2, 3, 4, 5, 6), A, 2.0)  # longer than the cap: deepest 4 kept
    other = ix.tree("other")
    assert other is not None and [p for p, _, _ in other.items()] == [
        (1, 2, 3),
        (1, 2, 3, 4),
        (1, 2, 3, 4, 5),
        (1, 2, 3, 4, 5, 6),
    ]


def test_sync_applies_peer_events_within_the_caps() -> None:
    # One peer inventing model names and chains cannot grow the router past the caps, and a
    # refused observe is not news for peers.
    pub = RecordingPublisher()
    ix = Index(Config(max_models=3, max_entries=50))
    s = Sync(ix, pub, clock=lambda: 0.0)
    for i in range(200):
        s.apply_observe(
            ObserveEvent(model=f"m{i % 10}", chain=tuple(range(i, i + 8)), node_id="peer")
        )
    assert len(ix.models()) == 3
    for m in ix.models():
        tree = ix.tree(m)
        assert tree is not None and len(tree) == 50
    assert pub.published == []  # applying never publishes
    assert s.observe("fresh-model", (1,), A, 0.0) is False
    assert pub.published == []  # refused: nothing to broadcast
    assert s.observe("m0", (1,), A, 0.0) is True and len(pub.published) == 1


def test_gateway_flags_set_the_caps() -> None:
    from examples.gateway.__main__ import _settings, build_parser

    args = build_parser().parse_args(["gateway", "--max-entries", "1000", "--max-models", "3"])
    config = _settings(args).config
    assert (config.max_entries, config.max_models) == (1000, 3)
    default = _settings(build_parser().parse_args(["gateway"])).config
    assert (default.max_entries, default.max_models) == (
        Config().max_entries,
        Config().max_models,
    )
