"""An engine's side of the KV-event sockets, for emulators, mock backends and tests: PUB
framing, a replay buffer and a ROUTER socket that answers replays as the engines do (the
framing is in ``_subscribe``'s module docstring)."""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from clusterrouting import InvalidRecordError
from prefixcache.kvevents._decode import Layout, check_layout, encode_payload
from prefixcache.kvevents._records import EventBatch
from prefixcache.kvevents._stream import END_SEQ_BYTES, POLL_MS

if TYPE_CHECKING:
    import zmq

__all__ = ["KvEventPublisher"]


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
            if not poller.poll(POLL_MS):
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
            router.send_multipart([identity, b"", *end, END_SEQ_BYTES, b""])

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
