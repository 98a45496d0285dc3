"""The gateway: an aiohttp L7 proxy that routes each request with the library.

Why aiohttp: one well-kept package gives an asyncio HTTP/1.1 server *and* client, both able to
stream bodies chunk by chunk and to speak websockets, with no ASGI layer between the proxy and
the sockets (starlette+uvicorn+httpx would be three packages for the same thing).

Per request (:meth:`Gateway.handle`):

1. **Body cap and deadlines.** The body is buffered up to ``body_limit`` bytes (default
   15 MiB, as the reference): a ``Content-Length`` above the cap, or a body that grows past
   it, is answered ``413`` with a JSON error; a body of exactly ``body_limit`` bytes is
   accepted. The whole body must arrive within ``body_timeout`` seconds of the headers
   (else ``408``), and all requests together may hold at most ``max_buffered_bytes`` of
   body in memory (a request that would exceed it is answered ``503`` at once, with
   ``Retry-After: 1``). Slow headers, idle keep-alive connections and the connection count
   are bounded by the server (``settings.limits``, see :mod:`examples.gateway.serving`).
   A body sent with ``Content-Encoding: gzip`` (or ``x-gzip``) or ``deflate`` (the zlib
   format) is decoded while it is read (the caps count decoded bytes, so a compression bomb
   meets the body cap) and forwarded decoded, *without* the ``Content-Encoding`` header; a
   body that does not decode completely (corrupt, truncated, or with bytes after the end of
   the compressed stream) is answered ``400``, as is a request with two ``Content-Encoding``
   headers. Other codings (``br``, ``zstd``, ``identity``, lists) are forwarded untouched,
   with their label, for the backend to decode.
2. **Model.** ``prefixcache.extract_model``: a non-blank ``?model=`` wins, else the body's
   top-level ``"model"``.
3. **Prefix chain.** For chat completions the chain hashes
   ``prefixcache.messages_prefix_source(messages)`` (so JSON key order, whitespace and extra
   fields such as ``temperature`` don't change the route); other endpoints hash the raw body.
   A chat body nested too deeply to parse is answered ``400``.
4. **Pick** (:meth:`Gateway.choose`, synchronous, so nothing interleaves between pick and
   reserve): candidates are the announced nodes not marked failed,
   ``clusterrouting.build_candidates`` keeps those online at ``now`` serving the model, with the
   gateway's **true in-flight** counts and each node's ``last_used`` (refreshed at each pick so
   equally loaded backends take turns); ``prefixcache.affinity_preferred`` names the node whose
   cache holds the prefix; ``clusterrouting.pick_with_affinity(slack=balance_abs_threshold)``
   takes it unless it is overloaded. A preferred node that was not picked is a "forced
   disturb", recorded in ``prefixcache.Pressure`` (the scale-up signal on the page).
5. **Reserve/release.** The pick increments the node's in-flight count; it is decremented when
   the response has been fully relayed, or has failed, or the client went away (``finally``).
6. **Forward and stream.** The response is relayed chunk by chunk as the backend emits it
   (``StreamResponse.write`` per received chunk: SSE is not buffered). Bodies are relayed
   compressed as received (``auto_decompress=False``).
7. **Observe only after success.** Affinity is recorded (``provider.observe``) only when the
   backend answered 2xx *and* the body was relayed completely.
8. **Failures.** A connection error, reset or timeout marks the backend failed (skipped until
   it announces again) and drops its affinity entries (``invalidate_node``; with sync on, the
   peers drop them too). If the backend could not be reached, or dropped the connection before
   answering (its process died), the request is retried on another backend (up to
   ``max_attempts`` backends): no byte has gone to the client yet. A read timeout is not
   retried (the backend may still be working on it: 504), and a backend that fails after its
   answer started leaves the client with a cut stream. A 4xx/5xx *answer* is relayed as is: the
   backend is alive, but the serve did not succeed, so it is not observed.
9. **503** with a JSON error body when no backend is eligible.

Websocket upgrades (``Connection: Upgrade`` + ``Upgrade: websocket``) are proxied duplex,
frame by frame: the gateway opens its own websocket handshake to the backend (which carries
``Connection: Upgrade``/``Upgrade: websocket``: the reference strips them), forwards the
requested subprotocols, and holds the backend's in-flight reservation for the connection's
lifetime.

Routes served by the gateway itself: ``GET /cluster`` (the status page), ``GET /cluster.json``
(the same data), ``GET /healthz``, ``GET /favicon.ico`` (204). Everything else is proxied.

Thread-safety: a :class:`Gateway` belongs to one asyncio event loop; only
:class:`~examples.gateway.membership.Membership` may be fed from other threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import attrs
from aiohttp import WSMsgType, http_exceptions, web

from clusterrouting import (
    ReplicaCandidate,
    build_candidates,
    pick_with_affinity,
    within_load_guard,
)
from examples.gateway.cluster_page import RoutingHistory, render_cluster_page
from examples.gateway.membership import Membership
from examples.gateway.mock_backend import NODE_QUERY_SUBJECT, NODE_SUBJECT
from examples.gateway.serving import RAW_BODIES_KEY, SERVER_LIMITS_KEY, ServerLimits
from prefixcache import (
    DEFAULT_CONFIG,
    Config,
    Index,
    Pressure,
    ReplicaKey,
    SessionPins,
    Sync,
    Transport,
    affinity_preferred,
    extract_chain,
    extract_model,
    messages_prefix_source,
)

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_WRITE_TIMEOUT",
    "Gateway",
    "GatewaySettings",
    "MessageTransport",
]

#: The reference's request body cap: 15 MiB.
DEFAULT_BODY_LIMIT = 15 * 1024 * 1024
#: Seconds a request body may take to arrive in full, counted from the end of the headers.
DEFAULT_BODY_TIMEOUT = 60.0
#: Seconds a client may leave a response chunk unread before the gateway cuts it off.
DEFAULT_WRITE_TIMEOUT = 60.0
#: Request body bytes all requests together may hold in memory at once: 256 MiB.
DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024
# Content codings the gateway decodes while reading a request body, with zlib's wbits.
_DECODED_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 15}

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# Generated anew by the gateway's own websocket handshake to the backend.
_WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
_CHAT_SUFFIX = "/chat/completions"
# aiohttp >= 3.10 tells a connect timeout (nothing was sent: retry elsewhere) from a read one.
_CONNECT_TIMEOUT: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(aiohttp, "ConnectionTimeoutError", None),) if isinstance(t, type)
)


MessageTransport = Transport
"""What the gateway needs from a transport: the library's ``Transport`` port."""


@attrs.frozen(kw_only=True)
class GatewaySettings:
    """Tunables of one gateway.

    Args:
        name: shown on the page and in ``X-Gateway`` response headers.
        config: the prefix-cache configuration (thresholds, TTL, window, pressure window).
        body_limit: request body cap in bytes (413 above it; exactly the cap is accepted).
        connect_timeout: seconds to open a connection to a backend.
        read_timeout: seconds of silence tolerated while reading a backend's response (per
            read, so long streams are fine as long as chunks keep coming).
        max_attempts: backends tried for one request when connecting fails.
        evict_interval: seconds between index sweeps (``ttl / 2`` when 0).
        body_timeout: seconds for the whole request body to arrive (408 beyond).
        write_timeout: seconds a client may leave a response chunk unread before it is cut
            off (its backend is released).
        max_buffered_bytes: request body bytes held by all requests at once (503 beyond).
        limits: header deadline, idle keep-alive limit and connection cap of the server.
    """

    name: str = "gateway"
    config: Config = DEFAULT_CONFIG
    body_limit: int = attrs.field(default=DEFAULT_BODY_LIMIT, validator=attrs.validators.ge(0))
    connect_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    read_timeout: float = attrs.field(default=120.0, validator=attrs.validators.gt(0))
    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    evict_interval: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    body_timeout: float = attrs.field(
        default=DEFAULT_BODY_TIMEOUT, validator=attrs.validators.gt(0)
    )
    write_timeout: float = attrs.field(
        default=DEFAULT_WRITE_TIMEOUT, validator=attrs.validators.gt(0)
    )
    max_buffered_bytes: int = attrs.field(
        default=DEFAULT_MAX_BUFFERED_BYTES, validator=attrs.validators.ge(1)
    )
    limits: ServerLimits = attrs.field(factory=ServerLimits)


@attrs.define
class _BackendStats:
    served: int = 0  # successful serves (2xx, fully relayed)
    errors: int = 0  # answered non-2xx, or the relay broke
    failures: int = 0  # connection-level failures (marks)
    affinity_routed: int = 0  # picked because the index preferred it
    last_error: str = ""


class _BodyTooLarge(Exception):
    pass


class _Rejected(Exception):
    """A request answered by the gateway itself: ``status``, error ``kind``, message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def _json_error(status: int, kind: str, message: str, **extra: Any) -> web.Response:
    return web.json_response(
        {"error": {"type": kind, "message": message, "code": status, **extra}}, status=status
    )


def _forward_headers(headers: Any, *, drop: frozenset[str] = frozenset()) -> dict[str, str]:
    """Copy end-to-end headers: drop hop-by-hop ones and those named in ``Connection``."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }
    out: dict[str, str] = {}
    for key, value in headers.items():
        low = key.lower()
        if low in _HOP_BY_HOP or low in named or low in drop:
            continue
        out[key] = value
    return out


class Gateway:
    """One gateway instance (see the module docstring for the request path).

    Args:
        membership_transport: where backends announce ``NodeData`` (subscribed at
            :meth:`start`).
        settings: tunables.
        sync_transport: when given, affinity is shared with other gateways through
            ``prefixcache.Sync`` over it (off by default: a single gateway is the common case).
        pins: session pins (``prefixcache.SessionPins``); a request naming its session in the
            ``session_header`` header prefers the session's backend while that backend is
            within the load guard, is re-pinned on success and unpinned on failure. Shared
            over ``sync_transport`` when both are given.
        session_header: the request header naming the session.
        clock: wall clock (seconds). It stamps the index and is compared with ``last_seen`` of
            announcements from other processes, so it must be wall time.
    """

    def __init__(
        self,
        *,
        membership_transport: MessageTransport | None,
        settings: GatewaySettings | None = None,
        sync_transport: MessageTransport | None = None,
        clock: Callable[[], float] = time.time,
        pins: SessionPins | None = None,
        session_header: str = "X-Session-Id",
    ) -> None:
        self.pins = pins
        self.session_header = session_header
        self.settings = settings or GatewaySettings()
        self.config = self.settings.config
        self.clock = clock
        self.membership = Membership()
        self.index = Index(self.config)
        self.sync: Sync | None = None
        self.provider: Any = self.index
        if sync_transport is not None:
            self.sync = Sync(self.index, sync_transport, clock=clock)
            self.provider = self.sync
        self.pressure = Pressure(self.config.pressure_window)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.last_used: dict[str, float] = {}
        self.stats: dict[str, _BackendStats] = defaultdict(_BackendStats)
        self.requests = 0
        self.routing = RoutingHistory()
        self.rejected = {"400": 0, "408": 0, "413": 0, "503": 0, "busy": 0}
        self.buffered_bytes = 0
        self.slow_readers = 0
        self._membership_transport = membership_transport
        self._sync_transport = sync_transport
        self._unsubscribes: list[Callable[[], None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._evictor: asyncio.Task[None] | None = None
        self._weights_total: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def make_app(self) -> web.Application:
        """The aiohttp application; its startup/cleanup hooks call :meth:`start`/:meth:`stop`."""
        # The cap is enforced by _read_body; aiohttp's own limit only has to stay out of the way.
        app = web.Application(client_max_size=self.settings.body_limit + 1)
        app[SERVER_LIMITS_KEY] = self.settings.limits
        app[RAW_BODIES_KEY] = True  # _read_body decodes, so that it can bound and check it
        app.router.add_get("/cluster", self._cluster_page)
        app.router.add_get("/cluster.json", self._cluster_json)
        app.router.add_get("/healthz", self._health)
        # Browsers ask for it when they open the page; it must not be proxied to a backend.
        app.router.add_get("/favicon.ico", self._no_icon)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        await self.start()

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the backend client session, subscribe to announcements (and sync), start the
        periodic index sweep."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.settings.connect_timeout,
            sock_read=self.settings.read_timeout,
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
        )
        if self._membership_transport is not None:
            self._unsubscribes.append(
                self._membership_transport.subscribe(NODE_SUBJECT, self.membership.handler())
            )
        if self.sync is not None and self._sync_transport is not None:
            self._unsubscribes.append(self.sync.attach(self._sync_transport))
            if self.pins is not None:
                self._unsubscribes.append(self.pins.attach(self._sync_transport))
        for transport in {
            id(t): t for t in (self._membership_transport, self._sync_transport) if t is not None
        }.values():
            # Transports that queue subscriptions (NatsBridge) say when they are active.
            flush = getattr(transport, "flush", None)
            if callable(flush):
                result = flush()
                if inspect.isawaitable(result):
                    await result
        if self._membership_transport is not None:
            # Ask running backends to announce now rather than at their next period.
            try:
                self._membership_transport.publish(NODE_QUERY_SUBJECT, b"")
            except Exception as exc:  # membership still arrives with the periodic announces
                print(f"[{self.settings.name}] node query failed: {exc!r}", flush=True)
        self._evictor = asyncio.get_running_loop().create_task(self._evict_forever())

    async def stop(self) -> None:
        """Undo :meth:`start` (idempotent)."""
        if self._evictor is not None:
            self._evictor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._evictor
            self._evictor = None
        for unsubscribe in self._unsubscribes:
            with contextlib.suppress(Exception):
                unsubscribe()
        self._unsubscribes.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _evict_forever(self) -> None:
        interval = self.settings.evict_interval or (
            self.config.ttl / 2 if self.config.ttl > 0 else 60.0
        )
        while True:
            await asyncio.sleep(interval)
            self.provider.evict(self.clock())

    # ------------------------------------------------------------------ routing core
    def chain_for(self, path: str, model: str, body: bytes) -> tuple[int, ...]:
        """The prefix chain of a request: chat messages for chat completions, else raw body."""
        if not body:
            return ()
        if path.endswith(_CHAT_SUFFIX):
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            except RecursionError:
                raise _Rejected(
                    400, "invalid_request", "the JSON body is nested too deeply"
                ) from None
            if isinstance(doc, dict) and isinstance(doc.get("messages"), list):
                return tuple(
                    extract_chain(model, messages_prefix_source(doc["messages"]), self.config)
                )
        return tuple(extract_chain(model, body, self.config))

    def candidates(
        self, model: str, now: float, exclude: Sequence[str] = ()
    ) -> list[ReplicaCandidate]:
        """Eligible backends for ``model`` at ``now`` with true in-flight and last use."""
        nodes = [n for n in self.membership.routable_nodes() if n.id not in exclude]
        built = build_candidates(nodes, self.in_flight, now=now, model=model)
        return [attrs.evolve(c, last_used=self.last_used.get(c.node_id)) for c in built]

    def choose(
        self,
        model: str,
        chain: Sequence[int],
        now: float,
        exclude: Sequence[str] = (),
        session: str | None = None,
    ) -> tuple[ReplicaCandidate | None, str | None]:
        """Pick a backend and **reserve** it (in-flight +1, last use = ``now``).

        Returns ``(picked or None, preferred node id or None)``. Synchronous on purpose: no
        other request can be routed between reading the counts and reserving.

        This is ``prefixcache.select_peer`` spelled out, because the gateway also feeds each
        candidate's ``last_used`` (``select_peer`` builds candidates without it, so equally
        loaded backends would not take turns) and needs the preferred id for the pressure
        signal.
        """
        cands = self.candidates(model, now, exclude)
        if not cands:
            return None, None
        preferred = affinity_preferred(self.provider, model, chain, cands, self.config, now)
        pinned = self.pins.get(model, session, now=now) if self.pins and session else None
        if pinned is not None:
            # A session pin is a strong preference, not a hard route: it yields to the guard.
            least = min(c.in_flight for c in cands)
            slack = self.config.balance_abs_threshold
            for c in cands:
                if c.node_id == pinned and within_load_guard(c.in_flight, least, slack=slack):
                    preferred = pinned
        picked = pick_with_affinity(cands, preferred, slack=self.config.balance_abs_threshold)
        if picked is None:
            return None, preferred
        if preferred is not None:
            if picked.node_id == preferred:
                self.stats[picked.node_id].affinity_routed += 1
            else:
                self.pressure.record(model, now)
        self.in_flight[picked.node_id] += 1
        self.last_used[picked.node_id] = now
        self.routing.record(
            now=now,
            model=model,
            chain_blocks=len(chain),
            candidates=cands,
            preferred=preferred,
            pinned=pinned,
            picked=picked.node_id,
            slack=self.config.balance_abs_threshold,
            in_flight=dict(self.in_flight),
        )
        return picked, preferred

    def release(self, node_id: str) -> None:
        """Undo one reservation."""
        left = self.in_flight[node_id] - 1
        if left > 0:
            self.in_flight[node_id] = left
        else:
            self.in_flight.pop(node_id, None)

    def mark_failed(self, node_id: str, reason: str) -> None:
        """Skip ``node_id`` until it announces again and forget its cached prefixes."""
        now = self.clock()
        stats = self.stats[node_id]
        stats.failures += 1
        stats.last_error = reason
        if self.membership.mark_failed(node_id, at=now, reason=reason):
            for model in sorted(self.index.models()):
                self.provider.invalidate_node(model, node_id)

    def observe(self, model: str, chain: Sequence[int], node_id: str) -> None:
        """Record a successful serve in the affinity index (after success only)."""
        if chain:
            self.provider.observe(model, tuple(chain), ReplicaKey(node_id, 0), self.clock())

    # ------------------------------------------------------------------ HTTP
    async def _read_body(self, request: web.Request, held: list[int]) -> bytes:
        """Read the body (decoded), counting what it holds in ``held[0]`` and in
        :attr:`buffered_bytes` (the caller gives it back).

        Raises:
            _BodyTooLarge: over ``body_limit``.
            _Rejected: 408 past ``body_timeout``, 503 over ``max_buffered_bytes``, 400 for a
                body that does not decode.
        """
        settings = self.settings
        limit = settings.body_limit
        if request.content_length is not None and request.content_length > limit:
            raise _BodyTooLarge
        parts: list[bytes] = []
        size = 0

        def keep(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            if self.buffered_bytes + len(chunk) > settings.max_buffered_bytes:
                raise _Rejected(503, "gateway_busy", "too many request bodies are buffered; retry")
            self.buffered_bytes += len(chunk)
            held[0] += len(chunk)
            parts.append(chunk)

        wbits = _DECODED_CODINGS.get(_content_coding(request))
        decoder = None if wbits is None else zlib.decompressobj(wbits)
        try:
            async with asyncio.timeout(settings.body_timeout):
                while True:
                    chunk = await request.content.read(64 * 1024)
                    if not chunk:
                        break
                    if decoder is None:
                        keep(chunk)
                        continue
                    while chunk:
                        if decoder.eof:
                            raise zlib.error("data after the end of the compressed stream")
                        # Bounded output per step: a bomb stops at the body cap.
                        keep(decoder.decompress(chunk, 64 * 1024))
                        chunk = decoder.unconsumed_tail or decoder.unused_data
                if decoder is not None:
                    keep(decoder.flush())
                    if not decoder.eof:
                        raise zlib.error("the compressed stream is truncated")
        except zlib.error as exc:
            raise _Rejected(
                400, "invalid_body", f"the request body does not decode: {exc}"
            ) from None
        except TimeoutError:
            raise _Rejected(
                408,
                "request_timeout",
                f"the request body did not arrive within {settings.body_timeout} s",
            ) from None
        except (http_exceptions.HttpProcessingError, aiohttp.ClientPayloadError) as exc:
            raise _Rejected(
                400, "invalid_body", f"the request body could not be read: {exc}"
            ) from None
        return b"".join(parts)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Proxy one request (HTTP or websocket upgrade)."""
        self.requests += 1
        if (
            request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower()
        ):
            return await self._proxy_websocket(request)
        held = [0]
        try:
            return await self._handle_http(request, held)
        except _BodyTooLarge:
            self.rejected["413"] += 1
            return _json_error(
                413,
                "request_too_large",
                f"request body exceeds the {self.settings.body_limit}-byte limit",
                limit=self.settings.body_limit,
            )
        except _Rejected as exc:
            self.rejected["busy" if exc.kind == "gateway_busy" else str(exc.status)] += 1
            response = _json_error(exc.status, exc.kind, exc.message)
            if exc.status == 503:
                response.headers["Retry-After"] = "1"
            if exc.status in (400, 408):
                # The rest of an unread or undecodable body must not be parsed as a request.
                response.force_close()
            return response
        finally:
            self.buffered_bytes -= held[0]

    async def _handle_http(self, request: web.Request, held: list[int]) -> web.StreamResponse:
        if len(request.headers.getall("Content-Encoding", [])) > 1:
            # aiohttp decodes by the first header only: the rest would be mislabelled.
            raise _Rejected(400, "invalid_body", "more than one Content-Encoding header")
        body = await self._read_body(request, held)
        model = extract_model(request.query.get("model", ""), body)
        chain = self.chain_for(request.path, model, body)
        session = request.headers.get(self.session_header) or None
        tried: list[str] = []
        for _attempt in range(self.settings.max_attempts):
            picked, _preferred = self.choose(model, chain, self.clock(), tried, session)
            if picked is None:
                break
            node_id = picked.node_id
            tried.append(node_id)
            try:
                outcome = await self._forward(request, body, picked)
            finally:
                self.release(node_id)
            if outcome is None:  # could not connect: nothing was sent, try another backend
                continue
            response, complete = outcome
            if complete and response.status // 100 == 2:
                self.stats[node_id].served += 1
                self.observe(model, chain, node_id)
                if self.pins is not None and session:
                    self.pins.pin(model, session, node_id, now=self.clock())
            else:
                self.stats[node_id].errors += 1
                if self.pins is not None and session:
                    self.pins.unpin(model, session, deployment=node_id, now=self.clock())
            return response
        self.rejected["503"] += 1
        return _json_error(
            503,
            "no_backend",
            f"no backend is eligible for model {model!r}"
            + (f" (unreachable: {', '.join(tried)})" if tried else ""),
            model=model,
        )

    def _upstream_url(self, picked: ReplicaCandidate, request: web.Request, ws: bool) -> str:
        address = picked.address
        if "://" not in address:
            address = ("ws://" if ws else "http://") + address
        return address.rstrip("/") + request.path_qs

    async def _forward(
        self, request: web.Request, body: bytes, picked: ReplicaCandidate
    ) -> tuple[web.StreamResponse, bool] | None:
        """Send to ``picked`` and stream back.

        Returns ``None`` iff the backend could not be reached or dropped the connection
        before answering (no byte went to the client, so another backend may be tried; a
        backend that crashed while reading the request may thus see it twice), else the
        response and whether the backend's answer was relayed completely.
        """
        assert self._session is not None, "Gateway.start() was not called"
        node_id = picked.node_id
        decoded = _content_coding(request) in _DECODED_CODINGS
        # The body was decoded while it was read: it goes out without its old label.
        headers = _forward_headers(
            request.headers, drop=frozenset({"content-encoding"}) if decoded else frozenset()
        )
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Host"] = request.host
        headers["X-Forwarded-Proto"] = request.scheme
        try:
            upstream = await self._session.request(
                request.method,
                self._upstream_url(picked, request, ws=False),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
        except _CONNECT_TIMEOUT as exc:
            self.mark_failed(node_id, f"connect timeout: {exc!r}")
            return None
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            # The backend may still be working on it: do not send the request twice.
            self.mark_failed(node_id, f"timeout: {exc!r}")
            return _json_error(504, "backend_timeout", f"backend {node_id} timed out"), False
        except aiohttp.ClientConnectionError as exc:
            # Refused, reset or closed before any answer (e.g. the backend process died).
            self.mark_failed(node_id, f"connection: {exc!r}")
            return None
        except aiohttp.ClientError as exc:
            self.mark_failed(node_id, f"error: {exc!r}")
            return _json_error(502, "backend_error", f"backend {node_id} failed: {exc}"), False
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in _forward_headers(upstream.headers).items():
                response.headers.add(key, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            response.headers["X-Gateway"] = self.settings.name
            response.headers["X-Gateway-Backend"] = node_id
            await response.prepare(request)
            while True:
                try:
                    chunk = await upstream.content.readany()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # The backend broke mid-response: it is skipped from now on, and the
                    # client's connection is aborted (not ended cleanly) so that it can tell
                    # a cut answer from a complete one. Bytes were sent: no retry.
                    self.mark_failed(node_id, f"mid-response: {exc!r}")
                    if request.transport is not None:
                        request.transport.abort()
                    return response, False
                if not chunk:
                    break
                # A failure here is the client's (it went away, or stopped reading for
                # write_timeout): it propagates, the backend is not blamed, and the caller
                # releases the reservation.
                await self._write_to_client(request, response, chunk)
            await response.write_eof()
            return response, True

    async def _write_to_client(
        self, request: web.Request, response: web.StreamResponse, chunk: bytes
    ) -> None:
        """Relay one chunk; a client that reads nothing for ``write_timeout`` seconds is cut
        off (counted in :attr:`slow_readers`) so it cannot hold a backend forever.

        Raises:
            ConnectionResetError: the client stopped reading.
        """
        try:
            async with asyncio.timeout(self.settings.write_timeout):
                await response.write(chunk)
        except TimeoutError:
            self.slow_readers += 1
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError(
                f"the client read nothing for {self.settings.write_timeout} s"
            ) from None

    async def _proxy_websocket(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None, "Gateway.start() was not called"
        model = extract_model(request.query.get("model", ""), b"")
        protocols = tuple(
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        )
        headers = _forward_headers(request.headers, drop=_WS_HANDSHAKE)
        headers["X-Forwarded-For"] = request.remote or ""
        tried: list[str] = []
        for _attempt in range(self.settings.max_attempts):
            picked, _ = self.choose(model, (), self.clock(), tried)
            if picked is None:
                break
            node_id = picked.node_id
            tried.append(node_id)
            try:
                try:
                    upstream = await self._session.ws_connect(
                        self._upstream_url(picked, request, ws=True),
                        headers=headers,
                        protocols=protocols,
                        autoclose=False,
                        autoping=True,
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    self.stats[node_id].errors += 1
                    return _json_error(
                        exc.status or 502, "websocket_refused", f"backend refused: {exc.message}"
                    )
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.mark_failed(node_id, f"websocket connect: {exc!r}")
                    continue
                async with upstream:
                    downstream = web.WebSocketResponse(
                        protocols=(upstream.protocol,) if upstream.protocol else (),
                        autoclose=False,
                    )
                    downstream.headers["X-Gateway-Backend"] = node_id
                    await downstream.prepare(request)
                    await self._pump_websockets(downstream, upstream)
                    self.stats[node_id].served += 1
                    return downstream
            finally:
                self.release(node_id)
        self.rejected["503"] += 1
        return _json_error(
            503, "no_backend", f"no backend is eligible for model {model!r}", model=model
        )

    async def _pump_websockets(
        self, downstream: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
    ) -> None:
        async def client_to_backend() -> None:
            async for msg in downstream:
                if msg.type == WSMsgType.TEXT:
                    await upstream.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await upstream.send_bytes(msg.data)
                elif msg.type == WSMsgType.CLOSE:
                    break
            await upstream.close(code=downstream.close_code or 1000)

        async def backend_to_client() -> None:
            async for msg in upstream:
                if msg.type == WSMsgType.TEXT:
                    await downstream.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await downstream.send_bytes(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
            await downstream.close(code=upstream.close_code or 1000)

        tasks = [
            asyncio.ensure_future(client_to_backend()),
            asyncio.ensure_future(backend_to_client()),
        ]
        try:
            _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # Give the other direction a moment to finish its close handshake.
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not downstream.closed:
                await downstream.close()

    # ------------------------------------------------------------------ status
    def snapshot(self) -> dict[str, Any]:
        """Everything the cluster page shows, as JSON-ready data (``GET /cluster.json``)."""
        now = self.clock()
        keys = [ReplicaKey(n.id, 0) for n in self.membership.nodes()]
        shares = self._affinity_shares(keys, now)
        backends = []
        for node in self.membership.nodes():
            mark = self.membership.failure(node.id)
            stats = self.stats[node.id]
            backends.append(
                {
                    "id": node.id,
                    "name": node.name,
                    "address": node.tunnel_address,
                    "online": node.is_online_at(now),
                    "failed": mark is not None,
                    "failure_reason": mark.reason if mark else "",
                    "last_seen": node.last_seen,
                    "last_seen_age": None if node.last_seen is None else now - node.last_seen,
                    "in_flight": self.in_flight.get(node.id, 0),
                    "available_vram": node.available_vram,
                    "models": list(node.models),
                    "affinity_share": shares.get(node.id, 0.0),
                    "affinity_weight": self._weights_total.get(node.id, 0.0),
                    "served": stats.served,
                    "errors": stats.errors,
                    "failures": stats.failures,
                    "affinity_routed": stats.affinity_routed,
                    "last_error": stats.last_error,
                }
            )
        models = sorted(self.index.models())
        sync_stats: Any = None
        if self.sync is not None:
            sync_stats = _jsonable(self.sync.stats())
        return {
            "gateway": self.settings.name,
            "now": now,
            "backends": backends,
            "index": {
                "models": models,
                "entries": self._index_entries(),
                "refused_observes": self.index.refused_observes,
            },
            "sync": {"enabled": self.sync is not None, "stats": sync_stats},
            "pressure": {
                "window": self.config.pressure_window,
                "scale_threshold": self.config.pressure_scale_threshold,
                "by_model": {
                    m: self.pressure.count(m, now)
                    for m in sorted(set(models) | self.pressure.models())
                },
            },
            "requests": self.requests,
            "rejected": dict(self.rejected),
            "slow_readers": self.slow_readers,
            **self.routing.to_json(),
            "membership": {
                "announcements": self.membership.announcements,
                "dropped": self.membership.dropped,
            },
            "config": {
                "min_prefix_match": self.config.min_prefix_match,
                "balance_abs_threshold": self.config.balance_abs_threshold,
                "balance_rel_threshold": self.config.balance_rel_threshold,
                "ttl": self.config.ttl,
                "window_bytes": self.config.window_bytes,
                "body_limit": self.settings.body_limit,
                "max_entries": self.config.max_entries,
                "max_models": self.config.max_models,
            },
        }

    def _affinity_shares(self, keys: Sequence[ReplicaKey], now: float) -> dict[str, float]:
        """Each backend's share of the index's decayed prefix weight, summed over models."""
        totals: dict[str, float] = defaultdict(float)
        for model in self.index.models():
            tree = self.index.tree(model)
            if tree is not None and keys:
                for key, weight in tree.weights_for(list(keys), now).items():
                    totals[key.node_id] += weight
        self._weights_total = dict(totals)
        grand = sum(totals.values())
        return {k: (v / grand if grand > 0 else 0.0) for k, v in totals.items()}

    def _index_entries(self) -> int:
        """Prefix-index entries (value-bearing nodes) over every model."""
        total = 0
        for model in self.index.models():
            tree = self.index.tree(model)
            if tree is not None:
                total += len(tree)
        return total

    async def _cluster_json(self, _request: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _cluster_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            text=render_cluster_page(self.snapshot()),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "gateway": self.settings.name})

    async def _no_icon(self, _request: web.Request) -> web.Response:
        return web.Response(status=204)


def _content_coding(request: web.Request) -> str:
    """The request's ``Content-Encoding``, lowercased and stripped (``""`` for none)."""
    coding = request.headers.get("Content-Encoding", "")
    return coding.strip().lower() if coding.isascii() else coding


def _jsonable(value: Any) -> Any:
    """Best-effort conversion of a stats object (attrs record, dict, ...) to JSON data."""
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return repr(value)
