"""Explanations agree with the decisions they explain: ``explain_lowest_cost`` chooses what
``pick_lowest_cost`` chooses and ``explain_select`` what ``select`` chooses, for the same
arguments, and their stated rule and terms reproduce that choice."""

from __future__ import annotations

import json

import attrs
from hypothesis import event, given
from hypothesis import strategies as st

from prefixcache import (
    Candidate,
    Config,
    CostCandidate,
    PrefixDecision,
    ReplicaKey,
    pick_lowest_cost,
    select,
)
from prefixcache._cost import tie_set
from prefixcache._cost_explain import CostExplanation, explain_lowest_cost
from prefixcache._explain import explain_select

keys = st.builds(ReplicaKey, st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 2))

cost_candidates = st.builds(
    CostCandidate,
    key=keys,
    in_flight=st.integers(0, 12),
    cached_tokens=st.integers(0, 4096),
    queued_tokens=st.integers(0, 20_000),
    recent_dispatches=st.integers(0, 40),
    pinned_tokens=st.sampled_from([0, 0, 0, 1 << 20]),
    tie_rank=st.integers(0, 3),
)


@given(
    cands=st.lists(cost_candidates, max_size=6),
    prompt=st.integers(0, 8192),
    qw=st.sampled_from([0.0, 0.1, 1.0]),
    ift=st.sampled_from([0.0, 64.0, 256.0]),
    price=st.sampled_from([0.0, 16.0, 100.0]),
    share=st.sampled_from([None, 1.0, 1.1, 2.0]),
    slack=st.integers(0, 3),
    margin=st.sampled_from([0.0, 100.0, 512.0]),
    tie_queue=st.sampled_from([0.0, 1000.0, 5120.0, 1e9]),
)
def test_explain_lowest_cost_chooses_what_pick_lowest_cost_chooses(
    cands: list[CostCandidate],
    prompt: int,
    qw: float,
    ift: float,
    price: float,
    share: float | None,
    slack: int,
    margin: float,
    tie_queue: float,
) -> None:
    kw = {
        "prompt_tokens": prompt,
        "queue_weight": qw,
        "in_flight_tokens": ift,
        "share_tokens": price,
        "share_factor": share,
        "share_slack": slack,
        "cost_margin": margin,
        "tie_queue_tokens": tie_queue,
    }
    e = explain_lowest_cost(cands, **kw)  # type: ignore[arg-type]
    assert e.chosen == pick_lowest_cost(cands, **kw)  # type: ignore[arg-type]
    assert len(e.candidates) == len(cands)
    json.dumps(e.to_json())
    if not cands:
        assert e.rule == "empty"
        return
    eligible = [t for t in e.candidates if t.excluded_by is None]
    assert eligible  # the guard never empties the set
    # The terms add up; the ties are the eligible candidates within the margin of the least
    # cost whose backlog is within tie_queue_tokens of the least-cost candidate's, and the
    # least (tie rank, cost, queue, in-flight, key) tie is the chosen one.
    for t, c in zip(e.candidates, cands, strict=True):
        assert t.key == c.key
        parts = (t.uncached_tokens, t.queue_term, t.load_term, t.share_term, t.pin_term)
        assert t.cost == sum(parts)
        assert e.min_recent is not None
        share = 0 if c.pinned_tokens else price * (c.recent_dispatches - e.min_recent)
        assert t.share_term == share
        assert t.signals["in_flight"] == c.in_flight
    least = min(t.cost for t in eligible)
    assert e.tie_limit == least + margin
    # The reference backlog: the least-cost eligible candidate's (of several, the shortest).
    ref = min(
        c.queued_tokens
        for t, c in zip(e.candidates, cands, strict=True)
        if t.excluded_by is None and t.cost == least
    )
    assert e.tie_queue_limit == ref + tie_queue
    ties = [
        (t, c)
        for t, c in zip(e.candidates, cands, strict=True)
        if t.excluded_by is None and t.cost <= least + margin and c.queued_tokens <= ref + tie_queue
    ]
    ranked = sorted(
        ties,
        key=lambda tc: (
            tc[1].tie_rank,
            tc[0].cost,
            tc[1].queued_tokens,
            tc[1].in_flight,
            tc[1].key,
        ),
    )
    assert ranked[0][0].key == e.chosen
    assert e.rule in (
        "only_eligible",
        "cost",
        "tie_queue",
        "queued_tokens",
        "in_flight",
        "tie_rank",
        "key",
    )
    near = [t for t in eligible if t.cost <= least + margin]
    if len(eligible) > 1 and len(ranked) == 1:
        # The winner alone tied: the bound decided iff others were within the cost margin.
        assert e.rule == ("tie_queue" if len(near) > 1 else "cost")
    if e.rule == "cost" and len(ranked) > 1:
        # Cost decided between two ties: their ranks were equal and their costs not.
        (t0, c0), (t1, c1) = ranked[0], ranked[1]
        assert c0.tie_rank == c1.tie_rank and t0.cost < t1.cost
    if e.rule == "tie_rank":
        assert ranked[0][1].tie_rank < ranked[1][1].tie_rank


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([0.0, 100.0, 400.0, 512.0, 600.0, 1000.0]), st.integers(0, 40_000)
        ),
        min_size=1,
        max_size=6,
    ),
    margin=st.sampled_from([0.0, 100.0, 512.0]),
    bound=st.sampled_from([0.0, 1000.0, 5120.0]),
)
def test_tie_set_is_the_documented_rule(
    rows: list[tuple[float, int]], margin: float, bound: float
) -> None:
    # Costs from a few values (so that several candidates share the least cost) and
    # backlogs far apart (so that the bound matters); the ties are those within the margin
    # of the least cost whose backlog exceeds the reference, the shortest backlog among the
    # least-cost candidates, by at most the bound.
    cands = [
        CostCandidate(key=ReplicaKey(f"r{i}"), queued_tokens=q, tie_rank=i)
        for i, (_, q) in enumerate(rows)
    ]
    costs = [c for c, _ in rows]
    got = tie_set(cands, costs, cost_margin=margin, tie_queue_tokens=bound)
    least = min(costs)
    ref = min(q for c, q in rows if c == least)
    want = [i for i, (c, q) in enumerate(rows) if c <= least + margin and q - ref <= bound]
    assert [t[-1] for t in got.ties] == [cands[i].key for i in want]
    assert (got.cost_limit, got.queue_limit) == (least + margin, ref + bound)
    assert any(rows[i] == (least, ref) for i in want)  # the reference candidate always ties
    near = sum(1 for c in costs if c <= least + margin)
    event("the bound left out a candidate within the margin" if len(want) < near else "no")


def test_explanation_json_has_every_field() -> None:
    a = CostCandidate(key=ReplicaKey("a"))
    e = explain_lowest_cost([a], prompt_tokens=10)
    assert set(e.to_json()) == {f.name for f in attrs.fields(CostExplanation)}


@st.composite
def decisions(draw: st.DrawFn) -> PrefixDecision:
    hot = draw(st.one_of(st.none(), keys))
    ratio = 0.0 if hot is None else draw(st.floats(0.0, 1.0))
    cold = tuple(draw(st.lists(keys, max_size=6, unique=True)))
    return PrefixDecision(hot, ratio, cold)


@given(
    cands=st.lists(st.builds(Candidate, keys, st.integers(0, 12)), max_size=6),
    decision=decisions(),
    abs_t=st.integers(0, 4),
    rel_t=st.sampled_from([1.0, 1.5, 3.0]),
    mpm=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_explain_select_chooses_what_select_chooses(
    cands: list[Candidate],
    decision: PrefixDecision,
    abs_t: int,
    rel_t: float,
    mpm: float,
) -> None:
    config = Config(balance_abs_threshold=abs_t, balance_rel_threshold=rel_t, min_prefix_match=mpm)
    e = explain_select(cands, decision, config)
    chosen = select(cands, decision, config)
    assert e.chosen == chosen
    json.dumps(e.to_json())
    if not cands:
        assert e.rule == "empty" and chosen is None
        return
    ok = {c.key for c in e.candidates if c.excluded_by is None}
    if e.rule == "hot":
        assert chosen == decision.hot and chosen in ok
    elif e.rule == "cold_order":
        assert chosen == next(k for k in decision.cold_order if k in ok)
    else:
        assert e.rule == "least_loaded"
        assert chosen in ok
        assert not any(k in ok for k in decision.cold_order)
