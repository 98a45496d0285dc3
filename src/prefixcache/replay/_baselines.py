"""The replay's base policy and its baselines: round-robin, random, least-loaded, and the
reference router's two policies (``prefix``, ``federation``), each driven only through the
public API."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal

from clusterrouting import ReplicaCandidate, pick_best_replica, pick_with_affinity
from prefixcache.replay._peer_base import REPLAY_MODEL
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "BasePolicy",
    "DecisionSink",
    "FederationPolicy",
    "LeastLoadedPolicy",
    "ObserveAt",
    "PrefixPolicy",
    "RandomPolicy",
    "RoundRobinPolicy",
    "candidates_of",
]

ObserveAt = Literal["dispatch", "completion"]

DecisionSink = Callable[[dict[str, Any]], None]
"""Receives one sampled decision record (see :func:`run_replay`'s ``on_decision``)."""


class BasePolicy:
    """What every replay policy shares: its name, observation point, the decision log
    and no-op event callbacks."""

    name = "base"
    observe_at: str = "-"
    #: Explain every ``log_every``-th decision into ``log_sink`` (0: never). Policies
    #: built on ``pick_lowest_cost`` or ``select`` support it.
    log_every: int = 0
    log_sink: DecisionSink | None = None

    def _log(self, i: int, request: Request, now: float, explanation: dict[str, Any]) -> None:
        if self.log_sink is not None:
            self.log_sink(
                {
                    "policy": self.name,
                    "request": i,
                    "time_s": now,
                    "prompt_tokens": request.input_tokens,
                    "prompt_blocks": len(request.blocks),
                    "explanation": explanation,
                }
            )

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        pass


def candidates_of(view: ClusterView) -> list[ReplicaCandidate]:
    ids = view.node_ids
    inf = view.in_flight
    lu = view.last_used
    return [
        ReplicaCandidate(
            node_id=ids[k],
            replica_index=k,
            in_flight=inf[k],
            last_used=lu[k],
            available_vram=view.free_kv_bytes(k),
        )
        for k in range(len(ids))
    ]


class RoundRobinPolicy(BasePolicy):
    """Replica ``i mod N`` for the i-th request: the load-blind, cache-blind baseline."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        r = self._next % view.replicas
        self._next = r + 1
        return r


class RandomPolicy(BasePolicy):
    """A uniformly random replica from ``random.Random(seed)``."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        return self._rng.randrange(view.replicas)


class LeastLoadedPolicy(BasePolicy):
    """``clusterrouting.pick_best_replica``: least in-flight, then oldest last use, then VRAM."""

    name = "least-loaded"

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        best = pick_best_replica(candidates_of(view))
        assert best is not None
        return best.replica_index


class _IndexPolicy(BasePolicy):
    """Shared upkeep of a ``prefixcache.Index``: observe at dispatch or at completion, and
    the eviction sweep a host's ticker runs every ``ttl / 2`` of (simulated) time."""

    def __init__(self, observe_at: ObserveAt) -> None:
        from prefixcache import DEFAULT_CONFIG, Index, ReplicaKey

        self.config = DEFAULT_CONFIG
        self.index = Index(DEFAULT_CONFIG)
        self.observe_at: str = observe_at
        self._period = DEFAULT_CONFIG.ttl / 2 if DEFAULT_CONFIG.ttl > 0 else 60.0
        self._next_sweep: float | None = None
        self._keys: list[ReplicaKey] = []
        self._key_cls = ReplicaKey

    def _ensure_keys(self, view: ClusterView) -> None:
        if len(self._keys) != view.replicas:
            self._keys = [self._key_cls(nid, 0) for nid in view.node_ids]

    def _observe(self, request: Request, replica: int, now: float) -> None:
        self.index.observe(REPLAY_MODEL, request.blocks, self._keys[replica], now)
        if self._next_sweep is None:
            self._next_sweep = now + self._period
        elif now >= self._next_sweep:
            self.index.evict(now)
            self._next_sweep = now + self._period

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        if self.observe_at == "dispatch":
            self._observe(request, replica, now)

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        if self.observe_at == "completion":
            self._observe(request, replica, now)


class PrefixPolicy(_IndexPolicy):
    """The reference behaviour: ``Index.decide`` + ``select`` with the default ``Config``,
    observing after the serve completes (or at dispatch when asked)."""

    name = "prefix"

    def __init__(self, observe_at: ObserveAt = "completion") -> None:
        super().__init__(observe_at)
        from prefixcache import Candidate, select

        self._cand_cls = Candidate
        self._select = select

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self._ensure_keys(view)
        keys = self._keys
        inf = view.in_flight
        cand = self._cand_cls
        cands = [cand(keys[k], inf[k]) for k in range(len(keys))]
        decision = self.index.decide(REPLAY_MODEL, request.blocks, cands, now)
        key = self._select(cands, decision, self.config)
        assert key is not None
        if self.log_every and i % self.log_every == 0:
            from prefixcache._explain import explain_select

            e = explain_select(cands, decision, self.config)
            assert e.chosen == key
            self._log(i, request, now, e.to_json())
        return keys.index(key)


class FederationPolicy(_IndexPolicy):
    """The federation router: ``affinity_preferred`` + ``pick_with_affinity`` with
    ``slack=balance_abs_threshold``, observing after the serve (or at dispatch)."""

    name = "federation"

    def __init__(self, observe_at: ObserveAt = "completion") -> None:
        super().__init__(observe_at)
        from prefixcache import affinity_preferred

        self._preferred = affinity_preferred

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        self._ensure_keys(view)
        cands = candidates_of(view)
        pref = self._preferred(self.index, REPLAY_MODEL, request.blocks, cands, self.config, now)
        best = pick_with_affinity(cands, pref, slack=self.config.balance_abs_threshold)
        assert best is not None
        return best.replica_index
