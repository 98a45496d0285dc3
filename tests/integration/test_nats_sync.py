"""Sync over a real nats-server on loopback: conformance, convergence, broker restart."""

from __future__ import annotations

import time

import pytest
from sync_brokers import (
    Broker,
    async_host_scenario,
    converge_scenario,
    restart_scenario,
    wait_until,
)

from prefixcache import Candidate, Index, ObserveEvent, ReplicaKey, Sync
from prefixcache.testing import check_transport
from prefixcache.transports.nats import AsyncNatsTransport, NatsTransport

pytestmark = pytest.mark.integration


def test_conformance(nats: Broker) -> None:
    check_transport(lambda: NatsTransport.connect(nats.url))


# Generous bounds for a machine loaded by other work; a flush that fails raises.
BOUNDS = {"timeout": 30.0, "flush_timeout": 20.0}


def test_three_routers_converge(nats: Broker) -> None:
    converge_scenario(
        lambda: NatsTransport.connect(nats.url, **BOUNDS), n=3, settle=NatsTransport.flush
    )


def test_broker_restart_mid_stream(nats: Broker) -> None:
    # nats-py buffers publishes while reconnecting, so none fails during the outage.
    restart_scenario(
        nats,
        lambda: NatsTransport.connect(nats.url, **BOUNDS),
        publishes_fail_while_down=False,
        settle=NatsTransport.flush,
    )


def test_reference_format_interop(nats: Broker) -> None:
    """A message published by a plain client in the reference's JSON is applied."""
    # NATS delivers a message only to subscriptions the server already has, so each single
    # publish below waits for a PING/PONG round trip on the subscriber's connection (its
    # SUBs went before the PING). ``subscribe`` does one too but gives up with a warning
    # after ``flush_timeout`` (2 s); on a CI machine loaded by other work this test once
    # lost its three messages, as if that had happened. Here the bounds are generous and a
    # flush that fails raises.
    raw = NatsTransport.connect(nats.url, **BOUNDS)
    router = NatsTransport.connect(nats.url, **BOUNDS)
    sync = Sync(Index(), clock=time.time)
    try:
        sync.attach(router)
        router.flush()  # the router's subscriptions are active at the server
        raw.publish(
            "prefixcache.observe", b'{"model":"m","chain":[11,12],"node_id":"go-node","replica":0}'
        )
        raw.publish("prefixcache.observe", b'{"model":"m","chain":[-1],"node_id":"x"}')
        raw.publish("prefixcache.invalidate", b"\x00garbage")
        cands = [Candidate(ReplicaKey("go-node"))]
        wait_until(lambda: sync.stats().received >= 3, what="three messages")
        assert sync.decide("m", (11, 12), cands, time.time()).hot == ReplicaKey("go-node")
        assert sync.stats().dropped_malformed == 2
        # ...and what this router sends decodes as the reference's event.
        got: list[bytes] = []
        raw.subscribe("prefixcache.observe", lambda _s, p: got.append(p))
        raw.flush()  # the plain client's subscription is active at the server
        sync.observe("m", (21,), ReplicaKey("py-node", 2), time.time())
        wait_until(lambda: len(got) == 1, what="our event")
        assert ObserveEvent.decode(got[0]) == ObserveEvent(
            model="m", chain=(21,), node_id="py-node", replica=2
        )
    finally:
        raw.close()
        router.close()


def test_asyncio_host(nats: Broker) -> None:
    """AsyncNatsTransport with Sync.attach_async and async publishers on one loop."""
    async_host_scenario(lambda: AsyncNatsTransport.connect(nats.url))
