"""Law: every weight agrees with the plain per-node sum of ``0.5 ** (age / half_life)``, the
way the Go routers compute it: within 1e-11 relative wherever that sum is a normal float,
nonzero wherever it is nonzero. Checked on ``RadixTree`` and ``Index`` (both backends,
cold order included) over half-lives from 1 ms to a day, times near 0 and near the wall
clock, ttl from one to thousands of half-lives or none, and clocks that step backwards, so
the per-owner sums' shared scale visits the subnormals, zero and overflow."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from prefixcache import BACKENDS, Candidate, Config, Index, RadixTree, ReplicaKey
from prefixcache.reference import order_by_weight

REL = 1e-11
VALUES = ("a", "b", "c")
ASKED = (*VALUES, "never")  # "never" owns nothing
KEYS = {v: ReplicaKey(v) for v in ASKED}
CANDIDATES = [Candidate(KEYS[v], 0) for v in ASKED]


@dataclass(frozen=True)
class Observe:
    key: tuple[int, ...]
    value: str
    step: float  # half-lives after the previous operation (negative: the clock went back)


@dataclass(frozen=True)
class Query:
    step: float


# Steps in half-lives: short ones, the jumps that move the origin (past 2**512) and push the
# scale past 2**-600, 2**-1022 and 2**-1074, and backward steps.
steps = st.one_of(
    st.floats(0.0, 40.0),
    st.floats(0.0, 1600.0),
    st.sampled_from([0.0, 511.9, 512.1, 600.5, 1022.3, 1050.8, 1074.6, 1100.2]),
    st.floats(-700.0, 0.0),
)
operations = st.lists(
    st.one_of(
        st.builds(
            Observe,
            st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple),
            st.sampled_from(VALUES),
            steps,
        ),
        st.builds(Query, steps),
    ),
    min_size=1,
    max_size=30,
)
half_lives = st.one_of(
    st.sampled_from([0.25, 1.0, 120.0]),
    st.floats(-3.0, 5.0).map(lambda x: 10.0**x),
)
ttls_in_half_lives = st.one_of(st.just(0.0), st.floats(1.0, 3000.0))
origins = st.sampled_from([0.0, 1000.0, -5e5, 1.7e9])


def plain_weights(
    nodes: dict[tuple[int, ...], tuple[str, float]], now: float, ttl: float, half_life: float
) -> dict[str, float]:
    """The per-node sum, node by node (``ttl == 0``: nothing expires)."""
    out = dict.fromkeys(ASKED, 0.0)
    for value, t in nodes.values():
        if ttl > 0 and now - t > ttl:
            continue
        x = (now - t) / half_life
        out[value] += math.inf if x <= -1024.0 else 0.5**x
    return out


def check(got: float, want: float, where: object) -> None:
    if want != 0.0:
        assert got > 0.0, ("zero weight, plain sum nonzero", where, want)
    if sys.float_info.min <= want <= sys.float_info.max:
        assert abs(got - want) <= REL * want, ("weight off", where, got, want)


@settings(max_examples=scaled_examples(1.0))
@given(half_lives, ttls_in_half_lives, origins, operations)
def test_weights_match_the_plain_per_node_sum(
    half_life: float, ttl_half_lives: float, origin: float, ops: list[Observe | Query]
) -> None:
    ttl = ttl_half_lives * half_life
    trees = {b: RadixTree[str](ttl=ttl, half_life=half_life, backend=b) for b in BACKENDS}
    cfg = Config(ttl=ttl if ttl > 0 else math.inf, half_life=half_life)
    indexes = {b: Index(cfg, backend=b) for b in BACKENDS}
    nodes: dict[tuple[int, ...], tuple[str, float]] = {}
    now = origin
    for i, op in enumerate(ops):
        now += op.step * half_life
        if isinstance(op, Observe):
            for j in range(1, len(op.key) + 1):
                nodes[op.key[:j]] = (op.value, now)
            for tree in trees.values():
                tree.insert(op.key, op.value, now)
            for ix in indexes.values():
                ix.observe("m", op.key, KEYS[op.value], now)
            continue
        want = plain_weights(nodes, now, ttl, half_life)
        for backend, tree in trees.items():
            got = tree.weights_for(list(ASKED), now)
            for v in ASKED:
                check(got[v], want[v], (backend, i, v))
        for backend, ix in indexes.items():
            expected = order_by_weight({KEYS[v]: w for v, w in want.items()})
            decision = ix.decide("m", (), CANDIDATES, now)
            assert decision.cold_order == expected, (backend, i, want)
            index_tree = ix.tree("m")
            if index_tree is not None:
                got_keys = index_tree.weights_for([KEYS[v] for v in ASKED], now)
                for v in ASKED:
                    check(got_keys[KEYS[v]], want[v], ("index", backend, i, v))
