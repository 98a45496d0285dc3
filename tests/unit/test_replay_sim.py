"""The replay simulator on tiny hand-made traces whose results are computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache.replay import (
    ClusterModel,
    ClusterView,
    Request,
    RoundRobinPolicy,
    TraceFormatError,
    auto_speedup,
    ideal_hit_ratio,
    load_trace,
    parse_trace,
    percentile,
    run_replay,
    simulate,
)


def req(t_ms: float, inp: int, out: int, blocks: tuple[int, ...]) -> Request:
    return Request(arrival=t_ms / 1000.0, input_tokens=inp, output_tokens=out, blocks=blocks)


class Scripted:
    """A policy that sends request i to ``plan[i]`` and records the callbacks it gets."""

    name = "scripted"
    observe_at = "-"

    def __init__(self, plan: list[int]) -> None:
        self.plan = plan
        self.log: list[tuple[str, int, int, float]] = []
        self.seen_in_flight: list[list[int]] = []

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self.seen_in_flight.append(list(view.in_flight))
        return self.plan[i]

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        self.log.append(("dispatch", i, replica, now))

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        self.log.append(("first", i, replica, now))

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        self.log.append(("done", i, replica, now))


# Four requests, block = 4 tokens, prefill 1000 tok/s, decode 10 tok/s, 2 replicas.
HAND = [
    req(0, 8, 10, (1, 2)),
    req(0, 8, 10, (1, 3)),
    req(1000, 12, 0, (1, 2, 4)),
    req(1000, 4, 0, (1,)),
]
HAND_MODEL = ClusterModel(
    replicas=2,
    cache_blocks=None,
    block_tokens=4,
    prefill_tokens_per_s=1000.0,
    decode_tokens_per_s=10.0,
)


def test_round_robin_hand_computed_hits_and_ttft() -> None:
    # RR: r0->0, r1->1, r2->0 (holds 1,2: 2 hits, 12-8=4 tokens left = 4 ms),
    # r3->1 (holds 1,3: 1 hit, 4-4=0 tokens: TTFT 0). r0, r1: 8 tokens = 8 ms each.
    out = simulate(HAND, RoundRobinPolicy(), HAND_MODEL)
    assert out.replica == (0, 1, 0, 1)
    assert out.hit_blocks == (0, 0, 2, 1)
    assert out.ttft_s == pytest.approx((0.008, 0.008, 0.004, 0.0))
    assert out.requests_per_replica == (2, 2)
    # Counterfactual: sending r3 to replica 0 would also hit 1 block, r2 to 1 only 1 block.
    other = simulate(HAND, Scripted([0, 1, 1, 0]), HAND_MODEL)
    assert other.hit_blocks == (0, 0, 1, 1)


def test_ideal_hit_ratio_by_hand() -> None:
    # r1 hits block 1, r2 hits 1,2, r3 hits 1: 4 of 8 blocks.
    assert ideal_hit_ratio(HAND) == 0.5
    assert ideal_hit_ratio([]) == 0.0


def test_run_replay_reports_hand_numbers() -> None:
    res = run_replay(HAND, model=HAND_MODEL, policies=["round-robin"], speedup=1.0)
    p = res.policy("round-robin")
    assert res.ideal_hit_ratio == 0.5
    assert p.hit_ratio == 3 / 8
    assert p.ideal_fraction == 0.75
    assert p.ttft_mean_s == pytest.approx(0.005)
    assert p.ttft_p50_s == pytest.approx(0.006)  # between 0.004 and 0.008
    assert p.max_over_mean_requests == 1.0
    assert p.requests_per_replica == (2, 2)
    assert p.decisions_per_s > 0


def test_fifo_prefill_queue_and_speedup() -> None:
    # One replica at 100 tok/s, two 100-token prompts with distinct blocks.
    model = ClusterModel(
        replicas=1,
        cache_blocks=None,
        block_tokens=100,
        prefill_tokens_per_s=100.0,
        decode_tokens_per_s=1.0,
    )
    trace = [req(0, 100, 5, (1,)), req(1000, 100, 5, (2,))]
    # r1 arrives at 1 s exactly when r0's prefill ends: no wait.
    assert simulate(trace, Scripted([0, 0]), model).ttft_s == pytest.approx((1.0, 1.0))
    # Twice as fast: r1 arrives at 0.5 s and waits 0.5 s for r0's prefill.
    out = simulate(trace, Scripted([0, 0]), model, speedup=2.0)
    assert out.ttft_s == pytest.approx((1.0, 1.5))


def test_decode_does_not_block_prefill_but_counts_in_flight() -> None:
    model = ClusterModel(
        replicas=1,
        cache_blocks=None,
        block_tokens=100,
        prefill_tokens_per_s=100.0,
        decode_tokens_per_s=1.0,
    )
    # r0: prefill 0..1 s, decode 5 tokens 1..6 s. r1 at 2 s: no wait, sees r0 in flight.
    trace = [req(0, 100, 5, (1,)), req(2000, 100, 5, (2,)), req(7000, 100, 0, (3,))]
    pol = Scripted([0, 0, 0])
    out = simulate(trace, pol, model)
    assert out.ttft_s == pytest.approx((1.0, 1.0, 1.0))
    # At 7 s: r0 finished at 6 s; r1 (prefill 2..3 s, decode 3..8 s) is still in flight.
    assert pol.seen_in_flight == [[0], [1], [1]]
    assert ("first", 0, 0, 1.0) in pol.log
    assert ("done", 0, 0, 6.0) in pol.log
    kinds = [k for k, *_ in pol.log]
    assert kinds.count("done") == 3  # drained at the end


def test_lru_eviction_keeps_prefixes_over_their_extensions() -> None:
    # Cache of 2 blocks, 1 token per block. r0 (1,2): touched 2 then 1 -> LRU [2, 1].
    # r1 (3,): [2, 1, 3] -> evicts 2. r2 (1,2): hits 1 only; r3 (3,): 3 was evicted by
    # r2's insert of 2 ([1,3,2,1] -> [3,2,1] -> drop 3): 0 hits.
    model = ClusterModel(
        replicas=1,
        cache_blocks=2,
        block_tokens=1,
        prefill_tokens_per_s=1.0,
        decode_tokens_per_s=1.0,
    )
    trace = [
        req(0, 2, 0, (1, 2)),
        req(10_000, 1, 0, (3,)),
        req(20_000, 2, 0, (1, 2)),
        req(30_000, 1, 0, (3,)),
    ]
    out = simulate(trace, Scripted([0, 0, 0, 0]), model)
    assert out.hit_blocks == (0, 0, 1, 0)
    # Counterfactual: an infinite cache hits everything seen before.
    inf = simulate(
        trace,
        Scripted([0, 0, 0, 0]),
        ClusterModel(
            replicas=1,
            cache_blocks=None,
            block_tokens=1,
            prefill_tokens_per_s=1.0,
            decode_tokens_per_s=1.0,
        ),
    )
    assert inf.hit_blocks == (0, 0, 2, 1)


def test_cached_tokens_capped_by_prompt_length() -> None:
    # Last block is short (5 tokens of an 8-token block): a full hit leaves 0 tokens.
    model = ClusterModel(
        replicas=1,
        cache_blocks=None,
        block_tokens=8,
        prefill_tokens_per_s=1.0,
        decode_tokens_per_s=1.0,
    )
    trace = [req(0, 13, 0, (1, 2)), req(100_000, 13, 0, (1, 2))]
    assert simulate(trace, Scripted([0, 0]), model).ttft_s == pytest.approx((13.0, 0.0))


def test_policy_out_of_range_is_an_error() -> None:
    with pytest.raises(InvalidRecordError, match="replica"):
        simulate(HAND, Scripted([0, 5, 0, 0]), HAND_MODEL)


def test_bad_speedup_and_model() -> None:
    with pytest.raises(InvalidRecordError, match="speedup"):
        simulate(HAND, RoundRobinPolicy(), HAND_MODEL, speedup=0.0)
    with pytest.raises(InvalidRecordError, match="replicas"):
        ClusterModel(replicas=0)
    with pytest.raises(InvalidRecordError, match="cache_blocks"):
        ClusterModel(cache_blocks=-1)
    with pytest.raises(InvalidRecordError, match="prefill_tokens_per_s"):
        ClusterModel(prefill_tokens_per_s=float("nan"))
    with pytest.raises(ClusterRoutingError, match="policies"):
        run_replay(HAND, policies=["nope"])


def test_free_kv_bytes_seen_by_policies() -> None:
    model = ClusterModel(replicas=1, cache_blocks=10, block_tokens=4, kv_bytes_per_token=2)
    view = ClusterView(model)
    assert view.free_kv_bytes(0) == 10 * 4 * 2


def test_auto_speedup_formula() -> None:
    # 2 replicas x 1000 tok/s, 10 s span, 4000 prompt tokens: load 0.5 needs 2.5x.
    model = ClusterModel(replicas=2, prefill_tokens_per_s=1000.0)
    trace = [req(0, 2000, 1, (1,)), req(10_000, 2000, 1, (2,))]
    assert auto_speedup(trace, model, target_load=0.5) == pytest.approx(2.5)
    assert auto_speedup(trace[:1], model) == 1.0


def test_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0
    assert percentile([1.0, 2.0], 0.99) == pytest.approx(1.99)
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN


def test_parse_trace_and_errors(tmp_path: Path) -> None:
    lines = [
        json.dumps({"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": [7]}),
        "",
        json.dumps({"timestamp": 1, "input_length": 0, "output_length": 0, "hash_ids": []}),
    ]
    reqs = parse_trace(lines)
    assert [r.arrival for r in reqs] == [0.001, 0.005]  # sorted by time, ms -> s
    assert reqs[1].blocks == (7,)
    bad = [
        ('{"timestamp": 0, "output_length": 1, "hash_ids": []}', "input_length"),
        ('{"timestamp": -1, "input_length": 1, "output_length": 1, "hash_ids": []}', "timestamp"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [-3]}', "hash_ids"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": 3}', "hash_ids"),
        ("[1, 2]", "<line>"),
        ("{not json", "<line>"),
    ]
    for text, field in bad:
        with pytest.raises(TraceFormatError) as ei:
            parse_trace(["", text])
        assert ei.value.field == field
        assert ei.value.line == 2
        assert isinstance(ei.value, ValueError)
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines))
    assert load_trace(p) == reqs
