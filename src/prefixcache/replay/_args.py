"""The command-line flags ``clusterrouting-replay`` and its subcommands share: those that
fit the simulated cluster to a trace's shape, and the policies to replay."""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from clusterrouting import InvalidRecordError
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._policies import POLICY_NAMES
from prefixcache.replay._trace import Request, TimeUnit, TraceRekeyedWarning, load_trace

__all__ = [
    "add_trace_shape_args",
    "block_size_note",
    "cache_blocks_arg",
    "load_trace_reporting",
    "policies_arg",
    "report_block_size",
]


def load_trace_reporting(path: Path, *, prog: str, time_unit: TimeUnit = "ms") -> list[Request]:
    """:func:`load_trace` for a command: a :class:`TraceRekeyedWarning` is printed to stderr
    as ``<prog>: warning: ...`` (a command's own message, not Python's warning with a
    source line); other warnings are shown as usual.

    Raises:
        InvalidRecordError: the trace has no requests (a report of nothing but NaNs would
            say nothing about the policies).
        FileNotFoundError, OSError: as :func:`load_trace`; and what it raises for a bad line.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceRekeyedWarning)
        requests = load_trace(path, time_unit=time_unit)
    for w in caught:
        if issubclass(w.category, TraceRekeyedWarning):
            print(f"{prog}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    if not requests:
        raise InvalidRecordError("requests", 0, f"{path.name} has no requests: nothing to replay")
    return requests


def block_size_note(
    requests: Sequence[Request], *, block_tokens: int, cache_blocks: int | None
) -> str | None:
    """A warning when the trace's prompt tokens per hash id (the median over the requests
    with ids) are under half or over twice ``block_tokens``, naming the flags that would
    fit: the power of two nearest that median, and ``cache_blocks`` scaled to the same KV
    capacity in tokens (rounded up: no cache stays none, a part of a block is one).
    ``None`` when the sizes agree, or the trace has no ids.

    A trace's ids each stand for ``block_tokens`` tokens of the prompt (its last one for
    the remainder), so a Mooncake trace with 512-token blocks has about 500 per id; a
    trace written with 16- or 32-token blocks replayed at 512 would credit each cached id
    with 512 tokens.

    >>> from prefixcache.replay import Request
    >>> r = [Request(arrival=0, input_tokens=100, output_tokens=1, blocks=(1, 2, 3))]
    >>> print(block_size_note(r, block_tokens=512, cache_blocks=16384))
    ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    the trace has a median of 33 prompt tokens per hash id, ... pass --block-tokens 32
    --cache-blocks 262144 (the same KV capacity in tokens)
    >>> block_size_note(r, block_tokens=32, cache_blocks=16384) is None
    True
    """
    per_id = [r.input_tokens / len(r.blocks) for r in requests if r.blocks]
    if not per_id:
        return None
    median = statistics.median(per_id)
    if block_tokens / 2 <= median <= 2 * block_tokens:
        return None
    fit = 2 ** max(0, round(math.log2(max(median, 1.0))))
    flags = f"--block-tokens {fit}"
    if cache_blocks is not None:  # rounded up: a cache of a few tokens keeps one block
        flags += f" --cache-blocks {-(-cache_blocks * block_tokens // fit)}"
    return (
        f"the trace has a median of {median:.0f} prompt tokens per hash id, but "
        f"--block-tokens is {block_tokens} (tokens per id): if its ids are {fit}-token "
        f"blocks, pass {flags} (the same KV capacity in tokens)"
    )


def report_block_size(requests: Sequence[Request], model: ClusterModel, *, prog: str) -> None:
    """Print :func:`block_size_note`'s warning for ``model``'s block size and cache, if
    any, to stderr as ``<prog>: warning: ...``; the replay runs on as asked."""
    note = block_size_note(
        requests, block_tokens=model.block_tokens, cache_blocks=model.cache_blocks
    )
    if note is not None:
        print(f"{prog}: warning: {note}", file=sys.stderr)


def cache_blocks_arg(text: str) -> int | None:
    """``--cache-blocks``: an int >= 0, or ``inf`` / ``infinite`` / ``none`` (unbounded)."""
    if text.lower() in ("inf", "infinite", "none"):
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--cache-blocks: not an integer or 'inf': {text!r}"
        ) from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"--cache-blocks must be >= 0, got {v}")
    return v


def add_trace_shape_args(p: argparse.ArgumentParser, *, time_unit: bool = True) -> None:
    """Add ``--cache-blocks``, ``--block-tokens`` (the trace's tokens per hash id) and, with
    ``time_unit``, ``--time-unit`` (its timestamps' unit, which only a numeric speed-up
    depends on) to ``p``."""
    d = DEFAULT_CLUSTER
    p.add_argument(
        "--cache-blocks",
        type=cache_blocks_arg,
        default=d.cache_blocks,
        help=f"KV cache per replica in blocks, LRU; 'inf' = unbounded (default {d.cache_blocks})",
    )
    p.add_argument(
        "--block-tokens",
        type=int,
        default=d.block_tokens,
        help=f"tokens per trace block id (default {d.block_tokens})",
    )
    if not time_unit:
        return
    p.add_argument(
        "--time-unit",
        choices=get_args(TimeUnit),
        default="ms",
        help="unit of the trace's timestamps (default ms); only a numeric --speedup depends on it",
    )


def policies_arg(text: str) -> list[str]:
    """``--policies``: ``all``, or comma-separated names from ``POLICY_NAMES``, each once
    (argparse names the flag in its error)."""
    if text.strip() == "all":
        return list(POLICY_NAMES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError("empty list")
    bad = [n for n in names if n not in POLICY_NAMES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(bad)}; choose from {', '.join(POLICY_NAMES)}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(twice)} named more than once")
    return names
