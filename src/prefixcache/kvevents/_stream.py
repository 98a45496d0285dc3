"""One KV-event stream without I/O: what both subscriber forms (thread and asyncio, in
``_subscribe``) do with the frames they receive, and what they share with the publisher.

:class:`StreamCore` decodes each live message and replay answer, applies the batch to the
:class:`KvResidency`, counts (:class:`SubscriberStats`) and decides when to ask for a
replay (a gap or restart the residency reports, at most one request in flight, abandoned
after ``replay_timeout``). :class:`SubscriberBase` checks the subscribers' arguments and
builds their sockets' options; the sockets and loops themselves are the subclasses'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_callable, check_number
from prefixcache._types import ReplicaKey
from prefixcache.kvevents._decode import (
    REPLAY_END_SEQ,
    Flavour,
    check_flavour,
    decode_message,
    decode_payload,
)
from prefixcache.kvevents._outcomes import IngestReport
from prefixcache.kvevents._records import EventBatch, KvEventDecodeError
from prefixcache.kvevents._residency import KvResidency

__all__ = [
    "DEFAULT_REPLAY_TIMEOUT",
    "DRAIN",
    "END_SEQ_BYTES",
    "POLL_MS",
    "ReplicaHook",
    "ReportHook",
    "StreamCore",
    "SubscriberBase",
    "SubscriberStats",
]

_log = logging.getLogger("prefixcache.kvevents")

#: Seconds a replay request may go unanswered before it is abandoned.
DEFAULT_REPLAY_TIMEOUT: Final = 5.0
#: Milliseconds a socket loop waits for a message before it checks for stop.
POLL_MS: Final = 100
#: Messages handled per wake-up before checking for stop.
DRAIN: Final = 256
#: The ``seq`` frame that ends a replay answer.
END_SEQ_BYTES: Final = REPLAY_END_SEQ.to_bytes(8, "big")

ReportHook = Callable[[ReplicaKey, int, IngestReport], None]
ReplicaHook = Callable[[ReplicaKey], None]


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


class StreamCore:
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
        if seq_bytes == END_SEQ_BYTES:
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


class SubscriberBase:
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
        check_number("replay_timeout", replay_timeout, 0.0, above=True)
        check_callable("clock", clock)
        check_callable("on_report", on_report, optional=True)
        check_callable("on_disconnect", on_disconnect, optional=True)
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.replica = replica
        self.topic = topic
        self._on_disconnect = on_disconnect
        self._core = StreamCore(
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
