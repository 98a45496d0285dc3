"""The engine load a poll of SGLang's ``/v1/loads`` would read from a simulated replica
(``ClusterView.waiting_uncached_tokens`` and ``gen_throughput``), computed by hand on tiny
traces. A probe request on replica 1 reads replica 0's load at its arrival."""

from __future__ import annotations

import pytest
import sim_cases

from prefixcache.replay import ClusterModel, ClusterView, Request, simulate


def req(t: float, inp: int, out: int, blocks: tuple[int, ...]) -> Request:
    return Request(arrival=t, input_tokens=inp, output_tokens=out, blocks=blocks)


def flat(**kw: object) -> ClusterModel:
    """Two replicas of :func:`sim_cases.flat` (a bare step of 0.1 s)."""
    return sim_cases.flat(**{"replicas": 2, **kw})


class Probe:
    """Sends the requests of ``work`` to replica 0 and every other one to replica 1,
    recording replica 0's load as each arrives."""

    name = "probe"
    observe_at = "-"

    def __init__(self, work: set[int]) -> None:
        self.work = work
        self.seen: dict[int, tuple[int, float]] = {}

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self.seen[i] = (view.waiting_uncached_tokens(0), view.gen_throughput(0))
        return 0 if i in self.work else 1

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        pass


def probe(t: float) -> Request:
    return req(t, 1, 1, (1000 + int(t * 100),))


def throughputs(trace: list[Request], work: set[int], model: ClusterModel) -> list[float]:
    p = Probe(work)
    simulate(trace, p, model)
    return [p.seen[i][1] for i in range(len(trace)) if i not in work]


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


def test_waiting_uncached_tokens_count_admitted_rests_and_queued_misses() -> None:
    # One running request, 10 tokens per step: r0 (30 tokens) has 20 left once its first
    # step (0-0.2 s, committed as it starts) is. r1 waits; blocks 1 and 2 are r0's (held
    # from its admission): 5 of 25 tokens uncached. r2 waits with nothing held: all 12.
    model = flat(max_running=1, max_batch_tokens=10)
    trace = [
        req(0.0, 30, 5, (1, 2, 3)),
        req(0.05, 25, 1, (1, 2, 9)),
        req(0.06, 12, 1, (7, 8)),
        probe(0.1),
    ]
    p = Probe({0, 1, 2})
    simulate(trace, p, model)
    assert [p.seen[i][0] for i in range(4)] == [0, 20, 20 + 5, 20 + 5 + 12]


def test_outside_a_simulation_the_engine_load_reads_zero() -> None:
    v = ClusterView(ClusterModel(replicas=2))
    assert (v.waiting_uncached_tokens(1), v.gen_throughput(1)) == (0, 0.0)
