"""Index's contract case by case, on both backends: per-model trees, decide, observe,
invalidation, and a decide whose cost does not grow with the entries stored."""

from __future__ import annotations

import pytest

from prefixcache import (
    BACKENDS,
    Candidate,
    Config,
    Index,
    PrefixDecision,
    Provider,
    ReplicaKey,
)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


A, A1, B, C = ReplicaKey("a"), ReplicaKey("a", 1), ReplicaKey("b"), ReplicaKey("c")


def test_index_trees_use_config_ttl_and_half_life(backend: str) -> None:
    # Contract: "Index(config=DEFAULT_CONFIG, *, backend=...), one RadixTree(ttl, half_life) per
    # model, created lazily".
    ix = Index(Config(ttl=10.0, half_life=1.0), backend=backend)  # type: ignore[arg-type]
    assert ix.models() == frozenset()
    ix.observe("m", (1, 2, 3, 4), A, 0.0)
    ix.observe("m", (7,), B, 3.0)
    assert ix.models() == frozenset({"m"})
    cands = [Candidate(A), Candidate(B)]
    # weights at now=3: a = 4 * 0.5**3 = 0.5, b = 1: a is colder
    assert ix.decide("m", (5,), cands, 3.0).cold_order == (A, B)
    # at now=0.5 .. b's entry is in the future (weight 2**2.5) and a's weighs 4*0.5**0.5
    assert ix.decide("m", (5,), cands, 0.5).cold_order == (A, B)
    d = ix.decide("m", (1, 2, 3, 4), cands, 10.0)
    assert d.hot == A and d.match_ratio == 1.0
    d = ix.decide("m", (1, 2, 3, 4), cands, 10.001)
    assert d.hot is None and d.match_ratio == 0.0


def test_decide_ratio_cold_order_and_non_candidate_owner(backend: str) -> None:
    # Contract: "a match counts only if its owner is one of candidates (else no hot and ratio
    # 0.0); match_ratio = depth / len(chain); cold_order = candidates sorted by (weight asc,
    # node_id asc, replica asc)."
    ix = Index(backend=backend)  # type: ignore[arg-type]
    ix.observe("m", (1, 2, 3), A1, 0.0)
    d = ix.decide("m", (1, 2, 3, 4, 5, 6, 7, 8), [C, A, A1, B], 0.0)
    assert d.hot == A1 and d.match_ratio == 3 / 8
    assert d.cold_order == (A, B, C, A1)
    d = ix.decide("m", (1, 2, 3), [Candidate(A), Candidate(B)], 0.0)
    assert d == PrefixDecision(None, 0.0, (A, B))
    assert ix.decide("m", (), [Candidate(A1)], 0.0) == PrefixDecision(None, 0.0, (A1,))
    assert ix.decide("m", (1, 2, 3), [], 0.0) == PrefixDecision(None, 0.0, ())


def test_observe_new_or_extended(backend: str) -> None:
    # Contract: "observe ... ignore (False) an empty chain or empty node id; else look up then
    # insert; return True unless this exact key already owned the whole chain live".
    ix = Index(Config(ttl=10.0), backend=backend)  # type: ignore[arg-type]
    assert ix.observe("m", (), A, 0.0) is False
    assert ix.observe("m", (1,), ReplicaKey(""), 0.0) is False
    assert ix.models() == frozenset()
    assert ix.observe("m", (1, 2, 3), A, 0.0) is True
    assert ix.observe("m", (1, 2, 3), A, 1.0) is False  # same key, whole chain, live
    assert ix.observe("m", (1, 2), A, 2.0) is False  # a prefix it already owns
    assert ix.observe("m", (1, 2, 3, 4), A, 3.0) is True  # extended
    assert ix.observe("m", (1, 2, 3, 4), A1, 3.0) is True  # another replica
    assert ix.observe("m", (1, 2, 3, 4), A, 3.0) is True  # owner changed back
    assert ix.observe("m", (1, 2, 3, 4), A, 13.0) is False  # age == ttl: still live
    assert ix.observe("m", (1, 2, 3, 4), A, 23.5) is True  # expired: new again
    # the deepest node owned by A but shallower nodes re-taken by B: A did not own the whole
    # chain, so A re-taking them is news for peers (else routers diverge: see the commuting
    # histories property in tests/property/test_sync_convergence.py)
    ix.observe("m", (1, 2), B, 24.0)
    assert ix.observe("m", (1, 2, 3, 4), A, 24.0) is True
    assert ix.decide("m", (1, 2), [A, B], 24.0).hot == A
    assert ix.observe("m", (1, 2, 3, 4), A, 24.0) is False


def test_invalidate_and_models(backend: str) -> None:
    # Contract: "invalidate(model, key), invalidate_node(model, node_id): drop that replica /
    # every replica of that node. They never create a tree for an unknown model."; "evict(now):
    # sweep every model's tree. models() -> frozenset[str]".
    ix = Index(Config(ttl=5.0), backend=backend)  # type: ignore[arg-type]
    ix.invalidate("x", A)
    ix.invalidate_node("x", "a")
    assert ix.models() == frozenset() and isinstance(ix.models(), frozenset)
    ix.observe("m", (1,), A, 0.0)
    ix.observe("m", (2,), A1, 0.0)
    ix.observe("m", (3,), B, 0.0)
    ix.observe("n", (1,), A, 4.0)
    ix.invalidate("m", A1)
    assert ix.decide("m", (2,), [A, A1, B], 0.0).hot is None
    assert ix.decide("m", (1,), [A, A1, B], 0.0).hot == A
    ix.invalidate_node("m", "a")
    assert ix.decide("m", (1,), [A, A1, B], 0.0).hot is None
    assert ix.decide("m", (3,), [A, A1, B], 0.0).hot == B
    ix.evict(6.0)
    assert ix.decide("m", (3,), [A, A1, B], 0.0).hot is None  # swept, not just expired
    assert ix.decide("n", (1,), [A], 6.0).hot == A
    assert isinstance(Index(), Provider)


def test_decide_cost_does_not_grow_with_entries_stored(backend: str) -> None:
    # Contract: "decide ... Its cost must not grow with the number of entries stored (the
    # reference walks the whole tree per call)." Counted, not timed: the Python bytecodes
    # executed by 20 decides on a 5-chain index and on a 5000-chain index (a per-call walk
    # over the stored nodes would add at least one bytecode per node). Speed itself is
    # measured by `make bench`.
    import sys
    from types import FrameType
    from typing import Any

    def opcodes(n_chains: int) -> int:
        ix = Index(Config(half_life=30.0), backend=backend)  # type: ignore[arg-type]
        keys = [ReplicaKey(f"n{i}") for i in range(4)]
        for i in range(n_chains):
            base = 5 * i + 100
            # Owner-specific time offsets keep the four weights apart (no tie handling).
            ix.observe("m", tuple(range(base, base + 5)), keys[i % 4], i % 50 + 0.01 * (i % 4))
        cands = [Candidate(k) for k in keys]
        chain = (100, 101, 7, 8, 9)
        ix.decide("m", chain, cands, 59.0)
        count = 0

        def tracer(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal count
            frame.f_trace_opcodes = True
            if event == "opcode":
                count += 1
            return tracer

        sys.settrace(tracer)
        try:
            for j in range(20):
                ix.decide("m", chain, cands, 60.0 + j)
        finally:
            sys.settrace(None)
        return count

    small = opcodes(5)
    large = opcodes(5000)
    assert small > 0
    # Slack of 100 bytecodes per call for paths that differ by state, not size (e.g. the
    # datrie store finds the run in a trie instead of its overlay); a walk would add >= 4995.
    assert large <= small + 20 * 100, (small, large)
