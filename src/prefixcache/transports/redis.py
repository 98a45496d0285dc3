"""Redis pub/sub transports (redis-py, the ``[redis]`` extra).

:class:`AsyncRedisTransport` (an :class:`~prefixcache.AsyncTransport`) uses two connections:
one for ``PUBLISH`` and one ``PUBSUB`` connection read by a reader task that it starts in
:meth:`AsyncRedisTransport.connect` and stops in :meth:`~AsyncRedisTransport.close`.
:class:`RedisTransport` runs it on a private loop thread for hosts without asyncio.

* Subjects are channel names; payloads are sent unchanged.
* Redis has no "no echo" option, so the transport drops its own messages itself: each publish
  on a channel it is subscribed to records a fingerprint, and the first identical message
  that comes back within ``echo_window`` seconds is dropped. (A peer publishing the very same
  bytes at the same moment is indistinguishable; dropping one of two identical sync messages
  loses nothing.) A publish that failed or timed out keeps its fingerprint, since the server
  may have delivered it anyway: its echo is still dropped.
* Authentication and TLS: ``username``/``password`` (Redis 6 ACL users; ``password`` alone is
  the ``default`` user / ``requirepass``), and ``tls_ca_file`` with optionally
  ``tls_cert_file``/``tls_key_file`` (a ``rediss://`` URL, or any TLS file, turns TLS on).
* :class:`RedisTransport` queues publishes and sends them from its own thread (see
  :class:`~prefixcache.transports.ThreadedTransport`): a hung server never blocks the caller.
* Reconnects: when the connection drops, the reader retries every ``reconnect_wait`` seconds;
  redis-py re-subscribes every channel on reconnect. ``PUBLISH`` fails fast while the server
  is down (a :class:`~prefixcache.Sync` counts it). Delivery is at most once: messages sent
  while a side is disconnected are lost (resync with snapshots).
* ``subscribe`` returns when Redis confirmed the subscription.

``redis`` is imported only when :meth:`AsyncRedisTransport.connect` runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

import xxhash

from prefixcache._keys import check_methods, check_number
from prefixcache._protocols import AsyncUnsubscribe, MessageHandler
from prefixcache.transports._bridge import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    ThreadedTransport,
)

__all__ = ["AsyncRedisTransport", "RedisTransport"]

_log = logging.getLogger("prefixcache.transports.redis")


class AsyncRedisTransport:
    """An asyncio Transport over redis-py pub/sub (see the module docstring).

    Counters: :attr:`disconnects` (reader errors), :attr:`echoes_dropped`,
    :attr:`handler_errors`. Use from its event loop only.
    """

    def __init__(
        self,
        publisher: Any,
        pubsub: Any,
        *,
        reconnect_wait: float = 0.25,
        echo_window: float = 30.0,
        subscribe_timeout: float = 5.0,
    ) -> None:
        check_methods("publisher", publisher, "publish", what="a redis.asyncio client")
        check_methods("pubsub", pubsub, "subscribe", what="a redis.asyncio PubSub")
        check_number("reconnect_wait", reconnect_wait, 0.0)
        check_number("echo_window", echo_window, 0.0)
        check_number("subscribe_timeout", subscribe_timeout, 0.0, above=True)
        self._redis = publisher
        self._pubsub = pubsub
        self.reconnect_wait = reconnect_wait
        self.echo_window = echo_window
        self.subscribe_timeout = subscribe_timeout
        self._handlers: dict[str, dict[int, MessageHandler]] = {}
        self._next_id = 0
        self._confirm: dict[str, list[asyncio.Future[None]]] = {}
        self._echo_counts: collections.Counter[int] = collections.Counter()
        self._echo_log: collections.deque[tuple[float, int]] = collections.deque()
        self._has_subs = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self.disconnects = 0
        self.echoes_dropped = 0
        self.handler_errors = 0
        self.connected = True
        self._listener: Any = None
        self._retryable: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)

    @classmethod
    async def connect(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        reconnect_wait: float = 0.25,
        echo_window: float = 30.0,
        socket_timeout: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        **options: Any,
    ) -> AsyncRedisTransport:
        """Connect to ``url`` (checked with a ``PING``) and start the reader task.

        Args:
            url: ``redis://host:port/db`` or ``rediss://`` (TLS).
            username, password: ACL credentials (``AUTH username password``).
            tls_ca_file: CA bundle that signed the server's certificate (TLS on; the server's
                certificate and host name are verified).
            tls_cert_file, tls_key_file: a client certificate (``tls-auth-clients yes``).
            options: further keyword arguments for ``redis.asyncio.Redis.from_url``.

        Raises:
            redis.exceptions.ConnectionError: the server does not answer.
            redis.exceptions.AuthenticationError: the credentials are refused.
        """
        import redis.asyncio as aioredis
        import redis.exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        common: dict[str, Any] = {
            "socket_connect_timeout": socket_timeout,
            "retry": Retry(NoBackoff(), 1),
        }
        if username is not None:
            common["username"] = username
        if password is not None:
            common["password"] = password
        if tls_ca_file or tls_cert_file:
            if url.startswith("redis://"):
                url = "rediss://" + url[len("redis://") :]
            common.update(ssl_cert_reqs="required", ssl_check_hostname=True)
            if tls_ca_file:
                common["ssl_ca_certs"] = tls_ca_file
            if tls_cert_file:
                common["ssl_certfile"] = tls_cert_file
                common["ssl_keyfile"] = tls_key_file
        common.update(options)
        publisher = aioredis.Redis.from_url(url, socket_timeout=socket_timeout, **common)
        listener = aioredis.Redis.from_url(url, **common)
        try:
            await publisher.ping()
        except Exception:
            await publisher.aclose()
            await listener.aclose()
            raise
        pubsub = listener.pubsub()
        transport = cls(publisher, pubsub, reconnect_wait=reconnect_wait, echo_window=echo_window)
        transport._listener = listener
        transport._retryable = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            ConnectionError,
            TimeoutError,
        )
        transport._reader = asyncio.get_running_loop().create_task(transport._read_forever())
        return transport

    # -- echo suppression ---------------------------------------------------------------
    @staticmethod
    def _fingerprint(channel: str, payload: bytes) -> int:
        return xxhash.xxh3_64_intdigest(channel.encode("utf-8", "surrogatepass") + b"\0" + payload)

    def _expire_echoes(self) -> None:
        now = time.monotonic()
        log = self._echo_log
        while log and log[0][0] < now:
            _, fp = log.popleft()
            self._echo_counts[fp] -= 1
            if self._echo_counts[fp] <= 0:
                del self._echo_counts[fp]

    # -- API --------------------------------------------------------------------------------
    async def publish(self, subject: str, payload: bytes) -> None:
        """``PUBLISH subject payload`` (raises while the server is unreachable)."""
        payload = bytes(payload)
        fp = None
        if subject in self._handlers:
            self._expire_echoes()
            fp = self._fingerprint(subject, payload)
            self._echo_counts[fp] += 1
            self._echo_log.append((time.monotonic() + self.echo_window, fp))
        try:
            try:
                await self._redis.publish(subject, payload)
            except self._retryable:
                # The first command after a server restart meets the dead socket; the failure
                # dropped it, so one retry reconnects (and fails fast if the server is down).
                await self._redis.publish(subject, payload)
        except BaseException:
            # Keep the fingerprint: a timed-out PUBLISH may still have reached the server,
            # and its echo must not be applied here. It expires after echo_window.
            raise

    async def subscribe(self, subject: str, handler: MessageHandler) -> AsyncUnsubscribe:
        """Subscribe ``handler(subject, payload)``; returns once Redis confirmed."""
        ident = self._next_id
        self._next_id += 1
        handlers = self._handlers.get(subject)
        if handlers is None:
            handlers = self._handlers[subject] = {}
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._confirm.setdefault(subject, []).append(fut)
            await self._pubsub.subscribe(subject)
            self._has_subs.set()
            await asyncio.wait_for(fut, self.subscribe_timeout)
        handlers[ident] = handler
        done = False

        async def unsubscribe() -> None:
            nonlocal done
            if done:
                return
            done = True
            current = self._handlers.get(subject)
            if current is None:
                return
            current.pop(ident, None)
            if not current and not self._closed:
                del self._handlers[subject]
                try:
                    await self._pubsub.unsubscribe(subject)
                except Exception as exc:  # down: redis-py will not re-subscribe it
                    _log.debug("unsubscribe from %s: %r", subject, exc)

        return unsubscribe

    async def _read_forever(self) -> None:
        while not self._closed:
            await self._has_subs.wait()
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                if self.connected:
                    self.disconnects += 1
                    _log.info("redis pub/sub connection lost (%r); reconnecting", exc)
                self.connected = False
                _log.debug("pub/sub read failed: %r", exc)
                # redis-py may keep a socket the server closed marked as connected; drop it so
                # the next read reconnects (and its connect callback re-subscribes).
                conn = self._pubsub.connection
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect()
                await asyncio.sleep(self.reconnect_wait)
                continue
            self.connected = True
            if msg is not None:
                self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel = msg.get("channel")
        if isinstance(channel, bytes):
            subject = channel.decode("utf-8", "surrogateescape")
        else:
            subject = str(channel)
        if kind == "subscribe":
            for fut in self._confirm.pop(subject, []):
                if not fut.done():
                    fut.set_result(None)
            return
        if kind != "message":
            return
        data = msg.get("data")
        payload = data if isinstance(data, bytes) else str(data).encode("utf-8")
        if self._echo_counts:
            self._expire_echoes()
            fp = self._fingerprint(subject, payload)
            if self._echo_counts.get(fp, 0) > 0:
                self._echo_counts[fp] -= 1
                if self._echo_counts[fp] <= 0:
                    del self._echo_counts[fp]
                self.echoes_dropped += 1
                return
        for handler in list(self._handlers.get(subject, {}).values()):
            try:
                handler(subject, payload)
            except Exception:
                self.handler_errors += 1
                _log.exception("handler for %r raised", subject)

    async def close(self) -> None:
        """Stop the reader and close both connections (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._has_subs.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for client in (self._pubsub, self._redis, self._listener):
            if client is None:
                continue
            try:
                await client.aclose()
            except Exception as exc:
                _log.debug("closing: %r", exc)


class RedisTransport(ThreadedTransport[AsyncRedisTransport]):
    """A blocking Redis Transport: :class:`AsyncRedisTransport` on a private loop thread.

    ``RedisTransport.connect("redis://127.0.0.1:6379/0")`` starts the thread and connects;
    ``close()`` (or ``with``) stops it. ``publish`` appends to the bounded outgoing queue and
    returns; the loop thread sends each message and waits for the server's reply, bounded by
    ``timeout`` (see :class:`ThreadedTransport` for ``max_queue`` and ``max_queue_bytes``).
    Thread-safe.
    """

    @classmethod
    def connect(
        cls,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        timeout: float = 2.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        **options: Any,
    ) -> RedisTransport:
        """Connect (see :meth:`AsyncRedisTransport.connect` for credentials, TLS and
        ``options``)."""
        return cls(
            lambda: AsyncRedisTransport.connect(url, **options),
            timeout=timeout,
            max_queue=max_queue,
            max_queue_bytes=max_queue_bytes,
            name="prefixcache-redis",
        )
