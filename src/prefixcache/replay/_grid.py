"""``clusterrouting-replay grid``: one trace replayed over cluster sizes and loads.

Each cell is a full replay of the trace with every policy on the default cluster with that
many replicas, at that load (``--speedup auto``), and the report says per cell where one
policy (the default one unless told) places among the balanced ones, as the claim's summary
does, then counts the cells it leads. A policy chosen on one configuration may not hold at
another: a gateway that grows from 4 replicas to 16, or whose traffic doubles, replays the
trace here before it relies on the choice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache.replay._args import (
    add_trace_shape_args,
    load_trace_reporting,
    policies_arg,
    report_block_size,
)
from prefixcache.replay._claim import SUMMARY_HEADER, CaseSummary, summarize, summary_row
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._policies import POLICY_NAMES
from prefixcache.replay._report import BALANCE_LIMIT, DEFAULT_POLICY, ReplayResult, run_replay
from prefixcache.replay._trace import Request

__all__ = [
    "DEFAULT_GRID_LOADS",
    "DEFAULT_GRID_REPLICAS",
    "GRID_SCHEMA_VERSION",
    "GridCell",
    "format_grid",
    "grid_main",
    "grid_to_json",
    "run_grid",
]

DEFAULT_GRID_REPLICAS: tuple[int, ...] = (2, 4, 8, 16)
"""``--replicas`` of ``grid`` by default."""

DEFAULT_GRID_LOADS: tuple[float, ...] = (0.5, 0.8, 1.0, 1.2)
"""``--target-load`` of ``grid`` by default: light, the replay's default, saturated and
overloaded (prompt tokens offered over the cluster's prefill capacity)."""


GRID_SCHEMA_VERSION = 1
"""Version of the ``grid --json`` document (:func:`grid_to_json`)."""


def _check_replicas(_inst: object, _attr: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRecordError("replicas", value, "each must be an int >= 1")


def _check_load(_inst: object, _attr: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidRecordError("target_load", value, "each must be a finite number > 0")


@attrs.frozen(kw_only=True)
class GridCell:
    """One configuration of the grid and its replay.

    Raises:
        InvalidRecordError: ``replicas`` is not an int >= 1, or ``target_load`` not a finite
            number > 0.
    """

    replicas: int = attrs.field(validator=_check_replicas)
    target_load: float = attrs.field(validator=_check_load)
    result: ReplayResult

    @property
    def label(self) -> str:
        """``"4 replicas, load 0.8"``: the cell's name in the report."""
        return f"{self.replicas} replicas, load {self.target_load:g}"


def _check_grid(replicas: Sequence[int], loads: Sequence[float]) -> None:
    if not replicas:
        raise InvalidRecordError("replicas", replicas, "must name at least one cluster size")
    if not loads:
        raise InvalidRecordError("target_load", loads, "must name at least one load")
    for r in replicas:
        _check_replicas(None, None, r)
    for x in loads:
        _check_load(None, None, x)


def run_grid(
    requests: Sequence[Request],
    *,
    trace_name: str = "<memory>",
    replicas: Sequence[int] = DEFAULT_GRID_REPLICAS,
    loads: Sequence[float] = DEFAULT_GRID_LOADS,
    model: ClusterModel = DEFAULT_CLUSTER,
    policies: Sequence[str] = POLICY_NAMES,
    jobs: int | None = None,
    on_cell: Callable[[GridCell], None] | None = None,
) -> list[GridCell]:
    """Replay ``requests`` with ``policies`` on ``model`` with each number of ``replicas``
    at each of ``loads`` (``run_replay``'s ``target_load``); cells in that order, replicas
    outermost. ``on_cell`` hears of each cell as it finishes.

    Raises:
        InvalidRecordError: no requests (nothing to compare), an empty list, a replica
            count that is not an int >= 1, a load that is not a finite number > 0, or what
            ``run_replay`` refuses.
    """
    if not requests:
        raise InvalidRecordError("requests", 0, "the trace has no requests: nothing to compare")
    _check_grid(replicas, loads)
    cells = []
    for r in replicas:
        cluster = attrs.evolve(model, replicas=r)
        for load in loads:
            cell = GridCell(
                replicas=r,
                target_load=float(load),
                result=run_replay(
                    requests,
                    trace_name=trace_name,
                    model=cluster,
                    policies=policies,
                    target_load=load,
                    jobs=jobs,
                ),
            )
            if on_cell is not None:
                on_cell(cell)
            cells.append(cell)
    return cells


def format_grid(cells: Sequence[GridCell], *, policy: str = DEFAULT_POLICY) -> str:
    """A Markdown report: per cell where ``policy`` places among the balanced policies
    (max/mean requests <= 1.15), then a tally of the cells it leads (balanced, the lowest
    mean and p99 of the balanced policies), those where a balanced policy is better on both,
    and those where ``policy`` itself is unbalanced.

    Raises:
        InvalidRecordError: ``policy`` was not replayed.
    """
    if not cells:
        return "no cells"
    first = cells[0].result
    m = first.model
    cache = "unbounded" if m.cache_blocks is None else f"{m.cache_blocks} blocks"
    lines = [
        f"{first.trace}: {first.requests} requests; every cell replays "
        f"{len(first.policies)} policies with the replicas and load shown (auto speed-up), "
        f"KV cache {cache} x {m.block_tokens} tokens per replica.",
        "",
        SUMMARY_HEADER.format(case="replicas, load", policy=policy),
    ]
    summaries: list[CaseSummary] = []
    for cell in cells:
        s = summarize(cell.result, policy=policy)
        summaries.append(s)
        lines.append(summary_row(cell.label, s))
    n = len(cells)
    leads = sum(s.leads for s in summaries)
    beaten = sum(bool(s.better_on_both) for s in summaries)
    unbalanced = sum(not s.ours.balanced for s in summaries)
    lines += [
        "",
        f"{policy} leads (balanced, with the lowest mean and p99 TTFT of the balanced "
        f"policies) in {leads} of {n} cells; a balanced policy is better on both in "
        f"{beaten}; {policy} is unbalanced (max/mean > {BALANCE_LIMIT:g}) in {unbalanced}.",
    ]
    return "\n".join(lines)


def grid_to_json(cells: Sequence[GridCell], *, policy: str = DEFAULT_POLICY) -> dict[str, Any]:
    """The ``grid --json`` document: ``schema_version`` (:data:`GRID_SCHEMA_VERSION`),
    ``policy``, ``leads`` (the cells it leads) and ``cells``, per cell ``replicas``,
    ``target_load``, ``leads``, ``rank_mean`` and ``rank_p99`` (among the balanced
    policies; ``null`` when ``policy`` is not balanced itself), ``better_on_both`` (names)
    and ``result`` (the replay's own ``--json`` document).

    Raises:
        InvalidRecordError: ``policy`` was not replayed.
    """
    out = []
    for cell in cells:
        s = summarize(cell.result, policy=policy)
        ranked = s.ours.balanced
        out.append(
            {
                "replicas": cell.replicas,
                "target_load": cell.target_load,
                "leads": s.leads,
                "rank_mean": s.rank_mean if ranked else None,
                "rank_p99": s.rank_p99 if ranked else None,
                "better_on_both": [p.name for p in s.better_on_both],
                "result": cell.result.to_json(),
            }
        )
    return {
        "schema_version": GRID_SCHEMA_VERSION,
        "policy": policy,
        "leads": sum(c["leads"] for c in out),
        "cells": out,
    }


def _replicas_arg(text: str) -> list[int]:
    """``--replicas``: comma-separated ints >= 1 (argparse names the flag in its error)."""
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"each must be >= 1: {text!r}")
    return out


def _loads_arg(text: str) -> list[float]:
    """``--target-load``: comma-separated finite numbers > 0."""
    bad = f"not a list of finite numbers > 0: {text!r}"
    try:
        out = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(bad) from None
    if not out or not all(0 < x < math.inf for x in out):
        raise argparse.ArgumentTypeError(bad)
    return out


def grid_main(argv: Sequence[str]) -> int:
    """``clusterrouting-replay grid``; returns the exit status (0 ok, 2 usage, 1 error)."""
    p = argparse.ArgumentParser(
        prog="clusterrouting-replay grid",
        description="Replay a trace with every policy over cluster sizes and loads; prints "
        "where a policy places in each cell and how many it leads.",
    )
    p.add_argument("trace", nargs="?", default=None, help="trace (default: the bundled one)")
    p.add_argument(
        "--replicas",
        type=_replicas_arg,
        default=list(DEFAULT_GRID_REPLICAS),
        help=f"comma-separated cluster sizes (default {','.join(map(str, DEFAULT_GRID_REPLICAS))})",
    )
    p.add_argument(
        "--target-load",
        type=_loads_arg,
        default=list(DEFAULT_GRID_LOADS),
        help="comma-separated loads, prompt tokens offered over the prefill capacity "
        f"(default {','.join(f'{x:g}' for x in DEFAULT_GRID_LOADS)})",
    )
    p.add_argument(
        "--policies",
        type=policies_arg,
        default=list(POLICY_NAMES),
        help="comma-separated or 'all' (default)",
    )
    p.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        choices=POLICY_NAMES,
        help=f"the policy whose place is reported (default {DEFAULT_POLICY})",
    )
    add_trace_shape_args(p, time_unit=False)  # the load is always auto: no unit matters
    p.add_argument("--json", action="store_true", help="one JSON document instead of Markdown")
    p.add_argument("--no-progress", action="store_true", help="no line per cell on stderr")
    args = p.parse_args(list(argv))
    if args.policy not in args.policies:
        p.error(f"--policy {args.policy} is not among --policies")
    from prefixcache.replay._trace import BUNDLED_TRACE

    path = Path(args.trace) if args.trace is not None else BUNDLED_TRACE
    n_cells = len(args.replicas) * len(args.target_load)
    t0 = time.perf_counter()
    done = 0

    def progress(cell: GridCell) -> None:
        nonlocal done
        done += 1
        elapsed = time.perf_counter() - t0
        print(f"[{done}/{n_cells}] {cell.label}: {elapsed:.0f}s", file=sys.stderr, flush=True)

    try:
        requests = load_trace_reporting(path, prog="clusterrouting-replay grid")
        model = attrs.evolve(
            DEFAULT_CLUSTER, cache_blocks=args.cache_blocks, block_tokens=args.block_tokens
        )
        report_block_size(requests, model, prog="clusterrouting-replay grid")
        cells = run_grid(
            requests,
            trace_name=path.name,
            replicas=args.replicas,
            loads=args.target_load,
            model=model,
            policies=args.policies,
            on_cell=None if args.no_progress else progress,
        )
    except FileNotFoundError:
        print(f"clusterrouting-replay grid: no such trace file: {path}", file=sys.stderr)
        return 1
    except (ClusterRoutingError, OSError) as exc:
        print(f"clusterrouting-replay grid: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(grid_to_json(cells, policy=args.policy)))
    else:
        print(format_grid(cells, policy=args.policy))
    return 0
