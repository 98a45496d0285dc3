"""Session pins shared by every router: :class:`SessionPins`, the :class:`Pin` record and its
wire format on :data:`PIN_SUBJECT`.

A pin says "session ``session`` of namespace ``namespace`` is served by ``deployment``". A
router pins a session when a request of it succeeds on a deployment and clears the pin when a
request fails there; peers learn both through a transport, so a session keeps its deployment
whichever router (proxy worker, replica) receives its next turn.

Ordering: every write carries a stamp ``(wall time, origin)`` and the greatest stamp wins
(last writer wins, ties broken by the origin string; one origin's stamps increase), whatever
order the messages arrive in and however often they are duplicated, so routers that saw the
same writes hold the same pins.
A cleared pin is kept as a tombstone (``deployment == ""``) so that an older pin arriving late
cannot resurrect it.

Wire format (one JSON object per message, UTF-8, at most :data:`MAX_PIN_BYTES`)::

    {"ns": "model-a", "session": "s-42", "deployment": "d1", "t": 1733490000.25, "origin": "r1"}

``deployment`` is ``""`` for a cleared pin. Decoding rejects (:class:`PinDecodeError`)
anything else: invalid UTF-8 or JSON, a non-object, a missing key, wrong types, a non-finite
or negative ``t``, an empty ``ns``/``session``/``origin``, strings over
:data:`MAX_PIN_KEY_CHARS` characters.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache._keys import check_callable, check_methods, check_time
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

#: An ``isinstance`` target built once (an inline union is built on every call).
_NUMBER = (int, float)

__all__ = [
    "MAX_PIN_BYTES",
    "MAX_PIN_KEY_CHARS",
    "PIN_SUBJECT",
    "Pin",
    "PinDecodeError",
    "PinStats",
    "SessionPins",
]

_log = logging.getLogger("prefixcache.pins")

PIN_SUBJECT: Final = "prefixcache.pin"
"""The subject pins travel on (their own: the index's sync subjects never carry them)."""

MAX_PIN_KEY_CHARS: Final = 512
"""Longest namespace, session key, deployment id or origin accepted, in characters."""

MAX_PIN_BYTES: Final = 4 * MAX_PIN_KEY_CHARS * 4 + 256
"""Largest payload accepted (four maximal strings of 4-byte characters fit, plus the rest)."""

_PUBLISH_TIMEOUT: Final = 2.0


class PinDecodeError(ClusterRoutingError, ValueError):
    """A pin payload could not be decoded; ``field`` names the offending key (``"<payload>"``
    for the payload as a whole)."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"pin field {field!r}={shown}: {reason}")


def _name_problem(value: object, *, empty_ok: bool) -> str | None:
    if type(value) is not str:
        return "must be a str"
    if not value and not empty_ok:
        return "must not be empty"
    if len(value) > MAX_PIN_KEY_CHARS:
        return f"is longer than {MAX_PIN_KEY_CHARS} characters"
    return None


def _stamp_problem(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        return "must be a number"
    if not math.isfinite(value) or value < 0:
        return "must be a finite number >= 0"
    return None


def _validator(name: str, *, empty_ok: bool = False) -> Callable[[object, object, Any], None]:
    def check(_inst: object, _attr: object, value: Any) -> None:
        problem = _name_problem(value, empty_ok=empty_ok)
        if problem is not None:
            raise InvalidRecordError(name, value, problem)

    return check


def _check_stamp(_inst: object, _attr: object, value: Any) -> None:
    problem = _stamp_problem(value)
    if problem is not None:
        raise InvalidRecordError("stamp", value, problem)


@attrs.frozen(kw_only=True)
class Pin:
    """One pin write: ``(namespace, session) -> deployment`` at ``stamp`` by ``origin``.

    Attributes:
        namespace: what the session key is scoped by (a model group, a tenant), non-empty.
        session: the session key, non-empty.
        deployment: the deployment id, or ``""`` for a cleared pin (a tombstone).
        stamp: the writer's wall-clock time in seconds (crosses processes: wall time).
        origin: the writing router's id; breaks ties between equal stamps.

    Raises:
        InvalidRecordError: a string is not a ``str``, is empty where it may not be, or is
            longer than :data:`MAX_PIN_KEY_CHARS`; ``stamp`` is not a finite number >= 0.

    >>> p = Pin(namespace="m", session="s1", deployment="d1", stamp=10.0, origin="r1")
    >>> Pin.decode(p.encode()) == p
    True
    >>> p.order_key() < Pin(namespace="m", session="s1", deployment="", stamp=10.0,
    ...                     origin="r2").order_key()
    True
    """

    namespace: str = attrs.field(validator=_validator("namespace"))
    session: str = attrs.field(validator=_validator("session"))
    deployment: str = attrs.field(validator=_validator("deployment", empty_ok=True))
    stamp: float = attrs.field(validator=_check_stamp)
    origin: str = attrs.field(validator=_validator("origin"))

    @property
    def cleared(self) -> bool:
        """Whether this write clears the pin (a tombstone)."""
        return not self.deployment

    def order_key(self) -> tuple[float, str, str]:
        """``(stamp, origin, deployment)``: the greater write wins (the deployment only
        orders two writes one origin stamped alike, so the order is total)."""
        return (self.stamp, self.origin, self.deployment)

    def encode(self) -> bytes:
        """The wire form (see the module docstring)."""
        doc = {
            "ns": self.namespace,
            "session": self.session,
            "deployment": self.deployment,
            "t": self.stamp,
            "origin": self.origin,
        }
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def decode(cls, payload: bytes) -> Pin:
        """Parse a wire payload.

        Raises:
            PinDecodeError: see the module docstring for what is rejected.
        """
        if len(payload) > MAX_PIN_BYTES:
            raise PinDecodeError("<payload>", len(payload), f"is over {MAX_PIN_BYTES} bytes")
        try:
            doc = json.loads(bytes(payload).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise PinDecodeError("<payload>", payload, f"is not UTF-8 JSON ({exc})") from None
        except RecursionError:
            raise PinDecodeError("<payload>", len(payload), "nests too deeply") from None
        if type(doc) is not dict:
            raise PinDecodeError("<payload>", doc, "is not a JSON object")
        fields: dict[str, Any] = {}
        for key, name, empty_ok in (
            ("ns", "namespace", False),
            ("session", "session", False),
            ("deployment", "deployment", True),
            ("origin", "origin", False),
        ):
            if key not in doc:
                raise PinDecodeError(key, None, "is missing")
            if type(doc[key]) is str:
                doc[key] = _no_lone_surrogates(doc[key])
            problem = _name_problem(doc[key], empty_ok=empty_ok)
            if problem is not None:
                raise PinDecodeError(key, doc[key], problem)
            fields[name] = doc[key]
        if "t" not in doc:
            raise PinDecodeError("t", None, "is missing")
        problem = _stamp_problem(doc["t"])
        if problem is not None:
            raise PinDecodeError("t", doc["t"], problem)
        return cls(stamp=float(doc["t"]), **fields)


@attrs.frozen(kw_only=True)
class PinStats:
    """Counters of one :class:`SessionPins` (monotone since construction).

    Attributes:
        written: local pins and clears that changed the table.
        published: messages handed to the publisher successfully (async: completed).
        publish_errors: publishes that raised, failed or timed out.
        received: messages delivered by an attached transport.
        applied: peer writes that won and changed the table.
        stale: peer writes that lost to a newer (or equal) write already held.
        dropped_malformed: payloads that failed :meth:`Pin.decode` (oversized included).
        dropped_unknown_subject: messages on a subject other than :data:`PIN_SUBJECT`.
        evicted: entries dropped because the table was full (least recently written first).
        expired: entries dropped because they were older than ``ttl``.
    """

    written: int = 0
    published: int = 0
    publish_errors: int = 0
    received: int = 0
    applied: int = 0
    stale: int = 0
    dropped_malformed: int = 0
    dropped_unknown_subject: int = 0
    evicted: int = 0
    expired: int = 0


class SessionPins:
    """Session -> deployment pins with last-writer-wins replication between routers.

    * :meth:`get` ``(namespace, session, now=)`` -> the pinned deployment, or ``None`` when
      there is none, it was cleared, or it is older than ``ttl`` (``now - stamp == ttl`` is
      still live);
    * :meth:`pin` / :meth:`unpin` write locally and publish the write (when a publisher or an
      attached transport is set); :meth:`pin` of the deployment already pinned publishes only
      when the pin is older than ``ttl / 2`` (a refresh that keeps peers' copies live), so a
      busy session costs no traffic per request;
    * :meth:`apply` / :meth:`handle` take a peer's write: it replaces the held entry iff its
      ``(stamp, origin)`` is greater; nothing is re-published;
    * :meth:`evict` ``(now)`` drops entries older than ``ttl`` and returns how many (what
      :class:`~prefixcache.EvictionTicker` calls).

    Memory is bounded by ``max_entries`` (tombstones included): a write beyond it drops the
    least recently written entry (counted in :attr:`PinStats.evicted`).

    Args:
        ttl: seconds a pin lives after its last write (> 0).
        max_entries: most entries held (int >= 1).
        clock: the wall clock (stamps cross processes, so every router must share the
            domain); read once per call that does not get ``now=``.
        origin: this router's id in stamps (default: a random one per instance).
        publisher: where this router's writes go (``None``: nowhere until :meth:`attach`).
        on_publish_error: ``hook(subject, error)`` told about each failed publish (default:
            a warning on the ``prefixcache.pins`` logger).

    Raises (constructor):
        InvalidRecordError: ``ttl`` is not a finite number > 0, ``max_entries`` not an
            int >= 1, ``origin`` not a valid name, ``clock`` or ``on_publish_error`` not
            callable, or ``publisher`` without ``publish``.

    Thread-safe: the table is locked; handlers may run on any thread.

    >>> from prefixcache.testing import InMemoryTransport
    >>> hub = InMemoryTransport()
    >>> a = SessionPins(ttl=60, max_entries=100, clock=lambda: 5.0, origin="a")
    >>> b = SessionPins(ttl=60, max_entries=100, clock=lambda: 5.0, origin="b")
    >>> detach_a, detach_b = a.attach(hub.connect()), b.attach(hub.connect())
    >>> a.pin("model", "session-1", "d1", now=1.0)
    True
    >>> b.get("model", "session-1", now=2.0)
    'd1'
    >>> b.get("model", "session-1", now=62.0) is None   # older than ttl
    True
    """

    def __init__(
        self,
        *,
        ttl: float,
        max_entries: int,
        clock: Clock | Callable[[], float] = time.time,
        origin: str | None = None,
        publisher: Publisher | AsyncPublisher | None = None,
        on_publish_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not math.isfinite(ttl)
            or ttl <= 0
        ):
            raise InvalidRecordError("ttl", ttl, "must be a finite number > 0 (seconds)")
        if type(max_entries) is not int or max_entries < 1:
            raise InvalidRecordError("max_entries", max_entries, "must be an int >= 1")
        check_callable("clock", clock)
        check_callable("on_publish_error", on_publish_error, optional=True)
        check_methods("publisher", publisher, "publish", what="a Publisher", optional=True)
        origin = uuid.uuid4().hex if origin is None else origin
        problem = _name_problem(origin, empty_ok=False)
        if problem is not None:
            raise InvalidRecordError("origin", origin, problem)
        self._ttl = float(ttl)
        self._max = max_entries
        self.clock = clock
        self._origin = origin
        self.publisher = publisher
        self.on_publish_error = on_publish_error
        self._pins: OrderedDict[tuple[str, str], Pin] = OrderedDict()
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(attrs.fields_dict(PinStats), 0)
        self._tail: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def ttl(self) -> float:
        """Seconds a pin lives after its last write."""
        return self._ttl

    @property
    def max_entries(self) -> int:
        """The most entries held."""
        return self._max

    @property
    def origin(self) -> str:
        """This router's id in stamps."""
        return self._origin

    def __len__(self) -> int:
        return len(self._pins)

    def stats(self) -> PinStats:
        """A consistent copy of the counters."""
        with self._lock:
            return PinStats(**self._counts)

    # -- reads ------------------------------------------------------------------------------
    def _now(self, now: float | None) -> float:
        """``now`` as given (a number, not NaN: else :class:`InvalidRecordError`), or the
        clock's reading."""
        return self.clock() if now is None else check_time("now", now)

    def get(self, namespace: str, session: str, *, now: float | None = None) -> str | None:
        """The deployment ``session`` is pinned to, or ``None`` (none, cleared or expired).

        O(1).
        """
        entry = self._pins.get((namespace, session))
        if entry is None or not entry.deployment:
            return None
        t = self._now(now)
        if t - entry.stamp > self._ttl:
            return None
        return entry.deployment

    def entry(self, namespace: str, session: str) -> Pin | None:
        """The held write for the session (a tombstone or an expired one included), or
        ``None``."""
        return self._pins.get((namespace, session))

    def entries(self) -> tuple[Pin, ...]:
        """Every held write, least recently written first."""
        with self._lock:
            return tuple(self._pins.values())

    # -- local writes -----------------------------------------------------------------------
    def pin(
        self, namespace: str, session: str, deployment: str, *, now: float | None = None
    ) -> bool:
        """Pin ``session`` to ``deployment`` at ``now`` (default ``clock()``).

        Returns ``True`` when the write was made (and published), ``False`` when the live pin
        already names ``deployment`` and is younger than ``ttl / 2``.

        Raises:
            InvalidRecordError: an empty or invalid name, or ``deployment == ""`` (use
                :meth:`unpin`).
        """
        if deployment == "":
            raise InvalidRecordError("deployment", deployment, "must not be empty (use unpin)")
        t = self._now(now)
        held = self._pins.get((namespace, session))
        if (
            held is not None
            and held.deployment == deployment
            and 0 <= t - held.stamp <= self._ttl / 2
        ):
            return False
        return self._write(namespace, session, deployment, t)

    def unpin(
        self,
        namespace: str,
        session: str,
        *,
        deployment: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Clear the session's pin (only if it names ``deployment``, when given).

        Writes a tombstone, so a late older pin from a peer cannot bring the pin back.
        Returns ``True`` when a live pin was cleared (and the clear published).

        Raises:
            InvalidRecordError: an empty or invalid name.
        """
        t = self._now(now)
        held = self._pins.get((namespace, session))
        if held is None or not held.deployment or t - held.stamp > self._ttl:
            return False
        if deployment is not None and held.deployment != deployment:
            return False
        return self._write(namespace, session, "", t)

    def _write(self, namespace: str, session: str, deployment: str, now: float) -> bool:
        with self._lock:
            held = self._pins.get((namespace, session))
            if held is not None and held.origin == self._origin and held.stamp >= now:
                # Our own earlier write at this clock reading: stamps of one origin increase.
                now = math.nextafter(held.stamp, math.inf)
            pin = Pin(
                namespace=namespace,
                session=session,
                deployment=deployment,
                stamp=now,
                origin=self._origin,
            )
            if held is not None and held.order_key() >= pin.order_key():
                # A peer wrote later than our clock says it is: its write stands.
                return False
            self._store(pin)
            self._counts["written"] += 1
        self._publish(pin.encode())
        return True

    def _store(self, pin: Pin) -> None:
        key = (pin.namespace, pin.session)
        pins = self._pins
        pins[key] = pin
        pins.move_to_end(key)
        while len(pins) > self._max:
            pins.popitem(last=False)
            self._counts["evicted"] += 1

    # -- peer writes ------------------------------------------------------------------------
    def apply(self, pin: Pin | bytes) -> bool:
        """Apply a peer's write (a :class:`Pin` or its payload); never publishes.

        Returns ``True`` when it won (its ``(stamp, origin)`` is greater than the held
        entry's) and changed the table.

        Raises:
            PinDecodeError: ``pin`` is a payload that does not decode.
        """
        if not isinstance(pin, Pin):
            pin = Pin.decode(pin)
        with self._lock:
            held = self._pins.get((pin.namespace, pin.session))
            if held is not None and held.order_key() >= pin.order_key():
                self._counts["stale"] += 1
                return False
            self._store(pin)
            self._counts["applied"] += 1
        return True

    def handle(self, subject: str, payload: bytes) -> None:
        """The transport handler: decode and apply one message. Never raises; every drop is
        counted."""
        try:
            self._bump("received")
            if subject != PIN_SUBJECT:
                self._bump("dropped_unknown_subject")
                return
            try:
                pin = Pin.decode(payload)
            except PinDecodeError as exc:
                self._bump("dropped_malformed")
                _log.debug("dropped malformed pin: %s", exc)
                return
            self.apply(pin)
        except Exception:  # never raise into the transport
            self._bump("dropped_malformed")
            _log.exception("applying a pin failed")

    def attach(self, transport: Transport) -> Unsubscribe:
        """Subscribe :meth:`handle` to :data:`PIN_SUBJECT`; return ``detach``.

        Without a publisher, this object publishes through ``transport`` until detached.
        ``detach()`` is idempotent.
        """
        return attach_handler(self, transport, (PIN_SUBJECT,), self.handle)

    async def attach_async(self, transport: AsyncTransport) -> AsyncUnsubscribe:
        """The asyncio form of :meth:`attach` (subscribed when it returns)."""
        return await attach_handler_async(self, transport, (PIN_SUBJECT,), self.handle)

    # -- expiry -----------------------------------------------------------------------------
    def evict(self, now: float | None = None) -> int:
        """Drop entries older than ``ttl`` at ``now`` (default ``clock()``); returns how many.

        O(entries).
        """
        t = self._now(now)
        limit = t - self._ttl
        with self._lock:
            old = [k for k, p in self._pins.items() if p.stamp < limit]
            for k in old:
                del self._pins[k]
            self._counts["expired"] += len(old)
        return len(old)

    # -- publishing -------------------------------------------------------------------------
    def _bump(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _failed(self, error: BaseException) -> None:
        self._bump("publish_errors")
        hook = self.on_publish_error
        if hook is None:
            _log.warning("publishing a pin on %s failed: %r", PIN_SUBJECT, error)
            return
        try:
            hook(PIN_SUBJECT, error)
        except Exception:
            _log.exception("the pin publish error hook raised")

    def _publish(self, payload: bytes) -> None:
        publisher = self.publisher
        if publisher is None:
            return
        try:
            result = publisher.publish(PIN_SUBJECT, payload)
        except Exception as exc:
            self._failed(exc)
            return
        if not inspect.isawaitable(result):
            self._bump("published")
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if inspect.iscoroutine(result):
                result.close()
            self._failed(RuntimeError("an async publisher was called outside a running loop"))
            return
        task = loop.create_task(self._send_after(self._tail, result))
        self._tail = task
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send_after(self, previous: asyncio.Task[None] | None, send: Awaitable[Any]) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous})
        try:
            await asyncio.wait_for(awaited(send), _PUBLISH_TIMEOUT)
        except Exception as exc:
            self._failed(exc)
        else:
            self._bump("published")

    async def flush(self) -> None:
        """Wait until every asynchronous publish started so far has finished (or failed)."""
        while self._pending:
            await asyncio.wait(set(self._pending))


def _no_lone_surrogates(text: str) -> str:
    """``text`` with each escaped lone surrogate as U+FFFD (the one rule for network text,
    as Go decodes it), so a decoded pin always encodes again."""
    if text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
