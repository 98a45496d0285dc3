"""Real sockets on 127.0.0.1: a fake engine publisher (written here from the engines'
framing, not with this package's encoder) -> KvEventSubscriber -> KvResidency, including a
replay over the ROUTER/DEALER socket, a gap, a restart, and the asyncio twin.

Network waits poll with a bounded deadline; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import msgspec
import pytest
import zmq
from sync_brokers import wait_until

from clusterrouting import InvalidRecordError
from prefixcache import ReplicaKey
from prefixcache.kvevents import (
    AsyncKvEventSubscriber,
    BlockStored,
    EventBatch,
    KvEventPublisher,
    KvEventSubscriber,
    KvResidency,
    ResidencyState,
    encode_payload,
)

pytestmark = pytest.mark.integration

KEY = ReplicaKey("engine-0")
BT = 4
PROMPT = list(range(1, 17))  # 4 blocks
DEADLINE = 15.0


class _Stored(msgspec.Struct, tag="BlockStored", array_like=True):
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = "GPU"
    lora_name: str | None = None
    extra_keys: list[object] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class _Batch(msgspec.Struct, array_like=True):
    ts: float
    events: list[_Stored]
    data_parallel_rank: int | None = 0


class FakeEngine:
    """An engine's publisher as vLLM frames it: PUB [topic, seq, payload], a ROUTER that
    answers [b"", start] with [b"", seq, payload]... then [b"", b"\\xff" * 8, b""] (vLLM
    before v0.26, SGLang) or, with ``replay_topic``, as vLLM from v0.26 (PR #45177):
    [b"", topic, seq, payload]... then [b"", b"", b"\\xff" * 8, b""]."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        topic: bytes = b"kv@pod-0@m",
        *,
        replay_topic: bool = False,
    ) -> None:
        self.topic = topic
        self.replay_topic = replay_topic
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.replay_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.buffer: list[tuple[int, bytes]] = []
        self.replay_requests: list[int] = []
        self.seq = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def replay_endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.replay_port}"

    def publish(self, events: list[_Stored], *, send: bool = True) -> int:
        payload = msgspec.msgpack.encode(_Batch(ts=time.time(), events=events))
        with self.lock:
            seq = self.seq
            self.seq += 1
            self.buffer.append((seq, payload))
            if send:  # send=False: "lost" on the way (a PUB past its high-water mark)
                self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])
        return seq

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(50):
                continue
            identity, empty, start = self.router.recv_multipart()
            assert empty == b""
            first = int.from_bytes(start, "big")
            self.replay_requests.append(first)
            with self.lock:
                items = [(s, p) for s, p in self.buffer if s >= first]
            for s, p in items:
                if self.replay_topic:
                    self.router.send_multipart([identity, b"", self.topic, s.to_bytes(8, "big"), p])
                else:
                    self.router.send_multipart([identity, b"", s.to_bytes(8, "big"), p])
            if self.replay_topic:
                self.router.send_multipart([identity, b"", b"", b"\xff" * 8, b""])
            else:
                self.router.send_multipart([identity, b"", b"\xff" * 8, b""])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.pub.close(0)
        self.router.close(0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.term()


def store(hashes: list[int], tokens: list[int], parent: int | None = None) -> _Stored:
    return _Stored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens, block_size=BT)


@pytest.mark.parametrize("replay_topic", [False, True], ids=["seq-payload", "vllm-0.26-topic"])
def test_pub_sub_replay_gap_and_restart(
    ctx: zmq.Context[zmq.Socket[bytes]], replay_topic: bool
) -> None:
    engine = FakeEngine(ctx, replay_topic=replay_topic)
    res = KvResidency(block_tokens=BT)
    sub = KvEventSubscriber(
        engine.endpoint,
        replica=KEY,
        residency=res,
        model="m",
        topic="kv@",
        replay_endpoint=engine.replay_endpoint,
        # Longer than the test's deadline: a replay whose end marker went unread would hold
        # the next gap's replay back, and the second gap below would not close in time.
        replay_timeout=10 * DEADLINE,
        context=ctx,
    )
    try:
        engine.publish([store([11], PROMPT[:4])])  # seq 0: sent before the SUB joined
        sub.start()
        # Heartbeats until the subscriber hears one; a missed seq 0 is fetched by replay.
        wait_until(lambda: res.status(KEY).last_seq is not None, tick=lambda: engine.publish([]))
        wait_until(lambda: res.state(KEY) is ResidencyState.EXACT)
        assert res.overlap("m", PROMPT, [KEY]) == {KEY: 1}

        # A lost message: the next one reveals the gap, the replay closes it.
        lost = engine.publish([store([12], PROMPT[4:8], parent=11)], send=False)
        engine.publish([store([13], PROMPT[8:12], parent=12)])
        wait_until(lambda: res.overlap("m", PROMPT, [KEY]) == {KEY: 3})
        wait_until(lambda: res.state(KEY) is ResidencyState.EXACT)
        assert lost in range(min(engine.replay_requests), engine.seq)
        stats = sub.stats()
        assert stats.replays_requested >= 1 and stats.replayed >= 1
        assert stats.decode_errors == 0

        # A second gap: its replay is asked for at once (the first one's end was read).
        engine.publish([store([14], PROMPT[12:16], parent=13)], send=False)
        engine.publish([])
        wait_until(lambda: res.overlap("m", PROMPT, [KEY]) == {KEY: 4})
        wait_until(lambda: res.state(KEY) is ResidencyState.EXACT)
        stats = sub.stats()
        assert stats.replays_requested >= 2 and stats.replays_timed_out == 0
        assert stats.decode_errors == 0

        # The engine restarts: seq back to 0, its cache is new.
        engine.seq = 0
        engine.buffer.clear()
        engine.publish([store([21], [9, 9, 9, 9])])
        wait_until(lambda: res.status(KEY).restarts == 1)
        assert res.overlap("m", PROMPT, [KEY]) == {KEY: 0}
        assert res.overlap("m", [9, 9, 9, 9], [KEY]) == {KEY: 1}

        # Garbage is dropped and counted; the stream goes on.
        engine.pub.send_multipart([b"kv@x", b"\x00" * 8, b"\xc1"])
        wait_until(lambda: sub.stats().decode_errors == 1)
    finally:
        sub.stop()
        engine.close()
    assert not sub.running


def test_topic_filter_is_a_prefix(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    other = FakeEngine(ctx, topic=b"other")
    res = KvResidency(block_tokens=BT)
    sub = KvEventSubscriber(other.endpoint, replica=KEY, residency=res, model="m", topic="kv@",
                            context=ctx)  # fmt: skip
    ours = KvEventSubscriber(other.endpoint, replica=ReplicaKey("all"), residency=res, model="m",
                             context=ctx)  # fmt: skip
    try:
        sub.start()
        ours.start()
        wait_until(lambda: ours.stats().received > 0, tick=lambda: other.publish([]))
        assert sub.stats().received == 0
    finally:
        sub.stop()
        ours.stop()
        other.close()


@pytest.mark.parametrize("replay_topic", [False, True], ids=["seq-payload", "vllm-0.26-topic"])
def test_asyncio_subscriber_round_trip(
    ctx: zmq.Context[zmq.Socket[bytes]], replay_topic: bool
) -> None:
    engine = FakeEngine(ctx, replay_topic=replay_topic)
    res = KvResidency(block_tokens=BT)

    async def main() -> None:
        sub = AsyncKvEventSubscriber(
            engine.endpoint, replica=KEY, residency=res, model="m",
            replay_endpoint=engine.replay_endpoint,
        )  # fmt: skip
        engine.publish([store([11, 12], PROMPT[:8])])
        await sub.start()
        deadline = time.monotonic() + DEADLINE
        while res.state(KEY) is not ResidencyState.EXACT:
            assert time.monotonic() < deadline
            engine.publish([])
            await asyncio.sleep(0.02)
        assert res.overlap("m", PROMPT, [KEY]) == {KEY: 2}
        await sub.stop()
        assert not sub.running

    try:
        asyncio.run(main())
    finally:
        engine.close()


@pytest.mark.parametrize("replay_topic", [False, True], ids=["seq-payload", "vllm-0.26-topic"])
def test_package_publisher_disconnect_hook_and_replay(
    ctx: zmq.Context[zmq.Socket[bytes]], replay_topic: bool
) -> None:
    res = KvResidency(block_tokens=BT)
    pub = KvEventPublisher("tcp://127.0.0.1:0", replay_endpoint="tcp://127.0.0.1:0",
                           layout="map", replay_topic=replay_topic, context=ctx)  # fmt: skip
    pub.start()
    disconnected = threading.Event()

    def on_disconnect(key: ReplicaKey) -> None:
        res.forget(key)
        disconnected.set()

    sub = KvEventSubscriber(pub.endpoint, replica=KEY, residency=res, model="m",
                            replay_endpoint=pub.replay_endpoint, on_disconnect=on_disconnect,
                            context=ctx)  # fmt: skip
    stored = BlockStored(block_hashes=[5], token_ids=PROMPT[:4], block_size=BT, medium="GPU")
    try:
        pub.publish(EventBatch(ts=0.0, events=[stored]))
        sub.start()
        wait_until(lambda: res.state(KEY) is ResidencyState.EXACT,
                   tick=lambda: pub.publish(EventBatch(ts=0.0, events=[])))  # fmt: skip
        assert res.overlap("m", PROMPT, [KEY]) == {KEY: 1}
        stats = sub.stats()  # seq 0 was sent before the subscriber joined: it came by replay
        assert stats.replayed >= 1 and stats.decode_errors == 0
        pub.close()  # the engine goes away: the host's hook forgets the replica
        wait_until(disconnected.is_set)
        assert res.state(KEY) is ResidencyState.UNKNOWN
        assert sub.stats().disconnects >= 1
    finally:
        sub.stop()
        pub.close()


def test_publisher_that_cannot_bind_releases_what_it_bound(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    taken = ctx.socket(zmq.ROUTER)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        pub = KvEventPublisher("tcp://127.0.0.1:0", replay_endpoint=f"tcp://127.0.0.1:{port}",
                               context=ctx)  # fmt: skip
        with pytest.raises(zmq.ZMQError):
            pub.start()
        # Counterfactual: a leaked PUB socket would keep its port for good; a closed one
        # frees it once ZMQ's I/O thread has closed it.
        assert pub.endpoint.startswith("tcp://127.0.0.1:")
        again = KvEventPublisher(pub.endpoint, context=ctx)

        def bound() -> bool:
            try:
                again.start()
            except zmq.ZMQError:
                return False
            return True

        wait_until(bound)
        again.close()
    finally:
        taken.close(0)


class _SgStored(msgspec.Struct, tag="BlockStored", array_like=True):
    block_hashes: list[bytes]
    parent_block_hash: bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None


class _SgBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[_SgStored]


def test_sglang_flavour_bytes_digests_through_the_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # SGLang-style: raw SHA-256 digests as block ids (first 8 bytes signed), a 2-item
    # envelope, no medium; the parent link goes through the same digest.
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    res = KvResidency(block_tokens=BT)
    sub = KvEventSubscriber(f"tcp://127.0.0.1:{port}", replica=KEY, residency=res, model="m",
                            flavour="sglang", context=ctx)  # fmt: skip
    d1, d2 = bytes([0x80]) + bytes(31), bytes(range(32))
    seq = 0

    def send(events: list[_SgStored]) -> None:
        nonlocal seq
        payload = msgspec.msgpack.encode(_SgBatch(ts=1.0, events=events))
        pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])
        seq += 1

    try:
        sub.start()
        wait_until(lambda: res.status(KEY).last_seq is not None, tick=lambda: send([]))
        send([_SgStored([d1], None, PROMPT[:4], BT)])
        send([_SgStored([d2], d1, PROMPT[4:8], BT)])
        wait_until(lambda: res.overlap("m", PROMPT, [KEY]) == {KEY: 2})
    finally:
        sub.stop()
        pub.close(0)


def test_malformed_replay_answers_are_counted_and_the_gap_stays_open(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    # A replay socket that answers with frames of neither layout: a non-empty delimiter,
    # five frames, a seq of the wrong width. Each is a decode error; none is applied.
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    replay_port = router.bind_to_random_port("tcp://127.0.0.1")
    res = KvResidency(block_tokens=BT)
    replay_endpoint = f"tcp://127.0.0.1:{replay_port}"
    sub = KvEventSubscriber(f"tcp://127.0.0.1:{port}", replica=KEY, residency=res, model="m",
                            replay_endpoint=replay_endpoint, context=ctx)  # fmt: skip
    payload = msgspec.msgpack.encode(_Batch(ts=1.0, events=[store([11], PROMPT[:4])]))
    empty = msgspec.msgpack.encode(_Batch(ts=1.0, events=[]))
    zero = (0).to_bytes(8, "big")
    try:
        sub.start()
        # Heartbeats from seq 1 on: seq 0 is missing and the subscriber asks for it.
        seqs = itertools.count(1)

        def heartbeat() -> None:
            pub.send_multipart([b"", next(seqs).to_bytes(8, "big"), empty])

        wait_until(lambda: router.poll(0) != 0, tick=heartbeat)
        identity = router.recv_multipart()[0]
        for bad in ([b"x", zero, payload], [b"", b"t", b"u", zero, payload], [b"", b"\0", payload]):
            router.send_multipart([identity, *bad])
        wait_until(lambda: sub.stats().decode_errors == 3)
        assert sub.stats().replayed == 0
        assert res.overlap("m", PROMPT, [KEY]) == {KEY: 0}
        assert res.missing_from(KEY) == 0
    finally:
        sub.stop()
        pub.close(0)
        router.close(0)


@pytest.mark.parametrize("replay_topic", [False, True], ids=["seq-payload", "vllm-0.26-topic"])
def test_package_publisher_replay_frames_are_the_engines(
    ctx: zmq.Context[zmq.Socket[bytes]], replay_topic: bool
) -> None:
    # What a DEALER receives, frame by frame: SGLang's and vLLM's before v0.26 layout, or
    # vLLM's from v0.26 (PR #45177) with the topic before seq and an empty one before the end.
    pub = KvEventPublisher("tcp://127.0.0.1:0", replay_endpoint="tcp://127.0.0.1:0",
                           topic="kv@p", replay_topic=replay_topic, context=ctx)  # fmt: skip
    pub.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, int(DEADLINE * 1000))
    try:
        payloads = [encode_payload(EventBatch(ts=float(i), events=[])) for i in range(2)]
        for i in range(2):
            pub.publish(EventBatch(ts=float(i), events=[]))
        dealer.connect(pub.replay_endpoint)
        dealer.send_multipart([b"", (1).to_bytes(8, "big")])
        head = [b"kv@p"] if replay_topic else []
        assert dealer.recv_multipart() == [b"", *head, (1).to_bytes(8, "big"), payloads[1]]
        end = [b""] if replay_topic else []
        assert dealer.recv_multipart() == [b"", *end, b"\xff" * 8, b""]
    finally:
        dealer.close(0)
        pub.close()


def test_publisher_replay_topic_must_be_a_bool() -> None:
    with pytest.raises(InvalidRecordError, match="replay_topic"):
        KvEventPublisher("tcp://127.0.0.1:0", replay_topic=1)  # type: ignore[arg-type]


def test_misconfigured_subscribers_and_publishers_are_refused_when_built() -> None:
    # Counterfactual: flavour="x" was accepted and every message then raised in the receive
    # thread; a zero or NaN replay timeout abandoned every replay at once; a clock or hook
    # that is not callable failed at the first message; a publisher took any layout (its
    # first publish failed) or endpoint (its start failed).
    residency = KvResidency()
    for cls in (KvEventSubscriber, AsyncKvEventSubscriber):
        for kw, field in (
            ({"flavour": "x"}, "flavour"),
            ({"flavour": "VLLM"}, "flavour"),
            ({"replay_timeout": 0}, "replay_timeout"),
            ({"replay_timeout": float("nan")}, "replay_timeout"),
            ({"replay_timeout": None}, "replay_timeout"),
            ({"clock": 1.0}, "clock"),
            ({"on_report": "log"}, "on_report"),
            ({"on_disconnect": 3}, "on_disconnect"),
        ):
            with pytest.raises(InvalidRecordError) as ei:
                cls("tcp://127.0.0.1:5557", replica=KEY, residency=residency, model="m", **kw)
            assert ei.value.field == field, (cls, kw)
        cls(  # the edges that are fine: sglang, a tiny timeout, hooks given
            "tcp://127.0.0.1:5557",
            replica=KEY,
            residency=residency,
            model="m",
            flavour="sglang",
            replay_timeout=0.001,
            on_report=lambda report: None,
            on_disconnect=lambda key: None,
        )
    for kw, field in (
        ({"layout": "x"}, "layout"),
        ({"endpoint": "127.0.0.1:5000"}, "endpoint"),
        ({"replay_endpoint": "nowhere"}, "replay_endpoint"),
        ({"topic": b"kv"}, "topic"),
    ):
        args = {"endpoint": "tcp://127.0.0.1:0", **kw}
        with pytest.raises(InvalidRecordError) as ei:
            KvEventPublisher(**args)  # type: ignore[arg-type]
        assert ei.value.field == field, kw
