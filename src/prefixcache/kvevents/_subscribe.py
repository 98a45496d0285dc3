"""ZMQ clients for the engines' KV-event sockets: the subscribers (thread and asyncio) and
the engines' port layout (:func:`rank_endpoints`). What they do with the frames, without
I/O, is ``_stream``'s; the engines' side (for emulators, mock backends and tests) is
``_publish``'s.

Framing (vLLM ``vllm/distributed/kv_events.py``; SGLang uses the same): a PUB socket per
data-parallel rank (rank ``r`` on port ``base + r``, see :func:`rank_endpoints`) sends
``[topic, seq (8 bytes big-endian), payload (msgpack)]``; an optional ROUTER replay socket
answers a DEALER's ``[b"", start_seq]`` with ``[b"", seq, payload]`` for each buffered batch
with ``seq >= start_seq``, then ``[b"", b"\\xff" * 8, b""]``. vLLM from v0.26 (PR #45177)
puts the topic before ``seq`` in these answers, ``[b"", topic, seq, payload]``, and ends with
``[b"", b"", b"\\xff" * 8, b""]``; SGLang and older vLLM do not. Subscribers accept both.

Nothing here opens a socket or starts a thread or task until the host calls ``start()``;
``pyzmq`` is imported then. Subscribers only ever call :meth:`KvResidency.apply` (one lock
held for one batch), so routing decisions never wait on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clusterrouting import InvalidRecordError
from prefixcache._types import ReplicaKey
from prefixcache.kvevents._decode import Flavour
from prefixcache.kvevents._residency import KvResidency
from prefixcache.kvevents._stream import (
    DEFAULT_REPLAY_TIMEOUT,
    DRAIN,
    POLL_MS,
    ReplicaHook,
    ReportHook,
    SubscriberBase,
)

if TYPE_CHECKING:
    import zmq
    import zmq.asyncio

__all__ = ["AsyncKvEventSubscriber", "KvEventSubscriber", "rank_endpoints"]

_log = logging.getLogger("prefixcache.kvevents")


def rank_endpoints(endpoint: str, ranks: int) -> list[str]:
    """The PUB endpoints of ``ranks`` data-parallel ranks: rank ``r`` on port ``base + r``.

    Args:
        endpoint: rank 0's endpoint, ``"tcp://host:port"`` (vLLM's default publishes on
            ``tcp://*:5557``; connect to the engine's host).
        ranks: the data-parallel size (>= 1).

    Returns:
        One endpoint per rank, in rank order (map each to its own ``ReplicaKey``).

    Raises:
        InvalidRecordError: not a ``tcp://host:port`` endpoint, or ``ranks`` < 1.

    >>> rank_endpoints("tcp://10.0.0.5:5557", 2)
    ['tcp://10.0.0.5:5557', 'tcp://10.0.0.5:5558']
    """
    if type(ranks) is not int or ranks < 1:
        raise InvalidRecordError("ranks", ranks, "must be an int >= 1")
    head, sep, port = endpoint.rpartition(":") if isinstance(endpoint, str) else ("", "", "")
    if not sep or not head.startswith("tcp://") or not port.isdigit():
        raise InvalidRecordError("endpoint", endpoint, "must be 'tcp://host:port'")
    base = int(port)
    if base + ranks - 1 > 65535:
        raise InvalidRecordError("ranks", ranks, f"ports above 65535 from {base}")
    return [f"{head}:{base + r}" for r in range(ranks)]


class KvEventSubscriber(SubscriberBase):
    """One engine rank's KV-event stream, applied to a :class:`KvResidency` by a thread.

    ``start()`` opens a ZMQ SUB socket connected to ``endpoint`` (subscribed to ``topic``, a
    prefix; ``""`` takes every topic) and a daemon thread that decodes each message
    (:func:`decode_message`) and applies it to ``replica`` with ``replayed=False``.
    Undecodable messages are dropped, counted and logged. ZMQ reconnects on its own
    (100 ms, backing off to 2 s); each loss of the connection is counted and reported to
    ``on_disconnect(replica)`` (a host that wants a restarted engine to lose its affinity
    at once calls ``residency.forget(replica)`` there). With a ``replay_endpoint``, a batch
    that reveals a gap (or a restart) makes the thread ask the engine's replay socket for
    the batches from the first missing ``seq`` on (a DEALER; at most one request in flight,
    abandoned after ``replay_timeout`` seconds); the answers are applied with
    ``replayed=True``. ``stop()`` ends the thread and closes the sockets.

    Args:
        endpoint: the engine rank's PUB endpoint, e.g. ``"tcp://10.0.0.5:5557"``.
        replica: the key this rank's blocks are recorded under.
        residency: where batches are applied.
        model: the model the engine serves.
        topic: topic prefix to subscribe to.
        replay_endpoint: the engine's replay (ROUTER) endpoint, ``None`` for none.
        flavour: how raw-bytes hashes are read (``"vllm"`` or ``"sglang"``).
        replay_timeout: seconds before an unanswered replay is abandoned (finite, > 0).
        on_report: ``hook(replica, seq, report)`` after each applied batch (on the thread).
        on_disconnect: ``hook(replica)`` when the connection drops (on the thread).
        clock: monotonic clock for replay timeouts.
        context: a ``zmq.Context`` (default: the process's shared instance).

    Thread-safety: ``start``/``stop``/``stats`` may be called from any thread; hooks run on
    the subscriber's thread.

    Raises (constructor):
        InvalidRecordError: a bad argument.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        replica: ReplicaKey,
        residency: KvResidency,
        model: str,
        topic: str = "",
        replay_endpoint: str | None = None,
        flavour: Flavour = "vllm",
        replay_timeout: float = DEFAULT_REPLAY_TIMEOUT,
        on_report: ReportHook | None = None,
        on_disconnect: ReplicaHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        super().__init__(
            endpoint,
            replica=replica,
            residency=residency,
            model=model,
            topic=topic,
            replay_endpoint=replay_endpoint,
            flavour=flavour,
            replay_timeout=replay_timeout,
            on_report=on_report,
            on_disconnect=on_disconnect,
            clock=clock,
        )
        self._context = context
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open the sockets and start the thread (idempotent); returns once the SUB socket
        is connecting (messages published before ZMQ completes the connection are lost, as
        with any SUB socket: the ``seq`` gap shows it)."""
        if self.running:
            return
        import zmq

        ctx = self._context or zmq.Context.instance()
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(
            target=self._run, args=(ctx,), name=f"kvevents-{self.replica.node_id}", daemon=True
        )
        self._thread.start()
        self._ready.wait(10.0)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread and close its sockets (idempotent)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def _run(self, ctx: Any) -> None:
        import zmq

        core = self._core
        sub = self._sub_socket(ctx, zmq)
        monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sub.connect(self.endpoint)
        dealer = None
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        self._ready.set()
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(POLL_MS))
                if sub in ready:
                    for _ in range(DRAIN):
                        try:
                            frames = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        core.on_message(frames)
                if dealer is not None and dealer in ready:
                    for _ in range(DRAIN):
                        try:
                            frames = dealer.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        core.on_replay(frames)
                if monitor in ready:
                    while True:
                        try:
                            monitor.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._disconnected()
                if core.replay:
                    start = core.replay_request()
                    if start is not None:
                        if dealer is not None:  # a timed-out request: drop its late answers
                            poller.unregister(dealer)
                            dealer.close(0)
                        dealer = self._dealer_socket(ctx, zmq)
                        poller.register(dealer, zmq.POLLIN)
                        dealer.send_multipart([b"", start])
        except Exception:  # pragma: no cover - a bug; logged, the thread ends
            _log.exception("KV-event subscriber for %s failed", self.replica)
        finally:
            with contextlib.suppress(Exception):
                sub.disable_monitor()
            monitor.close(0)
            sub.close(0)
            if dealer is not None:
                dealer.close(0)


class AsyncKvEventSubscriber(SubscriberBase):
    """:class:`KvEventSubscriber`'s asyncio twin: the same arguments and behaviour, run as a
    task on the running event loop (``await start()`` / ``await stop()``).

    Thread-safety: belongs to one event loop; hooks run on it.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        replica: ReplicaKey,
        residency: KvResidency,
        model: str,
        topic: str = "",
        replay_endpoint: str | None = None,
        flavour: Flavour = "vllm",
        replay_timeout: float = DEFAULT_REPLAY_TIMEOUT,
        on_report: ReportHook | None = None,
        on_disconnect: ReplicaHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        super().__init__(
            endpoint,
            replica=replica,
            residency=residency,
            model=model,
            topic=topic,
            replay_endpoint=replay_endpoint,
            flavour=flavour,
            replay_timeout=replay_timeout,
            on_report=on_report,
            on_disconnect=on_disconnect,
            clock=clock,
        )
        self._context = context
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the task is running."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Open the sockets and start the task on the running loop (idempotent)."""
        if self.running:
            return
        import zmq.asyncio

        ctx = self._context or zmq.asyncio.Context.instance()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run(ctx, ready))
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        """Cancel the task and close its sockets (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, ctx: Any, ready: asyncio.Future[None]) -> None:
        import zmq
        import zmq.asyncio

        core = self._core
        sub = self._sub_socket(ctx, zmq)
        monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sub.connect(self.endpoint)
        dealer = None
        poller = zmq.asyncio.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        ready.set_result(None)
        try:
            while True:
                ready_socks = dict(await poller.poll(POLL_MS))
                if sub in ready_socks:
                    for _ in range(DRAIN):
                        try:
                            frames = await sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        core.on_message(frames)
                if dealer is not None and dealer in ready_socks:
                    for _ in range(DRAIN):
                        try:
                            frames = await dealer.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        core.on_replay(frames)
                if monitor in ready_socks:
                    while True:
                        try:
                            await monitor.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._disconnected()
                if core.replay:
                    start = core.replay_request()
                    if start is not None:
                        if dealer is not None:
                            poller.unregister(dealer)
                            dealer.close(0)
                        dealer = self._dealer_socket(ctx, zmq)
                        poller.register(dealer, zmq.POLLIN)
                        await dealer.send_multipart([b"", start])
        finally:
            with contextlib.suppress(Exception):
                sub.disable_monitor()
            monitor.close(0)
            sub.close(0)
            if dealer is not None:
                dealer.close(0)
