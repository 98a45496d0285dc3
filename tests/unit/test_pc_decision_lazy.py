"""PrefixDecision as a value record, and the lazy cold order of decisions made by ``Index``.

An ``Index`` decision captures its weights at decide time and orders them on first use
(its ``DecisionBasis``); ``select`` answers from ``first_cold()`` when the decision was made
over the very candidates. The laziness must be invisible: equality, hash, repr, pickling,
later index changes and ``select`` all see the decision an eager build would have given.
"""

from __future__ import annotations

import copy
import math
import operator
import pickle
import weakref
from collections.abc import Callable, Sequence

import attrs
import pytest
from attrs.exceptions import FrozenInstanceError
from hypothesis import example, given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from clusterrouting import InvalidRecordError
from prefixcache import (
    BACKENDS,
    Backend,
    Candidate,
    Config,
    Index,
    PrefixDecision,
    ReplicaKey,
    select,
)
from prefixcache._decision import CandidateMemo, DecisionBasis, order_cold
from prefixcache.reference import ReferenceIndex
from prefixcache.strategies import chains

A, B, C = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")
A1 = ReplicaKey("a", 1)
SAMPLE = PrefixDecision(A, 0.5, (B, A1, A))
MODEL = "m"
KEYS = (ReplicaKey("node-a"), ReplicaKey("node-a", 1), ReplicaKey("node-b"), ReplicaKey("node-c"))


def eager(d: PrefixDecision) -> PrefixDecision:
    return PrefixDecision(d.hot, d.match_ratio, d.cold_order)


def is_lazy(d: PrefixDecision) -> bool:
    """Whether ``d``'s cold order is still unordered (read from its basis on first use)."""
    return "cold_order" not in vars(d)


def basis_of(ks: Sequence[ReplicaKey], vals: Sequence[float], scale: float) -> DecisionBasis:
    return DecisionBasis(CandidateMemo(tuple(ks)), list(range(len(ks))), list(vals), scale)


# -- the public record ------------------------------------------------------------------------
def test_defaults_are_the_nothing_known_decision() -> None:
    d = PrefixDecision()
    assert (d.hot, d.match_ratio, d.cold_order, d.has_hot) == (None, 0.0, (), False)
    assert d == PrefixDecision(None, 0.0, ()) == PrefixDecision(None, 0, [])
    assert hash(d) == hash(PrefixDecision(None, 0, []))  # 0 == 0.0, so one hash
    kw = PrefixDecision(hot=A, match_ratio=1, cold_order=[B, A])
    assert kw.has_hot and kw == PrefixDecision(A, 1.0, (B, A))
    for given_order in ([B, A], (k for k in (B, A)), {B: 0, A: 1}.keys()):
        d = PrefixDecision(A, 1.0, given_order)
        assert type(d.cold_order) is tuple and d.cold_order == (B, A)
    for ok in (0, 1, 0.0, -0.0, 5e-324, 0.9999999999999999):  # the boundaries are accepted
        assert PrefixDecision(A, ok, ()).match_ratio == ok


@pytest.mark.parametrize(
    "bad", [math.nan, -0.1, -5e-324, 1.0000000000000002, 2, math.inf, -math.inf, True, False, "1"]
)
def test_bad_match_ratio_is_rejected(bad: object) -> None:
    # Counterfactual: bool is an int, and NaN fails every comparison; both must be refused.
    with pytest.raises(InvalidRecordError, match="match_ratio") as info:
        PrefixDecision(A, bad, ())  # type: ignore[arg-type]
    assert info.value.field == "match_ratio" and info.value.value is bad


@pytest.mark.parametrize(
    ("field", "args"),
    [("hot", (bad, 0.0, ())) for bad in ("a", ("a", 0), Candidate(A), 0)]
    + [("cold_order", (None, 0.0, bad)) for bad in (("a",), (A, None), [Candidate(B)], "ab")],
)
def test_bad_hot_or_cold_order_item_is_rejected(field: str, args: tuple[object, ...]) -> None:
    with pytest.raises(InvalidRecordError, match=field) as info:
        PrefixDecision(*args)  # type: ignore[arg-type]
    assert info.value.field == field


def fresh_index_decision() -> PrefixDecision:
    ix = Index()
    ix.observe(MODEL, (1, 2, 3), A, now=0.0)
    return ix.decide(MODEL, (1, 2, 9), [A, B, C], now=1.0)


@pytest.mark.parametrize("make", [lambda: SAMPLE, fresh_index_decision], ids=["plain", "lazy"])
@pytest.mark.parametrize("name", ["hot", "match_ratio", "cold_order", "has_hot", "basis", "new"])
def test_every_attribute_is_frozen(make: Callable[[], PrefixDecision], name: str) -> None:
    d = make()
    before = repr(d)
    with pytest.raises(FrozenInstanceError):
        setattr(d, name, None)
    with pytest.raises(FrozenInstanceError):
        delattr(d, name)
    assert repr(d) == before


def test_equality_and_hash_are_by_the_three_fields() -> None:
    same = PrefixDecision(ReplicaKey("a"), 0.5, [ReplicaKey("b"), ReplicaKey("a", 1), A])
    assert same == SAMPLE and not operator.ne(same, SAMPLE) and hash(same) == hash(SAMPLE)
    assert len({SAMPLE, same}) == 1
    others = [
        PrefixDecision(B, 0.5, (B, A1, A)),
        PrefixDecision(None, 0.5, (B, A1, A)),
        PrefixDecision(A, 0.25, (B, A1, A)),
        PrefixDecision(A, 0.5, (A, A1, B)),  # same keys, other order
        PrefixDecision(A, 0.5, (B, A1)),
    ]
    for other in others:
        assert other != SAMPLE and not operator.eq(other, SAMPLE)
    assert len({SAMPLE, *others}) == 1 + len(others)


@pytest.mark.parametrize("other", [(A, 0.5, (B, A1, A)), None, "SAMPLE", 0.5, A])
def test_not_equal_to_other_types(other: object) -> None:
    assert operator.ne(SAMPLE, other) and not operator.eq(SAMPLE, other)
    assert SAMPLE.__eq__(other) is NotImplemented


def test_repr_names_the_three_fields() -> None:
    assert repr(PrefixDecision(A, 0.5, (B,))) == (
        "PrefixDecision(hot=ReplicaKey(node_id='a', replica=0), match_ratio=0.5, "
        "cold_order=(ReplicaKey(node_id='b', replica=0),))"
    )
    assert repr(PrefixDecision()) == "PrefixDecision(hot=None, match_ratio=0.0, cold_order=())"


@pytest.mark.parametrize("d", [SAMPLE, PrefixDecision()])
def test_pickle_and_copies_give_equal_frozen_decisions(d: PrefixDecision) -> None:
    copies = [pickle.loads(pickle.dumps(d, p)) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    for c in [*copies, copy.copy(d), copy.deepcopy(d)]:
        assert type(c) is PrefixDecision and c == d and hash(c) == hash(d)
        with pytest.raises(FrozenInstanceError):
            c.hot = B


def test_attrs_record_interface() -> None:
    # Written by hand, the record still lends its three fields to attrs, as the others do.
    assert attrs.has(PrefixDecision)
    assert [f.name for f in attrs.fields(PrefixDecision)] == ["hot", "match_ratio", "cold_order"]
    assert attrs.asdict(SAMPLE, recurse=False) == {
        "hot": A,
        "match_ratio": 0.5,
        "cold_order": (B, A1, A),
    }
    moved = attrs.evolve(SAMPLE, match_ratio=0.75, cold_order=[A])
    assert moved == PrefixDecision(A, 0.75, (A,)) and SAMPLE.match_ratio == 0.5
    with pytest.raises(InvalidRecordError) as err:
        attrs.evolve(SAMPLE, match_ratio=1.5)
    assert err.value.field == "match_ratio"
    assert weakref.ref(SAMPLE)() is SAMPLE


@pytest.mark.parametrize("bad", [None, 3, object()])
def test_a_cold_order_that_is_not_iterable_is_a_typed_error(bad: object) -> None:
    with pytest.raises(InvalidRecordError) as err:
        PrefixDecision(None, 0.0, bad)  # type: ignore[arg-type]
    assert err.value.field == "cold_order"


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_decision_evolves_and_converts_like_a_plain_one(backend: Backend) -> None:
    ix = Index(backend=backend)
    ix.observe(MODEL, (1, 2), A, now=0.0)
    d = ix.decide(MODEL, (1, 2, 3), [Candidate(B), Candidate(A)], 1.0)
    assert attrs.asdict(d, recurse=False) == {
        "hot": A,
        "match_ratio": 2 / 3,
        "cold_order": (B, A),
    }
    assert attrs.evolve(d, hot=B) == PrefixDecision(B, 2 / 3, (B, A))


# -- lazy decisions made by Index --------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_index_decision_behaves_as_its_eager_twin(backend: Backend) -> None:
    ix = Index(Config(ttl=100.0, half_life=5.0), backend=backend)
    ix.observe(MODEL, (1, 2, 3), A, now=0.0)
    ix.observe(MODEL, (1, 2), B, now=1.0)  # b takes (1, 2): a keeps (1, 2, 3) only
    ix.observe(MODEL, (7,), C, now=2.0)
    cands = [Candidate(k) for k in (C, A1, B, A)]

    def take() -> PrefixDecision:  # a fresh decision, its cold order not yet computed
        return ix.decide(MODEL, (1, 2, 3, 4), cands, 3.0)

    want = eager(take())
    assert (want.hot, want.match_ratio) == (A, 0.75)
    assert want.cold_order == (A1, A, C, B)  # a1 owns nothing; a < c < b by weight
    assert take() == want and want == take() and not operator.ne(take(), want)
    assert hash(take()) == hash(want) and repr(take()) == repr(want)
    assert pickle.loads(pickle.dumps(take())) == want and copy.deepcopy(take()) == want
    assert take().first_cold() == A1 and take().has_hot


def test_first_cold_skips_ordering_only_when_the_first_gap_is_clear() -> None:
    d = fresh_index_decision()  # weights a > 0, b = c = 0: b and c tie, ordered by key
    assert d.first_cold() == B and d.cold_order == (B, C, A)
    ix = Index()
    ix.observe(MODEL, (1,), A, now=0.0)
    clear = ix.decide(MODEL, (1,), [A, B], now=0.0)
    assert clear.first_cold() == B
    assert is_lazy(clear)  # counterfactual: the full order would have been stored
    assert clear.cold_order == (B, A)
    # Copies of the least weight (idle replicas) form the first group: its first key in key
    # order, still without sorting; a near-tie after them needs the full rule.
    tied = ix.decide(MODEL, (1,), [C, A, B], now=0.0)
    assert tied.first_cold() == B and is_lazy(tied)
    assert tied.cold_order == (B, C, A)
    idle = Index().decide(MODEL, (1,), [C, B], now=0.0)
    assert idle.first_cold() == B and idle.cold_order == (B, C)
    assert basis_of([A, B, C], [1.0, 0.0, 0.0], 1.0).first_cold() == B
    # a (1 + 1e-12) is near-tied with the copies b, c (1.0): one group, a first by key.
    assert basis_of([A, B, C], [1.0 + 1e-12, 1.0, 1.0], 1.0).first_cold() == A
    assert basis_of([A, B, C], [1.0 + 1e-12, 1.0, 1.0], 1.0).cold_order() == (A, B, C)


DTS = (0.0, 0.5, 1.0, 7.0, 120.0, 301.0, 5000.0)
CONFIGS = (Config(), Config(ttl=50.0, half_life=2.0), Config(ttl=1e9, half_life=0.25))
steps = st.tuples(
    st.sampled_from(("observe", "observe", "observe", "invalidate", "invalidate_node", "evict")),
    st.sampled_from(KEYS),
    chains(min_size=1, max_size=5),
    st.sampled_from(DTS),
)
candidate_keys = st.permutations(KEYS).flatmap(
    lambda ks: st.integers(1, len(ks)).map(lambda n: tuple(ks[:n]))
)
Step = tuple[str, ReplicaKey, tuple[int, ...], float]


def apply(step: Step, now: float, *providers: Index | ReferenceIndex) -> float:
    """Apply one drawn step (``dt`` seconds after ``now``) to every provider; the new now."""
    kind, key, chain, dt = step
    now += dt
    for provider in providers:
        if kind == "observe":
            provider.observe(MODEL, chain, key, now)
        elif kind == "invalidate":
            provider.invalidate(MODEL, key)
        elif kind == "invalidate_node":
            provider.invalidate_node(MODEL, key.node_id)
        else:
            provider.evict(now)
    return now


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=scaled_examples(0.5))
@given(
    cfg=st.sampled_from(CONFIGS),
    before=st.lists(steps, max_size=8),
    keys=candidate_keys,
    chain=chains(max_size=5),
    offset=st.sampled_from((0.0, 0.0, 2.0, -3.0, 400.0)),
    data=st.data(),
)
def test_lazy_cold_order_reflects_the_weights_at_decide_time(
    backend: Backend,
    cfg: Config,
    before: list[Step],
    keys: tuple[ReplicaKey, ...],
    chain: tuple[int, ...],
    offset: float,
    data: st.DataObject,
) -> None:
    ix, ref, now = Index(cfg, backend=backend), ReferenceIndex(cfg), 0.0
    for step in before:
        now = apply(step, now, ix, ref)
    t = now + offset  # a negative offset decides in the past
    cands = [Candidate(k) for k in keys]
    lazy, pickled, first = (ix.decide(MODEL, chain, cands, t) for _ in range(3))
    twin = eager(ix.decide(MODEL, chain, cands, t))  # accessed right away
    expected = ref.decide(MODEL, chain, cands, t)
    assert twin == expected
    for step in data.draw(st.lists(steps, min_size=1, max_size=8)):
        now = apply(step, now, ix, ref)
        ix.decide(MODEL, step[2], data.draw(candidate_keys), now)  # moves caches and time
    assert is_lazy(lazy)  # still lazy, so the checks below test the captured weights
    assert lazy.cold_order == expected.cold_order and lazy == expected
    assert hash(lazy) == hash(expected) and repr(lazy) == repr(expected)
    unpickled = pickle.loads(pickle.dumps(pickled))
    assert unpickled == expected and unpickled.basis is None  # a plain record
    assert first.first_cold() == expected.cold_order[0]


# -- DecisionBasis against order_cold ------------------------------------------------------------
SPECIAL = (0.0, 5e-324, 2.2e-308, 1e-300, 1e-150, 1.0, 3.0, 1e150, 1e300, 1.7e308, math.inf)
# Relative steps from an earlier weight: exact ties, near ties (<= 1e-9) and gaps just clear of
# the 1e-9 tie rule and of DecisionBasis's 2e-9 shortcut threshold.
REL_STEPS = (0.0, 1e-12, 5e-10, 1e-9, 1.5e-9, 2e-9, 2.0000001e-9, 3e-9, 1e-6, 0.5)
SCALES = (1.0, 0.5, 2.0, 3.0, 2.0**-300, 2.0**300, 2.0**-599, 2.0**599, 2.0**-1000, 2.0**-1074)


@st.composite
def weighted_keys(draw: st.DrawFn) -> tuple[list[ReplicaKey], list[float]]:
    n = draw(st.integers(1, 10))
    ids = draw(
        st.lists(st.text("abxyz", min_size=1, max_size=3), min_size=n, max_size=n, unique=True)
    )
    ks = sorted(ReplicaKey(i, draw(st.integers(0, 2))) for i in ids)
    vals: list[float] = []
    for _ in range(n):
        if vals and draw(st.integers(0, 2)) > 0:
            step = draw(st.sampled_from(REL_STEPS)) * draw(st.sampled_from((1.0, -1.0)))
            vals.append(draw(st.sampled_from(vals)) * (1.0 + step))
        else:
            vals.append(draw(st.sampled_from(SPECIAL) | st.floats(0.0, 1e308) | st.floats(0, 9)))
    return ks, list(draw(st.permutations(vals)))  # a derived weight may go to any key


@settings(max_examples=scaled_examples(1.0))
@given(
    kv=weighted_keys(),
    scale=st.sampled_from(SCALES) | st.floats(2.0**-1074, 2.0**1000),
)
# Plainly ordered unscaled, but the scaled weights overflow to inf / round to one subnormal:
# tied, so ordered by key.
@example(kv=([A, B], [1.5e308, 1e300]), scale=2.0**300)
@example(kv=([A, B], [1.25, 1.0]), scale=2.0**-1074)
# A gap of 5e-10 relative is a near tie: ordered by key, not by weight.
@example(kv=([A, B], [1.0 + 5e-10, 1.0]), scale=1.0)
def testDecisionBasis_is_orderDecisionBasis_the_scaled_weights(
    kv: tuple[list[ReplicaKey], list[float]], scale: float
) -> None:
    ks, vals = kv
    saved = (list(ks), list(vals))
    full = basis_of(ks, vals, scale).cold_order()
    assert full == order_cold(ks, [v * scale for v in vals])
    first = basis_of(ks, vals, scale).first_cold()
    assert first == full[0]
    assert len(ks) > 1 or first == ks[0]  # one key is always plain
    assert (ks, vals) == saved  # the captured lists are read, never changed


# -- select's fast path ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_select_over_the_decided_candidates_orders_nothing(backend: Backend) -> None:
    ix = Index(backend=backend)
    ix.observe(MODEL, (1,), A, now=0.0)
    cands = [Candidate(A), Candidate(B)]
    d = ix.decide(MODEL, (2,), cands, now=0.0)  # no hot; b (weight 0) is plainly first
    assert select(cands, d) == B and is_lazy(d)  # the fast path: first_cold only
    d = ix.decide(MODEL, (2,), cands, now=0.0)
    assert (
        select(cands[::-1], d) == B and not is_lazy(d) and d.cold_order == (B, A)
    )  # counterfactual: general path


select_configs = st.builds(
    Config,
    min_prefix_match=st.sampled_from((0.0, 0.3, 0.75, 1.0)),
    balance_abs_threshold=st.integers(0, 3),
    balance_rel_threshold=st.sampled_from((1.0, 1.5, 3.0)),
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=scaled_examples(0.5))
@given(
    cfg=select_configs,
    history=st.lists(steps, max_size=8),
    keys=candidate_keys,
    chain=chains(max_size=5),
    f0=st.integers(0, 6),
    data=st.data(),
)
def test_select_fast_path_agrees_with_the_general_path(
    backend: Backend,
    cfg: Config,
    history: list[Step],
    keys: tuple[ReplicaKey, ...],
    chain: tuple[int, ...],
    f0: int,
    data: st.DataObject,
) -> None:
    ix, ref, now = Index(cfg, backend=backend), ReferenceIndex(cfg), 0.0
    for step in history:
        now = apply(step, now, ix, ref)
    cands = [Candidate(k, f0) for k in keys]
    plain = eager(ix.decide(MODEL, chain, cands, now))  # a plain record: the general path
    assert plain == ref.decide(MODEL, chain, cands, now)
    loads = data.draw(st.lists(st.integers(0, 6), min_size=len(keys), max_size=len(keys)))
    # (what the decision is made over, what select is given)
    variants: dict[str, tuple[Sequence[Candidate | ReplicaKey], Sequence[Candidate]]] = {
        "same": (cands, cands),
        "same objects, new list": (cands, list(cands)),
        "tuple": (tuple(cands), tuple(cands)),
        "equal copies": (cands, [Candidate(ReplicaKey(k.node_id, k.replica), f0) for k in keys]),
        "decided over bare keys": (list(keys), cands),
        "reordered": (cands, data.draw(st.permutations(cands))),
        "subset": (cands, cands[:-1]),
        "superset": (cands, [*cands, Candidate(ReplicaKey("node-z"), f0)]),
        "unequal in_flight": (cands, [Candidate(k, f) for k, f in zip(keys, loads, strict=True)]),
    }
    for name, (over, given_cands) in variants.items():
        d = ix.decide(MODEL, chain, over, now)
        got = select(given_cands, d, cfg)
        assert got == select(given_cands, plain, cfg), (name, d, plain)
        assert (got is None) == (not given_cands), name
    cands[-1] = Candidate(ReplicaKey("node-z"), f0)  # the very list decided over, changed
    expected = ref.decide(MODEL, chain, cands, now)
    assert select(cands, ix.decide(MODEL, chain, cands, now), cfg) == select(cands, expected, cfg)
    assert ix.decide(MODEL, chain, cands, now) == expected


def test_select_with_candidates_a_decision_was_not_made_over() -> None:
    ix = Index()
    ix.observe(MODEL, (1, 2), A, now=0.0)
    none = ix.decide(MODEL, (1, 2), [], 1.0)  # made over no candidates at all
    assert none == PrefixDecision(None, 0.0, ())
    assert select([Candidate(A), Candidate(B)], none) == A  # least loaded, then node id
    d = ix.decide(MODEL, (1, 2), [Candidate(A), Candidate(B)], 1.0)
    assert select([Candidate(B)], d) == B  # the hot key is no candidate here
    assert select([Candidate(B), Candidate(A)], d) == A  # same keys, other order


@settings(max_examples=scaled_examples(3.0))
@given(
    kv=weighted_keys(),
    owned=st.lists(st.booleans(), min_size=10, max_size=10),
    loads=st.lists(st.integers(0, 4), min_size=10, max_size=10),
    limit=st.sampled_from((0, 1, 2, 3, math.inf)),
    scale=st.sampled_from(SCALES),
)
# The only weightless candidate is ineligible: the least positive weight decides.
@example(
    kv=([A, B, C], [0.0, 2.0, 1.0]),
    owned=[True] * 10,
    loads=[3, 0, 0] + [0] * 7,
    limit=1,
    scale=1.0,
)
def test_first_cold_over_eligible_candidates_is_the_first_eligible_of_the_order(
    kv: tuple[list[ReplicaKey], list[float]],
    owned: list[bool],
    loads: list[int],
    limit: float,
    scale: float,
) -> None:
    ks, vals = kv
    positions = [i for i in range(len(ks)) if owned[i]]
    basis = DecisionBasis(CandidateMemo(tuple(ks)), positions, [vals[i] for i in positions], scale)
    flights = loads[: len(ks)]
    weights = [vals[i] * scale if owned[i] else 0.0 for i in range(len(ks))]
    ok = {k for k, f in zip(ks, flights, strict=True) if f <= limit}
    want = next((k for k in order_cold(ks, weights) if k in ok), None)
    assert basis.first_cold(flights, limit) == want
    assert basis.first_cold() == order_cold(ks, weights)[0]
