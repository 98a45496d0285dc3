"""Scale in candidates: a routing decision over 8 to 16,384 replicas, in one run.

Two APIs (public only), on the same index (chains of 16 random blocks, 2,000 stored, each
observed for a random replica; half the requests share 8 blocks with a stored chain, half
are new):

* *functional*: ``Index.decide`` + ``select`` over a fresh list of the same ``Candidate``
  records on every request, against a floor that is
  ``min(map(operator.attrgetter("in_flight"), candidates))`` over the same records;
* *persistent*: ``CandidateSet.pick`` + ``reserve`` + ``release`` (a fixed concurrency of
  one request per replica, released in FIFO order), against the same at 8 candidates.

Times are per request, best of rounds; ratios are taken within this run.
"""

# The timed closures run inside the iteration that defines them, so late binding is fine.
# ruff: noqa: B023
from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from prefixcache import Candidate, CandidateSet, Config, Index, ReplicaKey, select

SIZES = (8, 64, 512, 4096, 16384)
_IN_FLIGHT = attrgetter("in_flight")


def _setup(n: int, requests: int) -> tuple[Index, list[ReplicaKey], list[tuple[int, ...]]]:
    rng = random.Random(20260101 + n)
    keys = [ReplicaKey(f"node-{i:05d}", i % 2) for i in range(n)]
    ix = Index(Config())
    stored = [tuple(rng.getrandbits(64) for _ in range(16)) for _ in range(2000)]
    for i, chain in enumerate(stored):
        ix.observe("m", chain, keys[rng.randrange(n)], 1.0 + i * 1e-3)
    probes = [
        stored[rng.randrange(2000)][:8] + tuple(rng.getrandbits(64) for _ in range(8))
        if j % 2
        else tuple(rng.getrandbits(64) for _ in range(16))
        for j in range(requests)
    ]
    return ix, keys, probes


def _best(fn: Callable[[], None], rounds: int, requests: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / requests


def run(
    rounds: int = 5, requests: int = 400, report: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    config = Config()
    base_pick = 0.0
    for n in SIZES:
        ix, keys, probes = _setup(n, requests)
        rng = random.Random(n)
        records = [Candidate(k, rng.randrange(4)) for k in keys]

        def functional() -> None:
            for chain in probes:
                cands = list(records)
                select(cands, ix.decide("m", chain, cands, 10.0), config)

        def floor() -> None:
            for _ in probes:
                cands = list(records)
                min(map(_IN_FLIGHT, cands))

        pool = CandidateSet(keys)
        inflight: deque[ReplicaKey] = deque()
        for k in keys:
            pool.reserve(k)
            inflight.append(k)

        def persistent() -> None:
            for chain in probes:
                k = pool.pick(ix, "m", chain, 10.0, config)
                assert k is not None
                pool.reserve(k)
                inflight.append(k)
                pool.release(inflight.popleft())

        f = _best(functional, rounds, requests)
        fl = _best(floor, rounds, requests)
        p = _best(persistent, rounds, requests)
        base_pick = base_pick or p
        row = {
            "candidates": n,
            "functional_us": f * 1e6,
            "floor_us": fl * 1e6,
            "functional_over_floor": f / fl,
            "pick_us": p * 1e6,
            "pick_over_8": p / base_pick,
        }
        rows.append(row)
        report(
            f"candidates {n:>6}: decide+select {f * 1e6:9.1f} us ({f / fl:5.2f}x floor"
            f" {fl * 1e6:.1f} us); CandidateSet.pick {p * 1e6:7.1f} us ({p / base_pick:5.2f}x"
            " at 8)"
        )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| candidates | decide + select (us) | floor (us) | ratio to floor "
        "| CandidateSet.pick (us) | ratio to 8 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['candidates']:,} | {r['functional_us']:.1f} | {r['floor_us']:.1f} "
            f"| {r['functional_over_floor']:.2f} | {r['pick_us']:.1f} | {r['pick_over_8']:.2f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    print(to_markdown(run()))
