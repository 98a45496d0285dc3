"""Real brokers for the sync tests: ``nats-server`` / ``redis-server`` from PATH on loopback.

Not a test module: ``tests/`` is on ``sys.path`` (the rootdir ``conftest.py`` lives there), so
``tests/contract`` and ``tests/integration`` import it as ``sync_brokers``. Servers are
started on a free port, awaited with a bounded deadline, and always killed by the fixtures.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable

__all__ = ["Broker", "free_port", "nats_server", "redis_server", "wait_until"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (a bound, not a timing
    assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.01)


class Broker:
    """One server process on ``127.0.0.1:port``; ``restart()`` reuses the port."""

    def __init__(self, name: str, argv: Callable[[int], list[str]], scheme: str) -> None:
        binary = shutil.which(name)
        if binary is None:  # never skip: a missing broker is a broken environment
            raise RuntimeError(f"{name} is not on PATH (CI installs it with apt-get)")
        self.name = name
        self.argv = argv
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            self.argv(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start on port {self.port}")
            time.sleep(0.02)

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
    return Broker("nats-server", lambda p: ["nats-server", "-a", "127.0.0.1", "-p", str(p)], "nats")


def redis_server() -> Broker:
    return Broker(
        "redis-server",
        lambda p: [
            "redis-server",
            "--port",
            str(p),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        "redis",
    )
