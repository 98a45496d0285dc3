"""The command-line flags ``clusterrouting-replay`` and its subcommands share: those that
fit the simulated cluster to a trace's shape, and the policies to replay."""

from __future__ import annotations

import argparse
from typing import get_args

from prefixcache.replay._cluster import DEFAULT_CLUSTER
from prefixcache.replay._policies import POLICY_NAMES
from prefixcache.replay._trace import TimeUnit

__all__ = ["add_trace_shape_args", "cache_blocks_arg", "policies_arg"]


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
