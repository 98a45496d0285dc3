"""``aibrix-prefix-cache-current``: AIBrix ``prefix-cache`` after PR #2365 (the
load-imbalance gate moved into the gateway, with a new trigger), against the pinned
``aibrix-prefix-cache``. Each case is written from the stored AIBrix source cited in
``AibrixPrefixCacheCurrentPolicy``'s docstring (``load_balance.go``
``getTargetPodListOnLoadImbalance``, ``ApplyLoadImbalanceGate`` and its tests
``TestLoadBalanceRoute_TwoPodLoadImbalanceGateRestrictsToIdle``,
``TestLoadImbalanceGateHonorsProfileKnobs``; ``gateway.go`` ``selectTargetPod``)."""

from __future__ import annotations

import pytest
from peer_cases import BT, view

from clusterrouting import InvalidRecordError
from prefixcache.replay import (
    PEER_POLICIES,
    TUNABLE,
    AibrixPrefixCacheCurrentPolicy,
    AibrixPrefixCachePolicy,
    ClusterModel,
    Request,
    make_policy,
)
from prefixcache.replay._peer_gateways import aibrix_load_imbalanced

ONE = Request(arrival=0, input_tokens=32 * BT, output_tokens=1, blocks=(1,))
"""One whole 1,280-character block: ten 128-byte chunks (``block_tokens=32 x BT``)."""


def hold(p: AibrixPrefixCachePolicy, pods: dict[int, float]) -> None:
    """Table entries for every chunk of block 1, written by ``pods`` at those times."""
    for end in range(128, 1281, 128):
        p.table[(1, end)] = dict(pods)


def current() -> AibrixPrefixCacheCurrentPolicy:
    return AibrixPrefixCacheCurrentPolicy(block_tokens=32 * BT)


def pinned() -> AibrixPrefixCachePolicy:
    return AibrixPrefixCachePolicy(block_tokens=32 * BT)


def fires(in_flight: list[int]) -> bool:
    return aibrix_load_imbalanced(in_flight, min_gap=8, factor=2.0)


# --- registration -------------------------------------------------------------------------


def test_the_current_aibrix_is_a_peer_next_to_the_pinned_one() -> None:
    assert PEER_POLICIES.index("aibrix-prefix-cache-current") == (
        PEER_POLICIES.index("aibrix-prefix-cache") + 1
    )
    p = make_policy("aibrix-prefix-cache-current", ClusterModel(replicas=2))
    assert isinstance(p, AibrixPrefixCacheCurrentPolicy)
    assert (p.min_gap, p.imbalance_factor, p.std_factor) == (8, 2.0, 2.0)
    assert type(make_policy("aibrix-prefix-cache", ClusterModel(replicas=2))) is (
        AibrixPrefixCachePolicy
    )


def test_its_gate_parameters_are_tunable() -> None:
    assert set(TUNABLE["aibrix-prefix-cache-current"]) == {
        "min_gap",
        "imbalance_factor",
        "std_factor",
    }
    p = make_policy(
        "aibrix-prefix-cache-current",
        ClusterModel(replicas=2),
        params={"min_gap": 100, "imbalance_factor": 20.0},
    )
    assert isinstance(p, AibrixPrefixCacheCurrentPolicy)
    assert (p.min_gap, p.imbalance_factor) == (100, 20.0)


@pytest.mark.parametrize(
    ("kw", "arg"),
    [
        ({"min_gap": -1}, "min_gap"),
        ({"imbalance_factor": -0.5}, "imbalance_factor"),
        ({"imbalance_factor": float("nan")}, "imbalance_factor"),
        ({"imbalance_factor": float("inf")}, "imbalance_factor"),
    ],
)
def test_bad_gate_parameters_are_refused(kw: dict[str, float], arg: str) -> None:
    with pytest.raises(InvalidRecordError, match=arg):
        AibrixPrefixCacheCurrentPolicy(block_tokens=BT, **kw)  # type: ignore[arg-type]


# --- the trigger (getTargetPodListOnLoadImbalance) -----------------------------------------


def test_two_pods_fire_on_the_gap_alone_from_exactly_8() -> None:
    # "maxValue-minValue < minGap" is balanced: a gap of 7 is, 8 is not.
    assert not fires([7, 0])
    assert fires([8, 0])
    assert fires([0, 8])
    # Two pods skip the factor test: 20 <= 2 x (12 + 1) would hold it back (the source's
    # TwoPodLoadImbalanceGateRestrictsToIdle, 20 vs 2).
    assert fires([20, 12])
    assert fires([20, 2])
    # The pinned trigger needed a gap over 16.
    assert not pinned()._imbalanced([16, 0]) and pinned()._imbalanced([17, 0])


def test_three_or_more_pods_need_the_gap_and_the_factor_over_the_others_mean() -> None:
    assert not fires([7, 0, 0])  # gap 7
    assert fires([8, 0, 0])  # gap 8, 8 > 2 x (0 + 1)
    # The others' mean excludes the busiest pod: [14, 6, 6] -> 2 x (6 + 1) = 14, and
    # 14 > 14 is false; one more on the busiest pod fires.
    assert not fires([14, 6, 6])
    assert fires([15, 6, 6])
    # The counterfactual: with the mean over all pods (the docs' "mean_req", 9 here) the
    # bound would be 2 x (9 + 1) = 20 and [15, 6, 6] would not fire.
    assert fires([6, 15, 6])  # order does not matter
    # The source's own case (TestLoadImbalanceGateHonorsProfileKnobs): 20 > 2 x (2 + 1).
    assert fires([2, 2, 2, 20])
    assert not aibrix_load_imbalanced([2, 2, 2, 20], min_gap=8, factor=20.0)
    assert not aibrix_load_imbalanced([2, 2, 2, 20], min_gap=100, factor=2.0)


def test_one_busiest_pod_leaves_the_mean_even_when_two_tie_at_the_maximum() -> None:
    # sum - max drops one copy: [20, 20, 4] -> others' mean (20 + 4) / 2 = 12, bound 26.
    assert not fires([20, 20, 4])
    # [30, 30, 4, 4] -> others (30 + 4 + 4) / 3 = 12.67, bound 27.3: 30 fires.
    assert fires([30, 30, 4, 4])


def test_at_high_mean_load_the_gate_fires_later_than_the_pinned_gap() -> None:
    # Eight pods around 30: a gap of 17 fired the pinned gate; now the busiest must pass
    # 2 x (29 + 1) = 60.
    inf = [40, 23, 30, 30, 30, 30, 30, 30]
    assert pinned()._imbalanced(inf)
    assert not fires(inf)


def test_fewer_than_two_pods_never_fire() -> None:
    assert not fires([50])


# --- the decision: the narrowed pod list ---------------------------------------------------


def test_a_gap_of_8_now_sends_a_match_away_from_the_busiest_holder() -> None:
    # [8, 0, 3]: the gate fires (8 > 2 x (1.5 + 1)), so only pod 1 may be chosen. Pinned:
    # gap 8 <= 16, pod 0 matches and passes mean + 2 sd (3.67 + 2 x 4.04).
    a, b = current(), pinned()
    hold(a, {0: 0.0})
    hold(b, {0: 0.0})
    assert a.choose(0, ONE, 0.0, view(3, [8, 0, 3])) == 1
    assert b.choose(0, ONE, 0.0, view(3, [8, 0, 3])) == 0


def test_the_narrowed_set_keeps_a_holder_at_the_minimum() -> None:
    # [9, 0, 0]: narrowed to pods 1 and 2; pod 2 holds the block and wins the match.
    p = current()
    hold(p, {0: 0.0, 2: 0.0})
    assert p.choose(0, ONE, 0.0, view(3, [9, 0, 0])) == 2


def test_the_fallback_sees_only_the_narrowed_pods() -> None:
    # Only the busiest pod holds the block: the match is empty and the least-loaded
    # fallback draws among the pods at the minimum, never pod 2.
    picks = set()
    for seed in range(40):  # a fresh table each time: a pick writes the block
        p = AibrixPrefixCacheCurrentPolicy(block_tokens=32 * BT, seed=seed)
        hold(p, {2: 0.0})
        picks.add(p.choose(0, ONE, 0.0, view(3, [0, 0, 9])))
    assert picks == {0, 1}


def test_without_the_gate_the_std_guard_still_runs_over_all_pods() -> None:
    # The high-load case above: no gate now, so pod 2 (30 <= 30.4 + 2 x 4.6) keeps its
    # match; the pinned gate fired and sent it to pod 1, the minimum.
    inf = [40, 23, 30, 30, 30, 30, 30, 30]
    a, b = current(), pinned()
    hold(a, {2: 0.0})
    hold(b, {2: 0.0})
    assert a.choose(0, ONE, 0.0, view(8, inf)) == 2
    assert b.choose(0, ONE, 0.0, view(8, inf)) == 1
    # ... and the guard is unchanged: the busiest holder (40 > 39.6) falls back to pod 1.
    c = current()
    hold(c, {0: 0.0})
    assert c.choose(0, ONE, 0.0, view(8, inf)) == 1


def test_a_pick_narrowed_to_one_pod_is_written_to_the_table() -> None:
    # One pod at the minimum takes the gateway's single-pod fast path, which still runs
    # the router's post-route hook: its chunks are written for that pod.
    p = current()
    assert p.choose(0, ONE, 5.0, view(3, [0, 9, 9])) == 0
    assert len(p.table) == 10
    assert all(entry == {0: 5.0} for entry in p.table.values())
    # The next request with the same prompt, balanced again, matches pod 0.
    assert p.choose(1, ONE, 6.0, view(3, [1, 1, 1])) == 0
