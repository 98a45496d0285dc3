"""Chain-hashing throughput: ``extract_chain`` and ``extract_token_chain`` against bare loops.

Run alone (``python benchmarks/bench_chain.py``) to print a Markdown table with the machine
and versions, or call :func:`run` from ``benchmarks/run.py``::

    import bench_chain
    rows = bench_chain.run(report=print)     # list of dicts, one per measurement
    text = bench_chain.to_markdown(rows)     # the table for RESULTS.md

Every measurement times the library call and its baseline **in the same run, interleaved**
(best of ``repeat`` rounds, each round alternating the two), and reports the ratio
``library / baseline``. Absolute times on a shared machine are noise; the ratios are the
result. Inputs are seeded and sized in powers of ten, plus the two target cases of the
issue:

- ``extract_chain`` of a 16 KiB prompt (64 blocks of 256 bytes) against a bare loop of 64
  ``xxh64_intdigest`` calls over the same blocks of the already-encoded bytes (the library
  call also pays the UTF-8 encode and the chaining); target ratio <= 1.5;
- ``extract_token_chain`` of a 32,768-token int32 array at 16 tokens per block against a bare
  ``xxh64_intdigest`` loop over the array's rows (``arr.reshape(-1, 16)``); target <= 1.5.

Secondary baselines are reported too (pre-sliced blocks: hash calls only; xxh3 over rows;
bytes slices), so nobody has to trust the choice of the main one.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import xxhash
from _measure import best_pair, cpu_name
from xxhash import xxh3_64_intdigest, xxh64_intdigest

from prefixcache import Config, extract_chain, extract_token_chain

Row = dict[str, Any]

TARGET_RATIO = 1.5


_ASCII = "abcdefghijklmnopqrstuvwxyz      ,.\nABCDEF"
_MIXED = _ASCII + "é€"


def _prompt(rng: random.Random, n_bytes: int, alphabet: str = _ASCII) -> str:
    """About ``n_bytes`` of UTF-8: ASCII, or with a few multibyte characters (which make
    CPython store the str as UCS-2 and its UTF-8 encode ~40x slower than ASCII's)."""
    text = "".join(rng.choice(alphabet) for _ in range(n_bytes))
    return text.encode()[:n_bytes].decode("utf-8", "ignore")


def bench_extract_chain(repeat: int, rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    for size, label, cfg, alphabet in [
        (100, "10^2 B ASCII", Config(), _ASCII),
        (1_000, "10^3 B ASCII", Config(), _ASCII),
        (10_000, "10^4 B ASCII", Config(), _ASCII),
        (16_384, "16 KiB ASCII (target)", Config(), _ASCII),
        (16_384, "16 KiB with é/€", Config(), _MIXED),
        (100_000, "10^5 B with é/€", Config(), _MIXED),
        (100_000, "10^5 B ASCII, max_depth=1000", Config(max_depth=1000), _ASCII),
    ]:
        prompt = _prompt(rng, size, alphabet)
        data = prompt.encode()
        w = cfg.window_bytes
        depth = min(-(-len(data) // w), cfg.max_depth)
        offsets = range(0, depth * w, w)
        blocks = [data[o : o + w] for o in offsets]

        def ours(prompt: str = prompt, cfg: Config = cfg) -> object:
            return extract_chain("bench-model", prompt, cfg)

        def base(data: bytes = data, offsets: range = offsets, w: int = w) -> object:
            return [xxh64_intdigest(data[o : o + w]) for o in offsets]

        def base_hash_only(blocks: list[bytes] = blocks) -> object:
            return [xxh64_intdigest(b) for b in blocks]

        def base_with_encode(prompt: str = prompt, offsets: range = offsets, w: int = w) -> object:
            data = prompt.encode()
            return [xxh64_intdigest(data[o : o + w]) for o in offsets]

        t_ours, t_base = best_pair(ours, base, repeat)
        _, t_hash = best_pair(ours, base_hash_only, repeat)
        _, t_enc = best_pair(ours, base_with_encode, repeat)
        rows.append(
            {
                "bench": "extract_chain",
                "size": label,
                "blocks": depth,
                "ours_us": t_ours * 1e6,
                "baseline": "xxh64 loop over the same byte slices",
                "baseline_us": t_base * 1e6,
                "ratio": t_ours / t_base,
                "ratio_vs_hash_only": t_ours / t_hash,
                "ratio_vs_encode_and_loop": t_ours / t_enc,
                "target": TARGET_RATIO if "target" in label else None,
                "mb_per_s": len(data[: depth * w]) / t_ours / 1e6,
            }
        )
    return rows


def bench_extract_token_chain(repeat: int, rng: random.Random) -> list[Row]:
    rows: list[Row] = []
    np_rng = np.random.default_rng(rng.randrange(2**32))
    block = 16
    for n, label in [
        (1_024, "10^3 tokens"),
        (10_240, "10^4 tokens"),
        (32_768, "32,768 tokens (target)"),
        (102_400, "10^5 tokens"),
    ]:
        arr = np_rng.integers(0, 150_000, size=n, dtype=np.int32)
        as_list = arr.tolist()
        rows_view = arr.reshape(-1, block)
        raw = arr.tobytes()
        width = 4 * block

        def ours(arr: np.ndarray[Any, Any] = arr) -> object:
            return extract_token_chain("bench-model", arr, block_tokens=block)

        def ours_list(as_list: list[int] = as_list) -> object:
            return extract_token_chain("bench-model", as_list, block_tokens=block)

        def base_rows(rows_view: np.ndarray[Any, Any] = rows_view) -> object:
            return [xxh64_intdigest(r) for r in rows_view]

        def base_rows_xxh3(rows_view: np.ndarray[Any, Any] = rows_view) -> object:
            return [xxh3_64_intdigest(r) for r in rows_view]

        def base_slices(raw: bytes = raw, width: int = width) -> object:
            return [xxh64_intdigest(raw[o : o + width]) for o in range(0, len(raw), width)]

        t_ours, t_base = best_pair(ours, base_rows, repeat)
        _, t_x3 = best_pair(ours, base_rows_xxh3, repeat)
        _, t_sl = best_pair(ours, base_slices, repeat)
        t_list, t_base2 = best_pair(ours_list, base_rows, repeat)
        common = {
            "bench": "extract_token_chain",
            "size": label,
            "blocks": n // block,
            "baseline": "xxh64 loop over arr.reshape(-1, 16) rows",
        }
        rows.append(
            {
                **common,
                "input": "int32 array",
                "ours_us": t_ours * 1e6,
                "baseline_us": t_base * 1e6,
                "ratio": t_ours / t_base,
                "ratio_vs_xxh3_rows": t_ours / t_x3,
                "ratio_vs_byte_slices": t_ours / t_sl,
                "target": TARGET_RATIO if "target" in label else None,
                "mtokens_per_s": n / t_ours / 1e6,
            }
        )
        rows.append(
            {
                **common,
                "input": "list of int",
                "ours_us": t_list * 1e6,
                "baseline_us": t_base2 * 1e6,
                "ratio": t_list / t_base2,
                "target": None,
                "mtokens_per_s": n / t_list / 1e6,
            }
        )
    return rows


def machine() -> dict[str, str]:
    """Machine and versions, for the results table."""
    return {
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical CPUs)",
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "xxhash": xxhash.VERSION,
    }


def run(
    report: Callable[[str], object] | None = None, *, repeat: int = 25, seed: int = 0
) -> list[Row]:
    """Run every chain benchmark; return one dict per measurement.

    Args:
        report: called with a one-line summary after each measurement (e.g. ``print``).
        repeat: rounds per measurement (best round wins).
        seed: seeds every input.

    Keys of each row: ``bench``, ``size``, ``blocks``, ``ours_us``, ``baseline``,
    ``baseline_us``, ``ratio`` (ours / baseline), ``target`` (the issue's ratio target or
    ``None``) and extra ratios against secondary baselines.
    """
    rng = random.Random(seed)
    rows: list[Row] = []
    for bench in (bench_extract_chain, bench_extract_token_chain):
        for row in bench(repeat, rng):
            rows.append(row)
            if report is not None:
                target = row["target"]
                verdict = ""
                if target is not None:
                    verdict = " OK" if row["ratio"] <= target else " MISSED"
                report(
                    f"{row['bench']:<20} {row['size']:<24} {row.get('input', ''):<12}"
                    f" ours {row['ours_us']:9.1f} us  baseline {row['baseline_us']:9.1f} us"
                    f"  ratio {row['ratio']:.2f}"
                    + (f" (target <= {target}){verdict}" if target is not None else "")
                )
    return rows


def to_markdown(rows: list[Row]) -> str:
    """The results as Markdown: machine and versions, then one table per benchmark."""
    m = machine()
    out = [
        "### Chain hashing (`benchmarks/bench_chain.py`)",
        "",
        f"Machine: {m['cpu']}; {m['os']}. Python {m['python']}, numpy {m['numpy']}, "
        f"xxhash {m['xxhash']}. Best of 25 interleaved rounds of ~3 ms; ratio = library / baseline "
        "in the same run.",
        "",
        "`extract_chain` (256-byte windows) against an `xxh64_intdigest` loop over the same "
        "byte slices (already encoded); `vs hash-only`: hashing pre-sliced blocks (no "
        "slicing); `vs encode+loop`: the baseline plus encoding the whole prompt to UTF-8.",
        "",
        "| prompt | blocks | extract_chain (us) | baseline (us) | ratio | vs hash-only "
        "| vs encode+loop | MB/s | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["bench"] != "extract_chain":
            continue
        target = "" if r["target"] is None else f"<= {r['target']}"
        out.append(
            f"| {r['size']} | {r['blocks']} | {r['ours_us']:.1f} | {r['baseline_us']:.1f} "
            f"| **{r['ratio']:.2f}** | {r['ratio_vs_hash_only']:.2f} "
            f"| {r['ratio_vs_encode_and_loop']:.2f} | {r['mb_per_s']:.0f} "
            f"| {target} |"
        )
    out += [
        "",
        "`extract_token_chain` (16 tokens per block) against an `xxh64_intdigest` loop over "
        "the int32 array's rows (`arr.reshape(-1, 16)`); secondary: xxh3 over rows, xxh64 "
        "over `bytes` slices of `arr.tobytes()`.",
        "",
        "| tokens | input | blocks | extract_token_chain (us) | baseline (us) | ratio "
        "| vs xxh3 rows | vs byte slices | Mtokens/s | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["bench"] != "extract_token_chain":
            continue
        target = "" if r["target"] is None else f"<= {r['target']}"
        x3 = f"{r['ratio_vs_xxh3_rows']:.2f}" if "ratio_vs_xxh3_rows" in r else ""
        sl = f"{r['ratio_vs_byte_slices']:.2f}" if "ratio_vs_byte_slices" in r else ""
        out.append(
            f"| {r['size']} | {r['input']} | {r['blocks']} | {r['ours_us']:.1f} "
            f"| {r['baseline_us']:.1f} | **{r['ratio']:.2f}** | {x3} | {sl} "
            f"| {r['mtokens_per_s']:.1f} | {target} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    rows = run(report=lambda line: print(line, file=sys.stderr))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
