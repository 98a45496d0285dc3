"""Ports of the sync layer: the small protocols a host implements to connect routers.

They are :class:`typing.Protocol` classes shaped by exactly what the library calls, so a host
implements them structurally, without importing or subclassing anything from this package.

Contract shared by every transport (checked by :func:`prefixcache.testing.check_transport`):

* ``publish(subject, payload)`` sends ``payload`` (arbitrary bytes, delivered unchanged) to
  every subscription of ``subject`` made through *other* transport objects. A transport does
  not deliver a message back to subscriptions made through the same object ("no echo", like a
  NATS connection with ``no_echo``): a router must not re-apply its own events, because its
  own observe echoed after its own invalidate would resurrect the invalidated entry.
* Messages from one publisher on one subject arrive in publish order (at most once each for
  real brokers; the in-memory double can be told to drop, duplicate and reorder).
* ``subscribe(subject, handler)`` calls ``handler(subject, payload)`` for each message and
  returns a function that cancels the subscription (idempotent). An exception raised by a
  handler is the handler's bug: the transport logs it and keeps delivering.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

__all__ = [
    "AsyncPublisher",
    "AsyncTransport",
    "AsyncUnsubscribe",
    "Clock",
    "MessageHandler",
    "Publisher",
    "Transport",
    "Unsubscribe",
]

MessageHandler = Callable[[str, bytes], None]
"""``handler(subject, payload)``: called by a transport for each delivered message. It runs
on the transport's delivery thread (or event loop) and must not block for long."""

Unsubscribe = Callable[[], None]
"""Cancels a subscription; calling it more than once is a no-op."""

AsyncUnsubscribe = Callable[[], Awaitable[None]]
"""Cancels a subscription of an :class:`AsyncTransport`; awaiting it twice is a no-op."""


@runtime_checkable
class Clock(Protocol):
    """A source of the current time in float seconds: ``clock() -> float``.

    Anything that crosses processes (events applied from peers) must use the wall clock
    (``time.time``) or another domain shared by every router; ``time.monotonic`` is only
    meaningful inside one process. :class:`prefixcache.testing.ManualClock` is the test double.
    """

    def __call__(self) -> float: ...


@runtime_checkable
class Publisher(Protocol):
    """Sends one message: ``publish(subject, payload)``.

    May raise (a broken connection, a timeout): :class:`prefixcache.Sync` reports and counts
    the failure and never lets it reach a routing decision.
    """

    def publish(self, subject: str, payload: bytes) -> None: ...


@runtime_checkable
class Transport(Publisher, Protocol):
    """A :class:`Publisher` that can also subscribe; see the module docstring for the contract."""

    def subscribe(self, subject: str, handler: MessageHandler) -> Unsubscribe: ...


@runtime_checkable
class AsyncPublisher(Protocol):
    """The asyncio twin of :class:`Publisher`: ``await publish(subject, payload)``."""

    async def publish(self, subject: str, payload: bytes) -> None: ...


@runtime_checkable
class AsyncTransport(AsyncPublisher, Protocol):
    """The asyncio twin of :class:`Transport`.

    ``await subscribe(subject, handler)`` returns once the subscription is active; the handler
    is a plain (synchronous) callable run on the event loop; the returned coroutine function
    cancels the subscription.
    """

    async def subscribe(self, subject: str, handler: MessageHandler) -> AsyncUnsubscribe: ...
