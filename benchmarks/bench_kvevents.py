"""KV-event ingest and overlap queries against their baselines (``prefixcache.kvevents``).

Run alone (``python benchmarks/bench_kvevents.py``) to print a Markdown table with the
machine and versions, or from ``benchmarks/run.py`` (``make bench``)::

    import bench_kvevents
    text = bench_kvevents.to_markdown(bench_kvevents.run(report=print))

Both measurements time the library and its baseline **in the same run, interleaved** (best of
``repeat`` rounds, in CPU time of the process) and report ``library / baseline``; inputs are
seeded, sized in powers of ten, and built with the public API only.

- **Ingest** (target <= 2x): a stream of engine batches (4 ``BlockStored`` events each, 16
  tokens per block, positional layout, each event continuing a prompt from its parent),
  ``decode_payload`` + ``KvResidency.apply``, against a baseline that decodes the same
  payloads with ``msgspec.msgpack.decode``, re-hashes each event's tokens with
  ``extract_token_chain`` and writes ``engine hash -> our hash`` into a dict.
- **Overlap** (target <= 2x): ``KvResidency.overlap_chain`` over 8 candidates holding the
  chain to various depths, against ``Index.decide`` on the same chain and candidates (its
  index populated with the same prefixes).
"""

# The timed closures run inside the iteration that defines them, so late binding is fine.
# ruff: noqa: B023
from __future__ import annotations

import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
from _measure import best_pair, cpu_name

from prefixcache import Candidate, Index, ReplicaKey, extract_token_chain
from prefixcache.kvevents import (
    BlockStored,
    EventBatch,
    KvResidency,
    decode_payload,
    encode_payload,
)

Row = dict[str, Any]
SEED = 20260115
BT = 16
TARGET = 2.0
MODEL = "bench-model"


def machine() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "cpu": cpu_name(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "msgspec": version("msgspec"),
        "xxhash": version("xxhash"),
    }


def _best_pair(
    ours: Callable[[], object], base: Callable[[], object], repeat: int
) -> tuple[float, float]:
    # CPU time of this process, not wall time: on a shared, oversubscribed machine a round
    # that lost the CPU to another process is not counted slower for it.
    return best_pair(ours, base, repeat, clock=time.process_time, budget_s=0.01)


def _payloads(rng: random.Random, blocks_per_event: int, batches: int) -> list[bytes]:
    """Engine batches of 4 stores; each store extends one of 8 growing prompts."""
    prompts: list[tuple[int | None, int]] = [(None, 0)] * 8  # (last engine hash, depth)
    out = []
    for _ in range(batches):
        events = []
        for _ in range(4):
            p = rng.randrange(8)
            parent, depth = prompts[p]
            hashes = [rng.getrandbits(64) for _ in range(blocks_per_event)]
            tokens = [rng.randrange(150_000) for _ in range(blocks_per_event * BT)]
            events.append(
                BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens,
                            block_size=BT, medium="GPU")
            )  # fmt: skip
            prompts[p] = (hashes[-1], depth + blocks_per_event)
        out.append(encode_payload(EventBatch(ts=0.0, rank=0, events=events)))
    return out


def bench_ingest(repeat: int, rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    decode = msgspec.msgpack.Decoder().decode
    for blocks_per_event in (1, 10, 100):
        payloads = _payloads(rng, blocks_per_event, batches=max(1, 400 // blocks_per_event))
        key = ReplicaKey("engine-0")

        def ours(payloads: list[bytes] = payloads) -> object:
            res = KvResidency(block_tokens=BT, clock=lambda: 0.0)
            for seq, p in enumerate(payloads):
                res.apply(key, seq, decode_payload(p), model=MODEL, now=0.0)
            return res

        def base(payloads: list[bytes] = payloads) -> object:
            table: dict[int, int] = {}
            for p in payloads:
                for event in decode(p)[1]:
                    chain = extract_token_chain(MODEL, event[3], block_tokens=BT)
                    for h, c in zip(event[1], chain, strict=False):
                        table[h] = c
            return table

        t_ours, t_base = _best_pair(ours, base, repeat)
        blocks = len(payloads) * 4 * blocks_per_event
        rows.append(
            {
                "bench": "ingest",
                "size": f"{blocks_per_event} blocks/event",
                "blocks": blocks,
                "ours_us_per_block": t_ours / blocks * 1e6,
                "base_us_per_block": t_base / blocks * 1e6,
                "ratio": t_ours / t_base,
            }
        )
    return rows


def bench_overlap(repeat: int, rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    keys = [ReplicaKey(f"replica-{i}") for i in range(8)]
    for depth in (10, 100, 1000):
        tokens = [rng.randrange(150_000) for _ in range(depth * BT)]
        chain = extract_token_chain(MODEL, tokens, block_tokens=BT)
        res = KvResidency(block_tokens=BT, clock=lambda: 0.0)
        index = Index()
        for i, key in enumerate(keys):
            held = depth * i // len(keys)  # 0, 1/8, ..., 7/8 of the chain
            if held:
                stored = BlockStored(block_hashes=list(range(1, held + 1)),
                                     token_ids=tokens[: held * BT], block_size=BT)  # fmt: skip
                res.apply(key, 0, EventBatch(ts=0.0, events=[stored]), model=MODEL)
                index.observe(MODEL, chain[:held], key, 0.0)
        cands = [Candidate(k) for k in keys]

        def ours(chain: tuple[int, ...] = chain) -> object:
            return res.overlap_chain(chain, keys)

        def base(chain: tuple[int, ...] = chain) -> object:
            return index.decide(MODEL, chain, cands, 1.0)

        t_ours, t_base = _best_pair(ours, base, repeat)
        rows.append(
            {
                "bench": "overlap",
                "size": f"chain of {depth} blocks",
                "blocks": depth,
                "ours_us": t_ours * 1e6,
                "base_us": t_base * 1e6,
                "ratio": t_ours / t_base,
            }
        )
    return rows


def run(repeat: int = 25, report: Callable[[str], None] = lambda _s: None) -> list[Row]:
    """Every measurement; ``report`` receives one line per row as it completes."""
    rng = random.Random(SEED)
    rows = []
    for row in [*bench_ingest(repeat, rng), *bench_overlap(repeat, rng)]:
        report(f"kvevents {row['bench']} {row['size']}: ratio {row['ratio']:.2f}")
        rows.append(row)
    return rows


def to_markdown(rows: list[Row]) -> str:
    """The results as Markdown: machine and versions, then the two tables."""
    m = machine()
    out = [
        "### KV events (`benchmarks/bench_kvevents.py`)",
        "",
        f"Machine: {m['cpu']}; {m['os']}. Python {m['python']}, msgspec {m['msgspec']}, "
        f"xxhash {m['xxhash']}. Best of interleaved rounds in process CPU time; ratio = "
        "library / baseline in the same run.",
        "",
        "Ingest: `decode_payload` + `KvResidency.apply` of batches of 4 `BlockStored` events "
        "(16 tokens per block) against `msgspec.msgpack.decode` + `extract_token_chain` per "
        "event + a dict write per block.",
        "",
        "| batches | blocks | ours (us/block) | baseline (us/block) | ratio | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["bench"] == "ingest":
            out.append(
                f"| {r['size']} | {r['blocks']} | {r['ours_us_per_block']:.2f} "
                f"| {r['base_us_per_block']:.2f} | **{r['ratio']:.2f}** | <= {TARGET} |"
            )
    out += [
        "",
        "Overlap: `KvResidency.overlap_chain` over 8 candidates (holding 0/8 .. 7/8 of the "
        "chain) against `Index.decide` on the same chain and candidates.",
        "",
        "| chain | overlap_chain (us) | Index.decide (us) | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["bench"] == "overlap":
            out.append(
                f"| {r['size']} | {r['ours_us']:.2f} | {r['base_us']:.2f} "
                f"| **{r['ratio']:.2f}** | <= {TARGET} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    print(to_markdown(run(report=print)))
