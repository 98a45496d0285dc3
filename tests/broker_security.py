"""Locked-down brokers for the authentication and TLS tests (not a test module).

Generates, at test time, a throwaway CA with a server certificate for 127.0.0.1 and a client
certificate (``cryptography``), NKey seeds and a NATS operator / account / user JWT chain
(``nkeys``), and starts ``nats-server`` / ``redis-server`` requiring them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs
import pytest
from sync_brokers import Broker, redis_argv, wait_until

from prefixcache import Candidate, Index, ReplicaKey, Sync, Transport

__all__ = [
    "Pki",
    "make_creds",
    "make_nkey_user",
    "make_pki",
    "nats_with_config",
    "redis_with_args",
    "refused",
    "syncs_through",
]


@attrs.frozen
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("prefixcache test CA"))
        .issuer_name(name("prefixcache test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        cn: str, usage: x509.ObjectIdentifier, server: bool
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, True)
    client_cert, client_key = leaf("router", ExtendedKeyUsageOID.CLIENT_AUTH, False)
    return Pki(
        ca=write_cert(ca_cert, directory / "ca.pem"),
        server_cert=write_cert(server_cert, directory / "server.pem"),
        server_key=write_key(server_key, directory / "server-key.pem"),
        client_cert=write_cert(client_cert, directory / "client.pem"),
        client_key=write_key(client_key, directory / "client-key.pem"),
    )


def _seed(prefix: int) -> bytes:
    import nkeys

    return bytes(nkeys.encode_seed(os.urandom(32), prefix))


def make_nkey_user(directory: Path) -> tuple[str, Path]:
    """A user NKey: (its public key for the server config, the path of its seed file)."""
    import nkeys

    seed = _seed(nkeys.PREFIX_BYTE_USER)
    path = directory / "user.nk"
    path.write_bytes(seed + b"\n")
    return nkeys.from_seed(bytearray(seed)).public_key.decode(), path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer_seed: bytes, subject: str, name: str, nats: dict[str, object]) -> str:
    import nkeys

    issuer = nkeys.from_seed(bytearray(issuer_seed))
    claims: dict[str, object] = {
        "iat": int(time.time()) - 60,
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {"version": 2, **nats},
    }
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def make_creds(directory: Path) -> tuple[str, Path]:
    """An operator-mode setup: (the server config's auth section, a user ``.creds`` file)."""
    import nkeys

    op_seed = _seed(nkeys.PREFIX_BYTE_OPERATOR)
    acc_seed = _seed(nkeys.PREFIX_BYTE_ACCOUNT)
    usr_seed = _seed(nkeys.PREFIX_BYTE_USER)

    def pub(seed: bytes) -> str:
        return str(nkeys.from_seed(bytearray(seed)).public_key.decode())

    unlimited = {"subs": -1, "data": -1, "payload": -1}
    operator_jwt = _jwt(op_seed, pub(op_seed), "op", {"type": "operator"})
    account_limits = {**unlimited, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    account_jwt = _jwt(op_seed, pub(acc_seed), "acc", {"type": "account", "limits": account_limits})
    user_jwt = _jwt(
        acc_seed, pub(usr_seed), "router", {"type": "user", "pub": {}, "sub": {}, **unlimited}
    )
    creds = directory / "router.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{usr_seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    config = (
        f"operator: {operator_jwt}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {pub(acc_seed)}: {account_jwt}\n}}\n"
    )
    return config, creds


def nats_with_config(directory: Path, config: str, *, scheme: str = "nats") -> Broker:
    """A nats-server on a free loopback port with ``config`` (the listen line is added)."""
    path = directory / "nats.conf"

    def argv(port: int) -> list[str]:
        path.write_text(f"listen: 127.0.0.1:{port}\n{config}")
        return ["-c", str(path)]

    return Broker("nats-server", argv, scheme)


def redis_with_args(
    args: Callable[[int], list[str]], *, exe: str | None = None, scheme: str = "redis"
) -> Broker:
    """A redis-server on a free loopback port with extra ``args(port)`` (later arguments win);
    ``exe`` picks the binary (default: the one the other broker tests use)."""

    def argv(port: int) -> list[str]:
        return redis_argv(port) + args(port)

    broker = Broker("redis-server", argv, scheme)
    if exe is not None:
        broker.binary = exe
    return broker


class ClosableTransport(Transport, Protocol):
    def close(self) -> None: ...


def syncs_through(connect: Callable[[], ClosableTransport]) -> None:
    """Two routers, each on a transport from ``connect()``, share an observation."""
    ta = connect()
    tb = connect()
    try:
        a, b = Sync(Index(), clock=time.time), Sync(Index(), clock=time.time)
        a.attach(ta)
        b.attach(tb)
        key = ReplicaKey("n1")
        assert a.observe("m", (1, 2), key, time.time())
        wait_until(
            lambda: b.decide("m", (1, 2), [Candidate(key)], time.time()).hot == key,
            what="observe through the locked-down broker",
        )
    finally:
        ta.close()
        tb.close()


def refused(connect: Callable[[], object]) -> None:
    """``connect()`` is refused by the broker (any error but a ``TypeError``, which would
    mean the options were misused rather than refused)."""
    with pytest.raises(Exception) as info:
        connect()
    assert not isinstance(info.value, TypeError), info.value
