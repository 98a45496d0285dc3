"""The engine load a poll of SGLang's ``/v1/loads`` would read from a simulated replica
(``ClusterView.engine_load``), computed by hand on tiny traces. A probe request on replica
1 reads replica 0's load at its arrival."""

from __future__ import annotations

import pytest
import sim_cases

from clusterrouting import InvalidRecordError
from prefixcache.replay import ClusterModel, ClusterView, EngineLoad, Request, simulate
from prefixcache.replay._baselines import BasePolicy


def req(t: float, inp: int, out: int, blocks: tuple[int, ...]) -> Request:
    return Request(arrival=t, input_tokens=inp, output_tokens=out, blocks=blocks)


def flat(**kw: object) -> ClusterModel:
    """Two replicas of :func:`sim_cases.flat` (a bare step of 0.1 s)."""
    return sim_cases.flat(**{"replicas": 2, **kw})


class Probe(BasePolicy):
    """Sends the requests of ``work`` to replica 0 and every other one to replica 1,
    recording every replica's load as each arrives (``every[i]``)."""

    name = "probe"

    def __init__(self, work: set[int]) -> None:
        self.work = work
        self.every: dict[int, list[EngineLoad]] = {}

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self.every[i] = [view.engine_load(r) for r in range(view.replicas)]
        return 0 if i in self.work else 1

    def uncached(self, i: int) -> int:
        """Replica 0's uncached waiting tokens as request ``i`` arrived."""
        return self.every[i][0].waiting_uncached_tokens


def probe(t: float) -> Request:
    return req(t, 1, 1, (1000 + int(t * 100),))


def throughputs(trace: list[Request], work: set[int], model: ClusterModel) -> list[float]:
    p = Probe(work)
    simulate(trace, p, model)
    return [p.every[i][0].gen_throughput for i in range(len(trace)) if i not in work]


def test_gen_throughput_is_refreshed_every_40_decode_steps() -> None:
    # r0: prefill 0..0.2 s, then 49 decode steps of 0.1 s, one token each; the 40th ends
    # at 4.2 s: 40 tokens over the 4.2 s since the engine started.
    trace = [req(0.0, 10, 50, (1,)), probe(0.1), probe(4.05), probe(4.35)]
    assert throughputs(trace, {0}, flat()) == pytest.approx([0.0, 0.0, 40 / 4.2])


def test_gen_throughput_keeps_the_last_complete_window_of_a_long_run() -> None:
    # 128 decode steps committed in one run up to 12.95 s: logs after steps 40, 80 and
    # 120; the last window is steps 81-120: 40 tokens in 4.0 s.
    trace = [req(0.0, 10, 130, (1,)), probe(12.95)]
    assert throughputs(trace, {0}, flat()) == pytest.approx([10.0])


def test_idle_time_counts_in_the_window_it_falls_in() -> None:
    # r0 decodes 20 steps (to 2.2 s); r1 arrives at 5 s, prefills to 5.2 s and decodes
    # 20 steps: the 40th decode step ends at 7.2 s.
    trace = [req(0.0, 10, 21, (1,)), req(5.0, 10, 21, (2,)), probe(7.5)]
    assert throughputs(trace, {0, 1}, flat()) == pytest.approx([40 / 7.2])


def test_a_step_that_prefills_beside_decodes_is_one_decode_step() -> None:
    # r1 arrives at 1.05 s while r0 decodes; admitted at 1.1 s, its 10 tokens share a
    # 0.2 s step with r0's 10th decode step, so the 40th ends at 1.3 + 3.0 s.
    trace = [req(0.0, 10, 45, (1,)), req(1.05, 10, 1, (2,)), probe(4.35)]
    assert throughputs(trace, {0, 1}, flat()) == pytest.approx([40 / 4.3])


def test_a_restart_resets_gen_throughput() -> None:
    trace = [req(0.0, 10, 50, (1,)), probe(4.35), probe(4.6)]
    got = throughputs(trace, {0}, flat(restarts=((4.5, 0),)))
    assert got == pytest.approx([40 / 4.2, 0.0])


def test_the_load_counts_uncached_tokens_requests_and_kv_use() -> None:
    # One running request, 10 tokens per step: r0 (30 tokens) has 20 left once its first
    # step (0-0.2 s, committed as it starts) is. r1 waits; blocks 1 and 2 are r0's (held
    # from its admission): 5 of 25 tokens uncached. r2 waits with nothing held: all 12.
    # At 0.1 s r0 runs, r1 and r2 queue, and r0 pins its 3 blocks and its output's 1 of 8.
    model = flat(max_running=1, max_batch_tokens=10, cache_blocks=8)
    trace = [
        req(0.0, 30, 5, (1, 2, 3)),
        req(0.05, 25, 1, (1, 2, 9)),
        req(0.06, 12, 1, (7, 8)),
        probe(0.1),
    ]
    p = Probe({0, 1, 2})
    simulate(trace, p, model)
    assert [p.uncached(i) for i in range(4)] == [0, 20, 20 + 5, 20 + 5 + 12]
    load = p.every[3][0]
    assert (load.waiting_reqs, load.running_reqs) == (2, 1)
    assert load.token_usage == pytest.approx(4 / 8)


def test_an_idle_engine_reports_no_rate_30_s_after_its_last_log() -> None:
    # The window ends at 4.2 s (its log); r0 decodes on to 5.1 s (9 steps, no log), then
    # the engine idles: SGLang zeroes the rate once idle past 4.2 + 30 s.
    alone = [req(0.0, 10, 50, (1,)), probe(34.1), probe(34.3)]
    assert throughputs(alone, {0}, flat()) == pytest.approx([40 / 4.2, 0.0])
    # A prefill at 30 s (its log at 30.2 s, no decode) restarts the idle count.
    prefill = [req(0.0, 10, 50, (1,)), req(30.0, 10, 1, (2,)), probe(34.3), probe(60.3)]
    assert throughputs(prefill, {0, 1}, flat()) == pytest.approx([40 / 4.2, 0.0])


def test_outside_a_simulation_the_engine_load_reads_idle() -> None:
    v = ClusterView(ClusterModel(replicas=2))
    assert v.engine_load(1) == EngineLoad()


def test_an_engine_load_refuses_a_negative_or_non_number_field() -> None:
    with pytest.raises(InvalidRecordError, match="waiting_uncached_tokens"):
        EngineLoad(waiting_uncached_tokens=-1)
    with pytest.raises(InvalidRecordError, match="gen_throughput"):
        EngineLoad(gen_throughput=float("nan"))


def test_gen_throughput_counts_a_token_per_request_decoding() -> None:
    # Two requests prefill together (0-0.3 s) and decode side by side, 2 tokens a step.
    # 18 steps by 2.05 s; the 40th ends at 0.3 + 4.0 s: 80 tokens over 4.3 s. The jump to
    # 12.95 s covers the logs after steps 80 and 120 (the latter at 12.3 s): the last
    # window is 80 tokens in 4.0 s. Counterfactual: counting one token per step gives
    # 62 / 4.3 and 10.0.
    trace = [req(0.0, 10, 130, (1,)), req(0.0, 10, 130, (2,))]
    trace += [probe(2.05), probe(4.45), probe(12.95)]
    assert throughputs(trace, {0, 1}, flat()) == pytest.approx([0.0, 80 / 4.3, 20.0])


def decode_end(n: int) -> float:
    """End of decode step n (1-based) of a lone request of 10 prompt tokens on
    ``flat(decode_s_per_context_token=0.001)``: prefill 0-0.2 s, then step i (0-based)
    lasts 0.1 + (11 + i) x 0.001 s (its context grows by a token a step)."""
    return 0.2 + 0.1 * n + 0.001 * (11 * n + n * (n - 1) / 2)


@pytest.mark.parametrize("every", [None, 1.0, 0.37])
def test_a_window_of_growing_steps_ends_on_its_40th_step(every: float | None) -> None:
    # Steps grow by 1 ms each, so a window misplaced by a step changes the rate (with
    # equal steps every window of 40 reads the same). The probe at 20.7 s reads the
    # window of steps 81-120 whether the engine got there in one jump (every=None) or in
    # many short ones (probes to replica 1 every `every` s). Counterfactual: a jump that
    # logs the wrong window, or carries the wrong steps, tokens or time past a log, reads
    # another rate.
    model = flat(decode_s_per_context_token=0.001)
    assert decode_end(120) < 20.7 < decode_end(121)
    trace = [req(0.0, 10, 130, (1,))]
    if every is not None:
        trace += [probe(every * k) for k in range(1, int(20.6 / every) + 1)]
    trace.append(probe(20.7))
    got = throughputs(trace, {0}, model)[-1]
    assert got == pytest.approx(40 / (decode_end(120) - decode_end(80)))


def test_after_a_restart_the_first_window_starts_at_the_restart() -> None:
    # Log at 4.2 s (step 40); steps 41-43 run to 4.5 s, when the engine restarts: the
    # counters start again there, so the 40 steps after it end at 8.5 s: 40 / 4.0.
    # Counterfactual: keeping the last log's time gives 40 / 4.3; keeping the 3 steps
    # since it, 40 / 3.7 or 43 / 4.0.
    trace = [req(0.0, 10, 100, (1,)), probe(4.35), probe(4.6), probe(8.55)]
    got = throughputs(trace, {0}, flat(restarts=((4.5, 0),)))
    assert got == pytest.approx([40 / 4.2, 0.0, 10.0])


def test_a_mixed_step_that_is_the_40th_decode_step_ends_the_window() -> None:
    # r0's 40th decode step starts at 4.1 s beside r1's 10-token prefill: it lasts 0.2 s,
    # so the window ends at 4.3 s. Counterfactual: timing it as a bare decode step
    # (0.1 s) gives 40 / 4.2.
    trace = [req(0.0, 10, 50, (1,)), req(4.05, 10, 1, (2,)), probe(4.45)]
    assert throughputs(trace, {0, 1}, flat()) == pytest.approx([40 / 4.3])


def test_each_replica_reports_its_own_generation_rate() -> None:
    # Only replica 1 decodes: its rate is 40 / 4.2, replica 0's stays 0. Counterfactual:
    # every other test reads replica 0 only, so a view wired to one engine passes them.
    p = Probe(set())  # everything on replica 1
    simulate([req(0.0, 10, 50, (1,)), probe(4.35)], p, flat())
    assert [load.gen_throughput for load in p.every[1]] == pytest.approx([0.0, 40 / 4.2])


def test_queued_prompts_are_matched_on_leading_blocks_held_or_cached() -> None:
    # r0 (blocks 1, 2) finishes at 0.4 s: its blocks stay cached (LRU). r1 (3 blocks)
    # is admitted at 0.5 s and has 20 tokens left after its first step. Queued: r2 leads
    # with the cached blocks 1, 2 (5 of 25 tokens left); r3 leads with block 9, held
    # nowhere, so its held block 4 (r1's) is not a prefix: all 20; r4 is wholly cached
    # and still counts 1 token (admit computes at least one). Counterfactuals: ignoring
    # the LRU gives 25 for r2, matching any held block 10 for r3, no floor 0 for r4.
    model = flat(max_running=1, max_batch_tokens=10)
    trace = [
        req(0.0, 20, 1, (1, 2)),
        req(0.5, 30, 5, (3, 4, 5)),
        req(0.55, 25, 1, (1, 2, 9)),
        req(0.56, 20, 1, (9, 4)),
        req(0.57, 20, 1, (1, 2)),
        probe(0.6),
    ]
    p = Probe({0, 1, 2, 3, 4})
    simulate(trace, p, model)
    assert [p.uncached(i) for i in range(1, 6)] == [0, 20, 20 + 5, 20 + 5 + 20, 20 + 5 + 20 + 1]
