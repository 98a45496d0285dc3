"""Anti-entropy on the broker: routers compare digests and pull a peer's snapshot on drift.

Sync events are delivered at most once, so a router that missed some disagrees with its peers
until the entries expire. :class:`ResyncLoop` repairs that on its own, once the host starts it:

1. Every ``interval`` seconds (:meth:`ResyncLoop.tick`) a router publishes its
   :func:`~prefixcache.digests` on :data:`DIGEST_SUBJECT`:
   ``{"origin": o, "digests": {"model": "decimal digest", ...}}`` (split into several messages
   when they would not fit in ``chunk_bytes``).
2. A router that receives a peer's digests compares them with its own at that moment; when a
   model differs (drift), and no request is outstanding, and ``min_request_interval`` seconds
   passed since its last request, it asks that peer for a snapshot on
   :data:`SNAPSHOT_REQUEST_SUBJECT`: ``{"origin": me, "to": peer, "id": request id}``.
3. The peer answers on the requester's own reply subject (:func:`reply_subject`): its
   :func:`~prefixcache.export_snapshot`, encoded and cut into chunks of at most
   ``chunk_bytes`` bytes, each sent base64-encoded as
   ``{"origin": peer, "id": request id, "seq": i, "total": n, "data": "..."}``. The default
   chunk (512 KiB, about 700 KB on the wire) stays under NATS's default 1 MiB payload limit.
4. The requester reassembles the chunks of its outstanding request (at most
   ``max_snapshot_bytes`` in all; anything else is dropped), decodes the snapshot and applies
   it through :meth:`Sync.apply_snapshot <prefixcache.Sync.apply_snapshot>` (``replace``:
   ``False``, the default, merges it, so two drifting routers both end with the union;
   ``True`` makes the requester a copy of the peer). A request not complete within
   ``request_timeout`` seconds is abandoned at the next tick.

Every message goes through the wrapped :class:`~prefixcache.Sync`'s trust settings: signed
with its ``signer``, admitted by its ``verifier`` and ``rate_limit`` (drops are counted in the
Sync's stats); malformed or unexpected messages are dropped and counted here
(:class:`ResyncStats`), never raised. Subjects are those of the reference's sync plus these
three; routers without a resync loop ignore them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_methods
from prefixcache._protocols import Transport, Unsubscribe
from prefixcache._snapshot import MAX_SNAPSHOT_BYTES, Snapshot, SnapshotDecodeError
from prefixcache._sync import Sync

#: An ``isinstance`` target built once (an inline union is built on every call).
_BYTES_LIKE = (bytes, bytearray, memoryview)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_RESYNC_INTERVAL",
    "DIGEST_SUBJECT",
    "SNAPSHOT_REPLY_PREFIX",
    "SNAPSHOT_REQUEST_SUBJECT",
    "ResyncLoop",
    "ResyncStats",
    "reply_subject",
]

_log = logging.getLogger("prefixcache.resync")

DIGEST_SUBJECT: Final = "prefixcache.digest"
SNAPSHOT_REQUEST_SUBJECT: Final = "prefixcache.snapshot.request"
SNAPSHOT_REPLY_PREFIX: Final = "prefixcache.snapshot.reply."
DEFAULT_CHUNK_BYTES: Final = 512 * 1024
"""Snapshot bytes per chunk: base64 and the envelope keep a chunk under 1 MiB on the wire."""
DEFAULT_RESYNC_INTERVAL: Final = 30.0
"""Seconds between two digest broadcasts."""
_MAX_CONTROL_BYTES: Final = 4096


def reply_subject(origin: str) -> str:
    """The subject snapshot chunks for ``origin`` travel on (a hash of it, so any origin
    string makes a valid subject).

    >>> reply_subject("router-1").startswith("prefixcache.snapshot.reply.")
    True
    """
    digest = hashlib.sha256(origin.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return SNAPSHOT_REPLY_PREFIX + digest


@attrs.frozen(kw_only=True)
class ResyncStats:
    """Counters of one :class:`ResyncLoop` (monotone).

    Attributes:
        digests_sent / digests_received: digest messages (own / peers').
        drift_seen: peer digest messages that differed from this router's digests.
        requests_sent / requests_answered: snapshot requests made / served.
        requests_refused: requests within ``min_answer_interval`` of the last answer.
        chunks_sent / chunks_received: snapshot chunks (received: accepted ones).
        snapshots_applied: complete snapshots applied; ``entries_applied`` their entries.
        timeouts: requests abandoned after ``request_timeout``.
        dropped: malformed, unexpected or oversized messages (not counted by the Sync).
        errors: failed publishes and snapshots that did not decode.
    """

    digests_sent: int = 0
    digests_received: int = 0
    drift_seen: int = 0
    requests_sent: int = 0
    requests_answered: int = 0
    requests_refused: int = 0
    chunks_sent: int = 0
    chunks_received: int = 0
    snapshots_applied: int = 0
    entries_applied: int = 0
    timeouts: int = 0
    dropped: int = 0
    errors: int = 0


@attrs.define
class _Pending:
    ident: str
    peer: str
    started: float
    total: int | None = None
    chunks: dict[int, bytes] = attrs.field(factory=dict)
    size: int = 0


def _dumps(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ResyncLoop:
    """Digest comparison and snapshot pull over a transport (see the module docstring).

    Nothing happens until the host calls :meth:`attach` (subscriptions) and :meth:`tick`, or
    :meth:`start` (a daemon thread ticking every ``interval`` seconds) / :meth:`stop`, or
    runs the :meth:`run` coroutine as a task on its event loop.

    Args:
        sync: the router's :class:`~prefixcache.Sync` over an ``Index``; its clock, signer,
            verifier and rate limit are used.
        transport: where the resync messages go (normally the Sync's transport).
        origin: this router's name, unique in the cluster (with signing: the signer's).
        interval: seconds between digest broadcasts (> 0).
        chunk_bytes: snapshot bytes per chunk (>= 1024).
        request_timeout: seconds an outstanding request may take (> 0).
        min_request_interval: seconds between two requests of this router (>= 0).
        min_answer_interval: seconds between two snapshots this router sends (>= 0): a
            request arriving sooner is refused and counted, so requests cannot make a router
            export and send its index in a loop.
        max_snapshot_bytes: largest snapshot accepted.
        replace: apply snapshots replacing (``True``) or merging (``False``).

    Thread-safe.

    Raises:
        InvalidRecordError: an argument is out of range.
    """

    def __init__(
        self,
        sync: Sync,
        transport: Transport,
        *,
        origin: str,
        interval: float = DEFAULT_RESYNC_INTERVAL,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        request_timeout: float = 10.0,
        min_request_interval: float = 60.0,
        min_answer_interval: float = 5.0,
        max_snapshot_bytes: int = MAX_SNAPSHOT_BYTES,
        replace: bool = False,
    ) -> None:
        if type(origin) is not str or not origin:
            raise InvalidRecordError("origin", origin, "must be a non-empty str")
        if not isinstance(sync, Sync):
            raise InvalidRecordError("sync", sync, "must be a prefixcache.Sync")
        check_methods("transport", transport, "publish", "subscribe", what="a Transport")
        if type(replace) is not bool:
            raise InvalidRecordError("replace", replace, "must be a bool")
        if not interval > 0:
            raise InvalidRecordError("interval", interval, "must be > 0 seconds")
        if type(chunk_bytes) is not int or chunk_bytes < 1024:
            raise InvalidRecordError("chunk_bytes", chunk_bytes, "must be an int >= 1024")
        if not request_timeout > 0:
            raise InvalidRecordError("request_timeout", request_timeout, "must be > 0 seconds")
        for field, value in (
            ("min_request_interval", min_request_interval),
            ("min_answer_interval", min_answer_interval),
        ):
            if not value >= 0:
                raise InvalidRecordError(field, value, "must be >= 0 seconds")
        self.sync = sync
        self.transport = transport
        self.origin = origin
        self.interval = interval
        self.chunk_bytes = chunk_bytes
        self.request_timeout = request_timeout
        self.min_request_interval = min_request_interval
        self.min_answer_interval = min_answer_interval
        self._last_answer: float | None = None
        self._own: tuple[float, dict[str, int]] | None = None
        self.max_snapshot_bytes = max_snapshot_bytes
        self.replace = replace
        self.reply_subject = reply_subject(origin)
        self._lock = threading.Lock()
        self._pending: _Pending | None = None
        self._last_request: float | None = None
        self._counts: dict[str, int] = dict.fromkeys(attrs.fields_dict(ResyncStats), 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._new_id: Callable[[], str] = lambda: secrets.token_hex(8)

    # -- host API ---------------------------------------------------------------------------
    def stats(self) -> ResyncStats:
        """A consistent copy of the counters."""
        with self._lock:
            return ResyncStats(**self._counts)

    def attach(self) -> Unsubscribe:
        """Subscribe to the digest and request subjects and to this router's reply subject;
        return ``detach`` (idempotent)."""
        unsubs = [
            self.transport.subscribe(DIGEST_SUBJECT, self._on_digest),
            self.transport.subscribe(SNAPSHOT_REQUEST_SUBJECT, self._on_request),
            self.transport.subscribe(self.reply_subject, self._on_chunk),
        ]
        done = False

        def detach() -> None:
            nonlocal done
            if not done:
                done = True
                for unsub in unsubs:
                    unsub()

        return detach

    def tick(self, now: float | None = None) -> None:
        """Abandon an outstanding request older than ``request_timeout``, then publish this
        router's digests (``now`` defaults to the Sync's clock)."""
        t = self.sync.clock() if now is None else now
        with self._lock:
            pending = self._pending
            if pending is not None and t - pending.started > self.request_timeout:
                self._pending = None
                self._counts["timeouts"] += 1
        own = self.sync.digests(t)
        for part in self._digest_messages(own):
            if self._send(DIGEST_SUBJECT, part):
                self._bump("digests_sent")

    def start(self) -> None:
        """Start the daemon thread (first tick right away).

        Raises:
            RuntimeError: already running.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("ResyncLoop is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prefixcache-resync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and wait for it (at most ``timeout`` s). Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    async def run(self) -> None:
        """Tick now and then every ``interval`` seconds until cancelled: the asyncio form of
        :meth:`start`, for hosts whose transport lives on their event loop."""
        while True:
            self._tick_counting_errors()
            await asyncio.sleep(self.interval)

    def _run(self) -> None:
        while True:
            self._tick_counting_errors()
            if self._stop.wait(self.interval):
                return

    def _tick_counting_errors(self) -> None:
        """:meth:`tick`; a failure is counted and logged, never raised into the loop."""
        try:
            self.tick()
        except Exception:
            self._bump("errors")
            _log.exception("resync tick failed")

    # -- sending ----------------------------------------------------------------------------
    def _bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _send(self, subject: str, obj: Mapping[str, object]) -> bool:
        try:
            self.transport.publish(subject, self.sync.sign(subject, _dumps(obj)))
        except Exception as exc:
            self._bump("errors")
            _log.warning("resync publish on %s failed: %r", subject, exc)
            return False
        return True

    def _digest_messages(self, own: Mapping[str, int]) -> list[dict[str, object]]:
        budget = max(self.chunk_bytes - 512, 512)
        parts: list[dict[str, object]] = []
        current: dict[str, str] = {}
        size = 0
        for model, value in sorted(own.items()):
            item = len(json.dumps(model, ensure_ascii=False).encode("utf-8")) + 24
            if current and size + item > budget:
                parts.append({"origin": self.origin, "digests": current})
                current, size = {}, 0
            current[model] = str(value)
            size += item
        parts.append({"origin": self.origin, "digests": current})
        return parts

    # -- receiving --------------------------------------------------------------------------
    def _parse(self, subject: str, payload: bytes, limit: int) -> dict[str, Any] | None:
        if not isinstance(payload, _BYTES_LIKE) or len(payload) > limit:
            self._bump("dropped")
            return None
        if not self.sync.admit(subject, bytes(payload)):
            return None
        try:
            obj = json.loads(bytes(payload))
        except (ValueError, RecursionError):
            obj = None
        if type(obj) is not dict or type(obj.get("origin")) is not str:
            self._bump("dropped")
            return None
        return obj

    def _on_digest(self, subject: str, payload: bytes) -> None:
        obj = self._parse(subject, payload, self.chunk_bytes + 4096)
        if obj is None or obj["origin"] == self.origin:
            return
        theirs = obj.get("digests")
        if type(theirs) is not dict:
            self._bump("dropped")
            return
        self._bump("digests_received")
        now = self.sync.clock()
        with self._lock:
            idle = self._pending is None and (
                self._last_request is None or now - self._last_request >= self.min_request_interval
            )
        if not idle:  # a request could not be sent anyway: skip the comparison's cost
            return
        own = self._own_digests(now)
        drift = any(str(own.get(model, 0)) != value for model, value in theirs.items())
        if not drift:
            return
        self._bump("drift_seen")
        with self._lock:
            if self._pending is not None:
                return
            ident = self._new_id()
            self._pending = _Pending(ident=ident, peer=obj["origin"], started=now)
            self._last_request = now
        if self._send(
            SNAPSHOT_REQUEST_SUBJECT, {"origin": self.origin, "to": obj["origin"], "id": ident}
        ):
            self._bump("requests_sent")

    def _own_digests(self, now: float) -> dict[str, int]:
        # Computed at most once a second however many digests arrive (a digest walks the
        # whole index).
        with self._lock:
            cached = self._own
        if cached is not None and 0 <= now - cached[0] < 1.0:
            return cached[1]
        own = self.sync.digests(now)
        with self._lock:
            self._own = (now, own)
        return own

    def _on_request(self, subject: str, payload: bytes) -> None:
        obj = self._parse(subject, payload, _MAX_CONTROL_BYTES)
        if obj is None or obj.get("to") != self.origin:
            return
        ident = obj.get("id")
        if type(ident) is not str or not 0 < len(ident) <= 64:
            self._bump("dropped")
            return
        now = self.sync.clock()
        with self._lock:
            last = self._last_answer
            if last is not None and 0 <= now - last < self.min_answer_interval:
                self._counts["requests_refused"] += 1
                return
            self._last_answer = now
        data = self.sync.export_snapshot().encode()
        n = self.chunk_bytes
        pieces = [data[i : i + n] for i in range(0, len(data), n)] or [b""]
        reply = reply_subject(obj["origin"])
        self._bump("requests_answered")
        for seq, piece in enumerate(pieces):
            chunk = {
                "origin": self.origin,
                "id": ident,
                "seq": seq,
                "total": len(pieces),
                "data": base64.b64encode(piece).decode("ascii"),
            }
            if self._send(reply, chunk):
                self._bump("chunks_sent")

    def _on_chunk(self, subject: str, payload: bytes) -> None:
        obj = self._parse(subject, payload, self.chunk_bytes * 4 // 3 + 4096)
        if obj is None:
            return
        seq, total, data = obj.get("seq"), obj.get("total"), obj.get("data")
        max_chunks = self.max_snapshot_bytes // self.chunk_bytes + 1
        if (
            type(seq) is not int
            or type(total) is not int
            or type(data) is not str
            or not 0 <= seq < total <= max_chunks
        ):
            self._bump("dropped")
            return
        try:
            piece = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            self._bump("dropped")
            return
        with self._lock:
            pending = self._pending
            if (
                pending is None
                or obj.get("id") != pending.ident
                or obj["origin"] != pending.peer
                or (pending.total is not None and pending.total != total)
                or len(piece) > self.chunk_bytes
                or pending.size + len(piece) > self.max_snapshot_bytes
            ):
                self._counts["dropped"] += 1
                return
            pending.total = total
            if seq not in pending.chunks:
                pending.chunks[seq] = piece
                pending.size += len(piece)
            self._counts["chunks_received"] += 1
            if len(pending.chunks) < total:
                return
            self._pending = None
            blob = b"".join(pending.chunks[i] for i in range(total))
        try:
            snapshot = Snapshot.decode(blob, max_bytes=self.max_snapshot_bytes)
        except SnapshotDecodeError as exc:
            self._bump("errors")
            _log.warning("a snapshot from %s did not decode: %s", obj["origin"], exc)
            return
        applied = self.sync.apply_snapshot(snapshot, replace=self.replace)
        with self._lock:
            self._counts["snapshots_applied"] += 1
            self._counts["entries_applied"] += applied
