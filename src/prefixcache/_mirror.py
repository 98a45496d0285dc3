"""What a router remembers of its own dispatches, for :func:`~prefixcache.pick_lowest_cost`.

* :class:`KvCacheMirror`, the router's approximation of each replica's KV cache: an LRU of
  prefix-chained block hashes per :class:`ReplicaKey`, bounded by the replica's KV capacity
  in blocks less what its running requests hold (routers that receive the engines' KV
  events know this exactly; this mirrors it from what the router itself dispatched);
* :class:`RunningOutput`, the output blocks a running request holds there, estimated from
  the requests completed so far (for :meth:`KvCacheMirror.start`'s ``private_blocks``);
* :class:`DispatchWindow`, how many of the router's last N dispatches went to each replica
  (its recent share of the traffic).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_amount, check_number
from prefixcache._types import ReplicaKey

__all__ = ["DispatchWindow", "KvCacheMirror", "RunningOutput"]


class DispatchWindow:
    """The router's last ``size`` dispatches: how many went to each replica.

    ``record(key)`` appends a dispatch (the oldest falls out once ``size`` are held);
    ``count(key)`` is the key's dispatches in the window. O(1) each; memory O(size).
    Size it to a few hundred dispatches per replica (the replay uses 256 x replicas): long
    enough that one session's turns are noise, short enough to follow a replica joining.

    Not thread-safe: guard it with the router's lock.

    Raises (constructor):
        InvalidRecordError: ``size`` is not an ``int >= 1``.

    >>> w = DispatchWindow(size=3)
    >>> for k in ("a", "a", "b", "a"):
    ...     w.record(ReplicaKey(k))
    >>> w.count(ReplicaKey("a")), w.count(ReplicaKey("b")), len(w)
    (2, 1, 3)
    """

    __slots__ = ("_counts", "_recent", "_size")

    def __init__(self, *, size: int) -> None:
        if type(size) is not int or size < 1:
            raise InvalidRecordError("size", size, "must be an int >= 1")
        self._size = size
        self._recent: deque[ReplicaKey] = deque()
        self._counts: dict[ReplicaKey, int] = {}

    @property
    def size(self) -> int:
        """The window length in dispatches."""
        return self._size

    def __len__(self) -> int:
        return len(self._recent)

    def record(self, key: ReplicaKey) -> None:
        """Count one dispatch to ``key``, dropping the oldest once the window is full."""
        self._recent.append(key)
        self._counts[key] = self._counts.get(key, 0) + 1
        if len(self._recent) > self._size:
            old = self._recent.popleft()
            n = self._counts[old] - 1
            if n:
                self._counts[old] = n
            else:
                del self._counts[old]

    def count(self, key: ReplicaKey) -> int:
        """Dispatches to ``key`` in the window (0 if none)."""
        return self._counts.get(key, 0)


_MAX_BLOCKS = 2**53
"""Output blocks :meth:`RunningOutput.record` accepts per request (exact as a float)."""


class RunningOutput:
    """The output blocks a running request holds, estimated from the requests completed so far.

    A request's output takes KV blocks beside the cached prefixes while it runs, and the
    requests running at any moment are more often long ones: one that decodes 4 blocks runs
    about four times as long as one that decodes 1. So the plain mean of the completed
    requests' output blocks undercounts what the running ones hold (by about 40 % on the
    replay's eviction case, docs/replay.md). ``record(blocks, seconds=...)`` adds a
    completed request that held ``blocks`` output blocks for ``seconds`` (from when the
    router began counting them, e.g. its first token, to its completion). :attr:`estimate`
    weighs each by its seconds: ``sum(blocks * seconds) / sum(seconds)``, the time average
    per running request (Little's law) for an engine that holds a request's whole output
    from then on, as one that reserves it when it admits the request does (the replay's
    engine; one that allocates the blocks as it generates them, as vLLM does, holds about
    half as many on average over a decode, and this overcounts there: a gateway streaming
    from such an engine can instead ``start(key, (), private_blocks=1)`` each time a
    response passes a block boundary and ``finish`` them all at its end). While every record
    lasted 0 s it is the plain mean of their blocks, and 0.0 before the first.
    :meth:`take` gives the whole blocks to count for the next running request: over any run
    of takes their sum stays within one block below the sum of the estimates they were
    taken at (the fraction carries to the next take), so 1.4 blocks becomes 1 or 2 in the
    proportion that averages 1.4, not 1 every time. O(1) each; memory O(1).

    Not thread-safe: guard it with the router's lock.

    >>> out = RunningOutput()
    >>> out.record(1, seconds=1.0)      # a short answer: 1 block for 1 s
    >>> out.record(3, seconds=3.0)      # a long one: 3 blocks for 3 s
    >>> out.estimate                    # (1 x 1 + 3 x 3) / 4; the plain mean is 2
    2.5
    >>> [out.take() for _ in range(5)]
    [2, 3, 2, 3, 2]
    """

    __slots__ = ("_carry", "_count", "_mean", "_scale", "_seconds", "_weighted")

    def __init__(self) -> None:
        self._count = 0
        self._mean = 0.0
        self._seconds = 0.0  # the weights' sum, each record's seconds x _scale
        self._scale = 1.0  # halved whenever the sum would overflow
        self._weighted = 0.0
        self._carry = 0.0

    @property
    def estimate(self) -> float:
        """Output blocks per running request: the time-weighted mean of the records (their
        plain mean while no record lasted longer than 0 s; 0.0 before the first)."""
        return self._weighted if self._seconds > 0 else self._mean

    def record(self, blocks: int, *, seconds: float) -> None:
        """A completed request held ``blocks`` output blocks for ``seconds``. A record that
        is refused changes nothing.

        Raises:
            InvalidRecordError: ``blocks`` is not an int in [0, 2**53], or ``seconds`` is
                not a finite number >= 0.
        """
        if type(blocks) is not int or not 0 <= blocks <= _MAX_BLOCKS:
            raise InvalidRecordError("blocks", blocks, "must be an int in [0, 2**53]")
        held = check_amount("seconds", seconds)
        self._count += 1
        self._mean += (blocks - self._mean) / self._count
        if held > 0:
            held *= self._scale
            total = self._seconds + held
            if total == math.inf:  # halve every weight, later ones too: the ratios stay
                self._scale *= 0.5
                self._seconds *= 0.5
                held *= 0.5
                total = self._seconds + held
            self._weighted += (blocks - self._weighted) * (held / total)
            self._seconds = total

    def take(self) -> int:
        """Whole output blocks to count for the next running request (the estimate plus
        the fraction left over by earlier takes, rounded down)."""
        carry = self._carry + self.estimate
        n = int(carry)
        self._carry = carry - n
        return n


_PIN_BOUND = 4
"""Pinned (and private) blocks a :class:`KvCacheMirror` replica keeps, in multiples of its
capacity: past it, ``finish`` calls were lost and the oldest pins are released."""


class KvCacheMirror:
    """Per-replica LRU of prefix-chained block hashes: what each replica's KV cache holds.

    ``observe(key, chain)`` records that ``key`` computed (or reused) every block of
    ``chain``; blocks are touched deepest first, so a prefix is always more recent than its
    extensions and eviction removes leaves before their ancestors (as paged-attention
    engines do). With ``capacity_blocks`` set, each replica keeps at most that many blocks,
    evicting least-recently-touched first; ``None`` is unbounded. No clock: recency is the
    order of calls.

    Running requests. An engine's KV capacity is shared by the cached prefixes and the
    requests it is running: their prompt blocks cannot be evicted while they run, their
    output needs blocks of its own, and their prompt blocks become evictable (most recent
    first) only when they finish. A router that knows when each request it sent ends
    mirrors this with :meth:`start` and :meth:`finish` instead of :meth:`observe`:
    ``start(key, chain, private_blocks)`` records ``chain`` as held and *pinned* (never
    evicted while pinned; pins count per request) and ``private_blocks`` more blocks in use
    beside the cache (its output); ``finish`` with the same arguments unpins the chain,
    touching it deepest first as :meth:`observe` does, and frees the private blocks. The
    output blocks may instead be counted from the request's first token (the router's
    first sign that the engine admitted it): ``start(key, (), private_blocks=n)`` adds
    them alone, and ``finish`` with the chain and the sum of its private blocks releases
    both (:class:`RunningOutput` estimates ``n``). A replica then keeps at most
    ``capacity_blocks - pinned - private`` unpinned blocks (evicting least-recent first).
    Pinned and private blocks may exceed the capacity (a router's running requests include
    those still queued at the engine; 1.6 x at the peak of the replay's overloaded eviction
    case) but are each bounded by four times ``capacity_blocks``: a host that loses
    ``finish`` calls cannot grow the mirror, because past that bound the oldest pins
    (oldest first pinned) are dropped (pinned blocks then fill the capacity, so no unpinned
    block stays either) and private blocks are counted up to it.
    Without :meth:`start`, nothing is pinned and the mirror is the plain LRU.
    :meth:`invalidate` also forgets pins and private blocks; a later ``finish`` of a request
    started before it records nothing for a replica not started since, and otherwise
    releases the pins it names (pins count per block, not per request: a block a newer
    request also pinned loses one of its pins) and frees at most the private blocks still
    recorded.

    Not thread-safe: guard it with the router's lock. The per-request methods are on the
    routing path and do not type-check their arguments: ``key`` is a :class:`ReplicaKey`
    and a chain a sequence of block hashes as ``prefixcache.extract_chain`` makes them
    (only the counts, ``private_blocks`` and ``fill``, are checked). Memory is bounded per
    key; the host bounds the keys (its replicas).

    Raises (constructor):
        InvalidRecordError: ``capacity_blocks`` is not ``None`` or an ``int >= 0``.

    >>> m = KvCacheMirror(capacity_blocks=3)
    >>> m.observe(ReplicaKey("a"), (1, 2, 3))
    >>> m.matched_blocks(ReplicaKey("a"), (1, 2, 9))
    2
    >>> m.observe(ReplicaKey("a"), (1, 7))      # evicts 3, the least recent leaf
    >>> m.matched_blocks(ReplicaKey("a"), (1, 2, 3))
    2
    >>> r = KvCacheMirror(capacity_blocks=4)
    >>> r.observe(ReplicaKey("a"), (1, 2))
    >>> r.start(ReplicaKey("a"), (5, 6), private_blocks=1)  # 2 pinned + 1 output: room for 1
    >>> r.matched_blocks(ReplicaKey("a"), (1, 2)), r.blocks(ReplicaKey("a"))
    (1, 3)
    >>> r.finish(ReplicaKey("a"), (5, 6), private_blocks=1)
    >>> r.matched_blocks(ReplicaKey("a"), (5, 6)), r.blocks(ReplicaKey("a"))
    (2, 3)
    """

    __slots__ = ("_cap", "_lru", "_pins", "_private")

    def __init__(self, *, capacity_blocks: int | None = None) -> None:
        if capacity_blocks is not None and (
            type(capacity_blocks) is not int or capacity_blocks < 0
        ):
            raise InvalidRecordError(
                "capacity_blocks", capacity_blocks, "must be None or an int >= 0"
            )
        self._cap = capacity_blocks
        self._lru: dict[ReplicaKey, OrderedDict[int, None]] = {}
        self._pins: dict[ReplicaKey, dict[int, int]] = {}
        self._private: dict[ReplicaKey, int] = {}

    @property
    def capacity_blocks(self) -> int | None:
        """Blocks kept per replica (``None``: unbounded)."""
        return self._cap

    def matched_blocks(self, key: ReplicaKey, chain: Sequence[int]) -> int:
        """Leading blocks of ``chain`` that ``key`` holds, pinned or not (0 for an unknown
        key). O(match)."""
        lru = self._lru.get(key)
        if lru is None:
            return 0
        pins = self._pins.get(key)
        for k, b in enumerate(chain):
            if b not in lru and not (pins and b in pins):
                return k
        return len(chain)

    def _replica(self, key: ReplicaKey) -> OrderedDict[int, None]:
        lru = self._lru.get(key)
        if lru is None:
            lru = self._lru[key] = OrderedDict()
        return lru

    def _fit(self, key: ReplicaKey, lru: OrderedDict[int, None]) -> None:
        """Evict least-recent unpinned blocks until ``key``'s blocks fit its capacity."""
        cap = self._cap
        if cap is None:
            return
        pins = self._pins.get(key)
        room = cap - (len(pins) if pins else 0) - self._private.get(key, 0)
        if room < 0:
            room = 0
        while len(lru) > room:
            lru.popitem(last=False)

    def observe(self, key: ReplicaKey, chain: Sequence[int]) -> None:
        """Record that ``key`` now holds every block of ``chain`` (a pinned block stays
        pinned). O(len(chain))."""
        if not chain:
            return
        lru = self._replica(key)
        pins = self._pins.get(key)
        move = lru.move_to_end
        blocks = (b for b in reversed(chain) if b not in pins) if pins else reversed(chain)
        for b in blocks:
            if b in lru:
                move(b)
            else:
                lru[b] = None
        self._fit(key, lru)

    def start(self, key: ReplicaKey, chain: Sequence[int], *, private_blocks: int = 0) -> None:
        """A request with prompt ``chain`` started on ``key``: hold and pin its blocks, and
        count ``private_blocks`` (int >= 0) more blocks in use there. O(len(chain)).

        Raises:
            InvalidRecordError: ``private_blocks`` is not an ``int >= 0``.
        """
        if type(private_blocks) is not int or private_blocks < 0:
            raise InvalidRecordError("private_blocks", private_blocks, "must be an int >= 0")
        lru = self._replica(key)
        pins = self._pins.get(key)
        if pins is None:
            pins = self._pins[key] = {}
        for b in chain:
            c = pins.get(b)
            if c is None:
                lru.pop(b, None)
                pins[b] = 1
            else:
                pins[b] = c + 1
        bound = None if self._cap is None else _PIN_BOUND * self._cap
        held = self._private.get(key, 0) + private_blocks
        if bound is not None:
            held = min(held, bound)
        if held:
            self._private[key] = held
        if bound is not None and len(pins) > bound:
            # Far more pinned than the replica holds: finishes were lost. Release the oldest.
            for b in list(itertools.islice(pins, len(pins) - bound)):
                del pins[b]
                lru[b] = None
        self._fit(key, lru)

    def finish(self, key: ReplicaKey, chain: Sequence[int], *, private_blocks: int = 0) -> None:
        """The request :meth:`start` recorded with these arguments ended: unpin its blocks
        (a block whose last pin this was becomes the most recent, deepest first) and free its
        private blocks. O(len(chain)).

        Raises:
            InvalidRecordError: ``private_blocks`` is not an ``int >= 0``.
        """
        if type(private_blocks) is not int or private_blocks < 0:
            raise InvalidRecordError("private_blocks", private_blocks, "must be an int >= 0")
        left = self._private.get(key, 0) - private_blocks
        if left > 0:
            self._private[key] = left
        else:
            self._private.pop(key, None)
        lru = self._lru.get(key)
        if lru is None:  # invalidated since (or never started): nothing to unpin
            return
        pins = self._pins.get(key)
        if pins:
            for b in reversed(chain):
                c = pins.get(b)
                if c is None:
                    continue
                if c == 1:
                    del pins[b]
                    lru[b] = None
                else:
                    pins[b] = c - 1
        self._fit(key, lru)

    def invalidate(self, key: ReplicaKey) -> int:
        """Forget everything ``key`` holds (it restarted), pins and private blocks included;
        returns the blocks dropped."""
        lru = self._lru.pop(key, None)
        pins = self._pins.pop(key, None)
        self._private.pop(key, None)
        return (0 if lru is None else len(lru)) + (0 if pins is None else len(pins))

    def blocks(self, key: ReplicaKey) -> int:
        """Blocks currently recorded for ``key``, pinned or not."""
        lru = self._lru.get(key)
        pins = self._pins.get(key)
        return (0 if lru is None else len(lru)) + (0 if pins is None else len(pins))

    def filled_below(self, keys: Iterable[ReplicaKey], fill: float) -> bool:
        """Whether the cache of each of ``keys`` is filled below ``fill`` of the capacity
        (its blocks and output blocks, fewer than ``fill x capacity_blocks``): ``False``
        without a capacity, and at ``fill=0`` unless ``keys`` is empty.

        Raises:
            InvalidRecordError: ``fill`` is not a number in [0, 1].

        >>> m = KvCacheMirror(capacity_blocks=4)
        >>> m.observe(ReplicaKey("a"), (1,))
        >>> both = (ReplicaKey("a"), ReplicaKey("b"))
        >>> m.filled_below(both, 0.5), m.filled_below(both, 0.25)
        (True, False)
        """
        if not (type(fill) is float and 0.0 <= fill <= 1.0):  # else the full check
            check_number("fill", fill, 0.0, 1.0)
        cap = self._cap
        if cap is None:
            return False
        limit = fill * cap
        lru = self._lru
        pins = self._pins  # both empty in a mirror fed by observe alone
        private = self._private
        for k in keys:
            used = len(lru.get(k, ()))
            if pins:
                used += len(pins.get(k, ()))
            if private:
                used += private.get(k, 0)
            if used >= limit:
                return False
        return True

    def running_blocks(self, key: ReplicaKey) -> int:
        """Blocks ``key``'s running requests hold: their pinned prompt blocks and their
        output blocks (what an engine reports as KV usage; cached blocks no request pins
        count as free there, since they can be evicted at once).

        >>> m = KvCacheMirror(capacity_blocks=8)
        >>> m.observe(ReplicaKey("a"), (1, 2))
        >>> m.start(ReplicaKey("a"), (2, 3), private_blocks=2)
        >>> m.running_blocks(ReplicaKey("a")), m.running_blocks(ReplicaKey("b"))
        (4, 0)
        """
        pins = self._pins.get(key)
        return (0 if pins is None else len(pins)) + self._private.get(key, 0)

    def _check(self) -> None:
        """Assert the invariants (for tests): pins and private blocks only for recorded
        replicas; a block is pinned or in the LRU, not both; pin counts positive; pinned
        and private blocks each within the bound; the unpinned blocks within the room."""
        cap = self._cap
        assert self._pins.keys() <= self._lru.keys()
        assert self._private.keys() <= self._lru.keys() | self._pins.keys()
        for key, lru in self._lru.items():
            pins = self._pins.get(key, {})
            private = self._private.get(key, 0)
            assert not pins.keys() & lru.keys()
            assert all(c >= 1 for c in pins.values())
            if cap is not None:
                assert len(pins) <= _PIN_BOUND * cap
                assert private <= _PIN_BOUND * cap
                assert len(lru) <= max(0, cap - len(pins) - private)
        assert all(p > 0 for p in self._private.values())
