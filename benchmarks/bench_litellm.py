"""Overhead of the LiteLLM plugin against LiteLLM's default ``simple-shuffle``, paired per call.

One ``litellm.Router`` with 2, 4 or 8 deployments (never called: only routing runs)
picks a deployment for each request of a seeded multi-turn workload (``SESSIONS`` sessions
sharing a ~2 kB system prompt, conversations growing turn by turn). Each request is routed
twice, in alternating order: once by LiteLLM alone (``simple-shuffle``; the plugin is not in
``litellm.callbacks``) and once with the plugin installed in filter mode, whose time also
includes its success callback (release, observe, pin). The result is the distribution of
the per-call differences: the target is ``p50(diff) <= 0.15 x p50(simple-shuffle) + 50 us``.

Each call gets its messages freshly decoded from the request's JSON body, untimed, as a
proxy hands them to its router. Reusing one stored list per request instead would leave
the messages out of the CPU caches by the time they are routed, which charges only the
plugin (simple-shuffle never reads them) for cache misses that a proxy, having just
decoded the body, does not have (docs/litellm.md gives the size of that effect).

Run by ``benchmarks/run.py`` (``make bench``) or alone: ``python benchmarks/bench_litellm.py
[--quick]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

DEPLOYMENTS = (2, 4, 8)
SESSIONS = 64
SEED = 20260101
MODEL = "chat"
SYSTEM = "You are a meticulous assistant for a logistics company. " * 36  # ~2 kB


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _workload(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``(session, the request's messages as a JSON body)`` for ``n`` requests."""
    turns: dict[int, list[dict[str, str]]] = {}
    out = []
    for _ in range(n):
        s = rng.randrange(SESSIONS)
        msgs = turns.setdefault(s, [{"role": "system", "content": SYSTEM}])
        msgs.append({"role": "user", "content": f"Session {s}: question {len(msgs)} " * 4})
        out.append((f"session-{s}", json.dumps(msgs)))
        msgs.append({"role": "assistant", "content": f"Answer {len(msgs)}. " * 8})
    return out


async def _measure(n: int, deployments: int) -> dict[str, Any]:
    import litellm
    from litellm import Router

    from prefixcache import SessionPins
    from prefixcache.integrations.litellm import install

    model_list = [
        {
            "model_name": MODEL,
            "litellm_params": {
                "model": f"openai/{MODEL}",
                "api_base": f"http://127.0.0.1:9/v{i}",
                "api_key": "unused",
            },
            "model_info": {"id": f"d{i}"},
        }
        for i in range(deployments)
    ]
    router = Router(model_list=model_list, routing_strategy="simple-shuffle")
    plugin = install(router, pins=SessionPins(ttl=600, max_entries=10_000))
    litellm.callbacks.remove(plugin)  # added back around each plugin call
    pick = router.async_get_available_deployment
    clock = time.perf_counter_ns

    async def route(session: str, messages: list[dict[str, str]]) -> tuple[int, str]:
        kwargs: dict[str, Any] = {"metadata": {"session_id": session}}
        t0 = clock()
        d = await pick(model=MODEL, messages=messages, request_kwargs=kwargs)
        return clock() - t0, d["model_info"]["id"]

    async def routed_and_released(session: str, messages: list[dict[str, str]]) -> int:
        kwargs: dict[str, Any] = {"metadata": {"session_id": session}}
        t0 = clock()
        d = await pick(model=MODEL, messages=messages, request_kwargs=kwargs)
        t1 = clock()
        done = {
            "litellm_params": {"metadata": kwargs["metadata"], "model_info": d["model_info"]},
            "litellm_call_id": "unused",
        }
        t2 = clock()
        await plugin.async_log_success_event(done, None, None, None)
        return (t1 - t0) + (clock() - t2)

    rng = random.Random(SEED)
    work = _workload(n, rng)
    decode = json.loads
    for session, body in work[: min(200, n)]:  # warm both paths
        await route(session, decode(body))
    base: list[float] = []
    ours: list[float] = []
    for i, (session, body) in enumerate(work):
        if i % 2 == 0:
            b, _ = await route(session, decode(body))
            litellm.callbacks.append(plugin)
            o = await routed_and_released(session, decode(body))
            litellm.callbacks.remove(plugin)
        else:
            litellm.callbacks.append(plugin)
            o = await routed_and_released(session, decode(body))
            litellm.callbacks.remove(plugin)
            b, _ = await route(session, decode(body))
        base.append(b / 1e3)
        ours.append(o / 1e3)
    plugin.uninstall()
    diffs = [o - b for o, b in zip(ours, base, strict=True)]
    stats = plugin.stats()
    base_p50 = _percentile(base, 0.5)
    budget = 0.15 * base_p50 + 50.0
    return {
        "deployments": deployments,
        "calls": n,
        "litellm": litellm.__version__ if hasattr(litellm, "__version__") else "?",
        "shuffle_p50_us": base_p50,
        "shuffle_p99_us": _percentile(base, 0.99),
        "plugin_p50_us": _percentile(ours, 0.5),
        "plugin_p99_us": _percentile(ours, 0.99),
        "diff_p50_us": _percentile(diffs, 0.5),
        "diff_p99_us": _percentile(diffs, 0.99),
        "budget_us": budget,
        "within_budget": _percentile(diffs, 0.5) <= budget,
        "decisions": stats.decisions,
        "errors": stats.errors,
    }


def run(report: Callable[[str], None] = print, *, quick: bool = False) -> list[dict[str, Any]]:
    """Measure each size (``quick``: 600 calls, else 3000) and report a line for each."""
    results = []
    for deployments in DEPLOYMENTS:
        r = asyncio.run(_measure(600 if quick else 3000, deployments))
        report(
            f"litellm plugin overhead, {deployments} deployments: diff p50 "
            f"{r['diff_p50_us']:.1f} us (budget {r['budget_us']:.1f} us), p99 "
            f"{r['diff_p99_us']:.1f} us; simple-shuffle p50 {r['shuffle_p50_us']:.1f} us"
        )
        results.append(r)
    return results


def to_markdown(results: list[dict[str, Any]]) -> str:
    """The section ``benchmarks/run.py`` appends to RESULTS.md."""
    from importlib.metadata import version

    out = [
        "## LiteLLM plugin overhead (benchmarks/bench_litellm.py)",
        "",
        f"litellm {version('litellm')}; {results[0]['calls']} calls per row, {SESSIONS} "
        "sessions sharing a ~2 kB system prompt; each call routed by simple-shuffle and by "
        "the plugin (filter mode, routing + success callback), alternating; microseconds "
        "per call. Target: p50 of the paired differences <= 0.15 x simple-shuffle's p50 + "
        "50 us.",
        "",
        "| deployments | simple-shuffle p50 | p99 | plugin p50 | p99 | difference p50 | p99 "
        "| target | |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        ok = "within" if r["within_budget"] else "**over**"
        out.append(
            f"| {r['deployments']} | {r['shuffle_p50_us']:.1f} | {r['shuffle_p99_us']:.1f} "
            f"| {r['plugin_p50_us']:.1f} | {r['plugin_p99_us']:.1f} | {r['diff_p50_us']:.1f} "
            f"| {r['diff_p99_us']:.1f} | {r['budget_us']:.1f} | {ok} |"
        )
    errors = sum(r["errors"] for r in results)
    out += ["", f"Plugin internal errors: {errors}."]
    return "\n".join(out)


if __name__ == "__main__":
    print(to_markdown(run(quick="--quick" in sys.argv[1:])))
