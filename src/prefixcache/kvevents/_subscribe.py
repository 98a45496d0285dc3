"""ZMQ clients for the engines' KV-event sockets: subscribers (thread and asyncio) and a
publisher that copies the engines' framing (for emulators, mock backends and tests).

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
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_at_least
from prefixcache._types import ReplicaKey
from prefixcache.kvevents._decode import (
    REPLAY_END_SEQ,
    Flavour,
    Layout,
    check_flavour,
    check_layout,
    decode_message,
    decode_payload,
    encode_payload,
)
from prefixcache.kvevents._outcomes import IngestReport
from prefixcache.kvevents._records import EventBatch, KvEventDecodeError
from prefixcache.kvevents._residency import KvResidency

if TYPE_CHECKING:
    import zmq
    import zmq.asyncio

__all__ = [
    "DEFAULT_REPLAY_TIMEOUT",
    "AsyncKvEventSubscriber",
    "KvEventPublisher",
    "KvEventSubscriber",
    "SubscriberStats",
    "rank_endpoints",
]

_log = logging.getLogger("prefixcache.kvevents")

#: Seconds a replay request may go unanswered before it is abandoned.
DEFAULT_REPLAY_TIMEOUT: Final = 5.0
_POLL_MS: Final = 100
_DRAIN: Final = 256  # messages handled per wake-up before checking for stop
_END_SEQ_BYTES: Final = REPLAY_END_SEQ.to_bytes(8, "big")

ReportHook = Callable[[ReplicaKey, int, IngestReport], None]
ReplicaHook = Callable[[ReplicaKey], None]


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


@attrs.frozen(kw_only=True)
class SubscriberStats:
    """Counters of one subscriber (monotone since construction).

    Attributes:
        received: messages received on the SUB socket.
        applied: batches applied (live and replayed, duplicates included).
        decode_errors: messages dropped because they did not decode (counted, logged).
        replays_requested: replay requests sent.
        replayed: batches received through replays.
        replays_timed_out: replay requests abandoned after ``replay_timeout``.
        disconnects: times the SUB socket lost its connection.

    Immutable: safe to share between threads.
    """

    received: int = 0
    applied: int = 0
    decode_errors: int = 0
    replays_requested: int = 0
    replayed: int = 0
    replays_timed_out: int = 0
    disconnects: int = 0


class _Core:
    """What both subscriber forms do with frames, without I/O (owned by one thread/task)."""

    def __init__(
        self,
        *,
        replica: ReplicaKey,
        residency: KvResidency,
        model: str,
        flavour: Flavour,
        replay: bool,
        replay_timeout: float,
        clock: Callable[[], float],
        on_report: ReportHook | None,
    ) -> None:
        self.replica = replica
        self.residency = residency
        self.model = model
        self.flavour = flavour
        self.replay = replay
        self.replay_timeout = replay_timeout
        self.clock = clock
        self.on_report = on_report
        self.counts = dict.fromkeys(attrs.fields_dict(SubscriberStats), 0)
        self.replay_started: float | None = None  # monotonic time of the request in flight
        self.replay_wanted = False

    def _apply(self, seq: int, batch: EventBatch, replayed: bool) -> None:
        report = self.residency.apply(self.replica, seq, batch, model=self.model, replayed=replayed)
        self.counts["applied"] += 1
        if report.missed or report.restarted:
            self.replay_wanted = self.replay
        if self.on_report is not None:
            try:
                self.on_report(self.replica, seq, report)
            except Exception:  # a host hook must not stop the subscriber
                _log.exception("on_report hook failed for %s", self.replica)

    def on_message(self, frames: Sequence[object]) -> None:
        self.counts["received"] += 1
        try:
            _topic, seq, batch = decode_message(frames, flavour=self.flavour)
        except KvEventDecodeError as exc:
            self._decode_error(exc)
            return
        self._apply(seq, batch, replayed=False)

    def on_replay(self, frames: Sequence[bytes]) -> None:
        # [b"", seq, payload] per batch, then [b"", b"\xff" * 8, b""] (SGLang, vLLM before
        # v0.26); vLLM from v0.26 puts the topic before seq: [b"", topic, seq, payload], then
        # [b"", b"", b"\xff" * 8, b""]. The topic is the live one's: not checked again.
        n = len(frames)
        if n != 3 and n != 4:
            self._decode_error(KvEventDecodeError("frames", f"replay answer of {n} frames"))
            return
        if frames[0] != b"" or len(frames[n - 2]) != 8:
            why = "no empty delimiter" if frames[0] != b"" else "a seq not of 8 bytes"
            self._decode_error(KvEventDecodeError("frames", f"replay answer with {why}"))
            return
        seq_bytes = frames[n - 2]
        if seq_bytes == _END_SEQ_BYTES:
            self.replay_started = None
            return
        try:
            batch = decode_payload(frames[n - 1], flavour=self.flavour)
        except KvEventDecodeError as exc:
            self._decode_error(exc)
            return
        self.counts["replayed"] += 1
        self._apply(int.from_bytes(seq_bytes, "big"), batch, replayed=True)

    def _decode_error(self, exc: KvEventDecodeError) -> None:
        self.counts["decode_errors"] += 1
        if self.counts["decode_errors"] in (1, 10, 100) or self.counts["decode_errors"] % 1000 == 0:
            _log.warning("dropped a KV-event message from %s: %s", self.replica, exc)

    def replay_request(self) -> bytes | None:
        """The start seq to ask for now (8 bytes), or ``None``."""
        now = self.clock()
        if self.replay_started is not None:
            if now - self.replay_started < self.replay_timeout:
                return None
            self.counts["replays_timed_out"] += 1
            self.replay_started = None
        if not self.replay_wanted:
            return None
        self.replay_wanted = False
        start = self.residency.missing_from(self.replica)
        if start is None:
            return None
        self.replay_started = now
        self.counts["replays_requested"] += 1
        return start.to_bytes(8, "big")

    def stats(self) -> SubscriberStats:
        return SubscriberStats(**self.counts)


def _check_common(endpoint: object, replica: object, residency: object, model: object) -> None:
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise InvalidRecordError("endpoint", endpoint, "must be a ZMQ endpoint string")
    if not isinstance(replica, ReplicaKey):
        raise InvalidRecordError("replica", replica, "must be a ReplicaKey")
    if not isinstance(residency, KvResidency):
        raise InvalidRecordError("residency", residency, "must be a KvResidency")
    if type(model) is not str:
        raise InvalidRecordError("model", model, "must be a str")


class _SubscriberBase:
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
    ) -> None:
        _check_common(endpoint, replica, residency, model)
        if replay_endpoint is not None and (
            not isinstance(replay_endpoint, str) or "://" not in replay_endpoint
        ):
            raise InvalidRecordError("replay_endpoint", replay_endpoint, "must be an endpoint")
        if type(topic) is not str:
            raise InvalidRecordError("topic", topic, "must be a str")
        # Found here, not as every message dropped (or the receive thread ended) later.
        check_flavour(flavour)
        check_at_least("replay_timeout", replay_timeout, 0.0, above=True)
        for name, fn in (
            ("clock", clock),
            ("on_report", on_report),
            ("on_disconnect", on_disconnect),
        ):
            if fn is not None and not callable(fn):
                raise InvalidRecordError(name, fn, "must be callable")
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.replica = replica
        self.topic = topic
        self._on_disconnect = on_disconnect
        self._core = _Core(
            replica=replica,
            residency=residency,
            model=model,
            flavour=flavour,
            replay=replay_endpoint is not None,
            replay_timeout=replay_timeout,
            clock=clock,
            on_report=on_report,
        )

    def stats(self) -> SubscriberStats:
        """The counters so far."""
        return self._core.stats()

    def _disconnected(self) -> None:
        self._core.counts["disconnects"] += 1
        if self._on_disconnect is not None:
            try:
                self._on_disconnect(self.replica)
            except Exception:
                _log.exception("on_disconnect hook failed for %s", self.replica)

    def _sub_socket(self, ctx: Any, zmq_mod: Any) -> Any:
        sub = ctx.socket(zmq_mod.SUB)
        sub.setsockopt(zmq_mod.LINGER, 0)
        sub.setsockopt(zmq_mod.RECONNECT_IVL, 100)
        sub.setsockopt(zmq_mod.RECONNECT_IVL_MAX, 2000)
        sub.setsockopt(zmq_mod.SUBSCRIBE, self.topic.encode("utf-8"))
        return sub

    def _dealer_socket(self, ctx: Any, zmq_mod: Any) -> Any:
        dealer = ctx.socket(zmq_mod.DEALER)
        dealer.setsockopt(zmq_mod.LINGER, 0)
        dealer.connect(self.replay_endpoint)
        return dealer


class KvEventSubscriber(_SubscriberBase):
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
                ready = dict(poller.poll(_POLL_MS))
                if sub in ready:
                    for _ in range(_DRAIN):
                        try:
                            frames = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        core.on_message(frames)
                if dealer is not None and dealer in ready:
                    for _ in range(_DRAIN):
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


class AsyncKvEventSubscriber(_SubscriberBase):
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
                ready_socks = dict(await poller.poll(_POLL_MS))
                if sub in ready_socks:
                    for _ in range(_DRAIN):
                        try:
                            frames = await sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        core.on_message(frames)
                if dealer is not None and dealer in ready_socks:
                    for _ in range(_DRAIN):
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


class KvEventPublisher:
    """An engine's side of the protocol: PUB framing, a replay buffer and ROUTER socket.

    For emulators, mock backends and tests of hosts: ``publish(batch)`` encodes the batch
    (:func:`encode_payload`, ``layout``) and sends ``[topic, seq, payload]`` with ``seq``
    counting from 0, keeping the last ``buffer_steps`` payloads; with a
    ``replay_endpoint``, a thread started by :meth:`start` answers replay requests as the
    engines do. :meth:`close` stops it and closes the sockets; a new publisher on the same
    endpoints counts from 0 again, which subscribers see as a restart.

    Args:
        endpoint: where to bind the PUB socket (``"tcp://127.0.0.1:0"`` picks a free port;
            :attr:`endpoint` then tells which).
        replay_endpoint: where to bind the ROUTER socket, ``None`` for no replay.
        topic: the topic frame.
        buffer_steps: payloads kept for replays.
        layout: ``"positional"`` or ``"map"`` events.
        replay_topic: answer replays as vLLM does from v0.26, with the topic before
            ``seq`` (``[b"", topic, seq, payload]``, then ``[b"", b"", end, b""]``); ``False``
            (the default) answers as SGLang and vLLM before v0.26 (``[b"", seq, payload]``).

    Thread-safety: ``publish`` may be called from any thread (a lock orders sends).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        replay_endpoint: str | None = None,
        topic: str = "",
        buffer_steps: int = 10_000,
        layout: Layout = "positional",
        replay_topic: bool = False,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if type(buffer_steps) is not int or buffer_steps < 1:
            raise InvalidRecordError("buffer_steps", buffer_steps, "must be an int >= 1")
        if type(replay_topic) is not bool:
            raise InvalidRecordError("replay_topic", replay_topic, "must be a bool")
        for name, bind in (("endpoint", endpoint), ("replay_endpoint", replay_endpoint)):
            if (bind is not None or name == "endpoint") and (
                not isinstance(bind, str) or "://" not in bind
            ):
                raise InvalidRecordError(name, bind, "must be a ZMQ endpoint string")
        if type(topic) is not str:
            raise InvalidRecordError("topic", topic, "must be a str")
        check_layout(layout)
        self._bind = endpoint
        self._replay_bind = replay_endpoint
        self._topic = topic.encode("utf-8")
        self._layout: Layout = layout
        # The frames between the delimiter and seq in a replay answer (vLLM >= 0.26: the topic).
        self._replay_head: list[bytes] = [self._topic] if replay_topic else []
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._lock = threading.Lock()
        self._context = context
        self._pub: Any = None
        self._router: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.endpoint = ""
        self.replay_endpoint = ""
        self.seq = 0  # the next batch's seq

    def start(self) -> None:
        """Bind the sockets and start the replay thread (when there is a replay socket)."""
        import zmq

        ctx = self._context or zmq.Context.instance()
        try:
            self._pub = ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.bind(self._bind)
            self.endpoint = self._pub.getsockopt(zmq.LAST_ENDPOINT).decode()
            if self._replay_bind is not None:
                self._router = ctx.socket(zmq.ROUTER)
                self._router.setsockopt(zmq.LINGER, 0)
                self._router.bind(self._replay_bind)
                self.replay_endpoint = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()
        except Exception:
            self.close()  # a port in use: release the socket already bound
            raise
        if self._router is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._serve, name="kvevents-replay", daemon=True)
            self._thread.start()

    def publish(self, batch: EventBatch) -> int:
        """Send ``batch``; returns the ``seq`` it was sent with."""
        payload = encode_payload(batch, layout=self._layout)
        with self._lock:
            seq = self.seq
            self.seq += 1
            self._buffer.append((seq, payload))
            self._pub.send_multipart([self._topic, seq.to_bytes(8, "big"), payload])
        return seq

    def _serve(self) -> None:
        import zmq

        router = self._router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(_POLL_MS):
                continue
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            if len(frames) != 3 or len(frames[2]) != 8:
                continue
            identity, start = frames[0], int.from_bytes(frames[2], "big")
            with self._lock:
                items = [(s, p) for s, p in self._buffer if s >= start]
            head = self._replay_head
            for s, p in items:
                router.send_multipart([identity, b"", *head, s.to_bytes(8, "big"), p])
            end = [b""] * len(head)  # vLLM >= 0.26 sends an empty topic before the end marker
            router.send_multipart([identity, b"", *end, _END_SEQ_BYTES, b""])

    def close(self) -> None:
        """Stop the replay thread and close the sockets (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        for sock in (self._pub, self._router):
            if sock is not None:
                sock.close(0)
        self._pub = self._router = None
