"""Sync's public surface: exports, structural protocols, lazy client imports."""

from __future__ import annotations

import subprocess
import sys

import prefixcache
from prefixcache import Index, Provider, Sync
from prefixcache.testing import InMemoryTransport, RecordingPublisher

SYNC_NAMES = {
    "AsyncPublisher",
    "AsyncTransport",
    "Clock",
    "EVENT_SUBJECTS",
    "EventDecodeError",
    "EvictionTicker",
    "INVALIDATE_SUBJECT",
    "InvalidateEvent",
    "MAX_EVENT_BYTES",
    "MAX_EVENT_CHAIN",
    "MessageHandler",
    "OBSERVE_SUBJECT",
    "ObserveEvent",
    "Publisher",
    "Snapshot",
    "SnapshotDecodeError",
    "SnapshotEntry",
    "Sync",
    "SyncStats",
    "Transport",
    "apply_snapshot",
    "decode_event",
    "digest",
    "digests",
    "eviction_interval",
    "export_snapshot",
}


def test_sync_names_are_exported() -> None:
    assert set(prefixcache.__all__) >= SYNC_NAMES
    assert all(hasattr(prefixcache, n) for n in SYNC_NAMES)


def test_sync_is_a_provider_and_wraps_any_provider() -> None:
    # The decorator is itself a provider, so it can wrap another Sync or be wrapped.
    inner = Sync(Index(), RecordingPublisher())
    assert isinstance(inner, Provider)
    outer = Sync(inner, InMemoryTransport().connect())
    assert outer.observe("m", (1,), prefixcache.ReplicaKey("n"), 0.0) is True


def test_importing_prefixcache_and_transport_modules_loads_no_client_library() -> None:
    code = (
        "import sys, prefixcache, prefixcache.testing, prefixcache.transports.nats, "
        "prefixcache.transports.redis; "
        "print(sorted(m for m in ('nats', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Counterfactual: a top-level `import nats` would make the extra mandatory.
    assert out.stdout.strip() == "[]"
