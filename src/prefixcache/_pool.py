"""A persistent candidate set for hosts with many replicas: :class:`CandidateSet`.

``Index.decide`` + ``select`` take a sequence of candidates and read every one of them
(their keys and loads), which a host with thousands of replicas pays on every request. A
:class:`CandidateSet` keeps the replicas and their in-flight counts between requests,
updated one reservation at a time, so that :meth:`CandidateSet.pick` costs what the chain
and the owners found on it cost, not what the number of replicas costs.
"""

from __future__ import annotations

import heapq
import threading
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator

from clusterrouting import InvalidRecordError, load_limit
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._decision import CandidateMemo, DecisionBasis
from prefixcache._index import Index
from prefixcache._keys import check_key
from prefixcache._tree import RadixTree
from prefixcache._types import Candidate, ReplicaKey

__all__ = ["CandidateSet"]

_Entry = tuple[int, str, int, int, ReplicaKey]  # (in_flight, node_id, replica, stamp, key)


def _check_key(key: object) -> ReplicaKey:
    if not isinstance(key, ReplicaKey):
        raise InvalidRecordError("key", key, "must be a ReplicaKey")
    return key


class CandidateSet:
    """Replicas that may serve a model, with their in-flight counts, kept between requests.

    * ``add(key)`` / ``discard(key)`` change the membership (O(n): rare);
    * ``reserve(key)`` / ``release(key)`` count a request in and out (O(log n));
    * ``least_loaded()`` is the member with the least in-flight count, ties by node id then
      replica (O(log n) amortised);
    * ``pick(index, model, chain, now, config)`` routes a request: exactly
      ``select(s.candidates(), index.decide(model, chain, s.candidates(), now), config)``,
      without building either. Cost: the walk of ``chain``, the load guard from
      ``least_loaded``, then -- only when the hot replica is missing or overloaded -- per
      eligible load level, a walk of its members by name up to the first that holds no cache
      (those come first in the cold order), or, when every eligible member holds cache, a
      pass over the members that own entries.

    When to use which API: the functional ``Index.decide`` + ``select`` for a candidate list
    the host builds per request (a few to a few hundred replicas, or ones filtered per
    request); a ``CandidateSet`` for a large, stable pool whose loads the router itself
    tracks (reserve at pick, release at completion).

    Thread-safe: one lock guards the set; ``pick`` holds it while it asks the index, which
    locks each tree on its own (the set never waits for the index while the index waits for
    it). A ``pick`` reads the tree in up to three locked calls: a concurrent write may fall
    between them, as it may between ``decide`` and ``select``.

    Raises:
        InvalidRecordError: a key is not a :class:`ReplicaKey`; ``release`` of a member with
            nothing in flight; ``reserve``/``release`` of a non-member.

    >>> from prefixcache import Index
    >>> a, b = ReplicaKey("a"), ReplicaKey("b")
    >>> ix, pool = Index(), CandidateSet([a, b])
    >>> ix.observe("m", (1, 2), a, now=0.0)
    True
    >>> pool.pick(ix, "m", (1, 2), now=1.0)
    ReplicaKey(node_id='a', replica=0)
    >>> pool.reserve(a), pool.reserve(a), pool.pick(ix, "m", (1, 2), now=1.0)
    (1, 2, ReplicaKey(node_id='b', replica=0))
    """

    def __init__(self, keys: Iterable[ReplicaKey] = ()) -> None:
        self._lock = threading.Lock()
        self._flights: dict[ReplicaKey, int] = {}
        self._stamps: dict[ReplicaKey, int] = {}
        self._heap: list[_Entry] = []
        self._stamp = 0
        self._memo = CandidateMemo(())
        self._loads: list[int] = []  # in-flight counts in the memo's key order
        self._rank: list[int] = []  # memo position -> its rank by (node id, replica)
        # in-flight count -> the ranks of the members with that count, ascending
        self._levels: dict[int, list[int]] = {}
        for key in keys:
            self._flights.setdefault(_check_key(key), 0)
        self._rebuild()

    # ------------------------------------------------------------------ membership
    def add(self, key: ReplicaKey) -> None:
        """Make ``key`` a member with nothing in flight (no-op if it is one)."""
        _check_key(key)
        with self._lock:
            if key not in self._flights:
                self._flights[key] = 0
                self._rebuild()

    def discard(self, key: ReplicaKey) -> None:
        """Remove ``key`` (no-op if it is not a member)."""
        with self._lock:
            if self._flights.pop(key, None) is not None:
                self._stamps.pop(key, None)
                self._rebuild()

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def __iter__(self) -> Iterator[ReplicaKey]:
        with self._lock:
            return iter(list(self._flights))

    # ------------------------------------------------------------------ loads
    def reserve(self, key: ReplicaKey) -> int:
        """Count one more request in flight on ``key``; returns its new count."""
        with self._lock:
            return self._set(key, self._member(key) + 1)

    def release(self, key: ReplicaKey) -> int:
        """Count one request on ``key`` as done; returns its new count."""
        with self._lock:
            count = self._member(key)
            if count == 0:
                raise InvalidRecordError("key", key, "has no request in flight to release")
            return self._set(key, count - 1)

    def in_flight(self, key: ReplicaKey) -> int:
        """Requests in flight on member ``key``."""
        with self._lock:
            return self._member(key)

    def least_loaded(self) -> ReplicaKey | None:
        """The member with the least in-flight count (ties by node id, replica), or
        ``None`` for an empty set."""
        with self._lock:
            top = self._top()
            return None if top is None else top[4]

    def candidates(self) -> tuple[Candidate, ...]:
        """The members as :class:`Candidate` records, in insertion order (O(n))."""
        with self._lock:
            return tuple(Candidate(k, f) for k, f in self._flights.items())

    # ------------------------------------------------------------------ routing
    def pick(
        self,
        index: Index,
        model: str,
        chain: tuple[int, ...] | list[int],
        now: float,
        config: Config = DEFAULT_CONFIG,
    ) -> ReplicaKey | None:
        """The replica :func:`prefixcache.select` would choose over these members for
        ``index.decide(model, chain, ...)``, or ``None`` for an empty set.

        Raises:
            InvalidRecordError: as ``Index.decide`` (a bad block hash or time).
        """
        with self._lock:
            top = self._top()
            if top is None:
                if len(chain):
                    check_key(chain, 0)
                return None
            limit = load_limit(
                top[0],
                slack=config.balance_abs_threshold,
                factor=config.balance_rel_threshold,
            )
            memo = self._memo
            loads = self._loads
            tree = index.tree(model)
            if tree is None:
                if len(chain):
                    check_key(chain, 0)
                return next(memo.keys[i] for i in memo.by_name() if loads[i] <= limit)
            q = tree.query(chain, (), now)
            hot = q.owner
            if (
                hot is not None
                and q.depth / len(chain) >= config.min_prefix_match
                and self._flights.get(hot, limit + 1) <= limit
            ):
                return hot  # type: ignore[no-any-return]
            i = self._first_weightless(tree, limit, now)
            if i is not None:
                return memo.keys[i]
            q = tree.query((), memo.keys, now)
            basis = DecisionBasis(memo, q.positions, q.sums, q.scale)
            return basis.first_cold(loads, limit)

    # ------------------------------------------------------------------ internals
    def _first_weightless(
        self, tree: RadixTree[ReplicaKey], limit: float, now: float
    ) -> int | None:
        """The memo position of the first eligible member by name that holds no cache: the
        first such member of each eligible load level, the least of them by name."""
        by_name = self._memo.by_name()
        keys = self._memo.keys
        best = -1
        for level, ranks in self._levels.items():
            if level > limit:
                continue
            found = tree.first_weightless(keys, map(by_name.__getitem__, ranks), now)
            if found is not None:
                rank = self._rank[found]
                if best < 0 or rank < best:
                    best = rank
        return by_name[best] if best >= 0 else None

    def _member(self, key: ReplicaKey) -> int:
        count = self._flights.get(key)
        if count is None:
            raise InvalidRecordError("key", key, "is not a member of this CandidateSet")
        return count

    def _set(self, key: ReplicaKey, count: int) -> int:
        old = self._flights[key]
        self._flights[key] = count
        at = self._memo.position(key)
        assert at is not None
        self._loads[at] = count
        rank = self._rank[at]
        ranks = self._levels[old]
        del ranks[bisect_left(ranks, rank)]
        if not ranks:
            del self._levels[old]
        insort(self._levels.setdefault(count, []), rank)
        self._push(key, count)
        if len(self._heap) > 2 * len(self._flights) + 64:
            self._rebuild_heap()
        return count

    def _push(self, key: ReplicaKey, count: int) -> None:
        self._stamp += 1
        self._stamps[key] = self._stamp
        heapq.heappush(self._heap, (count, key.node_id, key.replica, self._stamp, key))

    def _top(self) -> _Entry | None:
        """The least loaded member's current heap entry (stale entries popped)."""
        heap = self._heap
        stamps = self._stamps
        while heap:
            top = heap[0]
            if stamps.get(top[4]) == top[3]:
                return top
            heapq.heappop(heap)
        return None

    def _rebuild(self) -> None:
        """Membership changed: a new key memo, load list and heap (O(n))."""
        keys = tuple(self._flights)
        self._memo = CandidateMemo(keys)
        self._loads = [self._flights[k] for k in keys]
        self._rank = [0] * len(keys)
        self._levels = {}
        for rank, i in enumerate(self._memo.by_name()):
            self._rank[i] = rank
            self._levels.setdefault(self._loads[i], []).append(rank)
        self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = []
        self._stamps = {}
        for key, count in self._flights.items():
            self._push(key, count)
