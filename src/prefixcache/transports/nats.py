"""NATS transports (nats-py, the ``[nats]`` extra): the reference system's sync channel.

:class:`AsyncNatsTransport` (an :class:`~prefixcache.AsyncTransport`) wraps one nats-py
connection on the running loop; :class:`NatsTransport` (a blocking
:class:`~prefixcache.Transport`) runs it on a private loop thread for hosts without asyncio.

* The connection uses ``no_echo`` (the Transport contract: a router never receives its own
  messages) and reconnects forever (``max_reconnect_attempts=-1``) every
  ``reconnect_time_wait`` seconds; nats-py buffers publishes made while reconnecting (up to
  its ``pending_size``) and re-subscribes after a reconnect.
* Delivery is at most once: messages published while this router or the broker is down are
  lost (resync with :func:`prefixcache.export_snapshot` / :func:`prefixcache.apply_snapshot`).
* Authentication and TLS: ``user``/``password``, ``token``, ``nkey_seed_file`` (an NKey seed;
  needs the ``nkeys`` package) or ``credentials_file`` (a ``.creds`` file: user JWT plus NKey
  seed), and ``tls_ca_file`` (trust) with optionally ``tls_cert_file``/``tls_key_file``
  (a client certificate). A ``tls://`` server URL, or any TLS file, turns TLS on.
* :class:`NatsTransport` queues publishes and sends them from its own thread (see
  :class:`~prefixcache.transports.ThreadedTransport`): a hung server never blocks the caller.
* ``subscribe`` flushes (a PING/PONG round trip), so the subscription is active at the server
  when it returns.
* Order: messages of one subject from one publisher are handled in publish order. nats-py
  dispatches each subscription from its own task, so an observe and an invalidate arriving
  in the same read may be handled in either order (as with the reference's Go client); Sync
  treats such races as conflicts (see :mod:`prefixcache._sync`), repaired by a resync.

``nats`` is imported only when :meth:`AsyncNatsTransport.connect` runs.

>>> import prefixcache.transports.nats  # no nats-py import yet
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Any

from prefixcache._keys import check_number
from prefixcache._protocols import AsyncUnsubscribe, MessageHandler
from prefixcache.transports._bridge import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    ThreadedTransport,
    client_tls_context,
)

__all__ = ["AsyncNatsTransport", "NatsTransport"]

_log = logging.getLogger("prefixcache.transports.nats")


class AsyncNatsTransport:
    """An asyncio Transport over one nats-py client (see the module docstring).

    Counters: :attr:`disconnects`, :attr:`reconnects`, :attr:`errors` (async errors reported
    by the client), :attr:`handler_errors`. Use from its event loop only.
    """

    def __init__(self, client: Any, *, flush_timeout: float = 2.0) -> None:
        check_number("flush_timeout", flush_timeout, 0.0, above=True)
        self.client = client
        self.flush_timeout = flush_timeout
        self.disconnects = 0
        self.reconnects = 0
        self.errors = 0
        self.handler_errors = 0

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        name: str | None = "prefixcache-sync",
        connect_timeout: float = 2.0,
        reconnect_time_wait: float = 0.5,
        flush_timeout: float = 2.0,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        nkey_seed_file: str | None = None,
        credentials_file: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls: ssl.SSLContext | None = None,
        **options: Any,
    ) -> AsyncNatsTransport:
        """Connect to ``servers`` (``nats://host:port`` or ``tls://host:port``; several for
        a cluster).

        Args:
            user, password: the server's user/password authentication.
            token: the server's token authentication.
            nkey_seed_file: path of an NKey seed file (the server lists the public key).
            credentials_file: path of a ``.creds`` file (decentralised JWT authentication).
            tls_ca_file: CA bundle that signed the server's certificate (TLS on).
            tls_cert_file, tls_key_file: a client certificate, for servers that verify one.
            tls: a ready ``ssl.SSLContext`` instead of the three files.
            options: further keyword arguments for ``nats.connect``.

        Raises:
            Exception: what nats-py raises when no server answers initially
                (``nats.errors.NoServersError``) or the server refuses the credentials;
                reconnects after that are automatic.
        """
        auth: dict[str, Any] = {}
        if user is not None:
            auth["user"] = user
        if password is not None:
            auth["password"] = password
        if token is not None:
            auth["token"] = token
        if nkey_seed_file is not None:
            auth["nkeys_seed"] = nkey_seed_file
        if credentials_file is not None:
            auth["user_credentials"] = credentials_file
        if tls is None and (tls_ca_file or tls_cert_file):
            tls = client_tls_context(
                ca_file=tls_ca_file, cert_file=tls_cert_file, key_file=tls_key_file
            )
        if tls is not None:
            auth["tls"] = tls
        options = {**auth, **options}
        return await cls._connect(
            servers,
            name=name,
            connect_timeout=connect_timeout,
            reconnect_time_wait=reconnect_time_wait,
            flush_timeout=flush_timeout,
            options=options,
        )

    @classmethod
    async def _connect(
        cls,
        servers: str | Sequence[str],
        *,
        name: str | None,
        connect_timeout: float,
        reconnect_time_wait: float,
        flush_timeout: float,
        options: dict[str, Any],
    ) -> AsyncNatsTransport:
        """Open the nats-py connection with the transport's callbacks.

        Raises:
            Exception: what nats-py raises when no server answers initially
                (``nats.errors.NoServersError``); reconnects after that are automatic.
        """
        import nats

        transport = cls(None, flush_timeout=flush_timeout)

        async def on_error(exc: Exception) -> None:
            transport.errors += 1
            _log.debug("nats error: %r", exc)

        async def on_disconnect() -> None:
            transport.disconnects += 1
            _log.info("nats disconnected")

        async def on_reconnect() -> None:
            transport.reconnects += 1
            _log.info("nats reconnected")

        settings: dict[str, Any] = {
            "name": name,
            "no_echo": True,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": reconnect_time_wait,
            "connect_timeout": connect_timeout,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
        }
        settings.update(options)  # the caller's options win (but no_echo is the contract)
        settings["no_echo"] = True
        # nats-py retries a refused *first* connection (bad credentials, TLS mismatch) forever
        # when reconnecting is allowed; connect once without it, then allow reconnects.
        reconnect = bool(settings.pop("allow_reconnect"))
        transport.client = await nats.connect(
            servers=[servers] if isinstance(servers, str) else list(servers),
            allow_reconnect=False,
            **settings,
        )
        transport.client.options["allow_reconnect"] = reconnect
        return transport

    @property
    def is_connected(self) -> bool:
        """Whether the client is connected right now."""
        return bool(self.client.is_connected)

    async def publish(self, subject: str, payload: bytes) -> None:
        """Publish (buffered by nats-py while reconnecting)."""
        await self.client.publish(subject, bytes(payload))

    async def subscribe(self, subject: str, handler: MessageHandler) -> AsyncUnsubscribe:
        """Subscribe ``handler(subject, payload)``; active at the server on return (unless the
        connection is down: then it becomes active when nats-py reconnects)."""

        async def on_message(msg: Any) -> None:
            try:
                handler(msg.subject, msg.data)
            except Exception:
                self.handler_errors += 1
                _log.exception("handler for %r raised", msg.subject)

        sub = await self.client.subscribe(subject, cb=on_message)
        try:
            await self._round_trip()
        except Exception as exc:
            _log.warning("subscribed to %s while the connection is down (%r)", subject, exc)
        done = False

        async def unsubscribe() -> None:
            nonlocal done
            if done:
                return
            done = True
            try:
                await sub.unsubscribe()
                await self._round_trip()
            except Exception as exc:  # closed or reconnecting: nothing left to cancel
                _log.debug("unsubscribe from %s: %r", subject, exc)

        return unsubscribe

    async def flush(self) -> None:
        """Wait until everything sent so far reached the server (PING/PONG)."""
        await self._round_trip()

    async def _round_trip(self) -> None:
        """Wait until the server has processed every command sent so far: two PING/PONG
        round trips. nats-py (2.16) writes a flush's PING to the socket at once but leaves
        the commands still in its pending buffer (the SUB just made, the PUBs just queued)
        to its flusher task, so the first PING can reach the server ahead of them and its
        PONG prove nothing about them; by the second PING they are on the wire before it.
        Without this a message published from another connection right after
        :meth:`subscribe` returned could reach a server that had not yet read the SUB, and
        be lost (seen in CI under load)."""
        await self.client.flush(timeout=self.flush_timeout)
        await self.client.flush(timeout=self.flush_timeout)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if not self.client.is_closed:
            await self.client.close()


class NatsTransport(ThreadedTransport[AsyncNatsTransport]):
    """A blocking NATS Transport: :class:`AsyncNatsTransport` on a private loop thread.

    ``NatsTransport.connect("nats://127.0.0.1:4222")`` starts the thread and connects;
    ``close()`` (or ``with``) stops it. ``publish`` appends to the bounded outgoing queue and
    returns (``timeout`` bounds each send on the loop thread; ``max_queue`` and
    ``max_queue_bytes`` bound the queue: see :class:`ThreadedTransport`). Thread-safe.
    """

    @classmethod
    def connect(
        cls,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        timeout: float = 2.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        **options: Any,
    ) -> NatsTransport:
        """Connect (see :meth:`AsyncNatsTransport.connect` for credentials, TLS and
        ``options``)."""
        return cls(
            lambda: AsyncNatsTransport.connect(servers, **options),
            timeout=timeout,
            max_queue=max_queue,
            max_queue_bytes=max_queue_bytes,
            name="prefixcache-nats",
        )

    @property
    def is_connected(self) -> bool:
        """Whether the client is connected right now."""
        return self.transport.is_connected

    def flush(self) -> None:
        """Block until everything published so far reached the server."""
        self._call(self.transport.flush(), timeout=self.timeout)
