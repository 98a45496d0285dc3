"""The example gateway's trust flags build the SignedTransport docs/security.md describes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.__main__ import _trusted, build_parser, read_signing_keys
from prefixcache import SignedTransport
from prefixcache.testing import InMemoryTransport


def test_flags_sign_verify_and_limit(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(
        "# rotation: new first\n2026-12 new-secret-0123456789\n2026-11 old-secret-0123456789\n"
    )
    args = build_parser().parse_args(
        ["gateway", "--signing-key-file", str(keys), "--require-signatures", "--peer-rate", "100"]
    )
    bridge = InMemoryTransport().connect("g")
    t = _trusted(args, bridge)
    assert isinstance(t, SignedTransport) and t.transport is bridge
    assert t.signer is not None and t.signer.keys.active == "2026-12"
    assert t.signer.origin == "gateway"
    assert t.verifier is not None and set(t.verifier.keys.keys) == {"2026-12", "2026-11"}
    assert t.rate_limiter is not None and t.rate_limiter.limit.burst == 500.0
    plain = build_parser().parse_args(["gateway"])
    assert _trusted(plain, bridge) is bridge  # off by default: records unchanged


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    for text in ("", "one-field\n", "k short\n"):
        path = tmp_path / "k"
        path.write_text(text)
        with pytest.raises(SystemExit):
            read_signing_keys(str(path))
    with pytest.raises(SystemExit):
        read_signing_keys(str(tmp_path / "missing"))
    with pytest.raises(SystemExit):
        _trusted(build_parser().parse_args(["gateway", "--require-signatures"]), None)


def test_nats_auth_flags(tmp_path: Path) -> None:
    from examples.gateway.__main__ import _nats_auth

    (tmp_path / "pw").write_text("s3cret\n")
    args = build_parser().parse_args(
        [
            "gateway",
            "--nats-user",
            "router",
            "--nats-password-file",
            str(tmp_path / "pw"),
            "--nats-creds",
            "/etc/router.creds",
        ]
    )
    assert _nats_auth(args) == {
        "user": "router",
        "password": "s3cret",
        "user_credentials": "/etc/router.creds",
    }
    assert _nats_auth(build_parser().parse_args(["gateway"])) == {}
