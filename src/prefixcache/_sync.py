"""Sharing affinity across routers: the :class:`Sync` decorator.

A :class:`Sync` wraps a provider (an :class:`~prefixcache.Index`) and is itself a provider:
hosts route through it exactly as through the index, and it tells peers what changed through
a :class:`~prefixcache.Publisher`; :meth:`Sync.attach` subscribes it to a
:class:`~prefixcache.Transport` so it applies what peers tell it. The behavioural contract is
in docs/behaviour.md ("Sync across routers").

What a group of routers agrees on (tested in ``tests/property/test_sync_convergence.py``):

* Events are applied with the *receiver's* clock and last-writer-wins by arrival, as in the
  reference. Observations of different replicas on disjoint chains, observations of the same
  replica, and invalidations of one replica against observations of another all commute, so
  for such histories every router ends in the same state whatever the delivery order and
  however often a message is duplicated.
* Concurrent *conflicting* events (two replicas claiming a shared prefix before either claim
  reached the other router; an observe racing an invalidate of the same replica) are resolved
  by arrival order and can leave routers disagreeing about that prefix until it is observed
  again or the routers resync.
* Transports order messages per publisher and subject only (NATS dispatches each subject's
  subscription separately), which is one more reason an observe and an invalidate of the same
  replica count as conflicting when they are close together.
* A lost message is never repaired by the protocol (it has no sequence numbers or acks): the
  router that missed it disagrees until the prefix is observed again, the entry expires, or it
  resyncs. Anti-entropy (:mod:`prefixcache._snapshot`): compare :func:`~prefixcache.digests`,
  and on drift apply a peer's :func:`~prefixcache.export_snapshot`.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._decision import PrefixDecision
from prefixcache._events import (
    INVALIDATE_SUBJECT,
    MAX_EVENT_BYTES,
    MAX_EVENT_CHAIN,
    OBSERVE_SUBJECT,
    EventDecodeError,
    InvalidateEvent,
    ObserveEvent,
    decode_event,
)
from prefixcache._index import Provider
from prefixcache._keys import check_callable, check_methods
from prefixcache._plumbing import attach_handler, attach_handler_async, awaited
from prefixcache._protocols import (
    AsyncPublisher,
    AsyncTransport,
    AsyncUnsubscribe,
    Clock,
    Publisher,
    Transport,
    Unsubscribe,
)
from prefixcache._signing import RateLimit, RateLimiter, Signer, Verifier, check_guards
from prefixcache._snapshot import Snapshot, apply_snapshot, digests, export_snapshot
from prefixcache._types import Candidate, ReplicaKey

#: An ``isinstance`` target built once (an inline union is built on every call).
_BYTES_LIKE = (bytes, bytearray, memoryview)

__all__ = [
    "DEFAULT_MAX_PENDING_PUBLISHES",
    "DEFAULT_PUBLISH_TIMEOUT",
    "PublishErrorHook",
    "Sync",
    "SyncStats",
]

_log = logging.getLogger("prefixcache.sync")

PublishErrorHook = Callable[[str, BaseException], None]
"""``hook(subject, error)``: told about each failed or timed-out publish."""

DEFAULT_PUBLISH_TIMEOUT = 2.0
"""Seconds an asynchronous publish may take before it counts as failed."""

DEFAULT_MAX_PENDING_PUBLISHES = 10_000
"""Asynchronous publishes a :class:`Sync` keeps in flight before it drops the oldest."""


class _LogPublishErrors:
    """The default hook: a warning for the first failure of a streak, then every 100th (an
    outage must not flood the log); a successful publish ends the streak."""

    def __init__(self) -> None:
        self.streak = 0

    def __call__(self, subject: str, error: BaseException) -> None:
        self.streak += 1
        if self.streak == 1 or self.streak % 100 == 0:
            _log.warning(
                "publishing on %s failed: %s (routing continues; %d failures in a row)",
                subject,
                _short_repr(error),
                self.streak,
            )


#: What the ``apply_*`` methods take besides an event record: its wire payload or the JSON
#: object decoded from it.
EventLike = bytes | bytearray | memoryview | str | Mapping[str, object]

_E = TypeVar("_E", ObserveEvent, InvalidateEvent)


def _as_event(cls: type[_E], event: object) -> _E:
    if isinstance(event, cls):
        return event
    if isinstance(event, str):
        return cls.decode(event.encode("utf-8"))
    if isinstance(event, _BYTES_LIKE):
        return cls.decode(bytes(event))
    if isinstance(event, Mapping):
        try:
            payload = json.dumps(dict(event), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise EventDecodeError("<event>", event, f"is not a JSON object ({exc})") from None
        return cls.decode(payload)
    raise EventDecodeError("<event>", event, f"must be a {cls.__name__}, bytes, str or mapping")


@attrs.frozen(kw_only=True)
class SyncStats:
    """Counters of one :class:`Sync` (monotone since construction).

    Attributes:
        published: messages handed to the publisher successfully (for an async publisher,
            completed).
        publish_errors: publishes that raised or timed out (each also went to the hook).
        publish_dropped: asynchronous publishes dropped unsent because
            ``max_pending_publishes`` were already in flight (a hung broker).
        received: messages delivered by an attached transport (every subject).
        applied_observe / applied_invalidate: peer events applied to the provider.
        dropped_malformed: payloads that failed :func:`~prefixcache.decode_event`.
        dropped_unknown_subject: messages on a subject other than the two sync subjects.
        dropped_oversized: payloads over ``max_payload_bytes`` (not parsed).
        dropped_unsigned / dropped_forged / dropped_stale / dropped_replayed: messages a
            ``verifier`` rejected (see :class:`~prefixcache.Verifier`).
        dropped_rate_limited: messages over their origin's ``rate_limit``.
        apply_errors: events the provider raised on (logged; should stay 0).
    """

    published: int = 0
    publish_errors: int = 0
    publish_dropped: int = 0
    received: int = 0
    applied_observe: int = 0
    applied_invalidate: int = 0
    dropped_malformed: int = 0
    dropped_unknown_subject: int = 0
    dropped_oversized: int = 0
    dropped_unsigned: int = 0
    dropped_forged: int = 0
    dropped_stale: int = 0
    dropped_replayed: int = 0
    dropped_rate_limited: int = 0
    apply_errors: int = 0

    @property
    def dropped(self) -> int:
        """All dropped incoming messages."""
        return (
            self.dropped_malformed
            + self.dropped_unknown_subject
            + self.dropped_oversized
            + self.dropped_unsigned
            + self.dropped_forged
            + self.dropped_stale
            + self.dropped_replayed
            + self.dropped_rate_limited
        )


class Sync:
    """A provider that shares what it learns with peer routers (a decorator over it).

    Provider methods, same signatures as :class:`~prefixcache.Index`:

    * ``decide`` and ``evict`` are local (eviction is never broadcast: each router sweeps on
      its own clock);
    * ``observe`` publishes an :class:`~prefixcache.ObserveEvent` only when the local observe
      returned ``True`` ("new or extended"), so re-observing a warm chain costs no traffic;
      a chain longer than :data:`~prefixcache.MAX_EVENT_CHAIN` (a ``Config.max_depth`` above
      it) is published truncated to its first ``MAX_EVENT_CHAIN`` hashes: a replica that
      holds a chain holds each of its prefixes, so peers learn a true, shorter claim;
    * ``invalidate`` / ``invalidate_node`` always publish (a peer may hold an entry this
      router never had), and never create a tree locally.

    Peer events: :meth:`apply_observe` / :meth:`apply_invalidate` (or :meth:`handle`, the
    transport-facing handler, installed by :meth:`attach`) apply them with the receiver's
    ``clock`` and never re-publish, so there are no loops. Malformed, oversized and
    unknown-subject messages are dropped and counted (:meth:`stats`), never raised.

    Trust (all off by default): with a ``signer`` every published message carries the
    signature envelope (:mod:`prefixcache._signing`); with a ``verifier`` :meth:`handle` drops
    and counts unsigned, forged, stale and replayed messages before decoding them; with a
    ``rate_limit`` each origin (the verified ``origin``; without a verifier every message
    counts against the one origin ``""``) may apply at most that many messages per second,
    the rest are dropped and counted.

    A publisher that raises (or, when asynchronous, fails or exceeds ``publish_timeout``)
    never breaks a routing call: the error is counted and passed to ``on_publish_error``
    (default: a warning on the ``prefixcache.sync`` logger). An :class:`AsyncPublisher` is
    supported from inside a running event loop: each publish becomes a task, chained so that
    messages leave in call order; :meth:`flush` awaits them. At most ``max_pending_publishes``
    are in flight: beyond that the oldest is cancelled and counted (``publish_dropped``), so a
    hung broker bounds memory instead of growing a task per routing call.

    Args:
        provider: the wrapped provider (normally an ``Index``).
        publisher: where this router's events go (``None``: nowhere until :meth:`attach`).
        clock: stamps events applied from peers, so it must be the clock domain the host
            passes as ``now`` to its own calls, and the same on every router: the wall clock.
        on_publish_error: the failure hook (default: a warning for the first failure of a
            streak, then every 100th, on the ``prefixcache.sync`` logger).
        publish_timeout: seconds, for asynchronous publishers.
        max_pending_publishes: asynchronous publishes in flight at most (>= 1).
        max_payload_bytes: larger incoming payloads are dropped unparsed.
        signer: signs outgoing messages.
        verifier: admits only verified incoming messages.
        rate_limit: per-origin token bucket for incoming messages (a ``RateLimit``, or a
            ready ``RateLimiter``); its clock is ``clock``.

    Thread-safe: provider calls are serialised by a lock (publishing happens outside it);
    transport handlers may run on any thread.

    >>> from prefixcache import Index, ReplicaKey
    >>> from prefixcache.testing import RecordingPublisher
    >>> pub = RecordingPublisher()
    >>> s = Sync(Index(), pub, clock=lambda: 0.0)
    >>> s.observe("m", (1, 2), ReplicaKey("n1"), now=0.0)
    True
    >>> s.observe("m", (1, 2), ReplicaKey("n1"), now=1.0)  # already owned: no message
    False
    >>> [subject for subject, _ in pub.published]
    ['prefixcache.observe']
    """

    def __init__(
        self,
        provider: Provider,
        publisher: Publisher | AsyncPublisher | None = None,
        *,
        clock: Clock | Callable[[], float] = time.time,
        on_publish_error: PublishErrorHook | None = None,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        max_payload_bytes: int = MAX_EVENT_BYTES,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        rate_limit: RateLimit | RateLimiter | None = None,
        max_pending_publishes: int = DEFAULT_MAX_PENDING_PUBLISHES,
    ) -> None:
        if not isinstance(provider, Provider):
            raise InvalidRecordError("provider", provider, "must be a Provider (an Index)")
        check_methods("publisher", publisher, "publish", what="a Publisher", optional=True)
        check_callable("clock", clock)
        check_callable("on_publish_error", on_publish_error, optional=True)
        check_guards(signer, verifier, rate_limit)
        if not publish_timeout > 0:
            raise InvalidRecordError("publish_timeout", publish_timeout, "must be > 0")
        if type(max_payload_bytes) is not int or max_payload_bytes <= 0:
            raise InvalidRecordError("max_payload_bytes", max_payload_bytes, "must be an int > 0")
        self.provider = provider
        self.publisher = publisher
        self.clock = clock
        self._default_hook = _LogPublishErrors()
        self.on_publish_error: PublishErrorHook = on_publish_error or self._default_hook
        self.publish_timeout = publish_timeout
        self.max_payload_bytes = max_payload_bytes
        self._lock = threading.RLock()
        self._counts: dict[str, int] = dict.fromkeys(attrs.fields_dict(SyncStats), 0)
        self._count_lock = threading.Lock()
        self._tail: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._pending_order: collections.deque[asyncio.Task[None]] = collections.deque()
        if type(max_pending_publishes) is not int or max_pending_publishes < 1:
            raise InvalidRecordError(
                "max_pending_publishes", max_pending_publishes, "must be an int >= 1"
            )
        self.max_pending_publishes = max_pending_publishes
        self.signer = signer
        self.verifier = verifier
        self.rate_limiter = (
            RateLimiter(rate_limit) if isinstance(rate_limit, RateLimit) else rate_limit
        )
        self._trust_lock = threading.Lock()

    # -- provider protocol ------------------------------------------------------------------
    def decide(
        self,
        model: str,
        chain: Sequence[int],
        candidates: Sequence[Candidate | ReplicaKey],
        now: float,
    ) -> PrefixDecision:
        """The wrapped provider's decision (local; nothing is published)."""
        with self._lock:
            return self.provider.decide(model, chain, candidates, now)

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool:
        """Observe locally; publish an observe event iff the local observe returned ``True``.

        Returns what the provider returned.
        """
        with self._lock:
            changed = self.provider.observe(model, chain, key, now)
        if changed:
            self._publish_event(
                OBSERVE_SUBJECT,
                lambda: ObserveEvent.from_key(model, _head(chain, MAX_EVENT_CHAIN), key),
            )
        return changed

    def invalidate(self, model: str, key: ReplicaKey) -> object:
        """Drop ``key``'s entries locally and tell peers (always, even if nothing was here).

        Returns what the provider returned (an ``Index`` returns the number removed).
        """
        with self._lock:
            result = self.provider.invalidate(model, key)
        self._publish_event(INVALIDATE_SUBJECT, lambda: InvalidateEvent.for_key(model, key))
        return result

    def invalidate_node(self, model: str, node_id: str) -> object:
        """Drop every replica of ``node_id`` locally and tell peers (``replica=-1``).

        An empty ``node_id`` is applied locally (a no-op for the index) but not published: it
        is not a valid event. Returns what the provider returned.
        """
        with self._lock:
            result = self.provider.invalidate_node(model, node_id)
        if node_id:
            self._publish_event(
                INVALIDATE_SUBJECT, lambda: InvalidateEvent.for_node(model, node_id)
            )
        return result

    def evict(self, now: float) -> object:
        """Sweep expired entries locally (never published); returns what the provider returns."""
        with self._lock:
            return self.provider.evict(now)

    def models(self) -> frozenset[str]:
        """The provider's models."""
        with self._lock:
            return self.provider.models()

    # -- peer events ------------------------------------------------------------------------
    def apply_observe(self, event: ObserveEvent | EventLike, now: float | None = None) -> bool:
        """Apply a peer's observe at ``now`` (default: ``clock()``); never publishes.

        ``event`` is an :class:`ObserveEvent`, or its wire form (payload ``bytes``/``str``)
        or decoded JSON object (a mapping with ``model``, ``chain``, ``node_id``,
        ``replica``), validated exactly as on the wire.

        Raises:
            EventDecodeError: ``event`` is not a valid observe event.
        """
        event = _as_event(ObserveEvent, event)
        t = self.clock() if now is None else now
        with self._lock:
            return self.provider.observe(event.model, event.chain, event.key, t)

    def apply_invalidate(self, event: InvalidateEvent | EventLike) -> None:
        """Apply a peer's invalidation (a whole node when ``replica < 0``); never publishes and
        never creates a tree.

        ``event`` is an :class:`InvalidateEvent`, its wire form or its decoded JSON object,
        as for :meth:`apply_observe`.

        Raises:
            EventDecodeError: ``event`` is not a valid invalidate event.
        """
        event = _as_event(InvalidateEvent, event)
        key = event.key
        with self._lock:
            if key is None:
                self.provider.invalidate_node(event.model, event.node_id)
            else:
                self.provider.invalidate(event.model, key)

    def handle(self, subject: str, payload: bytes) -> None:
        """The transport handler: decode and apply one message. Never raises.

        In order: a payload that is not bytes-like is malformed; an oversized one, one on an
        unknown subject, one the ``verifier`` rejects and one over its origin's rate limit
        are dropped; then it is decoded and applied. Each drop is counted (:meth:`stats`).
        """
        self._bump("received")
        try:
            if not isinstance(payload, _BYTES_LIKE):
                self._bump("dropped_malformed")
                _log.debug("dropped a %s payload on %r", type(payload).__name__, subject)
                return
            if len(payload) > self.max_payload_bytes:
                self._bump("dropped_oversized")
                _log.debug("dropped oversized message (%d bytes) on %s", len(payload), subject)
                return
            if subject not in (OBSERVE_SUBJECT, INVALIDATE_SUBJECT):
                self._bump("dropped_unknown_subject")
                _log.debug("dropped message on unknown subject %r", subject)
                return
            if not self.admit(subject, bytes(payload)):
                return
            try:
                event = decode_event(subject, payload)
            except EventDecodeError as exc:
                self._bump("dropped_malformed")
                _log.debug("dropped malformed message on %s: %s", subject, exc)
                return
            if isinstance(event, ObserveEvent):
                self.apply_observe(event)
                self._bump("applied_observe")
            else:
                self.apply_invalidate(event)
                self._bump("applied_invalidate")
        except Exception:
            # Never raise into the transport; a provider bug is logged and counted.
            self._bump("apply_errors")
            _log.exception("applying a message on %r failed", subject)

    def admit(self, subject: str, payload: bytes, now: float | None = None) -> bool:
        """Whether a message passes the ``verifier`` and the ``rate_limit`` at ``now``
        (default ``clock()``); a rejection is counted. (Used by :meth:`handle` and by other
        subjects' handlers, e.g. the resync loop's.)"""
        if self.verifier is None and self.rate_limiter is None:
            return True
        t = self.clock() if now is None else now
        origin: str | None = ""
        with self._trust_lock:
            if self.verifier is not None:
                verdict, origin = self.verifier.check(subject, payload, now=t)
                if verdict != "ok":
                    self._bump("dropped_" + verdict)
                    _log.debug("dropped a %s message on %s", verdict, subject)
                    return False
            if self.rate_limiter is not None and not self.rate_limiter.allow(origin or "", t):
                self._bump("dropped_rate_limited")
                return False
        return True

    def sign(self, subject: str, payload: bytes) -> bytes:
        """``payload`` signed with the ``signer`` (unchanged without one)."""
        if self.signer is None:
            return payload
        return self.signer.sign(subject, payload, now=self.clock())

    def attach(self, transport: Transport) -> Unsubscribe:
        """Subscribe :meth:`handle` to both sync subjects of ``transport``; return ``detach``.

        If this Sync has no publisher, it publishes through ``transport`` until detached.
        ``detach()`` unsubscribes both subjects; calling it again is a no-op.
        """
        return attach_handler(self, transport, (OBSERVE_SUBJECT, INVALIDATE_SUBJECT), self.handle)

    async def attach_async(self, transport: AsyncTransport) -> AsyncUnsubscribe:
        """The asyncio form of :meth:`attach` (subscriptions active when it returns)."""
        return await attach_handler_async(
            self, transport, (OBSERVE_SUBJECT, INVALIDATE_SUBJECT), self.handle
        )

    # -- anti-entropy -----------------------------------------------------------------------
    def _indexed(self) -> Any:
        # Snapshots read trees: the provider must be an Index (or expose ``tree(model)``).
        if not hasattr(self.provider, "tree") and not hasattr(self.provider, "provider"):
            raise TypeError("snapshots need a provider with tree(model), such as an Index")
        return self.provider

    def export_snapshot(self, now: float | None = None) -> Snapshot:
        """:func:`~prefixcache.export_snapshot` of the wrapped provider at ``now``
        (default ``clock()``)."""
        t = self.clock() if now is None else now
        with self._lock:
            return export_snapshot(self._indexed(), now=t)

    def apply_snapshot(
        self, snapshot: Snapshot, now: float | None = None, *, replace: bool = True
    ) -> int:
        """:func:`~prefixcache.apply_snapshot` to the wrapped provider (nothing is published)."""
        t = self.clock() if now is None else now
        with self._lock:
            return apply_snapshot(self._indexed(), snapshot, now=t, replace=replace)

    def digests(self, now: float | None = None) -> dict[str, int]:
        """:func:`~prefixcache.digests` of the wrapped provider."""
        t = self.clock() if now is None else now
        with self._lock:
            return digests(self._indexed(), now=t)

    # -- counters and publishing ----------------------------------------------------------
    def stats(self) -> SyncStats:
        """A consistent copy of the counters."""
        with self._count_lock:
            return SyncStats(**self._counts)

    def _bump(self, name: str) -> None:
        with self._count_lock:
            self._counts[name] += 1

    def _published(self) -> None:
        self._bump("published")
        self._default_hook.streak = 0

    def _publish_failed(self, subject: str, error: BaseException) -> None:
        self._bump("publish_errors")
        try:
            self.on_publish_error(subject, error)
        except Exception:
            _log.exception("the publish error hook raised")

    def _publish_event(
        self, subject: str, make: Callable[[], ObserveEvent | InvalidateEvent]
    ) -> None:
        if self.publisher is None:
            return
        try:
            payload = self.sign(subject, make().encode())
        except (TypeError, ValueError) as exc:  # not representable (a bad model name, ...)
            self._publish_failed(subject, exc)
            return
        self._publish(subject, payload)

    def _publish(self, subject: str, payload: bytes) -> None:
        publisher = self.publisher
        if publisher is None:
            return
        try:
            result = publisher.publish(subject, payload)
        except Exception as exc:
            self._publish_failed(subject, exc)
            return
        if result is None:
            self._published()
            return
        if not inspect.isawaitable(result):  # a publisher returning a value: accepted
            self._published()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(result):
                result.close()
            self._publish_failed(
                subject, RuntimeError("an async publisher was called outside a running event loop")
            )
            return
        order = self._pending_order
        while order and order[0].done():
            order.popleft()
        if len(order) >= self.max_pending_publishes:
            # A hung broker: the oldest unsent message gives way (the next one waits for it).
            order.popleft().cancel()
            self._bump("publish_dropped")
        task = loop.create_task(self._send_after(self._tail, result, subject))
        self._tail = task
        self._pending.add(task)
        order.append(task)
        task.add_done_callback(self._pending.discard)
        if inspect.iscoroutine(result):
            task.add_done_callback(_closer(result))

    async def _send_after(
        self, previous: asyncio.Task[None] | None, send: Awaitable[Any], subject: str
    ) -> None:
        if (
            previous is not None
            and not previous.done()
            and previous.get_loop() is asyncio.get_running_loop()
        ):
            await asyncio.wait({previous})
        try:
            await asyncio.wait_for(awaited(send), self.publish_timeout)
        except Exception as exc:  # TimeoutError included
            self._publish_failed(subject, exc)
        else:
            self._published()

    async def flush(self) -> None:
        """Wait until every asynchronous publish started so far on this event loop has
        finished (or failed)."""
        loop = asyncio.get_running_loop()
        while mine := {t for t in self._pending if t.get_loop() is loop}:
            await asyncio.wait(mine)


def _closer(coro: Coroutine[Any, Any, Any]) -> Callable[[asyncio.Task[None]], None]:
    """A done callback closing ``coro`` (a no-op once it ran): a send dropped before its task
    started is then not reported as never awaited."""

    def close(_task: asyncio.Task[None]) -> None:
        coro.close()

    return close


def _short_repr(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters (an error can hold a whole chain)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _head(chain: Sequence[int], n: int) -> Sequence[int]:
    return chain[:n] if len(chain) > n else chain
