"""Our policy in the replay: ``cache-cost``, ``prefixcache.pick_lowest_cost`` over a
``KvCacheMirror`` with hot prefixes (and ``cache-cost-precise``, reading engine events)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from clusterrouting import InvalidRecordError
from prefixcache._backlog import DrainedBacklog
from prefixcache._hot import (
    DEFAULT_GUARD_DEMAND,
    DEFAULT_HOT_CONFIDENCE,
    DEFAULT_HOT_LOWER,
    DEFAULT_HOT_PER_COPY,
    DEFAULT_ROOM_BACKLOG_TOKENS,
    DEFAULT_ROOM_KV_FILL,
    DEFAULT_ROOM_QUEUE_WEIGHT,
    DEFAULT_SHARED_DEMAND,
    DEFAULT_SHARED_KV_USAGE,
    DEFAULT_SHARED_QUEUE_WEIGHT,
    HotPrefixes,
    caches_have_room,
)
from prefixcache._keys import check_number, check_rate
from prefixcache.kvevents import EventBatch
from prefixcache.replay._baselines import BasePolicy, ObserveAt
from prefixcache.replay._peers import EngineIndex
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = ["WINDOW_PER_REPLICA", "CacheCostPolicy"]

WINDOW_PER_REPLICA = 256
"""``cache-cost`` keeps its last ``256 x replicas`` dispatches for the share price."""


class CacheCostPolicy(BasePolicy):
    """Ours: ``prefixcache.pick_lowest_cost`` over a ``KvCacheMirror``, with hot prefixes.

    The router mirrors each replica's KV cache (LRU, capacity = the replica's KV blocks,
    which engines report) from what it dispatched, as the engine uses it: a request's prompt
    blocks are pinned from its dispatch to its completion, when they become the most recent
    (``KvCacheMirror.start`` / ``finish``), and from its first token (the router's first
    sign that the engine admitted it, which is when the replay's engine reserves room for
    its output) it also holds output blocks: ``RunningOutput``'s estimate from the
    requests completed so far, each weighted by how long it held them (the router counts
    the tokens it streams back; 0 before the first completion), so the mirror evicts about
    when the engine does. It keeps each replica's prefill backlog in tokens: the
    estimated uncached tokens of requests whose first token has not come back yet, and its
    last ``256 x replicas`` dispatches (``DispatchWindow``). A request's deepest block
    cached on some replica is its prefix; ``prefixcache.HotPrefixes`` (over the same
    ``256 x replicas`` dispatches) keeps ``ceil(demand / 0.75)`` warm copies of a prefix
    whose demand exceeds 0.75 of a replica (its share of those dispatches taken
    ``hot_confidence`` standard errors low, one by default: ``HotPrefixes.demand``), and
    every warm replica counts as holding it,
    while every replica holding the prefix has a request in flight (an idle holder keeps
    the prefix's requests: ``HotPrefixes.credit``, which also applies the shared weight
    below; ``hot_overloaded(in_flight, least)`` replaces that test, e.g. by the LiteLLM
    plugin's load guard).
    Each request goes where uncached work + 0.1 x backlog + 64 tokens per in-flight request
    above the least-loaded replica + 32 tokens per dispatch among those last ``256 x
    replicas`` above the least-dispatched replica's is least (the fair-share guard only for
    hot prefixes, below, unless ``share_factor`` is set; 0.2 x backlog instead while the
    caches have room and the cluster is not saturated, below); costs within 512 tokens of
    the least tie unless their backlog exceeds the least-cost replica's by more than 5,120
    tokens, and ties go to the replica dispatched to least recently (``tie_rank``), so
    identical requests rotate as round-robin would (``pick_lowest_cost`` defaults). When the
    request's prefix is *shared* (``HotPrefixes.shared``: demand >= ``shared_demand``, 0.25
    of a replica), some replica does not hold it and every replica's KV usage in the mirror
    (its running requests' blocks over its capacity) is below ``shared_kv_usage`` (0.8), the
    backlog weighs ``shared_queue_weight`` (0.5; ``queue_weight`` if that is larger) instead
    of 0.1: a copy of a shared prefix on one more replica serves many later requests and,
    while the caches have room beside the running requests, pushes out little that later
    requests need, so a busy holder gives way to an idle replica once its backlog exceeds
    the idle one's by about 4k tokens per 2k saved, not 20k. A conversation's own history
    keeps the 0.1 once the window holds a few dispatches per replica (its demand is then far
    below a replica; in about the first ``1.5 x replicas`` dispatches a prefix seen once
    already counts as shared). With ``hot_prefixes=False`` there is no demand, and no
    request counts as shared.

    While every replica's cache in the mirror is filled below ``room_kv_fill`` (0.5: its
    blocks and the running requests' output blocks, ``KvCacheMirror.filled_below``, over
    its capacity) and some replica's backlog is under ``room_backlog_tokens`` (4,096), the
    backlog weighs ``room_queue_weight`` (0.2; the larger of it and the weight that
    applies otherwise): a copy of a prefix on a less busy replica then evicts nothing, and
    will not for a while, and uses prefill capacity the cluster has to spare, so a miss
    costs little more than its own prefill. Past that fill every copy brings the eviction
    of blocks later requests need nearer (at ``room_kv_fill=1`` the room lasts until a
    cache is full: the bundled trace then keeps 94.9 % of the ideal hit ratio, against
    96.0 % at 0.5), and with every replica's backlog at or past the bound the cluster is
    saturated and each miss costs capacity every request needs: the weight is
    ``queue_weight`` again. Without a capacity (``capacity_blocks=None``) the room is
    unknown and ``queue_weight`` applies. ``room_queue_weight=0`` or ``room_kv_fill=0``
    turns this off.

    When the request's prefix has a demand of at least ``guard_demand`` replicas
    (``DEFAULT_GUARD_DEMAND``, 1.0) and some replica does not hold it, or it is at least
    three quarters of the request's chain (``HotPrefixes.needs_fair_share``,
    ``DEFAULT_GUARD_COVER``), and every replica's KV usage in the mirror is below
    ``shared_kv_usage`` (as for the shared weight: a copy is made only while the caches
    have room beside the running requests), the pick has the fair-share guard
    (``DEFAULT_SHARE_FACTOR``: only replicas within 1.1 x the mean share of the window + 2),
    whatever the backlog: a prefix in front of a replica's share of the traffic or more
    then gets copies before its holders take far more requests than their share (light
    requests behind a long tool prompt would otherwise stay on them while one is idle).
    ``guard_demand=None`` turns this off; with ``share_factor`` set the guard is always on.

    Observes at dispatch by default (the router knows what it just sent); with
    ``observe_at="completion"`` (what a gateway learns from success callbacks, as the
    LiteLLM plugin does) the mirror instead records a prompt when its request completes
    (``KvCacheMirror.observe``, no pins), and until then a request's prompt counts as held
    on its replica (an engine keeps a running request's prompt in its KV cache). The
    mirror then pins nothing, so the KV-usage gate of the shared weight and of the guard
    reads each replica's distinct prompt blocks of the requests in flight instead (as the
    LiteLLM plugin does: it sees neither the engines' KV usage nor the outputs' blocks).

    The backlog drops a request's tokens at its first token by default. With
    ``prefill_rate`` (tokens per second per replica) the router sees no first token, as the
    LiteLLM plugin (whose callbacks come when a request ends): each replica's backlog
    drains at that rate between decisions, and never exceeds the estimates of its requests
    not yet ended (0 while nothing is in flight there); observing at dispatch, a request's
    output blocks are then counted from its dispatch. With ``learn_prefill_rate`` too, the
    rate is learned from first-token times revealed when each request completes (as
    LiteLLM reports a streamed request's ``completion_start_time``):
    :class:`prefixcache._backlog.PrefillRateEstimator`, ``prefill_rate`` until its first
    estimate.
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
        tie_queue_tokens: float | None = None,
        hot_per_copy: float = DEFAULT_HOT_PER_COPY,
        hot_confidence: float = DEFAULT_HOT_CONFIDENCE,
        shared_queue_weight: float = DEFAULT_SHARED_QUEUE_WEIGHT,
        shared_demand: float = DEFAULT_SHARED_DEMAND,
        shared_kv_usage: float = DEFAULT_SHARED_KV_USAGE,
        room_queue_weight: float = DEFAULT_ROOM_QUEUE_WEIGHT,
        room_kv_fill: float = DEFAULT_ROOM_KV_FILL,
        room_backlog_tokens: float = DEFAULT_ROOM_BACKLOG_TOKENS,
        hot_overloaded: Callable[[int, int], bool] | None = None,
        prefill_rate: float | None = None,
        learn_prefill_rate: bool = False,
        guard_demand: float | None = DEFAULT_GUARD_DEMAND,
    ) -> None:
        from prefixcache import (
            DEFAULT_QUEUE_WEIGHT,
            CostCandidate,
            DispatchWindow,
            KvCacheMirror,
            ReplicaKey,
            RunningOutput,
            pick_lowest_cost,
        )

        self.observe_at: str = observe_at
        self._mirror = KvCacheMirror(capacity_blocks=capacity_blocks)
        self._bt = block_tokens
        from prefixcache import (
            DEFAULT_COST_MARGIN,
            DEFAULT_IN_FLIGHT_TOKENS,
            DEFAULT_SHARE_FACTOR,
            DEFAULT_SHARE_SLACK,
            DEFAULT_SHARE_TOKENS,
            DEFAULT_TIE_QUEUE_TOKENS,
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
            "tie_queue_tokens": (
                DEFAULT_TIE_QUEUE_TOKENS if tie_queue_tokens is None else tie_queue_tokens
            ),
        }
        # A request whose deepest cached prefix is shared but not held everywhere.
        for name, v, hi in (
            ("shared_queue_weight", shared_queue_weight, math.inf),
            ("shared_demand", shared_demand, math.inf),
            ("shared_kv_usage", shared_kv_usage, 1.0),
            ("room_queue_weight", room_queue_weight, math.inf),
            ("room_kv_fill", room_kv_fill, 1.0),
            ("room_backlog_tokens", room_backlog_tokens, math.inf),
        ):
            check_number(name, v, 0.0, hi)
        # Checks every cost and hot-prefix parameter now, not at the first request (no
        # candidates: no pick; the hot-prefix record is sized at the first request).
        pick_lowest_cost([], prompt_tokens=0, **self._params)
        # The hot-prefix record's own parameters, bound once (its window comes later).
        self._new_hot = functools.partial(
            HotPrefixes, lower=hot_lower, per_copy=hot_per_copy, confidence=hot_confidence
        )
        try:
            self._new_hot(window=1)
        except InvalidRecordError as exc:  # named as this constructor's parameter
            raise InvalidRecordError(f"hot_{exc.field}", exc.value, exc.reason) from exc
        self._shared_demand = shared_demand
        # A hot prefix not held everywhere gets the fair-share guard
        # (``HotPrefixes.needs_fair_share``; a host that set ``share_factor`` has it always).
        if guard_demand is not None:
            check_number("guard_demand", guard_demand, 0.0)
        self._guard_demand = None if share_factor is not None else guard_demand
        # The pick's parameters per (shared prefix, guarded, caches with room): the backlog
        # weighs the largest weight that applies.
        self._param_sets = {
            (shared, guarded, room): {
                **self._params,
                "queue_weight": max(
                    self._params["queue_weight"],
                    shared_queue_weight if shared else 0.0,
                    room_queue_weight if room else 0.0,
                ),
                **({"share_factor": DEFAULT_SHARE_FACTOR} if guarded else {}),
            }
            for shared in (False, True)
            for guarded in (False, True)
            for room in (False, True)
        }
        self._hot_overloaded = hot_overloaded
        rate = check_rate("prefill_rate", prefill_rate)
        if type(learn_prefill_rate) is not bool or (learn_prefill_rate and rate is None):
            raise InvalidRecordError(
                "learn_prefill_rate",
                learn_prefill_rate,
                "must be a bool (True needs a prefill_rate)",
            )
        # Without first tokens: per replica, the estimates drained at the rate (learned from
        # the first-token times revealed at completion, with learn_prefill_rate).
        self._drained = (
            None if rate is None else DrainedBacklog[int](rate, learn=learn_prefill_rate)
        )
        # Learning the rate: each request's dispatch and first-token times until it completes.
        self._learning = learn_prefill_rate
        self._timed: dict[int, tuple[float, float | None]] = {}
        self._shared_kv_usage = shared_kv_usage
        self._room_kv_fill = room_kv_fill
        self._room_backlog = room_backlog_tokens
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
        # Output blocks each running request holds in the mirror, and since when.
        self._output = RunningOutput()
        self._holding: dict[int, tuple[int, float]] = {}
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
        the capacity) is below ``shared_kv_usage``; observing at completion, the distinct
        prompt blocks of the requests in flight there."""
        mirror = self._mirror
        cap = mirror.capacity_blocks
        if cap is None:
            return True
        limit = self._shared_kv_usage * cap
        if self.observe_at == "completion":
            return all(len(pend) < limit for pend in self._pending)
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
            self._window = self._window_cls(size=WINDOW_PER_REPLICA * view.replicas)
            self._pending = [{} for _ in range(view.replicas)]
            if self._hot_on:
                self.hot = self._new_hot(window=WINDOW_PER_REPLICA * view.replicas)
        keys = self._keys
        window = self._window
        blocks = request.blocks
        bt = self._bt
        inp = request.input_tokens
        cc = self._cc
        inf = view.in_flight
        events = self._src.EVENTS
        mirror_src = self._src.MIRROR
        n = len(keys)
        drained = self._drained
        queued = self._queued if drained is None else [drained.read(r, now) for r in range(n)]
        held, exact = self._held(blocks, n)
        credit: Sequence[int] = held
        warm: tuple[int, ...] = ()
        shared = guarded = False
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
                shared = rule.shared
            guard = self._guard_demand
            guarded = (
                guard is not None
                and hot.needs_fair_share(blocks, held=held, demand=guard)
                and self._kv_room_everywhere()
            )
        room = caches_have_room(
            self._mirror,
            keys,
            queued,
            kv_fill=self._room_kv_fill,
            backlog_tokens=self._room_backlog,
        )
        params = self._param_sets[shared, guarded, room]
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
            d["shared_prefix"] = shared
            d["fair_share_guard"] = guarded
            d["caches_have_room"] = room
            self._log(i, request, now, d)
        r = keys.index(key)
        self._est[i] = inp - min(inp, held[r] * bt)
        return r

    def _learn(self, i: int, replica: int, tokens: int, now: float) -> None:
        """Request ``i`` completed at ``now``: its first-token time, now revealed, teaches the
        drain rate."""
        assert self._drained is not None
        sent, first = self._timed.pop(i)
        if first is not None:
            self._drained.learn(replica, sent=sent, first_token=first, tokens=tokens, now=now)

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        if self._drained is None:
            self._queued[replica] += self._est[i]
        else:
            self._drained.add(replica, self._est[i], now)
            if self._learning:
                self._timed[i] = (now, None)
        self._window.record(self._keys[replica])
        if self.hot is not None:
            self.hot.record(request.blocks)
        if self.observe_at == "dispatch":
            self._mirror.start(self._keys[replica], request.blocks)
            if self._drained is not None:  # no first token: output counted from now
                self._hold_output(i, replica, now)
        if self._tracks_pending:
            pend = self._pending[replica]
            for b in request.blocks:
                pend[b] = pend.get(b, 0) + 1

    def _hold_output(self, i: int, replica: int, now: float) -> None:
        """Request ``i`` holds output blocks on ``replica`` in the mirror from ``now``."""
        private = self._output.take()
        self._holding[i] = (private, now)
        if private:
            self._mirror.start(self._keys[replica], (), private_blocks=private)

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        if self._drained is None:
            self._queued[replica] -= self._est.pop(i)
            if self.observe_at == "dispatch":  # admitted by now: output blocks from now
                self._hold_output(i, replica, now)
        elif self._learning:  # known to the router only when the request completes
            self._timed[i] = (self._timed[i][0], now)

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        if self.observe_at == "completion":
            self._mirror.observe(self._keys[replica], request.blocks)
        else:
            private, since = self._holding.pop(i, (0, None))
            self._mirror.finish(self._keys[replica], request.blocks, private_blocks=private)
            if since is not None:  # the router counted the tokens it streamed back
                blocks = -(-request.output_tokens // self._bt)
                self._output.record(blocks, seconds=max(0.0, now - since))
        if self._drained is not None:  # its tokens leave the backlog if still there
            est = self._est.pop(i)
            self._drained.remove(replica, est, now)
            if self._learning:
                self._learn(i, replica, est, now)
        if self._tracks_pending:
            pend = self._pending[replica]
            for b in request.blocks:
                c = pend[b]
                if c == 1:
                    del pend[b]
                else:
                    pend[b] = c - 1
