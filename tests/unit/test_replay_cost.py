"""prefixcache.pick_lowest_cost and KvCacheMirror (the library side of the cache-cost policy)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from clusterrouting import InvalidRecordError
from prefixcache import (
    DEFAULT_COST_MARGIN,
    DEFAULT_IN_FLIGHT_TOKENS,
    DEFAULT_QUEUE_WEIGHT,
    DEFAULT_SHARE_FACTOR,
    DEFAULT_SHARE_SLACK,
    DEFAULT_SHARE_TOKENS,
    DEFAULT_TIE_QUEUE_TOKENS,
    CostCandidate,
    DispatchWindow,
    KvCacheMirror,
    ReplicaKey,
    RunningOutput,
    explain_lowest_cost,
    pick_lowest_cost,
)

A, B, C = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")


def test_cost_weighs_cached_tokens_against_discounted_backlog() -> None:
    # a: 2048 - 1024 + 0.1 * 4000 = 1424; b: 2048 + 0 = 2048 -> a.
    a = CostCandidate(key=A, cached_tokens=1024, queued_tokens=4000)
    b = CostCandidate(key=B)
    assert pick_lowest_cost([a, b], prompt_tokens=2048) == A
    # Counterfactual: a backlog worth more than ten times the saving moves the request.
    a2 = CostCandidate(key=A, cached_tokens=1024, queued_tokens=10_250)
    assert pick_lowest_cost([a2, b], prompt_tokens=2048) == B
    # With weight 1 (own TTFT only) the shorter queue wins already.
    assert pick_lowest_cost([a, b], prompt_tokens=2048, queue_weight=1.0) == B
    assert DEFAULT_QUEUE_WEIGHT == 0.1


def test_tiers_after_cost_queue_then_in_flight_then_key() -> None:
    # Equal costs (uncached 100 each): shorter queue first.
    x = CostCandidate(key=A, cached_tokens=10, queued_tokens=100)  # 90 + 10 = 100
    y = CostCandidate(key=B, cached_tokens=0, queued_tokens=0)  # 100
    assert pick_lowest_cost([x, y], prompt_tokens=100) == B
    # Equal cost and queue: fewer in flight, then the smaller key, regardless of order.
    p = CostCandidate(key=C, in_flight=1)
    q = CostCandidate(key=B, in_flight=2)
    r = CostCandidate(key=A, in_flight=2)
    assert pick_lowest_cost([q, r, p], prompt_tokens=5) == C
    assert pick_lowest_cost([q, r], prompt_tokens=5) == A
    assert pick_lowest_cost([r, q], prompt_tokens=5) == A
    # Cached beyond the prompt counts as a full hit, not negative work.
    big = CostCandidate(key=B, cached_tokens=10_000, queued_tokens=1)
    small = CostCandidate(key=A, cached_tokens=50, queued_tokens=0)
    assert pick_lowest_cost([big, small], prompt_tokens=50) == A


def test_empty_and_bad_arguments() -> None:
    assert pick_lowest_cost([], prompt_tokens=3) is None
    with pytest.raises(InvalidRecordError, match="prompt_tokens"):
        pick_lowest_cost([], prompt_tokens=-1)
    with pytest.raises(InvalidRecordError, match="queue_weight"):
        pick_lowest_cost([], prompt_tokens=1, queue_weight=float("nan"))
    with pytest.raises(InvalidRecordError, match="queued_tokens"):
        CostCandidate(key=A, queued_tokens=-1)
    with pytest.raises(InvalidRecordError, match="key"):
        CostCandidate(key="a")  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="capacity_blocks"):
        KvCacheMirror(capacity_blocks=-2)


def test_mirror_matches_leading_blocks_per_replica() -> None:
    m = KvCacheMirror()
    m.observe(A, (1, 2, 3))
    m.observe(B, (1, 5))
    assert m.matched_blocks(A, (1, 2, 4)) == 2
    assert m.matched_blocks(B, (1, 2, 4)) == 1
    assert m.matched_blocks(C, (1,)) == 0
    assert m.matched_blocks(A, ()) == 0
    # Leading only: a deeper id without its prefix does not count.
    assert m.matched_blocks(A, (9, 2, 3)) == 0
    assert m.invalidate(A) == 3
    assert m.matched_blocks(A, (1,)) == 0
    assert m.capacity_blocks is None


def test_mirror_lru_evicts_leaves_before_their_prefixes() -> None:
    m = KvCacheMirror(capacity_blocks=3)
    m.observe(A, (1, 2, 3))  # recency: 3, 2, 1 (1 most recent)
    m.observe(A, (4,))  # evicts 3
    assert m.blocks(A) == 3
    assert m.matched_blocks(A, (1, 2, 3)) == 2
    m.observe(A, (1, 2))  # touch: 4 is now the least recent
    m.observe(A, (5,))  # evicts 4
    assert m.matched_blocks(A, (4,)) == 0
    assert m.matched_blocks(A, (1, 2)) == 2
    zero = KvCacheMirror(capacity_blocks=0)
    zero.observe(A, (1,))
    assert zero.matched_blocks(A, (1,)) == 0


def test_mirror_running_requests_pin_their_blocks_and_take_room_for_output() -> None:
    m = KvCacheMirror(capacity_blocks=4)
    m.observe(A, (1, 2))  # recency: 2, 1
    m.start(A, (5, 6), private_blocks=1)  # 2 pinned + 1 output: room for 1 cached block
    assert m.matched_blocks(A, (5, 6)) == 2
    assert m.matched_blocks(A, (1, 2)) == 1  # 2, the least recent, went
    assert m.blocks(A) == 3
    m.start(A, (7, 8, 9), private_blocks=1)  # pinned alone exceed the room: nothing cached
    assert m.matched_blocks(A, (1,)) == 0
    assert m.matched_blocks(A, (7, 8, 9)) == 3 and m.matched_blocks(A, (5, 6)) == 2
    m.observe(A, (5, 3))  # pinned 5 stays pinned; 3 finds no room
    assert m.matched_blocks(A, (5, 3)) == 1
    m.finish(A, (7, 8, 9), private_blocks=1)  # unpinned deepest first: 9, 8, 7 (7 newest)
    assert m.blocks(A) == 3  # 5, 6 pinned + output 1: room for 1, the most recent (7)
    assert m.matched_blocks(A, (7, 8)) == 1
    m.finish(A, (5, 6), private_blocks=1)
    assert m.matched_blocks(A, (5, 6)) == 2 and m.matched_blocks(A, (7,)) == 1
    assert m.blocks(A) == 3


def test_mirror_running_blocks_are_the_pinned_and_output_blocks() -> None:
    m = KvCacheMirror(capacity_blocks=6)
    assert m.running_blocks(A) == 0  # a replica never seen
    m.observe(A, (1, 2))  # cached, pinned by no request: not running
    assert m.running_blocks(A) == 0
    m.start(A, (2, 3), private_blocks=2)
    m.start(A, (3, 4), private_blocks=1)  # 3 is pinned twice but counts once
    assert m.running_blocks(A) == 3 + 3
    m.finish(A, (2, 3), private_blocks=2)
    assert m.running_blocks(A) == 2 + 1
    m.finish(A, (3, 4), private_blocks=1)
    assert m.running_blocks(A) == 0 and m.blocks(A) == 3  # 1 was evicted for the runners
    m.start(A, (5,), private_blocks=4)
    assert not m.filled_below((A,), 1.0)  # 1 pinned + 4 output + 1 cached: full
    assert m.invalidate(A) == 2 and m.running_blocks(A) == 0  # 5 and one cached block
    assert m.filled_below((A,), 1 / 6) and not KvCacheMirror().filled_below((A,), 1.0)


def test_mirror_filled_below_reads_every_replica_and_refuses_a_bad_fill() -> None:
    m = KvCacheMirror(capacity_blocks=8)
    m.observe(A, (1, 2, 3))
    m.start(B, (4,), private_blocks=2)  # 1 pinned + 2 output blocks
    assert m.filled_below((A, B), 0.5)  # 3 of 8 each, below 4
    assert m.filled_below((A,), 0.5) and not m.filled_below((A, B), 3 / 8)
    m.observe(A, (1, 2, 3, 5))
    assert not m.filled_below((A, B), 0.5) and m.filled_below((B,), 0.5)  # A: 4 of 8
    assert m.filled_below((), 0.5) and not m.filled_below((A,), 0.0)
    assert m.filled_below((A, B), 1.0) and not KvCacheMirror().filled_below((A,), 1.0)
    for bad in (-0.1, 1.5, math.nan, True, "half", None):
        with pytest.raises(InvalidRecordError) as err:
            m.filled_below((A,), bad)  # type: ignore[arg-type]
        assert err.value.field == "fill"


def test_mirror_output_blocks_may_join_later_and_leave_with_the_prompt() -> None:
    # From the first token: the prompt pinned at dispatch, its output blocks added alone.
    m = KvCacheMirror(capacity_blocks=6)
    m.observe(A, (1, 2, 3))
    m.start(A, (4, 5))
    assert m.running_blocks(A) == 2 and m.blocks(A) == 5
    m.start(A, (), private_blocks=3)  # 2 pinned + 3 output leave room for 1 cached block
    assert m.running_blocks(A) == 5 and m.blocks(A) == 3
    assert m.matched_blocks(A, (1, 2, 3)) == 1  # the leaves went first
    m.finish(A, (4, 5), private_blocks=3)
    assert m.running_blocks(A) == 0 and m.matched_blocks(A, (4, 5)) == 2
    m._check()


def test_mirror_output_blocks_may_grow_as_the_response_streams() -> None:
    # An engine that allocates output blocks as it generates (vLLM): a block each time the
    # stream passes a block boundary, all released with the prompt at the end.
    m = KvCacheMirror(capacity_blocks=6)
    m.observe(A, (1, 2, 3))
    m.start(A, (4,))
    for grown in range(1, 4):
        m.start(A, (), private_blocks=1)
        assert m.running_blocks(A) == 1 + grown
    assert m.blocks(A) == 3  # 4 and two cached blocks: the third gave way to the output
    m.finish(A, (4,), private_blocks=3)
    assert m.running_blocks(A) == 0 and m.matched_blocks(A, (4,)) == 1
    m._check()


def test_mirror_pins_count_per_request_and_finish_keeps_other_pins() -> None:
    m = KvCacheMirror(capacity_blocks=2)
    m.start(A, (1, 2))
    m.start(A, (1, 3))  # 1 is pinned twice
    m.finish(A, (1, 2))
    m.observe(A, (4, 5, 6))  # pressure: 2 goes before 1 is touched
    assert m.matched_blocks(A, (1, 3)) == 2  # still pinned by the second request
    assert m.matched_blocks(A, (1, 2)) == 1
    m.finish(A, (1, 3))
    assert m.blocks(A) == 2  # 3 and 1, the two just released
    assert m.matched_blocks(A, (1, 3)) == 2


def test_mirror_invalidate_forgets_pins_and_output() -> None:
    m = KvCacheMirror(capacity_blocks=3)
    m.start(A, (1, 2), private_blocks=1)
    m.start(B, (1,))
    assert m.invalidate(A) == 2
    assert m.matched_blocks(A, (1,)) == 0 and m.matched_blocks(B, (1,)) == 1
    m.finish(A, (1, 2), private_blocks=1)  # started before the restart: leaves nothing
    assert m.blocks(A) == 0
    m.observe(A, (7, 8, 9))  # no private blocks left over: the full capacity
    assert m.blocks(A) == 3
    with pytest.raises(InvalidRecordError, match="private_blocks"):
        m.start(A, (1,), private_blocks=-1)
    with pytest.raises(InvalidRecordError, match="private_blocks"):
        m.finish(A, (1,), private_blocks=True)  # type: ignore[arg-type]


def test_mirror_lost_finishes_cannot_grow_it_past_four_times_its_capacity() -> None:
    m = KvCacheMirror(capacity_blocks=3)
    for i in range(100):  # a host that never reports these requests' ends
        m.start(A, (i,), private_blocks=1)
    assert m.blocks(A) == 12  # 4 x 3 pinned, no room left for unpinned blocks
    assert m.matched_blocks(A, (99,)) == 1 and m.matched_blocks(A, (88,)) == 1
    assert m.matched_blocks(A, (87,)) == 0  # the oldest pins were released, then evicted
    for i in range(100):
        m.finish(A, (i,), private_blocks=1)
    assert m.blocks(A) == 3  # private blocks counted up to the bound: all freed again
    assert m.matched_blocks(A, (99,)) == 1


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(0, 6),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["start", "finish", "observe"]),
            st.lists(st.integers(0, 9), min_size=0, max_size=4, unique=True),
            st.integers(0, 2),
        ),
        max_size=30,
    ),
)
def test_mirror_never_evicts_pinned_blocks_and_respects_its_room(
    cap: int, ops: list[tuple[str, list[int], int]]
) -> None:
    m = KvCacheMirror(capacity_blocks=cap)
    running: list[tuple[tuple[int, ...], int]] = []
    within_bound = True  # pins and private blocks never passed 4 x cap (no lost finishes)
    for op, chain, private in ops:
        c = tuple(chain)
        if op == "start":
            m.start(A, c, private_blocks=private)
            running.append((c, private))
        elif op == "finish" and running:
            c, private = running.pop(0)
            m.finish(A, c, private_blocks=private)
        else:
            m.observe(A, c)
        pinned = {b for ch, _ in running for b in ch}
        held = sum(p for _, p in running)
        within_bound = within_bound and len(pinned) <= 4 * cap and held <= 4 * cap
        assert m.blocks(A) <= 5 * cap  # at most 4 x cap pinned and cap unpinned, always
        if within_bound:
            for ch, _ in running:
                assert m.matched_blocks(A, ch) == len(ch)
            room = max(0, cap - len(pinned) - held)
            assert len(pinned) <= m.blocks(A) <= len(pinned) + room
            assert m.running_blocks(A) == len(pinned) + held
            for fill in (0.0, 0.5, 1.0):
                assert m.filled_below((A,), fill) == (m.blocks(A) + held < fill * cap)
    for c, private in running:
        m.finish(A, c, private_blocks=private)
    assert m.blocks(A) <= cap


def test_in_flight_term_spreads_equal_savings_but_keeps_deep_matches() -> None:
    # Equal savings (a new session): the least-loaded replica wins, 64 tokens per request.
    busy = CostCandidate(key=A, in_flight=3, cached_tokens=512)
    idle = CostCandidate(key=B, in_flight=1, cached_tokens=512)
    assert pick_lowest_cost([busy, idle], prompt_tokens=4096) == B
    # A deep match (3584 tokens more saved) outweighs 2 extra in-flight requests (128).
    deep = CostCandidate(key=A, in_flight=3, cached_tokens=4096)
    assert pick_lowest_cost([deep, idle], prompt_tokens=8192) == A
    # Still at 47 extra requests: 4096 + 47 x 64 = 7104, more than the margin below 7680.
    loaded = CostCandidate(key=A, in_flight=48, cached_tokens=4096)
    assert pick_lowest_cost([loaded, idle], prompt_tokens=8192) == A
    # Counterfactual: with 60 extra requests (3840 tokens) it no longer does.
    swamped = CostCandidate(key=A, in_flight=61, cached_tokens=4096)
    assert pick_lowest_cost([swamped, idle], prompt_tokens=8192) == B
    assert DEFAULT_IN_FLIGHT_TOKENS == 64
    with pytest.raises(InvalidRecordError, match="in_flight_tokens"):
        pick_lowest_cost([], prompt_tokens=1, in_flight_tokens=-1.0)


def test_costs_within_the_margin_tie_and_ties_go_by_tie_rank() -> None:
    # Costs 1000 (a) and 1400 (b): within the 512-token margin, so the lower tie_rank (b,
    # the least recently used replica in the replay) wins although a costs less.
    a = CostCandidate(key=A, cached_tokens=1000, tie_rank=1)
    b = CostCandidate(key=B, cached_tokens=600, tie_rank=0)
    assert pick_lowest_cost([a, b], prompt_tokens=2000) == B
    # Exactly at the margin still ties (1000 + 512 = 1512).
    b_edge = CostCandidate(key=B, cached_tokens=488, tie_rank=0)
    assert pick_lowest_cost([a, b_edge], prompt_tokens=2000) == B
    # Counterfactual: one token beyond the margin, the cheaper a wins whatever its rank.
    b_far = CostCandidate(key=B, cached_tokens=487, tie_rank=0)
    assert pick_lowest_cost([a, b_far], prompt_tokens=2000) == A
    # Margin 0: only exactly equal costs tie.
    assert pick_lowest_cost([a, b], prompt_tokens=2000, cost_margin=0) == A
    # Equal ranks: the ties go by cost, as before.
    b_same = CostCandidate(key=B, cached_tokens=600, tie_rank=1)
    assert pick_lowest_cost([a, b_same], prompt_tokens=2000) == A
    assert DEFAULT_COST_MARGIN == 512
    for bad in (-1.0, float("inf"), True):
        with pytest.raises(InvalidRecordError, match="cost_margin"):
            pick_lowest_cost([], prompt_tokens=1, cost_margin=bad)


def test_a_backlog_longer_than_the_margin_can_hide_is_no_tie() -> None:
    # Two replicas with nothing cached (a cold request of 2,000 tokens). a took fewer but
    # heavier requests: 147 recent dispatches and a 26,000-token backlog; b took 196 and
    # has 10,000. a costs 2,000 + 2,600 = 4,600, b 2,000 + 1,000 + 32 x 49 = 4,568: within
    # the margin, but a's backlog exceeds b's by 16,000 > 5,120 tokens, so a is no tie and
    # b, the least cost, wins although a ranks first. Counterfactual: the cost margin alone
    # would let the rotation send the request behind a's queue.
    a = CostCandidate(key=A, queued_tokens=26_000, recent_dispatches=147, tie_rank=0)
    b = CostCandidate(key=B, queued_tokens=10_000, recent_dispatches=196, tie_rank=1)
    assert pick_lowest_cost([a, b], prompt_tokens=2000) == B
    e = explain_lowest_cost([a, b], prompt_tokens=2000)
    # The explanation names the bound as what decided: a was within the cost margin.
    assert (e.chosen, e.rule, e.tie_limit, e.tie_queue_limit) == (
        B,
        "tie_queue",
        5080.0,
        15120.0,
    )
    assert e.params["tie_queue_tokens"] == DEFAULT_TIE_QUEUE_TOKENS == 5120
    # A bound beyond the backlogs turns it off: the rotation picks a.
    assert pick_lowest_cost([a, b], prompt_tokens=2000, tie_queue_tokens=20_000) == A
    # At the bound it ties: b (recent 10) costs 3,320, a (15,120 queued) 3,512, and a's
    # backlog is exactly b's + 5,120; 10 tokens more and it is no tie, though its cost
    # (3,513) is still within the margin.
    b10 = CostCandidate(key=B, queued_tokens=10_000, recent_dispatches=10, tie_rank=1)
    at = CostCandidate(key=A, queued_tokens=15_120, tie_rank=0)
    assert pick_lowest_cost([at, b10], prompt_tokens=2000) == A
    beyond = CostCandidate(key=A, queued_tokens=15_130, tie_rank=0)
    assert pick_lowest_cost([beyond, b10], prompt_tokens=2000) == B
    # Of two candidates at the least cost, the shorter backlog is the reference: c (1,000
    # cached, 10,000 queued) and d (nothing) both cost 2,000, and c, ranked first, is no
    # tie at a bound of 5,000 tokens (10,000 > 0 + 5,000).
    c = CostCandidate(key=C, cached_tokens=1000, queued_tokens=10_000, tie_rank=0)
    d = CostCandidate(key=ReplicaKey("d"), tie_rank=1)
    e2 = explain_lowest_cost([c, d], prompt_tokens=2000, tie_queue_tokens=5000)
    assert [t.cost for t in e2.candidates] == [2000.0, 2000.0]
    assert (e2.chosen, e2.rule, e2.tie_queue_limit) == (d.key, "tie_queue", 5000.0)
    # The same in the other order: the reference is the shortest, not the first or last.
    assert pick_lowest_cost([d, c], prompt_tokens=2000, tie_queue_tokens=5000) == d.key
    # The reference is the least-cost candidate's backlog, not the shortest of all ties:
    # l costs 1,600 (6,000 queued), s 2,000 (nothing queued), f 1,800 (8,000 queued), all
    # within the margin; f's backlog is within 5,120 of l's, so the three tie and f, ranked
    # first, wins. Measured from s's instead, f and l (the least cost) would not tie.
    l_ = CostCandidate(key=A, cached_tokens=1000, queued_tokens=6000, tie_rank=2)
    s_ = CostCandidate(key=B, tie_rank=1)
    f_ = CostCandidate(key=C, cached_tokens=1000, queued_tokens=8000, tie_rank=0)
    assert pick_lowest_cost([l_, s_, f_], prompt_tokens=2000) == C
    # Backlogs are compared by their difference: exact for integers past 2**53, where the
    # bound as a float would round (and the least-cost candidate would not tie itself).
    big = 2**53 + 1
    x = CostCandidate(key=A, queued_tokens=big, tie_rank=1)
    y = CostCandidate(key=B, queued_tokens=big, tie_rank=0)
    assert pick_lowest_cost([x, y], prompt_tokens=10, queue_weight=0.0, tie_queue_tokens=0.0) == B
    e3 = explain_lowest_cost([x, y], prompt_tokens=10, queue_weight=0.0, tie_queue_tokens=0.0)
    assert (e3.chosen, e3.rule) == (B, "tie_rank")
    for bad in (-1.0, float("inf"), float("nan"), True, "5120"):
        with pytest.raises(InvalidRecordError, match="tie_queue_tokens"):
            pick_lowest_cost([], prompt_tokens=1, tie_queue_tokens=bad)  # type: ignore[arg-type]


def test_each_dispatch_above_the_least_dispatched_costs_the_share_price() -> None:
    # a holds 1,024 of the 2,048 prompt tokens and took 40 of the recent dispatches, b 10:
    # a costs 1,024 + 32 x 30 = 1,984, b 2,048 -> a.
    a = CostCandidate(key=A, cached_tokens=1024, recent_dispatches=40)
    b = CostCandidate(key=B, recent_dispatches=10)
    assert pick_lowest_cost([a, b], prompt_tokens=2048, cost_margin=0) == A
    # At 43 dispatches a costs 1,024 + 32 x 33 = 2,080 > 2,048: its share outweighs what it
    # saves, and the request moves.
    a43 = CostCandidate(key=A, cached_tokens=1024, recent_dispatches=43)
    assert pick_lowest_cost([a43, b], prompt_tokens=2048, cost_margin=0) == B
    # A new session saves nothing anywhere: it goes to the smaller share (tier 2, cost),
    # even within the margin, where the equal tie ranks leave the choice to the cost.
    a0 = CostCandidate(key=A, recent_dispatches=11)
    assert pick_lowest_cost([a0, b], prompt_tokens=2048) == B
    # The explanation shows the term, relative to the least-dispatched candidate.
    e = explain_lowest_cost([a43, b], prompt_tokens=2048, cost_margin=0)
    assert [t.share_term for t in e.candidates] == [1056.0, 0.0]
    assert (e.min_recent, e.chosen, e.params["share_tokens"]) == (10, B, 32)
    assert [t.cost for t in e.candidates] == [2080.0, 2048.0]
    # share_tokens=0 turns it off; the default is 32 tokens per dispatch.
    assert pick_lowest_cost([a43, b], prompt_tokens=2048, share_tokens=0, cost_margin=0) == A
    assert DEFAULT_SHARE_TOKENS == 32
    for bad in (-1.0, float("inf"), float("nan"), True, "16"):
        with pytest.raises(InvalidRecordError, match="share_tokens"):
            pick_lowest_cost([], prompt_tokens=1, share_tokens=bad)  # type: ignore[arg-type]


def test_fair_share_guard_is_off_by_default_and_skips_replicas_over_their_share() -> None:
    # a holds the whole prompt but took 14 of the last 20 dispatches. By default there is no
    # guard: a costs 32 x 11 = 352 tokens of share against 8,192 saved, and keeps it.
    a = CostCandidate(key=A, cached_tokens=8192, recent_dispatches=14)
    b = CostCandidate(key=B, recent_dispatches=3)
    c = CostCandidate(key=C, recent_dispatches=3, queued_tokens=10)
    assert pick_lowest_cost([a, b, c], prompt_tokens=8192) == A
    # With the guard at its documented factor: mean 20/3 = 6.67, limit 6.67 * 1.1 + 2 =
    # 9.33 -> a is skipped; b (fewer queued) wins among b, c.
    guard = {"share_factor": DEFAULT_SHARE_FACTOR}
    assert pick_lowest_cost([a, b, c], prompt_tokens=8192, **guard) == B
    # Counterfactual: at 6 (mean 4, limit 6.4) a is within its share and keeps the request.
    a6 = CostCandidate(key=A, cached_tokens=8192, recent_dispatches=6)
    assert pick_lowest_cost([a6, b, c], prompt_tokens=8192, **guard) == A
    a7 = CostCandidate(key=A, cached_tokens=8192, recent_dispatches=7)  # limit 6.77
    assert pick_lowest_cost([a7, b, c], prompt_tokens=8192, **guard) == B
    assert (DEFAULT_SHARE_FACTOR, DEFAULT_SHARE_SLACK) == (1.1, 2)
    # The least-dispatched replica is always eligible: the guard never empties the set.
    lone = CostCandidate(key=A, recent_dispatches=1000)
    assert pick_lowest_cost([lone], prompt_tokens=1, share_factor=1.0, share_slack=0) == A
    with pytest.raises(InvalidRecordError, match="share_factor"):
        pick_lowest_cost([], prompt_tokens=1, share_factor=0.5)
    with pytest.raises(InvalidRecordError, match="share_slack"):
        pick_lowest_cost([], prompt_tokens=1, share_slack=-1)


def test_dispatch_window_counts_the_last_n() -> None:
    w = DispatchWindow(size=3)
    assert len(w) == 0 and w.count(A) == 0 and w.size == 3
    for k in (A, A, B):
        w.record(k)
    assert (w.count(A), w.count(B)) == (2, 1)
    w.record(C)  # drops the first A
    w.record(C)  # drops the second A
    assert (w.count(A), w.count(B), w.count(C), len(w)) == (0, 1, 2, 3)
    with pytest.raises(InvalidRecordError, match="size"):
        DispatchWindow(size=0)


def test_running_output_weighs_each_completed_request_by_how_long_it_held_its_blocks() -> None:
    out = RunningOutput()
    assert out.estimate == 0.0 and out.take() == 0  # nothing completed yet
    out.record(2, seconds=0.0)  # ended at once: no time to weigh by, so the plain mean
    out.record(4, seconds=0)
    assert out.estimate == 3.0
    out.record(1, seconds=1.0)  # from the first record that lasted, the time-weighted mean
    assert out.estimate == 1.0
    out.record(3, seconds=3)
    assert out.estimate == 2.5  # (1 x 1 + 3 x 3) / 4; the plain mean of all four is 2.5 too
    out.record(0, seconds=4.0)
    assert out.estimate == 1.25  # (1 + 9 + 0) / 8
    # Takes carry the fraction: 1.25 per request is 1, 1, 1, 2 (sum 5 = 4 x 1.25).
    assert [out.take() for _ in range(8)] == [1, 1, 1, 2, 1, 1, 1, 2]


def test_running_output_refuses_what_is_not_a_block_count_or_a_duration() -> None:
    out = RunningOutput()
    out.record(2, seconds=0.0)
    for bad in (-1, 1.5, True, 2**53 + 1, "1", None):
        with pytest.raises(InvalidRecordError, match="blocks"):
            out.record(bad, seconds=1.0)  # type: ignore[arg-type]
    for bad_s in (-0.5, -1, math.nan, math.inf, 10**400, True, "1", None):
        with pytest.raises(InvalidRecordError, match="seconds"):
            out.record(10, seconds=bad_s)  # type: ignore[arg-type]
    assert out.estimate == 2.0  # nothing refused was recorded, not even in part
    out.record(2**53, seconds=1)
    assert out.estimate == 2.0**53
    # Durations whose sum overflows a float: the weights are halved, the mean still moves.
    huge = RunningOutput()
    huge.record(1, seconds=1e308)
    huge.record(3, seconds=1e308)
    assert huge.estimate == 2.0
    huge.record(5, seconds=1.7e308)
    assert 3.0 < huge.estimate < 4.0 and math.isfinite(huge.estimate)


def test_accepted_parameters_are_remembered_by_type_and_value() -> None:
    # A parameter set that passed is remembered; one equal to it but of another type is
    # checked again and refused, and a NaN or an unhashable value never passes.
    c = [CostCandidate(key=ReplicaKey("a"))]
    assert pick_lowest_cost(c, prompt_tokens=10, share_slack=1) == ReplicaKey("a")
    with pytest.raises(InvalidRecordError, match="share_slack"):
        pick_lowest_cost(c, prompt_tokens=10, share_slack=True)
    assert pick_lowest_cost(c, prompt_tokens=10, queue_weight=0) == ReplicaKey("a")
    with pytest.raises(InvalidRecordError, match="queue_weight"):
        pick_lowest_cost(c, prompt_tokens=10, queue_weight=False)
    for _ in range(2):
        with pytest.raises(InvalidRecordError, match="cost_margin"):
            pick_lowest_cost(c, prompt_tokens=10, cost_margin=math.nan)
        with pytest.raises(InvalidRecordError, match="in_flight_tokens"):
            pick_lowest_cost(c, prompt_tokens=10, in_flight_tokens=[1.0])  # type: ignore[arg-type]


# --- KvCacheMirror: lost and late finishes ----------------------------------------------
M1, M2 = ReplicaKey("m1"), ReplicaKey("m2")


def test_a_finish_after_invalidate_leaves_no_record_behind() -> None:
    # A replica removed from the pool is invalidated; its requests' finish calls still
    # arrive. Each re-created an empty record that nothing removed again, so a pool whose
    # replicas come and go (new keys every scale-up) grew the mirror without bound.
    m = KvCacheMirror(capacity_blocks=8)
    m.start(M1, (1, 2), private_blocks=1)
    assert m.invalidate(M1) == 2
    m.finish(M1, (1, 2), private_blocks=1)
    assert m.blocks(M1) == 0
    assert M1 not in m._lru and M1 not in m._pins and M1 not in m._private
    m._check()


_chains = st.lists(st.integers(0, 12), min_size=0, max_size=5).map(tuple)
_mirror_ops = st.one_of(
    st.tuples(st.just("observe"), st.sampled_from([M1, M2]), _chains, st.just(0)),
    st.tuples(st.just("start"), st.sampled_from([M1, M2]), _chains, st.integers(0, 5)),
    st.tuples(st.just("finish"), st.sampled_from([M1, M2]), _chains, st.integers(0, 5)),
    st.tuples(st.just("invalidate"), st.sampled_from([M1, M2]), _chains, st.just(0)),
)


@settings(max_examples=scaled_examples(0.5), deadline=None)
@given(st.integers(0, 4), st.lists(_mirror_ops, max_size=40))
def test_mirror_bounds_hold_for_any_calls_lost_finishes_included(
    cap: int, ops: list[tuple[str, ReplicaKey, tuple[int, ...], int]]
) -> None:
    # Finish calls may be lost, repeated, or name chains never started: pinned and private
    # blocks still stay within four times the capacity and the unpinned blocks within the
    # room left; without the pin bound, lost finishes would grow the pins forever.
    m = KvCacheMirror(capacity_blocks=cap)
    for op, key, chain, private in ops:
        if op == "observe":
            m.observe(key, chain)
        elif op == "start":
            m.start(key, chain, private_blocks=private)
        elif op == "finish":
            m.finish(key, chain, private_blocks=private)
        else:
            m.invalidate(key)
        m._check()
        assert m.blocks(key) <= 5 * cap
