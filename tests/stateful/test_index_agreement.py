"""Differential test: ``Index`` on both tree backends against the naive ``ReferenceIndex``.

A hypothesis ``RuleBasedStateMachine`` drives random observe / invalidate / invalidate_node /
evict / clock-advance / decide operations against the reference and every subject, and
requires identical answers after every step: observe's bool, the decision's hot key and
match ratio exactly, the cold order as the reference's weights order it (weights within a
relative 1e-9 are ties, docs/behaviour.md), each replica's weight within 1e-9, and the entry
count. An invariant runs the trees' own ``_check()``.

The self-tests at the bottom run the same machine against deliberately broken indexes (one
whose ``decide`` ignores expiry, one that breaks cold-order ties the wrong way) and require
the machine to fail: a harness that cannot catch a broken index proves nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from profiles import scaled_examples

from prefixcache import Candidate, Config, Index, PrefixDecision, ReplicaKey
from prefixcache.reference import WEIGHT_REL_TOLERANCE, ReferenceIndex
from prefixcache.strategies import (
    advances,
    block_hashes,
    candidate_lists,
    chains,
    replica_keys,
)

CONFIG = Config(ttl=100.0, half_life=30.0)
MODELS = ("model-a", "model-b")
NODES = ("node-a", "node-b", "node-c")
KEYS = tuple(ReplicaKey(n, r) for n in NODES for r in (0, 1))

# Up to 50 steps per example: 200 ci examples against both backends take ~5 s here.
MACHINE_SETTINGS = settings(
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

Subject = Any
Factory = Callable[[Config], Subject]


def index_factory(backend: str) -> Factory:
    return lambda cfg: Index(cfg, backend=backend)


models = st.sampled_from(MODELS)
keys = replica_keys(NODES, max_replica=1)
keys_or_empty = st.sampled_from((*KEYS, ReplicaKey("")))  # the empty node id is ignored
chain_st = chains(max_size=6)
# Half the time every key is a candidate, so that matches usually count.
candidates_st = st.one_of(
    candidate_lists(keys=keys, max_size=6),
    st.lists(st.integers(0, 8), min_size=len(KEYS), max_size=len(KEYS)).map(
        lambda loads: [Candidate(k, f) for k, f in zip(KEYS, loads, strict=True)]
    ),
)
extensions = st.lists(block_hashes(), max_size=3).map(tuple)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=WEIGHT_REL_TOLERANCE, abs_tol=0.0)


def assert_cold_order_agrees(
    got: Sequence[ReplicaKey], expected: Sequence[ReplicaKey], weights: dict[ReplicaKey, float]
) -> None:
    """``got`` orders the candidates by the reference ``weights`` (near-equal ones tied and
    ordered by key), and equals the reference order."""
    assert sorted(got) == sorted(expected), ("cold_order is not the candidates", got, expected)
    for i in range(len(got)):
        for j in range(i + 1, len(got)):
            a, b = got[i], got[j]
            wa, wb = weights[a], weights[b]
            if _close(wa, wb):
                assert a < b, ("tie broken the wrong way", a, b, wa, wb)
            else:
                assert wa < wb, ("heavier before lighter", a, b, wa, wb)
    assert tuple(got) == tuple(expected)


class IndexAgreement(RuleBasedStateMachine):
    """Every subject must answer exactly like ``ReferenceIndex`` after every step."""

    SUBJECTS: ClassVar[dict[str, Factory]] = {
        "dict": index_factory("dict"),
        "datrie": index_factory("datrie"),
    }
    CHECK_WEIGHTS = True
    CONFIG: ClassVar[Config] = CONFIG

    def __init__(self) -> None:
        super().__init__()
        self.ref = ReferenceIndex(self.CONFIG)
        self.subjects = {name: make(self.CONFIG) for name, make in self.SUBJECTS.items()}
        self.now = 0.0

    @initialize(start=st.sampled_from([0.0, 1_767_225_600.25]))
    def start_clock(self, start: float) -> None:
        # A small epoch and a wall-clock one (where float rounding of ages differs).
        self.now = start

    observed = Bundle("observed")

    @rule(target=observed, model=models, chain=chain_st, key=keys_or_empty)
    def observe(
        self, model: str, chain: tuple[int, ...], key: ReplicaKey
    ) -> tuple[str, tuple[int, ...]]:
        self._observe(model, chain, key)
        return (model, chain)

    @rule(
        target=observed,
        known=observed,
        cut=st.integers(0, 6),
        extra=extensions,
        key=keys_or_empty,
    )
    def observe_known_prefix(
        self,
        known: tuple[str, tuple[int, ...]],
        cut: int,
        extra: tuple[int, ...],
        key: ReplicaKey,
    ) -> tuple[str, tuple[int, ...]]:
        # Another replica (or the same) caching a prefix of, or a continuation of, a chain
        # already seen: shared nodes change owner, the last writer wins.
        model, chain = known[0], known[1][:cut] + extra
        self._observe(model, chain, key)
        return (model, chain)

    @rule(
        target=observed,
        known=observed,
        cut=st.integers(0, 6),
        extra=extensions,
        key=keys,
        back=st.sampled_from([0.5, 30.0, 100.0, 150.0]),
    )
    def observe_in_the_past(
        self,
        known: tuple[str, tuple[int, ...]],
        cut: int,
        extra: tuple[int, ...],
        key: ReplicaKey,
        back: float,
    ) -> tuple[str, tuple[int, ...]]:
        # A host clock that stepped back (NTP): entries written older than their
        # descendants, or already expired when written.
        model, chain = known[0], known[1][:cut] + extra
        self._observe(model, chain, key, self.now - back)
        return (model, chain)

    def _observe(
        self, model: str, chain: tuple[int, ...], key: ReplicaKey, now: float | None = None
    ) -> None:
        now = self.now if now is None else now
        expected = self.ref.observe(model, chain, key, now)
        for name, s in self.subjects.items():
            got = s.observe(model, chain, key, now)
            assert got == expected, (name, "observe", got, expected)

    @rule(model=models, chain=chain_st, cands=candidates_st)
    def decide(self, model: str, chain: tuple[int, ...], cands: list[Candidate]) -> None:
        self._decide_at(model, chain, cands, self.now)

    @rule(
        known=observed,
        cut=st.integers(0, 6),
        extra=extensions,
        cands=candidates_st,
        back=st.sampled_from([0.0, 0.0, 0.0, 0.5, 30.0, 100.0]),
    )
    def decide_known_prefix(
        self,
        known: tuple[str, tuple[int, ...]],
        cut: int,
        extra: tuple[int, ...],
        cands: list[Candidate],
        back: float,
    ) -> None:
        # Requests that share a prefix with a cached chain, decided now or, for a host
        # clock that steps back, a little in the past (a read-only call).
        self._decide_at(known[0], known[1][:cut] + extra, cands, self.now - back)

    def _decide_at(
        self, model: str, chain: tuple[int, ...], cands: list[Candidate], now: float
    ) -> None:
        expected = self.ref.decide(model, chain, cands, now)
        weights = self.ref.weights_for(model, [c.key for c in cands], now)
        for name, s in self.subjects.items():
            got: PrefixDecision = s.decide(model, chain, cands, now)
            assert got.hot == expected.hot, (name, "hot", got, expected)
            assert got.match_ratio == expected.match_ratio, (name, "ratio", got, expected)
            assert_cold_order_agrees(got.cold_order, expected.cold_order, weights)
            tree = _tree(s, model)
            if self.CHECK_WEIGHTS and tree is not None:
                theirs = tree.weights_for([c.key for c in cands], now)
                for k, w in weights.items():
                    assert _close(theirs[k], w), (name, "weight", k, theirs[k], w)

    @rule(model=models, key=keys)
    def invalidate(self, model: str, key: ReplicaKey) -> None:
        self.ref.invalidate(model, key)
        for s in self.subjects.values():
            s.invalidate(model, key)

    @rule(model=models, node_id=st.sampled_from(NODES))
    def invalidate_node(self, model: str, node_id: str) -> None:
        self.ref.invalidate_node(model, node_id)
        for s in self.subjects.values():
            s.invalidate_node(model, node_id)

    @rule()
    def evict(self) -> None:
        expected = self.ref.evict(self.now)
        for name, s in self.subjects.items():
            got = s.evict(self.now)
            if isinstance(got, int) and not isinstance(got, bool):
                assert got == expected, (name, "evict count", got, expected)

    @rule(seconds=advances(CONFIG))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def same_entries_and_trees_are_consistent(self) -> None:
        for name, s in self.subjects.items():
            # Emptied trees are dropped and capped models refused alike.
            assert s.models() == self.ref.models(), (name, "models", s.models())
            for model in MODELS:
                expected = self.ref.entry_count(model)
                if getattr(s, "tree", None) is None:  # not an Index: compare counts only
                    assert s.entry_count(model) == expected, (name, model, "entries")
                    continue
                tree = _tree(s, model)
                if tree is None:
                    assert expected == 0, (name, model, "tree missing", expected)
                    continue
                tree._check()
                assert len(tree) == expected, (name, model, "entries", len(tree), expected)


def _tree(subject: Subject, model: str) -> Any:
    get = getattr(subject, "tree", None)
    return None if get is None else get(model)


TestIndexAgreement = IndexAgreement.TestCase
TestIndexAgreement.settings = MACHINE_SETTINGS


class IndexAgreementNoDecay(IndexAgreement):
    """``half_life = 0``: every live entry weighs exactly 1, so weights tie all the time and
    the cold order is decided by the key tiebreak."""

    CONFIG: ClassVar[Config] = attrs.evolve(CONFIG, half_life=0.0)


TestIndexAgreementNoDecay = IndexAgreementNoDecay.TestCase
TestIndexAgreementNoDecay.settings = settings(MACHINE_SETTINGS, max_examples=scaled_examples(0.5))


class IndexAgreementCapped(IndexAgreement):
    """Tiny caps: a tree of more than 5 entries evicts in (last_seen, depth, observe seq)
    order (equal last_seen values are common: the clock often stands still between steps),
    and a second model is refused until the first one's tree empties."""

    CONFIG: ClassVar[Config] = attrs.evolve(CONFIG, max_entries=5, max_models=1)


TestIndexAgreementCapped = IndexAgreementCapped.TestCase
TestIndexAgreementCapped.settings = MACHINE_SETTINGS


# -- the harness must catch broken indexes --------------------------------------------------
class ExpiryBlindIndex:
    """An Index whose ``decide`` ignores expiry (answers from a twin that never expires);
    every other method is correct."""

    def __init__(self, config: Config, backend: str = "dict") -> None:
        self._real = Index(config, backend=backend)
        self._blind = Index(attrs.evolve(config, ttl=1e15), backend=backend)

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool:
        self._blind.observe(model, chain, key, now)
        return bool(self._real.observe(model, chain, key, now))

    def decide(
        self, model: str, chain: Sequence[int], cands: Sequence[Candidate], now: float
    ) -> PrefixDecision:
        return self._blind.decide(model, chain, cands, now)  # type: ignore[no-any-return]

    def invalidate(self, model: str, key: ReplicaKey) -> None:
        self._real.invalidate(model, key)
        self._blind.invalidate(model, key)

    def invalidate_node(self, model: str, node_id: str) -> None:
        self._real.invalidate_node(model, node_id)
        self._blind.invalidate_node(model, node_id)

    def evict(self, now: float) -> None:
        self._real.evict(now)
        self._blind.evict(now)

    def models(self) -> frozenset[str]:
        return frozenset(self._real.models())

    def tree(self, model: str) -> Any:
        return self._real.tree(model)


class WrongTieIndex(Index):
    """An Index whose cold order breaks equal-weight ties by node id *descending*."""

    def decide(
        self, model: str, chain: Sequence[int], candidates: Sequence[Candidate], now: float
    ) -> PrefixDecision:
        d: PrefixDecision = super().decide(model, chain, candidates, now)
        tree = self.tree(model)
        keys = [c.key for c in candidates]
        w = tree.weights_for(keys, now) if tree is not None else dict.fromkeys(keys, 0.0)
        order = sorted(d.cold_order, key=lambda k: k.replica)
        order.sort(key=lambda k: k.node_id, reverse=True)
        order.sort(key=lambda k: w[k])
        return PrefixDecision(d.hot, d.match_ratio, tuple(order))


SELF_TEST_SETTINGS = settings(
    MACHINE_SETTINGS,
    max_examples=scaled_examples(1.0),
    database=None,
    derandomize=True,
    phases=[Phase.generate],  # no shrinking: we only need the failure
    print_blob=False,
)


@pytest.mark.parametrize(
    ("broken", "symptom"),
    [
        pytest.param(
            lambda cfg: ExpiryBlindIndex(cfg),
            r"'hot'|tie broken|heavier",
            id="decide-ignores-expiry",
        ),
        pytest.param(
            lambda cfg: WrongTieIndex(cfg, backend="dict"),
            r"tie broken the wrong way",
            id="ties-descending",
        ),
    ],
)
def test_machine_catches_a_broken_index(broken: Factory, symptom: str) -> None:
    class BrokenMachine(IndexAgreement):
        SUBJECTS: ClassVar[dict[str, Factory]] = {"broken": broken}

    with pytest.raises(AssertionError, match=symptom):
        run_state_machine_as_test(BrokenMachine, settings=SELF_TEST_SETTINGS)


def test_machine_passes_the_reference_against_itself() -> None:
    # The control: a correct subject (a second reference) must not fail the machine, so
    # the failures above come from the bugs, not from the harness.
    class ControlMachine(IndexAgreement):
        SUBJECTS: ClassVar[dict[str, Factory]] = {"reference": ReferenceIndex}
        CHECK_WEIGHTS = False

    run_state_machine_as_test(
        ControlMachine,
        settings=settings(SELF_TEST_SETTINGS, max_examples=scaled_examples(0.25)),
    )
