"""Prefix-aware routing and session pins inside LiteLLM (the ``litellm`` extra).

:func:`install` attaches a :class:`PrefixRoutingPlugin` to a ``litellm.Router`` (or to the
proxy's router): every chat request then goes to the deployment where it costs the cluster
least by the library's default policy (``cache-cost``, :func:`prefixcache.pick_lowest_cost`):

* candidates are the deployments LiteLLM offers, keyed by ``model_info.id``;
* the prefix chain is :func:`prefixcache.extract_chain` over
  :func:`prefixcache.messages_prefix_source` of the messages (or
  :func:`prefixcache.extract_token_chain` over the ids of a host-supplied ``tokenizer``),
  salted with the model group name;
* what each deployment caches comes from a local :class:`prefixcache.KvCacheMirror` (what
  this router saw succeed there) and, with ``sync=`` (or a host-supplied ``index=``), from a
  :class:`prefixcache.Index` shared through ``Sync`` (the longest live match, learned from
  every router); in-flight counts and the prefill backlog come from reservations; recent
  shares from a :class:`prefixcache.DispatchWindow`;
* a session pin (:class:`prefixcache.SessionPins`) adds ``DEFAULT_PIN_TOKENS`` to its
  deployment's savings while that deployment is within the library's load guard
  (:func:`clusterrouting.within_load_guard` with the config's balance thresholds): a strong
  preference in the cost, not a hard route.

Reservations: a choice reserves ``(request id, deployment id)`` (the request id is LiteLLM's
``litellm_call_id`` when the request carries one, else an id the plugin stamps into the
request's metadata, which LiteLLM hands back to the callbacks); LiteLLM's success and failure
callbacks (a timeout is a failure) release it, and a reservation no callback released within
``reservation_ttl`` seconds expires (counted). Only a success observes the chain (index,
mirror) and pins the session; a failure clears the session's pin to that deployment.

Never raises into LiteLLM: an internal error returns the input unchanged (filter mode: the
deployment list; strategy mode: the first deployment of the group) and is counted in
:meth:`PrefixRoutingPlugin.stats`.

LiteLLM facts this module relies on (checked against LiteLLM 1.108 and 1.110):

* ``CustomLogger.async_filter_deployments(model, healthy_deployments, messages,
  request_kwargs, parent_otel_span)`` runs for every logger in the process-wide
  ``litellm.callbacks`` after LiteLLM's health, cooldown and pre-call filters; what it raises
  fails the attempt. ``request_kwargs`` carries the request's ``metadata`` dict (the same
  object the callbacks see as ``kwargs["litellm_params"]["metadata"]``) and
  ``litellm_trace_id``; it carries ``litellm_call_id`` only when the caller (the proxy) set
  one.
* A custom strategy (``Router.register_plugin`` on 1.110, ``set_custom_routing_strategy``
  on 1.108) replaces the whole selection, including cooldown and health filtering.
* Because ``litellm.callbacks`` is process-wide, every router of a process runs every
  plugin's filter: :func:`install` wraps the router's async endpoints so that a request is
  decided by its own router's plugin.
* LiteLLM copies ``litellm.callbacks`` into its success/failure lists, skipping a logger when
  one of the same class with equal public ``str``/``bool``/``int`` attributes is there: each
  plugin carries a unique public ``plugin_id`` so that every plugin gets its callbacks.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import math
import operator
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, TypeGuard

import attrs
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import CustomRoutingStrategyBase

from clusterrouting import InvalidRecordError, within_load_guard
from prefixcache._chain import extract_chain, extract_token_chain, messages_prefix_source
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._cost import (
    DEFAULT_IN_FLIGHT_TOKENS,
    DEFAULT_PIN_TOKENS,
    DEFAULT_QUEUE_WEIGHT,
    DEFAULT_SHARE_FACTOR,
    DEFAULT_SHARE_SLACK,
    CostCandidate,
    DispatchWindow,
    KvCacheMirror,
    pick_lowest_cost,
)
from prefixcache._index import Index, Provider
from prefixcache._pins import SessionPins
from prefixcache._protocols import AsyncTransport, Clock, Transport
from prefixcache._sync import Sync
from prefixcache._types import ReplicaKey

__all__ = [
    "DEFAULT_MIRROR_BLOCKS",
    "DEFAULT_RESERVATION_TTL",
    "DEFAULT_SESSION_HEADER",
    "DEFAULT_SESSION_METADATA_KEY",
    "Mode",
    "PluginStats",
    "PrefixRoutingPlugin",
    "REQUEST_ID_METADATA_KEY",
    "Tokenizer",
    "install",
]

Mode = Literal["filter", "strategy"]

Tokenizer = Callable[[str, str], Sequence[int]]
"""``tokenizer(model_group, text) -> token ids``: when given, chains hash token blocks."""

DEFAULT_RESERVATION_TTL: Final = 600.0
"""Seconds after which a reservation no callback released expires."""

DEFAULT_MIRROR_BLOCKS: Final = 1 << 16
"""Blocks the local KV-cache mirror keeps per deployment (least recently used go first)."""

DEFAULT_SESSION_HEADER: Final = "x-session-id"
"""The request header read for the session key (case-insensitive)."""

DEFAULT_SESSION_METADATA_KEY: Final = "session_id"
"""The request metadata key read for the session key (before the header)."""

REQUEST_ID_METADATA_KEY: Final = "prefixcache_request_id"
"""The metadata key the plugin stamps its request id under."""

_CLAIM_METADATA_KEY: Final = "prefixcache_plugin"
_BYTES_PER_TOKEN: Final = 4
_WINDOW_PER_DEPLOYMENT: Final = 256
_CALLBACK_LISTS: Final = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
)
_ENDPOINTS: Final = ("acompletion", "atext_completion", "aresponses", "aanthropic_messages")

#: The plugin deciding the current request (set by the endpoints :func:`install` wraps).
_ACTIVE: contextvars.ContextVar[PrefixRoutingPlugin | None] = contextvars.ContextVar(
    "prefixcache_litellm_plugin", default=None
)


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
    pinned: int = 0
    unpinned: int = 0


class _Reservation:
    """One reserved attempt; ``done`` once released or expired."""

    __slots__ = ("chain", "deployment", "done", "expires", "group", "rid", "session", "uncached")

    def __init__(
        self,
        rid: str,
        deployment: str,
        group: str,
        chain: tuple[int, ...],
        session: str | None,
        uncached: int,
        expires: float,
    ) -> None:
        self.rid = rid
        self.deployment = deployment
        self.group = group
        self.chain = chain
        self.session = session
        self.uncached = uncached
        self.expires = expires
        self.done = False


def _deployment_id(deployment: object) -> str:
    # LiteLLM's records are dicts: test that first (an ABC check costs far more).
    info = deployment.get("model_info") if _is_mapping(deployment) else None
    did = info.get("id") if _is_mapping(info) else None
    if not isinstance(did, str) or not did:
        raise InvalidRecordError("deployment", deployment, "has no model_info.id")
    return did


def _deployment_ids(deployments: Sequence[Mapping[str, Any]]) -> list[str]:
    try:  # LiteLLM's records: plain dicts with a string id
        ids = [d["model_info"]["id"] for d in deployments]
    except (KeyError, TypeError, IndexError):
        return [_deployment_id(d) for d in deployments]
    for i, did in enumerate(ids):
        if type(did) is not str or not did:
            _deployment_id(deployments[i])  # raises, naming the deployment
    return ids


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


_ROLE_AND_CONTENT: Final = operator.itemgetter("role", "content")


def _plain_source(messages: Sequence[Any]) -> tuple[str, int] | None:
    """``(messages_prefix_source(messages), its length)`` for the common case that is cheap
    to build here: every message has exactly the keys ``role`` and ``content``, both strings,
    and the text is ASCII (no case-folded keys, part lists, ``null`` values or lone
    surrogates to normalise); ``None`` otherwise. SPEED: a copy of that rule for plain
    messages, built by C loops (about twice as fast on chat traffic, see
    benchmarks/bench_litellm.py); tests/integration/test_litellm.py checks it against
    ``messages_prefix_source``."""
    try:
        if set(map(len, messages)) != {2}:
            return None
        # A missing key raises KeyError, a non-string value TypeError: not plain.
        text = "\n".join(itertools.chain.from_iterable(map(_ROLE_AND_CONTENT, messages)))
    except (KeyError, TypeError):
        return None
    text += "\n"
    return (text, len(text)) if text.isascii() else None


def _metadata(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    for name in ("metadata", "litellm_metadata"):
        md = kwargs.get(name)
        if isinstance(md, dict):
            return md
    return None


class PrefixRoutingPlugin(CustomLogger):  # type: ignore[misc]  # LiteLLM is untyped to mypy
    """Prefix-aware deployment choice for one ``litellm.Router`` (see the module docstring).

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
        session_header: request header holding the session key.
        session_metadata_key: request metadata key holding the session key (read first).
        tokenizer: ``tokenizer(model_group, text) -> ids``; chains then hash blocks of
            ``block_tokens`` token ids and prompt lengths are exact.
        block_tokens: tokens per block with a tokenizer (default ``window_bytes // 4``).
        clock: the wall clock (index entries and pins cross processes).
        mirror_blocks: blocks the local KV-cache mirror keeps per deployment (int >= 1).

    Memory is bounded: the index by its ttl (swept every ``ttl / 2`` from routing calls),
    the mirror by ``mirror_blocks`` per deployment, reservations by ``reservation_ttl``, the
    pins by their ``max_entries``.

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
        if block_tokens is not None and (type(block_tokens) is not int or block_tokens < 1):
            raise InvalidRecordError("block_tokens", block_tokens, "must be an int >= 1")
        if sync is not None and not callable(getattr(sync, "subscribe", None)):
            raise InvalidRecordError("sync", sync, "must be a Transport or AsyncTransport")
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
        self.block_tokens = block_tokens or max(1, config.window_bytes // _BYTES_PER_TOKEN)
        self.clock = clock
        self.mirror = KvCacheMirror(capacity_blocks=mirror_blocks)
        self._uid = uuid.uuid4().hex
        self._keys: dict[str, ReplicaKey] = {}
        self._next_rid = itertools.count()
        # LiteLLM registers a logger for callbacks only if no logger with the same class and
        # public str/bool/int attributes is registered: this public id keeps plugins apart.
        self.plugin_id = self._uid
        self._lock = threading.RLock()
        self._window = DispatchWindow(size=_WINDOW_PER_DEPLOYMENT)
        self._in_flight: dict[str, int] = {}
        self._queued: dict[str, int] = {}
        self._held: dict[tuple[str, str], list[_Reservation]] = {}
        self._expiry: deque[_Reservation] = deque()
        self._counts: dict[str, int] = dict.fromkeys(attrs.fields_dict(PluginStats), 0)
        self._next_sweep: float | None = None
        self._detach: list[Callable[[], object]] = []
        self._wrapped: dict[str, Any] = {}
        self._strategy: _Strategy | None = None
        self._attach_task: Any = None
        self._closing: set[Any] = set()

    # -- reading state ----------------------------------------------------------------------
    def stats(self) -> PluginStats:
        """A consistent copy of the counters."""
        with self._lock:
            return PluginStats(**self._counts)

    def in_flight(self, deployment_id: str) -> int:
        """Reservations held on ``deployment_id``."""
        return self._in_flight.get(deployment_id, 0)

    def reservations(self) -> int:
        """Reservations held (not yet released or expired)."""
        with self._lock:
            return sum(len(v) for v in self._held.values())

    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # -- the decision -------------------------------------------------------------------------
    def _session_of(self, kwargs: Mapping[str, Any]) -> str | None:
        md = _metadata(kwargs)
        if md is not None:
            value = md.get(self.session_metadata_key)
            if isinstance(value, str) and value:
                return value
        headers: object = None
        if md is not None:
            headers = md.get("headers")
        if not isinstance(headers, Mapping):
            psr = kwargs.get("proxy_server_request")
            headers = psr.get("headers") if isinstance(psr, Mapping) else None
        if isinstance(headers, Mapping):
            for name, value in headers.items():
                if isinstance(name, str) and name.lower() == self.session_header:
                    return value if isinstance(value, str) and value else None
        return None

    def _source(self, messages: object, kwargs: Mapping[str, Any]) -> tuple[str, int]:
        """``(source, length)``: the request's prefix source and its length in characters."""
        if not (isinstance(messages, list | tuple) and messages):
            messages = None
            for name in ("prompt", "input"):
                value = kwargs.get(name)
                if isinstance(value, str):
                    return value, len(value)
                if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                    messages = value
                    break
            if messages is None:
                return "", 0
        if self.tokenizer is not None:
            text = messages_prefix_source(messages)
            return text, len(text)
        plain = _plain_source(messages)
        if plain is not None:
            return plain
        text = messages_prefix_source(messages)
        return text, len(text)

    def _chain(self, group: str, source: str, length: int) -> tuple[tuple[int, ...], int, int]:
        """``(chain, prompt_tokens, tokens per block)``; without a tokenizer a token is
        taken as 4 characters."""
        if self.tokenizer is not None:
            ids = self.tokenizer(group, source)
            chain = extract_token_chain(
                group, ids, block_tokens=self.block_tokens, max_depth=self.config.max_depth
            )
            return chain, len(ids), self.block_tokens
        chain = extract_chain(group, source, self.config)
        return chain, -(-length // _BYTES_PER_TOKEN), self.block_tokens

    def _key(self, deployment_id: str) -> ReplicaKey:
        key = self._keys[deployment_id] = ReplicaKey(deployment_id)
        if len(self._keys) > 4096:  # deployments come and go: keep the cache bounded
            self._keys.clear()
        return key

    def _request_id(self, kwargs: Mapping[str, Any]) -> str:
        md = _metadata(kwargs)
        if md is not None:
            rid = md.get(REQUEST_ID_METADATA_KEY)
            if isinstance(rid, str) and rid:
                return rid
        call_id = kwargs.get("litellm_call_id")
        rid = (
            call_id
            if isinstance(call_id, str) and call_id
            else f"{self._uid}-{next(self._next_rid)}"
        )
        if md is not None:
            md[REQUEST_ID_METADATA_KEY] = rid
        return rid

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

        The cost policy of the module docstring over ``deployments`` (keyed by
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
        ids = _deployment_ids(deployments)
        source, length = self._source(messages, request_kwargs)
        chain, prompt_tokens, block_tokens = self._chain(group, source, length)
        session = self._session_of(request_kwargs) if self.pins is not None else None
        rid = self._request_id(request_kwargs)
        known = self._keys
        keys = [known.get(i) or self._key(i) for i in ids]
        hot_id = None
        hot_blocks = 0
        if self.provider is not None and chain:
            decision = self.provider.decide(group, chain, keys, t)
            hot = decision.hot
            if hot is not None:
                hot_id = hot.node_id
                hot_blocks = round(decision.match_ratio * len(chain))
        pinned = None
        if session is not None and self.pins is not None:
            pinned = self.pins.get(group, session, now=t)
        with self._lock:
            self._sweep(t)
            in_flight = self._in_flight
            queued = self._queued
            flights = [in_flight.get(i, 0) for i in ids]
            least = min(flights)
            if len(ids) * _WINDOW_PER_DEPLOYMENT > self._window.size:
                self._window = DispatchWindow(size=len(ids) * _WINDOW_PER_DEPLOYMENT)
            window = self._window
            mirror = self.mirror
            config = self.config
            cands = []
            for i, key, flight in zip(ids, keys, flights, strict=True):
                blocks = mirror.matched_blocks(key, chain)
                if i == hot_id and hot_blocks > blocks:
                    blocks = hot_blocks
                recent = window.count(key)
                pin_credit = 0
                if i == pinned and within_load_guard(
                    flight,
                    least,
                    slack=config.balance_abs_threshold,
                    factor=config.balance_rel_threshold,
                ):
                    pin_credit = DEFAULT_PIN_TOKENS
                cands.append(
                    CostCandidate(
                        key=key,
                        in_flight=flight,
                        cached_tokens=min(prompt_tokens, blocks * block_tokens),
                        queued_tokens=queued.get(i, 0),
                        recent_dispatches=recent,
                        pinned_tokens=pin_credit,
                        tie_rank=recent,
                    )
                )
            best = pick_lowest_cost(
                cands,
                prompt_tokens=prompt_tokens,
                queue_weight=DEFAULT_QUEUE_WEIGHT,
                in_flight_tokens=DEFAULT_IN_FLIGHT_TOKENS,
                share_factor=DEFAULT_SHARE_FACTOR,
                share_slack=DEFAULT_SHARE_SLACK,
            )
            assert best is not None  # candidates is not empty
            pos = keys.index(best)
            chosen = ids[pos]
            uncached = prompt_tokens - cands[pos].cached_tokens
            res = _Reservation(
                rid, chosen, group, chain, session, uncached, t + self.reservation_ttl
            )
            self._held.setdefault((rid, chosen), []).append(res)
            self._expiry.append(res)
            in_flight[chosen] = in_flight.get(chosen, 0) + 1
            queued[chosen] = queued.get(chosen, 0) + uncached
            window.record(best)
            counts = self._counts
            counts["reserved"] += 1
            counts["decisions"] += 1
        return pos

    def _sweep(self, now: float) -> None:
        """Expire reservations past their deadline (FIFO: they share one ttl) and sweep the
        index and pins every ``ttl / 2``. Called with the lock held."""
        expiry = self._expiry
        while expiry and (expiry[0].done or expiry[0].expires < now):
            res = expiry.popleft()
            if not res.done:
                self._drop(res)
                self._counts["expired"] += 1
        if self._next_sweep is None:
            self._next_sweep = now + self.config.ttl / 2
        elif now >= self._next_sweep:
            self._next_sweep = now + self.config.ttl / 2
            if self.provider is not None:
                self.provider.evict(now)
            if self.pins is not None:
                self.pins.evict(now)

    def _drop(self, res: _Reservation) -> None:
        res.done = True
        held = self._held.get((res.rid, res.deployment))
        if held is not None:
            held.remove(res)
            if not held:
                del self._held[(res.rid, res.deployment)]
        d = res.deployment
        self._in_flight[d] -= 1
        self._queued[d] -= res.uncached
        if not self._in_flight[d]:
            del self._in_flight[d]
            self._queued.pop(d, None)

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
        try:  # LiteLLM's shape: the deployment and the stamped id under litellm_params
            params = kwargs["litellm_params"]
            deployment = params["model_info"]["id"]
            rids: list[str] = [params["metadata"][REQUEST_ID_METADATA_KEY]]
            if type(deployment) is not str or type(rids[0]) is not str:
                raise TypeError
        except (KeyError, TypeError):
            deployment = self._callback_deployment(kwargs)
            rids = self._callback_request_ids(kwargs)
        res = None
        with self._lock:
            for rid in rids:
                held = self._held.get((rid, deployment)) if deployment else None
                if held:
                    res = held[0]
                    self._drop(res)
                    break
            if res is None:
                self._counts["unmatched"] += 1
                return False
            counts = self._counts
            counts["released"] += 1
            key = self._keys.get(deployment) or self._key(deployment)
            pin = success and res.session is not None and self.pins is not None
            if success:
                self.mirror.observe(key, res.chain)
                counts["observed"] += bool(res.chain)
                counts["pinned"] += pin
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

    @staticmethod
    def _callback_deployment(kwargs: Mapping[str, Any]) -> str:
        lp = kwargs.get("litellm_params")
        if _is_mapping(lp):
            info = lp.get("model_info")
            if _is_mapping(info) and isinstance(info.get("id"), str):
                return str(info["id"])
            md = lp.get("metadata")
            if _is_mapping(md):
                info = md.get("model_info")
                if _is_mapping(info) and isinstance(info.get("id"), str):
                    return str(info["id"])
        mid = kwargs.get("model_id")
        return mid if isinstance(mid, str) else ""

    @staticmethod
    def _callback_request_ids(kwargs: Mapping[str, Any]) -> list[str]:
        ids: list[str] = []
        lp = kwargs.get("litellm_params")
        if _is_mapping(lp):
            for name in ("metadata", "litellm_metadata"):
                md = lp.get(name)
                if _is_mapping(md):
                    rid = md.get(REQUEST_ID_METADATA_KEY)
                    if isinstance(rid, str) and rid not in ids:
                        ids.append(rid)
        call_id = kwargs.get("litellm_call_id")
        if isinstance(call_id, str) and call_id not in ids:
            ids.append(call_id)
        return ids

    # -- LiteLLM hooks ------------------------------------------------------------------------
    def _mine(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether this plugin decides the request: its router's endpoint is running, or no
        plugin's is and no other plugin claimed the request."""
        active = _ACTIVE.get()
        if active is not None:
            return active is self
        md = _metadata(kwargs)
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
        try:
            if _is_mapping(kwargs):
                self.release(kwargs, success=True)
        except Exception:
            self._bump("errors")

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        """Release the attempt's reservation; clear its session's pin to that deployment."""
        try:
            if _is_mapping(kwargs):
                self.release(kwargs, success=False)
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
                    if _deployment_id(d) == model:
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
        for name in _ENDPOINTS:
            original = getattr(self.router, name, None)
            if original is None or not callable(original):
                continue
            self._wrapped[name] = original
            setattr(self.router, name, _scoped(self, original))

    def attach(self) -> None:
        """Subscribe the index (through ``Sync``) and the pins to the ``sync`` transport
        (:func:`install` calls it; a plugin built directly calls it once). A synchronous
        transport is subscribed when this returns; an asynchronous one from a task on the
        running loop (``await ready()``).

        Raises:
            InvalidRecordError: an asynchronous transport and no running event loop.
        """
        transport = self.transport
        if transport is None or self._detach or self._attach_task is not None:
            return
        if inspect.iscoroutinefunction(transport.subscribe):
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise InvalidRecordError(
                    "sync", transport, "an AsyncTransport needs install() in a running loop"
                ) from None
            self._attach_task = loop.create_task(self._attach_async(transport))  # type: ignore[arg-type]
            return
        assert isinstance(self.provider, Sync)
        self._detach.append(self.provider.attach(transport))  # type: ignore[arg-type]
        if self.pins is not None:
            self._detach.append(self.pins.attach(transport))  # type: ignore[arg-type]

    async def _attach_async(self, transport: AsyncTransport) -> None:
        assert isinstance(self.provider, Sync)
        detach = await self.provider.attach_async(transport)
        self._detach.append(detach)
        if self.pins is not None:
            self._detach.append(await self.pins.attach_async(transport))

    async def ready(self) -> None:
        """Wait until an asynchronous ``sync`` transport is subscribed (a no-op otherwise)."""
        task = self._attach_task
        if task is not None:
            await task

    def uninstall(self) -> None:
        """Undo :func:`install`: leave ``litellm.callbacks``, restore the router's endpoints
        and its default strategy, unsubscribe from the transport. Idempotent (an
        asynchronous transport's unsubscribe is scheduled on the running loop)."""
        import litellm

        for name in _CALLBACK_LISTS:
            registered = getattr(litellm, name, None)
            while isinstance(registered, list) and self in registered:
                registered.remove(self)
        for name, original in self._wrapped.items():
            with contextlib.suppress(Exception):  # a router that refuses keeps a harmless wrapper
                setattr(self.router, name, original)
        self._wrapped.clear()
        if self._strategy is not None:
            reset = getattr(self.router, "_reset_custom_routing_strategy", None)
            if callable(reset):
                reset()
            self._strategy = None
        detachers, self._detach = self._detach, []
        for detach in detachers:
            result = detach()
            if inspect.isawaitable(result):
                import asyncio

                self._closing.add(asyncio.ensure_future(result))


def _scoped(plugin: PrefixRoutingPlugin, endpoint: Any) -> Any:
    """``endpoint`` running with ``plugin`` as the deciding plugin."""

    async def scoped(*args: Any, **kwargs: Any) -> Any:
        token = _ACTIVE.set(plugin)
        try:
            return await endpoint(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)

    scoped.__name__ = getattr(endpoint, "__name__", "endpoint")
    scoped.__doc__ = getattr(endpoint, "__doc__", None)
    return scoped


class _Strategy(CustomRoutingStrategyBase):  # type: ignore[misc]  # LiteLLM is untyped to mypy
    """The strategy-mode face of a plugin (LiteLLM calls these by keyword)."""

    def __init__(self, plugin: PrefixRoutingPlugin) -> None:
        self.plugin = plugin

    async def async_get_available_deployment(
        self,
        model: str,
        messages: Any = None,
        input: Any = None,
        specific_deployment: bool | None = False,
        request_kwargs: Any = None,
    ) -> Any:
        return self.plugin.pick(model, messages, input, specific_deployment, request_kwargs)

    def get_available_deployment(
        self,
        model: str,
        messages: Any = None,
        input: Any = None,
        specific_deployment: bool | None = False,
        request_kwargs: Any = None,
    ) -> Any:
        return self.plugin.pick(model, messages, input, specific_deployment, request_kwargs)


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
    )
    plugin.attach()
    plugin._wrap_endpoints()
    if mode == "strategy":
        strategy = _Strategy(plugin)
        register = getattr(router, "register_plugin", None)
        if callable(register):
            register(strategy)
        else:
            router.set_custom_routing_strategy(strategy)
        plugin._strategy = strategy
    litellm.callbacks.append(plugin)
    return plugin
