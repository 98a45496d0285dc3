"""Two routers sharing prefix-cache affinity over NATS.

Router A serves the first turn of a conversation on some GPU replica and tells its peers.
The second turn lands on router B, which has never seen the conversation, yet sends it to the
replica that A warmed, because both routers' indexes are kept in sync through NATS.

Run it against a local server, or let it start a throwaway ``nats-server`` from PATH::

    python examples/sync_over_nats.py                          # starts nats-server itself
    python examples/sync_over_nats.py nats://127.0.0.1:4222    # an existing server

Needs the ``[nats]`` extra (``pip install 'clusterrouting[nats]'``).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time

from prefixcache import (
    DEFAULT_CONFIG,
    Candidate,
    EvictionTicker,
    Index,
    ReplicaKey,
    Sync,
    extract_chain,
    messages_prefix_source,
    select,
)
from prefixcache.transports.nats import NatsTransport

MODEL = "llama-3-8b"
REPLICAS = [ReplicaKey("gpu-1"), ReplicaKey("gpu-2"), ReplicaKey("gpu-3")]
SYSTEM = "You are a meticulous assistant for a logistics company. " * 12


def start_nats_server() -> tuple[subprocess.Popen[bytes], str]:
    """Start ``nats-server`` on a free loopback port; return the process and its URL."""
    binary = shutil.which("nats-server")
    if binary is None:
        sys.exit("nats-server is not on PATH: install it or pass a nats:// URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit("nats-server did not start")
            time.sleep(0.02)
    return proc, f"nats://127.0.0.1:{port}"


def route(
    router: Sync, messages: list[dict[str, str]], in_flight: dict[ReplicaKey, int]
) -> tuple[ReplicaKey, float]:
    """Pick a replica for ``messages`` on ``router``; return it and the cached-prefix ratio."""
    chain = extract_chain(MODEL, messages_prefix_source(messages))
    candidates = [Candidate(k, in_flight=in_flight.get(k, 0)) for k in REPLICAS]
    decision = router.decide(MODEL, chain, candidates, time.time())
    picked = select(candidates, decision, DEFAULT_CONFIG)
    assert picked is not None
    return picked, decision.match_ratio


def serve(router: Sync, messages: list[dict[str, str]], replica: ReplicaKey) -> None:
    """After a *successful* response, record who now caches this prefix (and tell peers)."""
    chain = extract_chain(MODEL, messages_prefix_source(messages))
    router.observe(MODEL, chain, replica, time.time())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="nats:// URL (default: start nats-server)")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        server, url = start_nats_server()
    try:
        with NatsTransport.connect(url) as conn_a, NatsTransport.connect(url) as conn_b:
            # Both routers use the wall clock: events cross processes.
            router_a = Sync(Index(DEFAULT_CONFIG), clock=time.time)
            router_b = Sync(Index(DEFAULT_CONFIG), clock=time.time)
            router_a.attach(conn_a)
            router_b.attach(conn_b)
            # Each router sweeps expired entries itself; nothing runs until started.
            tickers = [EvictionTicker(r, ttl=DEFAULT_CONFIG.ttl) for r in (router_a, router_b)]
            for t in tickers:
                t.start()

            # GPU load right now: gpu-1 is busiest, so a cold request goes elsewhere.
            in_flight = {REPLICAS[0]: 2, REPLICAS[1]: 0, REPLICAS[2]: 0}
            turn1 = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Where is shipment 4471?"},
            ]
            picked_a, ratio = route(router_a, turn1, in_flight)
            print(f"router A, turn 1: cold (cached ratio {ratio:.2f}) -> {picked_a.node_id}")
            serve(router_a, turn1, picked_a)

            turn2 = [
                *turn1,
                {"role": "assistant", "content": "Shipment 4471 left Rotterdam on Monday."},
                {"role": "user", "content": "And when does it arrive?"},
            ]
            # The observe travels through NATS; wait (bounded) for router B to learn it.
            chain2 = extract_chain(MODEL, messages_prefix_source(turn2))
            deadline = time.monotonic() + 5
            while (
                router_b.decide(MODEL, chain2, [Candidate(k) for k in REPLICAS], time.time()).hot
                is None
            ):
                if time.monotonic() > deadline:
                    print("router B never heard from router A", file=sys.stderr)
                    return 1
                time.sleep(0.01)
            picked_b, ratio = route(router_b, turn2, in_flight)
            print(f"router B, turn 2: hot (cached ratio {ratio:.2f}) -> {picked_b.node_id}")
            serve(router_b, turn2, picked_b)

            same = picked_a == picked_b
            print("same replica on both routers:", same)
            # B's observe of turn 2 travels back to A; drift detection compares digests.
            deadline = time.monotonic() + 5
            while router_a.digests() != router_b.digests() and time.monotonic() < deadline:
                time.sleep(0.01)
            print("digests agree:", router_a.digests() == router_b.digests())
            print("router A stats:", router_a.stats())
            for t in tickers:
                t.stop()
            return 0 if same else 1
    finally:
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    raise SystemExit(main())
