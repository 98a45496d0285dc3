"""NatsTransport against nats-server instances that require credentials or TLS: each accepted
credential carries sync between two routers; a missing or wrong one is refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import broker_security as shared
import pytest
from broker_security import make_creds, make_nkey_user, make_pki, nats_with_config
from sync_brokers import Broker, wait_until

from prefixcache.transports.nats import NatsTransport

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_factory() -> Iterator[Callable[[Path, str, str], Broker]]:
    started: list[Broker] = []

    def start(directory: Path, config: str, scheme: str = "nats") -> Broker:
        broker = nats_with_config(directory, config, scheme=scheme)
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def syncs_through(url: str, **options: Any) -> None:
    """Two routers connected with ``options`` share an observation."""
    shared.syncs_through(lambda: NatsTransport.connect(url, connect_timeout=5.0, **options))


def refused(url: str, **options: Any) -> None:
    shared.refused(lambda: NatsTransport.connect(url, connect_timeout=2.0, **options))


def test_user_and_password(tmp_path: Path, broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory(tmp_path, "authorization { user: router, password: s3cret-pw }\n")
    syncs_through(broker.url, user="router", password="s3cret-pw")
    refused(broker.url, user="router", password="wrong")
    refused(broker.url)


def test_token(tmp_path: Path, broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory(tmp_path, 'authorization { token: "t0ken-for-routers" }\n')
    syncs_through(broker.url, token="t0ken-for-routers")
    refused(broker.url, token="other")
    refused(broker.url)


def test_nkey(tmp_path: Path, broker_factory: Callable[..., Broker]) -> None:
    public, seed_file = make_nkey_user(tmp_path)
    broker = broker_factory(tmp_path, f"authorization {{ users: [ {{ nkey: {public} }} ] }}\n")
    syncs_through(broker.url, nkey_seed_file=str(seed_file))
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    _, other_seed = make_nkey_user(stranger)
    refused(broker.url, nkey_seed_file=str(other_seed))
    refused(broker.url)


def test_credentials_file(tmp_path: Path, broker_factory: Callable[..., Broker]) -> None:
    config, creds = make_creds(tmp_path)
    broker = broker_factory(tmp_path, config)
    syncs_through(broker.url, credentials_file=str(creds))
    refused(broker.url)


def test_tls_with_a_client_certificate(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    pki = make_pki(tmp_path)
    config = (
        "tls {\n"
        f'  cert_file: "{pki.server_cert}"\n'
        f'  key_file: "{pki.server_key}"\n'
        f'  ca_file: "{pki.ca}"\n'
        "  verify: true\n"
        "}\n"
    )
    broker = broker_factory(tmp_path, config, "tls")
    syncs_through(
        broker.url,
        tls_ca_file=str(pki.ca),
        tls_cert_file=str(pki.client_cert),
        tls_key_file=str(pki.client_key),
    )
    refused(broker.url, tls_ca_file=str(pki.ca))  # no client certificate
    refused(broker.url)  # the server's CA is not trusted by default


def test_a_least_privilege_user_is_enough(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    # The permissions docs/security.md recommends: the sync subjects and nothing else.
    public, seed_file = make_nkey_user(tmp_path)
    allow = '{ publish: "prefixcache.>", subscribe: "prefixcache.>" }'
    config = f"authorization {{ users: [ {{ nkey: {public}, permissions: {allow} }} ] }}\n"
    broker = broker_factory(tmp_path, config)
    syncs_through(broker.url, nkey_seed_file=str(seed_file))
    t = NatsTransport.connect(broker.url, nkey_seed_file=str(seed_file))
    try:
        t.publish("other.subject", b"x")  # refused by the server: an asynchronous error
        wait_until(lambda: t.transport.errors >= 1, what="the permission violation reported")
    finally:
        t.close()


def test_the_example_gateway_bridge_authenticates(
    tmp_path: Path, broker_factory: Callable[..., Broker]
) -> None:
    import asyncio
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from examples.gateway.nats_bridge import NatsBridge

    broker = broker_factory(tmp_path, 'authorization { token: "t0ken-for-routers" }\n')

    async def main() -> None:
        a = await NatsBridge.connect(broker.url, token="t0ken-for-routers")
        b = await NatsBridge.connect(broker.url, token="t0ken-for-routers")
        got: list[bytes] = []
        b.subscribe("s", lambda _s, p: got.append(p))
        await b.flush()
        a.publish("s", b"hello")
        await a.flush()
        for _ in range(1000):  # bounded poll
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [b"hello"]
        await a.close()
        await b.close()

    asyncio.run(asyncio.wait_for(main(), 30))
