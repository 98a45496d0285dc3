"""Suite-wide configuration: hypothesis profiles.

``ci`` (selected by ``CI=true`` or ``HYPOTHESIS_PROFILE=ci``) is derandomized and runs more
examples; ``dev`` is the quick default for local runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from sync_brokers import Broker, nats_server, redis_server

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def nats() -> Iterator[Broker]:
    """A real ``nats-server`` (from PATH) on a free loopback port, stopped afterwards."""
    broker = nats_server()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def redis() -> Iterator[Broker]:
    """A real ``redis-server`` (from PATH) on a free loopback port, stopped afterwards."""
    broker = redis_server()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
