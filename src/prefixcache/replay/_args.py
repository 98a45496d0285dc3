"""The command-line flags ``clusterrouting-replay`` and its subcommands share: those that
fit the simulated cluster to a trace's shape, and the policies to replay."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import get_args

from prefixcache.replay._cluster import DEFAULT_CLUSTER
from prefixcache.replay._policies import POLICY_NAMES
from prefixcache.replay._trace import Request, TimeUnit, TraceRekeyedWarning, load_trace

__all__ = ["add_trace_shape_args", "cache_blocks_arg", "load_trace_reporting", "policies_arg"]


def load_trace_reporting(path: Path, *, prog: str, time_unit: TimeUnit = "ms") -> list[Request]:
    """:func:`load_trace` for a command: a :class:`TraceRekeyedWarning` is printed to stderr
    as ``<prog>: warning: ...`` (a command's own message, not Python's warning with a
    source line); other warnings are shown as usual. Raises what :func:`load_trace` raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TraceRekeyedWarning)
        requests = load_trace(path, time_unit=time_unit)
    for w in caught:
        if issubclass(w.category, TraceRekeyedWarning):
            print(f"{prog}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return requests


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
