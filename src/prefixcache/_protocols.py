"""Every port of the library: the small protocols a host implements, and the internal seams.

They are :class:`typing.Protocol` classes shaped by exactly what the library calls, so a host
implements them structurally, without importing or subclassing anything from this package.

* Sync: :class:`Publisher`, :class:`Transport` and their asyncio twins, :class:`Clock`,
  :class:`ClosableAsyncTransport` (what the threaded bridge runs).
* Index: :class:`Provider` (what routers call: ``Index``, ``Sync``, ``ReferenceIndex``),
  :class:`DecisionProvider` (its ``decide`` alone), :class:`ReferenceProvider` (what
  ``run_operations`` drives), :class:`Evictable` (what the eviction ticker sweeps),
  :class:`SnapshotSource` and :class:`SnapshotTarget` (what snapshots read and write).
* Inside the tree: :class:`NodeStore` (the node lookup of a backend).

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

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prefixcache._decision import PrefixDecision
    from prefixcache._types import Candidate, ReplicaKey

__all__ = [
    "AsyncPublisher",
    "AsyncTransport",
    "AsyncUnsubscribe",
    "Clock",
    "ClosableAsyncTransport",
    "DecisionProvider",
    "Evictable",
    "MessageHandler",
    "NodeStore",
    "Provider",
    "Publisher",
    "ReferenceProvider",
    "SnapshotSource",
    "SnapshotTarget",
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


class ClosableAsyncTransport(Protocol):
    """An :class:`AsyncTransport` with ``await close()``."""

    async def publish(self, subject: str, payload: bytes) -> None: ...

    async def subscribe(self, subject: str, handler: MessageHandler) -> AsyncUnsubscribe: ...

    async def close(self) -> None: ...


class DecisionProvider(Protocol):
    """What the federation path needs from an index: ``decide`` (``Index``, ``Sync`` and
    ``ReferenceIndex`` all satisfy it)."""

    def decide(
        self,
        model: str,
        chain: Sequence[int],
        candidates: Sequence[Candidate | ReplicaKey],
        now: float,
    ) -> PrefixDecision: ...


class ReferenceProvider(DecisionProvider, Protocol):
    """The provider methods ``prefixcache.reference.run_operations`` calls (``Index``,
    ``Sync`` and ``ReferenceIndex`` satisfy it)."""

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool: ...

    def invalidate(self, model: str, key: ReplicaKey) -> object: ...

    def invalidate_node(self, model: str, node_id: str) -> object: ...

    def evict(self, now: float) -> object: ...


class Evictable(Protocol):
    """What the eviction ticker sweeps: ``evict(now)`` (what it returns is not read)."""

    def evict(self, now: float) -> object: ...


@runtime_checkable
class Provider(ReferenceProvider, Protocol):
    """What routers call on a prefix index: :class:`~prefixcache.Index`, ``Sync`` and
    ``ReferenceIndex`` all satisfy it structurally.

    Times are float seconds of the host's clock (the wall clock when events cross routers).
    """

    def models(self) -> frozenset[str]: ...


class SnapshotSource(Protocol):
    """What ``export_snapshot`` and ``digests`` read: an ``Index``."""

    def models(self) -> frozenset[str]: ...

    def tree(self, model: str) -> Any: ...


class SnapshotTarget(SnapshotSource, Protocol):
    """What ``apply_snapshot`` writes through: an ``Index``."""

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool: ...

    def invalidate(self, model: str, key: ReplicaKey) -> Any: ...


class NodeStore(Protocol):
    """The node lookup of a tree backend: finds the node slots on a path.

    A store shares the tree's parent-slot and block-hash lists; it is called under the
    tree's lock and is not thread-safe on its own.
    """

    def bind(self, par: list[int], keys: list[int]) -> None:
        """Share the tree's parent and key slot lists (mutated in place, never replaced)."""

    def walk(self, key: Sequence[int]) -> list[int]:
        """The node slots on ``key``'s path, root first, as deep as it is stored."""

    def extend(self, parent: int, new: list[int], hs: Sequence[int]) -> None:
        """Register ``new`` (a chain of nodes under ``parent``, -1 for the root), whose
        block hashes are ``hs``."""

    def discard(self, node: int) -> None:
        """Forget leaf ``node``."""

    def maintain(self) -> None:
        """Amortised upkeep after a batch of changes."""

    def size(self) -> int:
        """Live nodes (for tests)."""

    def check(self, nodes: list[int]) -> None:
        """Assert every invariant against the tree's live ``nodes`` (for tests)."""
