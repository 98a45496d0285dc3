"""A mock OpenAI-compatible inference backend for the example gateway and its tests.

What it does, and why each piece exists:

* ``POST /v1/chat/completions`` (streaming SSE and not) and ``POST /v1/completions``: answers
  with a short canned reply naming the replica. Every answer says **which replica answered**
  twice: the ``X-Replica`` response header and a ``"replica"`` field in the JSON body (in every
  SSE chunk too).
* **Prefix-cache emulation**: the backend remembers the prefix chains it has served (the same
  chained block hashes the library computes, :func:`prefixcache.extract_chain` over
  :func:`prefixcache.messages_prefix_source` for chat, over the raw prompt for completions) and
  reports how much of a new prompt it would have found in its KV cache, as
  ``usage.prompt_tokens_details.cached_tokens`` (the OpenAI field) and the ``X-Cached-Tokens``
  header. Token counts are the usual approximation of 4 bytes per token. A gateway with good
  affinity therefore shows high cached-token counts; a round-robin one does not.
* **KV-cache events** (opt-in, :meth:`MockBackend.enable_kv_events`): the emulated cache is
  published as real engine events on loopback ZMQ, one publisher per model with vLLM's
  framing and replay socket: a ``BlockStored`` for the full blocks a served request adds
  (token ids: the prompt's bytes 4 per token, see ``examples.gateway.kv_events``; engine
  hashes salted by ``kv_hash_seed``, as an engine's seed would) and a ``BlockRemoved`` for
  each block the cache evicts. A restarted backend publishes from ``seq`` 0 again.
* ``GET /ws``: a websocket echo. Its first message is a JSON "hello" reporting the replica and
  the ``Connection``/``Upgrade`` headers of the handshake it received (so a test can check that
  a proxy preserved ``Connection: Upgrade``); then every text/binary message is echoed.
* ``GET /v1/models``, ``GET /healthz``, ``GET /_mock/stats`` (served / in-flight / peak
  in-flight / remembered blocks).
* **Announcing**: :meth:`MockBackend.announce` publishes this backend's
  :class:`clusterrouting.NodeData` (models, free VRAM, ``last_seen`` on the wall clock, address)
  on :data:`NODE_SUBJECT` through any ``Publisher``; :meth:`MockBackend.run_announcer` repeats it
  every ``announce_interval`` seconds. Nothing is started behind the host's back.

Test controls (request headers, all optional):

* ``X-Mock-Delay: <seconds>``: wait that long before a non-streaming answer, and between SSE
  chunks (overrides ``chunk_delay``); capped at 60 s. With ``X-Mock-Delay-Replica: <name>``
  only that replica waits (a request retried elsewhere by a gateway is then answered at once).
* ``X-Mock-Status: <code>``: answer with that HTTP status and a JSON error body (a failed serve).
* ``X-Mock-Hold: <token>``: in a streaming answer, after each chunk but the last, wait until
  ``POST /_mock/release/<token>`` has been called once more (bounded by 30 s). A client that
  receives chunk *k* through a proxy *before* releasing chunk *k+1* proves the proxy streams
  instead of buffering, without any timing assertion.

Thread-safety: an instance belongs to one asyncio event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import WSMsgType, web
from xxhash import xxh64_intdigest

from clusterrouting import NodeData
from examples.gateway.kv_events import mock_token_ids
from prefixcache import (
    DEFAULT_CONFIG,
    Publisher,
    Transport,
    extract_chain,
    extract_model,
    messages_prefix_source,
)
from prefixcache.kvevents import BlockRemoved, BlockStored, EventBatch, KvEventPublisher

__all__ = [
    "DEFAULT_ANNOUNCE_INTERVAL",
    "NODE_QUERY_SUBJECT",
    "NODE_SUBJECT",
    "MockBackend",
    "PayloadPublisher",
    "QueryTransport",
]

#: Subject on which backends announce their ``NodeData`` JSON (Go field names).
NODE_SUBJECT = "clusterrouting.nodes"
#: A gateway that starts publishes here (empty payload); backends answer by announcing at once,
#: so a gateway started after its backends need not wait for their next periodic announcement.
NODE_QUERY_SUBJECT = "clusterrouting.nodes.query"
#: Seconds between announcements: the reference's 20 s, so one missed announce is tolerated by
#: the 40 s online window.
DEFAULT_ANNOUNCE_INTERVAL = 20.0

_BYTES_PER_TOKEN = 4
_MAX_DELAY = 60.0
_HOLD_TIMEOUT = 30.0
_MAX_REMEMBERED_BLOCKS = 100_000
_MAX_BODY = 64 * 1024 * 1024


PayloadPublisher = Publisher
"""Where announcements go: the library's ``Publisher`` port (``publish(subject, payload)``)."""

QueryTransport = Transport
"""A publisher that can also subscribe: the library's ``Transport`` port."""


class MockBackend:
    """One mock inference replica (see the module docstring for the endpoints).

    Args:
        name: replica name, also its node id unless ``node_id`` is given.
        models: models it serves (announced; a request for another model gets 404).
        available_vram: free VRAM to announce, in bytes.
        node_id: node id to announce (defaults to ``name``).
        chunk_delay: seconds between SSE chunks (0 = as fast as possible).
        window_bytes: block size of the emulated prefix cache (the library's default 256).
        clock: wall clock used for ``NodeData.last_seen`` (crosses processes: wall time).
        kv_hash_seed: salts the engine block hashes of its KV events (the router must not
            depend on them).
    """

    def __init__(
        self,
        *,
        name: str,
        models: Sequence[str] = (),
        available_vram: int = 0,
        node_id: str = "",
        chunk_delay: float = 0.0,
        window_bytes: int = DEFAULT_CONFIG.window_bytes,
        clock: Callable[[], float] = time.time,
        kv_hash_seed: int = 0,
    ) -> None:
        self.name = name
        self.node_id = node_id or name
        self.models = tuple(models)
        self.available_vram = available_vram
        self.chunk_delay = chunk_delay
        self.window_bytes = window_bytes
        self.address = ""  # host:port, set by the host once it knows where it listens
        self._clock = clock
        self._config = DEFAULT_CONFIG
        self._seen_blocks: OrderedDict[int, str] = OrderedDict()  # chain hash -> model
        self._kv: dict[str, KvEventPublisher] = {}
        self._kv_seed = kv_hash_seed
        self._kv_announced: set[int] = set()  # chain hashes published as stored
        self._holds: dict[str, asyncio.Queue[None]] = {}
        self.served = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    # ------------------------------------------------------------------ membership
    def node_data(self) -> NodeData:
        """This backend's gossip record, stamped with the clock now."""
        return NodeData(
            name=self.name,
            id=self.node_id,
            tunnel_address=self.address,
            last_seen=self._clock(),
            available_vram=self.available_vram,
            models=self.models,
        )

    def announce(self, publisher: PayloadPublisher) -> None:
        """Publish :meth:`node_data` once on :data:`NODE_SUBJECT`."""
        publisher.publish(NODE_SUBJECT, self.node_data().to_json().encode())

    def answer_queries(self, transport: QueryTransport) -> Callable[[], None]:
        """Announce on ``transport`` whenever a gateway asks (:data:`NODE_QUERY_SUBJECT`).

        Returns the unsubscribe function.
        """

        def on_query(_subject: str, _payload: bytes) -> None:
            self.announce(transport)

        return transport.subscribe(NODE_QUERY_SUBJECT, on_query)

    async def run_announcer(
        self, publisher: PayloadPublisher, interval: float = DEFAULT_ANNOUNCE_INTERVAL
    ) -> None:
        """Announce now and then every ``interval`` seconds until cancelled."""
        while True:
            try:
                self.announce(publisher)
            except Exception as exc:  # a broker hiccup must not kill the backend
                print(f"[{self.name}] announce failed: {exc!r}", flush=True)
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ app
    def make_app(self) -> web.Application:
        """The aiohttp application serving this backend."""
        # Large enough for any body a gateway lets through (its default cap is 15 MiB).
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/_mock/stats", self._stats)
        app.router.add_post("/_mock/release/{token}", self._release)
        return app

    # ------------------------------------------------------------------ prefix cache
    def _cached_blocks(self, chain: Sequence[int]) -> int:
        """Leading blocks of ``chain`` already served (chained hashes: a seen block implies
        its whole prefix was seen, so the first miss ends the match)."""
        depth = 0
        for h in chain:
            if h not in self._seen_blocks:
                break
            depth += 1
        return depth

    def _remember(self, chain: Sequence[int], *, model: str = "", data: bytes = b"") -> None:
        publisher = self._kv.get(model)
        stored = self._new_full_blocks(chain, model, data) if publisher is not None else []
        for h in chain:
            self._seen_blocks[h] = model
            self._seen_blocks.move_to_end(h)
        evicted: dict[str, list[int]] = {}
        while len(self._seen_blocks) > _MAX_REMEMBERED_BLOCKS:
            h, m = self._seen_blocks.popitem(last=False)
            if h in self._kv_announced:
                self._kv_announced.discard(h)
                evicted.setdefault(m, []).append(self._engine_hash(h))
        for m, hashes in evicted.items():
            self._publish(m, [BlockRemoved(block_hashes=hashes, medium="GPU")])
        if stored:
            self._publish(model, stored)

    # ------------------------------------------------------------------ KV events
    def enable_kv_events(
        self, *, host: str = "127.0.0.1", ports: dict[str, tuple[int, int]] | None = None
    ) -> dict[str, tuple[str, str]]:
        """Publish the emulated cache as KV events: one PUB + replay ROUTER pair per model.

        Args:
            host: where to bind.
            ports: ``{model: (pub_port, replay_port)}``; a missing model gets free ports.

        Returns:
            ``{model: (endpoint, replay_endpoint)}``.

        Raises:
            ValueError: the backend does not name its models (one stream per model).
        """
        if not self.models:
            raise ValueError("KV events need the backend's models (one stream per model)")
        for model in self.models:
            if model in self._kv:
                continue
            pub_port, replay_port = (ports or {}).get(model, (0, 0))
            publisher = KvEventPublisher(
                f"tcp://{host}:{pub_port}",
                replay_endpoint=f"tcp://{host}:{replay_port}",
                topic=f"kv@{self.name}@{model}",
            )
            publisher.start()
            self._kv[model] = publisher
        return self.kv_event_endpoints

    @property
    def kv_event_endpoints(self) -> dict[str, tuple[str, str]]:
        """``{model: (endpoint, replay_endpoint)}`` of the running publishers."""
        return {m: (p.endpoint, p.replay_endpoint) for m, p in self._kv.items()}

    def close_kv_events(self) -> None:
        """Stop publishing (subscribers see the connection drop)."""
        for publisher in self._kv.values():
            publisher.close()
        self._kv.clear()

    def _engine_hash(self, h: int) -> int:
        return xxh64_intdigest(h.to_bytes(8, "little"), seed=self._kv_seed)

    def _new_full_blocks(self, chain: Sequence[int], model: str, data: bytes) -> list[BlockStored]:
        """One ``BlockStored`` per run of full blocks of ``chain`` not cached yet."""
        width = self.window_bytes
        full = min(len(chain), len(data) // width)
        events: list[BlockStored] = []
        i = 0
        while i < full:
            # Announced blocks are cached (an eviction un-announces them).
            if chain[i] in self._kv_announced:
                i += 1
                continue
            j = i
            while j < full and chain[j] not in self._kv_announced:
                j += 1
            events.append(
                BlockStored(
                    block_hashes=[self._engine_hash(h) for h in chain[i:j]],
                    parent_block_hash=self._engine_hash(chain[i - 1]) if i else None,
                    token_ids=mock_token_ids(data[i * width : j * width]),
                    block_size=width // 4,
                    medium="GPU",
                )
            )
            self._kv_announced.update(chain[i:j])
            i = j
        return events

    def _publish(self, model: str, events: list[Any]) -> None:
        publisher = self._kv.get(model)
        if publisher is not None:
            publisher.publish(EventBatch(ts=self._clock(), rank=0, events=events))

    # ------------------------------------------------------------------ handlers
    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "replica": self.name})

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "replica": self.name,
                "served": self.served,
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
                "remembered_blocks": len(self._seen_blocks),
            }
        )

    async def _list_models(self, _request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": self.name} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _release(self, request: web.Request) -> web.Response:
        self._hold_queue(request.match_info["token"]).put_nowait(None)
        return web.json_response({"released": True})

    def _hold_queue(self, token: str) -> asyncio.Queue[None]:
        queue = self._holds.get(token)
        if queue is None:
            queue = self._holds[token] = asyncio.Queue()
        return queue

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response(
            {"error": {"message": message, "type": "mock_error"}, "replica": self.name},
            status=status,
            headers={"X-Replica": self.name},
        )

    async def _complete(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            return self._error(400, "body is not JSON")
        if not isinstance(body, dict):
            return self._error(400, "body is not a JSON object")
        model = extract_model(request.query.get("model", ""), raw)  # same rule as the gateway
        if self.models and model not in self.models:
            return self._error(404, f"model {model!r} is not served by {self.name}")
        forced = request.headers.get("X-Mock-Status")
        if forced:
            return self._error(int(forced), f"forced status {forced}")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                return self._error(400, "messages must be a list")
            source: str | bytes = messages_prefix_source(messages)
        else:
            prompt = body.get("prompt", "")
            source = prompt if isinstance(prompt, str) else json.dumps(prompt)
        data = source.encode() if isinstance(source, str) else source
        chain = extract_chain(model, data, self._config)
        prompt_tokens = math.ceil(len(data) / _BYTES_PER_TOKEN)
        cached_tokens = min(
            prompt_tokens, self._cached_blocks(chain) * self.window_bytes // _BYTES_PER_TOKEN
        )
        delay = min(_MAX_DELAY, max(0.0, float(request.headers.get("X-Mock-Delay", "0") or 0)))
        only = request.headers.get("X-Mock-Delay-Replica", "")
        if only and only != self.name:
            delay = 0.0
        words = ["Hello", " from", f" {self.name}", f" ({model})."]
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        }
        headers = {"X-Replica": self.name, "X-Cached-Tokens": str(cached_tokens)}
        created = int(time.time())
        reply_id = f"chatcmpl-{self.name}-{self.served}"
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if body.get("stream"):
                response = await self._stream(
                    request, chat, reply_id, created, model, words, usage, headers, delay
                )
            else:
                if delay:
                    await asyncio.sleep(delay)
                text = "".join(words)
                choice: dict[str, Any] = (
                    {"index": 0, "message": {"role": "assistant", "content": text}}
                    if chat
                    else {"index": 0, "text": text}
                )
                choice["finish_reason"] = "stop"
                response = web.json_response(
                    {
                        "id": reply_id,
                        "object": "chat.completion" if chat else "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [choice],
                        "usage": usage,
                        "replica": self.name,
                    },
                    headers=headers,
                )
            # Only a served answer warms the cache (a failed one would not have).
            self._remember(chain, model=model, data=data)
            self.served += 1
            return response
        finally:
            self.in_flight -= 1

    async def _stream(
        self,
        request: web.Request,
        chat: bool,
        reply_id: str,
        created: int,
        model: str,
        words: list[str],
        usage: dict[str, Any],
        headers: dict[str, str],
        delay: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        hold = request.headers.get("X-Mock-Hold", "")
        gap = delay or self.chunk_delay
        pieces: list[dict[str, Any]] = []
        if chat:
            pieces.append({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})
            pieces += [{"delta": {"content": w}, "finish_reason": None} for w in words]
            pieces.append({"delta": {}, "finish_reason": "stop"})
        else:
            pieces += [{"text": w, "finish_reason": None} for w in words]
            pieces.append({"text": "", "finish_reason": "stop"})
        for i, piece in enumerate(pieces):
            chunk: dict[str, Any] = {
                "id": reply_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, **piece}],
                "replica": self.name,
            }
            last = i == len(pieces) - 1
            if last:
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if not last:
                if hold:
                    await asyncio.wait_for(self._hold_queue(hold).get(), _HOLD_TIMEOUT)
                elif gap:
                    await asyncio.sleep(gap)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        if hold:
            self._holds.pop(hold, None)
        return response

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("echo",))
        await ws.prepare(request)
        await ws.send_json(
            {
                "replica": self.name,
                "connection": request.headers.get("Connection", ""),
                "upgrade": request.headers.get("Upgrade", ""),
                "protocol": ws.ws_protocol or "",
                "path_qs": request.path_qs,
            }
        )
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
