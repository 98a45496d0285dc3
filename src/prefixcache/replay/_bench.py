"""Decisions per second of each policy's routing path, for ``make bench``."""

from __future__ import annotations

from collections.abc import Sequence

from prefixcache.replay._cluster import DEFAULT_CLUSTER, ClusterModel
from prefixcache.replay._policies import PEER_POLICIES, POLICY_NAMES, make_policy
from prefixcache.replay._report import auto_speedup
from prefixcache.replay._sim import simulate
from prefixcache.replay._trace import Request, load_trace

__all__ = ["LIBRARY_POLICIES", "bench_policies"]

LIBRARY_POLICIES: tuple[str, ...] = tuple(n for n in POLICY_NAMES if n not in PEER_POLICIES)
"""The policies whose routing path is this library's (the peers' re-implementations are
the replay's, not the library's, so ``make bench`` leaves them out)."""


def bench_policies(
    requests: Sequence[Request] | None = None,
    *,
    policies: Sequence[str] = LIBRARY_POLICIES,
    model: ClusterModel = DEFAULT_CLUSTER,
    repeats: int = 1,
) -> dict[str, float]:
    """Routing decisions per second of each policy on a trace (default: the bundled one).

    Each policy replays the whole trace on the default cluster at the auto speed-up;
    the rate counts only wall time spent inside the policy (its decision, plus the index
    upkeep it does on dispatch, first token and completion), best of ``repeats`` runs.

    Returns:
        ``{policy name: decisions per second}`` in ``policies`` order.
    """
    if requests is None:
        from prefixcache.replay._trace import BUNDLED_TRACE

        requests = load_trace(BUNDLED_TRACE)
    sp = auto_speedup(requests, model)
    out: dict[str, float] = {}
    for name in policies:
        best = 0.0
        for _ in range(max(1, repeats)):
            res = simulate(requests, make_policy(name, model), model, speedup=sp)
            rate = len(requests) / res.routing_s if res.routing_s > 0 else float("inf")
            best = max(best, rate)
        out[name] = best
    return out
