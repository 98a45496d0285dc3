"""``clusterrouting-replay``: the command line of the replay."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache.replay._args import (
    add_trace_shape_args,
    load_trace_reporting,
    policies_arg,
    report_block_size,
)
from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._policies import KV_EVENT_PAIRS, POLICY_NAMES
from prefixcache.replay._report import (
    DEFAULT_TARGET_LOAD,
    auto_speedup,
    format_kv_events,
    format_table,
    plot_result,
    run_replay,
)
from prefixcache.replay._synth import eviction_case
from prefixcache.replay._trace import BUNDLED_TRACE, Request

__all__ = ["BUNDLED_TRACE", "main"]


def _positive(flag: str, what: str = "a number") -> Callable[[str], float]:
    """An argparse type: ``flag``'s value as a finite float > 0, or a usage error."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: not {what}: {text!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number > 0, got {text}")
        return v

    return parse


def _speedup(text: str) -> float | None:
    return None if text.lower() == "auto" else _positive("--speedup", "a number or 'auto'")(text)


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULT_CLUSTER
    p = argparse.ArgumentParser(
        prog="clusterrouting-replay",
        epilog="Also: 'clusterrouting-replay tune ...' (seeded search over a policy's "
        "parameters) and 'clusterrouting-replay claim' (every policy on the claim's cases); "
        "each takes --help.",
        description=(
            "Replay a Mooncake-format JSONL trace through a simulated inference cluster under "
            "each routing policy and report block hit ratio, TTFT, balance and the library's "
            "routing speed. Defaults model 8 servers (8xH100, 70B model, FP8 KV cache with "
            "host-DRAM offload); see docs/replay.md in the source repository."
        ),
    )
    p.add_argument(
        "trace",
        nargs="?",
        default=None,
        help="JSONL trace (plain or .gz); default: the bundled Mooncake conversation trace",
    )
    p.add_argument(
        "--policies",
        type=policies_arg,
        default=list(POLICY_NAMES),
        help=f"comma-separated or 'all' (default): {','.join(POLICY_NAMES)}",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=d.replicas,
        help=f"replicas (servers) in the cluster (default {d.replicas})",
    )
    add_trace_shape_args(p)
    p.add_argument(
        "--prefill-rate",
        type=float,
        default=d.prefill_tokens_per_s,
        help=f"prefill tokens/s per replica (default {d.prefill_tokens_per_s:g})",
    )
    p.add_argument(
        "--decode-rate",
        type=float,
        default=d.decode_tokens_per_s,
        help=f"decode tokens/s per request (default {d.decode_tokens_per_s:g})",
    )
    p.add_argument(
        "--kv-bytes-per-token",
        type=int,
        default=d.kv_bytes_per_token,
        help=f"KV bytes per token, for free-VRAM reporting (default {d.kv_bytes_per_token})",
    )
    p.add_argument(
        "--chars-per-token",
        type=int,
        default=d.chars_per_token,
        help="characters per token of the stand-in text the character-based peers match "
        f"(default {d.chars_per_token}, llm-d's constant; 1: the fact sheet's C = T run)",
    )
    p.add_argument(
        "--speedup",
        type=_speedup,
        default=None,
        help="divide arrival times by this; 'auto' (default) sets the load from --target-load",
    )
    p.add_argument(
        "--target-load",
        type=float,
        default=DEFAULT_TARGET_LOAD,
        help="with --speedup auto: prompt tokens offered as a fraction of the "
        f"cluster's prefill capacity (default {DEFAULT_TARGET_LOAD})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random policy (default 0)")
    p.add_argument(
        "--observe",
        choices=("dispatch", "completion"),
        default=None,
        help="when indexing policies record a placement (default: each policy's "
        "own: prefix/federation at completion, cache-cost at dispatch)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=d.max_batch_tokens,
        help=f"engine token budget per step (default {d.max_batch_tokens})",
    )
    p.add_argument(
        "--max-running",
        type=int,
        default=d.max_running,
        help=f"engine's most running requests (default {d.max_running})",
    )
    p.add_argument(
        "--decode-s-per-request",
        type=float,
        default=d.decode_s_per_request,
        help=f"step time per decoding request, s (default {d.decode_s_per_request:g})",
    )
    p.add_argument(
        "--decode-s-per-context-token",
        type=float,
        default=d.decode_s_per_context_token,
        help=f"step time per context token read, s (default {d.decode_s_per_context_token:g})",
    )
    p.add_argument(
        "--slo",
        type=_positive("--slo", "a number of seconds"),
        default=None,
        metavar="SECONDS",
        help="also report the share of requests whose TTFT is within SECONDS",
    )
    p.add_argument(
        "--kv-events",
        action="store_true",
        help="compare approximate policies with their engine-event (precise) counterparts "
        "on the trace and on a synthetic trace whose working set is near the KV capacity",
    )
    p.add_argument(
        "--kv-event-delay",
        type=float,
        default=d.kv_event_delay_s,
        help=f"engine event delay, s (default {d.kv_event_delay_s:g})",
    )
    p.add_argument(
        "--kv-event-loss",
        type=float,
        default=d.kv_event_loss,
        help="probability that an engine event batch is lost (default 0)",
    )
    p.add_argument(
        "--restart-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="restart one engine (in turn) every SECONDS of simulated time: its cache is "
        "emptied and its event publisher starts again at seq 0",
    )
    p.add_argument(
        "--decision-log",
        metavar="FILE.jsonl",
        default=None,
        help="write sampled decisions of cache-cost, cache-cost-precise and prefix with "
        "their explanations (one JSON object per line; counts only, no prompt content)",
    )
    p.add_argument(
        "--decision-every",
        type=int,
        default=100,
        metavar="N",
        help="with --decision-log: explain every N-th request (default 100)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="draw hit ratio and TTFT per policy (needs matplotlib)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


class _Progress:
    """A one-line progress bar on a terminal; one line per policy otherwise. When policies
    replay in worker processes, each is heard of once, finished; its time is then the time
    since the previous line (``n_policies=0``: count unknown)."""

    def __init__(self, stream: TextIO, n_policies: int) -> None:
        self._s = stream
        self._tty = stream.isatty()
        self._n = n_policies
        self._k = 0
        self._cur: str | None = None
        self._t0 = time.perf_counter()
        self._last = self._t0

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self._cur:
            self._cur = name
            self._k += 1
            self._t0 = self._last if done >= total else time.perf_counter()
        if done >= total:
            self._last = time.perf_counter()
        frac = done / total if total else 1.0
        if self._tty:
            width = 30
            fill = int(frac * width)
            bar = "#" * fill + "." * (width - fill)
            of = f"{self._k}/{self._n}" if self._n else str(self._k)
            self._s.write(f"\r[{of}] {name:<13} [{bar}] {frac:6.1%} {done}/{total}")
            if done >= total:
                self._s.write(f" {time.perf_counter() - self._t0:.1f}s\n")
            self._s.flush()
        elif done >= total:
            of = f"{self._k}/{self._n}" if self._n else str(self._k)
            self._s.write(
                f"[{of}] {name}: {total} requests replayed in "
                f"{time.perf_counter() - self._t0:.1f}s\n"
            )
            self._s.flush()


def _restarts(
    every: float | None,
    requests: Sequence[Request],
    model: ClusterModel,
    speedup: float | None,
    target_load: float,
) -> tuple[tuple[float, int], ...]:
    """``--restart-every``: a restart every ``every`` simulated seconds until the last
    arrival (at most 10,000), replicas in turn; none for ``None``."""
    if every is None:
        return ()
    if not (every > 0 and math.isfinite(every)):
        raise InvalidRecordError("restart_every", every, "must be > 0")
    sp = speedup if speedup is not None else auto_speedup(requests, model, target_load=target_load)
    end = requests[-1].arrival / sp if requests else 0.0
    out = []
    k = 1
    while k * every <= end and k <= 10_000:
        out.append((k * every, (k - 1) % model.replicas))
        k += 1
    return tuple(out)


def _model(args: argparse.Namespace, requests: Sequence[Request]) -> ClusterModel:
    restarts = _restarts(
        args.restart_every,
        requests,
        ClusterModel(replicas=args.replicas, prefill_tokens_per_s=args.prefill_rate),
        args.speedup,
        args.target_load,
    )
    return ClusterModel(
        replicas=args.replicas,
        cache_blocks=args.cache_blocks,
        block_tokens=args.block_tokens,
        prefill_tokens_per_s=args.prefill_rate,
        decode_tokens_per_s=args.decode_rate,
        kv_bytes_per_token=args.kv_bytes_per_token,
        chars_per_token=args.chars_per_token,
        max_batch_tokens=args.max_batch_tokens,
        max_running=args.max_running,
        decode_s_per_request=args.decode_s_per_request,
        decode_s_per_context_token=args.decode_s_per_context_token,
        kv_event_delay_s=args.kv_event_delay,
        kv_event_loss=args.kv_event_loss,
        restarts=restarts,
    )


def _kv_events(
    args: argparse.Namespace, requests: Sequence[Request], name: str, model: ClusterModel
) -> int:
    names = [n for pair in KV_EVENT_PAIRS for n in pair]
    cases: list[tuple[str, Sequence[Request], ClusterModel, float | None]] = [
        (name, requests, model, args.speedup)
    ]
    ev_reqs, ev_model = eviction_case(seed=args.seed)
    ev_model = attrs.evolve(
        ev_model,
        kv_event_delay_s=model.kv_event_delay_s,
        kv_event_loss=model.kv_event_loss,
        restarts=_restarts(args.restart_every, ev_reqs, ev_model, None, args.target_load),
    )
    cases.append(("synthetic, working set ~ KV capacity", ev_reqs, ev_model, None))
    results = []
    progress = None if args.no_progress else _Progress(sys.stderr, len(names) * len(cases))
    try:
        for case, reqs, m, sp in cases:
            results.append(
                run_replay(
                    reqs,
                    trace_name=case,
                    model=m,
                    policies=names,
                    speedup=sp,
                    target_load=args.target_load,
                    seed=args.seed,
                    progress=progress,
                    slo_s=args.slo,
                )
            )
    except ClusterRoutingError as exc:
        print(f"clusterrouting-replay: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"kv_events": [r.to_json() for r in results]}))
    else:
        print(
            f"engine events: delay {model.kv_event_delay_s:g}s, loss "
            f"{model.kv_event_loss:g}, restarts {len(model.restarts)}"
        )
        print(format_kv_events(results))
    return 0


def _claim_main(argv: Sequence[str]) -> int:
    from prefixcache.replay._claim import (
        format_claim,
        format_seeds,
        plot_claim,
        run_claim,
        run_seeds,
    )

    p = argparse.ArgumentParser(
        prog="clusterrouting-replay claim",
        description="Every policy on the claim's cases (bundled trace, shared-prefix shapes, "
        "synthetic traces, eviction case); prints Markdown tables.",
    )
    p.add_argument("--plot", metavar="FILE.png", default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--seeds",
        type=int,
        default=0,
        metavar="N",
        help="also replay the generated cases (shared-prefix shapes, synthetic chat, eviction "
        "case) for seeds 0..N-1 and print their means over the seeds (default 0: off)",
    )
    args = p.parse_args(list(argv))
    if args.seeds < 0:
        p.error("--seeds must be >= 0")
    results = run_claim(progress=None if args.no_progress else _Progress(sys.stderr, 0))
    print(format_claim(results))
    if args.seeds:
        per_seed = run_seeds(
            range(args.seeds), progress=None if args.no_progress else _Progress(sys.stderr, 0)
        )
        print()
        print(format_seeds(per_seed))
    if args.plot is not None:
        plot_claim(results, args.plot)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``clusterrouting-replay`` and of its subcommands ``tune``
    (``prefixcache.replay._tune``), ``claim`` and ``grid`` (``prefixcache.replay._grid``);
    returns the exit status (0 ok, 2 usage, 1 bad trace or model)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tune"]:
        from prefixcache.replay._tune import tune_main

        return tune_main(argv[1:])
    if argv[:1] == ["claim"]:
        return _claim_main(argv[1:])
    if argv[:1] == ["grid"]:
        from prefixcache.replay._grid import grid_main

        return grid_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    path = Path(args.trace) if args.trace is not None else BUNDLED_TRACE
    try:
        requests = load_trace_reporting(
            path, prog="clusterrouting-replay", time_unit=args.time_unit
        )
        model = _model(args, requests)
        report_block_size(requests, model, prog="clusterrouting-replay")
    except FileNotFoundError:
        hint = "" if args.trace else " (the bundled trace lives in the repository's data/)"
        print(f"clusterrouting-replay: no such trace file: {path}{hint}", file=sys.stderr)
        return 1
    except (ClusterRoutingError, OSError) as exc:
        print(f"clusterrouting-replay: {exc}", file=sys.stderr)
        return 1
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "clusterrouting-replay: --plot needs matplotlib: "
                "pip install 'clusterrouting[plot]'",
                file=sys.stderr,
            )
            return 1
    if args.kv_events:
        return _kv_events(args, requests, path.name, model)
    progress = None if args.no_progress else _Progress(sys.stderr, len(args.policies))
    log_fh = None
    if args.decision_log is not None:
        try:
            log_fh = open(args.decision_log, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            print(f"clusterrouting-replay: --decision-log: {exc}", file=sys.stderr)
            return 1

    def sink(record: dict[str, Any]) -> None:
        assert log_fh is not None
        log_fh.write(json.dumps(record, sort_keys=True) + "\n")

    try:
        result = run_replay(
            requests,
            trace_name=path.name,
            model=model,
            policies=args.policies,
            speedup=args.speedup,
            target_load=args.target_load,
            seed=args.seed,
            observe_at=args.observe,
            progress=progress,
            slo_s=args.slo,
            on_decision=None if log_fh is None else sink,
            decision_every=args.decision_every,
        )
    except ClusterRoutingError as exc:
        print(f"clusterrouting-replay: {exc}", file=sys.stderr)
        return 1
    finally:
        if log_fh is not None:
            log_fh.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=None, sort_keys=False))
    else:
        print(format_table(result))
    if args.plot is not None:
        plot_result(result, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0
