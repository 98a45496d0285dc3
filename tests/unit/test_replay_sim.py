"""The replay simulator on tiny hand-made traces whose results are computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sim_cases import flat

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache.kvevents import BlockRemoved, BlockStored, EventBatch
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
from prefixcache.replay._peer_base import Peer


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


# Four requests, block = 4 tokens, prefill 1000 tok/s, a bare step 0.1 s, 2 replicas.
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
    decode_s_per_request=0.0,
    decode_s_per_context_token=0.0,
)


def test_round_robin_hand_computed_hits_and_ttft() -> None:
    # r0, r1 at 0 s: one step each of 0.1 + 8/1000 s -> first token at 0.108; then 9 decode
    # steps of 0.1 s: done at 1.008. r2, r3 arrive at 1.0 s during the last decode step and
    # are admitted at 1.008: r2 on replica 0 (holds 1,2: 2 hits, 4 tokens left: 0.104 s);
    # r3 on replica 1 (holds 1: fully cached, one token recomputed: 0.101 s).
    out = simulate(HAND, RoundRobinPolicy(), HAND_MODEL)
    assert out.replica == (0, 1, 0, 1)
    assert out.hit_blocks == (0, 0, 2, 1)
    assert out.ttft_s == pytest.approx((0.108, 0.108, 0.112, 0.109))
    assert out.done_s == pytest.approx((1.008, 1.008, 1.112, 1.109))
    assert out.requests_per_replica == (2, 2)
    # Counterfactual: sending r3 to replica 0 would also hit 1 block, r2 to 1 only 1 block.
    other = simulate(HAND, Scripted([0, 1, 1, 0]), HAND_MODEL)
    assert other.hit_blocks == (0, 0, 1, 1)


def test_ideal_hit_ratio_by_hand() -> None:
    # r1 hits block 1, r2 hits 1,2, r3 hits 1: 4 of 8 blocks.
    assert ideal_hit_ratio(HAND) == 0.5
    assert ideal_hit_ratio([]) == 0.0


def test_run_replay_refuses_an_slo_that_no_ttft_can_be_measured_against() -> None:
    # Counterfactual: a negative, zero, NaN or infinite SLO gave a share of 0 or 1 silently.
    for bad in (-1.0, 0, 0.0, math.nan, math.inf, True, "0.1"):
        with pytest.raises(InvalidRecordError) as ei:
            run_replay(HAND, model=HAND_MODEL, policies=["round-robin"], speedup=1.0, slo_s=bad)
        assert ei.value.field == "slo_s"
    res = run_replay(HAND, model=HAND_MODEL, policies=["round-robin"], speedup=1.0, slo_s=1)
    assert res.policy("round-robin").slo_share == 1.0  # an int number of seconds is fine


def test_run_replay_reports_hand_numbers() -> None:
    res = run_replay(HAND, model=HAND_MODEL, policies=["round-robin"], speedup=1.0, slo_s=0.11)
    p = res.policy("round-robin")
    assert res.ideal_hit_ratio == 0.5
    assert p.hit_ratio == 3 / 8
    assert p.ideal_fraction == 0.75
    assert p.ttft_mean_s == pytest.approx((0.108 + 0.108 + 0.112 + 0.109) / 4)
    assert p.ttft_p50_s == pytest.approx(0.1085)  # between 0.108 and 0.109
    assert p.max_over_mean_requests == 1.0
    assert p.requests_per_replica == (2, 2)
    assert p.decisions_per_s > 0
    # Reachable: r2 finds 1,2 on replica 0 and r3 finds 1 on both at arrival: 3 of 8 blocks,
    # all taken, so no regret. Output: 20 tokens from 0 s to 1.112 s.
    assert p.reachable_hit_ratio == 3 / 8
    assert p.regret_ratio == 0.0
    assert p.throughput_tokens_per_s == pytest.approx(20 / 1.112)
    assert p.slo_share == 0.75  # 0.112 misses 0.11
    assert res.to_json()["best_policy"] == "round-robin"
    assert res.to_json()["schema_version"] == 2
    assert res.to_json()["default_policy"] == "cache-cost"


def test_regret_counts_blocks_cached_elsewhere() -> None:
    # r2 (1,2,4) is sent to replica 1, which holds only block 1; replica 0 held 1 and 2.
    res = simulate(HAND, Scripted([0, 1, 1, 1]), HAND_MODEL)
    assert res.reachable_blocks == (0, 0, 2, 1)
    assert res.hit_blocks == (0, 0, 1, 1)


def test_chunked_prefill_within_the_step_budget() -> None:
    # 25 tokens with 10 tokens per step: 10 + 10 + 5 -> 0.2 + 0.2 + 0.15 s.
    model = flat(max_batch_tokens=10)
    assert simulate([req(0, 25, 1, (1, 2, 3))], Scripted([0]), model).ttft_s == pytest.approx(
        (0.55,)
    )
    # A second 5-token prompt gets no budget until the third step, which it shares.
    out = simulate([req(0, 25, 1, (1, 2, 3)), req(0, 5, 1, (9,))], Scripted([0, 0]), model)
    assert out.ttft_s == pytest.approx((0.6, 0.6))
    assert out.prefill_tokens_per_replica == (30,)


def test_requests_queue_when_the_batch_is_full() -> None:
    trace = [req(0, 10, 3, (1,)), req(0, 10, 1, (2,))]
    # One running request at a time: r1 waits for r0's prefill and 2 decode steps.
    out = simulate(trace, Scripted([0, 0]), flat(max_running=1))
    assert out.ttft_s == pytest.approx((0.2, 0.6))
    # Room for both: one step prefills 20 tokens.
    out = simulate(trace, Scripted([0, 0]), flat(max_running=2))
    assert out.ttft_s == pytest.approx((0.3, 0.3))


def test_decode_step_time_grows_with_batch_and_context() -> None:
    model = flat(decode_s_per_request=0.01, decode_s_per_context_token=0.001)
    # Alone: prefill step 0.2 s; decode steps 0.1 + 0.01 + 11 ms, then + 12 ms.
    alone = simulate([req(0, 10, 3, (1,))], Scripted([0]), model)
    assert alone.done_s == pytest.approx((0.2 + 0.121 + 0.122,))
    # A second request decoding beside it makes every step longer.
    pair = simulate([req(0, 10, 3, (1,)), req(0, 10, 3, (2,))], Scripted([0, 0]), model)
    assert pair.done_s[0] > alone.done_s[0]
    assert pair.ttft_s == pytest.approx((0.3, 0.3))


def test_first_token_and_completion_callbacks_and_in_flight() -> None:
    trace = [req(0, 10, 5, (1,)), req(2000, 10, 5, (2,)), req(7000, 10, 0, (3,))]
    pol = Scripted([0, 0, 0])
    out = simulate(trace, pol, flat())
    # r0: prefill step 0..0.2, 4 decode steps: done 0.6. r1 likewise from 2 s.
    assert out.ttft_s == pytest.approx((0.2, 0.2, 0.2))
    assert pol.seen_in_flight == [[0], [0], [0]]
    assert ("first", 0, 0, pytest.approx(0.2)) in pol.log
    assert ("done", 0, 0, pytest.approx(0.6)) in pol.log
    kinds = [k for k, *_ in pol.log]
    assert kinds.count("done") == 3  # drained at the end


def test_speedup_divides_arrival_times() -> None:
    trace = [req(0, 10, 1, (1,)), req(100, 10, 1, (2,))]
    # At 1x, r1 arrives at 0.1 s during r0's 0.2 s step and waits until 0.2 s.
    assert simulate(trace, Scripted([0, 0]), flat()).ttft_s == pytest.approx((0.2, 0.3))
    # At 0.25x it arrives at 0.4 s: no wait.
    out = simulate(trace, Scripted([0, 0]), flat(), speedup=0.25)
    assert out.ttft_s == pytest.approx((0.2, 0.2))


def test_lru_eviction_under_pressure_keeps_prefixes_over_their_extensions() -> None:
    # 4 blocks of 1 token. r0 (1,2) leaves LRU [2, 1] (its prefix most recent). r1 (3,4,5)
    # needs 3 blocks: block 2 goes. r2 (1,2) then hits block 1 only.
    model = flat(cache_blocks=4, block_tokens=1, prefill_tokens_per_s=1.0)
    trace = [req(0, 2, 0, (1, 2)), req(10_000, 3, 0, (3, 4, 5)), req(20_000, 2, 0, (1, 2))]
    out = simulate(trace, Scripted([0, 0, 0]), model)
    assert out.hit_blocks == (0, 0, 1)
    inf = simulate(trace, Scripted([0, 0, 0]), flat(block_tokens=1, prefill_tokens_per_s=1.0))
    assert inf.hit_blocks == (0, 0, 2)


def test_pinned_blocks_are_never_evicted_and_a_request_waits_for_room() -> None:
    # 3 blocks: r0 pins its 2 prompt blocks + 1 output block; r1 (1 block) waits until r0
    # ends at 2.1 s, then prefills 1 token (0.1 + 1 s).
    trace = [req(0, 2, 1, (1, 2)), req(0, 1, 0, (7,))]
    tight = flat(cache_blocks=3, block_tokens=1, prefill_tokens_per_s=1.0)
    assert simulate(trace, Scripted([0, 0]), tight).ttft_s == pytest.approx((2.1, 3.2))
    roomy = flat(cache_blocks=4, block_tokens=1, prefill_tokens_per_s=1.0)
    assert simulate(trace, Scripted([0, 0]), roomy).ttft_s == pytest.approx((3.1, 3.1))


def test_fully_cached_prompt_recomputes_one_token() -> None:
    # Last block is short (3 tokens of an 8-token block): a full hit leaves 1 token.
    model = flat(block_tokens=8, prefill_tokens_per_s=1.0)
    trace = [req(0, 13, 0, (1, 2)), req(100_000, 13, 0, (1, 2))]
    assert simulate(trace, Scripted([0, 0]), model).ttft_s == pytest.approx((13.1, 1.1))


class Listener(Scripted):
    reads_kv_events = True

    def __init__(self, plan: list[int]) -> None:
        super().__init__(plan)
        self.batches: list[tuple[int, int, float, EventBatch]] = []

    def on_kv_events(self, replica: int, seq: int, batch: EventBatch, now: float) -> None:
        self.batches.append((replica, seq, now, batch))


def test_engine_events_store_remove_with_delay() -> None:
    model = flat(cache_blocks=2, block_tokens=1, prefill_tokens_per_s=1.0, kv_event_delay_s=0.5)
    trace = [req(0, 2, 0, (1, 2)), req(10_000, 1, 0, (3,))]
    pol = Listener([0, 0])
    out = simulate(trace, pol, model)
    (r0, s0, t0, b0), (_r1, s1, t1, b1) = pol.batches
    assert (r0, s0, t1 - 11.1) == (0, 0, pytest.approx(0.5))
    assert t0 == pytest.approx(2.6)  # prefill ends at 2.1
    assert b0.events == (
        BlockStored(
            block_hashes=(1, 2),
            parent_block_hash=None,
            token_ids=(1, 2),
            block_size=1,
            medium="GPU",
        ),
    )
    # r1's admission evicts block 2 (least recent), then stores block 3.
    assert s1 == 1
    assert b1.events == (
        BlockRemoved(block_hashes=(2,), medium="GPU"),
        BlockStored(
            block_hashes=(3,), parent_block_hash=None, token_ids=(3,), block_size=1, medium="GPU"
        ),
    )
    assert out.kv_batches == (2, 2, 0)
    # A policy that does not read events gets none, and the stream costs nothing.
    assert simulate(trace, Scripted([0, 0]), model).kv_batches == (0, 0, 0)


def test_engine_events_loss_and_restart() -> None:
    trace = [req(t * 1000, 1, 0, (t,)) for t in range(40)]
    lossy = flat(block_tokens=1, kv_event_loss=0.5, kv_event_seed=3)
    pol = Listener([0] * 40)
    out = simulate(trace, pol, lossy)
    published, delivered, lost = out.kv_batches
    assert published == 40 and delivered + lost == 40 and 5 < lost < 35
    seqs = [s for _, s, _, _ in pol.batches]
    assert seqs == sorted(seqs) and seqs[-1] <= 39 and len(seqs) == delivered
    # A restart at 5 s empties the cache and starts the publisher again at seq 0.
    trace = [req(0, 2, 0, (1, 2)), req(10_000, 2, 0, (1, 2))]
    model = flat(block_tokens=1, restarts=((5.0, 0),))
    pol = Listener([0, 0])
    out = simulate(trace, pol, model)
    assert out.hit_blocks == (0, 0)
    assert [s for _, s, _, _ in pol.batches] == [0, 0]
    assert simulate(trace, Listener([0, 0]), flat(block_tokens=1)).hit_blocks == (0, 2)


class RestartListener(Listener):
    def __init__(self, plan: list[int]) -> None:
        super().__init__(plan)
        self.restarts: list[tuple[int, float, int]] = []

    def on_restart(self, replica: int, now: float) -> None:
        self.restarts.append((replica, now, len(self.batches)))


def test_a_restart_reaches_a_policy_that_listens_after_the_event_delay() -> None:
    # The engine's process ends: a policy reading events that defines on_restart hears of
    # it after the event delay, after the batch published before it and before the next
    # process's first batch (seq 0 again); even a lossy stream delivers it; a policy
    # without on_restart, or reading no events, is not told.
    trace = [req(0, 2, 0, (1, 2)), req(10_000, 2, 0, (1, 2))]
    model = flat(block_tokens=1, restarts=((5.0, 0),), kv_event_delay_s=0.25)
    pol = RestartListener([0, 0])
    simulate(trace, pol, model)
    assert pol.restarts == [(0, pytest.approx(5.25), 1)]
    assert [(s, round(t, 2)) for _, s, t, _ in pol.batches] == [(0, 0.37), (0, 10.37)]
    lossy = flat(block_tokens=1, restarts=((5.0, 0),), kv_event_loss=0.9, kv_event_seed=1)
    pol = RestartListener([0, 0])
    simulate(trace, pol, lossy)
    assert [r for r, _, _ in pol.restarts] == [0]
    assert simulate(trace, Listener([0, 0]), model).hit_blocks == (0, 0)


def test_a_restart_is_delivered_after_the_old_process_s_last_batch() -> None:
    # A prefill step running at the restart (0 -> 0.3 s, restart at 0.1 s) publishes after
    # the restart time: the notice still comes after that batch, or a router would credit
    # the lost cache to the new process.
    pol = RestartListener([0])
    simulate([req(0, 20, 1, (1, 2))], pol, flat(restarts=((0.1, 0),)))
    assert len(pol.batches) == 1
    assert pol.restarts[0][2] == len(pol.batches)


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
    assert view.num_gpu_blocks == 10
    with pytest.raises(InvalidRecordError, match="kv_event_loss"):
        ClusterModel(kv_event_loss=1.0)
    with pytest.raises(InvalidRecordError, match="restarts"):
        ClusterModel(replicas=2, restarts=((1.0, 2),))


class _Probe(Peer):
    """Sends everything to replica 0 and records the view it saw at each decision (the
    callbacks are ``Peer``'s, which ignore them)."""

    name = "probe"

    def __init__(self) -> None:
        self.seen: list[tuple[float, float, int]] = []

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self.seen.append((view.kv_usage[0], view.free_kv_bytes(0), view.running[0]))
        return 0


def test_kv_usage_counts_a_block_shared_by_running_requests_once() -> None:
    # As vLLM reports it: used blocks over the capacity, a prefix block two running
    # requests share being one block. 40 shared prompt blocks + 2 x 10 output blocks = 60
    # of 200, not 2 x 50.
    model = ClusterModel(replicas=1, cache_blocks=200, block_tokens=16, kv_bytes_per_token=1)
    shared = tuple(range(1, 41))
    trace = [
        Request(arrival=0.0, input_tokens=640, output_tokens=160, blocks=shared),
        Request(arrival=0.001, input_tokens=640, output_tokens=160, blocks=shared),
        Request(arrival=1.0, input_tokens=16, output_tokens=1, blocks=(99,)),
    ]
    probe = _Probe()
    simulate(trace, probe, model)
    usage, free, running = probe.seen[-1]
    assert running == 2
    assert usage == pytest.approx(60 / 200)
    assert free == (200 - 60) * 16


class _Pinned(Peer):
    """Sends everything to replica 0 and records its blocks in use at each decision (the
    router-side count ``free_kv_bytes`` reads)."""

    name = "pinned-probe"

    def __init__(self) -> None:
        self.in_use: list[int] = []

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self.in_use.append(view._pinned[0])
        return 0


def _in_use(trace: list[Request], model: ClusterModel) -> list[int]:
    probe = _Pinned()
    simulate(trace, probe, model)
    return probe.in_use


def test_blocks_in_use_count_a_cached_hit_once() -> None:
    # B hits A's cached blocks 1 and 2 (10-token blocks): 2 blocks + 10 output blocks.
    m = ClusterModel(replicas=1, block_tokens=10, cache_blocks=100, decode_tokens_per_s=10.0)
    trace = [
        Request(arrival=0.0, input_tokens=20, output_tokens=1, blocks=(1, 2)),
        Request(arrival=1.0, input_tokens=20, output_tokens=100, blocks=(1, 2)),
        Request(arrival=2.0, input_tokens=10, output_tokens=1, blocks=(90,)),
    ]
    assert _in_use(trace, m)[2] == 2 + 10


def test_blocks_in_use_across_a_restart() -> None:
    # A is admitted before the restart at 0.5 s, B and C after it on new copies of blocks
    # 1 and 2. A's end frees its old copies (doomed at the restart), never B's new ones.
    m = ClusterModel(
        replicas=1,
        block_tokens=10,
        cache_blocks=100,
        decode_tokens_per_s=10.0,
        restarts=((0.5, 0),),
    )
    a, b = (
        Request(arrival=t, input_tokens=20, output_tokens=o, blocks=(1, 2))
        for t, o in ((0.0, 50), (1.0, 200))
    )
    probe = [
        Request(arrival=t, input_tokens=10, output_tokens=1, blocks=(90 + k,))
        for k, t in enumerate((3.0, 5.5))
    ]
    # at 3 s: A's old 1, 2 + 5 output blocks, B's new 1, 2 + 20; at 5.5 s A has ended.
    assert _in_use([a, b, *probe], m)[2:] == [29, 22]
    c = Request(arrival=6.0, input_tokens=20, output_tokens=200, blocks=(1, 2))
    late = Request(arrival=8.0, input_tokens=10, output_tokens=1, blocks=(95,))
    # C shares B's copies of 1 and 2: 2 + 20 + 20 (the old copies left with A).
    assert _in_use([a, b, probe[0], c, late], m)[-1] == 2 + 20 + 20


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
    assert (percentile([1.0, 2.0], 0), percentile([1.0, 2.0], 1)) == (1.0, 2.0)
    # Counterfactual: -0.1 read the list from its end (1.1 here), 1.5 clamped, NaN raised
    # a ValueError from inside.
    for q in (-0.1, 1.5, math.nan, math.inf, True, "0.5"):
        with pytest.raises(InvalidRecordError) as ei:
            percentile([1.0, 2.0], q)
        assert ei.value.field == "q"


def test_parse_trace_and_errors(tmp_path: Path) -> None:
    lines = [
        json.dumps({"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": [7]}),
        "",
        json.dumps({"timestamp": 1, "input_length": 0, "output_length": 0, "hash_ids": []}),
    ]
    reqs = parse_trace(lines)
    # sorted by time, ms -> s, from the earliest timestamp
    assert [r.arrival for r in reqs] == [0.0, 0.004]
    assert reqs[1].blocks == (7,)
    bad = [
        ('{"timestamp": 0, "output_length": 1, "hash_ids": []}', "input_length"),
        ('{"timestamp": -1, "input_length": 1, "output_length": 1, "hash_ids": []}', "timestamp"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [-3]}', "hash_ids"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": 3}', "hash_ids"),
        ("[1, 2]", "<line>"),
        ("{not json", "<line>"),
        (
            '{"timestamp": "soon", "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        ('{"timestamp": "-5", "input_length": 1, "output_length": 1, "hash_ids": []}', "timestamp"),
        (
            '{"timestamp": "nan", "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        (
            '{"timestamp": "\u00b2", "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        ('{"timestamp": null, "input_length": 1, "output_length": 1, "hash_ids": []}', "timestamp"),
        # non-ASCII digits, underscores, and numbers beyond 2**64 (as strings or not)
        (
            '{"timestamp": "\u0661\u0662", "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        (
            '{"timestamp": "1_000", "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        (
            '{"timestamp": "'
            + "9" * 400
            + '", "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        (
            '{"timestamp": '
            + "9" * 400
            + ', "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        (
            '{"timestamp": '
            + str(2**64)
            + ', "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
        (
            '{"timestamp": "1e400", "input_length": 1, "output_length": 1, "hash_ids": []}',
            "timestamp",
        ),
    ]
    for text, field in bad:
        with pytest.raises(TraceFormatError) as ei:
            parse_trace(["", text])
        assert ei.value.field == field
        assert ei.value.line == 2
        assert isinstance(ei.value, ValueError)
    # A missing field is called missing, hash_ids too; a present non-list names the value.
    for text, reason in (
        ('{"timestamp": 0, "input_length": 1, "output_length": 1}', "missing"),
        ('{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": null}', "None"),
        ('{"timestamp": 0, "output_length": 1, "hash_ids": []}', "missing"),
    ):
        with pytest.raises(TraceFormatError) as ei:
            parse_trace([text])
        assert str(ei.value).endswith(reason), str(ei.value)
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(lines))
    assert load_trace(p) == reqs


def test_timestamps_in_other_units_and_as_strings(tmp_path: Path) -> None:
    # Absolute nanoseconds written as strings (beyond 2**53: a float would lose them):
    # arrivals count from the earliest, exactly, then become seconds.
    base = 1_753_780_607_550_317_897
    lines = [
        json.dumps(
            {"timestamp": str(base + d), "input_length": 1, "output_length": 1, "hash_ids": [d]}
        )
        for d in (2_500_000_001, 1, 0)
    ]
    reqs = parse_trace(lines, time_unit="ns")
    assert [r.arrival for r in reqs] == [0.0, 1e-9, 2.500000001]
    assert [r.blocks for r in reqs] == [(0,), (1,), (2_500_000_001,)]
    # The same instants in seconds, as numbers and decimal strings.
    secs = [
        {"timestamp": t, "input_length": 1, "output_length": 1, "hash_ids": []} for t in (7, "9.5")
    ]
    assert [r.arrival for r in parse_trace(map(json.dumps, secs), time_unit="s")] == [0.0, 2.5]
    assert [r.arrival for r in parse_trace(map(json.dumps, secs), time_unit="us")] == [0.0, 2.5e-6]
    p = tmp_path / "ns.jsonl"
    p.write_text("\n".join(lines))
    assert load_trace(p, time_unit="ns") == reqs
    for bad in ("min", "", None, 1000):
        with pytest.raises(InvalidRecordError, match="time_unit"):
            parse_trace(lines, time_unit=bad)  # type: ignore[arg-type]
    assert parse_trace([]) == []
    # The largest timestamp; and the order is the timestamps' own: with a fractional
    # earliest timestamp the arrivals are floats, and two instants 1 ns apart at 1.7e18 ns
    # get the same arrival, yet keep their order.
    top = json.dumps(
        {"timestamp": 2**64 - 1, "input_length": 1, "output_length": 1, "hash_ids": []}
    )
    assert parse_trace([top])[0].arrival == 0.0
    mixed = [
        json.dumps({"timestamp": t, "input_length": 1, "output_length": 1, "hash_ids": [k]})
        for k, t in enumerate((str(base + 2), "0.5", str(base + 1)))
    ]
    got = parse_trace(mixed, time_unit="ns")
    assert [r.blocks for r in got] == [(1,), (2,), (0,)]
    assert got[1].arrival == got[2].arrival


def test_parallel_replay_equals_the_serial_one() -> None:
    from prefixcache.replay import synthetic_trace

    reqs = synthetic_trace(seed=6, sessions=40, duration_s=60.0)
    names = ["round-robin", "cache-cost", "dynamo-kv", "sglang-cache-aware"]
    serial = run_replay(reqs, policies=names, jobs=1)
    forked = run_replay(reqs, policies=names, jobs=2)
    strip = ("decisions_per_s", "routing_s", "wall_s")
    for a, b in zip(serial.policies, forked.policies, strict=True):
        da = {k: v for k, v in a.to_json().items() if k not in strip}
        db = {k: v for k, v in b.to_json().items() if k not in strip}
        assert da == db


def test_a_shared_long_prompt_is_hit_only_once_every_chunk_is_scheduled() -> None:
    # 25 tokens in blocks of 5, 10 tokens per step: r0's chunks 10 + 10 + 5 end at 0.2,
    # 0.4 and 0.56 s. r1 (the same prompt) arrives at 0.05 s but gets no budget until the
    # third step, which schedules r0's last 5 tokens: only then is it admitted, hitting all
    # 5 blocks (every one scheduled), and it computes one token in that step. Admitting it
    # beside r0's earlier chunks would hit blocks no step had computed yet.
    model = flat(max_batch_tokens=10, block_tokens=5)
    blocks = (1, 2, 3, 4, 5)
    out = simulate([req(0, 25, 1, blocks), req(50, 25, 1, blocks)], Scripted([0, 0]), model)
    assert out.hit_blocks == (0, 5)
    assert out.ttft_s == pytest.approx((0.56, 0.51))
    assert out.prefill_tokens_per_replica == (26,)
