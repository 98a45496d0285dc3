"""The LiteLLM plugin's ledger against naive references: the prompt blocks its requests in
flight hold on each deployment (the longest match, and how many), and each deployment's
prefill backlog."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from prefixcache.integrations._litellm_ledger import Ledger, Reservation

# A small tree of prompts: chain[j] stands for the prefix path[: j + 1], so two chains share
# exactly their common leading blocks, as prefix-chained hashes do.
paths = st.lists(st.integers(0, 2), min_size=1, max_size=12)
reserve = st.tuples(st.just("reserve"), st.sampled_from("ab"), paths)
ops = st.lists(
    st.one_of(
        reserve,
        reserve,
        reserve,
        st.tuples(st.just("take"), st.integers(0, 20)),
        st.tuples(st.just("expire"), st.integers(0, 6)),
    ),
    max_size=30,
)


def chain_of(path: list[int]) -> tuple[int, ...]:
    return tuple(hash(tuple(path[: j + 1])) & (2**62 - 1) for j in range(len(path)))


def reference(
    alive: dict[str, tuple[str, tuple[int, ...], float]],
    deployment: str,
    chain: tuple[int, ...],
    matched: int,
    stride: int,
) -> int:
    """``matched``, or the longest common prefix of ``chain`` with a chain in flight on
    ``deployment``, rounded down to a multiple of ``stride`` unless the two chains are
    equal (the ledger tracks every ``stride``-th block of a chain, and its last)."""
    best = matched
    for d, other, _t in alive.values():
        if d == deployment:
            n = 0
            while n < min(len(chain), len(other)) and chain[n] == other[n]:
                n += 1
            best = max(best, n if n == len(chain) == len(other) else n - n % stride)
    return best


# Two reservations of one chain whose last block is off the stride: it stands for 1.
@example(
    steps=[("reserve", "a", [0]), ("reserve", "a", [0])],
    query=[0],
    cut=0,
    extend=[],
    matched=0,
    stride=2,
)
# A last block off the stride still held by another chain when one is taken.
@example(
    steps=[("reserve", "a", [0]), ("reserve", "a", [0]), ("reserve", "a", [0, 0]), ("take", 0)],
    query=[0],
    cut=0,
    extend=[],
    matched=0,
    stride=2,
)
@given(
    steps=ops,
    query=paths,
    cut=st.integers(0, 12),
    extend=st.lists(st.integers(0, 2), max_size=3),
    matched=st.one_of(st.just(0), st.integers(0, 12)),
    stride=st.integers(1, 4),
)
def test_running_blocks_is_the_longest_prefix_in_flight(
    steps: list[tuple[object, ...]],
    query: list[int],
    cut: int,
    extend: list[int],
    matched: int,
    stride: int,
) -> None:
    ledger = Ledger(stride)
    alive: dict[str, tuple[str, tuple[int, ...], float]] = {}
    paths_of: dict[str, list[int]] = {}
    for n, step in enumerate(steps):
        if step[0] == "reserve":
            _, deployment, path = step
            assert isinstance(deployment, str) and isinstance(path, list)
            chain = chain_of(path)
            ledger.reserve(
                Reservation(f"r{n}", deployment, "g", chain, None, 1, float(n)), float(n)
            )
            alive[f"r{n}"] = (deployment, chain, float(n))
            paths_of[f"r{n}"] = path
        elif step[0] == "take" and alive:
            rid = sorted(alive)[int(str(step[1])) % len(alive)]
            res = ledger.take([rid], alive[rid][0], 0.0)
            assert res is not None and res.chain == alive.pop(rid)[1]
        elif step[0] == "expire":
            t = float(str(step[1]))
            dropped = ledger.expire(t)
            gone = [rid for rid, (_d, _c, exp) in alive.items() if exp < t]
            assert dropped == len(gone)
            for rid in gone:
                del alive[rid]
    held = [paths_of[rid] for rid in sorted(alive)]
    if held and cut % 3:  # mostly a prefix of a prompt in flight, perhaps extended
        path = held[cut % len(held)]
        query = path[: max(1, len(path) - cut // 3)] + extend
    q = chain_of(query)
    m = min(matched, len(q))
    for deployment in "ab":
        assert ledger.running_blocks(deployment, q, m) == reference(alive, deployment, q, m, stride)
        assert ledger.in_flight.get(deployment, 0) == sum(
            d == deployment for d, _c, _t in alive.values()
        )
        # The prompt blocks in flight: the distinct blocks, to within stride - 1 per chain
        # (exact at stride 1), as each tracked block (every stride-th of a chain, and its
        # last) stands for the blocks back to the previous tracked depth.
        chains = [c for d, c, _t in alive.values() if d == deployment]
        distinct = len({b for c in chains for b in c})
        tracked = {
            c[j]: (j + 1) - (j // stride) * stride
            for c in chains
            for j in range(len(c))
            if (j + 1) % stride == 0 or j == len(c) - 1
        }
        got = ledger.prompt_blocks(deployment)
        assert got == sum(tracked.values())
        assert distinct <= got <= distinct + (stride - 1) * len(chains)
        if stride == 1:
            assert got == distinct
    # Every reservation gone: no block is remembered (memory follows the reservations).
    ledger.expire(float("inf"))
    assert ledger.running_blocks("a", q, 0) == 0 and ledger.running_blocks("b", q, 0) == 0
    assert ledger.prompt_blocks("a") == ledger.prompt_blocks("b") == 0
    assert not ledger._blocks


backlog_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"),
            st.sampled_from("ab"),
            st.integers(0, 5000),
            st.floats(-0.5, 0.5, allow_nan=False),
        ),
        st.tuples(st.just("take"), st.integers(0, 20), st.floats(-0.5, 0.5, allow_nan=False)),
    ),
    max_size=30,
)


@given(steps=backlog_ops, rate=st.one_of(st.none(), st.floats(1000.0, 50_000.0)))
def test_backlog_drains_at_the_prefill_rate_to_at_most_the_tokens_held(
    steps: list[tuple[object, ...]], rate: float | None
) -> None:
    # Reference, per deployment: the uncached tokens of the reservations held, and (with a
    # rate) a level that drains at the rate from the latest reservation or release on (a
    # clock going back drains nothing), gains each reservation's tokens and is cut to the
    # tokens still held at each release; without a rate, the backlog is the tokens held.
    # Nothing held: nothing at all; a request of no tokens changes nothing.
    ledger = Ledger(1, rate)
    alive: dict[str, tuple[str, int]] = {}
    held = {"a": 0, "b": 0}
    level = {"a": 0.0, "b": 0.0}
    at: dict[str, float] = {}
    now = 0.0

    def drained(d: str, t: float) -> float:
        if rate is None or d not in at:
            return 0.0
        return max(0.0, level[d] - rate * max(0.0, t - at[d]))

    for n, step in enumerate(steps):
        now += float(str(step[-1]))
        if step[0] == "reserve":
            d, uncached = str(step[1]), int(str(step[2]))
            ledger.reserve(Reservation(f"r{n}", d, "g", (), None, uncached, 1e9), now)
            alive[f"r{n}"] = (d, uncached)
            if uncached:  # a request of no tokens changes nothing
                level[d] = min(drained(d, now), held[d]) + uncached
                at[d] = max(at.get(d, now), now)
                held[d] += uncached
        elif alive:
            rid = sorted(alive)[int(str(step[1])) % len(alive)]
            d, uncached = alive.pop(rid)
            assert ledger.take([rid], d, now) is not None
            if uncached:
                held[d] -= uncached
                level[d] = min(drained(d, now), held[d])
                at[d] = max(at[d], now)
                if not held[d]:
                    at.pop(d, None)
        for d in "ab":
            expected = held[d] if rate is None else min(held[d], drained(d, now))
            assert abs(ledger.backlog.read(d, now) - expected) <= 1
            # A read changes nothing: a later clock, then the present, read alike.
            ledger.backlog.read(d, now + 100.0)
            assert abs(ledger.backlog.read(d, now) - expected) <= 1
    # Nothing in flight: no backlog, and nothing remembered.
    ledger.expire(float("inf"))
    assert ledger.backlog.read("a", now) == ledger.backlog.read("b", now) == 0
    assert len(ledger.backlog) == 0
