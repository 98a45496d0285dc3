"""Whatever the placement, cache size and load, no replay beats the trace's ideal hit ratio."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from prefixcache.replay import (
    POLICY_NAMES,
    ClusterModel,
    ClusterView,
    ObserveAt,
    Request,
    ideal_hit_ratio,
    make_policy,
    simulate,
)


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


@st.composite
def traces(draw: st.DrawFn) -> list[Request]:
    # Requests extend earlier requests' chains (sessions) or start new ones, so prefixes
    # really are shared; ids are prefix-chained as in Mooncake traces.
    n = draw(st.integers(1, 25))
    chains: list[tuple[int, ...]] = []
    next_id = 0
    out = []
    t = 0.0
    for _ in range(n):
        if chains and draw(st.booleans()):
            base = draw(st.sampled_from(chains))
            base = base[: draw(st.integers(0, len(base)))]
        else:
            base = ()
        extra = draw(st.integers(0 if base else 1, 4))
        chain = base + tuple(range(next_id, next_id + extra))
        next_id += extra
        chains.append(chain)
        t += draw(st.floats(0.0, 5.0))
        bt = 4
        inp = max(0, len(chain) * bt - draw(st.integers(0, bt - 1)))
        out.append(
            Request(
                arrival=t, input_tokens=inp, output_tokens=draw(st.integers(0, 20)), blocks=chain
            )
        )
    return out


@given(
    trace=traces(),
    replicas=st.integers(1, 4),
    cache=st.one_of(st.none(), st.integers(0, 12)),
    speedup=st.sampled_from([0.5, 1.0, 10.0]),
    data=st.data(),
)
def test_hit_ratio_never_exceeds_ideal(
    trace: list[Request], replicas: int, cache: int | None, speedup: float, data: st.DataObject
) -> None:
    plan = data.draw(st.lists(st.integers(0, 3), min_size=len(trace), max_size=len(trace)))
    model = ClusterModel(
        replicas=replicas,
        cache_blocks=cache,
        block_tokens=4,
        prefill_tokens_per_s=3.0,
        decode_tokens_per_s=2.0,
    )
    out = simulate(trace, Planned(plan), model, speedup=speedup)
    total = sum(len(r.blocks) for r in trace)
    ideal = ideal_hit_ratio(trace)
    assert sum(out.hit_blocks) / total <= ideal
    # One replica with an infinite cache *is* the ideal.
    if replicas == 1 and cache is None:
        assert sum(out.hit_blocks) / total == ideal
    for r, k in zip(trace, out.hit_blocks, strict=True):
        assert 0 <= k <= len(r.blocks)
    # TTFT is at least the prefill of the uncached tokens (queueing only adds to it).
    for r, k, ttft in zip(trace, out.hit_blocks, out.ttft_s, strict=True):
        assert ttft >= max(0, r.input_tokens - 4 * k) / 3.0 - 1e-9


@given(
    trace=traces(),
    replicas=st.integers(1, 4),
    cache=st.one_of(st.none(), st.integers(0, 12)),
    policy=st.sampled_from(POLICY_NAMES),
    observe=st.sampled_from(["dispatch", "completion"]),
)
@settings(max_examples=scaled_examples(0.5))
def test_no_library_policy_beats_the_ideal(
    trace: list[Request], replicas: int, cache: int | None, policy: str, observe: ObserveAt
) -> None:
    model = ClusterModel(
        replicas=replicas,
        cache_blocks=cache,
        block_tokens=4,
        prefill_tokens_per_s=3.0,
        decode_tokens_per_s=2.0,
    )
    out = simulate(trace, make_policy(policy, model, observe_at=observe), model)
    total = sum(len(r.blocks) for r in trace)
    assert sum(out.hit_blocks) / total <= ideal_hit_ratio(trace)
    assert sum(out.requests_per_replica) == len(trace)
