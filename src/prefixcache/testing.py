"""Test doubles and a conformance kit for the sync ports (public, for hosts' tests too).

* :class:`ManualClock`: a :class:`~prefixcache.Clock` that moves only when told to.
* :class:`RecordingPublisher`: a :class:`~prefixcache.Publisher` that records (and can fail).
* :class:`InMemoryTransport`: a message hub connecting any number of routers in one process,
  with deterministic delivery order and seeded or explicit drop / duplicate / reorder faults.
* :class:`GatedAsyncTransport`: an :class:`~prefixcache.AsyncTransport` whose sends wait
  until the test opens a gate: a hung broker, without timings.
* :func:`check_transport`: the behaviour every :class:`~prefixcache.Transport` must have;
  run it against your own adapter (this package runs it against the in-memory hub, NATS
  and Redis).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache._events import InvalidateEvent, ObserveEvent, decode_event
from prefixcache._keys import check_time
from prefixcache._protocols import AsyncUnsubscribe, MessageHandler, Transport, Unsubscribe

__all__ = [
    "GatedAsyncTransport",
    "InMemoryConnection",
    "InMemoryTransport",
    "ManualClock",
    "PendingDelivery",
    "RecordingPublisher",
    "TransportConformanceError",
    "check_async_transport",
    "check_transport",
]

_log = logging.getLogger("prefixcache.testing")


class ManualClock:
    """A clock that returns ``now`` until moved: ``clock() -> float``.

    Thread-safe. ``advance(dt)`` moves forward by ``dt >= 0`` seconds; ``set(t)`` jumps to
    ``t`` (backwards too, to test clock skew).

    >>> c = ManualClock(10.0)
    >>> c.advance(2.5)
    12.5
    >>> c()
    12.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = check_time("start", start)  # a NaN clock would poison every reading
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    @property
    def now(self) -> float:
        """The current reading."""
        return self()

    def advance(self, dt: float) -> float:
        """Move forward by ``dt`` seconds and return the new time.

        Raises:
            InvalidRecordError: ``dt`` is negative, NaN or not a number.
        """
        if check_time("dt", dt) < 0:
            raise InvalidRecordError("dt", dt, "must be >= 0")
        with self._lock:
            self._now += dt
            return self._now

    def set(self, t: float) -> None:
        """Jump to ``t`` (any direction).

        Raises:
            InvalidRecordError: ``t`` is not a number, or is NaN.
        """
        t = check_time("t", t)
        with self._lock:
            self._now = t


class RecordingPublisher:
    """A publisher that appends every ``(subject, payload)`` to :attr:`published`.

    Set :attr:`fail_with` to an exception to make ``publish`` raise it (after recording
    nothing), which is how tests show that a failing publisher never breaks routing.
    Thread-safe.

    >>> p = RecordingPublisher()
    >>> p.publish("prefixcache.invalidate", InvalidateEvent.for_node("m", "n").encode())
    >>> p.events()
    [InvalidateEvent(model='m', node_id='n', replica=-1)]
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.fail_with: BaseException | None = None
        self._lock = threading.Lock()

    def publish(self, subject: str, payload: bytes) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        with self._lock:
            self.published.append((subject, bytes(payload)))

    def events(self) -> list[ObserveEvent | InvalidateEvent]:
        """Every recorded message decoded (raises ``EventDecodeError`` for a bad one)."""
        with self._lock:
            return [decode_event(s, p) for s, p in self.published]

    def clear(self) -> None:
        """Forget everything recorded."""
        with self._lock:
            self.published.clear()


@attrs.frozen(kw_only=True)
class PendingDelivery:
    """One message queued in an :class:`InMemoryTransport` for one subscription.

    ``seq`` numbers publishes (duplicates share it); ``sender`` and ``receiver`` are
    connection names.
    """

    seq: int
    sender: str
    receiver: str
    subject: str
    payload: bytes
    subscription: int


@attrs.define
class _Subscription:
    ident: int
    connection: str
    subject: str
    handler: MessageHandler
    active: bool = True


class InMemoryTransport:
    """A hub of in-process connections: several routers in one process, no network.

    ``hub.connect(name)`` returns an :class:`InMemoryConnection` (a
    :class:`~prefixcache.Transport`); a message published on a connection is queued once for
    every active subscription of that subject on *other* connections (no echo). The hub is
    itself a Transport (its own connection, named ``"<hub>"``).

    Delivery is deterministic: queued deliveries run in FIFO order on the thread that calls
    :meth:`deliver` (or, with ``auto_deliver=True``, the thread that publishes, right away;
    messages published by a handler are delivered after the current one, never re-entrantly).
    Faults, for tests, apply when a batch is delivered, drawn from ``random.Random(seed)``:
    each delivery is dropped with probability ``drop``, otherwise duplicated with probability
    ``duplicate``; with ``reorder=True`` each batch is shuffled. For exhaustive tests, drive
    the queue explicitly with :meth:`pending`, :meth:`deliver_one`, :meth:`drop_one` and
    :meth:`duplicate_one` (with ``auto_deliver=False``).

    Exceptions raised by handlers are logged, appended to :attr:`handler_errors` and do not
    stop delivery. Thread-safe (the queue is locked; handlers run outside the lock).

    >>> hub = InMemoryTransport()
    >>> a, b = hub.connect("a"), hub.connect("b")
    >>> got = []
    >>> _ = b.subscribe("s", lambda subject, payload: got.append(payload))
    >>> a.publish("s", b"hi")
    >>> got
    [b'hi']
    """

    HUB: Final = "<hub>"

    def __init__(
        self,
        *,
        auto_deliver: bool = True,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: bool = False,
        seed: int = 0,
    ) -> None:
        for name, p in (("drop", drop), ("duplicate", duplicate)):
            if not 0.0 <= p <= 1.0:
                raise InvalidRecordError(name, p, "must be a probability in [0, 1]")
        self.auto_deliver = auto_deliver
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._subs: dict[int, _Subscription] = {}
        self._queue: list[PendingDelivery] = []
        self._next_sub = 0
        self._next_seq = 0
        self._names: set[str] = set()
        self._delivering = False
        self.handler_errors: list[BaseException] = []
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0
        self._own = self.connect(self.HUB)

    # -- connections ----------------------------------------------------------------------
    def connect(self, name: str | None = None) -> InMemoryConnection:
        """A new connection to this hub. ``name`` (unique; default a fresh one) labels it in
        :class:`PendingDelivery` records.

        Raises:
            InvalidRecordError: ``name`` is already connected.
        """
        with self._lock:
            if name is None:
                name = f"conn-{len(self._names)}"
                while name in self._names:
                    name += "'"
            if name in self._names:
                raise InvalidRecordError("name", name, "is already connected to this hub")
            self._names.add(name)
        return InMemoryConnection(self, name)

    def publish(self, subject: str, payload: bytes) -> None:
        """Publish from the hub's own connection."""
        self._own.publish(subject, payload)

    def subscribe(self, subject: str, handler: MessageHandler) -> Unsubscribe:
        """Subscribe through the hub's own connection."""
        return self._own.subscribe(subject, handler)

    # -- queue ----------------------------------------------------------------------------
    def _publish(self, sender: str, subject: str, payload: bytes) -> None:
        payload = bytes(payload)
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self.published += 1
            for sub in self._subs.values():
                if sub.active and sub.subject == subject and sub.connection != sender:
                    self._queue.append(
                        PendingDelivery(
                            seq=seq,
                            sender=sender,
                            receiver=sub.connection,
                            subject=subject,
                            payload=payload,
                            subscription=sub.ident,
                        )
                    )
        if self.auto_deliver:
            self.deliver()

    def _subscribe(self, connection: str, subject: str, handler: MessageHandler) -> Unsubscribe:
        with self._lock:
            sub = _Subscription(self._next_sub, connection, subject, handler)
            self._next_sub += 1
            self._subs[sub.ident] = sub

        def unsubscribe() -> None:
            with self._lock:
                sub.active = False
                self._subs.pop(sub.ident, None)

        return unsubscribe

    def pending(self) -> tuple[PendingDelivery, ...]:
        """The queued deliveries, in delivery order."""
        with self._lock:
            return tuple(self._queue)

    def _run(self, d: PendingDelivery) -> None:
        with self._lock:
            sub = self._subs.get(d.subscription)
        if sub is None or not sub.active:
            return
        try:
            sub.handler(d.subject, d.payload)
        except Exception as exc:  # a handler's bug must not stop the hub
            _log.exception("handler for %r on %r raised", d.subject, d.receiver)
            self.handler_errors.append(exc)
        with self._lock:
            self.delivered += 1

    def deliver_one(self, index: int = 0) -> PendingDelivery:
        """Deliver (and dequeue) the ``index``-th pending delivery now; return it.

        Raises:
            IndexError: no such pending delivery.
        """
        with self._lock:
            d = self._queue.pop(index)
        self._run(d)
        return d

    def drop_one(self, index: int = 0) -> PendingDelivery:
        """Discard the ``index``-th pending delivery (message loss); return it."""
        with self._lock:
            d = self._queue.pop(index)
            self.dropped += 1
        return d

    def duplicate_one(self, index: int = 0) -> PendingDelivery:
        """Append a copy of the ``index``-th pending delivery to the queue; return it."""
        with self._lock:
            d = self._queue[index]
            self._queue.append(d)
            self.duplicated += 1
        return d

    def deliver(self, *, max_rounds: int = 10_000) -> int:
        """Deliver everything queued (and whatever handlers publish meanwhile), applying the
        configured faults batch by batch; return how many handler calls ran. A call made
        while the hub is already delivering on this or another thread returns 0 at once (the
        running loop drains the queue).

        Raises:
            ClusterRoutingError: still not quiescent after ``max_rounds`` batches (handlers
                publishing in a loop).
        """
        with self._lock:
            if self._delivering:
                return 0
            self._delivering = True
        ran = 0
        try:
            for _ in range(max_rounds):
                with self._lock:
                    batch, self._queue = self._queue, []
                    if not batch:
                        return ran
                    plan: list[PendingDelivery] = []
                    for d in batch:
                        if self.drop and self._rng.random() < self.drop:
                            self.dropped += 1
                            continue
                        plan.append(d)
                        if self.duplicate and self._rng.random() < self.duplicate:
                            plan.append(d)
                            self.duplicated += 1
                    if self.reorder:
                        self._rng.shuffle(plan)
                for d in plan:
                    self._run(d)
                    ran += 1
            raise ClusterRoutingError(f"InMemoryTransport not quiescent after {max_rounds} rounds")
        finally:
            with self._lock:
                self._delivering = False


class InMemoryConnection:
    """One router's connection to an :class:`InMemoryTransport` hub (a Transport).

    Created by :meth:`InMemoryTransport.connect`. ``close()`` cancels its subscriptions.
    Thread-safe.
    """

    def __init__(self, hub: InMemoryTransport, name: str) -> None:
        self.hub = hub
        self.name = name
        self._unsubs: list[Unsubscribe] = []

    def publish(self, subject: str, payload: bytes) -> None:
        self.hub._publish(self.name, subject, payload)

    def subscribe(self, subject: str, handler: MessageHandler) -> Unsubscribe:
        unsub = self.hub._subscribe(self.name, subject, handler)
        self._unsubs.append(unsub)
        return unsub

    def close(self) -> None:
        """Cancel every subscription made through this connection."""
        for unsub in self._unsubs:
            unsub()
        self._unsubs.clear()

    def __repr__(self) -> str:
        return f"InMemoryConnection(name={self.name!r})"


class GatedAsyncTransport:
    """An asyncio transport whose ``publish`` waits until :meth:`open` is called: a broker
    that accepted the connection and then hung (``SIGSTOP``), reproducible without timings.

    Each ``publish`` sets :attr:`entered` (a ``threading.Event``) when it starts waiting and
    appends ``(subject, payload)`` to :attr:`published` once the gate is open; :attr:`sends`
    counts publishes that started. ``subscribe`` records the handler and delivers nothing.
    The waiting happens off the event loop (in the loop's default executor), so the loop
    stays responsive while a send hangs. ``close()`` opens the gate.
    Thread-safe.

    >>> from prefixcache.transports import ThreadedTransport
    >>> gated = GatedAsyncTransport()
    >>> async def connect() -> GatedAsyncTransport:
    ...     return gated
    >>> t = ThreadedTransport(connect, timeout=60.0, max_queue=2)
    >>> t.publish("s", b"1")
    >>> gated.entered.wait(10.0)
    True
    >>> for p in (b"2", b"3", b"4"):
    ...     t.publish("s", p)  # returns at once: the send of b"1" is hung
    >>> t.dropped, t.pending()
    (1, 2)
    >>> gated.open()
    >>> t.drain(10.0)
    True
    >>> [p for _, p in gated.published]
    [b'1', b'3', b'4']
    >>> t.close()
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.published: list[tuple[str, bytes]] = []
        self.handlers: list[tuple[str, MessageHandler]] = []
        self.sends = 0
        self._gate = threading.Event()
        self._lock = threading.Lock()

    def open(self) -> None:
        """Let every waiting and later publish through."""
        self._gate.set()

    async def publish(self, subject: str, payload: bytes) -> None:
        with self._lock:
            self.sends += 1
        self.entered.set()
        if not self._gate.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self._gate.wait)
        with self._lock:
            self.published.append((subject, bytes(payload)))

    async def subscribe(self, subject: str, handler: MessageHandler) -> AsyncUnsubscribe:
        with self._lock:
            self.handlers.append((subject, handler))

        async def unsubscribe() -> None:
            return None

        return unsubscribe

    async def close(self) -> None:
        self.open()


# -- conformance kit ----------------------------------------------------------------------


class TransportConformanceError(ClusterRoutingError, AssertionError):
    """A transport broke the contract checked by :func:`check_transport`; the message names
    the check."""


class _Inbox:
    def __init__(self, fail_first: int = 0) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.fail_first = fail_first

    def __call__(self, subject: str, payload: bytes) -> None:
        with self.cond:
            self.items.append((subject, bytes(payload)))
            self.cond.notify_all()
            if self.fail_first > 0:
                self.fail_first -= 1
                raise RuntimeError("deliberate handler failure (check_transport)")

    def snapshot(self) -> list[tuple[str, bytes]]:
        with self.cond:
            return list(self.items)


#: Counters a transport may keep (ours do, on it or on the asynchronous transport it wraps),
#: reported when a delivery times out: a lost message is then told from a reconnect.
_COUNTERS = ("disconnects", "reconnects", "errors", "handler_errors", "publish_errors")


def _counters(made: Sequence[object]) -> str:
    """``"A: disconnects=0 reconnects=0; B: ..."`` for the transports that keep counters."""
    parts = []
    for name, t in zip("ABC", made, strict=False):
        found: dict[str, int] = {}
        for obj in (t, getattr(t, "transport", None)):
            for c in _COUNTERS:
                v = getattr(obj, c, None)
                if isinstance(v, int) and not isinstance(v, bool):
                    found.setdefault(c, v)
        if found:
            parts.append(f"{name}: " + " ".join(f"{k}={v}" for k, v in found.items()))
    return "; ".join(parts)


def check_transport(
    factory: Callable[[], Transport],
    *,
    timeout: float = 10.0,
    pump: Callable[[], object] | None = None,
) -> None:
    """Check that transports made by ``factory`` honour the :class:`~prefixcache.Transport`
    contract; raise :class:`TransportConformanceError` naming the first broken check.

    ``factory()`` must return a new, connected transport on the shared bus each time (three
    are made). Checks: payloads arrive byte-for-byte (empty, binary, 64 KiB) with the right
    subject; per-publisher order (100 messages); no echo to the publishing transport;
    subject isolation; fan-out to two subscribers; unsubscribe stops delivery and is
    idempotent; a raising handler does not stop later deliveries. ``subscribe`` must return
    only once the subscription is active. Waits are bounded by ``timeout`` seconds each;
    ``pump`` (e.g. ``hub.deliver`` for a manual in-memory hub) is called while waiting; a
    delivery that times out reports the transports' counters (``disconnects``,
    ``reconnects``, ...) where they keep them.
    Transports with a ``close()`` method are closed at the end. Subjects are fresh
    (``prefixcache.conformance.<random>.*``), so a shared broker can be used.

    >>> hub = InMemoryTransport()
    >>> check_transport(hub.connect)
    """
    base = f"prefixcache.conformance.{uuid.uuid4().hex[:12]}"
    made: list[Transport] = []

    def wait_for(what: str, cond: Callable[[], bool], inbox: _Inbox) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if pump is not None:
                pump()
            with inbox.cond:
                if cond():
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    counters = _counters(made)
                    raise TransportConformanceError(
                        f"{what}: not delivered within {timeout} s (got {len(inbox.items)})"
                        + (f"; transport counters {counters}" if counters else "")
                    )
                inbox.cond.wait(min(left, 0.02 if pump is not None else 0.2))

    def expect(what: str, ok: bool) -> None:
        if not ok:
            raise TransportConformanceError(what)

    try:
        a, b, c = factory(), factory(), factory()
        made.extend((a, b, c))
        for t in (a, b, c):  # a conformance failure, not an AttributeError further down
            expect(
                f"factory() returns a transport with publish and subscribe, not {t!r}",
                callable(getattr(t, "publish", None)) and callable(getattr(t, "subscribe", None)),
            )

        # 1. exact bytes and subject, 2. order, 3. no echo.
        s1 = f"{base}.data"
        at_a, at_b = _Inbox(), _Inbox()
        a.subscribe(s1, at_a)
        b.subscribe(s1, at_b)
        payloads = [b"", b"x", bytes(range(256)), random.Random(7).randbytes(64 * 1024)]
        payloads += [f"m{i}".encode() for i in range(100)]
        for p in payloads:
            a.publish(s1, p)
        wait_for("delivery A->B", lambda: len(at_b.items) >= len(payloads), at_b)
        got = at_b.snapshot()
        expect(
            "every message arrives once, byte-for-byte, on its subject, in publish order",
            got == [(s1, p) for p in payloads],
        )
        # A sentinel from B to A proves A's subscription works; by then A's own messages
        # (published earlier on the same connection) would have arrived if echoed.
        b.publish(s1, b"sentinel-from-b")
        wait_for("delivery B->A", lambda: len(at_a.items) >= 1, at_a)
        expect(
            "no echo: a transport does not deliver its own messages to itself",
            at_a.snapshot() == [(s1, b"sentinel-from-b")],
        )

        # 4. subject isolation and 5. fan-out.
        s2, s3 = f"{base}.two", f"{base}.three"
        b2, c2 = _Inbox(), _Inbox()
        b.subscribe(s2, b2)
        c.subscribe(s2, c2)
        a.publish(s3, b"nobody-listens")
        a.publish(s2, b"fan-out")
        wait_for("fan-out to B", lambda: len(b2.items) >= 1, b2)
        wait_for("fan-out to C", lambda: len(c2.items) >= 1, c2)
        expect("fan-out: both subscribers get the message", b2.snapshot() == [(s2, b"fan-out")])
        expect("subject isolation", c2.snapshot() == [(s2, b"fan-out")])

        # 6. unsubscribe.
        s4 = f"{base}.unsub"
        gone, marker = _Inbox(), _Inbox()
        unsub = b.subscribe(s4, gone)
        b.subscribe(f"{s4}.marker", marker)
        a.publish(s4, b"before")
        wait_for("delivery before unsubscribe", lambda: len(gone.items) >= 1, gone)
        unsub()
        unsub()  # idempotent
        a.publish(s4, b"after")
        a.publish(f"{s4}.marker", b"marker")
        wait_for("marker after unsubscribe", lambda: len(marker.items) >= 1, marker)
        expect("unsubscribe stops delivery", gone.snapshot() == [(s4, b"before")])

        # 7. a raising handler does not stop delivery.
        s5 = f"{base}.raise"
        flaky = _Inbox(fail_first=1)
        c.subscribe(s5, flaky)
        a.publish(s5, b"one")
        a.publish(s5, b"two")
        wait_for("delivery after a handler raised", lambda: len(flaky.items) >= 2, flaky)
        expect(
            "a raising handler does not stop later deliveries",
            flaky.snapshot() == [(s5, b"one"), (s5, b"two")],
        )
    finally:
        for t in made:
            close = getattr(t, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # pragma: no cover - reported, not fatal to the kit
                    _log.exception("closing %r failed", t)


def check_async_transport(
    factory: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 10.0,
) -> None:
    """:func:`check_transport` for an :class:`~prefixcache.AsyncTransport`.

    ``factory`` is an async callable returning a new, connected transport (for example
    ``lambda: AsyncNatsTransport.connect(url)``). Each transport is created and driven on its
    own event loop thread (through :class:`prefixcache.transports.ThreadedTransport`), so the
    same contract is checked: exact bytes, order, no echo, isolation, fan-out, unsubscribe,
    raising handlers. Transports with ``async close()`` are closed at the end.
    """
    from prefixcache.transports._bridge import ThreadedTransport

    check_transport(lambda: ThreadedTransport(factory), timeout=timeout)
