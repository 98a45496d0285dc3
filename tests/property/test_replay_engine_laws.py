"""Laws of the simulated engine: cache never slows a lone request, added work never speeds
others up, and every prompt token is either cached or prefilled exactly once."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixcache.replay import ClusterModel, ClusterView, EngineLoad, Request, simulate


class Planned:
    name = "planned"
    observe_at = "-"

    def __init__(self, plan: list[int]) -> None:
        self.plan = plan

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        return self.plan[i] % view.replicas

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        pass


models = st.builds(
    ClusterModel,
    replicas=st.integers(1, 3),
    cache_blocks=st.one_of(st.none(), st.integers(0, 40)),
    block_tokens=st.sampled_from([4, 16]),
    prefill_tokens_per_s=st.sampled_from([50.0, 1000.0]),
    decode_tokens_per_s=st.sampled_from([5.0, 50.0]),
    decode_s_per_request=st.sampled_from([0.0, 0.01]),
    decode_s_per_context_token=st.sampled_from([0.0, 1e-4]),
    max_batch_tokens=st.sampled_from([8, 64, 8192]),
    max_running=st.sampled_from([1, 3, 1024]),
)


@st.composite
def unique_traces(draw: st.DrawFn, bt: int) -> list[Request]:
    n = draw(st.integers(1, 12))
    out = []
    next_id = 0
    for _ in range(n):
        inp = draw(st.integers(0, 5 * bt))
        nb = -(-inp // bt)
        out.append(
            Request(
                arrival=draw(st.floats(0.0, 3.0)),
                input_tokens=inp,
                output_tokens=draw(st.integers(0, 12)),
                blocks=tuple(range(next_id, next_id + nb)),
            )
        )
        next_id += nb
    out.sort(key=lambda r: r.arrival)
    return out


@st.composite
def planned_traces(draw: st.DrawFn, bt: int) -> tuple[list[Request], list[int]]:
    """A trace of ``unique_traces`` and a replica (0-2) for each of its requests."""
    trace = draw(unique_traces(bt))
    return trace, draw(st.lists(st.integers(0, 2), min_size=len(trace), max_size=len(trace)))


@given(model=models, k=st.integers(0, 6), extra=st.integers(0, 3), out=st.integers(0, 5))
def test_more_cached_tokens_never_make_a_lone_request_slower(
    model: ClusterModel, k: int, extra: int, out: int
) -> None:
    bt = model.block_tokens
    warm = Request(arrival=0.0, input_tokens=6 * bt, output_tokens=0, blocks=tuple(range(6)))
    ttfts = []
    for shared in range(k + 1):
        probe_blocks = tuple(range(shared)) + tuple(range(100, 100 + 6 + extra - shared))
        probe = Request(
            arrival=10_000.0,
            input_tokens=(6 + extra) * bt,
            output_tokens=out,
            blocks=probe_blocks,
        )
        res = simulate([warm, probe], Planned([0, 0]), model)
        ttfts.append(res.ttft_s[1])
    for a, b in itertools.pairwise(ttfts):
        assert b <= a + 1e-9


@given(data=st.data(), model=models)
def test_an_added_request_never_lowers_another_ttft(
    data: st.DataObject, model: ClusterModel
) -> None:
    # The added request arrives with or after the last one (it queues behind everyone).
    trace, plan = data.draw(planned_traces(model.block_tokens))
    base = simulate(trace, Planned(plan), model)
    extra = Request(
        arrival=trace[-1].arrival + data.draw(st.sampled_from([0.0, 0.05, 0.5])),
        input_tokens=data.draw(st.integers(1, 40)),
        output_tokens=data.draw(st.integers(0, 12)),
        blocks=(10_000,),
    )
    more = simulate([*trace, extra], Planned([*plan, data.draw(st.integers(0, 2))]), model)
    for before, after in zip(base.ttft_s, more.ttft_s[:-1], strict=True):
        assert after >= before - 1e-9


def test_step_quantisation_lets_a_delayed_request_batch_with_a_later_one() -> None:
    # Why the law above adds work at the back of the queue: work added *earlier* delays a
    # step boundary, and a request arriving in between can then share a step it would
    # have waited for. r1 (2.5 s) and r2 (2.625 s) run in two steps alone; a 34-token
    # request at 1.75 s keeps the replica busy until 2.63 s, so both share one step and
    # r2's TTFT drops from 0.315 s to 0.245 s. Engines with step-level batching do this.
    model = ClusterModel(
        replicas=1,
        cache_blocks=None,
        block_tokens=4,
        prefill_tokens_per_s=50.0,
        decode_tokens_per_s=5.0,
        decode_s_per_request=0.0,
        decode_s_per_context_token=0.0,
    )
    r1 = Request(arrival=2.5, input_tokens=0, output_tokens=0, blocks=())
    r2 = Request(arrival=2.625, input_tokens=0, output_tokens=0, blocks=())
    early = Request(arrival=1.75, input_tokens=34, output_tokens=0, blocks=(1,))
    alone = simulate([r1, r2], Planned([0, 0]), model).ttft_s
    busy = simulate([early, r1, r2], Planned([0, 0, 0]), model).ttft_s
    assert alone[1] == pytest.approx(0.315)
    assert busy[2] == pytest.approx(0.245)


@given(data=st.data(), model=models)
def test_every_prompt_token_is_cached_or_prefilled_once(
    data: st.DataObject, model: ClusterModel
) -> None:
    bt = model.block_tokens
    # Sessions: later requests extend earlier ones, so there are hits to account for.
    n = data.draw(st.integers(1, 12))
    chains: list[tuple[int, ...]] = []
    trace = []
    next_id = 0
    t = 0.0
    for _ in range(n):
        base: tuple[int, ...] = data.draw(st.sampled_from(chains)) if chains else ()
        add = data.draw(st.integers(0 if base else 1, 3))
        chain = base + tuple(range(next_id, next_id + add))
        next_id += add
        chains.append(chain)
        t += data.draw(st.floats(0.0, 1.0))
        trace.append(
            Request(
                arrival=t,
                input_tokens=len(chain) * bt,
                output_tokens=data.draw(st.integers(0, 6)),
                blocks=chain,
            )
        )
    plan = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    res = simulate(trace, Planned(plan), model)
    expected = sum(
        max(1, r.input_tokens - k * bt) for r, k in zip(trace, res.hit_blocks, strict=True)
    )
    assert sum(res.prefill_tokens_per_replica) == expected
    assert all(d >= a / 1.0 - 1e-9 for d, a in zip(res.done_s, res.ttft_s, strict=True))
    assert all(x >= 0 for x in res.ttft_s)


class Recording(Planned):
    """``Planned``, recording every replica's polled load at each decision."""

    def __init__(self, plan: list[int]) -> None:
        super().__init__(plan)
        self.loads: list[list[EngineLoad]] = []

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self.loads.append([view.engine_load(r) for r in range(view.replicas)])
        return super().choose(i, request, now, view)


@given(data=st.data(), model=models)
def test_the_polled_load_is_bounded_by_the_work_sent(
    data: st.DataObject, model: ClusterModel
) -> None:
    # Uncached tokens: only requests sent earlier and without a first token by now can
    # have prompt left, at most all of it; only unfinished ones queue or run. Generation
    # rate: a decode step lasts at least 1 / decode_tokens_per_s and makes one token per
    # request decoding.
    trace, plan = data.draw(planned_traces(model.block_tokens))
    pol = Recording(plan)
    res = simulate(trace, pol, model)
    n_rep = model.replicas
    for i, req in enumerate(trace):
        now = req.arrival
        for r in range(n_rep):
            load = pol.loads[i][r]
            left, rate = load.waiting_uncached_tokens, load.gen_throughput
            open_work = sum(
                max(1, trace[j].input_tokens)
                for j in range(i)
                if res.replica[j] == r and trace[j].arrival + res.ttft_s[j] > now
            )
            assert 0 <= left <= open_work
            unfinished = sum(1 for j in range(i) if res.replica[j] == r and res.done_s[j] > now)
            assert load.waiting_reqs + load.running_reqs <= unfinished
            assert 0.0 <= load.token_usage <= 1.0
            assert 0.0 <= rate <= len(trace) * model.decode_tokens_per_s + 1e-9
