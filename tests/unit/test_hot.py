"""prefixcache.HotPrefixes: demand from recent dispatches, warm copies with hysteresis."""

from __future__ import annotations

import functools
import math

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import (
    DEFAULT_GUARD_COVER,
    DEFAULT_GUARD_DEMAND,
    DEFAULT_HOT_CONFIDENCE,
    DEFAULT_HOT_LOWER,
    DEFAULT_HOT_PER_COPY,
    DEFAULT_ROOM_BACKLOG_TOKENS,
    DEFAULT_ROOM_KV_FILL,
    DEFAULT_ROOM_QUEUE_WEIGHT,
    DEFAULT_SHARED_DEMAND,
    DEFAULT_SHARED_KV_USAGE,
    DEFAULT_SHARED_QUEUE_WEIGHT,
    HotCredit,
    HotPrefixes,
)

EIGHT = dict.fromkeys(range(8), 0)

# The rules below act on a prefix's demand; their tests take the observed share
# (``confidence=0``) so that their numbers read plainly. The default, one standard error
# below it, has its own tests (test_demand_is_the_lower_bound_of_the_share).
Observed = functools.partial(HotPrefixes, confidence=0)


def fill(hot: HotPrefixes, with_prefix: int, without: int, prefix: int = 7) -> None:
    for _ in range(with_prefix):
        hot.record((prefix, 100))
    for _ in range(without):
        hot.record((200,))


def test_demand_counts_every_dispatch_whose_chain_contains_the_prefix() -> None:
    hot = Observed(window=4)
    assert hot.demand(1, replicas=4) == 0.0  # nothing recorded yet
    hot.record((1, 2))
    hot.record((1, 2, 3))
    hot.record((5,))
    hot.record(())  # a dispatch without a chain still counts in the window
    assert len(hot) == 4
    assert hot.demand(1, replicas=4) == 2.0 and hot.demand(2, replicas=4) == 2.0
    assert hot.demand(3, replicas=4) == 1.0
    # The window slides: the oldest dispatch (1, 2) leaves.
    hot.record((9,))
    assert hot.demand(1, replicas=4) == 1.0 and hot.demand(9, replicas=4) == 1.0
    # A block repeated in one chain counts once for that dispatch.
    hot.record((4, 4, 4))
    assert hot.demand(4, replicas=4) == 1.0


def test_shared_means_demand_of_at_least_a_quarter_replica_by_default() -> None:
    assert DEFAULT_SHARED_DEMAND == 0.25
    assert DEFAULT_SHARED_QUEUE_WEIGHT == 0.5
    assert DEFAULT_SHARED_KV_USAGE == 0.8
    assert (DEFAULT_ROOM_QUEUE_WEIGHT, DEFAULT_ROOM_KV_FILL, DEFAULT_ROOM_BACKLOG_TOKENS) == (
        0.2,
        0.5,
        4096,
    )
    hot = Observed(window=32)
    fill(hot, with_prefix=1, without=31)  # 1 of 32 dispatches
    assert hot.demand(7, replicas=8) == 0.25
    assert hot.shared(7, replicas=8)  # the bound is inclusive
    assert not hot.shared(7, replicas=7)  # 7/32 < 0.25
    assert not hot.shared(100 + 1, replicas=8)  # never dispatched: demand 0
    assert hot.shared(7, replicas=4, demand=0.125)
    assert not hot.shared(7, replicas=8, demand=0.26)
    with pytest.raises(InvalidRecordError, match="replicas"):
        hot.shared(7, replicas=0)
    for bad in (-0.1, float("nan"), float("inf"), True, "0.25", 10**400):
        with pytest.raises(InvalidRecordError, match="demand"):
            hot.shared(7, replicas=8, demand=bad)  # type: ignore[arg-type]


def test_a_prompt_shared_by_every_dispatch_is_warm_at_once() -> None:
    # The first request created the prefix; its demand is the whole traffic from then on
    # (observed), or n / (n + 1) of it (the default), so the next request already sees
    # most replicas warm, not only the first holder: every one observed; 6 of 8 at the
    # second request by default (4 replicas of demand), all 8 at the third (5.33).
    hot = Observed(window=2048)
    hot.record((1, 2, 3, 4, 50))
    assert hot.warm(4, holders=[0], in_flight=EIGHT) == (0, 1, 2, 3, 4, 5, 6, 7)
    # Counterfactual: a prefix in no recorded chain has no demand and no copies.
    assert hot.warm(5, holders=[0], in_flight=EIGHT) == ()
    hot = HotPrefixes(window=2048)
    hot.record((1, 2, 3, 4, 50))
    assert hot.warm(4, holders=[0], in_flight=EIGHT) == (0, 1, 2, 3, 4, 5)
    hot.record((1, 2, 3, 4, 51))
    assert hot.warm(4, holders=[0], in_flight=EIGHT) == (0, 1, 2, 3, 4, 5, 6, 7)


def test_copies_follow_demand_holders_first_then_least_loaded() -> None:
    hot = Observed(window=100, per_copy=1.0)
    fill(hot, 30, 70)  # u = 0.3 x 8 = 2.4 replicas of demand: 3 copies
    loads = {0: 3, 1: 1, 2: 0, 3: 0, 4: 2, 5: 9, 6: 0, 7: 0}
    # The holder first, then the fewest in flight (mapping order on ties).
    assert hot.warm(7, holders=[5], in_flight=loads) == (5, 2, 3)
    assert hot.copies(7) == 3
    # Constant load: the same copies every time, whatever the loads do now.
    for _ in range(50):
        assert hot.warm(7, holders=[5, 2], in_flight=EIGHT) == (5, 2, 3)


def test_each_copy_carries_at_most_per_copy_replicas_of_demand() -> None:
    # u = 0.3 x 8 = 2.4: 3 copies at one replica's worth each, 4 at the default 0.75.
    for per_copy, copies in ((1.0, 3), (DEFAULT_HOT_PER_COPY, 4), (0.5, 5)):
        hot = Observed(window=100, per_copy=per_copy)
        fill(hot, 30, 70)
        assert len(hot.warm(7, holders=[5], in_flight=EIGHT)) == copies
    # A prefix at u = 0.8 (under one replica's worth): one copy at per_copy=1, but two by
    # default, so its requests rotate over two replicas instead of nearly filling one.
    for per_copy, copies in ((1.0, 0), (DEFAULT_HOT_PER_COPY, 2)):
        hot = Observed(window=100, per_copy=per_copy)
        fill(hot, 10, 90)
        assert len(hot.warm(7, holders=[5], in_flight=EIGHT)) == copies
    assert DEFAULT_HOT_PER_COPY == 0.75


def test_hysteresis_drops_a_copy_only_below_lower_times_k_minus_one() -> None:
    hot = Observed(window=100, per_copy=1.0)
    fill(hot, 30, 70)
    assert hot.warm(7, holders=[5], in_flight=EIGHT) == (5, 0, 1)
    # u = 1.6 >= (3 - 1) x 0.75 = 1.5: still 3 copies.
    fill(hot, 20, 80)
    assert hot.warm(7, holders=[5], in_flight=EIGHT) == (5, 0, 1)
    # u = 1.44 < 1.5: down to 2, the copy added last leaves first; 1.44 >= (2 - 1) x 0.75.
    fill(hot, 18, 82)
    assert hot.warm(7, holders=[5], in_flight=EIGHT) == (5, 0)
    # Rising again to u = 2.4 adds one copy (ceil), at the least loaded replica.
    fill(hot, 30, 70)
    assert hot.warm(7, holders=[5], in_flight={**EIGHT, 1: 4}) == (5, 0, 2)
    # u = 0.72 < 0.75: one copy, and the prefix is forgotten.
    fill(hot, 9, 91)
    assert hot.warm(7, holders=[5], in_flight=EIGHT) == ()
    assert hot.copies(7) == 1
    assert DEFAULT_HOT_LOWER == 0.75


def test_copies_are_capped_by_the_replicas_and_departed_replicas_are_dropped() -> None:
    hot = Observed(window=10, per_copy=1.0)
    fill(hot, 10, 0)
    assert hot.warm(7, holders=["a"], in_flight={"a": 0, "b": 0}) == ("a", "b")
    # "b" left the candidate set: the warm set refills from who is there.
    assert hot.warm(7, holders=["a"], in_flight={"a": 0, "c": 0}) == ("a", "c")


def test_memory_is_bounded_by_the_window() -> None:
    hot = Observed(window=8, max_chain=3)
    for i in range(1000):
        hot.record((i, i + 10_000, i + 20_000, i + 30_000))  # the 4th block is not counted
        hot.warm(i, holders=[0], in_flight={0: 0, 1: 0})
    assert len(hot) == 8
    assert len(hot._counts) <= 8 * 3
    # A prefix that left the window has no copies left behind.
    assert len(hot._k) <= 8 and len(hot._warm) <= 8
    assert hot.demand(30_999, replicas=2) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"window": 0}, "window"),
        ({"window": 2.0}, "window"),
        ({"window": 4, "lower": 0.0}, "lower"),
        ({"window": 4, "lower": 1.5}, "lower"),
        ({"window": 4, "lower": True}, "lower"),
        ({"window": 4, "max_chain": 0}, "max_chain"),
        ({"window": 4, "per_copy": 0.0}, "per_copy"),
        ({"window": 4, "per_copy": float("nan")}, "per_copy"),
        ({"window": 4, "confidence": -1.0}, "confidence"),
        ({"window": 4, "confidence": math.inf}, "confidence"),
        ({"window": 4, "confidence": True}, "confidence"),
        ({"window": 4, "confidence": 10**400}, "confidence"),  # an int beyond any float
    ],
)
def test_bad_arguments_raise_a_typed_error_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(InvalidRecordError, match=name):
        HotPrefixes(**kwargs)


def test_bad_calls_raise_a_typed_error_naming_the_argument() -> None:
    hot = Observed(window=4)
    with pytest.raises(InvalidRecordError, match="chain"):
        hot.record((1, "2"))  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="replicas"):
        hot.demand(1, replicas=0)
    with pytest.raises(InvalidRecordError, match="in_flight"):
        hot.warm(1, holders=[], in_flight={})
    with pytest.raises(InvalidRecordError, match="prefix"):
        hot.warm("1", holders=[], in_flight={0: 0})  # type: ignore[arg-type]
    assert issubclass(InvalidRecordError, ValueError)


def hot_of(chains: int, chain: tuple[int, ...] = (1, 2, 3)) -> HotPrefixes:
    hot = Observed(window=8)
    for _ in range(chains):
        hot.record(chain)
    return hot


def test_credit_applies_only_while_every_holder_is_busy() -> None:
    hot = hot_of(8)  # every dispatch shares (1, 2, 3): demand = all replicas
    chain = (1, 2, 3, 4)
    # No prefix held anywhere, or an idle holder: nothing changes.
    assert hot.credit(chain, held=[0, 0, 0], replicas="abc", in_flight=[5, 5, 5]) is None
    assert (
        hot.credit(chain, held=[3, 0, 3], replicas="abc", in_flight=[2, 0, 0]) is None
    )  # c holds it, idle
    assert hot.copies(3) == 1  # the rule did not even update the copy count
    # Both holders busy: every replica is warm (demand 3 / 0.75 = 4 copies, capped at 3)
    # and, b lacking the prefix, it is shared.
    rule = hot.credit(chain, held=[3, 0, 3], replicas="abc", in_flight=[2, 0, 1])
    assert rule == HotCredit(held=(3, 3, 3), warm=("a", "c", "b"), shared=True)
    assert len(hot) == 8  # credit never records a dispatch


def test_credit_is_shared_only_with_demand_a_missing_holder_and_room() -> None:
    chain = (1, 2, 3)
    calls: list[int] = []

    def room() -> bool:
        calls.append(1)
        return False

    # Held everywhere: warm copies, not shared (room is not even asked).
    rule = hot_of(8).credit(chain, held=[3, 3], replicas="ab", in_flight=[1, 1], room=room)
    assert rule is not None and not rule.shared and calls == []
    # No room: not shared, but the copies still apply.
    rule = hot_of(8).credit(chain, held=[3, 0], replicas="ab", in_flight=[1, 0], room=room)
    assert rule == HotCredit(held=(3, 3), warm=("a", "b"), shared=False) and calls == [1]
    # A demand of 1 dispatch in 8 on 2 replicas (0.25) is shared; a bound above it is not.
    hot = hot_of(1)
    for _ in range(7):
        hot.record((9,))
    rule = hot.credit(chain, held=[3, 0], replicas="ab", in_flight=[1, 0])
    assert rule == HotCredit(held=(3, 0), warm=(), shared=True)
    assert (
        hot.credit(chain, held=[3, 0], replicas="ab", in_flight=[1, 0], shared_demand=0.3) is None
    )


def test_credit_refuses_inconsistent_arguments() -> None:
    hot = hot_of(1)
    with pytest.raises(InvalidRecordError, match="held"):
        hot.credit((1,), held=[], replicas="", in_flight=[])
    with pytest.raises(InvalidRecordError, match="held"):
        hot.credit((1,), held=[1, 0], replicas="a", in_flight=[0, 0])
    with pytest.raises(InvalidRecordError, match="held"):
        hot.credit(
            (1,), held=[2], replicas="a", in_flight=[1]
        )  # more blocks held than the chain has
    with pytest.raises(InvalidRecordError, match="demand"):
        hot.credit((1,), held=[1, 0], replicas="ab", in_flight=[1, 0], shared_demand=-1.0)


def test_a_stride_counts_every_stride_th_prefix_and_rounds_the_credit_down() -> None:
    hot = Observed(window=4, stride=2)
    for _ in range(4):
        hot.record((1, 2, 3, 4, 5))
    # Depths 2 and 4 are counted (blocks 2 and 4); 1, 3 and 5 are not.
    assert [hot.demand(b, replicas=2) for b in (1, 2, 3, 4, 5)] == [0.0, 2.0, 0.0, 2.0, 0.0]
    # The deepest held prefix (5 blocks) rounds down to depth 4: holders hold >= 4 blocks,
    # and a warm copy is credited with 4 (a holder keeps its 5).
    rule = hot.credit((1, 2, 3, 4, 5), held=[5, 0, 4], replicas="abc", in_flight=[1, 0, 2])
    assert rule == HotCredit(held=(5, 4, 4), warm=("a", "c", "b"), shared=True)
    # Without the rounding the prefix would be block 5, never counted: no rule at all.
    assert hot.demand(5, replicas=3) == 0.0
    with pytest.raises(InvalidRecordError, match="stride"):
        HotPrefixes(window=4, stride=0)


def test_credit_takes_the_hosts_notion_of_a_busy_holder() -> None:
    hot = hot_of(8)
    chain = (1, 2, 3)
    # Beyond a load guard of 2 requests over the least loaded (the LiteLLM plugin's).
    beyond = lambda f, least: f > least + 2  # noqa: E731
    assert (
        hot.credit(chain, held=[3, 0], replicas="ab", in_flight=[2, 0], overloaded=beyond) is None
    )
    rule = hot.credit(chain, held=[3, 0], replicas="ab", in_flight=[3, 0], overloaded=beyond)
    assert rule is not None and rule.held == (3, 3)
    # The default: one request in flight is busy.
    assert hot.credit(chain, held=[3, 0], replicas="ab", in_flight=[1, 0]) is not None


def test_credit_checks_held_and_replicas_whatever_the_load() -> None:
    hot = hot_of(8)
    with pytest.raises(InvalidRecordError, match="held"):  # checked though all are idle
        hot.credit((1, 2), held=[9, 0], replicas="ab", in_flight=[0, 0])
    with pytest.raises(InvalidRecordError, match="held"):
        hot.credit((1, 2), held=[2, -1], replicas="ab", in_flight=[1, 0])
    with pytest.raises(InvalidRecordError, match="replicas"):
        hot.credit((1, 2, 3), held=[3, 0, 0], replicas="abb", in_flight=[3, 5, 0])


def test_a_hot_credit_refuses_what_credit_never_builds() -> None:
    assert HotCredit(held=(1, 0), warm=("a",), shared=False).held == (1, 0)
    for kwargs, name in (
        ({"held": [1], "warm": (), "shared": False}, "held"),
        ({"held": (-1,), "warm": (), "shared": False}, "held"),
        ({"held": (1,), "warm": ["a"], "shared": False}, "warm"),
        ({"held": (1,), "warm": (), "shared": 1}, "shared"),
    ):
        with pytest.raises(InvalidRecordError, match=name):
            HotCredit(**kwargs)  # type: ignore[arg-type]


def test_the_fair_share_guard_is_for_a_hot_prefix_some_candidate_lacks() -> None:
    hot = Observed(window=10)
    fill(hot, with_prefix=3, without=7)  # block 7 in 3 of 10 dispatches
    assert DEFAULT_GUARD_DEMAND == 1.0
    # 4 candidates: demand 1.2 >= 1; 8 candidates: 2.4; 2 candidates: 0.6 < 1.
    assert hot.needs_fair_share((7, 300), held=[1, 0, 0, 0])
    assert not hot.needs_fair_share((7, 300), held=[1, 0])
    assert hot.needs_fair_share((7, 300), held=[1, 0], demand=0.6)  # the bound is inclusive
    # Held everywhere: no affinity to correct, unless the prefix is most of the request
    # (at least DEFAULT_GUARD_COVER of its chain). Held nowhere: no prefix.
    assert DEFAULT_GUARD_COVER == 0.75
    assert not hot.needs_fair_share((7, 300), held=[1, 1, 1, 1])  # half of the chain
    assert hot.needs_fair_share((7, 300), held=[1, 1, 1, 1], cover=0.5)
    assert hot.needs_fair_share((7,), held=[1, 1, 1, 1])  # all of it
    assert not hot.needs_fair_share((7,), held=[1, 1, 1, 1], cover=1.01)  # never
    assert not hot.needs_fair_share((7, 300), held=[0, 0, 0, 0])
    # The deepest held prefix decides: (7, 100) is in 3 of 10 too, (7, 300) in none.
    assert hot.needs_fair_share((7, 100), held=[2, 1, 0, 0])
    assert not hot.needs_fair_share((7, 300), held=[2, 1, 0, 0])


def test_the_fair_share_test_rounds_to_the_stride_and_checks_its_arguments() -> None:
    hot = Observed(window=10, stride=2)
    for _ in range(5):
        hot.record((1, 2, 3, 4))
    # held 3 rounds down to 2: prefix (1, 2), in every dispatch, held by one of 4.
    assert hot.needs_fair_share((1, 2, 3, 9), held=[3, 0, 0, 0])
    # held 1 rounds down to 0: no counted prefix.
    assert not hot.needs_fair_share((1, 2, 3, 9), held=[1, 0, 0, 0])
    with pytest.raises(InvalidRecordError, match="held"):
        hot.needs_fair_share((1, 2), held=[])
    with pytest.raises(InvalidRecordError, match="held"):
        hot.needs_fair_share((1, 2), held=[3, 0])
    with pytest.raises(InvalidRecordError, match="held"):
        hot.needs_fair_share((1, 2), held=[1, -1])
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(InvalidRecordError, match="demand"):
            hot.needs_fair_share((1, 2), held=[1, 0], demand=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidRecordError, match="cover"):
            hot.needs_fair_share((1, 2), held=[1, 0], cover=bad)  # type: ignore[arg-type]


def test_demand_is_the_lower_bound_of_the_share() -> None:
    # The Wilson score interval's lower bound at z = confidence, times the replicas.
    def share(with_prefix: int, without: int, **kwargs: float) -> float:
        hot = HotPrefixes(window=4096, **kwargs)
        fill(hot, with_prefix, without)
        return hot.demand(7, replicas=1)

    assert DEFAULT_HOT_CONFIDENCE == 1.0
    # The class docstring's values: 1 of 3, 1 of 20, 512 of 2,048.
    assert share(1, 2) == pytest.approx(0.1357, abs=1e-4)
    assert share(1, 19) == pytest.approx(0.0193, abs=1e-4)
    assert share(512, 1536) == pytest.approx(0.2406, abs=1e-4)
    # In every dispatch: n / (n + z**2).
    assert share(1, 0) == 0.5 and share(9, 0) == pytest.approx(0.9)
    assert share(9, 0, confidence=2.0) == pytest.approx(9 / 13)
    # By hand, z = 2, 3 of 10: p = 0.3, z**2 / n = 0.4.
    low = (0.3 + 0.2 - 2 * math.sqrt(0.3 * 0.7 / 10 + 4 / 400)) / 1.4
    assert share(3, 7, confidence=2.0) == pytest.approx(low)
    # confidence=0: the observed share; no dispatch with the prefix: 0.
    assert share(3, 7, confidence=0) == 0.3 and share(0, 10) == 0.0
    hot = HotPrefixes(window=10)
    fill(hot, 3, 7)
    assert hot.demand(7, replicas=8) == pytest.approx(8 * share(3, 7))


def test_a_prefix_seen_in_a_few_first_dispatches_gets_fewer_copies_than_its_share() -> None:
    # 1 of the first 3 dispatches on 8 replicas: observed, 2.67 replicas (4 copies); one
    # standard error low, 1.09 (2 copies). In every dispatch from the first: 4 replicas of
    # demand, 6 copies at once.
    for hot, copies in ((Observed(window=2048), 4), (HotPrefixes(window=2048), 2)):
        fill(hot, 1, 2)
        assert len(hot.warm(7, holders=[0], in_flight=EIGHT)) == copies
    hot = HotPrefixes(window=2048)
    hot.record((1, 2, 3))
    assert hot.demand(3, replicas=8) == 4.0
    assert len(hot.warm(3, holders=[0], in_flight=EIGHT)) == 6


def test_the_fair_share_guard_reads_the_bound() -> None:
    # 3 of 10 dispatches on 4 candidates: 1.2 replicas observed, guarded; one standard
    # error low 0.72, not.
    for hot, guarded in ((Observed(window=10), True), (HotPrefixes(window=10), False)):
        fill(hot, 3, 7)
        assert hot.needs_fair_share((7, 300), held=[1, 0, 0, 0]) is guarded


def test_the_observed_share_counts_exactly() -> None:
    # confidence=0 is c x replicas / n, exactly: 1 of 49 dispatches on 49 replicas is one
    # replica of demand (the guard's bound, inclusive), and 135 of 260 on 13 replicas
    # needs 9 copies (6.75 / 0.75), not 10.
    hot = Observed(window=49)
    fill(hot, 1, 48)
    assert hot.demand(7, replicas=49) == 1.0
    assert hot.needs_fair_share((7, 300), held=[1] + [0] * 48)
    hot = Observed(window=260)
    fill(hot, 135, 125)
    assert len(hot.warm(7, holders=[0], in_flight=dict.fromkeys(range(13), 0))) == 9


@pytest.mark.parametrize(
    ("replicas", "last"), [(1, 1), (2, 3), (3, 4), (8, 12), (13, 20), (64, 97)]
)
def test_a_prefix_seen_once_is_shared_for_about_the_first_one_and_a_half_replicas(
    replicas: int, last: int
) -> None:
    # With the default bound, a prefix seen once among n dispatches is shared (a quarter of
    # a replica of demand) up to n = last, about 1.5 x replicas (1.53 x replicas - 1 for
    # many replicas); observed, up to 4 x replicas.
    for n, shared in ((last, True), (last + 1, False)):
        hot = HotPrefixes(window=n)
        fill(hot, 1, n - 1)
        assert hot.shared(7, replicas=replicas) is shared, n
    observed = Observed(window=4 * replicas)
    fill(observed, 1, 4 * replicas - 1)
    assert observed.shared(7, replicas=replicas)
