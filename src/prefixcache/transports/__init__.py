"""Real transports for :class:`prefixcache.Sync` (optional extras).

* :mod:`prefixcache.transports.nats`: ``AsyncNatsTransport`` / ``NatsTransport`` over nats-py
  (``pip install 'clusterrouting[nats]'``); the reference system's routers talk NATS.
* :mod:`prefixcache.transports.redis`: ``AsyncRedisTransport`` / ``RedisTransport`` over
  redis-py pub/sub (``pip install 'clusterrouting[redis]'``).
* :class:`ThreadedTransport`: the blocking facade both use for hosts without an event loop
  (a bounded outgoing queue drained by its own thread: publishing never blocks).
* :func:`client_tls_context`: a verifying client TLS context from PEM files.

Importing this package (or ``prefixcache``) imports neither client library: each module
imports its client only when a connection is made.
"""

from prefixcache.transports._bridge import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    ThreadedTransport,
    client_tls_context,
)

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "ThreadedTransport",
    "client_tls_context",
]
