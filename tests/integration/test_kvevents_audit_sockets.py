"""Conformance audit through real sockets on 127.0.0.1: two data-parallel ranks of a fake
vLLM engine (ports ``base`` and ``base + 1``), each publishing as vLLM main does today (a
map ``EventBatch`` of map events, ``omit_defaults``; see ``vllm/distributed/kv_events.py``)
with the three-frame PUB framing and the ROUTER replay socket of ``shared/kv-events.md``
section 1, written here from those facts (not with this package's publisher).

Scenarios: a batch published before the subscriber joined and fetched by replay; a lost
batch holding an ``AllBlocksCleared`` (the replay brings the clear below the newest seq
applied); a message that is not msgpack; a loss the engine's replay buffer no longer holds
(the replica stays degraded until a clear); the other rank untouched throughout.

Network waits poll with a bounded deadline; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import msgspec
import pytest
import zmq
from engine_structs import VCleared, VMapBatch, VRemoved, VStored
from sync_brokers import wait_until

from prefixcache import ReplicaKey
from prefixcache.kvevents import (
    AsyncKvEventSubscriber,
    KvEventSubscriber,
    KvResidency,
    ResidencyState,
    rank_endpoints,
)

pytestmark = pytest.mark.integration

MODEL = "m"
BT = 4
DEADLINE = 15.0
EXACT, DEGRADED = ResidencyState.EXACT, ResidencyState.DEGRADED


def stored(hashes: list[int], tokens: list[int], parent: int | None = None) -> VStored:
    return VStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens,
                  block_size=BT, lora_id=None, medium="GPU", lora_name=None)  # fmt: skip


class Rank:
    """One data-parallel rank of an engine: PUB ``[topic, seq, payload]`` and a ROUTER that
    answers ``[b"", start]`` with ``[b"", seq, payload]`` per buffered batch ``seq >=
    start``, then ``[b"", b"\\xff" * 8, b""]``."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], pub: zmq.Socket[bytes], rank: int
    ) -> None:
        self.rank = rank
        self.pub = pub
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.replay_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.buffer: list[tuple[int, bytes]] = []
        self.seq = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def replay_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.replay_port}"

    def publish(self, *events: VStored | VRemoved | VCleared, send: bool = True) -> int:
        payload = msgspec.msgpack.encode(
            VMapBatch(ts=time.time(), events=list(events), data_parallel_rank=self.rank)
        )
        with self.lock:
            seq = self.seq
            self.seq += 1
            self.buffer.append((seq, payload))
            if send:  # send=False: lost on the way (a PUB past its high-water mark)
                self.pub.send_multipart([b"kv@pod@m", seq.to_bytes(8, "big"), payload])
        return seq

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(50):
                continue
            identity, empty, start = self.router.recv_multipart()
            if empty != b"" or len(start) != 8:
                continue
            first = int.from_bytes(start, "big")
            with self.lock:
                items = [(s, p) for s, p in self.buffer if s >= first]
            for s, p in items:
                self.router.send_multipart([identity, b"", s.to_bytes(8, "big"), p])
            self.router.send_multipart([identity, b"", b"\xff" * 8, b""])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.router.close(0)
        self.pub.close(0)


def bind_consecutive(ctx: zmq.Context[zmq.Socket[bytes]]) -> tuple[int, list[zmq.Socket[bytes]]]:
    """Two PUB sockets on ports ``base`` and ``base + 1`` (vLLM: rank r on port + r)."""
    for _ in range(50):
        first = ctx.socket(zmq.PUB)
        first.setsockopt(zmq.LINGER, 0)
        base = first.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=60000)
        second = ctx.socket(zmq.PUB)
        second.setsockopt(zmq.LINGER, 0)
        try:
            second.bind(f"tcp://127.0.0.1:{base + 1}")
        except zmq.ZMQError:
            first.close(0)
            second.close(0)
            continue
        return base, [first, second]
    raise AssertionError("no two consecutive free ports on 127.0.0.1")


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()


def test_two_ranks_map_layout_replayed_clear_garbage_and_a_buffer_too_short(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    base, pubs = bind_consecutive(ctx)
    ranks = [Rank(ctx, pub, r) for r, pub in enumerate(pubs)]
    endpoints = rank_endpoints(f"tcp://127.0.0.1:{base}", 2)
    keys = [ReplicaKey("pod", r) for r in range(2)]
    res = KvResidency(block_tokens=BT)
    subs = [
        KvEventSubscriber(
            endpoint,
            replica=key,
            residency=res,
            model=MODEL,
            topic="kv@",
            replay_endpoint=rank.replay_endpoint,
            # Longer than the test: a new request waits for the engine's end marker.
            replay_timeout=DEADLINE * 10,
            context=ctx,
        )
        for endpoint, key, rank in zip(endpoints, keys, ranks, strict=True)
    ]
    a, b, c = list(range(1, 9)), list(range(101, 113)), list(range(201, 205))
    k0, k1 = keys
    r0, r1 = ranks
    try:
        # Published before anyone listens: the replay brings it back.
        r0.publish(stored([11, 12], a))
        r1.publish(stored([31], c))
        for s in subs:
            s.start()
        wait_until(lambda: res.state(k0) is EXACT, tick=lambda: r0.publish())
        wait_until(lambda: res.state(k1) is EXACT, tick=lambda: r1.publish())
        assert res.overlap(MODEL, b + c, keys) == {k0: 0, k1: 0}
        assert res.overlap(MODEL, a, keys) == {k0: 2, k1: 0}
        assert res.overlap(MODEL, c, keys) == {k0: 0, k1: 1}

        # Lost: a batch that clears the cache and stores b. The next batch (b's last block,
        # and a cached again) reveals the gap; the replay brings the clear below the newest
        # seq applied, then that batch again. The engine holds one copy of a's blocks.
        r0.publish(VCleared(), stored([21, 22], b[:8]), send=False)
        r0.publish(stored([23], b[8:], parent=22), stored([11, 12], a))
        wait_until(lambda: res.overlap(MODEL, b, [k0]) == {k0: 3})
        wait_until(lambda: res.state(k0) is EXACT)
        assert res.overlap(MODEL, a, [k0]) == {k0: 2} and res.status(k0).blocks == 5
        assert subs[0].stats().replays_requested >= 2
        r0.publish(VRemoved(block_hashes=[12, 11], medium="GPU"))  # its only copy goes
        wait_until(lambda: res.status(k0).blocks == 3)
        assert res.overlap(MODEL, a, [k0]) == {k0: 0}

        # Not msgpack: dropped, counted; the stream goes on (the next batch reuses the seq,
        # as a garbled copy of it would have carried).
        r0.pub.send_multipart([b"kv@pod@m", r0.seq.to_bytes(8, "big"), b"\xc1"])
        wait_until(lambda: subs[0].stats().decode_errors == 1)
        r0.publish(VRemoved(block_hashes=[23], medium="GPU"))
        wait_until(lambda: res.overlap(MODEL, b, [k0]) == {k0: 2})
        assert res.state(k0) is EXACT

        # Lost, and gone from the engine's replay buffer too: no replay can close the gap.
        lost = r0.publish(stored([24], [7, 7, 7, 7]), send=False)
        with r0.lock:
            r0.buffer = [(s, p) for s, p in r0.buffer if s != lost]
        requested = subs[0].stats().replays_requested
        r0.publish()
        wait_until(lambda: subs[0].stats().replays_requested > requested)
        wait_until(lambda: subs[0].stats().replayed > 0 and res.missing_from(k0) == lost)
        assert res.state(k0) is DEGRADED
        # A clear resets what the gap made uncertain.
        r0.publish(VCleared(), stored([25], a[:4]))
        wait_until(lambda: res.state(k0) is EXACT)
        assert res.overlap(MODEL, a, [k0]) == {k0: 1} and res.status(k0).blocks == 1

        # Rank 1 was never touched by rank 0's stream.
        assert res.state(k1) is EXACT and res.overlap(MODEL, c, [k1]) == {k1: 1}
        assert res.status(k1).restarts == 0 and subs[1].stats().decode_errors == 0
    finally:
        for s in subs:
            s.stop()
        for rank in ranks:
            rank.close()


def test_the_asyncio_subscriber_replays_a_lost_clear_too(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    base, pubs = bind_consecutive(ctx)
    pubs[1].close(0)
    rank = Rank(ctx, pubs[0], 0)
    key = ReplicaKey("pod", 0)
    res = KvResidency(block_tokens=BT)
    a, b = list(range(1, 9)), list(range(101, 109))

    async def main() -> None:
        sub = AsyncKvEventSubscriber(
            f"tcp://127.0.0.1:{base}",
            replica=key,
            residency=res,
            model=MODEL,
            replay_endpoint=rank.replay_endpoint,
            replay_timeout=DEADLINE * 10,
        )
        rank.publish(stored([11, 12], a))
        await sub.start()
        try:
            await wait_until_async(lambda: res.state(key) is EXACT, tick=rank.publish)
            rank.publish(VCleared(), stored([21], b[:4]), send=False)
            rank.publish(stored([22], b[4:], parent=21), stored([11], a[:4]))
            await wait_until_async(
                lambda: res.state(key) is EXACT and res.overlap(MODEL, b, [key]) == {key: 2}
            )
            assert res.overlap(MODEL, a, [key]) == {key: 1}  # a's first block, stored again
            assert res.status(key).blocks == 3
            rank.publish(VRemoved(block_hashes=[11], medium="GPU"))  # its only copy since
            await wait_until_async(lambda: res.status(key).blocks == 2)
            assert res.overlap(MODEL, a, [key]) == {key: 0}
        finally:
            await sub.stop()

    try:
        asyncio.run(main())
    finally:
        rank.close()


async def wait_until_async(
    predicate: Callable[[], bool], *, tick: Callable[[], object] | None = None
) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        if tick is not None:
            tick()
        await asyncio.sleep(0.02)
