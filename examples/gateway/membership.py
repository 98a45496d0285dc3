"""Which backends exist: ``NodeData`` announcements received through a transport.

Backends announce their :class:`clusterrouting.NodeData` JSON on
:data:`examples.gateway.mock_backend.NODE_SUBJECT` every few seconds; :class:`Membership`
keeps the latest record per node id. Online-ness is *not* decided here: the gateway asks
``NodeData.is_online_at(now)`` at each pick (through ``build_candidates``), so a backend that
stops announcing drops out 40 s after its last announcement without any timer.

Memory and per-request cost are bounded: at most ``max_nodes`` node ids are kept (default
:data:`DEFAULT_MAX_NODES`). When an announcement from a new id arrives and the table is full,
nodes not heard from for ``forget_after`` seconds (default 300 s, far past the 40 s online
window: they are not routable anyway) are forgotten first; if none is, the announcement is
dropped and counted in :attr:`Membership.dropped_full` (a known node's re-announcement is always
applied). Without signed announcements anyone on the broker can announce; the cap keeps a
flood of invented ids from growing the gateway without bound.

A backend the gateway failed to reach (connection refused, reset, timeout) is **marked failed**
and skipped until it **announces again**: the next announcement received after the mark clears
it. Receive order is used, not timestamps, so no clock comparison across machines is needed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from clusterrouting import NodeData, NodeDataDecodeError

__all__ = ["DEFAULT_FORGET_AFTER", "DEFAULT_MAX_NODES", "FailureMark", "Membership"]

#: Announcements larger than this are dropped (a NodeData document is a few hundred bytes).
MAX_ANNOUNCEMENT_BYTES = 64 * 1024
#: Node ids a :class:`Membership` keeps at most.
DEFAULT_MAX_NODES = 4096
#: Seconds after its last announcement a node may be forgotten to make room.
DEFAULT_FORGET_AFTER = 300.0


class FailureMark:
    """Why and when (gateway clock) a backend was marked failed."""

    __slots__ = ("at", "reason")

    def __init__(self, at: float, reason: str) -> None:
        self.at = at
        self.reason = reason


class Membership:
    """The latest ``NodeData`` per node id plus failure marks, at most ``max_nodes`` ids
    (see the module docstring); ``clock`` (monotonic seconds) times the receipts.

    Thread-safe: transport adapters may deliver announcements on their own thread.
    """

    def __init__(
        self,
        *,
        max_nodes: int = DEFAULT_MAX_NODES,
        forget_after: float = DEFAULT_FORGET_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_nodes < 1 or not forget_after > 0:
            raise ValueError(f"max_nodes={max_nodes} must be >= 1, forget_after > 0")
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeData] = {}
        self._heard: dict[str, float] = {}  # node id -> receipt time, oldest first
        self._failed: dict[str, FailureMark] = {}
        self.max_nodes = max_nodes
        self.forget_after = forget_after
        self.clock = clock
        self.announcements = 0
        self.dropped = 0
        self.dropped_full = 0

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
        now = self.clock()
        with self._lock:
            if node.id not in self._nodes and len(self._nodes) >= self.max_nodes:
                self._forget_before(now - self.forget_after)
                if len(self._nodes) >= self.max_nodes:
                    self.dropped_full += 1
                    return
            self.announcements += 1
            self._nodes[node.id] = node
            self._heard.pop(node.id, None)
            self._heard[node.id] = now
            self._failed.pop(node.id, None)

    def _forget_before(self, cutoff: float) -> None:
        # _heard is in receipt order, so the silent nodes are at its front.
        for node_id, heard in list(self._heard.items()):
            if heard >= cutoff:
                break
            del self._heard[node_id]
            self._nodes.pop(node_id, None)
            self._failed.pop(node_id, None)

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
