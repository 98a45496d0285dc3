"""The age heap of :class:`prefixcache.RadixTree`: its batches by ``last_seen``, for TTL
eviction and the ``max_entries`` LRU.

One entry per batch with live nodes, ``(last_seen, depth of the batch's shallowest live
node -- a lower bound once nodes have left it --, seq, batch, depth of its deepest node)``;
deletion is lazy (an entry whose batch was re-stamped or emptied is skipped, and the heap is
compacted when stale entries pile up). A batch's live nodes are always the deepest ``live``
nodes of its path (a later insert takes a *prefix* of it, the LRU evicts its shallowest
first), so the entries order batches exactly as the LRU orders nodes, (``last_seen``,
depth, insert seq): equal ``last_seen`` values need no regrouping.

Not thread-safe on its own: the tree calls it under its lock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import TypeAlias

from prefixcache._weights import Batch, live_at

__all__ = ["AgeHeap", "Aged"]

Aged: TypeAlias = tuple[float, int, int, Batch, int]
"""An entry: ``(last_seen, depth of the shallowest live node, seq, batch, depth of the
deepest node)``."""


class AgeHeap:
    """Batches by age (see the module docstring)."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[Aged] = []

    def __len__(self) -> int:
        return len(self.entries)

    def push(self, b: Batch) -> None:
        """Age batch ``b``, just written: every node of its key is its own, so its
        shallowest live node has depth 1."""
        heapq.heappush(self.entries, (b.t, 1, b.seq, b, b.live))

    def pop_expired(self, now: float, ttl: float) -> list[Batch]:
        """Remove and return every current batch not live at ``now``, oldest first."""
        entries = self.entries
        out = []
        while entries and not live_at(entries[0][0], now, ttl):
            _, _, seq, b, _ = heapq.heappop(entries)
            if b.live and b.seq == seq:
                out.append(b)
        return out

    def compact(self) -> None:
        """Drop the stale entries."""
        self.entries = [e for e in self.entries if e[3].live and e[3].seq == e[2]]
        heapq.heapify(self.entries)

    def entry_of(self, b: Batch) -> list[Aged]:
        """The current entries of ``b`` (exactly one for a live batch: for checks)."""
        return [e for e in self.entries if e[3] is b and e[2] == b.seq]

    def evict_lru(self, excess: Callable[[], int], evict: Callable[[Batch, int], None]) -> None:
        """While ``excess()`` is positive, ``evict(b, k)`` the ``k`` shallowest live nodes
        of the batch whose nodes come next in (last_seen, depth, seq) order.

        The heap is a k-way merge of the batches' node lists: the entry on top stands for
        the next node to go, its batch's shallowest live node (depth ``last - live + 1``).
        An entry whose depth is behind (nodes were taken from its batch since) is re-keyed
        when it surfaces. The popped batch then loses, in one step, every node that
        precedes the next entry. So each evicted node costs amortised O(1) heap
        operations, O(log n), whatever the number of equal ``last_seen`` values.
        """
        age = self.entries
        over = excess()
        while over > 0 and age:
            t, d, seq, b, last = age[0]
            if b.seq != seq or not b.live:
                heapq.heappop(age)  # stale: its batch was re-stamped or emptied
                continue
            first = last - b.live + 1
            if first != d:
                heapq.heapreplace(age, (t, first, seq, b, last))
                continue
            k = min(b.live, over)
            if len(age) > 1:
                # The next entry: the smaller child of the top. b's nodes at depths first,
                # first + 1, ... precede it while (depth, seq) is smaller than its own.
                nxt = age[1] if len(age) == 2 or age[1] < age[2] else age[2]
                if nxt[0] == t:
                    k = min(k, nxt[1] - first + (seq < nxt[2]))
            evict(b, k)
            if b.live:
                heapq.heapreplace(age, (t, first + k, seq, b, last))
            else:
                heapq.heappop(age)
            over = excess()
