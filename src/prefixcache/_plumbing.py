"""Transport plumbing shared by :class:`~prefixcache.Sync` and :class:`~prefixcache.SessionPins`:
subscribing a handler, adopting the transport as publisher while attached, awaiting a send.

The owner is anything with a mutable ``publisher`` slot (:class:`PublisherSlot`). Attaching
subscribes ``handler`` to each subject in order; an owner without a publisher publishes through
the transport until detached. The returned ``detach`` unsubscribes every subject and gives
the slot back (only if it still holds that transport); calling it again is a no-op.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from prefixcache._protocols import (
    AsyncPublisher,
    AsyncTransport,
    AsyncUnsubscribe,
    MessageHandler,
    Publisher,
    Transport,
    Unsubscribe,
)

__all__ = ["PublisherSlot", "attach_handler", "attach_handler_async", "awaited"]


class PublisherSlot(Protocol):
    """An object that publishes through its ``publisher`` (``None``: nowhere)."""

    publisher: Publisher | AsyncPublisher | None


def attach_handler(
    owner: PublisherSlot, transport: Transport, subjects: Sequence[str], handler: MessageHandler
) -> Unsubscribe:
    """Subscribe ``handler`` to each of ``subjects`` on ``transport``; return ``detach``."""
    unsubs = [transport.subscribe(s, handler) for s in subjects]
    adopted = owner.publisher is None
    if adopted:
        owner.publisher = transport
    done = False

    def detach() -> None:
        nonlocal done
        if done:
            return
        done = True
        for unsub in unsubs:
            unsub()
        if adopted and owner.publisher is transport:
            owner.publisher = None

    return detach


async def attach_handler_async(
    owner: PublisherSlot,
    transport: AsyncTransport,
    subjects: Sequence[str],
    handler: MessageHandler,
) -> AsyncUnsubscribe:
    """The asyncio form of :func:`attach_handler` (subscriptions active when it returns)."""
    unsubs = [await transport.subscribe(s, handler) for s in subjects]
    adopted = owner.publisher is None
    if adopted:
        owner.publisher = transport
    done = False

    async def detach() -> None:
        nonlocal done
        if done:
            return
        done = True
        for unsub in unsubs:
            await unsub()
        if adopted and owner.publisher is transport:
            owner.publisher = None

    return detach


async def awaited(aw: Awaitable[Any]) -> Any:
    """``await aw`` as a coroutine (what :func:`asyncio.wait_for` needs for any awaitable)."""
    return await aw
