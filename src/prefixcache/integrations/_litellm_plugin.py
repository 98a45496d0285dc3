"""The LiteLLM plugin (:class:`PrefixRoutingPlugin`) and :func:`install`: request parsing,
the lock, outcomes, LiteLLM's hooks and wiring. The decision and its state are
:class:`~prefixcache.integrations._litellm_costs.CostState`; the policy, the reservations
and the LiteLLM facts relied on are specified in :mod:`prefixcache.integrations.litellm`."""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs
from litellm.integrations.custom_logger import CustomLogger

from clusterrouting import InvalidRecordError
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._index import Index, Provider
from prefixcache._keys import check_callable, check_methods, check_rate
from prefixcache._mirror import KvCacheMirror
from prefixcache._pins import SessionPins
from prefixcache._protocols import AsyncTransport, Clock, Transport
from prefixcache._sync import Sync
from prefixcache.integrations._litellm_chains import SessionChains
from prefixcache.integrations._litellm_costs import CostState
from prefixcache.integrations._litellm_ledger import DEFAULT_PREFILL_TOKENS_PER_S, Reservation
from prefixcache.integrations._litellm_requests import (
    BYTES_PER_TOKEN,
    Tokenizer,
    callback_target,
    deployment_id,
    deployment_ids,
    first_token_times,
    is_mapping,
    prefix_source,
    request_chain,
    request_id,
    request_metadata,
    session_of,
)
from prefixcache.integrations._litellm_wiring import (
    ACTIVE,
    Strategy,
    Subscription,
    leave_callbacks,
    reset_strategy,
    restore_endpoints,
    set_strategy,
    wrap_endpoints,
)

__all__ = [
    "DEFAULT_MIRROR_BLOCKS",
    "DEFAULT_PREFILL_TOKENS_PER_S",
    "DEFAULT_RESERVATION_TTL",
    "DEFAULT_SESSION_HEADER",
    "DEFAULT_SESSION_METADATA_KEY",
    "Mode",
    "PluginStats",
    "PrefixRoutingPlugin",
    "install",
]

Mode = Literal["filter", "strategy"]

DEFAULT_RESERVATION_TTL: Final = 600.0
"""Seconds after which a reservation no callback released expires."""

DEFAULT_MIRROR_BLOCKS: Final = 1 << 16
"""Blocks the local KV-cache mirror keeps per deployment (least recently used go first);
set ``mirror_blocks`` to the engines' KV cache in tokens over the plugin's block size."""


DEFAULT_SESSION_HEADER: Final = "x-session-id"
"""The request header read for the session key (case-insensitive)."""

DEFAULT_SESSION_METADATA_KEY: Final = "session_id"
"""The request metadata key read for the session key (before the header)."""

_CLAIM_METADATA_KEY: Final = "prefixcache_plugin"


@attrs.frozen(kw_only=True)
class PluginStats:
    """Counters of one :class:`PrefixRoutingPlugin` (monotone since construction).

    Attributes:
        decisions: requests this plugin chose a deployment for.
        passed: filter calls left alone (another router's request, or no candidate).
        errors: internal errors; each returned the input unchanged.
        reserved / released / expired: reservations made, released by a callback, expired
            after ``reservation_ttl``.
        unmatched: callbacks for no reservation this plugin holds (another router's
            request, or one already expired).
        observed: successes that observed the request's chain.
        timed: streamed successes whose first-token time taught the prefill rate (the
            others that taught it tokens only are not counted here).
        pinned / unpinned: session pins written on success / cleared on failure.
    """

    decisions: int = 0
    passed: int = 0
    errors: int = 0
    reserved: int = 0
    released: int = 0
    expired: int = 0
    unmatched: int = 0
    observed: int = 0
    timed: int = 0
    pinned: int = 0
    unpinned: int = 0


class PrefixRoutingPlugin(CustomLogger):  # type: ignore[misc]  # LiteLLM is untyped to mypy
    """Prefix-aware deployment choice for one ``litellm.Router`` (the policy is specified in
    :mod:`prefixcache.integrations.litellm`).

    Build it with :func:`install`, which registers it with LiteLLM (the constructor alone
    registers nothing; the proxy registers an instance named in its config).

    Args:
        router: the ``litellm.Router`` whose requests it decides, or ``None`` for a filter-mode
            plugin that LiteLLM registers itself (the proxy's ``litellm_settings.callbacks``;
            one router per process, so there are no other routers' requests to tell apart).
        mode: ``"filter"`` (narrow ``healthy_deployments`` to the choice; LiteLLM's health
            and cooldown logic stays) or ``"strategy"`` (a full routing strategy: it
            bypasses LiteLLM's cooldowns and health filtering).
        index: a prefix index to keep (default: a new ``Index(config)`` when ``sync`` is
            given, else none: the local mirror is this router's whole knowledge).
        config: window size, depth and the load-guard thresholds for pins.
        sync: a transport shared with peer routers (affinity on the index's subjects,
            pins on ``prefixcache.pin``), or ``None``.
        pins: the session pins (default: none; sessions are then routed by cost alone).
        reservation_ttl: seconds before an unreleased reservation expires (> 0).
        session_header: request header holding the session key (a non-empty str).
        session_metadata_key: request metadata key holding the session key (read first; a
            non-empty str).
        tokenizer: ``tokenizer(model_group, text) -> ids``; chains then hash blocks of
            ``block_tokens`` token ids and prompt lengths are exact.
        block_tokens: tokens per block with a tokenizer (default ``window_bytes // 4``).
        clock: the wall clock (index entries and pins cross processes).
        mirror_blocks: blocks the local KV-cache mirror keeps per deployment (int >= 1):
            the engine's KV cache in tokens over this plugin's block size (``block_tokens``,
            or ``window_bytes`` characters without a tokenizer; not the engine's block
            count), so that the mirror evicts about when the engine does and the hot-prefix
            rules wait for room (0.8 of it) as the replay's do.
        prefill_tokens_per_s: how fast a deployment prefills (finite, > 0), or ``None``.
            A deployment's backlog (the uncached prompt tokens of its reservations) drains
            at this rate from each reservation on, since LiteLLM reports a request only when
            it ends; ``None`` keeps a reservation's tokens until then.
        learn_prefill_rate: learn the rate from streamed responses (default ``True``): each
            success of a request sent with ``stream=True`` reports when its first chunk
            came (LiteLLM's ``completion_start_time``), and the backlog drains at the
            estimate of :class:`prefixcache._backlog.PrefillRateEstimator` over the last 512
            successes (the uncached tokens over the time the deployments were busy with
            them; the successes not streamed count their tokens when sent while their
            deployment was busy), made after every 16 (``prefill_tokens_per_s`` until one
            finds a streamed response). With ``prefill_tokens_per_s=None`` nothing is
            learned.

    Memory is bounded: the index by its ttl (swept every ``ttl / 2`` from routing calls),
    the mirror by ``mirror_blocks`` per deployment, reservations by ``reservation_ttl``, the
    pins by their ``max_entries``, the sessions' last chains (a session's next turn hashes
    only the blocks it adds) to ``DEFAULT_SESSION_CHAINS`` sessions of at most
    ``window_bytes * max_depth`` characters each, the blocks tracked in flight by the
    reservations, the hot-prefix demand to 64 model groups of ``256 x deployments``
    dispatches of at most ``max_depth`` blocks each, and the learned prefill rate to its
    last 512 successes.

    Thread-safe: the routing state is locked.
    """

    def __init__(
        self,
        router: Any,
        *,
        mode: Mode = "filter",
        index: Index | None = None,
        config: Config = DEFAULT_CONFIG,
        sync: Transport | AsyncTransport | None = None,
        pins: SessionPins | None = None,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        session_header: str = DEFAULT_SESSION_HEADER,
        session_metadata_key: str = DEFAULT_SESSION_METADATA_KEY,
        tokenizer: Tokenizer | None = None,
        block_tokens: int | None = None,
        clock: Clock | Callable[[], float] = time.time,
        mirror_blocks: int = DEFAULT_MIRROR_BLOCKS,
        prefill_tokens_per_s: float | None = DEFAULT_PREFILL_TOKENS_PER_S,
        learn_prefill_rate: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("filter", "strategy"):
            raise InvalidRecordError("mode", mode, "must be 'filter' or 'strategy'")
        if router is None and mode != "filter":
            raise InvalidRecordError("router", router, "is required in strategy mode")
        if not isinstance(config, Config):
            raise InvalidRecordError("config", config, "must be a prefixcache.Config")
        if index is not None and not isinstance(index, Index):
            raise InvalidRecordError("index", index, "must be a prefixcache.Index or None")
        if pins is not None and not isinstance(pins, SessionPins):
            raise InvalidRecordError("pins", pins, "must be a prefixcache.SessionPins or None")
        if (
            isinstance(reservation_ttl, bool)
            or not isinstance(reservation_ttl, int | float)
            or not math.isfinite(reservation_ttl)
            or reservation_ttl <= 0
        ):
            raise InvalidRecordError(
                "reservation_ttl", reservation_ttl, "must be a finite number > 0 (seconds)"
            )
        if type(mirror_blocks) is not int or mirror_blocks < 1:
            raise InvalidRecordError("mirror_blocks", mirror_blocks, "must be an int >= 1")
        prefill_rate = check_rate("prefill_tokens_per_s", prefill_tokens_per_s)
        if type(learn_prefill_rate) is not bool:
            raise InvalidRecordError("learn_prefill_rate", learn_prefill_rate, "must be a bool")
        if block_tokens is not None and (type(block_tokens) is not int or block_tokens < 1):
            raise InvalidRecordError("block_tokens", block_tokens, "must be an int >= 1")
        check_methods(
            "sync", sync, "subscribe", what="a Transport or AsyncTransport", optional=True
        )
        for name, key in (
            ("session_header", session_header),
            ("session_metadata_key", session_metadata_key),
        ):
            if type(key) is not str or not key:
                raise InvalidRecordError(name, key, "must be a non-empty str")
        check_callable("clock", clock)
        check_callable("tokenizer", tokenizer, optional=True)
        self.router = router
        self.mode: Mode = mode
        self.config = config
        # The mirror alone is this router's knowledge; an index is kept only to share it
        # (sync) or when the host passes one (it then reads what this router learned).
        self.index: Index | None = Index(config) if index is None and sync is not None else index
        self.provider: Provider | None = (
            self.index if sync is None or self.index is None else Sync(self.index, clock=clock)
        )
        self.transport = sync
        self.pins = pins
        self.reservation_ttl = float(reservation_ttl)
        self.session_header = session_header.lower()
        self.session_metadata_key = session_metadata_key
        self.tokenizer = tokenizer
        self.block_tokens = block_tokens or max(1, config.window_bytes // BYTES_PER_TOKEN)
        self.clock = clock
        self._costs = CostState(
            config,
            block_tokens=self.block_tokens,
            mirror_blocks=mirror_blocks,
            prefill_rate=prefill_rate,
            learn_prefill_rate=learn_prefill_rate,
        )
        self._chains = SessionChains(config)
        self._uid = uuid.uuid4().hex
        self._next_rid = itertools.count()
        # LiteLLM registers a logger for callbacks only if no logger with the same class and
        # public str/bool/int attributes is registered: this public id keeps plugins apart.
        self.plugin_id = self._uid
        self._lock = threading.RLock()
        self._counts: dict[str, int] = dict.fromkeys(attrs.fields_dict(PluginStats), 0)
        self._next_sweep: float | None = None
        self._subscription = Subscription(self.provider, pins, sync)
        self._wrapped: dict[str, Any] = {}
        self._strategy: Strategy | None = None

    # -- reading state ----------------------------------------------------------------------
    @property
    def mirror(self) -> KvCacheMirror:
        """What this router saw succeed on each deployment (its local KV-cache mirror)."""
        return self._costs.mirror

    def stats(self) -> PluginStats:
        """A consistent copy of the counters."""
        with self._lock:
            return PluginStats(**self._counts)

    def in_flight(self, deployment_id: str) -> int:
        """Reservations held on ``deployment_id``."""
        return self._costs.ledger.in_flight.get(deployment_id, 0)

    def backlog(self, deployment_id: str, *, now: float | None = None) -> int:
        """``deployment_id``'s estimated prefill backlog at ``now`` (default ``clock()``): the
        uncached prompt tokens of its reservations, drained at ``prefill_tokens_per_s``
        since each was made and cut to the tokens still held when one is released
        (``DrainedBacklog``; ``None``: held until released); 0 with none held."""
        t = self.clock() if now is None else now
        with self._lock:
            return self._costs.ledger.backlog.read(deployment_id, t)

    def prefill_rate(self) -> float | None:
        """The rate deployments' backlogs drain at now, in tokens per second:
        ``prefill_tokens_per_s``, or what was learned from streamed responses since."""
        return self._costs.ledger.backlog.rate

    def demand_window(self, model_group: str) -> int | None:
        """The recent dispatches over which ``model_group``'s hot-prefix demand is measured
        (256 per deployment of the largest candidate list seen for it), or ``None`` for a
        group not tracked: never decided, or dropped (the plugin keeps at most 64 groups, the
        one seen first leaving first)."""
        with self._lock:
            return self._costs.demand_window(model_group)

    def reservations(self) -> int:
        """Reservations held (not yet released or expired)."""
        with self._lock:
            return len(self._costs.ledger)

    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # -- the decision -------------------------------------------------------------------------
    def choose(
        self,
        group: str,
        deployments: Sequence[Mapping[str, Any]],
        messages: object,
        request_kwargs: Mapping[str, Any],
        *,
        now: float | None = None,
    ) -> int:
        """Pick one of ``deployments`` for a request and reserve it; returns its position.

        The cost policy of :mod:`prefixcache.integrations.litellm` over ``deployments`` (keyed by
        ``model_info.id``), at ``now`` (default ``clock()``, wall time).

        Raises:
            InvalidRecordError: a deployment without ``model_info.id``; an empty list.

        >>> plugin = PrefixRoutingPlugin(None)
        >>> deployments = [{"model_info": {"id": "a"}}, {"model_info": {"id": "b"}}]
        >>> hi = [{"role": "user", "content": "hi"}]
        >>> plugin.choose("m", deployments, hi, {"metadata": {}}, now=0.0)  # a tie: least key
        0
        >>> plugin.choose("m", deployments, hi, {"metadata": {}}, now=0.0)  # a is busier
        1
        >>> plugin.in_flight("a"), plugin.in_flight("b"), plugin.expire(now=601.0)
        (1, 1, 2)
        """
        if not deployments:
            raise InvalidRecordError("deployments", deployments, "must not be empty")
        t = self.clock() if now is None else now
        ids = deployment_ids(deployments)
        tokenizer = self.tokenizer
        source, length = prefix_source(messages, request_kwargs, plain=tokenizer is None)
        session = session_of(request_kwargs, self.session_metadata_key, self.session_header)
        chain, prompt_tokens, block_tokens = request_chain(
            group,
            source,
            length,
            tokenizer=tokenizer,
            block_tokens=self.block_tokens,
            config=self.config,
            chains=self._chains,
            session=session,
        )
        rid = request_id(request_kwargs, self._uid, self._next_rid)
        costs = self._costs
        keys = [costs.key(i) for i in ids]
        indexed: tuple[str | None, int] = (None, 0)
        if self.provider is not None and chain:
            decision = self.provider.decide(group, chain, keys, t)
            if decision.hot is not None:
                indexed = (decision.hot.node_id, round(decision.match_ratio * len(chain)))
        pinned = None
        if session is not None and self.pins is not None:
            pinned = self.pins.get(group, session, now=t)
        with self._lock:
            self._sweep(t)
            pos, uncached = costs.decide(
                group,
                ids,
                keys,
                chain,
                prompt_tokens=prompt_tokens,
                block_tokens=block_tokens,
                indexed=indexed,
                pinned=pinned,
                now=t,
            )
            costs.ledger.reserve(
                Reservation(
                    rid, ids[pos], group, chain, session, uncached, t + self.reservation_ttl
                ),
                t,
            )
            counts = self._counts
            counts["reserved"] += 1
            counts["decisions"] += 1
        return pos

    def _sweep(self, now: float) -> None:
        """Expire reservations past their deadline (FIFO: they share one ttl) and sweep the
        index and pins every ``ttl / 2``. Called with the lock held."""
        self._counts["expired"] += self._costs.ledger.expire(now)
        if self._next_sweep is None:
            self._next_sweep = now + self.config.ttl / 2
        elif now >= self._next_sweep:
            self._next_sweep = now + self.config.ttl / 2
            if self.provider is not None:
                self.provider.evict(now)
            if self.pins is not None:
                self.pins.evict(now)

    def expire(self, now: float | None = None) -> int:
        """Expire reservations older than ``reservation_ttl`` at ``now``; returns how many."""
        t = self.clock() if now is None else now
        with self._lock:
            before = self._counts["expired"]
            self._sweep(t)
            return self._counts["expired"] - before

    def release(
        self, kwargs: Mapping[str, Any], *, success: bool, now: float | None = None
    ) -> bool:
        """Release the reservation a LiteLLM callback's ``kwargs`` belong to.

        On success the request's chain is observed (index, mirror) and its session pinned
        to the deployment; on failure the session's pin to that deployment is cleared.
        Returns ``False`` (counted as unmatched) when this plugin holds no such reservation.
        """
        t = self.clock() if now is None else now
        deployment, rids = callback_target(kwargs)
        times = first_token_times(kwargs) if success else None
        costs = self._costs
        with self._lock:
            res = costs.ledger.take(rids, deployment, t)
            if res is None:
                self._counts["unmatched"] += 1
                return False
            counts = self._counts
            counts["released"] += 1
            key = costs.key(deployment)
            pin = success and res.session is not None and self.pins is not None
            if success:
                costs.mirror.observe(key, res.chain)
                counts["observed"] += bool(res.chain)
                counts["pinned"] += pin
                if times is not None:
                    sent, first = times
                    learned = costs.ledger.backlog.learn(
                        res.deployment, sent=sent, first_token=first, tokens=res.uncached, now=t
                    )
                    counts["timed"] += learned and first is not None
        if success:
            if res.chain and self.provider is not None:
                self.provider.observe(res.group, res.chain, key, t)
            if pin:
                assert self.pins is not None and res.session is not None
                self.pins.pin(res.group, res.session, deployment, now=t)
        elif (
            res.session is not None
            and self.pins is not None
            and self.pins.unpin(res.group, res.session, deployment=deployment, now=t)
        ):
            self._bump("unpinned")
        return True

    # -- LiteLLM hooks ------------------------------------------------------------------------
    def _mine(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether this plugin decides the request: its router's endpoint is running, or no
        plugin's is and no other plugin claimed the request."""
        active = ACTIVE.get()
        if active is not None:
            return active is self
        md = request_metadata(kwargs)
        if md is None:
            return True
        owner = md.setdefault(_CLAIM_METADATA_KEY, self._uid)
        return bool(owner == self._uid)

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: Any,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[Any]:
        """Narrow ``healthy_deployments`` to the chosen one (filter mode); never raises."""
        try:
            kwargs: Mapping[str, Any] = request_kwargs if request_kwargs is not None else {}
            if self.mode != "filter" or not healthy_deployments or not self._mine(kwargs):
                self._bump("passed")
                return healthy_deployments
            pos = self.choose(model, healthy_deployments, messages, kwargs)
            return [healthy_deployments[pos]]
        except Exception:
            self._bump("errors")
            return healthy_deployments

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Release the attempt's reservation, observe its chain and pin its session."""
        self._release_quietly(kwargs, success=True)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Release the attempt's reservation; clear its session's pin to that deployment."""
        self._release_quietly(kwargs, success=False)

    def _release_quietly(self, kwargs: object, *, success: bool) -> None:
        """:meth:`release` for a callback: never raises (an error is counted)."""
        try:
            if is_mapping(kwargs):
                self.release(kwargs, success=success)
        except Exception:
            self._bump("errors")

    # -- strategy mode ------------------------------------------------------------------------
    def _group_deployments(self, model: str) -> list[Any]:
        router = self.router
        registry = getattr(router, "registry", None)
        if callable(registry):
            found = registry().deployments(model)
        else:
            found = router.get_model_list(model_name=model)
        return list(found or ())

    def pick(
        self,
        model: str,
        messages: Any = None,
        input: Any = None,
        specific_deployment: bool | None = False,
        request_kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        """The strategy-mode choice: one deployment dict of ``model``'s group (``None`` when
        the group has none). Never raises: an internal error returns the group's first
        deployment."""
        deployments: list[Any] = []
        try:
            kwargs: Mapping[str, Any] = request_kwargs if request_kwargs is not None else {}
            deployments = self._group_deployments(model)
            if specific_deployment:
                for d in deployments:
                    if deployment_id(d) == model:
                        return d
            if not deployments:
                self._bump("passed")
                return None
            if input is not None and messages is None and isinstance(kwargs, dict):
                kwargs = {**kwargs, "input": input}
            return deployments[self.choose(model, deployments, messages, kwargs)]
        except Exception:
            self._bump("errors")
            return deployments[0] if deployments else None

    # -- installation ---------------------------------------------------------------------------
    def _wrap_endpoints(self) -> None:
        self._wrapped.update(wrap_endpoints(self.router, self))

    def attach(self) -> None:
        """Subscribe the index (through ``Sync``) and the pins to the ``sync`` transport
        (:func:`install` calls it; a plugin built directly calls it once). A synchronous
        transport is subscribed when this returns; an asynchronous one from a task on the
        running loop (``await ready()``).

        Raises:
            InvalidRecordError: an asynchronous transport and no running event loop.
        """
        self._subscription.start()

    async def ready(self) -> None:
        """Wait until an asynchronous ``sync`` transport is subscribed (a no-op otherwise)."""
        await self._subscription.ready()

    def uninstall(self) -> None:
        """Undo :func:`install`: leave ``litellm.callbacks``, restore the router's endpoints
        and its default strategy, unsubscribe from the transport. Idempotent (an
        asynchronous transport's unsubscribe is scheduled on the running loop)."""
        leave_callbacks(self)
        restore_endpoints(self.router, self._wrapped)
        self._wrapped.clear()
        if self._strategy is not None:
            reset_strategy(self.router)
            self._strategy = None
        self._subscription.stop()


def install(
    router: Any,
    *,
    mode: Mode = "filter",
    index: Index | None = None,
    config: Config = DEFAULT_CONFIG,
    sync: Transport | AsyncTransport | None = None,
    pins: SessionPins | None = None,
    reservation_ttl: float = DEFAULT_RESERVATION_TTL,
    session_header: str = DEFAULT_SESSION_HEADER,
    session_metadata_key: str = DEFAULT_SESSION_METADATA_KEY,
    tokenizer: Tokenizer | None = None,
    block_tokens: int | None = None,
    clock: Clock | Callable[[], float] = time.time,
    mirror_blocks: int = DEFAULT_MIRROR_BLOCKS,
    prefill_tokens_per_s: float | None = DEFAULT_PREFILL_TOKENS_PER_S,
    learn_prefill_rate: bool = True,
) -> PrefixRoutingPlugin:
    """Make ``router`` route by prefix cache cost and session pins; returns the plugin.

    Registers the plugin in ``litellm.callbacks`` (its success and failure callbacks release
    reservations in both modes), wraps the router's async endpoints so the plugin decides
    only its own router's requests, and in ``mode="strategy"`` installs it as the router's
    routing strategy (``register_plugin`` or ``set_custom_routing_strategy``; this bypasses
    LiteLLM's cooldown and health filtering). With ``sync``, the index and the pins are
    shared with every router on that transport (a sync transport is subscribed before this
    returns; an async one from a task on the running loop: ``await plugin.ready()``).

    Args: see :class:`PrefixRoutingPlugin`.

    Raises:
        InvalidRecordError: an invalid argument (named in the message).
    """
    import litellm

    plugin = PrefixRoutingPlugin(
        router,
        mode=mode,
        index=index,
        config=config,
        sync=sync,
        pins=pins,
        reservation_ttl=reservation_ttl,
        session_header=session_header,
        session_metadata_key=session_metadata_key,
        tokenizer=tokenizer,
        block_tokens=block_tokens,
        clock=clock,
        mirror_blocks=mirror_blocks,
        prefill_tokens_per_s=prefill_tokens_per_s,
        learn_prefill_rate=learn_prefill_rate,
    )
    plugin.attach()
    plugin._wrap_endpoints()
    if mode == "strategy":
        strategy = Strategy(plugin)
        set_strategy(router, strategy)
        plugin._strategy = strategy
    litellm.callbacks.append(plugin)
    return plugin
