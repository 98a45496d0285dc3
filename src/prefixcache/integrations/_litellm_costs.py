"""The LiteLLM plugin's routing state and decision (:class:`CostState`): the default policy
``cache-cost`` over a model group's deployments, as :mod:`prefixcache.integrations.litellm`
specifies it. The plugin parses requests, keeps the lock and handles LiteLLM; this module
decides."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

from clusterrouting import load_limit
from prefixcache._config import Config
from prefixcache._cost import (
    DEFAULT_COST_MARGIN,
    DEFAULT_IN_FLIGHT_TOKENS,
    DEFAULT_PIN_TOKENS,
    DEFAULT_QUEUE_WEIGHT,
    DEFAULT_SHARE_FACTOR,
    CostCandidate,
    pick_lowest_cost,
)
from prefixcache._hot import (
    DEFAULT_ROOM_QUEUE_WEIGHT,
    DEFAULT_SHARED_KV_USAGE,
    DEFAULT_SHARED_QUEUE_WEIGHT,
    HotPrefixes,
    caches_have_room,
)
from prefixcache._mirror import DispatchWindow, KvCacheMirror
from prefixcache._types import ReplicaKey
from prefixcache.integrations._litellm_ledger import Ledger

__all__ = ["CostState"]

WINDOW_PER_DEPLOYMENT: Final = 256
"""Dispatches per deployment in the recent-share and hot-prefix windows."""

HOT_GROUPS: Final = 64
"""Model groups whose hot-prefix demand is kept (the one first seen is forgotten first)."""

HOT_CONFIDENCE: Final = 0.0
"""The plugin's hot-prefix demand is the observed share (``HotPrefixes(confidence=0)``),
not the library default one standard error below it: the plugin makes warm copies and
weighs a shared prefix's backlog only once its holders are beyond the load guard, so it
never copies on a few first dispatches' guess, and the bound only delayed its copies and
its fair-share guard (which reads the same demand). ``benchmarks/litellm_policy.py`` over
seeds 0-31 with the bound: 8 Zipf prompts +1.7 % mean / +3.3 % p99, synthetic chat
+0.3 % / +1.9 % (geometric means of the per-seed ratios)."""


class CostState:
    """What one plugin knows of its deployments, and the choice made from it.

    * ``mirror``: what succeeded where (:class:`prefixcache.KvCacheMirror`);
    * ``ledger``: the reservations in flight, their backlog and their prompts' blocks;
    * the recent dispatch shares (:class:`prefixcache.DispatchWindow`) and, per model group,
      the hot-prefix demand (:class:`prefixcache.HotPrefixes`, 64 groups at most);
    * caches of :class:`ReplicaKey` and of the last :class:`CostCandidate` per deployment.

    In flight and for hot prefixes every ``stride``-th block of a chain is tracked, so that
    a credit is less than the cost margin (``DEFAULT_COST_MARGIN``, 512 tokens) short.

    Not thread-safe: the plugin calls :meth:`decide` and touches the state with its lock
    held (:meth:`keys` is safe without it).
    """

    __slots__ = (
        "_candidates",
        "_hot",
        "_keys",
        "_kv_limit",
        "_window",
        "config",
        "ledger",
        "mirror",
        "stride",
    )

    def __init__(
        self,
        config: Config,
        *,
        block_tokens: int,
        mirror_blocks: int,
        prefill_rate: float | None,
        learn_prefill_rate: bool = False,
    ) -> None:
        self.config = config
        self.mirror = KvCacheMirror(capacity_blocks=mirror_blocks)
        self._kv_limit = DEFAULT_SHARED_KV_USAGE * mirror_blocks
        self.stride = max(1, DEFAULT_COST_MARGIN // block_tokens)
        self.ledger = Ledger(self.stride, prefill_rate, learn_rate=learn_prefill_rate)
        self._window = DispatchWindow(size=WINDOW_PER_DEPLOYMENT)
        self._hot: dict[str, HotPrefixes] = {}
        self._keys: dict[str, ReplicaKey] = {}
        self._candidates: dict[str, CostCandidate] = {}  # by deployment id

    def key(self, deployment_id: str) -> ReplicaKey:
        """The deployment's :class:`ReplicaKey` (cached; the caches are cleared past 4,096
        deployments, which come and go)."""
        key = self._keys.get(deployment_id)
        if key is None:
            key = self._keys[deployment_id] = ReplicaKey(deployment_id)
            if len(self._keys) > 4096:
                self._keys.clear()
                self._candidates.clear()
        return key

    def decide(
        self,
        group: str,
        ids: Sequence[str],
        keys: Sequence[ReplicaKey],
        chain: tuple[int, ...],
        *,
        prompt_tokens: int,
        block_tokens: int,
        indexed: tuple[str | None, int],
        pinned: str | None,
        now: float,
    ) -> tuple[int, int]:
        """Choose among the deployments ``ids`` (keyed ``keys``) for a request of ``group``
        with prefix ``chain``; returns the chosen position and the prompt tokens it holds
        no cache for (the backlog its reservation adds). Records the dispatch (shares, hot
        demand); the caller reserves.

        ``indexed`` is the shared index's longest match, ``(deployment id, blocks)``
        (``(None, 0)``: none); ``pinned`` the deployment the request's session is pinned to.
        """
        ledger = self.ledger
        in_flight = ledger.in_flight
        backlog = ledger.backlog.read
        flights = [in_flight.get(i, 0) for i in ids]
        least = min(flights)
        if len(ids) * WINDOW_PER_DEPLOYMENT > self._window.size:
            self._window = DispatchWindow(size=len(ids) * WINDOW_PER_DEPLOYMENT)
        window = self._window
        mirror = self.mirror
        running = ledger.running_blocks
        hot_id, hot_blocks = indexed
        backlogs = [backlog(i, now) if f else 0 for i, f in zip(ids, flights, strict=True)]
        held = []
        cands = []
        matched = mirror.matched_blocks
        count = window.count
        candidate = self._candidate
        for i, key, flight, queued in zip(ids, keys, flights, backlogs, strict=True):
            blocks = matched(key, chain)
            if i == hot_id and hot_blocks > blocks:
                blocks = hot_blocks
            if flight:  # its requests in flight hold their prompts there
                blocks = running(i, chain, blocks)
            held.append(blocks)
            pin_credit = (
                DEFAULT_PIN_TOKENS if i == pinned and not self._overloaded(flight, least) else 0
            )
            cands.append(
                candidate(
                    key,
                    flight,
                    min(prompt_tokens, blocks * block_tokens),
                    queued,
                    count(key),
                    pin_credit,
                )
            )
        hot_prefixes = self._hot_prefixes(group, len(ids))
        # While every cache has room and some deployment has prefill to spare, a miss costs
        # little more than its own prefill: the backlog weighs more.
        room = caches_have_room(mirror, keys, backlogs)
        queue_weight = DEFAULT_ROOM_QUEUE_WEIGHT if room else DEFAULT_QUEUE_WEIGHT
        rule = None
        kv_room = functools.partial(self._kv_room, ids)
        if chain:
            rule = hot_prefixes.credit(
                chain,
                held=held,
                replicas=ids,
                in_flight=flights,
                overloaded=self._overloaded,
                room=kv_room,
            )
        if rule is not None:
            if rule.shared:
                queue_weight = max(queue_weight, DEFAULT_SHARED_QUEUE_WEIGHT)
            for p, (blocks, warm) in enumerate(zip(held, rule.held, strict=True)):
                if warm != blocks:  # a warm copy counts as holding the prefix
                    c = cands[p]
                    cands[p] = self._candidate(
                        c.key,
                        c.in_flight,
                        min(prompt_tokens, warm * block_tokens),
                        c.queued_tokens,
                        c.recent_dispatches,
                        c.pinned_tokens,
                    )
        # A hot prompt not held everywhere (or making most of the chain), while the caches
        # have room: only deployments within their fair share.
        guarded = bool(chain) and hot_prefixes.needs_fair_share(chain, held=held) and kv_room()
        best = pick_lowest_cost(
            cands,
            prompt_tokens=prompt_tokens,
            queue_weight=queue_weight,
            in_flight_tokens=DEFAULT_IN_FLIGHT_TOKENS,
            share_factor=DEFAULT_SHARE_FACTOR if guarded else None,
        )
        assert best is not None  # candidates is not empty
        pos = keys.index(best)
        window.record(best)
        hot_prefixes.record(chain)
        return pos, prompt_tokens - min(prompt_tokens, held[pos] * block_tokens)

    def _kv_room(self, ids: Sequence[str]) -> bool:
        """Whether the prompts in flight on each of ``ids`` (``Ledger.prompt_blocks``) fill
        less than ``DEFAULT_SHARED_KV_USAGE`` (0.8) of ``mirror_blocks``, the engine's KV
        cache as the plugin models it; the plugin sees neither the engines' KV usage nor
        the blocks of the outputs."""
        limit = self._kv_limit
        prompt_blocks = self.ledger.prompt_blocks
        return all(prompt_blocks(i) < limit for i in ids)

    def _overloaded(self, in_flight: int, least: int) -> bool:
        """Whether a deployment with ``in_flight`` reservations is beyond the load guard
        (the config's balance thresholds over the least loaded). A session pin counts only
        within it, and a hot prompt keeps its deployment until then (warm copies elsewhere
        only beyond it)."""
        config = self.config
        return in_flight > load_limit(
            least, slack=config.balance_abs_threshold, factor=config.balance_rel_threshold
        )

    def demand_window(self, group: str) -> int | None:
        """The dispatches ``group``'s hot-prefix demand is counted over, or ``None`` for a
        group not tracked (never seen, or dropped: at most ``HOT_GROUPS`` are kept)."""
        hot = self._hot.get(group)
        return None if hot is None else hot.window

    def _hot_prefixes(self, group: str, deployments: int) -> HotPrefixes:
        """``group``'s hot-prefix demand over its last ``256 x deployments`` dispatches (a
        new, empty record when the group is new or has grown)."""
        hot = self._hot.get(group)
        if hot is not None and hot.window >= deployments * WINDOW_PER_DEPLOYMENT:
            return hot
        if hot is None and len(self._hot) >= HOT_GROUPS:
            del self._hot[next(iter(self._hot))]  # the group seen first goes first
        hot = self._hot[group] = HotPrefixes(
            window=deployments * WINDOW_PER_DEPLOYMENT,
            max_chain=self.config.max_depth,
            stride=self.stride,
            confidence=HOT_CONFIDENCE,
        )
        return hot

    def _candidate(
        self,
        key: ReplicaKey,
        in_flight: int,
        cached_tokens: int,
        queued_tokens: int,
        recent: int,
        pinned_tokens: int,
    ) -> CostCandidate:
        """``key``'s cost candidate, ``tie_rank`` being ``recent``: the one built last for
        ``key`` when every field is equal, else a new one. Candidates are immutable values,
        and between two requests most deployments' fields stay the same, while building one
        (eight validators) costs about fifteen times comparing it. They are kept by
        ``key.node_id`` (the plugin's keys are ``ReplicaKey(deployment id)``): a string
        hashes in C, a key in Python."""
        did = key.node_id
        last = self._candidates.get(did)
        if (
            last is not None
            and last.in_flight == in_flight
            and last.cached_tokens == cached_tokens
            and last.queued_tokens == queued_tokens
            and last.recent_dispatches == recent
            and last.pinned_tokens == pinned_tokens
        ):
            return last
        cand = self._candidates[did] = CostCandidate(
            key=key,
            in_flight=in_flight,
            cached_tokens=cached_tokens,
            queued_tokens=queued_tokens,
            recent_dispatches=recent,
            pinned_tokens=pinned_tokens,
            tie_rank=recent,
        )
        return cand
