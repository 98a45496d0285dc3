"""Command line: ``python -m examples.gateway {backend,gateway,demo} ...`` (from the repo root).

* ``backend``: one mock OpenAI-compatible backend announcing itself over NATS.
* ``gateway``: one gateway; learns backends over NATS; ``--sync`` shares affinity with other
  gateways over the same NATS (off by default).
* ``demo``: everything in one process without a broker: three mock backends and one gateway
  connected by the in-memory transport.

Precise mode (``examples.gateway.kv_events``): ``backend --kv-events`` publishes the mock's
emulated KV cache as engine events over ZMQ (one stream per model, printed at start);
``gateway --precise --kv-events NODE:MODEL=ENDPOINT[,REPLAY_ENDPOINT] ...`` subscribes to them
and routes on what the backends really cache; ``demo --precise`` wires it all in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from examples.gateway.app import (
    DEFAULT_BODY_LIMIT,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_WRITE_TIMEOUT,
    Gateway,
    GatewaySettings,
)
from examples.gateway.kv_events import PreciseMode
from examples.gateway.mock_backend import DEFAULT_ANNOUNCE_INTERVAL, MockBackend
from examples.gateway.serving import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    RunningServer,
    ServerLimits,
    start_server,
)
from prefixcache import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    RateLimit,
    ResyncLoop,
    SignedTransport,
    Signer,
    SigningKeys,
    Verifier,
)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """``"24GiB"`` -> 25769803776, ``"8G"`` -> 8000000000, ``"1024"`` -> 1024."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    number, unit = float(m.group(1)), (m.group(2) or "").upper()
    if "I" in unit:
        scale = 1024 ** ("KMGT".index(unit[0]) + 1)
    else:
        scale = _UNITS[unit.rstrip("B") if unit != "B" else "B"]
    return int(number * scale)


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _trusted(args: argparse.Namespace, bridge: Any) -> Any:
    """``bridge`` behind signing, verification and per-origin rate limits, as the flags say
    (see docs/security.md); ``bridge`` itself when no signing key file is given."""
    if not args.signing_key_file:
        if args.require_signatures:
            raise SystemExit("--require-signatures needs --signing-key-file")
        return bridge
    keys = read_signing_keys(args.signing_key_file)
    return SignedTransport(
        bridge,
        signer=Signer(keys, origin=args.origin or args.name),
        verifier=Verifier(keys) if args.require_signatures else None,
        rate_limit=(
            RateLimit(rate=args.peer_rate, burst=max(1.0, 5 * args.peer_rate))
            if args.peer_rate > 0
            else None
        ),
    )


def read_signing_keys(path: str) -> SigningKeys:
    """Keys from a file of ``key-id secret`` lines (``#`` comments); the first is active.

    Raises:
        SystemExit: the file is unreadable or holds no valid key.
    """
    keys: dict[str, bytes] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SystemExit(f"--signing-key-file: {exc}") from None
    for line in lines:
        parts = line.split("#", 1)[0].split()
        if len(parts) == 2:
            keys.setdefault(parts[0], parts[1].encode("utf-8"))
        elif parts:
            raise SystemExit(f"--signing-key-file: expected 'key-id secret', got {line!r}")
    if not keys:
        raise SystemExit(f"--signing-key-file: no key in {path}")
    try:
        return SigningKeys(keys=keys, active=next(iter(keys)))
    except ValueError as exc:
        raise SystemExit(f"--signing-key-file: {exc}") from None


async def run_backend(args: argparse.Namespace) -> None:
    from examples.gateway.nats_bridge import NatsBridge

    backend = MockBackend(
        name=args.name,
        models=[m for m in args.models.split(",") if m],
        available_vram=args.vram,
        chunk_delay=args.chunk_delay,
    )
    print(f"backend {args.name}: connecting to NATS at {args.nats} ...", flush=True)
    bridge = await NatsBridge.connect(args.nats, name=f"backend-{args.name}", **_nats_auth(args))
    transport = _trusted(args, bridge)
    server = await start_server(backend.make_app(), host=args.host, port=args.port)
    backend.address = args.advertise or server.address
    backend.answer_queries(transport)
    await bridge.flush()
    announcer = asyncio.get_running_loop().create_task(
        backend.run_announcer(transport, args.announce_interval)
    )
    print(f"backend {args.name} listening on {server.url} models={backend.models}", flush=True)
    if args.kv_events:
        base = args.kv_events_port
        ports = {m: (base + 2 * i, base + 2 * i + 1) for i, m in enumerate(backend.models)}
        for model, (pub, replay) in backend.enable_kv_events(
            host=args.host, ports=ports if base else None
        ).items():
            print(f"backend {args.name} KV events for {model}: {pub} (replay {replay})", flush=True)
    try:
        await _wait_for_signal()
    finally:
        backend.close_kv_events()
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer
        await bridge.close()
        await server.close()


def parse_kv_events(text: str) -> tuple[str, str, str, str | None]:
    """``"b1:llama=tcp://h:5557,tcp://h:5558"`` -> ``("b1", "llama", endpoint, replay)``."""
    target, sep, endpoints = text.partition("=")
    node_id, colon, model = target.partition(":")
    pub, _, replay = endpoints.partition(",")
    if not sep or not colon or not node_id or not model or "://" not in pub:
        raise argparse.ArgumentTypeError(f"not NODE:MODEL=ENDPOINT[,REPLAY_ENDPOINT]: {text!r}")
    return node_id, model, pub, replay or None


def _precise_mode(args: argparse.Namespace, gateway: Gateway) -> PreciseMode | None:
    """The gateway's precise mode from ``--precise`` / ``--kv-events`` (``None``: off)."""
    streams = getattr(args, "kv_events", None) or []
    if not args.precise and not streams:
        return None
    mode = PreciseMode(block_tokens=gateway.config.window_bytes // 4)
    for node_id, model, pub, replay in streams:
        mode.add_backend(node_id, model, pub, replay)
    mode.attach(gateway)
    return mode


def _settings(args: argparse.Namespace) -> GatewaySettings:
    return GatewaySettings(
        name=args.name,
        config=Config(
            min_prefix_match=args.min_prefix_match,
            balance_abs_threshold=args.balance_abs_threshold,
            balance_rel_threshold=args.balance_rel_threshold,
            ttl=args.ttl,
            max_entries=args.max_entries,
            max_models=args.max_models,
        ),
        body_limit=args.body_limit,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        body_timeout=args.body_timeout,
        write_timeout=args.write_timeout,
        max_buffered_bytes=args.max_buffered_bytes,
        limits=ServerLimits(
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
        ),
    )


async def run_gateway(args: argparse.Namespace) -> None:
    from examples.gateway.nats_bridge import NatsBridge

    settings = _settings(args)
    print(f"gateway {args.name}: connecting to NATS at {args.nats} ...", flush=True)
    bridge = await NatsBridge.connect(args.nats, name=f"gateway-{args.name}", **_nats_auth(args))
    transport = _trusted(args, bridge)
    gateway = Gateway(
        membership_transport=transport,
        sync_transport=transport if args.sync else None,
        settings=settings,
    )
    resync: asyncio.Task[None] | None = None
    if gateway.sync is not None and args.resync_interval > 0:
        loop = ResyncLoop(
            gateway.sync, transport, origin=args.origin or args.name, interval=args.resync_interval
        )
        loop.attach()
        resync = asyncio.get_running_loop().create_task(loop.run())
    precise = _precise_mode(args, gateway)
    server = await start_server(
        gateway.make_app(), host=args.host, port=args.port, handler_cancellation=True
    )
    if precise is not None:
        await precise.start()
    print(
        f"gateway {args.name} listening on {server.url} (cluster page: {server.url}/cluster, "
        f"sync {'on' if args.sync else 'off'}, precise {'on' if precise else 'off'})",
        flush=True,
    )
    try:
        await _wait_for_signal()
    finally:
        if resync is not None:
            resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resync
        if precise is not None:
            await precise.stop()
        await server.close()
        await bridge.close()


async def run_demo(args: argparse.Namespace) -> None:
    from prefixcache.testing import InMemoryTransport

    bus = InMemoryTransport()
    specs = [
        ("backend-a", ("demo-small", "demo-large"), 80 * 2**30),
        ("backend-b", ("demo-small", "demo-large"), 48 * 2**30),
        ("backend-c", ("demo-small",), 24 * 2**30),
    ]
    servers: list[RunningServer] = []
    announcers: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    gateway = Gateway(
        membership_transport=bus.connect(),
        settings=_settings(args),
    )
    precise = _precise_mode(args, gateway)
    gateway_server = await start_server(
        gateway.make_app(), host=args.host, port=args.port, handler_cancellation=True
    )
    backends: list[MockBackend] = []
    for name, models, vram in specs:
        backend = MockBackend(
            name=name, models=models, available_vram=vram, chunk_delay=args.chunk_delay
        )
        server = await start_server(backend.make_app(), host=args.host)
        backend.address = server.address
        servers.append(server)
        backends.append(backend)
        if precise is not None:
            for model, (pub, replay) in backend.enable_kv_events(host=args.host).items():
                precise.add_backend(name, model, pub, replay)
        connection = bus.connect()
        backend.answer_queries(connection)
        announcers.append(loop.create_task(backend.run_announcer(connection, 5.0)))
        print(f"backend {name} on {server.url} models={models}", flush=True)
    if precise is not None:
        await precise.start()
    print(f"gateway on {gateway_server.url}; cluster page {gateway_server.url}/cluster", flush=True)
    try:
        await _wait_for_signal()
    finally:
        for task in announcers:
            task.cancel()
        if precise is not None:
            await precise.stop()
        await gateway_server.close()
        for server in servers:
            await server.close()
        for backend in backends:
            backend.close_kv_events()


def _nats_auth(args: argparse.Namespace) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for the broker's authentication and TLS flags."""
    from prefixcache.transports import client_tls_context

    auth: dict[str, Any] = {}
    if args.nats_user:
        auth["user"] = args.nats_user
    if args.nats_password_file:
        auth["password"] = Path(args.nats_password_file).read_text(encoding="utf-8").strip()
    if args.nats_token_file:
        auth["token"] = Path(args.nats_token_file).read_text(encoding="utf-8").strip()
    if args.nats_nkey_seed:
        auth["nkeys_seed"] = args.nats_nkey_seed
    if args.nats_creds:
        auth["user_credentials"] = args.nats_creds
    if args.nats_tls_ca or args.nats_tls_cert:
        auth["tls"] = client_tls_context(
            ca_file=args.nats_tls_ca or None,
            cert_file=args.nats_tls_cert or None,
            key_file=args.nats_tls_key or None,
        )
    return auth


def _trust_flags(p: argparse.ArgumentParser) -> None:
    for flag, help_text in (
        ("--nats-user", "NATS user (with --nats-password-file)"),
        ("--nats-password-file", "file holding the NATS user's password"),
        ("--nats-token-file", "file holding a NATS token"),
        ("--nats-nkey-seed", "NKey seed file"),
        ("--nats-creds", "NATS credentials (.creds) file"),
        ("--nats-tls-ca", "CA file that signed the NATS server's certificate (TLS on)"),
        ("--nats-tls-cert", "client certificate for NATS TLS"),
        ("--nats-tls-key", "client key for NATS TLS"),
    ):
        p.add_argument(flag, default="", help=help_text)
    p.add_argument(
        "--signing-key-file",
        default="",
        help="sign NATS messages with the shared keys in this file ('key-id secret' lines, "
        "the first active; see docs/security.md)",
    )
    p.add_argument(
        "--require-signatures",
        action="store_true",
        help="drop unsigned, forged, stale and replayed NATS messages",
    )
    p.add_argument("--origin", default="", help="this process's name in signatures (--name)")
    p.add_argument(
        "--peer-rate",
        type=float,
        default=0.0,
        help="messages per second one origin may send (burst 5x; 0 = no limit)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backend", help="run one mock OpenAI-compatible backend")
    b.add_argument("--name", required=True, help="replica name (also its node id)")
    b.add_argument("--host", default="127.0.0.1")
    b.add_argument("--port", type=int, default=0, help="0 = any free port")
    b.add_argument("--advertise", default="", help="host:port to announce (default: bound)")
    b.add_argument("--models", default="", help="comma-separated models (empty: any)")
    b.add_argument(
        "--vram",
        type=parse_size,
        default=parse_size("24GiB"),
        help="free VRAM to announce, e.g. 24GiB",
    )
    b.add_argument("--nats", default="nats://127.0.0.1:4222")
    _trust_flags(b)
    b.add_argument("--announce-interval", type=float, default=DEFAULT_ANNOUNCE_INTERVAL)
    b.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between SSE chunks")
    b.add_argument(
        "--kv-events",
        action="store_true",
        help="publish the emulated KV cache as engine events over ZMQ (one stream per model)",
    )
    b.add_argument(
        "--kv-events-port",
        type=int,
        default=0,
        help="first port of the KV streams: model i on +2i, its replay socket on +2i+1 "
        "(0 = free ports)",
    )

    for name, help_text in (
        ("gateway", "run one gateway (backends found over NATS)"),
        ("demo", "3 mock backends + 1 gateway in one process, no broker"),
    ):
        g = sub.add_parser(name, help=help_text)
        g.add_argument("--name", default=name)
        g.add_argument("--host", default="127.0.0.1")
        g.add_argument("--port", type=int, default=8080)
        g.add_argument(
            "--body-limit",
            type=parse_size,
            default=DEFAULT_BODY_LIMIT,
            help="request body cap in bytes (413 above it)",
        )
        g.add_argument("--connect-timeout", type=float, default=5.0)
        g.add_argument("--read-timeout", type=float, default=120.0)
        g.add_argument(
            "--header-timeout",
            type=float,
            default=DEFAULT_HEADER_TIMEOUT,
            help="seconds a client has to send the request line and headers",
        )
        g.add_argument(
            "--body-timeout",
            type=float,
            default=DEFAULT_BODY_TIMEOUT,
            help="seconds the whole request body may take to arrive (408 beyond)",
        )
        g.add_argument(
            "--write-timeout",
            type=float,
            default=DEFAULT_WRITE_TIMEOUT,
            help="seconds a client may leave a response chunk unread before it is cut off",
        )
        g.add_argument(
            "--idle-timeout",
            type=float,
            default=DEFAULT_IDLE_TIMEOUT,
            help="seconds a kept-alive connection may wait for its next request",
        )
        g.add_argument(
            "--max-connections",
            type=int,
            default=DEFAULT_MAX_CONNECTIONS,
            help="client connections open at once (more are closed at once)",
        )
        g.add_argument(
            "--max-buffered-bytes",
            type=parse_size,
            default=DEFAULT_MAX_BUFFERED_BYTES,
            help="request body bytes buffered by all requests at once (503 beyond)",
        )
        g.add_argument(
            "--min-prefix-match",
            type=float,
            default=DEFAULT_CONFIG.min_prefix_match,
            help="share of the prompt's blocks a warm backend must hold to be preferred",
        )
        g.add_argument(
            "--balance-abs-threshold",
            type=int,
            default=DEFAULT_CONFIG.balance_abs_threshold,
            help="a warm backend is skipped when it has more than the least loaded + this",
        )
        g.add_argument(
            "--balance-rel-threshold", type=float, default=DEFAULT_CONFIG.balance_rel_threshold
        )
        g.add_argument(
            "--ttl",
            type=float,
            default=DEFAULT_CONFIG.ttl,
            help="seconds a prefix stays in the index without being seen again",
        )
        g.add_argument(
            "--max-entries",
            type=int,
            default=DEFAULT_CONFIG.max_entries,
            help="most index entries per model; beyond it the least recently seen are "
            "evicted (0: no cap)",
        )
        g.add_argument(
            "--max-models",
            type=int,
            default=DEFAULT_CONFIG.max_models,
            help="most models the index tracks at once; a further model is routed without "
            "affinity until one empties (0: no cap)",
        )
        g.add_argument(
            "--precise",
            action="store_true",
            help="route on the backends' KV-cache events (examples.gateway.kv_events)",
        )
        if name == "gateway":
            g.add_argument(
                "--kv-events",
                action="append",
                default=[],
                type=parse_kv_events,
                metavar="NODE:MODEL=ENDPOINT[,REPLAY]",
                help="a backend's KV-event stream for one model (repeat per backend and "
                "model; implies --precise)",
            )
            g.add_argument("--nats", default="nats://127.0.0.1:4222")
            _trust_flags(g)
            g.add_argument(
                "--resync-interval",
                type=float,
                default=0.0,
                help="with --sync: seconds between digest comparisons with the other "
                "gateways; drift pulls a snapshot (0 = off; see docs/security.md)",
            )
            g.add_argument(
                "--sync",
                action="store_true",
                help="share prefix affinity with other gateways over NATS",
            )
        else:
            g.add_argument("--chunk-delay", type=float, default=0.05)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runner = {"backend": run_backend, "gateway": run_gateway, "demo": run_demo}[args.command]
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(runner(args))
    except ConfigError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
