"""``smg-cache-aware-current``: SMG ``cache_aware`` after PR #2341 (the final pick by
LeastLoad's expected wait over polled loads), against the pinned ``smg-cache-aware``.
Each case is written from the stored SMG source cited in ``SmgCacheAwareCurrentPolicy``'s
docstring (``cache_aware.rs`` ``select_final_from_affinity``, ``candidate_requires_spill``;
``least_load.rs`` @11b1fe08 ``score``, ``select_min_expected_wait_with_freshness``)."""

from __future__ import annotations

import random

import pytest
from peer_cases import BT, rq, view

from clusterrouting import InvalidRecordError
from prefixcache.replay import (
    PEER_POLICIES,
    ClusterModel,
    ClusterView,
    EngineLoad,
    SmgCacheAwareCurrentPolicy,
    SmgCacheAwarePolicy,
    make_policy,
)
from prefixcache.replay._peer_radix import (
    SmgLoadReport,
    select_min_expected_wait,
    smg_expected_waits,
)


def scraped(n: int, in_flight: list[int], **metrics: list[float]) -> ClusterView:
    """A view whose engines answer a poll with these metrics (``waiting=``,
    ``kv_usage=``, ``uncached=``, ``rate=``; 0 when not given)."""
    v = view(n, in_flight)
    v.scraped_at = 0.0
    zero = [0.0] * n
    waiting = metrics.get("waiting", zero)
    kv = metrics.get("kv_usage", zero)
    uncached = metrics.get("uncached", zero)
    rate = metrics.get("rate", zero)
    v._load = lambda w: EngineLoad(
        waiting_reqs=int(waiting[w]),
        waiting_uncached_tokens=int(uncached[w]),
        token_usage=kv[w],
        gen_throughput=rate[w],
    )
    return v


# --- registration -------------------------------------------------------------------------


def test_the_current_smg_is_a_peer_next_to_the_pinned_one() -> None:
    assert PEER_POLICIES.index("smg-cache-aware-current") == (
        PEER_POLICIES.index("smg-cache-aware") + 1
    )
    p = make_policy("smg-cache-aware-current", ClusterModel(replicas=2))
    assert isinstance(p, SmgCacheAwareCurrentPolicy) and p.load_check_interval_s == 10.0
    pinned = make_policy("smg-cache-aware", ClusterModel(replicas=2))
    assert type(pinned) is SmgCacheAwarePolicy


def test_a_bad_poll_interval_is_refused() -> None:
    with pytest.raises(InvalidRecordError, match="load_check_interval_s"):
        SmgCacheAwareCurrentPolicy(block_tokens=BT, load_check_interval_s=0.0)


# --- the expected-wait score (least_load.rs score) -----------------------------------------


def test_a_reported_worker_scores_queue_and_credit_over_throughput_plus_kv_barrier() -> None:
    reports = [
        # 2 waiting x 1024 + 1024 credit over 2000 tok/s, plus 0.15 x 0.5 / 0.5.
        SmgLoadReport(waiting_reqs=2, token_usage=0.5),
        # Reported uncached tokens win over the request count; reported throughput used.
        SmgLoadReport(waiting_reqs=9, waiting_uncached_tokens=3000, gen_throughput=1000.0),
        # KV use clamped to 0.999: 0.15 x 0.999 / 0.001.
        SmgLoadReport(waiting_reqs=0, token_usage=1.0),
    ]
    s = smg_expected_waits(
        [0, 1, 2], reports=reports, credit_tokens=[1024, 0, 0], in_flight=[50, 50, 50]
    )
    assert s[0] == pytest.approx(3072 / 2000 + 0.15)
    assert s[1] == pytest.approx(3.0)
    assert s[2] == pytest.approx(0.15 * 0.999 / 0.001)


def test_an_unreported_worker_scores_as_the_best_peer_plus_its_in_flight() -> None:
    reports = [
        SmgLoadReport(waiting_reqs=1, gen_throughput=1000.0),  # 1.024 s
        SmgLoadReport(waiting_reqs=4, gen_throughput=3000.0),  # 1.365 s
        None,
    ]
    s = smg_expected_waits([0, 1, 2], reports=reports, credit_tokens=[0, 0, 0], in_flight=[0, 0, 3])
    # Nominal throughput: the mean of the candidates' positive reports, 2000 tok/s.
    assert s[2] == pytest.approx(1.024 + 3 * 1024 / 2000)
    # Scoped to the candidates: without worker 0 the baseline is worker 1's and the
    # nominal rate worker 1's 3000 tok/s.
    s = smg_expected_waits([1, 2], reports=reports, credit_tokens=[0, 0, 0], in_flight=[0, 0, 3])
    assert s[1] == pytest.approx(4096 / 3000 + 3 * 1024 / 3000)


def test_with_no_report_the_score_is_the_live_in_flight_count() -> None:
    s = smg_expected_waits([0, 1], reports=[None, None], credit_tokens=[5000, 0], in_flight=[2, 7])
    assert s == [2.0, 7.0]  # the credit is not read on a dark fleet


# --- ties (reservoir sampling) ------------------------------------------------------------


def test_ties_are_uniform_over_the_tied_workers_and_seeded() -> None:
    counts = [0, 0, 0, 0]
    rng = random.Random(7)
    for _ in range(3000):
        w = select_min_expected_wait(
            [0, 1, 2, 3], reports=[None] * 4, credit_tokens=[0] * 4, in_flight=[1, 1, 5, 1], rng=rng
        )
        counts[w] += 1
    assert counts[2] == 0 and all(900 < c < 1100 for c in (counts[0], counts[1], counts[3]))
    # Seeded: the same seed, the same cold-fleet pick; the pinned model took replica 0.
    firsts = set()
    for seed in range(8):
        picks = [
            SmgCacheAwareCurrentPolicy(block_tokens=BT, seed=seed).choose(
                0, rq((1, 2)), 0.0, scraped(4, [0, 0, 0, 0])
            )
            for _ in range(2)
        ]
        assert picks[0] == picks[1]
        firsts.add(picks[0])
    assert len(firsts) > 1


def test_an_empty_candidate_list_is_refused() -> None:
    with pytest.raises(ValueError, match="candidates"):
        select_min_expected_wait(
            [], reports=[], credit_tokens=[], in_flight=[], rng=random.Random(0)
        )


# --- the poll and the since-poll credit ----------------------------------------------------


def test_each_dispatch_credits_1024_tokens_until_the_next_poll() -> None:
    p = SmgCacheAwareCurrentPolicy(block_tokens=BT)
    v = scraped(2, [0, 0])
    a = p.choose(0, rq((1,)), 0.0, v)  # poll at t = 0: both idle, a random tie
    # A miss: the other worker, its score 0 s against 0.512 s, though in-flight is not read.
    assert p.choose(1, rq((2,)), 1.0, scraped(2, [9, 9])) == 1 - a
    assert sorted(p.credit_tokens) == [1024, 1024]
    p.choose(2, rq((3,)), 9.999, v)  # no poll before 10 s
    assert sum(p.credit_tokens) == 3072
    # At t = 10 exactly the poll resets every credit before the decision.
    p.choose(3, rq((4,)), 10.0, scraped(2, [0, 0], waiting=[0.0, 0.0]))
    assert sum(p.credit_tokens) == 1024


def test_the_queue_is_read_only_at_the_poll() -> None:
    p = SmgCacheAwareCurrentPolicy(block_tokens=BT, seed=1)
    p.choose(0, rq((1,)), 0.0, scraped(2, [0, 0]))
    p.credit_tokens[:] = [0, 0]
    # Worker 0 queues 5 after the poll at t = 0: unseen, so misses still water-fill.
    busy = scraped(2, [0, 0], waiting=[5.0, 0.0])
    first = p.choose(1, rq((2,)), 5.0, busy)
    assert p.choose(2, rq((3,)), 5.0, busy) == 1 - first
    # At the poll at t = 20 (ticks 10 and 20 are one pass) worker 0's queue counts:
    # 5 x 1024 / 2000 = 2.56 s, so the next four misses all go to worker 1.
    picks = [p.choose(3 + k, rq((10 + k,)), 20.0 + k, busy) for k in range(4)]
    assert picks == [1, 1, 1, 1]
    assert p.reports[0] == SmgLoadReport(waiting_reqs=5, token_usage=0.0)


def test_the_poll_reads_uncached_tokens_and_generation_rate() -> None:
    p = SmgCacheAwareCurrentPolicy(block_tokens=BT, engine_metrics=True)
    v = scraped(2, [0, 0], waiting=[3.0, 0.0], uncached=[2000, 0], rate=[1000.004, 50.0])
    picks = [p.choose(k, rq((k + 1,)), 0.0, v) for k in range(21)]
    assert p.reports == [
        SmgLoadReport(waiting_reqs=3, waiting_uncached_tokens=2000, gen_throughput=1000.0),
        SmgLoadReport(waiting_reqs=0, gen_throughput=50.0),
    ]
    # Worker 0: 2,000 queued tokens at 1,000 tok/s, 2 s; idle worker 1: 0 s, so it takes
    # the first miss, and its credit at its slow rate (1,024 / 50 = 20.5 s) then sends
    # the next 19 to the busy, fast worker 0 ((2,000 + 1,024 k) / 1,000 < 20.48 up to
    # k = 18), the 21st back to worker 1.
    assert picks == [1] + [0] * 19 + [1]


def test_without_engine_metrics_the_rate_is_not_reported() -> None:
    # SGLang fills gen_throughput only with --enable-metrics (off by default): SMG then
    # drains every worker at its 2,000 tokens/s, and the same two workers share misses
    # by the queued tokens alone: worker 0's 1 s of queue is two dispatches' credit, so
    # worker 1 takes two misses, then they alternate.
    p = SmgCacheAwareCurrentPolicy(block_tokens=BT)
    v = scraped(2, [0, 0], waiting=[3.0, 0.0], uncached=[2000, 0], rate=[1000.0, 50.0])
    picks = [p.choose(k, rq((k + 1,)), 0.0, v) for k in range(4)]
    assert [r.gen_throughput for r in p.reports if r is not None] == [0.0, 0.0]
    assert picks == [1, 1, 0, 1]


def test_the_poll_rounds_the_generation_rate_to_two_decimals() -> None:
    # load_inquirer.py: gen_throughput=round(stats.gen_throughput, 2). Counterfactual:
    # one decimal gives 12.3.
    p = SmgCacheAwareCurrentPolicy(block_tokens=BT, engine_metrics=True)
    p.choose(0, rq((1,)), 0.0, scraped(2, [0, 0], rate=[12.345678, 0.004]))
    assert [r.gen_throughput for r in p.reports if r is not None] == [12.35, 0.0]


def test_before_the_first_scrape_there_is_no_report() -> None:
    p = SmgCacheAwareCurrentPolicy(block_tokens=BT)
    assert p.choose(0, rq((1,)), 0.0, view(3, [4, 1, 2])) == 1  # live in-flight
    assert p.reports == [None, None, None]


# --- hits, the per-owner gate and the spill set (select_final_from_affinity) ---------------


def _two_owners() -> SmgCacheAwareCurrentPolicy:
    """Replicas 0 and 1 own prefix (1, 2) of a 3-replica pool; no reports (dark fleet)."""
    p = SmgCacheAwareCurrentPolicy(block_tokens=BT)
    assert p.choose(0, rq((1, 2)), 0.0, view(3, [0, 5, 5])) == 0  # miss: least in-flight
    # Hit with owner 0 gated (200 > 1.5 x 67 and > 67 + 64): spill over the ungated 1, 2.
    assert p.choose(1, rq((1, 2)), 0.0, view(3, [200, 0, 1])) == 1
    assert sorted(p.tree.nodes[2]) == [0, 1]
    return p


def test_a_hit_picks_the_owner_with_the_least_expected_wait() -> None:
    p = _two_owners()
    # Owners only: replica 2 is idler but owns nothing.
    assert p.choose(2, rq((1, 2)), 1.0, view(3, [6, 4, 0])) == 1
    assert p.processed == [1, 2, 0]  # processed += 1 kept


def test_a_gated_owner_leaves_the_others_and_a_lone_gated_owner_spills() -> None:
    p = _two_owners()
    # Owner 0 trips the gate, owner 1 does not: only 1 is a candidate, though 2 is idle.
    assert p._final_candidates([0, 1], [300, 10, 0]) == [1]
    assert p.choose(2, rq((1, 2)), 1.0, view(3, [300, 10, 0])) == 1
    # Both owners gated is a spill: the workers that pass the gate.
    assert p._final_candidates([0], [300, 10, 0]) == [1, 2]
    # A miss has no gate: every worker, the gated one included.
    assert p._final_candidates([], [300, 10, 0]) == [0, 1, 2]


def test_a_miss_goes_by_expected_wait_not_in_flight() -> None:
    cur = SmgCacheAwareCurrentPolicy(block_tokens=BT)
    old = SmgCacheAwarePolicy(block_tokens=BT)
    # Replica 0 has the fewest in flight but a polled queue of 3 (1.536 s); replica 1 none.
    v = scraped(2, [0, 5], waiting=[3.0, 0.0])
    assert cur.choose(0, rq((1,)), 0.0, v) == 1
    assert old.choose(0, rq((1,)), 0.0, v) == 0  # the pinned model: least in-flight
    # A gated worker still takes a miss when its expected wait is the lowest.
    cur2 = SmgCacheAwareCurrentPolicy(block_tokens=BT)
    assert cur2.choose(0, rq((9,)), 0.0, scraped(3, [200, 0, 0], waiting=[0.0, 4.0, 4.0])) == 0


def test_a_load_report_refuses_a_negative_or_non_number_field() -> None:
    with pytest.raises(InvalidRecordError, match="waiting_reqs"):
        SmgLoadReport(waiting_reqs=-1)
    with pytest.raises(InvalidRecordError, match="token_usage"):
        SmgLoadReport(waiting_reqs=0, token_usage=float("nan"))
