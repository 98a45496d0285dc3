"""Batches, owners and the per-owner weight sums of :class:`prefixcache.RadixTree`.

The *what*: ``weight(value, now)`` is the sum over the value's live nodes of ``0.5 ** (age /
half_life)``. The *how*, kept here so the tree only says which nodes change hands:

* Every insert writes one :class:`Batch`: the owner, ``last_seen`` (``t``) and insert
  sequence number shared by the nodes it set. A node's owner and age are its batch's.
* Each :class:`Owner` keeps ``live_sum = sum(live * factor)`` over its batches counted at
  the *watermark* ``W`` (the newest ``now`` a weight query has seen), where a batch's
  ``factor = 2 ** ((t - t0) / half_life)``. A weight then costs O(1) plus amortised O(1)
  expiry work: ``weight(now) = live_sum * 2 ** ((t0 - now) / half_life)``. The origin
  ``t0`` is shared by every owner (one ``pow`` scales them all) and rebased before a factor
  can overflow.
* Rounding: every change of a sum counts one operation, whose rounding error is at most
  ``2 * 2**-53 * peak`` (``peak``: the largest sum since the last exact one); a sum is
  recomputed exactly once ``ops * peak > DRIFT * live_sum``, so its relative error stays
  below ``2 * 2**-53 * DRIFT`` (4.4e-12). With the rounding of the factors and of the
  scale (their exponents are rounded, a few 1e-13 relative at most) a weight that is a
  normal float stays within 1e-11 relative of the plain per-node sum of ``0.5 ** (age /
  half_life)``; one that is not is summed term by term as that sum is.
* Range: while no factor is below ``2 ** -400`` and the scale exponent ``(t0 - now) /
  half_life`` is within +-``EXACT_EXP``, every nonzero weight is a normal float and the
  tree scales the sums by one shared ``2 ** e`` (the fast path). Otherwise each weight is
  computed on its own: ``live_sum * 2 ** e`` split as ``ldexp(live_sum * 2 ** frac, int)``
  so that ``2 ** e`` cannot flush to zero or lose bits as a subnormal; a weight that would
  not be a normal float (so a few lost bits would matter, or it may round to zero), or
  whose sum is so small that factors gone subnormal could matter in it, is summed term by
  term over the owner's batches, as is every weight of a query with ``now < W`` (a clock
  going backwards) or with a scale exponent of ``EXACT_EXP`` or more.
* Expiry at the watermark: counted batches (``ttl > 0``) wait in time order, in a FIFO when
  pushed in order, else in a heap; :meth:`Weights.advance` uncounts those that expire.

Not thread-safe on its own: the tree calls it under its lock.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections import deque
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from prefixcache._keys import decay

__all__ = ["DRIFT", "EXACT_EXP", "REBASE", "Batch", "Owner", "Weights", "live_at"]

REBASE = 512.0
"""Rebase the origin when a factor would exceed ``2 ** REBASE``."""
EXACT_EXP = 600.0
"""Scale exponents beyond this are answered by exact sums."""
DRIFT = 2e4
"""Recompute a sum when ``ops * peak > DRIFT * live_sum`` (bound ``2 * 2**-53 * DRIFT``,
4.4e-12 relative)."""
_TINY_EXP = -400.0  # below 2**-400 a factor times 2**-600 can leave the normal range
_MIN_NORMAL = sys.float_info.min
_SUM_FLOOR = 2.0**-960  # below this a sum may owe a relative 2**-114 per node to factors
# that lost bits as subnormals (each is off by at most 2**-1074): summed term by term


_live_sum = attrgetter("live_sum")


def live_at(t: float, now: float, ttl: float) -> bool:
    """Whether an entry last seen at ``t`` is live at ``now``: the one liveness rule
    (``ttl == 0`` never expires; an entry exactly ``ttl`` old is live).

    >>> live_at(0.0, 10.0, 10.0), live_at(0.0, 10.5, 10.0), live_at(0.0, 1e9, 0.0)
    (True, False, True)
    """
    return not (ttl > 0 and now - t > ttl)


class Owner:
    """Per-value bookkeeping: its batches and its incrementally maintained weight sum."""

    __slots__ = ("batches", "live_sum", "ops", "peak", "value")

    def __init__(self, value: object) -> None:
        self.value = value
        self.batches: dict[Batch, None] = {}
        self.live_sum = 0.0
        self.ops = 0  # changes since the last exact sum
        self.peak = 0.0  # the largest sum since then


class Batch:
    """The nodes set by one insert (or taken over by a later one).

    Attributes:
        owner: its :class:`Owner`.
        t: ``last_seen`` of its nodes.
        seq: the insert sequence number (tells stale heap entries apart).
        factor: ``2 ** ((t - t0) / half_life)``, each live node's term in the owner's sum.
        live: nodes still in this batch.
        nodes: its nodes in depth order, some of them since taken by later batches.
        counted: live at the watermark, i.e. included in the owner's sum.
    """

    __slots__ = ("counted", "factor", "live", "nodes", "owner", "seq", "t")

    def __init__(
        self, owner: Owner, t: float, seq: int, factor: float, counted: bool, nodes: list[int]
    ) -> None:
        self.owner = owner
        self.t = t
        self.seq = seq
        self.factor = factor
        self.counted = counted
        self.nodes = nodes
        self.live = 0


_Entry = tuple[float, int, Batch]


class Weights:
    """The owners of a tree and their weight sums (see the module docstring)."""

    __slots__ = (
        "batches",
        "by_id",
        "expiring",
        "expiring_in_order",
        "generation",
        "half_life",
        "owners",
        "t0",
        "tiny",
        "ttl",
        "watermark",
    )

    def __init__(self, ttl: float, half_life: float) -> None:
        self.ttl = ttl
        self.half_life = half_life
        self.owners: dict[Any, Owner] = {}
        # id(value object) -> owner, for the exact value objects owners hold: resolves
        # candidate keys without calling their (Python-level) __hash__. Ids cannot be reused
        # while the owner keeps its value alive.
        self.by_id: dict[int, Owner] = {}
        self.generation = 0  # bumped whenever an owner is created or dropped
        self.batches = 0  # batches with live nodes
        self.watermark = -math.inf  # batches are counted iff live at the watermark
        self.t0 = 0.0  # the origin of every factor
        self.tiny = False  # some factor is < 2**-400: check sums for tiny values
        self.expiring: list[_Entry] = []  # counted batches (ttl > 0) pushed out of order
        self.expiring_in_order: deque[_Entry] = deque()  # ... and those pushed in order

    # ------------------------------------------------------------------ owners
    def owner_for(self, value: object) -> Owner:
        """The owner of ``value``, created if new (by identity first, then equality)."""
        o = self.by_id.get(id(value))
        if o is None:
            o = self.owners.get(value)
            if o is None:
                o = self.owners[value] = Owner(value)
                self.by_id[id(value)] = o
                self.generation += 1
        return o

    def owners_of(self, values: Sequence[Any]) -> list[Owner | None]:
        """The owner of each value (``None`` where it owns nothing)."""
        owners = list(map(self.by_id.get, map(id, values)))
        if None in owners:
            get = self.owners.get
            owners = [o if o is not None else get(v) for o, v in zip(owners, values, strict=True)]
        return owners

    def attach(self, b: Batch) -> None:
        """Give the new batch ``b`` to its owner."""
        b.owner.batches[b] = None
        self.batches += 1

    def move(self, b: Batch, o: Owner) -> None:
        """Hand batch ``b`` (not counted) to owner ``o``."""
        old = b.owner
        if old is o:
            return
        del old.batches[b]
        self._drop_if_empty(old)
        o.batches[b] = None
        b.owner = o

    def retire(self, b: Batch) -> None:
        """``b`` has no live nodes left: forget it (and its owner, if that was its last)."""
        o = b.owner
        del o.batches[b]
        self.batches -= 1
        b.nodes = []
        b.counted = False
        self._drop_if_empty(o)

    def _drop_if_empty(self, o: Owner) -> None:
        if not o.batches:
            del self.owners[o.value]
            del self.by_id[id(o.value)]
            self.generation += 1

    # ------------------------------------------------------------------ sums
    def factor(self, t: float) -> float:
        """``2 ** ((t - t0) / half_life)`` (1.0 without half-life), rebasing ``t0`` first if
        it would exceed ``2 ** REBASE``."""
        hl = self.half_life
        if hl <= 0:
            return 1.0
        e = (t - self.t0) / hl
        if _TINY_EXP <= e <= REBASE:
            return float(2.0**e)
        if e > REBASE or e != e:
            self.rebase(t)
            return 1.0
        # A sum of such terms times a scale near 2**-600 can leave the normal range: weights
        # leave the fast path until a rebase recomputes every factor.
        self.tiny = True
        return 2.0**e if e > -1074.0 else 0.0

    def rebase(self, t0: float) -> None:
        """Move the origin to ``t0``: every factor and sum recomputed, and whether some
        factor is below ``2 ** -400``."""
        self.t0 = t0
        tiny = False
        hl = self.half_life
        for o in self.owners.values():
            for b in o.batches:
                e = (b.t - t0) / hl
                b.factor = 2.0**e if e > -1074.0 else 0.0
                tiny = tiny or e < _TINY_EXP
            self.resum(o)
        self.tiny = tiny

    def add(self, o: Owner, delta: float) -> None:
        """Add ``delta`` to ``o``'s sum; recompute it exactly if its rounding bound grew."""
        s = o.live_sum = o.live_sum + delta
        if self.half_life <= 0:
            return
        ops = o.ops = o.ops + 1
        if s > o.peak:
            o.peak = s
        if ops * o.peak > DRIFT * s:
            self.resum(o)

    @staticmethod
    def resum(o: Owner) -> None:
        """Recompute ``o.live_sum`` exactly from its counted batches."""
        s = 0.0
        for b in o.batches:
            if b.counted:
                s += b.live * b.factor
        o.live_sum = s
        o.ops = 0
        o.peak = s

    def count(self, b: Batch) -> None:
        """``b`` (with its live nodes set) enters its owner's sum if it is counted, and waits
        for its expiry at the watermark."""
        if not b.counted:
            return
        self.add(b.owner, b.live * b.factor)
        if self.ttl > 0:
            entry = (b.t, b.seq, b)
            q = self.expiring_in_order
            if not q or b.t >= q[-1][0]:
                q.append(entry)  # in time order (seq grows): a FIFO, O(1) pops
            else:
                heapq.heappush(self.expiring, entry)

    def drop(self, b: Batch, nodes: int) -> None:
        """``nodes`` of ``b``'s live nodes leave it: ``b.live`` falls first, then its
        owner's sum (``b`` is uncounted once none is left), so a re-sum never counts them."""
        b.live -= nodes
        if b.counted:
            if not b.live:
                b.counted = False
            self.add(b.owner, -nodes * b.factor)

    def withdraw(self, b: Batch) -> None:
        """``b`` leaves its owner's sum whole (to be re-stamped and counted again):
        uncounted first, so a re-sum triggered by the change cannot count it."""
        if b.counted:
            b.counted = False
            self.add(b.owner, -b.live * b.factor)

    def counted_at(self, t: float) -> bool:
        """Whether a batch last seen at ``t`` is live at the watermark."""
        return live_at(t, self.watermark, self.ttl)

    def advance(self, now: float) -> None:
        """Move the watermark to ``now`` (>= current), uncounting batches that expire."""
        self.watermark = now
        ttl = self.ttl
        if ttl <= 0:
            return
        heap = self.expiring
        q = self.expiring_in_order
        # Pop in (t, seq) order from the in-order queue and the heap (keys are unique).
        while True:
            if heap and (not q or heap[0] < q[0]):
                if live_at(heap[0][0], now, ttl):
                    break
                _, seq, b = heapq.heappop(heap)
            elif q and not live_at(q[0][0], now, ttl):
                _, seq, b = q.popleft()
            else:
                break
            if b.counted and b.seq == seq and b.live:
                b.counted = False
                self.add(b.owner, -b.live * b.factor)

    def exact(self, o: Owner, now: float) -> float:
        """``o``'s weight at ``now`` summed term by term (the slow, always-right path)."""
        ttl = self.ttl
        hl = self.half_life
        s = 0.0
        for b in o.batches:
            if live_at(b.t, now, ttl):
                s += b.live * (decay((now - b.t) / hl) if hl > 0 else 1.0)
        return s

    def sums(self, owners: Sequence[Owner | None], now: float) -> tuple[list[float], float]:
        """``(sums, scale)``: each owner's weight at ``now`` is ``sums[i] * scale`` (0.0 for
        ``None``). ``scale`` is shared, so ``sums`` already orders the owners by weight;
        it is 1.0 where the sums are exact weights. Moves the watermark forward."""
        if now > self.watermark:
            self.advance(now)
        if now < self.watermark:
            return [0.0 if o is None else self.exact(o, now) for o in owners], 1.0
        if None in owners:
            vals = [0.0 if o is None else o.live_sum for o in owners]
        else:
            vals = list(map(_live_sum, owners))
        hl = self.half_life
        if hl <= 0:
            return vals, 1.0
        e = (self.t0 - now) / hl
        if not self.tiny and -EXACT_EXP < e < EXACT_EXP:
            return vals, 2.0**e
        scaled = self.scaled
        return [
            0.0 if o is None else scaled(o, s, e, now) for o, s in zip(owners, vals, strict=True)
        ], 1.0

    def weighs(self, o: Owner, now: float) -> bool:
        """Whether ``o``'s weight at ``now`` is positive (what :meth:`sums` would give as a
        nonzero weight, without building lists). Moves the watermark forward."""
        if now > self.watermark:
            self.advance(now)
        if now >= self.watermark and not self.tiny:
            # The fast path: a weight is live_sum times a positive normal scale.
            hl = self.half_life
            if hl <= 0 or -EXACT_EXP < (self.t0 - now) / hl < EXACT_EXP:
                return o.live_sum > 0.0
        return self.sums((o,), now)[0][0] > 0.0

    def scaled(self, o: Owner, s: float, e: float, now: float) -> float:
        """``o``'s weight at ``now`` from its sum ``s = o.live_sum`` and the scale exponent
        ``e = (t0 - now) / half_life``, off the fast path: ``s * 2 ** e`` where that is a
        normal float and ``s`` is at least ``2 ** -960`` (factors that went subnormal or to
        zero cost such a sum under a relative ``2 ** -114`` per node), else :meth:`exact`.

        ``2 ** e`` alone is subnormal (bits lost) or zero below ``e = -1022`` even where
        the weight is a normal float, so from ``e = -1000`` down ``e`` is split, exactly,
        into its integer part ``n`` and a fraction in ``[0, 1)``, and the weight is
        ``ldexp(s * 2 ** frac, n)``: one rounding, as in the plain product.

        >>> w = Weights(ttl=0.0, half_life=1.0)
        >>> w.scaled(w.owner_for("b"), 2.0**500, -1078.0, 0.0) == 2.0**-578
        True
        """
        if e < EXACT_EXP and s >= _SUM_FLOOR:
            w: float
            if e > -1000.0:
                w = s * 2.0**e
            else:
                n = math.floor(e)
                w = math.ldexp(s * 2.0 ** (e - n), n)
            if w >= _MIN_NORMAL:
                return w
        return self.exact(o, now)

    def clear_expiring(self) -> None:
        """Drop stale expiry entries (batches no longer counted, live or current)."""
        self.expiring = [e for e in self.expiring if _current(e) and e[2].counted]
        heapq.heapify(self.expiring)
        self.expiring_in_order = deque(
            e for e in self.expiring_in_order if _current(e) and e[2].counted
        )

    def pending(self) -> int:
        """Expiry entries held (stale ones included)."""
        return len(self.expiring) + len(self.expiring_in_order)


def _current(entry: _Entry) -> bool:
    """Whether a heap entry still describes its batch (live, not re-stamped since)."""
    b = entry[2]
    return bool(b.live) and b.seq == entry[1]
