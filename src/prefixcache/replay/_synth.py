"""A synthetic multi-turn chat trace in the Mooncake format, for sanity checks off one trace."""

from __future__ import annotations

import heapq
import math
import random

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_number
from prefixcache.replay._cluster import ClusterModel
from prefixcache.replay._trace import Request

__all__ = ["eviction_case", "shared_prefix_trace", "synthetic_trace"]


def _int_at_least(name: str, value: object, lo: int | None) -> None:
    """Refuse a ``value`` that is not an int (a bool is not), or is below ``lo``."""
    if type(value) is not int or (lo is not None and value < lo):
        raise InvalidRecordError(
            name, value, "must be an int" + ("" if lo is None else f" >= {lo}")
        )


def synthetic_trace(
    *,
    seed: int = 0,
    sessions: int = 2000,
    duration_s: float = 3600.0,
    shared_prefixes: int = 50,
    mean_turns: float = 4.0,
    mean_think_s: float = 90.0,
    prefix_blocks: tuple[int, int] = (1, 8),
    block_tokens: int = 512,
) -> list[Request]:
    """Sessions of chat turns over a pool of shared system prompts, sorted by arrival.

    Model: ``sessions`` start uniformly over ``duration_s``; each picks one of
    ``shared_prefixes`` system prompts (Zipf-like popularity ``1/rank``, each
    ``prefix_blocks`` = (min, max) full blocks long, uniform),
    has a geometric number of turns (mean ``mean_turns``) separated by exponential think
    times (mean ``mean_think_s``); each turn's prompt is the previous prompt plus the
    previous answer plus a new user message (lognormal, median ~600 tokens), so
    consecutive turns share every full block of the previous prompt. Block ids are
    prefix-chained as in Mooncake traces (equal id = equal prefix). Deterministic in
    ``seed`` (a private ``random.Random``).

    Raises:
        InvalidRecordError: a parameter out of its range, named: ``seed`` not an int,
            ``sessions`` < 0, ``shared_prefixes`` < 1, ``block_tokens`` < 1,
            ``duration_s`` < 0, ``mean_turns`` < 1, ``mean_think_s`` <= 0 (or one of them
            not finite), ``prefix_blocks`` not two ints with 0 <= min <= max.
    """
    _int_at_least("seed", seed, None)
    _int_at_least("sessions", sessions, 0)
    _int_at_least("shared_prefixes", shared_prefixes, 1)
    _int_at_least("block_tokens", block_tokens, 1)
    check_number("duration_s", duration_s, 0.0)
    check_number("mean_turns", mean_turns, 1.0)
    check_number("mean_think_s", mean_think_s, 0.0, above=True)
    lo_hi = tuple(prefix_blocks) if isinstance(prefix_blocks, (tuple, list)) else ()
    if not (len(lo_hi) == 2 and all(type(b) is int for b in lo_hi) and 0 <= lo_hi[0] <= lo_hi[1]):
        raise InvalidRecordError(
            "prefix_blocks", prefix_blocks, "must be (min, max) ints with 0 <= min <= max"
        )
    rng = random.Random(seed)
    bt = block_tokens
    next_id = 0
    prefixes: list[tuple[int, int]] = []  # (tokens, first id): all-full blocks
    for _ in range(shared_prefixes):
        nblocks = rng.randint(prefix_blocks[0], prefix_blocks[1])
        prefixes.append((nblocks * bt, next_id))
        next_id += nblocks
    weights = [1.0 / (k + 1) for k in range(shared_prefixes)]
    heap: list[tuple[float, int, int]] = []
    state: dict[int, tuple[int, list[int], int]] = {}  # tokens, full-block ids, turns left
    for s in range(sessions):
        p_tokens, p_first = prefixes[rng.choices(range(shared_prefixes), weights)[0]]
        ids = list(range(p_first, p_first + p_tokens // bt))
        u = rng.random()  # drawn at every mean, so a mean of 1 keeps the other draws
        turns = (
            1 if mean_turns == 1 else 1 + int(math.log(1.0 - u) / math.log(1.0 - 1.0 / mean_turns))
        )
        state[s] = (p_tokens, ids, turns)
        heapq.heappush(heap, (rng.uniform(0.0, duration_s), s, 0))
    out: list[Request] = []
    while heap:
        t, s, _ = heapq.heappop(heap)
        tokens, ids, left = state[s]
        user = max(16, int(rng.lognormvariate(math.log(600.0), 1.0)))
        prompt = tokens + user
        n_full = prompt // bt
        while len(ids) < n_full:
            ids.append(next_id)
            next_id += 1
        chain = ids[:n_full]
        if prompt % bt:
            chain = [*chain, next_id]  # a partial tail block is unique to this prompt
            next_id += 1
        answer = max(1, min(2000, int(rng.lognormvariate(math.log(250.0), 0.8))))
        out.append(
            Request(arrival=t, input_tokens=prompt, output_tokens=answer, blocks=tuple(chain))
        )
        if left > 1:
            state[s] = (prompt + answer, ids, left - 1)
            heapq.heappush(heap, (t + rng.expovariate(1.0 / mean_think_s), s, 0))
    out.sort(key=lambda r: r.arrival)
    return out


def shared_prefix_trace(
    *,
    seed: int = 0,
    groups: int = 1,
    prompts: int = 400,
    system_tokens: int = 2500,
    question_tokens: int = 300,
    output_tokens: int = 200,
    duration_s: float = 60.0,
    zipf_s: float = 1.0,
    block_tokens: int = 512,
) -> list[Request]:
    """Prompts sharing long system prompts: the shape that pins one replica.

    ``groups`` system prompts of ``system_tokens`` tokens each; ``prompts`` requests
    arrive uniformly over ``duration_s``, each picking a group with Zipf popularity
    (weight ``1/rank**zipf_s``; one group: all share it) and appending a question of about
    ``question_tokens`` tokens (uniform in [0.5, 1.5] x) and asking for about
    ``output_tokens`` tokens (same spread). The system prompt's full blocks are shared by
    its group; every later block (including the one where the question starts) is unique
    to its prompt. The defaults are sglang issue #21199's shape (400 prompts sharing one
    ~2.5k-token system prompt). Deterministic in ``seed``.

    Raises:
        InvalidRecordError: a parameter out of its range, named: ``seed`` not an int,
            ``groups`` or ``block_tokens`` < 1, ``prompts``, ``system_tokens``,
            ``question_tokens`` or ``output_tokens`` < 0, ``duration_s`` or ``zipf_s``
            negative or not finite.
    """
    _int_at_least("seed", seed, None)
    _int_at_least("groups", groups, 1)
    _int_at_least("block_tokens", block_tokens, 1)
    for name, count in (
        ("prompts", prompts),
        ("system_tokens", system_tokens),
        ("question_tokens", question_tokens),
        ("output_tokens", output_tokens),
    ):
        _int_at_least(name, count, 0)
    check_number("duration_s", duration_s, 0.0)
    check_number("zipf_s", zipf_s, 0.0)
    rng = random.Random(seed)
    bt = block_tokens
    full = system_tokens // bt
    next_id = 0
    heads: list[list[int]] = []
    for _ in range(groups):
        heads.append(list(range(next_id, next_id + full)))
        next_id += full
    weights = [1.0 / (k + 1) ** zipf_s for k in range(groups)]
    out: list[Request] = []
    for _ in range(prompts):
        g = rng.choices(range(groups), weights)[0] if groups > 1 else 0
        q = max(1, int(question_tokens * rng.uniform(0.5, 1.5)))
        o = max(1, int(output_tokens * rng.uniform(0.5, 1.5)))
        tokens = system_tokens + q
        n_blocks = -(-tokens // bt)
        tail = list(range(next_id, next_id + n_blocks - full))
        next_id += n_blocks - full
        out.append(
            Request(
                arrival=rng.uniform(0.0, duration_s),
                input_tokens=tokens,
                output_tokens=o,
                blocks=tuple(heads[g] + tail),
            )
        )
    out.sort(key=lambda r: r.arrival)
    return out


def eviction_case(seed: int = 0) -> tuple[list[Request], ClusterModel]:
    """A synthetic chat trace on a cluster whose KV capacity is near its working set.

    :func:`synthetic_trace` with 3,000 sessions over an hour and 100 shared prompts of
    4-16 blocks, on 8 replicas of 512 blocks each (below the blocks the sessions active
    at any time hold): engines evict often, so a router's own record of what it sent
    drifts from what the engines hold. (At 1,024 blocks evictions are rare and both views
    agree; at 256 the cluster thrashes and queues for minutes.)
    """
    reqs = synthetic_trace(
        seed=seed, sessions=3000, duration_s=3600.0, shared_prefixes=100, prefix_blocks=(4, 16)
    )
    return reqs, ClusterModel(cache_blocks=512)
