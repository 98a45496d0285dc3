"""The radix (prefix) tree over uint64 block hashes: what a radix index is, nothing about
routing.

Design (the *why*; the *what* is in :class:`RadixTree`'s docstring):

* A node is an ``int`` *slot* into the tree's parallel lists ``_par`` (parent slot,
  :data:`~prefixcache._runs.ROOT` at the top), ``_key`` (block hash), ``_bat`` (its
  :class:`~prefixcache._weights.Batch` or ``None``) and ``_kids`` (child count). No Python
  object is created per node, so the cyclic collector has almost nothing new to track per
  insert; freed slots are recycled through a free list, so the lists are bounded by the peak
  node count. A *store* (:mod:`prefixcache._runs`, :mod:`prefixcache._datrie_store`) finds
  the nodes on a path.
* Every insert writes one batch: the owner, ``last_seen`` and insert sequence number shared
  by every node it set. When all the live nodes of the deepest found node's batch lie on the
  new path (a repeated prompt, a conversation's next turn), that batch is *taken over* in
  O(1); only the other found nodes change batch. Weights are per-owner sums maintained
  incrementally (:mod:`prefixcache._weights`), so a weight never walks the tree.
* A heap of batches by age (:mod:`prefixcache._age`) makes ``evict`` and the
  ``max_entries`` LRU cost O(removed + log n); an owner -> batches index makes ``remove``
  cost O(removed).
* ``query`` then ``observe`` of the same tuple chain (``Index.decide`` then
  ``Index.observe``) walk and validate it once: the walk is remembered with the mutation
  counter and reused only if nothing changed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from itertools import compress
from operator import itemgetter
from typing import Any, Generic, TypeVar

from clusterrouting import InvalidRecordError
from prefixcache._age import AgeHeap
from prefixcache._answers import Query, TreeClosedError
from prefixcache._backends import DEFAULT_BACKEND, Backend, make_store
from prefixcache._keys import check_key, check_time, fast_key_ok
from prefixcache._protocols import NodeStore
from prefixcache._runs import ROOT, Node
from prefixcache._weights import Batch, Owner, Weights, live_at

__all__ = ["RadixTree"]

V = TypeVar("V", bound=Hashable)

_NOT_WALKED: tuple[Any, list[Node], int, Any] = (object(), [], -1, ())
_COMPACT_EVERY = 32  # inserts between checks of the heaps for stale entries


class RadixTree(Generic[V]):
    """An uncompressed trie over sequences of uint64 block hashes, each node owned by a value.

    Semantics (the behavioural contract, docs/behaviour.md):

    * ``insert(key, value, now)`` sets ``value`` and ``last_seen=now`` on **every** node of the
      path (the last writer owns shared prefixes); an empty key is a no-op. ``observe`` does
      the same and says whether anything changed for ``value``.
    * ``longest_match(key, now)`` returns ``(value, depth)`` of the deepest node on the key's
      path holding a live value (walking through value-less or expired nodes), else ``None``.
    * A node is expired iff ``ttl > 0 and now - last_seen > ttl`` (age == ttl is live).
      ``ttl = 0`` never expires; ``half_life <= 0`` weighs every live node 1; ``max_entries
      = 0`` is unbounded.
    * ``evict(now)`` drops expired values and prunes value-less branches; ``remove(value)`` /
      ``remove_if(pred)`` drop a value's nodes (``pred`` is called once per distinct value).
    * ``weight(value, now)`` = sum over the value's live nodes of ``0.5 ** (age /
      half_life)``; ``weights_for`` the same for many values (absent ones are 0.0). Results
      equal the naive sum within 1e-11 relative. A term that overflows a float (an entry 1024
      or more half-lives *after* ``now``, i.e. a clock far behind the writes) is
      ``math.inf`` instead of raising ``OverflowError``, so such a weight is inf.
    * ``len(tree)`` counts value-bearing nodes, unswept expired ones included.
    * ``max_entries``: after an insert that exceeds the cap, values are evicted in order of
      (``last_seen``, depth, insert sequence number) -- least recently seen first, ancestors
      before descendants on equal age, then older inserts first -- pruning as it goes, until
      ``len(tree) == max_entries``. The insert itself may lose its shallowest nodes (a key
      longer than the cap keeps its deepest ``max_entries`` nodes).
    * ``close_if_empty()`` closes an empty tree for good: later inserts and observes raise
      :class:`TreeClosedError`; reads and removals still work (on nothing).
    * Keys outside ``0 <= h < 2**64`` (or non-integers) raise
      :class:`clusterrouting.InvalidRecordError` (a ``ValueError``); nothing is stored.

    Backends (``backend=``): ``"dict"`` (:class:`prefixcache._runs.DictStore`) and
    ``"datrie"`` (:mod:`prefixcache._datrie_store`, needs the ``datrie`` extra). Both give
    identical results.

    Thread-safety: every public method holds one internal lock for its whole duration.

    Complexity: ``insert``/``longest_match`` O(len(key)) (plus amortised O(1) bookkeeping),
    ``weight`` amortised O(1), ``weights_for`` O(len(values)), ``evict``/``remove`` O(removed
    + log), ``remove_if`` O(distinct values + removed), ``items`` O(n log n); the
    ``max_entries`` LRU amortised O(log n) per evicted value, however many share a
    ``last_seen``.

    Raises:
        InvalidRecordError: ``ttl`` or ``half_life`` is not a number, ``ttl < 0``,
            ``max_entries`` is not an int >= 0, or ``backend`` is unknown.
        BackendUnavailableError: ``backend="datrie"`` without the ``datrie`` package.

    >>> t = RadixTree(ttl=10.0)
    >>> t.insert((1, 2, 3), "a", now=0.0)
    >>> t.insert((1, 2, 9), "b", now=5.0)
    >>> t.longest_match((1, 2, 3, 4), now=6.0)
    ('a', 3)
    >>> t.longest_match((1, 2, 7), now=6.0)
    ('b', 2)
    >>> len(t), t.weight("a", now=6.0)
    (4, 1.0)
    """

    def __init__(
        self,
        *,
        ttl: float = 0.0,
        half_life: float = 0.0,
        max_entries: int = 0,
        backend: Backend = DEFAULT_BACKEND,
    ) -> None:
        ttl = check_time("ttl", ttl)
        if ttl < 0:
            raise InvalidRecordError("ttl", ttl, "must be >= 0 (0 never expires)")
        half_life = check_time("half_life", half_life)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise InvalidRecordError("max_entries", max_entries, "must be an int >= 0")
        self._ttl = ttl
        self._cap = max_entries
        self._backend = backend
        # Node slots (see the module docstring): parallel lists and the free slots.
        self._par: list[int] = []
        self._key: list[int] = []
        self._bat: list[Batch | None] = []
        self._kids: list[int] = []
        self._free_slots: list[int] = []
        self._store = make_store(backend)
        self._store.bind(self._par, self._key)
        self._lock = threading.RLock()
        self._weights = Weights(ttl, half_life if half_life > 0 else 0.0)
        self._len = 0
        self._seq = 0  # bumped by every insert and removal (also guards the remembered walk)
        self._age = AgeHeap()  # every batch with live nodes, once
        self._closed = False
        self._until_compact = _COMPACT_EVERY
        self._walked: tuple[Any, list[Node], int, Any] = _NOT_WALKED
        # Owners resolved for the last ``query`` value list: (list object, generation,
        # positions of the values that own something, their owners, position -> owner).
        self._resolved: tuple[Any, int, list[int], list[Owner], dict[int, Owner]] = (
            None,
            -1,
            [],
            [],
            {},
        )

    # ----------------------------------------------------------------- properties
    @property
    def ttl(self) -> float:
        """Entry lifetime in seconds (0: never expires)."""
        return self._ttl

    @property
    def half_life(self) -> float:
        """Weight half-life in seconds (0: every live entry weighs 1)."""
        return self._weights.half_life

    @property
    def max_entries(self) -> int:
        """Cap on value-bearing nodes (0: unbounded)."""
        return self._cap

    @property
    def backend(self) -> Backend:
        """The node-lookup backend (``"dict"`` or ``"datrie"``)."""
        return self._backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close_if_empty` closed the tree (it then stays empty)."""
        return self._closed

    def close_if_empty(self) -> bool:
        """Close the tree if it holds no value; returns whether it is closed.

        Atomic with every write: an insert either lands first (the tree is not empty, so it
        stays open) or raises :class:`TreeClosedError` afterwards, so a closed tree never
        holds a value. Its owner can then drop it without losing a concurrent write.
        """
        with self._lock:
            if not self._len:
                self._closed = True
            return self._closed

    def __len__(self) -> int:
        return self._len

    # ----------------------------------------------------------------- reads
    def longest_match(self, key: Sequence[int], now: float) -> tuple[V, int] | None:
        """``(value, depth)`` of the deepest live value on ``key``'s path, or ``None``.

        Raises:
            InvalidRecordError: a block hash is not an integer in ``[0, 2**64)``.
        """
        if not len(key):
            return None
        with self._lock:
            nodes, _ = self._walk(key)
            owner, depth = self._deepest_live(nodes, now)
            return None if owner is None else (owner, depth)

    def weight(self, value: V, now: float) -> float:
        """Sum of ``0.5 ** (age / half_life)`` over ``value``'s live nodes (0.0 if none)."""
        return self.weights_for((value,), now)[value]

    def weights_for(self, values: Sequence[V], now: float) -> dict[V, float]:
        """``{value: weight(value, now)}`` for every requested value (0.0 when absent)."""
        now = check_time("now", now)
        with self._lock:
            sums, scale = self._weights.sums(self._weights.owners_of(values), now)
            return dict(zip(values, [s * scale for s in sums], strict=True))

    def query(self, key: Sequence[int], values: Sequence[V], now: float) -> Query:
        """Under one lock: the deepest live owner on ``key``'s path and its depth, and the
        weights of those ``values`` that own nodes (see :class:`Query`). An empty key has no
        owner. Cost O(len(key) + owners among ``values``) when ``values`` is remembered.

        ``values`` is remembered by identity with the owners it resolved to, until an owner
        is created or dropped: pass the same (unchanging) sequence again to skip resolving
        it. The walk of a tuple ``key`` is remembered for an ``observe`` of the same object.

        Raises:
            InvalidRecordError: a block hash is not an integer in ``[0, 2**64)``, or ``now``
                is not a number.
        """
        with self._lock:
            if type(now) is not float or now != now:
                now = check_time("now", now)
            owner: Any = None
            depth = 0
            if len(key):
                nodes, checked = self._walk(key)
                if type(key) is tuple:
                    self._walked = (key, nodes, self._seq, checked)
                owner, depth = self._deepest_live(nodes, now)
            positions, owners = self._owners_of(values)
            sums, scale = self._weights.sums(owners, now)
            return Query(owner, depth, positions, sums, scale)

    def first_weightless(self, values: Sequence[V], order: Iterable[int], now: float) -> int | None:
        """The first position ``i`` of ``order`` whose value ``values[i]`` weighs 0.0 at
        ``now`` (it owns no node live there), or ``None``.

        Costs O(positions tried): nothing is summed for the values that are not tried.

        Raises:
            InvalidRecordError: ``now`` is not a number.
        """
        now = check_time("now", now)
        with self._lock:
            weights = self._weights
            self._owners_of(values)
            at = self._resolved[4]
            for i in order:
                o = at.get(i)
                if o is None or not weights.weighs(o, now):
                    return i
            return None

    def _owners_of(self, values: Sequence[Any]) -> tuple[list[int], list[Owner]]:
        """The positions of ``values`` that own something, and their owners (remembered for
        this very sequence until an owner is created or dropped)."""
        if not values:
            return [], []
        resolved = self._resolved
        generation = self._weights.generation
        if resolved[0] is values and resolved[1] == generation:
            return resolved[2], resolved[3]
        found = self._weights.owners_of(values)
        positions = [i for i, o in enumerate(found) if o is not None]
        owners = [o for o in found if o is not None]
        at = dict(zip(positions, owners, strict=True))
        self._resolved = (values, generation, positions, owners, at)
        return positions, owners

    def _walk(self, key: Sequence[int]) -> tuple[list[Node], Sequence[int]]:
        """The nodes on ``key``'s path and the validated key (normalised if it held
        integer-likes such as numpy scalars)."""
        nodes = self._store.walk(key)
        if fast_key_ok(key, len(nodes)):
            return nodes, key
        fixed = check_key(key, len(nodes))
        if fixed is None:
            return nodes, key
        return self._store.walk(fixed), fixed

    def _deepest_live(self, nodes: list[Node], now: float) -> tuple[Any, int]:
        """``(owner value, depth)`` of the deepest live node of ``nodes``, or ``(None, 0)``."""
        bat = self._bat
        ttl = self._ttl
        dead = None  # the last batch found expired: its other nodes need no second look
        for i in range(len(nodes) - 1, -1, -1):
            b = bat[nodes[i]]
            if b is None or b is dead:
                continue
            if live_at(b.t, now, ttl):
                return b.owner.value, i + 1
            dead = b
        return None, 0

    # ----------------------------------------------------------------- writes
    def insert(self, key: Sequence[int], value: V, now: float) -> None:
        """Set ``value`` and ``last_seen=now`` on every node of ``key``'s path.

        Raises:
            InvalidRecordError: a block hash is not an integer in ``[0, 2**64)`` (nothing is
                stored), or ``now`` is NaN.
        """
        if len(key):
            self.observe(key, value, now)

    def observe(self, key: Sequence[int], value: V, now: float) -> bool:
        """:meth:`insert` a non-empty ``key``; returns ``False`` iff ``value`` already owned
        every node of the path, live (nothing new for ``value``'s peers to hear).

        Raises:
            InvalidRecordError: as :meth:`insert`.
            TreeClosedError: the tree was closed (nothing is stored).
        """
        with self._lock:
            if self._closed:
                raise TreeClosedError("this tree was closed by close_if_empty()")
            found, key = self._walk_for_write(key)
            fresh = len(found) < len(key) or not self._owns_all_at(found, value, now)
            t = now if type(now) is float and now == now else check_time("now", now)
            self._seq += 1
            b = self._claim(found, self._weights.owner_for(value), t)
            if len(found) < len(key):
                self._grow(b, found, key)
            b.live = len(key)
            self._weights.count(b)
            self._after_insert(b)
            return fresh

    def _walk_for_write(self, key: Sequence[int]) -> tuple[list[Node], Sequence[int]]:
        """The remembered walk of this very tuple if nothing changed since, else a walk."""
        walked = self._walked
        if walked[0] is key and walked[2] == self._seq:
            return walked[1], walked[3]
        return self._walk(key)

    def _owns_all_at(self, found: list[Node], value: object, now: float) -> bool:
        """Whether every node of ``found`` holds a batch of ``value`` live at ``now``."""
        ttl = self._ttl
        for b in set(map(self._bat.__getitem__, found)):
            if b is None or not live_at(b.t, now, ttl):
                return False
            v = b.owner.value
            if v is not value and v != value:
                return False
        return True

    def _claim(self, found: list[Node], o: Owner, t: float) -> Batch:
        """The batch that will hold the path: the deepest found node's batch taken over
        when all its live nodes are on the path, else a new one; the other found nodes
        leave their batches for it."""
        weights = self._weights
        f = weights.factor(t)
        # Not older than the watermark: live there (W - t <= 0 <= ttl), no rule to apply.
        counted = t >= weights.watermark or weights.counted_at(t)
        if not found:
            b = Batch(o, t, self._seq, f, counted, found)
            weights.attach(b)
            return b
        bat = self._bat
        olds = list(map(bat.__getitem__, found))
        b0 = olds[-1]
        taken = olds.count(b0)
        if b0 is not None and b0.live == taken:
            weights.withdraw(b0)
            weights.move(b0, o)
            b0.t = t
            b0.seq = self._seq
            b0.factor = f
            if taken != len(found):
                self._release_others(olds, b0, found)
            b0.counted = counted
            b0.nodes = found
            return b0
        b = Batch(o, t, self._seq, f, counted, found)
        weights.attach(b)
        self._release_others(olds, b, found)
        return b

    def _release_others(self, olds: list[Batch | None], b: Batch, found: list[Node]) -> None:
        """Every found node not yet in ``b`` leaves its batch (``olds``) for ``b``."""
        for x in set(olds):
            if x is not b:
                self._release(x, olds.count(x))
        bat = self._bat
        for n in found:
            bat[n] = b

    def _release(self, ob: Batch | None, run: int) -> None:
        """``run`` nodes of batch ``ob`` (``None``: value-less nodes) join a new batch."""
        if ob is None:
            self._len += run
            return
        self._weights.drop(ob, run)
        if not ob.live:
            self._weights.retire(ob)
        elif ob.live * 4 < len(ob.nodes) and len(ob.nodes) > 32:
            nodes = ob.nodes
            bat = self._bat
            ob.nodes = list(compress(nodes, [bat[n] is ob for n in nodes]))

    def _grow(self, b: Batch, found: list[Node], key: Sequence[int]) -> None:
        """Add the nodes of ``key`` below ``found`` (each with one child, the next), in
        ``b``."""
        m = len(found)
        k = len(key) - m
        tail = key[m:] if m else key
        parent = found[-1] if m else ROOT
        if self._free_slots:
            new = self._reuse_slots(k, parent, tail, b)
        else:
            # Fresh slots at the end of the lists, filled by C-level extends.
            start = len(self._par)
            new = list(range(start, start + k))
            self._par.append(parent)
            self._par += new[:-1]
            self._key += tail
            self._bat += [b] * k
            self._kids += [1] * k
        self._kids[new[-1]] = 0
        if m:
            self._kids[parent] += 1
        self._store.extend(parent, new, tail)
        b.nodes.extend(new)
        self._len += k

    def _reuse_slots(self, k: int, parent: Node, tail: Sequence[int], b: Batch) -> list[Node]:
        """``k`` slots for a chain under ``parent``: free ones first, then fresh ones."""
        free = self._free_slots
        new = free[-k:] if k <= len(free) else free[:]
        del free[len(free) - len(new) :]
        more = k - len(new)
        if more:
            start = len(self._par)
            new += range(start, start + more)
            self._par += [ROOT] * more
            self._key += [0] * more
            self._bat += [None] * more
            self._kids += [0] * more
        par = self._par
        keys = self._key
        bat = self._bat
        kids = self._kids
        prev = parent
        for n, h in zip(new, tail, strict=True):
            par[n] = prev
            keys[n] = h
            bat[n] = b
            kids[n] = 1
            prev = n
        return new

    def _after_insert(self, b: Batch) -> None:
        """Age ``b``, compact stale heap entries now and then, enforce the cap, let the
        store maintain itself."""
        self._age.push(b)
        self._until_compact -= 1
        if not self._until_compact:
            self._until_compact = _COMPACT_EVERY
            self._compact_if_stale()
        if self._cap and self._len > self._cap:
            self._evict_lru()
        self._store.maintain()

    # ----------------------------------------------------------------- removals
    def evict(self, now: float) -> int:
        """Remove every expired value (``ttl > 0 and now - last_seen > ttl``) and prune
        branches left without values. Returns the number of values removed."""
        now = check_time("now", now)
        with self._lock:
            removed = sum(self._drop_batch(b) for b in self._age.pop_expired(now, self._ttl))
            if removed:
                self._after_removal()
            return removed

    def remove(self, value: V) -> int:
        """Drop every node owned by ``value``; returns how many were removed."""
        with self._lock:
            o = self._weights.owners.get(value)
            if o is None:
                return 0
            removed = self._drop_owner(o)
            self._after_removal()
            return removed

    def remove_if(self, predicate: Callable[[V], bool]) -> int:
        """Drop the nodes of every value for which ``predicate(value)`` is true (called once
        per distinct value); returns how many nodes were removed."""
        with self._lock:
            doomed = [o for v, o in list(self._weights.owners.items()) if predicate(v)]
            removed = sum(self._drop_owner(o) for o in doomed)
            if doomed:
                self._after_removal()
            return removed

    def _drop_owner(self, o: Owner) -> int:
        return sum(self._drop_batch(b) for b in list(o.batches))

    def _drop_batch(self, b: Batch) -> int:
        bat = self._bat
        nodes = [n for n in b.nodes if bat[n] is b]
        self._weights.drop(b, len(nodes))
        self._len -= len(nodes)
        self._weights.retire(b)
        # Deepest first so pruning walks each branch once.
        for n in reversed(nodes):
            self._unset(n)
        self._seq += 1  # a mutation: forgets the remembered walk
        return len(nodes)

    def _unset(self, n: Node) -> None:
        """Drop node ``n``'s value (its batch bookkeeping is the caller's) and prune."""
        bat = self._bat
        kids = self._kids
        bat[n] = None
        store = self._store
        while kids[n] == 0 and bat[n] is None:
            store.discard(n)
            self._free_slots.append(n)
            p = self._par[n]
            if p == ROOT:
                break
            kids[p] -= 1
            n = p

    def _after_removal(self) -> None:
        self._compact_if_stale()
        self._store.maintain()

    def _compact_if_stale(self) -> None:
        """Rebuild the heaps without stale entries once they outnumber live batches."""
        batches = self._weights.batches
        if len(self._age) + self._weights.pending() <= 4 * batches + 128:
            return
        self._age.compact()
        self._weights.clear_expiring()

    def _evict_lru(self) -> None:
        """Evict values in (last_seen, depth, seq) order until within the cap."""
        self._age.evict_lru(self._excess, self._evict_shallowest)
        self._seq += 1  # a mutation: forgets the remembered walk

    def _excess(self) -> int:
        return self._len - self._cap

    def _evict_shallowest(self, b: Batch, k: int) -> None:
        """Evict the ``k`` shallowest live nodes of ``b`` (its live nodes are the last
        ``b.live`` of its node list, in depth order), pruning what they leave bare."""
        nodes = b.nodes
        start = len(nodes) - b.live
        victims = nodes[start : start + k]
        self._take_nodes(b, k)
        for n in victims:
            self._unset(n)

    def _depth(self, n: Node) -> int:
        """Node ``n``'s depth, by walking to the root (O(depth): for checks)."""
        par = self._par
        d = 0
        while n != ROOT:
            d += 1
            n = par[n]
        return d

    def _take_nodes(self, b: Batch, k: int) -> None:
        """``k`` nodes leave batch ``b`` for good (retiring it when none is left)."""
        self._weights.drop(b, k)
        self._len -= k
        if not b.live:
            self._weights.retire(b)

    # ----------------------------------------------------------------- views
    def items(self) -> list[tuple[tuple[int, ...], V, float]]:
        """A snapshot list of ``(path, value, last_seen)`` for every value-bearing node,
        sorted by path. Safe to use while the tree keeps changing."""
        with self._lock:
            paths: dict[int, tuple[int, ...]] = {}
            par = self._par
            karr = self._key
            bat: list[Any] = self._bat

            def path_of(n: Node) -> tuple[int, ...]:
                stack = []
                cur = n
                while cur != ROOT and cur not in paths:
                    stack.append(cur)
                    cur = par[cur]
                base = () if cur == ROOT else paths[cur]
                for s in reversed(stack):
                    base = (*base, karr[s])
                    paths[s] = base
                return base

            out = [
                (path_of(n), bat[n].owner.value, b.t)
                for b in self._live_batches()
                for n in b.nodes
                if bat[n] is b
            ]
            out.sort(key=itemgetter(0))
            return out

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], V, float]]:
        return iter(self.items())

    def _live_batches(self) -> list[Batch]:
        return [b for o in self._weights.owners.values() for b in o.batches]

    def _use_store(self, store: NodeStore) -> None:
        """Replace the (empty) node store, e.g. a datrie store with tiny merge/rebuild
        thresholds in tests."""
        assert self._len == 0, "only an empty tree may change its store"
        self._store = store
        store.bind(self._par, self._key)

    def _check(self) -> None:
        """Assert every internal invariant (for tests). O(n)."""
        with self._lock:
            weights = self._weights
            batches = self._live_batches()
            seen_batches: set[int] = set()
            live = 0
            for o in weights.owners.values():
                assert o.batches, "owner without batches kept"
                assert weights.owners.get(o.value) is o
                assert weights.by_id.get(id(o.value)) is o
                for b in o.batches:
                    assert b.owner is o and b.live > 0
                    seen_batches.add(id(b))
            assert seen_batches == {id(b) for b in batches}
            assert weights.batches == len(batches)
            for b in batches:
                mine = [n for n in b.nodes if self._bat[n] is b]
                assert len(mine) == b.live, "batch live count wrong"
                assert len(set(mine)) == len(mine), "node twice in a batch"
                live += b.live
                aged = self._age.entry_of(b)
                assert len(aged) == 1, "batch not aged exactly once"
                # Its live nodes are the deepest of its path; the entry's depth bounds them.
                assert mine == b.nodes[len(b.nodes) - b.live :], "live nodes not a suffix"
                first = aged[0][4] - b.live + 1
                assert aged[0][1] <= first == self._depth(mine[0]), "age entry depth wrong"
                assert b.counted == weights.counted_at(b.t), "counted flag wrong"
            assert live == self._len, "len differs from live node count"
            allnodes = self._check_nodes(batches)
            slots = set(self._free_slots)
            assert len(slots) == len(self._free_slots), "slot freed twice"
            assert not slots & allnodes, "a live node's slot is free"
            assert len(slots) + len(allnodes) == len(self._par), "slot leaked"
            assert all(self._bat[s] is None for s in slots), "free slot holds a batch"
            self._store.check(list(allnodes))
            for o in weights.owners.values():
                exact = sum(b.live * b.factor for b in o.batches if b.counted)
                assert math.isclose(o.live_sum, exact, rel_tol=1e-9, abs_tol=1e-300), (
                    "weight sum drifted"
                )

    def _check_nodes(self, batches: list[Batch]) -> set[Node]:
        """Every node reachable from a live one; asserts the child counts and pruning."""
        par = self._par
        bat = self._bat
        allnodes: dict[int, None] = {}
        for b in batches:
            for n in b.nodes:
                if bat[n] is b:
                    cur = n
                    while cur != ROOT and cur not in allnodes:
                        allnodes[cur] = None
                        cur = par[cur]
        kids: dict[int, int] = {}
        for n in allnodes:
            if par[n] != ROOT:
                kids[par[n]] = kids.get(par[n], 0) + 1
        for n in allnodes:
            assert self._kids[n] == kids.get(n, 0), "kids count wrong"
            assert self._kids[n] > 0 or bat[n] is not None, "value-less leaf not pruned"
        return set(allnodes)
