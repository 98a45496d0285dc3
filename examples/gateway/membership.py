"""Which backends exist: ``NodeData`` announcements received through a transport.

Backends announce their :class:`clusterrouting.NodeData` JSON on
:data:`examples.gateway.mock_backend.NODE_SUBJECT` every few seconds; :class:`Membership`
keeps the latest record per node id. Online-ness is *not* decided here: the gateway asks
``NodeData.is_online_at(now)`` at each pick (through ``build_candidates``), so a backend that
stops announcing drops out 40 s after its last announcement without any timer.

A backend the gateway failed to reach (connection refused, reset, timeout) is **marked failed**
and skipped until it **announces again**: the next announcement received after the mark clears
it. Receive order is used, not timestamps, so no clock comparison across machines is needed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from clusterrouting import NodeData, NodeDataDecodeError

__all__ = ["FailureMark", "Membership"]

#: Announcements larger than this are dropped (a NodeData document is a few hundred bytes).
MAX_ANNOUNCEMENT_BYTES = 64 * 1024


class FailureMark:
    """Why and when (gateway clock) a backend was marked failed."""

    __slots__ = ("at", "reason")

    def __init__(self, at: float, reason: str) -> None:
        self.at = at
        self.reason = reason


class Membership:
    """The latest ``NodeData`` per node id plus failure marks.

    Thread-safe: transport adapters may deliver announcements on their own thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeData] = {}
        self._failed: dict[str, FailureMark] = {}
        self.announcements = 0
        self.dropped = 0

    def handle_announcement(self, payload: bytes) -> None:
        """Apply one announcement. Never raises: malformed input is dropped and counted."""
        if len(payload) > MAX_ANNOUNCEMENT_BYTES:
            with self._lock:
                self.dropped += 1
            return
        try:
            node = NodeData.from_json(payload)
        except (NodeDataDecodeError, ValueError, TypeError):
            with self._lock:
                self.dropped += 1
            return
        if not node.id:
            with self._lock:
                self.dropped += 1
            return
        with self._lock:
            self.announcements += 1
            self._nodes[node.id] = node
            self._failed.pop(node.id, None)

    def add(self, node: NodeData) -> None:
        """Apply a record directly (same effect as receiving its announcement)."""
        self.handle_announcement(node.to_json().encode())

    def nodes(self) -> list[NodeData]:
        """Every known node (online or not, failed or not), sorted by id."""
        with self._lock:
            return [self._nodes[k] for k in sorted(self._nodes)]

    def routable_nodes(self) -> list[NodeData]:
        """Known nodes not marked failed (online filtering is the caller's, at its ``now``)."""
        with self._lock:
            return [self._nodes[k] for k in sorted(self._nodes) if k not in self._failed]

    def get(self, node_id: str) -> NodeData | None:
        with self._lock:
            return self._nodes.get(node_id)

    def mark_failed(self, node_id: str, *, at: float, reason: str) -> bool:
        """Mark ``node_id`` failed; returns True if it was not already marked."""
        with self._lock:
            fresh = node_id not in self._failed
            self._failed[node_id] = FailureMark(at, reason)
            return fresh

    def failure(self, node_id: str) -> FailureMark | None:
        with self._lock:
            return self._failed.get(node_id)

    def handler(self) -> Callable[..., None]:
        """A transport handler that accepts ``(payload)`` or ``(subject, payload)``."""

        def on_message(*args: object) -> None:
            payload = args[-1]
            if isinstance(payload, bytes | bytearray | memoryview):
                self.handle_announcement(bytes(payload))
            else:
                with self._lock:
                    self.dropped += 1

        return on_message
