"""The routing policies the replay compares, each driven only through the public API."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from clusterrouting import (
    InvalidRecordError,
    ReplicaCandidate,
    pick_best_replica,
    pick_with_affinity,
)
from prefixcache._hot import (
    DEFAULT_HOT_LOWER,
    DEFAULT_HOT_PER_COPY,
    DEFAULT_SHARED_DEMAND,
    DEFAULT_SHARED_KV_USAGE,
    DEFAULT_SHARED_QUEUE_WEIGHT,
    HotPrefixes,
)
from prefixcache._keys import check_rate
from prefixcache.kvevents import EventBatch
from prefixcache.replay._peer_base import REPLAY_MODEL
from prefixcache.replay._peers import (
    AibrixPrefixCachePolicy,
    DynamoKvPolicy,
    EngineIndex,
    LlmdDefaultPolicy,
    LlmdPrecisePolicy,
    ProdstackLoadAwarePolicy,
    ProdstackPrefixPolicy,
    RayPrefixAffinityPolicy,
    SglangCacheAwarePolicy,
    SmgCacheAwarePolicy,
)
from prefixcache.replay._sim import ClusterModel, ClusterView, ReplayPolicy
from prefixcache.replay._trace import Request

__all__ = [
    "DEFAULT_POLICIES",
    "POLICY_NAMES",
    "KV_EVENT_PAIRS",
    "PEER_POLICIES",
    "CacheCostPolicy",
    "FederationPolicy",
    "HotPrefixes",
    "LeastLoadedPolicy",
    "ObserveAt",
    "PrefixPolicy",
    "RandomPolicy",
    "RoundRobinPolicy",
    "make_policy",
]

ObserveAt = Literal["dispatch", "completion"]

WINDOW_PER_REPLICA = 256
"""``cache-cost`` keeps its last ``256 x replicas`` dispatches for the share price."""

DecisionSink = Callable[[dict[str, Any]], None]
"""Receives one sampled decision record (see :func:`run_replay`'s ``on_decision``)."""


class _Base:
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


def _candidates(view: ClusterView) -> list[ReplicaCandidate]:
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


class RoundRobinPolicy(_Base):
    """Replica ``i mod N`` for the i-th request: the load-blind, cache-blind baseline."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        r = self._next % view.replicas
        self._next = r + 1
        return r


class RandomPolicy(_Base):
    """A uniformly random replica from ``random.Random(seed)``."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        return self._rng.randrange(view.replicas)


class LeastLoadedPolicy(_Base):
    """``clusterrouting.pick_best_replica``: least in-flight, then oldest last use, then VRAM."""

    name = "least-loaded"

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        best = pick_best_replica(_candidates(view))
        assert best is not None
        return best.replica_index


class _IndexPolicy(_Base):
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
        cands = _candidates(view)
        pref = self._preferred(self.index, REPLAY_MODEL, request.blocks, cands, self.config, now)
        best = pick_with_affinity(cands, pref, slack=self.config.balance_abs_threshold)
        assert best is not None
        return best.replica_index


def _check_number(name: str, value: object, hi: float) -> None:
    """Refuse a ``value`` that is not a number in [0, ``hi``] (finite when ``hi`` is not)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= hi
        or value == math.inf
    ):
        bound = "a finite number >= 0" if hi == math.inf else f"a number in [0, {hi:g}]"
        raise InvalidRecordError(name, value, f"must be {bound}")


class CacheCostPolicy(_Base):
    """Ours: ``prefixcache.pick_lowest_cost`` over a ``KvCacheMirror``, with hot prefixes.

    The router mirrors each replica's KV cache (LRU, capacity = the replica's KV blocks,
    which engines report) from what it dispatched, as the engine uses it: a request's prompt
    blocks are pinned from its dispatch to its completion, when they become the most recent
    (``KvCacheMirror.start`` / ``finish``), and each running request also takes the mean
    output blocks of the requests completed so far, rounded to whole blocks (the router
    counts the tokens it streams back; 0 before the first completion), so the mirror evicts
    about when the engine does. It keeps each replica's prefill backlog in tokens: the
    estimated uncached tokens of requests whose first token has not come back yet, and its
    last ``256 x replicas`` dispatches (``DispatchWindow``). A request's deepest block
    cached on some replica is its prefix; ``prefixcache.HotPrefixes`` (over the same
    ``256 x replicas`` dispatches) keeps ``ceil(demand / 0.75)`` warm copies of a prefix
    whose demand exceeds 0.75 of a replica, and every warm replica counts as holding it,
    while every replica holding the prefix has a request in flight (an idle holder keeps
    the prefix's requests: ``HotPrefixes.credit``, which also applies the shared weight
    below; ``hot_overloaded(in_flight, least)`` replaces that test, e.g. by the LiteLLM
    plugin's load guard).
    Each request goes where uncached work + 0.1 x backlog + 64 tokens per in-flight request
    above the least-loaded replica + 32 tokens per dispatch among those last ``256 x
    replicas`` above the least-dispatched replica's is least (no fair-share guard unless
    ``share_factor`` is set); costs within 512 tokens of the least tie, and ties
    go to the replica dispatched to least recently (``tie_rank``), so identical requests
    rotate as round-robin would (``pick_lowest_cost`` defaults). When the request's prefix
    is *shared* (``HotPrefixes.shared``: demand >= ``shared_demand``, 0.25 of a replica),
    some replica does not hold it and every replica's KV usage in the mirror (its running
    requests' blocks over its capacity) is below ``shared_kv_usage`` (0.8), the
    backlog weighs ``shared_queue_weight`` (0.5; ``queue_weight`` if that is larger)
    instead of 0.1: a copy of a shared prefix on one more replica serves many later
    requests and, while the caches have room beside the running requests, pushes out
    little that later requests need, so a busy holder gives way to an idle replica once
    its backlog exceeds the idle one's by about 4k tokens per 2k saved, not 20k. A
    conversation's own history keeps the 0.1 once the window holds a few dispatches per
    replica (its demand is then far below a replica; in the first ``4 x replicas``
    dispatches a prefix seen once already counts as shared). With ``hot_prefixes=False``
    there is no demand, and no request counts as shared.

    Observes at dispatch by default (the router knows what it just sent); with
    ``observe_at="completion"`` (what a gateway learns from success callbacks, as the
    LiteLLM plugin does) the mirror instead records a prompt when its request completes
    (``KvCacheMirror.observe``, no pins), and until then a request's prompt counts as held
    on its replica (an engine keeps a running request's prompt in its KV cache). The
    mirror then pins nothing, so the shared weight's KV-usage gate stays open (as in the
    LiteLLM plugin, which does not see the engines' KV usage).

    The backlog drops a request's tokens at its first token by default. With
    ``prefill_rate`` (tokens per second per replica) the router sees no first token, as the
    LiteLLM plugin (whose callbacks come when a request ends): each replica's backlog
    drains at that rate between decisions, and never exceeds the estimates of its requests
    not yet ended (0 while nothing is in flight there).
    """

    name = "cache-cost"

    def __init__(
        self,
        *,
        capacity_blocks: int | None,
        block_tokens: int,
        observe_at: ObserveAt = "dispatch",
        queue_weight: float | None = None,
        precise: bool = False,
        hot_prefixes: bool = True,
        in_flight_tokens: float | None = None,
        share_tokens: float | None = None,
        share_factor: float | None = None,
        share_slack: int | None = None,
        hot_lower: float = DEFAULT_HOT_LOWER,
        cost_margin: float | None = None,
        hot_per_copy: float = DEFAULT_HOT_PER_COPY,
        shared_queue_weight: float = DEFAULT_SHARED_QUEUE_WEIGHT,
        shared_demand: float = DEFAULT_SHARED_DEMAND,
        shared_kv_usage: float = DEFAULT_SHARED_KV_USAGE,
        hot_overloaded: Callable[[int, int], bool] | None = None,
        prefill_rate: float | None = None,
    ) -> None:
        from prefixcache import (
            DEFAULT_QUEUE_WEIGHT,
            CostCandidate,
            DispatchWindow,
            KvCacheMirror,
            ReplicaKey,
            pick_lowest_cost,
        )

        self.observe_at: str = observe_at
        self._mirror = KvCacheMirror(capacity_blocks=capacity_blocks)
        self._bt = block_tokens
        from prefixcache import (
            DEFAULT_COST_MARGIN,
            DEFAULT_IN_FLIGHT_TOKENS,
            DEFAULT_SHARE_SLACK,
            DEFAULT_SHARE_TOKENS,
        )

        # The cost function's parameters, passed alike to the pick and its explanation.
        self._params: dict[str, Any] = {
            "queue_weight": DEFAULT_QUEUE_WEIGHT if queue_weight is None else queue_weight,
            "in_flight_tokens": (
                DEFAULT_IN_FLIGHT_TOKENS if in_flight_tokens is None else in_flight_tokens
            ),
            "share_tokens": DEFAULT_SHARE_TOKENS if share_tokens is None else share_tokens,
            "share_factor": share_factor,
            "share_slack": DEFAULT_SHARE_SLACK if share_slack is None else share_slack,
            "cost_margin": DEFAULT_COST_MARGIN if cost_margin is None else cost_margin,
        }
        # A request whose deepest cached prefix is shared but not held everywhere.
        for name, v, hi in (
            ("shared_queue_weight", shared_queue_weight, math.inf),
            ("shared_demand", shared_demand, math.inf),
            ("shared_kv_usage", shared_kv_usage, 1.0),
        ):
            _check_number(name, v, hi)
        # Checks every cost and hot-prefix parameter now, not at the first request (no
        # candidates: no pick; the hot-prefix record is sized at the first request).
        pick_lowest_cost([], prompt_tokens=0, **self._params)
        try:
            HotPrefixes(window=1, lower=hot_lower, per_copy=hot_per_copy)
        except InvalidRecordError as exc:  # named as this constructor's parameter
            raise InvalidRecordError(f"hot_{exc.field}", exc.value, exc.reason) from exc
        # A request whose prefix is shared: the backlog weighs at least the shared weight.
        self._shared_params = {
            **self._params,
            "queue_weight": max(self._params["queue_weight"], shared_queue_weight),
        }
        self._shared_demand = shared_demand
        self._hot_overloaded = hot_overloaded
        self._drain = check_rate("prefill_rate", prefill_rate)
        self._drained_at = 0.0
        self._held_est: list[int] = []  # per replica: estimates of requests not yet ended
        self._shared_kv_usage = shared_kv_usage
        self._hot_lower = hot_lower
        self._per_copy = hot_per_copy
        self._cc = CostCandidate
        from prefixcache.kvevents import CacheSource

        self._src = CacheSource
        self._pick = pick_lowest_cost
        self._key_cls = ReplicaKey
        self._window_cls = DispatchWindow
        self._window = DispatchWindow(size=1)
        self._keys: list[ReplicaKey] = []
        self._queued: list[int] = []
        self._est: dict[int, int] = {}
        self._private: dict[int, int] = {}
        self._out_blocks = 0
        self._completed = 0
        self.reads_kv_events = precise
        self.engine_index = EngineIndex()
        # Blocks of the requests in flight per replica: what the engine has not reported
        # yet (precise), or what it holds for them before the mirror learns it at completion.
        self._pending: list[dict[int, int]] = []
        self._tracks_pending = precise or observe_at == "completion"
        self.sources: dict[str, int] = {"events": 0, "mirror": 0}
        self._hot_on = hot_prefixes
        self.hot: HotPrefixes | None = None
        if precise:
            self.name = "cache-cost-precise"

    def on_kv_events(self, replica: int, seq: int, batch: EventBatch, now: float) -> None:
        """Apply an engine event batch (precise variant only)."""
        self.engine_index.apply(replica, seq, batch)

    def _kv_room_everywhere(self) -> bool:
        """Whether every replica's KV usage (running requests' blocks in the mirror, over
        the capacity) is below ``shared_kv_usage``."""
        mirror = self._mirror
        cap = mirror.capacity_blocks
        if cap is None:
            return True
        limit = self._shared_kv_usage * cap
        running = mirror.running_blocks
        return all(running(k) < limit for k in self._keys)

    def _through_pending(self, k: int, blocks: tuple[int, ...], p: int) -> int:
        """``p`` leading blocks held on replica ``k``, extended through the blocks of the
        requests in flight there (``_pending``)."""
        pend = self._pending[k]
        nb = len(blocks)
        while p < nb and blocks[p] in pend:
            p += 1
        return p

    def _held(self, blocks: tuple[int, ...], n: int) -> tuple[list[int], list[bool]]:
        """Leading blocks each replica is believed to hold, and whether that came from the
        engines' events (an ``exact`` replica of the precise variant) or the mirror."""
        mirror = self._mirror
        keys = self._keys
        if not self.reads_kv_events:
            held = [mirror.matched_blocks(keys[k], blocks) for k in range(n)]
            if self.observe_at == "completion":  # and the prompts of requests in flight
                held = [self._through_pending(k, blocks, held[k]) for k in range(n)]
            return held, [False] * n
        idx = self.engine_index
        runs = idx.overlaps(blocks, n)
        held = []
        exact = []
        for k in range(n):
            if idx.state(k) != "exact":
                self.sources["mirror"] += 1
                held.append(mirror.matched_blocks(keys[k], blocks))
                exact.append(False)
                continue
            self.sources["events"] += 1
            # Blocks of requests sent there that the engine has not reported yet.
            held.append(max(runs[k], self._through_pending(k, blocks, 0)))
            exact.append(True)
        return held, exact

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        if len(self._keys) != view.replicas:
            self._keys = [self._key_cls(nid, 0) for nid in view.node_ids]
            self._queued = [0] * view.replicas
            self._held_est = [0] * view.replicas
            self._window = self._window_cls(size=WINDOW_PER_REPLICA * view.replicas)
            self._pending = [{} for _ in range(view.replicas)]
            if self._hot_on:
                self.hot = HotPrefixes(
                    window=WINDOW_PER_REPLICA * view.replicas,
                    lower=self._hot_lower,
                    per_copy=self._per_copy,
                )
        keys = self._keys
        window = self._window
        blocks = request.blocks
        bt = self._bt
        inp = request.input_tokens
        cc = self._cc
        inf = view.in_flight
        if self._drain is not None:
            self._drain_backlog(now)
        queued = self._queued
        events = self._src.EVENTS
        mirror_src = self._src.MIRROR
        n = len(keys)
        held, exact = self._held(blocks, n)
        credit: Sequence[int] = held
        warm: tuple[int, ...] = ()
        params = self._params
        hot = self.hot
        if hot is not None:
            rule = hot.credit(
                blocks,
                held=held,
                replicas=range(n),
                in_flight=inf,
                overloaded=self._hot_overloaded,
                shared_demand=self._shared_demand,
                room=self._kv_room_everywhere,
            )
            if rule is not None:
                credit = rule.held
                warm = rule.warm
                if rule.shared:
                    params = self._shared_params
        # Ties rotate: the replica dispatched to least recently ranks first.
        lu = view.last_used
        rank = [0] * n
        for pos, k in enumerate(
            sorted(range(n), key=lambda k: (-math.inf if lu[k] is None else lu[k], k))
        ):
            rank[k] = pos
        cands = [
            cc(
                key=keys[k],
                in_flight=inf[k],
                cached_tokens=min(inp, credit[k] * bt),
                queued_tokens=queued[k],
                recent_dispatches=window.count(keys[k]),
                cached_source=events if exact[k] else mirror_src,
                tie_rank=rank[k],
            )
            for k in range(n)
        ]
        key = self._pick(cands, prompt_tokens=inp, **params)
        assert key is not None
        if self.log_every and i % self.log_every == 0:
            from prefixcache import explain_lowest_cost

            e = explain_lowest_cost(cands, prompt_tokens=inp, **params)
            assert e.chosen == key
            d = e.to_json()
            d["warm_copies"] = len(warm)
            d["shared_prefix"] = params is self._shared_params
            self._log(i, request, now, d)
        r = keys.index(key)
        self._est[i] = inp - min(inp, held[r] * bt)
        return r

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        self._queued[replica] += self._est[i]
        if self._drain is not None:
            self._held_est[replica] += self._est[i]
        self._window.record(self._keys[replica])
        if self.hot is not None:
            self.hot.record(request.blocks)
        if self.observe_at == "dispatch":
            private = round(self._out_blocks / self._completed) if self._completed else 0
            self._private[i] = private
            self._mirror.start(self._keys[replica], request.blocks, private_blocks=private)
        if self._tracks_pending:
            pend = self._pending[replica]
            for b in request.blocks:
                pend[b] = pend.get(b, 0) + 1

    def _drain_backlog(self, now: float) -> None:
        """Drain each replica's backlog at ``prefill_rate`` since the last decision, to at
        most the estimates of its requests not yet ended."""
        assert self._drain is not None
        d = self._drain * (now - self._drained_at)
        self._drained_at = now
        self._queued = [
            min(h, max(0, round(q - d))) for q, h in zip(self._queued, self._held_est, strict=True)
        ]

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        if self._drain is None:
            self._queued[replica] -= self._est.pop(i)

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        if self.observe_at == "completion":
            self._mirror.observe(self._keys[replica], request.blocks)
        else:
            self._mirror.finish(
                self._keys[replica], request.blocks, private_blocks=self._private.pop(i)
            )
        if self._drain is not None:  # its tokens leave the backlog if still there
            held = self._held_est[replica] = self._held_est[replica] - self._est.pop(i)
            if self._queued[replica] > held:
                self._queued[replica] = held
        # The router counted the response's tokens as it streamed them back.
        self._out_blocks += -(-request.output_tokens // self._bt)
        self._completed += 1
        if self._tracks_pending:
            pend = self._pending[replica]
            for b in request.blocks:
                c = pend[b]
                if c == 1:
                    del pend[b]
                else:
                    pend[b] = c - 1


PEER_POLICIES: tuple[str, ...] = (
    "sglang-cache-aware",
    "smg-cache-aware",
    "llm-d-default",
    "llm-d-precise",
    "dynamo-kv",
    "dynamo-kv-approx",
    "prodstack-prefix",
    "prodstack-loadaware",
    "aibrix-prefix-cache",
    "ray-prefix-affinity",
)
"""The peer routers' default policies (see ``prefixcache.replay._peers``)."""

POLICY_NAMES: tuple[str, ...] = (
    "round-robin",
    "random",
    "least-loaded",
    "prefix",
    "federation",
    "cache-cost",
    "cache-cost-precise",
    *PEER_POLICIES,
)
DEFAULT_POLICIES = POLICY_NAMES

KV_EVENT_PAIRS: tuple[tuple[str, str], ...] = (
    ("cache-cost", "cache-cost-precise"),
    ("llm-d-default", "llm-d-precise"),
    ("dynamo-kv-approx", "dynamo-kv"),
)
"""(approximate, precise) counterparts compared by ``--kv-events``: the same policy with
its cached-block view written from its own dispatches, then read from engine events."""


_COST_PARAMS: dict[str, Callable[[float], Any]] = {
    "queue_weight": float,
    "in_flight_tokens": float,
    "share_tokens": float,
    "share_factor": float,
    "share_slack": int,
    "hot_lower": float,
    "cost_margin": float,
    "hot_per_copy": float,
    "shared_queue_weight": float,
    "shared_demand": float,
    "shared_kv_usage": float,
}

TUNABLE: dict[str, dict[str, Callable[[float], Any]]] = {
    "cache-cost": _COST_PARAMS,
    "cache-cost-precise": _COST_PARAMS,
    "sglang-cache-aware": {
        "cache_threshold": float,
        "balance_abs_threshold": int,
        "balance_rel_threshold": float,
    },
    "dynamo-kv": {"overlap_credit": float},
    "dynamo-kv-approx": {"overlap_credit": float},
    "aibrix-prefix-cache": {"imbalance": int, "std_factor": float},
    "ray-prefix-affinity": {"match_rate_threshold": float},
}
"""Per policy, the parameters ``make_policy(params=...)`` accepts and their types."""


def make_policy(
    name: str,
    model: ClusterModel,
    *,
    seed: int = 0,
    observe_at: ObserveAt | None = None,
    params: Mapping[str, float] | None = None,
) -> ReplayPolicy:
    """A fresh policy by name (one of :data:`POLICY_NAMES`).

    ``observe_at=None`` keeps each indexing policy's own default (``prefix`` and
    ``federation``: completion, as the reference; ``cache-cost``: dispatch). ``params``
    overrides constructor parameters listed in :data:`TUNABLE` for that policy (the tuner
    uses it); every other policy takes none.

    Raises:
        InvalidRecordError: unknown ``name``, ``observe_at`` or parameter.
    """
    if observe_at not in (None, "dispatch", "completion"):
        raise InvalidRecordError("observe_at", observe_at, "must be 'dispatch' or 'completion'")
    kw: dict[str, Any] = {}
    if params:
        allowed = TUNABLE.get(name, {})
        for k, v in params.items():
            if k not in allowed:
                raise InvalidRecordError(
                    "params",
                    k,
                    f"not a tunable parameter of {name!r} (tunable: "
                    f"{', '.join(sorted(allowed)) or 'none'})",
                )
            kw[k] = allowed[k](v)
    if name == "round-robin":
        return RoundRobinPolicy()
    if name == "random":
        return RandomPolicy(seed)
    if name == "least-loaded":
        return LeastLoadedPolicy()
    if name == "prefix":
        return PrefixPolicy(observe_at or "completion")
    if name == "federation":
        return FederationPolicy(observe_at or "completion")
    if name in ("cache-cost", "cache-cost-precise"):
        return CacheCostPolicy(
            capacity_blocks=model.cache_blocks,
            block_tokens=model.block_tokens,
            observe_at=observe_at or "dispatch",
            precise=name == "cache-cost-precise",
            **kw,
        )
    bt = model.block_tokens
    if name == "sglang-cache-aware":
        return SglangCacheAwarePolicy(block_tokens=bt, **kw)
    if name == "smg-cache-aware":
        return SmgCacheAwarePolicy(block_tokens=bt, seed=seed)
    if name == "llm-d-default":
        return LlmdDefaultPolicy(block_tokens=bt, num_gpu_blocks=model.cache_blocks, seed=seed)
    if name == "llm-d-precise":
        return LlmdPrecisePolicy(block_tokens=bt, seed=seed)
    if name in ("dynamo-kv", "dynamo-kv-approx"):
        return DynamoKvPolicy(block_tokens=bt, seed=seed, kv_events=name == "dynamo-kv", **kw)
    if name == "prodstack-prefix":
        return ProdstackPrefixPolicy(seed=seed)
    if name == "prodstack-loadaware":
        return ProdstackLoadAwarePolicy(block_tokens=bt)
    if name == "aibrix-prefix-cache":
        return AibrixPrefixCachePolicy(block_tokens=bt, seed=seed, **kw)
    if name == "ray-prefix-affinity":
        return RayPrefixAffinityPolicy(block_tokens=bt, seed=seed, **kw)
    raise InvalidRecordError(
        "policies", name, f"unknown policy; choose from {', '.join(POLICY_NAMES)}"
    )
