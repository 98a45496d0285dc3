"""Signed sync messages: who may write to a router, and how much.

Any client of a NATS or Redis server can publish on the sync subjects. The broker's own
authentication (see :mod:`prefixcache.transports`) keeps strangers off the broker; signing
keeps a router from acting on a message that no holder of the shared key wrote, or that was
captured and sent again.

**Envelope.** A signed message is the unsigned JSON object plus five keys:

* ``origin``: the sending router's name (a non-empty string of at most
  :data:`MAX_ORIGIN_BYTES` UTF-8 bytes);
* ``kid``: the id of the shared key that signed it (keys rotate: a receiver accepts every key
  it holds, a sender signs with its active one);
* ``ts``: the wall-clock time of signing, in integer milliseconds since the Unix epoch;
* ``nonce``: a random string (24 hex digits), unique per message;
* ``sig``: lowercase hex HMAC-SHA256, under the key ``kid``, of
  ``b"prefixcache-sig-v1\\0" + subject + b"\\0" + canonical`` where ``canonical`` is the
  object without ``sig`` serialised with sorted keys, ``(",", ":")`` separators and UTF-8
  (``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).

Decoders that do not know these keys ignore them (the Go routers and
:func:`~prefixcache.decode_event` skip unknown keys), so a mixed cluster works with signing
off, and with signing off a payload is byte-for-byte what it was without this module.

**Verdicts** (:meth:`Verifier.check`, in this order): ``"unsigned"`` (no ``sig`` key),
``"forged"`` (not a JSON object, duplicate keys, a malformed envelope field, an unknown
``kid`` or a wrong ``sig``), ``"stale"`` (``ts`` more than ``window`` seconds away from the
receiver's clock, or older than what the bounded nonce memory still covers), ``"replayed"``
(an ``(origin, nonce)`` pair already accepted), else ``"ok"``. The nonce memory holds the pairs
of accepted messages whose ``ts`` is still inside the window, at most ``max_nonces`` of them:
when it is full the oldest pair is forgotten and every message not newer than it counts as
stale from then on, so a replay is never accepted because memory ran out.

**Rate limits** (:class:`RateLimiter`): a token bucket per origin (``rate`` messages per second,
``burst`` at once), for at most ``max_origins`` origins (the least recently seen bucket is
forgotten beyond that). The origin is trustworthy only on a verified message.

The clock is a parameter of every check (wall-clock seconds, shared by all routers: the window
must exceed the clock skew between them).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final, Literal

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_callable, check_methods
from prefixcache._protocols import MessageHandler, Transport, Unsubscribe

#: An ``isinstance`` target built once (an inline union is built on every call).
_BYTES_LIKE = (bytes, bytearray, memoryview)

__all__ = [
    "DEFAULT_MAX_NONCES",
    "SignedTransport",
    "DEFAULT_SIGNATURE_WINDOW",
    "ENVELOPE_KEYS",
    "MAX_ORIGIN_BYTES",
    "RateLimit",
    "RateLimiter",
    "Signer",
    "SigningKeys",
    "Verdict",
    "Verifier",
    "canonical_json",
    "check_guards",
]

ENVELOPE_KEYS: Final = ("origin", "kid", "ts", "nonce", "sig")
"""The keys a signed message adds to the unsigned JSON object."""
DEFAULT_SIGNATURE_WINDOW: Final = 30.0
"""Seconds a signed message's ``ts`` may differ from the receiver's clock."""
DEFAULT_MAX_NONCES: Final = 200_000
"""Accepted ``(origin, nonce)`` pairs a :class:`Verifier` remembers (about 30 MB at most)."""
MAX_ORIGIN_BYTES: Final = 256
"""Longest ``origin`` accepted, in UTF-8 bytes."""
_MIN_KEY_BYTES: Final = 16
_MAX_KID_CHARS: Final = 64
_MAX_NONCE_CHARS: Final = 64
_DOMAIN: Final = b"prefixcache-sig-v1\0"

Verdict = Literal["ok", "unsigned", "forged", "stale", "replayed"]
"""The outcome of :meth:`Verifier.check`."""


def canonical_json(obj: Mapping[str, object]) -> bytes:
    """The canonical form signatures cover: sorted keys, no spaces, UTF-8.

    >>> canonical_json({"b": 1, "a": [1, "é"]})
    b'{"a":[1,"\\xc3\\xa9"],"b":1}'
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _mac(key: bytes, subject: str, canonical: bytes) -> str:
    message = _DOMAIN + subject.encode("utf-8", "surrogatepass") + b"\0" + canonical
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _check_keys(_inst: object, _attr: object, value: Mapping[str, bytes]) -> None:
    if not value:
        raise InvalidRecordError("keys", value, "must hold at least one key")
    for kid, secret in value.items():
        if type(kid) is not str or not 0 < len(kid) <= _MAX_KID_CHARS:
            raise InvalidRecordError("keys", kid, f"a key id must be a str of 1..{_MAX_KID_CHARS}")
        if type(secret) is not bytes or len(secret) < _MIN_KEY_BYTES:
            raise InvalidRecordError(
                "keys", kid, f"the secret must be bytes of at least {_MIN_KEY_BYTES} bytes"
            )


def _freeze_keys(value: Mapping[str, bytes]) -> Mapping[str, bytes]:
    return dict(value) if isinstance(value, Mapping) else value


@attrs.frozen(kw_only=True)
class SigningKeys:
    """The shared keys of a cluster: ``keys`` maps key id to secret (>= 16 bytes each);
    ``active`` names the one new messages are signed with.

    Rotation: add the new key to every router (still signing with the old one), then make it
    active everywhere, then remove the old one.

    Raises:
        InvalidRecordError: no keys, a bad key id or a short secret, or ``active`` not in
            ``keys``.

    >>> SigningKeys(keys={"k1": b"0123456789abcdef"}, active="k1").active
    'k1'
    """

    keys: Mapping[str, bytes] = attrs.field(converter=_freeze_keys, validator=_check_keys)
    active: str

    def __attrs_post_init__(self) -> None:
        if self.active not in self.keys:
            raise InvalidRecordError("active", self.active, "must be one of the key ids")


def _check_origin(value: object) -> str | None:
    if type(value) is not str or not value:
        return "must be a non-empty str"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "must be encodable as UTF-8"
    if size > MAX_ORIGIN_BYTES:
        return f"is longer than {MAX_ORIGIN_BYTES} UTF-8 bytes"
    return None


def _check_signing_keys(keys: object) -> None:
    if not isinstance(keys, SigningKeys):
        raise InvalidRecordError("keys", keys, "must be a SigningKeys")


def check_guards(signer: object, verifier: object, rate_limit: object) -> None:
    """Refuse a ``signer``, ``verifier`` or ``rate_limit`` of the wrong type (``None`` is
    none): found when a ``Sync`` or ``SignedTransport`` is built, not as every message
    failing to sign or verify later."""
    for name, value, kinds, what in (
        ("signer", signer, (Signer,), "a Signer"),
        ("verifier", verifier, (Verifier,), "a Verifier"),
        ("rate_limit", rate_limit, (RateLimit, RateLimiter), "a RateLimit or RateLimiter"),
    ):
        if value is not None and not isinstance(value, kinds):
            raise InvalidRecordError(name, value, f"must be {what} or None")


class Signer:
    """Signs this router's messages (see the module docstring for the envelope).

    Args:
        keys: the shared keys; the active one signs.
        origin: this router's name, unique in the cluster.
        clock: wall-clock seconds (``ts`` is ``round(clock() * 1000)``).
        nonce: returns a fresh nonce per call (default: 24 random hex digits).

    Thread-safe.

    >>> s = Signer(SigningKeys(keys={"k": b"k" * 16}, active="k"), origin="r1",
    ...            clock=lambda: 1.5, nonce=lambda: "n1")
    >>> s.sign("prefixcache.observe", b'{"model":"m"}')[:55]
    b'{"model":"m","origin":"r1","kid":"k","ts":1500,"nonce":'

    Raises:
        InvalidRecordError: ``origin`` is empty, too long or not UTF-8.
    """

    def __init__(
        self,
        keys: SigningKeys,
        *,
        origin: str,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        reason = _check_origin(origin)
        if reason is not None:
            raise InvalidRecordError("origin", origin, reason)
        _check_signing_keys(keys)
        check_callable("clock", clock)
        check_callable("nonce", nonce, optional=True)
        self.keys = keys
        self.origin = origin
        self.clock = clock
        self._nonce = nonce or (lambda: secrets.token_hex(12))

    def sign(self, subject: str, payload: bytes, *, now: float | None = None) -> bytes:
        """``payload`` (a JSON object) with the envelope keys added; the original keys keep
        their order and come first. A payload that already has an ``origin`` (a session pin)
        keeps it.

        Raises:
            ValueError: ``payload`` is not a JSON object, or already holds an envelope key.
        """
        obj = json.loads(payload)
        if type(obj) is not dict:
            raise ValueError("only a JSON object can be signed")
        if any(k in obj for k in ENVELOPE_KEYS if k != "origin"):
            raise ValueError("the payload already holds an envelope key")
        t = self.clock() if now is None else now
        # A record that names its own origin (a session pin) keeps it: the signature covers it.
        obj.setdefault("origin", self.origin)
        obj["kid"] = self.keys.active
        obj["ts"] = round(t * 1000)
        obj["nonce"] = self._nonce()
        obj["sig"] = _mac(self.keys.keys[self.keys.active], subject, canonical_json(obj))
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


class Verifier:
    """Checks signed messages (see the module docstring for the verdicts and the memory).

    Args:
        keys: every key id this router accepts (``active`` is not used here).
        window: seconds ``ts`` may differ from ``now`` (> 0).
        max_nonces: accepted ``(origin, nonce)`` pairs remembered (>= 1).

    Counters: :attr:`counts` maps each verdict to how many messages got it.
    Thread-safe only under the caller's lock (:class:`~prefixcache.Sync` holds one).

    >>> keys = SigningKeys(keys={"k": b"k" * 16}, active="k")
    >>> msg = Signer(keys, origin="r1", clock=lambda: 100.0).sign("s", b'{"a":1}')
    >>> v = Verifier(keys)
    >>> v.check("s", msg, now=100.0), v.check("s", msg, now=100.0), v.check("t", msg, now=100.0)
    (('ok', 'r1'), ('replayed', 'r1'), ('forged', None))
    >>> v.check("s", b'{"a":1}', now=100.0)
    ('unsigned', None)
    """

    def __init__(
        self,
        keys: SigningKeys,
        *,
        window: float = DEFAULT_SIGNATURE_WINDOW,
        max_nonces: int = DEFAULT_MAX_NONCES,
    ) -> None:
        if not window > 0:
            raise InvalidRecordError("window", window, "must be > 0 seconds")
        if type(max_nonces) is not int or max_nonces < 1:
            raise InvalidRecordError("max_nonces", max_nonces, "must be an int >= 1")
        _check_signing_keys(keys)
        self.keys = keys
        self.window = window
        self.max_nonces = max_nonces
        self.counts: dict[str, int] = dict.fromkeys(
            ("ok", "unsigned", "forged", "stale", "replayed"), 0
        )
        self._seen: dict[tuple[str, str], int] = {}
        self._order: collections.deque[tuple[int, tuple[str, str]]] = collections.deque()
        self._floor_ms = -(1 << 62)  # messages with ts <= floor are stale (memory evicted)

    def remembered(self) -> int:
        """How many ``(origin, nonce)`` pairs are held now."""
        return len(self._seen)

    def check(self, subject: str, payload: bytes, *, now: float) -> tuple[Verdict, str | None]:
        """Classify one message received at ``now``; return the verdict and, for a message
        whose signature verified (``"ok"``, ``"stale"``, ``"replayed"``), its origin."""
        verdict, origin = self._check(subject, payload, now)
        self.counts[verdict] += 1
        return verdict, origin

    def _check(self, subject: str, payload: bytes, now: float) -> tuple[Verdict, str | None]:
        try:
            obj = json.loads(bytes(payload), object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError, TypeError):
            return "forged", None
        if type(obj) is not dict:
            return "forged", None
        if "sig" not in obj:
            return "unsigned", None
        sig = obj.pop("sig")
        origin, kid, ts, nonce = (obj.get(k) for k in ("origin", "kid", "ts", "nonce"))
        if (
            _check_origin(origin) is not None
            or type(kid) is not str
            or type(ts) is not int
            or type(nonce) is not str
            or not 0 < len(nonce) <= _MAX_NONCE_CHARS
            or type(sig) is not str
        ):
            return "forged", None
        assert type(origin) is str
        secret = self.keys.keys.get(kid)
        if secret is None:
            return "forged", None
        try:
            expected = _mac(secret, subject, canonical_json(obj))
        except (ValueError, TypeError):
            return "forged", None
        if not hmac.compare_digest(expected, sig):
            return "forged", None
        now_ms = round(now * 1000)
        window_ms = round(self.window * 1000)
        self._expire(now_ms - window_ms)
        if abs(now_ms - ts) > window_ms or ts <= self._floor_ms:
            return "stale", origin
        pair = (origin, nonce)
        if pair in self._seen:
            return "replayed", origin
        self._seen[pair] = ts
        self._order.append((ts, pair))
        while len(self._seen) > self.max_nonces:
            old_ts, old = self._order.popleft()
            if self._seen.get(old) == old_ts:
                del self._seen[old]
                self._floor_ms = max(self._floor_ms, old_ts)
        return "ok", origin

    def _expire(self, oldest_ms: int) -> None:
        # Pairs whose ts left the window can go: a replay of them is stale anyway, also if
        # the clock later steps back (the floor only rises).
        if oldest_ms - 1 > self._floor_ms:
            self._floor_ms = oldest_ms - 1
        order = self._order
        while order and order[0][0] < oldest_ms:
            ts, pair = order.popleft()
            if self._seen.get(pair) == ts:
                del self._seen[pair]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise InvalidRecordError(attribute.name, value, "must be > 0")


@attrs.frozen(kw_only=True)
class RateLimit:
    """A token bucket's shape: ``rate`` messages per second sustained, ``burst`` at once.

    Raises:
        InvalidRecordError: ``rate`` or ``burst`` not > 0.
    """

    rate: float = attrs.field(validator=_positive)
    burst: float = attrs.field(validator=_positive)


class RateLimiter:
    """A token bucket per key (an origin), with at most ``max_keys`` buckets.

    Each bucket starts full (``burst`` tokens), gains ``rate`` tokens per second of ``now``
    (never above ``burst``) and spends one per allowed message. A clock that goes backwards
    adds nothing. Beyond ``max_keys`` the least recently used bucket is forgotten (a key seen
    again starts full). Counters: :attr:`allowed`, :attr:`limited`.

    Thread-safe only under the caller's lock.

    >>> rl = RateLimiter(RateLimit(rate=1.0, burst=2.0))
    >>> [rl.allow("a", now=0.0) for _ in range(3)], rl.allow("a", now=1.0), rl.allow("b", 0.0)
    ([True, True, False], True, True)
    """

    def __init__(self, limit: RateLimit, *, max_keys: int = 10_000) -> None:
        if type(max_keys) is not int or max_keys < 1:
            raise InvalidRecordError("max_keys", max_keys, "must be an int >= 1")
        self.limit = limit
        self.max_keys = max_keys
        self.allowed = 0
        self.limited = 0
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """Spend one token of ``key``'s bucket at ``now`` if it has one; return whether it had."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [self.limit.burst, now]
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(self.limit.burst, bucket[0] + elapsed * self.limit.rate)
                bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            self.allowed += 1
            return True
        self.limited += 1
        return False


class SignedTransport:
    """A :class:`~prefixcache.Transport` decorator that signs what it publishes and admits
    only verified, in-rate messages to its subscribers: trust for any record on any subject
    (session pins, node announcements) without changing the code that sends or reads them.

    ``publish`` signs with ``signer`` (when given) and forwards. ``subscribe`` wraps the
    handler: with a ``verifier`` a message that is not ``"ok"`` is dropped, and with a
    ``rate_limit`` a message over its origin's bucket is dropped (the origin is the verified
    one, else ``""``); each drop is counted in :attr:`dropped` by reason (the verdicts and
    ``"rate_limited"``). Handlers get the payload as received, envelope included (decoders
    ignore unknown keys). ``clock`` (wall-clock seconds) is read once per message.

    Thread-safe (one lock around the verifier and the rate limiter).

    >>> from prefixcache.testing import InMemoryTransport
    >>> keys = SigningKeys(keys={"k": b"k" * 16}, active="k")
    >>> hub = InMemoryTransport()
    >>> a = SignedTransport(hub.connect("a"), signer=Signer(keys, origin="a"))
    >>> b = SignedTransport(hub.connect("b"), verifier=Verifier(keys))
    >>> got = []
    >>> _ = b.subscribe("s", lambda subject, payload: got.append(payload))
    >>> a.publish("s", b'{"x":1}')
    >>> hub.publish("s", b'{"x":2}')  # unsigned
    >>> len(got), b.dropped["unsigned"]
    (1, 1)
    """

    def __init__(
        self,
        transport: Transport,
        *,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        rate_limit: RateLimit | RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_methods("transport", transport, "publish", "subscribe", what="a Transport")
        check_guards(signer, verifier, rate_limit)
        check_callable("clock", clock)
        self.transport = transport
        self.signer = signer
        self.verifier = verifier
        self.rate_limiter = (
            RateLimiter(rate_limit) if isinstance(rate_limit, RateLimit) else rate_limit
        )
        self.clock = clock
        self.dropped: dict[str, int] = dict.fromkeys(
            ("unsigned", "forged", "stale", "replayed", "rate_limited"), 0
        )
        self._lock = threading.Lock()

    def publish(self, subject: str, payload: bytes) -> None:
        """Sign (when a signer is set) and publish. An empty payload (a bare notification,
        such as a query for announcements) is signed as the empty JSON object.

        Raises:
            ValueError: ``payload`` is neither empty nor a JSON object (with a signer).
            Exception: whatever the wrapped transport raises.
        """
        if self.signer is not None:
            payload = self.signer.sign(subject, payload or b"{}", now=self.clock())
        self.transport.publish(subject, payload)

    def admit(self, subject: str, payload: bytes) -> bool:
        """Whether a received message passes the verifier and the rate limit (counted)."""
        if self.verifier is None and self.rate_limiter is None:
            return True
        now = self.clock()
        with self._lock:
            origin: str | None = ""
            if self.verifier is not None:
                verdict, origin = self.verifier.check(subject, payload, now=now)
                if verdict != "ok":
                    self.dropped[verdict] += 1
                    return False
            if self.rate_limiter is not None and not self.rate_limiter.allow(origin or "", now):
                self.dropped["rate_limited"] += 1
                return False
        return True

    def subscribe(self, subject: str, handler: MessageHandler) -> Unsubscribe:
        """Subscribe ``handler`` behind the checks; returns the wrapped transport's
        unsubscribe."""

        def checked(subj: str, payload: bytes) -> None:
            if isinstance(payload, _BYTES_LIKE) and self.admit(subj, bytes(payload)):
                handler(subj, payload)
            elif not isinstance(payload, _BYTES_LIKE):
                with self._lock:
                    self.dropped["forged"] += 1

        return self.transport.subscribe(subject, checked)

    def flush(self) -> object:
        """The wrapped transport's ``flush()`` result (an awaitable for asyncio bridges), or
        ``None`` when it has none."""
        flush = getattr(self.transport, "flush", None)
        return flush() if callable(flush) else None

    def close(self) -> None:
        """Close the wrapped transport, if it can be closed."""
        close = getattr(self.transport, "close", None)
        if callable(close):
            close()
