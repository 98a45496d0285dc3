"""Each replay policy drives the library's public routing path; hand-checked placements."""

from __future__ import annotations

import random
from typing import Any

import pytest

from clusterrouting import InvalidRecordError
from prefixcache.replay import (
    CacheCostPolicy,
    ClusterModel,
    ClusterView,
    FederationPolicy,
    HotPrefixes,
    LeastLoadedPolicy,
    PrefixPolicy,
    RandomPolicy,
    Request,
    auto_speedup,
    make_policy,
    run_replay,
    shared_prefix_trace,
    simulate,
    synthetic_trace,
)

MODEL = ClusterModel(
    replicas=2,
    cache_blocks=None,
    block_tokens=4,
    prefill_tokens_per_s=1000.0,
    decode_tokens_per_s=10.0,
)


def req(t_s: float, blocks: tuple[int, ...], out: int = 0) -> Request:
    return Request(arrival=t_s, input_tokens=4 * len(blocks), output_tokens=out, blocks=blocks)


# a: unrelated; b: a 4-block conversation; c: its next turn (5 blocks).
ABC = [req(0.0, (9,)), req(1.0, (1, 2, 3, 4)), req(2.0, (1, 2, 3, 4, 5))]


def test_prefix_policy_follows_the_hot_replica() -> None:
    # a -> replica-00 (cold tie by node id), observed there (weight 1). b has no match:
    # cold order is by weight, so replica-01 (weight 0). c matches b's 4 of 5 blocks on
    # replica-01 (ratio 0.8 >= 0.3), which is within the load guard: replica-01, 4 hits.
    out = simulate(ABC, PrefixPolicy("dispatch"), MODEL)
    assert out.replica == (0, 1, 1)
    assert out.hit_blocks == (0, 0, 4)


def test_federation_policy_prefers_the_affine_peer() -> None:
    # a -> 00 (full tie, earliest). b: no preference; pick_best_replica takes the never-used
    # 01. c: preferred 01 (ratio 0.8) within slack 2 -> 01, 4 hits.
    out = simulate(ABC, FederationPolicy("completion"), MODEL)
    assert out.replica == (0, 1, 1)
    assert out.hit_blocks == (0, 0, 4)
    # Counterfactual: least-loaded alone sends c to the least recently used replica, 00.
    ll = simulate(ABC, LeastLoadedPolicy(), MODEL)
    assert ll.replica == (0, 1, 0)
    assert ll.hit_blocks == (0, 0, 0)


def test_observe_at_completion_does_not_see_requests_still_in_flight() -> None:
    # b decodes for 10 s; c arrives at 2 s. Observing at completion, the index has not
    # seen b yet, so c gets no preference and pick_best_replica takes the least recently
    # used replica (00): 0 hits. Observing at dispatch, c follows b to 01: 4 hits.
    trace = [ABC[0], req(1.0, (1, 2, 3, 4), out=100), ABC[2]]
    late = simulate(trace, FederationPolicy("completion"), MODEL)
    early = simulate(trace, FederationPolicy("dispatch"), MODEL)
    assert late.replica == (0, 1, 0) and late.hit_blocks == (0, 0, 0)
    assert early.replica == (0, 1, 1) and early.hit_blocks == (0, 0, 4)


def test_cache_cost_sends_the_next_turn_where_its_prefix_is() -> None:
    # The cost alone: toy 4-token blocks, so no margin (the default 512-token margin makes
    # every saving here a tie), and no hot prefixes (in a window of two dispatches, b's
    # prefix is half the traffic: hot). a -> 00 (all tie, first by last use); b: nothing
    # cached anywhere, all tie: the least recently used replica, 01. c would cost 4 tokens
    # on 01, 20 on 00.
    toy = {"capacity_blocks": None, "block_tokens": 4, "cost_margin": 0, "hot_prefixes": False}
    out = simulate(ABC, CacheCostPolicy(**toy), MODEL)  # type: ignore[arg-type]
    assert out.replica == (0, 1, 1)
    assert out.hit_blocks == (0, 0, 4)
    # Counterfactual: with the default margin, saving 16 tokens is a tie, and ties rotate.
    out = simulate(ABC, CacheCostPolicy(capacity_blocks=None, block_tokens=4), MODEL)
    assert out.replica == (0, 1, 0)
    # Backlog and load move requests without cached context, never a deep match cheaply.
    slow = ClusterModel(
        replicas=2,
        cache_blocks=None,
        block_tokens=4,
        prefill_tokens_per_s=0.1,
        decode_tokens_per_s=10.0,
    )
    trace = [req(0.0, (1, 2, 3, 4)), req(0.0, tuple(range(100, 150))), req(1.0, (1, 2, 3, 4, 5))]
    out = simulate(trace, CacheCostPolicy(**toy), slow)  # type: ignore[arg-type]
    # first -> 00; the 200-token second -> 01 (cost 200 + 0.1*16 + 64*1 on 00 vs 200);
    # third: 00 costs 4 + 0.1*16 = 5.6, 01 costs 20 + 0.1*200 = 40 -> 00.
    assert out.replica == (0, 1, 0)
    assert out.hit_blocks == (0, 0, 4)


def test_least_loaded_takes_turns_by_last_use() -> None:
    trace = [req(float(t), (t + 100,)) for t in range(4)]
    assert simulate(trace, LeastLoadedPolicy(), MODEL).replica == (0, 1, 0, 1)


def test_random_is_seeded() -> None:
    trace = synthetic_trace(seed=5, sessions=40, duration_s=60.0)
    a = simulate(trace, RandomPolicy(7), MODEL).replica
    b = simulate(trace, RandomPolicy(7), MODEL).replica
    c = simulate(trace, RandomPolicy(8), MODEL).replica
    assert a == b
    assert a != c
    assert set(a) == {0, 1}


def test_make_policy_defaults_and_errors() -> None:
    assert make_policy("prefix", MODEL).observe_at == "completion"
    assert make_policy("federation", MODEL).observe_at == "completion"
    assert make_policy("cache-cost", MODEL).observe_at == "dispatch"
    assert make_policy("prefix", MODEL, observe_at="dispatch").observe_at == "dispatch"
    assert make_policy("round-robin", MODEL).observe_at == "-"
    with pytest.raises(ValueError, match="observe_at"):
        make_policy("prefix", MODEL, observe_at="never")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policies"):
        make_policy("fastest", MODEL)


def test_make_policy_params_are_numbers_or_the_constructors_unset() -> None:
    # None is the constructor's own "unset": no fair-share guard at all, so a hot prefix on
    # an idle holder keeps it for 9 requests (as in
    # test_cache_cost_keeps_a_hot_prefix_on_an_idle_holder), not 5.
    prefix = tuple(range(1, 201))
    spaced = [req(10.0 * k, (*prefix, 1000 + k)) for k in range(11)]
    policy = make_policy("cache-cost", MODEL, params={"share_factor": None, "guard_demand": None})
    assert simulate(spaced, policy, MODEL).replica == (0,) * 9 + (1, 0)
    for name, bad in (("share_factor", "x"), ("share_slack", "abc"), ("queue_weight", [1])):
        with pytest.raises(InvalidRecordError, match=name):
            make_policy("cache-cost", MODEL, params={name: bad})  # type: ignore[dict-item]
    with pytest.raises(InvalidRecordError, match="share_slack"):
        make_policy("cache-cost", MODEL, params={"share_slack": float("inf")})
    with pytest.raises(InvalidRecordError, match="hot_lower"):
        make_policy("cache-cost", MODEL, params={"hot_lower": None})  # type: ignore[dict-item]


@pytest.mark.parametrize("replicas", [2, 8])
def test_cache_cost_spreads_one_hot_system_prompt_instead_of_pinning_it(replicas: int) -> None:
    # sglang issue #21199's shape: 400 prompts sharing a ~2.5k-token system prompt. The
    # replicas warm the prompt at once (its demand is n / (n + 1) of the traffic: every
    # replica from the second request on 2, from the third on 8), and the costs then tie,
    # so the requests rotate as round-robin's do: never slower than it.
    reqs = shared_prefix_trace(seed=0, prompts=400)
    model = ClusterModel(replicas=replicas)
    res = run_replay(
        reqs,
        model=model,
        policies=["round-robin", "cache-cost", "sglang-cache-aware"],
        target_load=2.2,
        jobs=1,
    )
    ours = res.policy("cache-cost")
    rr = res.policy("round-robin")
    assert ours.max_over_mean_requests <= 1.05
    assert ours.ttft_mean_s < res.policy("sglang-cache-aware").ttft_mean_s
    assert ours.ttft_mean_s <= rr.ttft_mean_s
    assert ours.ttft_p99_s <= rr.ttft_p99_s
    assert ours.ideal_fraction >= rr.ideal_fraction


def test_replay_reexports_the_library_hot_prefixes() -> None:
    import prefixcache

    assert HotPrefixes is prefixcache.HotPrefixes


# The shared-prefix rule, isolated: no margin, no in-flight term, no share price, no
# warm copies (a copy would carry 100 replicas of demand) and no fair-share guard for hot
# prefixes, so only the backlog weight acts.
ISOLATED = {
    "cost_margin": 0.0,
    "in_flight_tokens": 0.0,
    "share_tokens": 0.0,
    "hot_per_copy": 100.0,
    "guard_demand": None,
}
# 20 prompts sharing the 8-block prefix (1..8) plus one block of their own, arriving 1 ms
# apart: all before the first one's first token (a step lasts 0.1 s), so the holder's
# backlog grows by the 4 uncached tokens of each.
PREFIX = tuple(range(1, 9))
BURST = [req(200.0 + k / 1000, (*PREFIX, 1000 + k)) for k in range(20)]
# 200 unrelated one-block requests first, spread out and finished before the burst.
UNRELATED = [req(float(t) / 2, (5000 + t,)) for t in range(200)]


def placements(
    trace: list[Request], capacity: int | None = None, **params: float | None
) -> tuple[int, ...]:
    # The engines cache without bound; ``capacity`` is only the mirror's.
    policy = CacheCostPolicy(capacity_blocks=capacity, block_tokens=4, **ISOLATED, **params)
    return simulate(trace, policy, MODEL).replica[-len(BURST) :]


def test_cache_cost_gives_way_to_an_idle_replica_sooner_for_a_shared_prefix() -> None:
    # Every dispatch so far shares the prefix: demand 2 replicas >= 0.25, and replica 1
    # does not hold it. With the backlog at 0.5 the holder (cost 4 + 0.5 x backlog) gives
    # way once its backlog reaches 64 tokens (the idle replica's cost is the whole
    # 36-token prompt, 32 more): the 9th request sees a backlog of 36 + 7 x 4 = 64, a tie,
    # and ties go to the replica used least recently. At the plain 0.1 it would take a
    # backlog of 320 tokens (72 requests).
    shared = placements(BURST)
    assert shared[:9] == (0,) * 8 + (1,)
    assert placements(BURST, shared_queue_weight=0.1) == (0,) * 20


def test_the_shared_weight_never_lowers_a_larger_queue_weight() -> None:
    # At queue_weight 0.9 the shared weight (0.5) would keep a shared prefix on its holder
    # longer than any other prompt; the larger weight applies instead, so the burst
    # spreads exactly as with the rule off (a demand bound no prefix reaches).
    heavy = placements(BURST, queue_weight=0.9)
    assert heavy == placements(BURST, queue_weight=0.9, shared_demand=1e9)
    assert heavy[:4] == (0, 1, 0, 1)


def test_cache_cost_weighs_a_shared_prefix_at_the_plain_weight_under_kv_pressure() -> None:
    # The rule holds only while every replica's KV usage in the mirror (its running
    # requests' blocks) is below 0.8 of its capacity. When the 9th request arrives the
    # eight before it still run on replica 0 and pin the prefix and their own block: 16
    # blocks, not below 0.8 x 20 (the burst stays), below 0.8 x 21 (it moves).
    assert placements(BURST, capacity=20) == (0,) * 20
    assert placements(BURST, capacity=21)[:9] == (0,) * 8 + (1,)
    assert placements(BURST, capacity=20, shared_kv_usage=0.85)[:9] == (0,) * 8 + (1,)
    # Observing at completion (the LiteLLM plugin's model), the mirror pins nothing: the
    # prompts of the requests in flight (16 distinct blocks) count instead.
    assert placements(BURST, capacity=20, observe_at="completion") == (0,) * 20
    assert placements(BURST, capacity=21, observe_at="completion")[:9] == (0,) * 8 + (1,)


def test_cache_cost_keeps_a_private_prefix_on_its_holder_at_the_plain_weight() -> None:
    # The same burst after 200 unrelated requests: the prefix's demand stays below 0.25
    # of a replica (at most 2 x 20 / 220), so the backlog keeps its 0.1 weight and the
    # whole burst stays on the replica that holds the prefix.
    private = placements(UNRELATED + BURST)
    assert len(set(private)) == 1
    # Declaring every prefix shared (demand >= 0) moves it as in the shared case.
    assert len(set(placements(UNRELATED + BURST, shared_demand=0.0))) == 2


def test_the_rule_reads_the_deepest_cached_prefix_not_the_first_block() -> None:
    # Every request starts with the same block 9999 (a system prompt, held by both
    # replicas), so the first block is shared; the burst's deepest cached prefix is its
    # own 8 blocks, whose demand stays below 0.25: the plain weight, the burst stays.
    system = 9999
    unrelated = [req(r.arrival, (system, *r.blocks)) for r in UNRELATED]
    burst = [req(r.arrival, (system, *r.blocks)) for r in BURST]
    assert len(set(placements(unrelated + burst))) == 1


def test_no_request_counts_as_shared_once_every_replica_holds_its_prefix() -> None:
    # One system prompt in front of every request: its demand is the whole traffic, but
    # once both replicas hold it the backlog weight stays 0.1 (the costs tie and rotate).
    reqs = shared_prefix_trace(seed=0, prompts=200)
    model = ClusterModel(replicas=2)
    policy = CacheCostPolicy(capacity_blocks=model.cache_blocks, block_tokens=512)
    shared: list[int] = []

    def sink(record: dict[str, object]) -> None:
        explanation = record["explanation"]
        assert isinstance(explanation, dict)
        if explanation["shared_prefix"]:
            shared.append(int(str(record["request"])))

    policy.log_every = 1
    policy.log_sink = sink
    simulate(reqs, policy, model, speedup=10.0)
    assert shared and max(shared) < 4


# 20 prompts sharing a 2-block prefix, each with a block of its own (8 tokens saved on
# the holder), after the unrelated requests: a private prefix, the plain weight applies.
SHORT = [req(200.0 + k / 1000, (1, 2, 1000 + k)) for k in range(20)]


def test_cache_cost_weighs_the_backlog_more_while_every_cache_has_room() -> None:
    # The holder's backlog after k requests of the burst is 12 + 4 (k - 1) tokens; it
    # costs 4 + w x backlog against the idle replica's 12, and the tie goes to the idle
    # one. While both mirrored caches are less than half full (capacity 10,000) w is the
    # room weight, 0.2: the 9th request (backlog 40) moves. Once the 200 unrelated
    # requests have filled a 12-block mirror past half, w is the plain 0.1: the 19th
    # (backlog 80) moves.
    roomy = placements(UNRELATED + SHORT, capacity=10_000)
    assert roomy[:9] == (roomy[0],) * 8 + (1 - roomy[0],)
    full = placements(UNRELATED + SHORT, capacity=12)
    assert full[:19] == (full[0],) * 18 + (1 - full[0],)
    assert placements(UNRELATED + SHORT, capacity=10_000, room_queue_weight=0.0) == full
    assert placements(UNRELATED + SHORT, capacity=10_000, room_kv_fill=0.0) == full
    # A cluster whose every replica has a backlog of room_backlog_tokens or more is
    # saturated: the plain weight (a bound of 0 is reached by any backlog, even none).
    assert placements(UNRELATED + SHORT, capacity=10_000, room_backlog_tokens=0.0) == full
    # One replica under the bound is enough: with a bound of 20 tokens the holder passes
    # it from the 3rd request on, the idle replica never, so the room weight holds and the
    # 9th request still moves (were the bound required of every replica, the plain weight
    # would keep the burst on the holder until the 19th).
    assert placements(UNRELATED + SHORT, capacity=10_000, room_backlog_tokens=20.0) == roomy
    # Without a capacity the room is unknown: the plain weight.
    assert placements(UNRELATED + SHORT) == full


def room_log(
    trace: list[Request], capacity: int | None, **kw: float
) -> tuple[list[int], list[tuple[bool, float]]]:
    """``cache-cost``'s placements of ``trace`` and, per decision, whether its log says the
    caches had room and the backlog weight it used."""
    policy = CacheCostPolicy(capacity_blocks=capacity, block_tokens=4, **ISOLATED, **kw)
    seen: list[tuple[bool, float]] = []

    def sink(record: dict[str, Any]) -> None:
        e = record["explanation"]
        seen.append((e["caches_have_room"], e["params"]["queue_weight"]))

    policy.log_every = 1
    policy.log_sink = sink
    return list(simulate(trace, policy, MODEL).replica), seen


def test_the_decision_log_says_whether_every_cache_had_room() -> None:
    def weights(capacity: int | None, **kw: float) -> list[tuple[bool, float]]:
        return room_log(UNRELATED, capacity, **kw)[1]

    assert set(weights(10_000)) == {(True, 0.2)}
    assert set(weights(None)) == {(False, 0.1)}
    assert set(weights(10_000, room_backlog_tokens=0.0)) == {(False, 0.1)}
    # The one-block requests alternate between the replicas, each finished before the
    # next: after 39 dispatches one replica holds 20 of its 40 blocks, half, and from the
    # 40th decision on there is no room; filled to the brim (room_kv_fill=1), from the
    # 80th.
    assert weights(40) == [(True, 0.2)] * 39 + [(False, 0.1)] * 161
    assert weights(40, room_kv_fill=1.0) == [(True, 0.2)] * 79 + [(False, 0.1)] * 121
    # The larger weight applies: a queue_weight above the room weight is kept.
    assert set(weights(10_000, queue_weight=0.3)) == {(True, 0.3)}


def test_the_room_is_read_on_every_replica_not_only_the_first() -> None:
    # A one-block request on replica 0, then a 20-block one on replica 1 (ties rotate):
    # replica 1 holds half of its 40 blocks from then on, so only the first two decisions
    # have room, though replica 0 stays nearly empty.
    trace = [req(0.0, (9000,)), req(0.5, tuple(range(7000, 7020)))]
    trace += [req(1.0 + t / 2, (5000 + t,)) for t in range(10)]
    placed, seen = room_log(trace, 40)
    assert placed[:2] == [0, 1]
    assert seen == [(True, 0.2)] * 2 + [(False, 0.1)] * 10


def test_cache_cost_checks_the_shared_parameters() -> None:
    def make(**kw: object) -> CacheCostPolicy:
        return CacheCostPolicy(capacity_blocks=None, block_tokens=4, **kw)  # type: ignore[arg-type]

    for bad in (-1.0, float("inf"), float("nan"), True, "0.1"):
        for name in (
            "shared_queue_weight",
            "shared_demand",
            "room_queue_weight",
            "room_backlog_tokens",
        ):
            with pytest.raises(ValueError, match=name):
                make(**{name: bad})
    for bad in (-0.1, 1.5, float("nan"), True, "0.1"):
        for name in ("shared_kv_usage", "room_kv_fill"):
            with pytest.raises(ValueError, match=name):
                make(**{name: bad})
    with pytest.raises(ValueError, match="shared_demand"):
        make(shared_demand=10**400)  # beyond any float: HotPrefixes.shared refuses it too
    with pytest.raises(ValueError, match="queue_weight"):
        make(queue_weight=-1.0)  # every cost parameter is checked at construction
    policy = make_policy(
        "cache-cost",
        MODEL,
        params={
            "shared_queue_weight": 0.3,
            "shared_demand": 1.0,
            "shared_kv_usage": 0.9,
            "room_queue_weight": 0.0,
            "room_kv_fill": 1.0,
            "room_backlog_tokens": 8192.0,
        },
    )
    assert isinstance(policy, CacheCostPolicy)
    with pytest.raises(ValueError, match="shared_kv_usage"):
        make_policy("cache-cost", MODEL, params={"shared_kv_usage": 2.0})


def test_cache_cost_keeps_a_hot_prefix_on_an_idle_holder() -> None:
    # Every request shares the prefix (demand: the whole traffic), but each one finishes
    # before the next arrives: the holder is idle at every decision, so the hot-prefix rule
    # (warm copies, shared weight) stays off and, without the fair-share guard, the prompt
    # keeps its replica. The same requests in a burst find the holder busy and spread over
    # warm copies. (A 200-block prefix: its 800 tokens outweigh the 512-token cost margin.)
    prefix = tuple(range(1, 201))
    # The holder keeps 9 of them: the 10th finds its 9 extra dispatches priced at
    # 32 x 9 = 288 tokens, which bring its cost (4 + 288) within the 512-token margin of
    # the idle replica's 804, and the tie goes to the replica used least recently.
    spaced = [req(10.0 * k, (*prefix, 1000 + k)) for k in range(11)]
    policy = CacheCostPolicy(capacity_blocks=None, block_tokens=4, guard_demand=None)
    assert simulate(spaced, policy, MODEL).replica == (0,) * 9 + (1, 0)
    # By default a prefix in front of more than one replica's share of the traffic that
    # one replica holds picks within the fair share: after 5 dispatches the holder has 5,
    # over 1.1 x 2.5 + 2, so the 6th goes to the other replica, which then holds it too
    # (the guard is off again) and the two share the rest by the share price.
    policy = CacheCostPolicy(capacity_blocks=None, block_tokens=4)
    assert simulate(spaced, policy, MODEL).replica == (0,) * 5 + (1, 0, 1, 0, 1, 0)
    burst = [req(100.0 + k / 1000, r.blocks) for k, r in enumerate(spaced[:5])]
    policy = CacheCostPolicy(capacity_blocks=None, block_tokens=4)
    assert len(set(simulate(burst, policy, MODEL).replica[:3])) == 2
    # A host's own test of a busy holder replaces "has a request in flight": one that never
    # holds leaves the first three on the holder (its 800 cached tokens outweigh the
    # backlog, in-flight and share terms until then).
    never = CacheCostPolicy(capacity_blocks=None, block_tokens=4, hot_overloaded=lambda f, m: False)
    assert simulate(burst, never, MODEL).replica[:3] == (0,) * 3


def test_cache_cost_observing_at_completion_counts_prompts_in_flight_as_held() -> None:
    # What a gateway learns from success callbacks: the mirror records a prompt when its
    # request completes, and until then the prompt counts as held where it runs. Twelve
    # short unrelated requests first (the prompt is then not hot), then a long-running
    # request and, while it runs, one sharing its 200-block prefix: it follows it (without
    # the credit the costs tie and it would go to the replica used less recently).
    prefix = tuple(range(1, 201))
    unrelated = [req(float(k), (5000 + k,)) for k in range(12)]
    pair = [req(20.0, (*prefix, 1000), out=100), req(21.0, (*prefix, 1001))]
    policy = CacheCostPolicy(capacity_blocks=None, block_tokens=4, observe_at="completion")
    placed = simulate(unrelated + pair, policy, MODEL).replica
    assert placed[-1] == placed[-2]
    assert policy._mirror.blocks(policy._keys[placed[-2]]) >= 201  # learnt at completion


def test_cache_cost_without_first_tokens_drains_the_backlog_at_the_prefill_rate() -> None:
    # Two cold 800-token prompts (each decoding for ~10 s) at 0 and 0.4 s, then probes. By
    # default a request's tokens leave its replica's backlog at its first token (0.8 and
    # 1.2 s here); with prefill_rate (the LiteLLM plugin sees no first token) the backlog
    # drains at that rate between decisions, and is 0 once nothing is in flight there.
    trace = [
        req(0.0, tuple(range(1000, 1200)), out=100),
        req(0.4, tuple(range(2000, 2200)), out=100),
        req(2.0, (7,)),
        req(60.0, (8,)),
    ]

    def backlogs(**params: float) -> list[list[int]]:
        policy = CacheCostPolicy(capacity_blocks=None, block_tokens=4, **params)
        seen: list[list[int]] = []
        policy.log_every = 1
        policy.log_sink = lambda r: seen.append(
            [c["signals"]["queued_tokens"] for c in r["explanation"]["candidates"]]
        )
        simulate(trace, policy, MODEL)
        return seen

    assert backlogs() == [[0, 0], [800, 0], [0, 0], [0, 0]]
    # 100 tokens/s: 800 - 40 = 760 at 0.4 s; at 2.0 s 760 - 160 = 600 and 800 - 160 = 640.
    assert backlogs(prefill_rate=100.0) == [[0, 0], [760, 0], [600, 640], [0, 0]]
    # 1,000 tokens/s: 400 left at 0.4 s, none at 2.0 s (never below 0).
    assert backlogs(prefill_rate=1000.0) == [[0, 0], [400, 0], [0, 0], [0, 0]]
    # 1 token/s: still 740 and 782 at 60 s, but both requests have ended there, and a
    # backlog never exceeds the tokens of the requests not yet ended.
    assert backlogs(prefill_rate=1.0)[3] == [0, 0]
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, 10**400):
        with pytest.raises(ValueError, match="prefill_rate"):
            CacheCostPolicy(capacity_blocks=None, block_tokens=4, prefill_rate=bad)


def test_cache_cost_learns_the_prefill_rate_from_first_tokens_told_at_completion() -> None:
    # The LiteLLM plugin's model with learn_prefill_rate: each request's first-token time,
    # revealed when it completes, teaches the rate its backlogs drain at. Sixteen lone
    # 800-token prompts, one every 10 s, on replicas prefilling 1,000 tokens/s (plus the
    # engine's step time): learned at about the replicas' rate, whatever it started from.
    trace = [req(10.0 * k, tuple(range(1000 * k, 1000 * k + 200)), out=4) for k in range(16)]
    rates = []
    for start in (100.0, 1_000_000.0):
        policy = CacheCostPolicy(
            capacity_blocks=None, block_tokens=4, prefill_rate=start, learn_prefill_rate=True
        )
        result = simulate(trace, policy, MODEL)
        assert policy._drained is not None
        rates.append(policy._drained.rate)
        ttft = sum(result.ttft_s) / 16
        assert rates[-1] == pytest.approx(800 / ttft)
    assert rates[0] == rates[1] and 700 < rates[0] <= 1000
    for bad in ({"learn_prefill_rate": 1}, {"learn_prefill_rate": True}):
        with pytest.raises(ValueError, match="learn_prefill_rate"):
            CacheCostPolicy(capacity_blocks=None, block_tokens=4, **bad)  # type: ignore[arg-type]


def test_cache_cost_learns_from_the_uncached_tokens_not_the_prompt() -> None:
    # Seventeen lone prompts sharing their first 100 of 200 blocks: after the first, half of
    # each prompt is cached and prefill takes half the time; the rate is learned from the
    # uncached half (about the replicas' 1,000 tokens/s), not from the whole prompt (~2x).
    shared = tuple(range(100))
    trace = [
        req(10.0 * k, shared + tuple(range(1000 * (k + 1), 1000 * (k + 1) + 100)), out=4)
        for k in range(17)
    ]
    policy = CacheCostPolicy(
        capacity_blocks=None, block_tokens=4, prefill_rate=20_000.0, learn_prefill_rate=True
    )
    simulate(trace, policy, MODEL)
    assert policy._drained is not None
    assert 700 < policy._drained.rate <= 1000


def test_cache_cost_holds_output_blocks_from_the_first_token_weighted_by_time() -> None:
    # One replica, 4-token blocks. Each request's prompt is pinned from its dispatch; its
    # output blocks join from its first token, at RunningOutput's estimate of the requests
    # completed so far: 1 block for 1 s and 3 blocks for 3 s give (1 + 9) / 4 = 2.5
    # blocks (the plain mean, 2, undercounts the long answers that run longest), taken as
    # 2 then 3.
    view = ClusterView(ClusterModel(replicas=1, cache_blocks=100, block_tokens=4))
    policy = CacheCostPolicy(capacity_blocks=100, block_tokens=4)
    mirror = policy._mirror

    def dispatch(i: int, r: Request, now: float) -> None:
        assert policy.choose(i, r, now, view) == 0
        policy.on_dispatch(i, r, 0, now)

    def running() -> int:
        return mirror.running_blocks(policy._keys[0])

    short, long = req(0.0, (1, 2), out=4), req(0.0, (3,), out=12)
    dispatch(0, short, 0.0)
    dispatch(1, long, 0.0)
    assert running() == 3  # the prompts only
    policy.on_first_token(0, short, 0, 0.0)
    policy.on_first_token(1, long, 0, 1.0)
    assert running() == 3  # nothing completed yet: no output estimate
    policy.on_complete(0, short, 0, 1.0)
    policy.on_complete(1, long, 0, 4.0)
    assert running() == 0 and policy._output.estimate == 2.5
    a, b = req(0.0, (5,)), req(0.0, (6,))
    dispatch(2, a, 5.0)
    dispatch(3, b, 5.0)
    assert running() == 2  # queued at the engine: prompts pinned, no output yet
    policy.on_first_token(2, a, 0, 5.5)
    assert running() == 2 + 2
    policy.on_first_token(3, b, 0, 5.5)
    assert running() == 2 + 2 + 3
    policy.on_complete(2, a, 0, 6.0)
    policy.on_complete(3, b, 0, 6.0)
    assert running() == 0


def test_cache_cost_without_first_tokens_holds_output_blocks_from_the_dispatch() -> None:
    # With prefill_rate the router sees no first token: the output blocks are counted from
    # the dispatch, and each completed request's hold from its dispatch to its completion.
    # (The simulator still calls on_first_token; such a router has none to act on.) An
    # answer of 5 tokens takes 2 blocks of 4.
    view = ClusterView(ClusterModel(replicas=1, cache_blocks=100, block_tokens=4))
    policy = CacheCostPolicy(capacity_blocks=100, block_tokens=4, prefill_rate=1000.0)
    first, second = req(0.0, (1,), out=5), req(0.0, (2,))
    policy.choose(0, first, 0.0, view)
    policy.on_dispatch(0, first, 0, 0.0)
    policy.on_first_token(0, first, 0, 1.0)
    assert policy._mirror.running_blocks(policy._keys[0]) == 1  # no estimate yet
    policy.on_complete(0, first, 0, 2.0)
    assert policy._output.estimate == 2.0
    policy.choose(1, second, 3.0, view)
    policy.on_dispatch(1, second, 0, 3.0)
    assert policy._mirror.running_blocks(policy._keys[0]) == 1 + 2
    policy.on_first_token(1, second, 0, 3.5)
    assert policy._mirror.running_blocks(policy._keys[0]) == 1 + 2  # not held twice
    policy.on_complete(1, second, 0, 4.0)
    assert policy._mirror.running_blocks(policy._keys[0]) == 0


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"observe_at": "completion"},
        {"prefill_rate": 20_000.0},
        {"observe_at": "completion", "prefill_rate": 20_000.0},
        {"precise": True},
    ],
)
def test_cache_cost_ends_a_replay_with_nothing_held_for_requests(params: dict[str, object]) -> None:
    # After a whole replay of the eviction case (its first 1,500 requests), every request
    # has ended: no replica has pinned or output blocks left in the mirror, the policy keeps
    # nothing per request, and the mirror's invariants hold.
    from prefixcache.replay import eviction_case

    reqs, model = eviction_case(0)
    policy = CacheCostPolicy(
        capacity_blocks=model.cache_blocks, block_tokens=model.block_tokens, **params
    )  # type: ignore[arg-type]
    simulate(reqs[:1500], policy, model, speedup=auto_speedup(reqs[:1500], model))
    assert all(policy._mirror.running_blocks(k) == 0 for k in policy._keys)
    assert not policy._holding and not policy._est
    assert all(not pend for pend in policy._pending)
    policy._mirror._check()


def _light_and_heavy(seed: int = 0, n: int = 1200) -> list[Request]:
    """40 % light requests behind one 12-block prompt (a block of their own, 13 output
    tokens), 60 % long unique prompts with long answers: the shape of Mooncake's arxiv
    trace, where a tool prompt carries 40 % of the traffic."""
    rng = random.Random(seed)
    hot = tuple(range(1, 13))
    out: list[Request] = []
    t = 0.0
    nid = 10_000
    for _ in range(n):
        t += rng.expovariate(1.0)
        if rng.random() < 0.4:
            blocks: tuple[int, ...] = (*hot, nid)
            nid += 1
            out.append(
                Request(arrival=t, input_tokens=13 * 512 - 200, output_tokens=13, blocks=blocks)
            )
        else:
            m = rng.randint(8, 40)
            blocks = tuple(range(nid, nid + m))
            nid += m
            out.append(
                Request(arrival=t, input_tokens=m * 512 - 100, output_tokens=370, blocks=blocks)
            )
    return out


def test_a_hot_prompt_of_light_requests_spreads_within_the_fair_share() -> None:
    # Left to the cost, the light requests stay with the prompt's first holders while one
    # is idle (an idle holder saves 6k tokens; the share price would need ~190 dispatches
    # to outweigh that), and new long prompts, alike everywhere, are steered by the share
    # price to the other replicas: the busiest replica takes 1.09-1.25x the mean requests
    # on seeds 0-7, above 1.15x on five. With the guard for hot prefixes not held
    # everywhere (the default), the prompt's requests go only to replicas within 1.1x the
    # mean share + 2 of the recent dispatches, which places copies where they are needed:
    # 1.05-1.11x on every seed, at about the same mean TTFT (-1.0 to +1.5 %). The demand
    # taken one standard error low guards a little later: on seeds 3 and 4 the busiest
    # replica then takes 1.107x and 1.100x against 1.100x and 1.087x unguarded; with the
    # observed share (hot_confidence=0) the guard lowers it on every seed. These are at the
    # backlog weight of full caches (0.1); with the default room weight (0.2 while the
    # cluster is not saturated: the caches never fill half here) the guarded policy's
    # busiest replica stays within 1.12x too.
    model = ClusterModel(replicas=8)
    guarded: list[bool] = []

    def run(
        reqs: list[Request], room_queue_weight: float = 0.0, **params: float | None
    ) -> tuple[float, float]:
        sp = auto_speedup(reqs, model, target_load=0.8)
        policy = CacheCostPolicy(
            capacity_blocks=model.cache_blocks,
            block_tokens=512,
            room_queue_weight=room_queue_weight,
            **params,
        )
        policy.log_every = 1
        policy.log_sink = lambda r: guarded.append(bool(r["explanation"]["fair_share_guard"]))
        out = simulate(reqs, policy, model, speedup=sp)
        rpr = out.requests_per_replica
        return max(rpr) * len(rpr) / sum(rpr), sum(out.ttft_s) / len(out.ttft_s)

    unbalanced = 0
    for seed in range(8):
        reqs = _light_and_heavy(seed=seed)
        guarded.clear()
        balance, ttft = run(reqs)
        assert 0 < sum(guarded) < len(guarded)  # the log says which picks were guarded
        guarded.clear()
        unguarded_balance, unguarded_ttft = run(reqs, guard_demand=None)
        assert not any(guarded)
        assert balance <= 1.12 and balance <= unguarded_balance + 0.02, seed
        unbalanced += unguarded_balance > 1.15
        assert ttft <= unguarded_ttft * 1.02, seed
        observed, _ = run(reqs, hot_confidence=0)
        assert observed < run(reqs, hot_confidence=0, guard_demand=None)[0], seed
        assert run(reqs, room_queue_weight=0.2)[0] <= 1.12, seed
    assert unbalanced >= 4
    with pytest.raises(ValueError, match="guard_demand"):
        CacheCostPolicy(capacity_blocks=None, block_tokens=4, guard_demand=-1.0)


def test_the_tie_backlog_bound_reaches_the_pick_and_is_checked() -> None:
    # The policy passes tie_queue_tokens to every pick (the explanation shows the value),
    # and refuses a bad one, by name, from its constructor and from make_policy.
    def bounds(policy: object) -> list[object]:
        seen: list[object] = []
        policy.log_every = 1  # type: ignore[attr-defined]
        policy.log_sink = lambda r: seen.append(r["explanation"]["params"]["tie_queue_tokens"])  # type: ignore[attr-defined]
        simulate([req(0.0, (1, 2)), req(0.1, (1, 3))], policy, MODEL)  # type: ignore[arg-type]
        return seen

    direct = CacheCostPolicy(capacity_blocks=None, block_tokens=4, tie_queue_tokens=777.0)
    assert bounds(direct) == [777.0, 777.0]
    assert bounds(make_policy("cache-cost", MODEL, params={"tie_queue_tokens": 99})) == [99.0] * 2
    assert bounds(make_policy("cache-cost", MODEL)) == [5120, 5120]
    with pytest.raises(InvalidRecordError, match="tie_queue_tokens"):
        CacheCostPolicy(capacity_blocks=None, block_tokens=4, tie_queue_tokens=-1.0)
    with pytest.raises(InvalidRecordError, match="tie_queue_tokens"):
        make_policy("cache-cost", MODEL, params={"tie_queue_tokens": "x"})  # type: ignore[dict-item]


def test_the_hot_demand_confidence_reaches_the_hot_prefixes_and_is_checked() -> None:
    # The policy builds its HotPrefixes with hot_confidence (default one standard error),
    # and refuses a bad one, by name, from its constructor and from make_policy.
    def confidence(policy: CacheCostPolicy) -> float:
        simulate([req(0.0, (1, 2))], policy, MODEL)
        assert policy.hot is not None
        return policy.hot.confidence

    assert confidence(CacheCostPolicy(capacity_blocks=None, block_tokens=4)) == 1.0
    direct = CacheCostPolicy(capacity_blocks=None, block_tokens=4, hot_confidence=2.5)
    assert confidence(direct) == 2.5
    observed = make_policy("cache-cost", MODEL, params={"hot_confidence": 0})
    assert isinstance(observed, CacheCostPolicy) and confidence(observed) == 0.0
    with pytest.raises(InvalidRecordError, match="hot_confidence"):
        CacheCostPolicy(capacity_blocks=None, block_tokens=4, hot_confidence=-1.0)
    with pytest.raises(InvalidRecordError, match="hot_confidence"):
        make_policy("cache-cost", MODEL, params={"hot_confidence": float("inf")})


def test_the_hot_prefix_guard_waits_for_room_in_the_caches() -> None:
    # As the shared weight: a copy is made only while every replica's KV usage in the
    # mirror (its running requests' blocks) is below shared_kv_usage. With a 12-block
    # mirror every running request fills a replica, so no pick is guarded.
    reqs = _light_and_heavy(n=400)
    model = ClusterModel(replicas=8)
    sp = auto_speedup(reqs, model, target_load=0.8)

    def guarded(capacity: int) -> int:
        seen: list[bool] = []
        policy = CacheCostPolicy(capacity_blocks=capacity, block_tokens=512)
        policy.log_every = 1
        policy.log_sink = lambda r: seen.append(bool(r["explanation"]["fair_share_guard"]))
        simulate(reqs, policy, model, speedup=sp)
        return sum(seen)

    assert guarded(model.cache_blocks) > 50
    assert guarded(12) == 0


def test_the_hot_prefix_guard_reads_what_replicas_hold_not_their_warm_credit() -> None:
    # A 2-block prefix in front of every request (half of each 4-block chain, below the
    # 3/4 cover), requests 1 ms apart on 2 replicas. The second finds the holder busy:
    # both replicas count as warm copies for the cost, but replica 1 does not hold the
    # prefix, so that pick is guarded. From the third on both hold it: no guard.
    trace = [req(1.0 + k / 1000, (1, 2, 100 + 2 * k, 101 + 2 * k)) for k in range(12)]
    log: list[tuple[int, bool]] = []
    policy = CacheCostPolicy(capacity_blocks=None, block_tokens=4)
    policy.log_every = 1
    policy.log_sink = lambda r: log.append(
        (r["explanation"]["warm_copies"], r["explanation"]["fair_share_guard"])
    )
    assert simulate(trace, policy, MODEL).replica == (0, 1) * 6
    assert log == [(0, False), (2, True)] + [(2, False)] * 10


def test_a_hosts_own_fair_share_factor_is_kept_for_hot_prefixes() -> None:
    # A host that sets share_factor guards every pick with its own factor; the hot-prefix
    # rule neither replaces it with 1.1 nor turns it off.
    reqs = _light_and_heavy(n=300)
    model = ClusterModel(replicas=8)
    factors: set[float | None] = set()
    policy = CacheCostPolicy(capacity_blocks=model.cache_blocks, block_tokens=512, share_factor=1.5)
    policy.log_every = 1
    policy.log_sink = lambda r: factors.add(r["explanation"]["params"]["share_factor"])
    simulate(reqs, policy, model, speedup=auto_speedup(reqs, model, target_load=0.8))
    assert factors == {1.5}
