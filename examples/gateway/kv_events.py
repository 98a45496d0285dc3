"""Precise mode for the example gateway: route on what the backends' caches really hold.

Real engines (vLLM, SGLang) publish KV-cache events over ZMQ; the mock backends do the same
(:meth:`MockBackend.enable_kv_events`): one publisher per model, with the engines' framing
and replay socket, announcing each block their emulated cache stores or evicts. In precise
mode the gateway subscribes to them (:class:`PreciseMode`) and asks a
:class:`prefixcache.kvevents.KvResidency` per model which backend holds a request's prefix,
instead of guessing from where it sent earlier requests.

Why the byte chains line up with token chains: the mocks "tokenize" a prompt's UTF-8 bytes
4 bytes per token (:func:`mock_token_ids`, little-endian uint32, zero-padded), so
``extract_token_chain(model, mock_token_ids(data), block_tokens=W // 4)`` equals the
gateway's ``extract_chain(model, data, Config(window_bytes=W))`` on every full block. The
gateway's request chain is therefore passed to ``KvResidency.overlap_chain`` as is: a
request is hashed once.

Policy (:class:`PreciseProvider`, a drop-in for the gateway's index): a backend whose record
is ``exact`` gets its affinity from the events only; the others (``degraded``, ``unknown``)
from the gateway's approximate index, as before. When a backend's event stream drops (the
backend restarted or died), everything known about its cache is forgotten at once, from
events and from dispatches alike, so a restarted backend stops attracting affinity
immediately instead of after the index's TTL.

Thread-safety: everything here belongs to the gateway's event loop.
"""

from __future__ import annotations

import array
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from prefixcache import Candidate, PrefixDecision, ReplicaKey
from prefixcache.kvevents import AsyncKvEventSubscriber, KvResidency, ResidencyState

__all__ = ["PreciseMode", "PreciseProvider", "mock_token_ids"]


def mock_token_ids(data: bytes) -> list[int]:
    """The mock backends' tokenizer: 4 bytes per token, little-endian uint32, zero-padded.

    >>> mock_token_ids(b"abcdE")
    [1684234849, 69]
    """
    padded = data + b"\x00" * (-len(data) % 4)
    ids = array.array("I")
    if ids.itemsize != 4:  # pragma: no cover - no 4-byte C unsigned int
        ids = array.array("L")
    ids.frombytes(padded)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        ids.byteswap()
    return ids.tolist()


class PreciseProvider:
    """The gateway's prefix provider in precise mode: events for ``exact`` backends, the
    approximate provider (``fallback``) for the others.

    ``decide`` asks ``fallback`` first (its cold order and, for backends without an exact
    record, its hot match), then the model's :class:`KvResidency` for the exact ones; the
    deepest match wins (ties: candidate order), ``match_ratio = depth / len(chain)``.
    ``sources`` counts which source each hot answer came from (``"events"`` or
    ``"dispatch"``). Every other provider call goes to ``fallback``.

    Thread-safety: as ``fallback`` for everything but ``decide``'s counters, which belong to
    the gateway's event loop.
    """

    def __init__(self, fallback: Any, mode: PreciseMode) -> None:
        self.fallback = fallback
        self.mode = mode
        self.sources: Counter[str] = Counter()
        self.last_source: str | None = None

    def decide(
        self,
        model: str,
        chain: Sequence[int],
        candidates: Sequence[Candidate | ReplicaKey],
        now: float,
    ) -> PrefixDecision:
        base: PrefixDecision = self.fallback.decide(model, chain, candidates, now)
        self.last_source = None
        residency = self.mode.residencies.get(model)
        if residency is None or not chain:
            return self._counted(base, "dispatch")
        keys = [c.key for c in candidates]
        exact = [k for k in keys if residency.state(k) is ResidencyState.EXACT]
        if not exact:
            return self._counted(base, "dispatch")
        held = residency.overlap_chain(chain, exact)
        best: ReplicaKey | None = None
        depth = 0
        source = "dispatch"
        if base.hot is not None and base.hot not in held:
            best, depth = base.hot, round(base.match_ratio * len(chain))
        for key in keys:
            d = held.get(key, 0)
            if d > depth:
                best, depth, source = key, d, "events"
        decision = PrefixDecision(best, depth / len(chain) if best else 0.0, base.cold_order)
        return self._counted(decision, source)

    def _counted(self, decision: PrefixDecision, source: str) -> PrefixDecision:
        if decision.hot is not None:
            self.sources[source] += 1
            self.last_source = source
        return decision

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool:
        return bool(self.fallback.observe(model, chain, key, now))

    def invalidate(self, model: str, key: ReplicaKey) -> object:
        return self.fallback.invalidate(model, key)

    def invalidate_node(self, model: str, node_id: str) -> object:
        return self.fallback.invalidate_node(model, node_id)

    def evict(self, now: float) -> object:
        return self.fallback.evict(now)

    def models(self) -> frozenset[str]:
        return frozenset(self.fallback.models())


class PreciseMode:
    """The backends' event streams, one :class:`KvResidency` per model.

    ``add_backend(node_id, model, endpoint, replay_endpoint)`` registers a stream (the key
    is ``ReplicaKey(node_id, 0)``, as the gateway keys backends); :meth:`attach` makes a
    gateway route through a :class:`PreciseProvider`; :meth:`start` / :meth:`stop` run the
    subscribers (asyncio tasks on the running loop). Nothing connects before :meth:`start`.

    Args:
        block_tokens: tokens per block, ``window_bytes // 4`` of the gateway's config.

    Thread-safety: belongs to the gateway's event loop (the residencies themselves are
    thread-safe).
    """

    def __init__(self, *, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.residencies: dict[str, KvResidency] = {}
        self.subscribers: list[AsyncKvEventSubscriber] = []
        self.provider: PreciseProvider | None = None
        self.disconnects: Counter[str] = Counter()
        self._started = False

    def residency(self, model: str) -> KvResidency:
        """The model's record (created on first use)."""
        res = self.residencies.get(model)
        if res is None:
            res = self.residencies[model] = KvResidency(block_tokens=self.block_tokens)
        return res

    def add_backend(
        self, node_id: str, model: str, endpoint: str, replay_endpoint: str | None = None
    ) -> AsyncKvEventSubscriber:
        """Register one backend's stream for one model (started by :meth:`start`)."""
        key = ReplicaKey(node_id, 0)
        residency = self.residency(model)

        def on_disconnect(_key: ReplicaKey) -> None:
            # The backend went away (or restarted): its cache is no longer known, from
            # events or from what was dispatched to it.
            self.disconnects[node_id] += 1
            residency.forget(key)
            if self.provider is not None:
                self.provider.fallback.invalidate_node(model, node_id)

        sub = AsyncKvEventSubscriber(
            endpoint,
            replica=key,
            residency=residency,
            model=model,
            replay_endpoint=replay_endpoint,
            on_disconnect=on_disconnect,
        )
        self.subscribers.append(sub)
        return sub

    def attach(self, gateway: Any) -> PreciseProvider:
        """Route ``gateway`` through a :class:`PreciseProvider` over its current provider."""
        self.provider = PreciseProvider(gateway.provider, self)
        gateway.provider = self.provider
        return self.provider

    async def start(self) -> None:
        """Start every registered subscriber (and those added later, when they are)."""
        for sub in self.subscribers:
            await sub.start()
        self._started = True

    async def stop(self) -> None:
        """Stop every subscriber."""
        for sub in self.subscribers:
            await sub.stop()
        self._started = False

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state: per model and backend, the record's state and size."""
        out: dict[str, Any] = {}
        for model, res in sorted(self.residencies.items()):
            per: dict[str, Any] = {}
            for key in sorted(res.replicas()):
                status = res.status(key)
                per[key.node_id] = {
                    "state": str(status.state),
                    "blocks": status.blocks,
                    "last_seq": status.last_seq,
                    "restarts": status.restarts,
                }
            out[model] = per
        sources = dict(self.provider.sources) if self.provider is not None else {}
        return {"models": out, "sources": sources, "disconnects": dict(self.disconnects)}
