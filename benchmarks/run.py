"""``make bench``: the prefix index against naive and bare-dict baselines, in one run.

Everything is seeded and uses the public API only. Absolute times on a shared 2-core machine
are noise; the **ratios within one run** are the result. Writes ``benchmarks/RESULTS.md``
(machine, versions, tables) and prints it.

Sections:

1. *Scale*: ``observe``, ``decide`` (8 candidates) and ``longest_match`` per second and per
   block at 10^3..10^6 stored entries (chains of 16 blocks, 8 owners), for both backends,
   ``ReferenceIndex`` (a few calls only at large sizes: it walks everything) and a bare-dict
   floor (``dict`` chained hash -> (owner, last_seen)).
2. *Routing loop* on the Mooncake conversation trace: per request ``decide`` over 8 replica
   keys, ``select`` with in-flight 0, ``observe`` of the chosen replica; each ``hash_id``
   mapped to a fixed random 64-bit value. Requests/s (best of rounds), per-request p50/p99,
   bytes per stored node (tracemalloc, retained after the replay / value-bearing nodes; the
   chain ints themselves belong to the caller and are excluded), and the bare-dict floor
   (walk while present, then write every block).
3. The chain-hashing benchmarks of ``benchmarks/bench_chain.py`` when present, and the
   KV-event ingest and overlap benchmarks of ``benchmarks/bench_kvevents.py``
   (``--no-kvevents`` skips them).

4. *Scale in candidates*: ``benchmarks/bench_candidates.py``, ``Index.decide`` +
   ``select`` over 8..16,384 candidates against a one-pass floor, and ``CandidateSet.pick``
   against itself at 8 candidates.

5. *LiteLLM plugin overhead*: ``benchmarks/bench_litellm.py``, paired per call against
   LiteLLM's ``simple-shuffle`` in the same run.

Options: ``--quick`` (sizes up to 10^5, fewer rounds), ``--no-write``, ``--no-candidates``,
``--no-litellm``.
"""

# The timed closures run inside the iteration that defines them, so late binding is fine.
# ruff: noqa: B023
from __future__ import annotations

import gc
import gzip
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _measure import cpu_name

import prefixcache
from prefixcache import Candidate, Config, Index, ReplicaKey, select
from prefixcache.replay import BUNDLED_TRACE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The Mooncake conversation trace bundled with the package (gzip JSON Lines).
TRACE = BUNDLED_TRACE
SEED = 20260101
CHAIN_LEN = 16
MODEL = "m"
BACKENDS = ("dict", "datrie")

try:
    from prefixcache.reference import ReferenceIndex
except ImportError:  # pragma: no cover - P2's module may not exist yet
    ReferenceIndex = None  # type: ignore[assignment,misc]


def machine() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("clusterrouting", "datrie", "xxhash", "attrs", "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "missing"
    return {
        "cpu": cpu_name(),
        "nproc": str(os.cpu_count()),
        "python": sys.version.split()[0] + " " + platform.python_implementation(),
        "platform": platform.platform(),
        **versions,
    }


def best_rate(fn: Callable[[], int], rounds: int, *, gc_off: bool = False) -> float:
    """Best-of-``rounds`` operations per second of ``fn`` (which returns its op count).

    ``gc_off`` disables the cyclic garbage collector while timing (as ``timeit`` does)."""
    best = 0.0
    for _ in range(rounds):
        gc.collect()
        if gc_off:
            gc.disable()
        try:
            t0 = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t0
        finally:
            gc.enable()
        best = max(best, n / dt)
    return best


# ---------------------------------------------------------------------------------- scale
class DictFloor:
    """The bare floor: ``dict`` chained hash -> (owner, last_seen), no TTL, no weights."""

    def __init__(self) -> None:
        self.d: dict[int, tuple[ReplicaKey, float]] = {}

    def observe(self, chain: Sequence[int], key: ReplicaKey, now: float) -> None:
        d = self.d
        for h in chain:
            d[h] = (key, now)

    def longest(self, chain: Sequence[int]) -> tuple[ReplicaKey, int] | None:
        d = self.d
        n = 0
        for h in chain:
            if h not in d:
                break
            n += 1
        return (d[chain[n - 1]][0], n) if n else None


def random_chains(rng: random.Random, count: int, length: int) -> list[tuple[int, ...]]:
    return [tuple(rng.getrandbits(64) for _ in range(length)) for _ in range(count)]


def bench_scale(
    sizes: Sequence[int], rounds: int, report: Callable[[str], None]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    keys = [ReplicaKey(f"node-{i}") for i in range(8)]
    cands = [Candidate(k) for k in keys]
    # No entry cap: the sizes are the point (the default caps hold 250,000 entries a model).
    cfg = Config(ttl=1e9, half_life=120.0, max_entries=0, max_models=0)
    for size in sizes:
        rng = random.Random(SEED + size)
        stored = random_chains(rng, size // CHAIN_LEN, CHAIN_LEN)
        probe = [stored[rng.randrange(len(stored))] for _ in range(2000)]
        # The same 2000 decides over 32 chains only: their nodes stay in the CPU caches, so
        # this isolates algorithmic growth from the cache misses every structure (the bare
        # dict included) suffers when 2000 random chains are spread over a large heap.
        hot = [probe[i % 32] for i in range(2000)]
        fresh = random_chains(rng, 2000, CHAIN_LEN)
        impls: list[tuple[str, Any]] = [(f"Index[{b}]", b) for b in BACKENDS]
        impls.append(("bare dict floor", "floor"))
        if ReferenceIndex is not None:
            impls.append(("ReferenceIndex", "reference"))
        for name, kind in impls:
            t_build = time.perf_counter()
            if kind == "floor":
                fl = DictFloor()
                for i, c in enumerate(stored):
                    fl.observe(c, keys[i % 8], float(i))
            elif kind == "reference":
                ref = ReferenceIndex(cfg)
                for i, c in enumerate(stored):
                    ref.observe(MODEL, c, keys[i % 8], float(i))
            else:
                ix = Index(cfg, backend=kind)
                for i, c in enumerate(stored):
                    ix.observe(MODEL, c, keys[i % 8], float(i))
            build_s = time.perf_counter() - t_build
            now = float(len(stored))
            n_dec = len(probe) if kind != "reference" else max(1, min(len(probe), 200_000 // size))

            if kind == "floor":

                def dec() -> int:
                    lm = fl.longest
                    for c in probe:
                        lm(c)
                    return len(probe)

                def dec_hot() -> int:
                    lm = fl.longest
                    for c in hot:
                        lm(c)
                    return len(hot)

                def obs() -> int:
                    o = fl.observe
                    for i, c in enumerate(fresh):
                        o(c, keys[i % 8], now)
                    return len(fresh)

                lmf = dec
            elif kind == "reference":

                def dec() -> int:
                    for c in probe[:n_dec]:
                        ref.decide(MODEL, c, cands, now)
                    return n_dec

                dec_hot = dec

                def obs() -> int:
                    for i, c in enumerate(fresh[:n_dec]):
                        ref.observe(MODEL, c, keys[i % 8], now)
                    return n_dec

                def lmf() -> int:
                    for c in probe:
                        ref.longest_match(MODEL, c, now)
                    return len(probe)
            else:
                tree = ix.tree(MODEL)
                assert tree is not None

                def dec() -> int:
                    d = ix.decide
                    for c in probe:
                        d(MODEL, c, cands, now)
                    return len(probe)

                def dec_hot() -> int:
                    d = ix.decide
                    for c in hot:
                        d(MODEL, c, cands, now)
                    return len(hot)

                def obs() -> int:
                    o = ix.observe
                    for i, c in enumerate(fresh):
                        o(MODEL, c, keys[i % 8], now)
                    return len(fresh)

                def lmf() -> int:
                    lm = tree.longest_match
                    for c in probe:
                        lm(c, now)
                    return len(probe)

            r_dec = best_rate(dec, rounds if kind != "reference" else 1)
            r_hot = r_dec if kind == "reference" else best_rate(dec_hot, rounds)
            r_lm = best_rate(lmf, rounds if kind != "reference" or size <= 10**4 else 1)
            r_obs = best_rate(obs, rounds if kind != "reference" else 1)
            row = {
                "section": "scale",
                "impl": name,
                "entries": size,
                "build_s": build_s,
                "decide_per_s": r_dec,
                "decide_hot_per_s": r_hot,
                "observe_per_s": r_obs,
                "longest_match_per_s": r_lm,
                "decide_us_per_block": 1e6 / (r_dec * CHAIN_LEN),
                "observe_us_per_block": 1e6 / (r_obs * CHAIN_LEN),
                "longest_match_us_per_block": 1e6 / (r_lm * CHAIN_LEN),
            }
            rows.append(row)
            report(
                f"scale {size:>8} {name:<16} decide {r_dec:>10.0f}/s (hot {r_hot:>9.0f}/s)"
                f"  observe {r_obs:>9.0f}/s"
                f"  longest_match {r_lm:>10.0f}/s  (build {build_s:.1f}s)"
            )
            if kind == "floor":
                del fl
            elif kind == "reference":
                del ref
            else:
                del ix, tree
            gc.collect()
    return rows


# ---------------------------------------------------------------------------- routing loop
def load_trace() -> tuple[list[tuple[int, ...]], list[float]]:
    rng = random.Random(SEED)
    mapping: dict[int, int] = {}
    chains: list[tuple[int, ...]] = []
    times: list[float] = []
    with gzip.open(TRACE, "rt") as fh:
        for line in fh:
            rec = json.loads(line)
            chain = []
            for hid in rec["hash_ids"]:
                v = mapping.get(hid)
                if v is None:
                    v = mapping[hid] = rng.getrandbits(64)
                chain.append(v)
            chains.append(tuple(chain))
            times.append(rec["timestamp"] / 1000.0)
    return chains, times


def replay_index(
    ix: Index,
    chains: Sequence[tuple[int, ...]],
    times: Sequence[float],
    cands: list[Candidate],
    cfg: Config,
) -> int:
    decide = ix.decide
    observe = ix.observe
    for chain, now in zip(chains, times, strict=True):
        observe(MODEL, chain, select(cands, decide(MODEL, chain, cands, now), cfg), now)
    return len(chains)


def replay_floor(
    chains: Sequence[tuple[int, ...]], times: Sequence[float], keys: list[ReplicaKey]
) -> int:
    d: dict[int, tuple[ReplicaKey, float]] = {}
    for i, (chain, now) in enumerate(zip(chains, times, strict=True)):
        n = 0
        for h in chain:
            if h not in d:
                break
            n += 1
        owner = d[chain[n - 1]][0] if n else keys[i % 8]
        for h in chain:
            d[h] = (owner, now)
    return len(chains)


def bench_routing(rounds: int, report: Callable[[str], None]) -> list[dict[str, Any]]:
    chains, times = load_trace()
    keys = [ReplicaKey(f"node-{i}") for i in range(8)]
    cands = [Candidate(k, 0) for k in keys]
    cfg = Config()
    rows: list[dict[str, Any]] = []
    # Rounds interleave the floor and the indexes so that machine drift hits all alike.
    rates: dict[str, float] = {}
    rates_nogc: dict[str, float] = {}
    names = ["bare dict floor"] + [f"Index[{b}]" for b in BACKENDS]

    def job(name: str) -> Callable[[], int]:
        if name == "bare dict floor":
            return lambda: replay_floor(chains, times, keys)
        backend = name[6:-1]
        return lambda: replay_index(Index(cfg, backend=backend), chains, times, cands, cfg)  # type: ignore[arg-type]

    samples: dict[str, list[float]] = {name: [] for name in names}
    samples_nogc: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            samples[name].append(best_rate(job(name), 1))
            samples_nogc[name].append(best_rate(job(name), 1, gc_off=True))
    # The median of the interleaved rounds: one lucky or unlucky round moves nothing.
    for name in names:
        rates[name] = statistics.median(samples[name])
        rates_nogc[name] = statistics.median(samples_nogc[name])
    floor_rate = rates["bare dict floor"]
    floor_nogc = rates_nogc["bare dict floor"]
    for name, rate in rates.items():
        row: dict[str, Any] = {
            "section": "routing",
            "impl": name,
            "requests_per_s": rate,
            "ratio_to_floor": rate / floor_rate,
            "requests_per_s_gc_off": rates_nogc[name],
            "ratio_to_floor_gc_off": rates_nogc[name] / floor_nogc,
        }
        if name.startswith("Index"):
            backend = name[6:-1]
            ix = Index(cfg, backend=backend)  # type: ignore[arg-type]
            lat = []
            pc = time.perf_counter_ns
            for chain, now in zip(chains, times, strict=True):
                t0 = pc()
                ix.observe(
                    MODEL, chain, select(cands, ix.decide(MODEL, chain, cands, now), cfg), now
                )
                lat.append(pc() - t0)
            lat.sort()
            row["p50_us"] = lat[len(lat) // 2] / 1000
            row["p99_us"] = lat[int(len(lat) * 0.99)] / 1000
            del ix
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            ix = Index(cfg, backend=backend)  # type: ignore[arg-type]
            replay_index(ix, chains, times, cands, cfg)
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            tree = ix.tree(MODEL)
            nodes = len(tree) if tree is not None else 0
            row["stored_nodes"] = nodes
            row["bytes_per_node"] = used / max(nodes, 1)
            del ix, tree
            gc.collect()
        else:
            lat = []
            pc = time.perf_counter_ns
            d: dict[int, tuple[ReplicaKey, float]] = {}
            for i, (chain, now) in enumerate(zip(chains, times, strict=True)):
                t0 = pc()
                n = 0
                for h in chain:
                    if h not in d:
                        break
                    n += 1
                owner = d[chain[n - 1]][0] if n else keys[i % 8]
                for h in chain:
                    d[h] = (owner, now)
                lat.append(pc() - t0)
            lat.sort()
            row["p50_us"] = lat[len(lat) // 2] / 1000
            row["p99_us"] = lat[int(len(lat) * 0.99)] / 1000
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            dd: dict[int, tuple[ReplicaKey, float]] = {}
            for chain, now in zip(chains, times, strict=True):
                for h in chain:
                    dd[h] = (keys[0], now)
            used = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            row["stored_nodes"] = len(dd)
            row["bytes_per_node"] = used / len(dd)
            del dd
        rows.append(row)
        report(
            f"routing {name:<16} {rate:>9.0f} req/s  ratio {rate / floor_rate:.3f}"
            f"  (gc off: {rates_nogc[name]:.0f} req/s, ratio {rates_nogc[name] / floor_nogc:.3f})"
            f"  p50 {row['p50_us']:.1f}us p99 {row['p99_us']:.1f}us"
            f"  {row['bytes_per_node']:.0f} B/node ({row['stored_nodes']} nodes)"
        )
    return rows


def bench_replay(repeats: int, report: Callable[[str], None]) -> str:
    """Decisions/s of each replay policy's routing path on the bundled trace, as Markdown.

    ``prefixcache.replay.bench_policies`` replays the whole trace per policy on the default
    cluster and counts only wall time inside the policy's library calls; the full replay of
    the ``prefix`` policy (simulator included) is timed too (target < 5 s).
    """
    from prefixcache.replay import BUNDLED_TRACE, bench_policies, load_trace, run_replay

    requests = load_trace(BUNDLED_TRACE)
    rates = bench_policies(requests, repeats=repeats)
    walls = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        run_replay(requests, policies=("prefix",))
        walls.append(time.perf_counter() - t)
    base = rates["round-robin"]
    out = [
        "Bundled Mooncake conversation trace, "
        f"{len(requests):,} requests, 8 replicas, default cluster model, auto speed-up; each "
        "policy replays the whole trace and the rate counts only wall time inside the "
        f"policy (its decision plus the index upkeep it does), best of {repeats} runs.",
        "",
        "| policy | decisions/s | ratio to round-robin |",
        "|---|---:|---:|",
    ]
    for name, rate in rates.items():
        out.append(f"| {name} | {rate:,.0f} | {rate / base:.4f} |")
        report(f"replay {name:<14} {rate:>12,.0f} decisions/s")
    out.append("")
    out.append(
        f"Full replay of the trace through `prefix` (simulator included): "
        f"{min(walls):.2f} s wall, best of {len(walls)} (target < 5 s)."
    )
    report(f"replay prefix full wall {min(walls):.2f} s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- output
def to_markdown(
    info: dict[str, str],
    scale: list[dict[str, Any]],
    routing: list[dict[str, Any]],
    chain_md: str,
    wall_s: float,
    replay_md: str = "",
    candidates_md: str = "",
    candidates: list[dict[str, Any]] | None = None,
) -> str:
    candidates = candidates or []
    out = ["# Benchmark results", ""]
    out.append(
        "Generated by `make bench` (`benchmarks/run.py`); seeded; public API only. "
        "Absolute numbers on this shared machine are noise: read the **ratios**, which "
        "come from one run."
    )
    out.append("")
    out.append("## Machine and versions")
    out.append("")
    for k, v in info.items():
        out.append(f"- {k}: {v}")
    out.append(f"- total benchmark wall time: {wall_s:.0f} s")
    out.append("")
    out.append("## Routing loop on the Mooncake conversation trace")
    out.append("")
    out.append(
        "12,031 requests, 8 replicas; per request `decide` over the 8 keys, `select` "
        "with in-flight 0, `observe` of the chosen key (default `Config`). Floor: a "
        "`dict` chained hash -> (owner, last_seen), walk while present, then write "
        "every block. Five rounds interleave the three; the median round is reported. The floor "
        "allocates a tuple per block, so it is hit hardest by the cyclic garbage "
        "collector: the GC-off columns show the ratio without it."
    )
    out.append("")
    out.append(
        "| implementation | requests/s | ratio to floor | requests/s, GC off | ratio, GC off "
        "| p50 us | p99 us | bytes/node | nodes |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in routing:
        out.append(
            f"| {r['impl']} | {r['requests_per_s']:.0f} | {r['ratio_to_floor']:.3f} | "
            f"{r['requests_per_s_gc_off']:.0f} | {r['ratio_to_floor_gc_off']:.3f} | "
            f"{r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['bytes_per_node']:.0f} | "
            f"{r['stored_nodes']} |"
        )
    out.append("")
    if candidates_md:
        out.append("## Scale in candidates")
        out.append("")
        out.append(
            "Chains of 16 random blocks, 2,000 stored (each observed for a random replica); "
            "half the requests share 8 blocks with a stored chain. *decide + select*: "
            "`Index.decide` + `select` over a fresh list of the same `Candidate` records "
            "(in-flight 0..3) per request; floor: `min(map(attrgetter('in_flight'), "
            "candidates))` over the same list. *CandidateSet.pick*: `pick` + `reserve` + "
            "`release` with one request per replica in flight, released in order; ratio to "
            "its cost at 8 candidates. Best of rounds, per request."
        )
        out.append("")
        out.append(candidates_md)
        out.append("")
    out.append("## Scale: per-call rates at 10^3..10^6 stored entries")
    out.append("")
    out.append(
        f"Chains of {CHAIN_LEN} random blocks, 8 owners; `decide` over 8 candidates of "
        "stored chains (hits), `observe` of fresh chains, `longest_match` of stored "
        "chains. Floor: bare dict (decide = longest = walk while present; observe = "
        "write every block). ReferenceIndex walks the whole trie per decide (few calls "
        "at large sizes). *decide hot/s*: the same 2000 decides cycling over 32 chains, "
        "whose nodes stay in the CPU caches (isolates algorithmic growth from cache misses)."
    )
    out.append("")
    out.append(
        "| entries | implementation | decide/s | us/block | decide hot/s | observe/s | "
        "us/block | longest_match/s | us/block |"
    )
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in scale:
        out.append(
            f"| {r['entries']:,} | {r['impl']} | {r['decide_per_s']:.0f} | "
            f"{r['decide_us_per_block']:.3f} | {r['decide_hot_per_s']:.0f} | "
            f"{r['observe_per_s']:.0f} | "
            f"{r['observe_us_per_block']:.3f} | {r['longest_match_per_s']:.0f} | "
            f"{r['longest_match_us_per_block']:.3f} |"
        )
    out.append("")
    out.append("## Targets (ratios from this run)")
    out.append("")
    by = {(r["impl"], r["entries"]): r for r in scale}
    sizes = sorted({r["entries"] for r in scale})
    for impl in [f"Index[{b}]" for b in BACKENDS] + ["bare dict floor"]:
        lo = by.get((impl, sizes[0]))
        hi = by.get((impl, sizes[-1]))
        if lo and hi:
            cold = lo["decide_per_s"] / hi["decide_per_s"]
            warm = lo["decide_hot_per_s"] / hi["decide_hot_per_s"]
            out.append(
                f"- decide cost at {sizes[-1]:,} / at {sizes[0]:,} entries, {impl}: "
                f"**{warm:.2f}x** on the cache-resident probe set, {cold:.2f}x on 2000 "
                f"random stored chains"
                + (
                    " (target <= 1.5x)"
                    if impl != "bare dict floor"
                    else " (the floor's walk alone, for comparison)"
                )
            )
    rt = {r["impl"]: r for r in routing}
    for b, target in (("dict", 0.35), ("datrie", 0.20)):
        r = rt.get(f"Index[{b}]")
        if r:
            out.append(
                f"- routing loop, {b}: **{r['ratio_to_floor']:.1%}** of the floor's "
                f"requests/s with the garbage collector on (the interpreter default), "
                f"{r['ratio_to_floor_gc_off']:.1%} with it off (target >= {target:.0%})"
            )
    r = rt.get("Index[dict]")
    if r:
        out.append(f"- bytes per stored node, dict: **{r['bytes_per_node']:.0f}** (target <= 150)")
    for c in candidates:
        if c["candidates"] in (4096, 16384):
            out.append(
                f"- {c['candidates']:,} candidates: decide + select at "
                f"**{c['functional_over_floor']:.2f}x** the one-pass floor (target <= 3x); "
                f"CandidateSet.pick at **{c['pick_over_8']:.2f}x** its cost at 8 (target <= 3x)"
            )
    out.append("")
    if chain_md:
        out.append("## Chain hashing (benchmarks/bench_chain.py)")
        out.append("")
        out.append(chain_md)
        out.append("")
    if replay_md:
        out.append("## Replay: routing decisions per second of each policy")
        out.append("")
        out.append(replay_md)
        out.append("")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    write = "--no-write" not in args
    t0 = time.perf_counter()
    info = machine()
    info["prefixcache DEFAULT_BACKEND"] = prefixcache.DEFAULT_BACKEND
    rounds = 2 if quick else 5
    routing = bench_routing(rounds, print)
    sizes = [10**3, 10**4, 10**5] if quick else [10**3, 10**4, 10**5, 10**6]
    scale = bench_scale(sizes, 2 if quick else 3, print)
    chain_md = ""
    if (HERE / "bench_chain.py").exists() and "--no-chain" not in args:
        sys.path.insert(0, str(HERE))
        try:
            import bench_chain

            chain_md = bench_chain.to_markdown(bench_chain.run(report=print))
        except Exception as exc:  # keep the index results even if P2's script breaks
            chain_md = f"(bench_chain.py failed: {exc!r})"
    kvevents_md = ""
    if (HERE / "bench_kvevents.py").exists() and "--no-kvevents" not in args:
        sys.path.insert(0, str(HERE))
        try:
            import bench_kvevents

            kvevents_md = bench_kvevents.to_markdown(
                bench_kvevents.run(repeat=5 if quick else 15, report=print)
            )
        except Exception as exc:  # keep the other results if the kvevents extra is missing
            kvevents_md = f"(bench_kvevents.py failed: {exc!r})"
    replay_md = "" if "--no-replay" in args else bench_replay(1 if quick else 3, print)
    candidates_md = ""
    candidates: list[dict[str, Any]] = []
    if "--no-candidates" not in args:
        sys.path.insert(0, str(HERE))
        import bench_candidates

        candidates = bench_candidates.run(rounds=3 if quick else 5, report=print)
        candidates_md = bench_candidates.to_markdown(candidates)
    text = to_markdown(
        info,
        scale,
        routing,
        chain_md,
        time.perf_counter() - t0,
        replay_md,
        candidates_md,
        candidates,
    )
    if "--no-litellm" not in args:
        # LiteLLM is an optional extra: its overhead section is skipped, not failed, without it.
        sys.path.insert(0, str(HERE))
        try:
            import bench_litellm

            text += "\n\n" + bench_litellm.to_markdown(bench_litellm.run(print, quick=quick))
        except ImportError as exc:
            text += f"\n\n(bench_litellm.py skipped: {exc})"
    if kvevents_md:
        text += "\n## KV-cache events (benchmarks/bench_kvevents.py)\n\n" + kvevents_md + "\n"
    if write:
        (HERE / "RESULTS.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
