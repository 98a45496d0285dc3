"""RadixTree and Index against a literal model of their contract, on seeded random call
sequences (both backends).

The model is the contract transcribed over a flat ``path -> (value, last_seen, seq)`` map,
independent of ``prefixcache.reference``; value-less nodes are invisible to every query, so
pruning is not modelled.
"""

from __future__ import annotations

import math
import random

import pytest

from prefixcache import BACKENDS, Candidate, Config, Index, RadixTree, ReplicaKey


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class SpecTree:
    """The radix tree's contract over a flat ``path -> (value, last_seen, seq)`` map."""

    def __init__(self, ttl: float, half_life: float, max_entries: int) -> None:
        self.ttl, self.hl, self.cap = ttl, half_life, max_entries
        self.nodes: dict[tuple[int, ...], tuple[str, float, int]] = {}
        self.seq = 0

    def live(self, t: float, now: float) -> bool:
        return not (self.ttl > 0 and now - t > self.ttl)

    def insert(self, key: tuple[int, ...], value: str, now: float) -> None:
        if not key:
            return
        self.seq += 1
        for d in range(1, len(key) + 1):
            self.nodes[key[:d]] = (value, now, self.seq)
        if self.cap and len(self.nodes) > self.cap:
            order = sorted(self.nodes, key=lambda p: (self.nodes[p][1], len(p), self.nodes[p][2]))
            for p in order[: len(self.nodes) - self.cap]:
                del self.nodes[p]

    def longest_match(self, key: tuple[int, ...], now: float) -> tuple[str, int] | None:
        for d in range(len(key), 0, -1):
            n = self.nodes.get(key[:d])
            if n is not None and self.live(n[1], now):
                return n[0], d
        return None

    def weight(self, value: str, now: float) -> float:
        return sum(
            (0.5 ** ((now - t) / self.hl) if self.hl > 0 else 1.0)
            for v, t, _ in self.nodes.values()
            if v == value and self.live(t, now)
        )

    def evict(self, now: float) -> int:
        dead = [p for p, (_v, t, _s) in self.nodes.items() if not self.live(t, now)]
        for p in dead:
            del self.nodes[p]
        return len(dead)

    def remove_if(self, pred: object) -> int:
        dead = [p for p, (v, _t, _s) in self.nodes.items() if pred(v)]  # type: ignore[operator]
        for p in dead:
            del self.nodes[p]
        return len(dead)


@pytest.mark.parametrize("seed", range(12))
def test_tree_agrees_with_the_literal_spec_model(backend: str, seed: int) -> None:
    # Every rule of the radix tree: insert, longest_match, evict, remove, remove_if,
    # weights_for, weight, len and items.
    rng = random.Random(seed)
    ttl = rng.choice([0.0, 3.0, 10.0])
    hl = rng.choice([0.0, -1.0, 2.0, 7.5])
    cap = rng.choice([0, 0, 3, 8, 20])
    real: RadixTree[str] = RadixTree(ttl=ttl, half_life=hl, max_entries=cap, backend=backend)  # type: ignore[arg-type]
    spec = SpecTree(ttl, hl, cap)
    values = ["a", "b", "c"]
    now = 0.0
    for _ in range(300):
        now += rng.choice([0.0, 0.0, 0.5, 1.0, 2.0, -0.5])
        key = tuple(rng.randrange(4) for _ in range(rng.randrange(0, 6)))
        op = rng.randrange(10)
        if op < 4:
            v = rng.choice(values)
            real.insert(key, v, now)
            spec.insert(key, v, now)
        elif op < 6:
            assert real.longest_match(key, now) == spec.longest_match(key, now)
        elif op == 6:
            assert real.evict(now) == spec.evict(now)
        elif op == 7:
            v = rng.choice(values)
            assert real.remove(v) == spec.remove_if(lambda x, v=v: x == v)
        elif op == 8:
            vs = set(rng.sample(values, 2))
            assert real.remove_if(vs.__contains__) == spec.remove_if(vs.__contains__)
        else:
            got = real.weights_for(values, now)
            for v in values:
                assert math.isclose(got[v], spec.weight(v, now), rel_tol=1e-9, abs_tol=1e-12)
                assert math.isclose(real.weight(v, now), spec.weight(v, now), rel_tol=1e-9)
        assert len(real) == len(spec.nodes)
        assert sorted((p, v, t) for p, v, t in real.items()) == sorted(
            (p, v, t) for p, (v, t, _s) in spec.nodes.items()
        )


@pytest.mark.parametrize("seed", range(12))
def test_index_agrees_with_the_literal_spec_model(backend: str, seed: int) -> None:
    # Index: decide / observe / invalidate / invalidate_node / evict over one
    # literal tree model per model name.
    rng = random.Random(1000 + seed)
    cfg = Config(ttl=rng.choice([3.0, 10.0]), half_life=rng.choice([0.0, 2.0, 5.0]))
    ix = Index(cfg, backend=backend)  # type: ignore[arg-type]
    spec: dict[str, SpecTree] = {}
    keys = [ReplicaKey("a"), ReplicaKey("a", 1), ReplicaKey("b"), ReplicaKey("c", 2)]
    now = 0.0
    for _ in range(300):
        now += rng.choice([0.0, 0.5, 1.0, 2.0])
        model = rng.choice(["m", "n"])
        chain = tuple(rng.randrange(3) for _ in range(rng.randrange(0, 5)))
        op = rng.randrange(8)
        if op < 3:
            k = rng.choice(keys)
            st = spec.get(model)
            # "return True unless this exact key already owned the whole chain live"
            owned = bool(st) and all(
                (n := st.nodes.get(chain[:d])) is not None and n[0] == str(k) and st.live(n[1], now)
                for d in range(1, len(chain) + 1)
            )
            expected = bool(chain) and not owned
            assert ix.observe(model, chain, k, now) is expected
            if chain:
                spec.setdefault(model, SpecTree(cfg.ttl, cfg.half_life, 0)).insert(
                    chain, str(k), now
                )
        elif op < 6:
            cands = rng.sample(keys, rng.randrange(0, 5))
            d = ix.decide(model, chain, [Candidate(c) for c in cands], now)
            st = spec.get(model)
            m = st.longest_match(chain, now) if st and chain else None
            names = {str(c): c for c in cands}
            if m is not None and m[0] in names:
                assert d.hot == names[m[0]] and d.match_ratio == m[1] / len(chain)
            else:
                assert d.hot is None and d.match_ratio == 0.0
            assert sorted(d.cold_order) == sorted(cands)
            w = {c: (st.weight(str(c), now) if st else 0.0) for c in cands}
            for x, y in zip(d.cold_order, d.cold_order[1:], strict=False):
                if math.isclose(w[x], w[y], rel_tol=1e-9):
                    assert (x.node_id, x.replica) < (y.node_id, y.replica)
                else:
                    assert w[x] < w[y]
        elif op == 6:
            k = rng.choice(keys)
            if rng.random() < 0.5:
                ix.invalidate(model, k)
                if model in spec:
                    spec[model].remove_if(lambda v, k=k: v == str(k))
            else:
                ix.invalidate_node(model, k.node_id)
                if model in spec:
                    spec[model].remove_if(
                        lambda v, k=k: v.startswith(f"ReplicaKey(node_id='{k.node_id}'")
                    )
        else:
            ix.evict(now)
            for st in spec.values():
                st.evict(now)
        # A tree left empty by an invalidation or an evict is dropped.
        spec = {m: st for m, st in spec.items() if st.nodes}
        assert ix.models() == frozenset(spec)
