"""The radix (prefix) tree over uint64 block hashes, with two node-lookup backends.

Design (the *why*; the *what* is in :class:`RadixTree`'s docstring):

* A node is an ``int`` *slot* into the tree's parallel lists ``par`` (parent slot, -1 at the
  root), ``key`` (block hash), ``bat`` (batch or ``None``) and ``kids`` (child count); the
  datrie store keeps its own slot -> run map. No Python object
  is created per node, so the cyclic GC has almost nothing new to track per insert (a
  5-slot list per node made it the largest cost after the walk); freed slots are recycled
  through a free list, so the lists are bounded by the peak node count.
* Every ``insert`` writes one *batch*: the owner, ``last_seen`` and insertion sequence number
  shared by every node it set. A node's owner and age are its batch's. When all the live
  nodes of the deepest found node's batch lie on the new path (a repeated prompt, a prefix
  re-observed), that batch is *taken over* in O(1); only the other found nodes change batch
  (in C-level loops). A batch's node list stays in depth order (ancestors first).
* Per-owner weights: each owner keeps ``live_sum = sum(count * 2**((t - t0) / half_life))``
  over its batches that are live at the watermark ``W`` (the newest ``now`` seen by a weight
  query), so a weight costs O(1) plus amortised O(1) expiry work: ``weight(now) = live_sum *
  2**((t0 - now) / half_life)``. The origin ``t0`` is shared by the tree's owners (one
  ``pow`` serves a whole ``weights_for``) and rebased before terms can overflow; a sum is
  recomputed exactly whenever its accumulated rounding bound could reach 1e-11 relative; a
  query with ``now < W`` (clock going backwards), extreme exponents or tiny sums is answered
  by an exact sum over the owner's batches. Owners are found by the identity of the value
  object first (no Python-level ``__hash__`` on the hot path), then by equality.
* Time-ordered heaps of batches (lazy deletion, compacted when mostly stale) make
  ``evict`` and the ``max_entries`` LRU cost O(removed + log n); an owner -> batches index
  makes ``remove`` cost O(removed).
* ``Index.decide`` then ``Index.observe`` of the same chain object walk (and validate) it
  once: the walk of a tuple chain is remembered with the tree's mutation counter and reused
  only if nothing changed. ``decide`` also reuses the owners resolved for Index's cached
  candidate key list until an owner is created or dropped.
* Key validation checks every element's type in one C-level pass (``1.0`` or ``True`` equal
  to a stored hash would otherwise walk like it) and the range of the unmatched tail only.
* ``_decide`` returns a :class:`prefixcache.PrefixDecision` that keeps the owners' sums and
  their common decay factor: its cold order is sorted only if asked (``prefixcache._order``).
* The hot paths are measured in instructions per request on the conversation trace
  (callgrind), where the machine's timings are too noisy: C-level loops whose setup parses
  keyword arguments (``deque(it, 0)``, ``itertools.repeat``) or that call ``attrgetter``
  or ``operator.is_`` per item cost more here than list repetition, ``any`` over a map of
  ``__setitem__`` calls, comprehensions and tuple equality.
"""

from __future__ import annotations

import heapq
import math
import threading
from array import array
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from itertools import compress, pairwise, repeat
from operator import is_, itemgetter
from typing import Any, Generic, Literal, Protocol, TypeVar

from clusterrouting import InvalidRecordError
from prefixcache._order import _decision
from prefixcache._types import PrefixDecision

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "RadixTree"]

Backend = Literal["dict", "datrie"]
BACKENDS: tuple[Backend, ...] = ("dict", "datrie")
DEFAULT_BACKEND: Backend = "dict"

V = TypeVar("V", bound=Hashable)

_ROOT = -1  # the parent slot of a depth-1 node
_U64 = 1 << 64
assert array("Q").itemsize == 8, "array 'Q' must hold exactly the uint64 range"
# Runs a map of calls that return None to the end (``any`` sees only falsy results): the
# cheapest C-level loop for side effects such as ``map(lst.__setitem__, slots, values)``.
_each = any
_NO_CACHE: tuple[Any, list[Any], int, Any] = (object(), [], -1, ())
_REBASE = 512.0  # rebase an owner's origin when a term would exceed 2**512
_EXACT_EXP = 600.0  # weight factor exponents beyond this are answered exactly
_DRIFT = 1e5  # recompute when ops * peak > _DRIFT * |live_sum| (bound ~1e-11 relative)

Node = int  # a slot (see the module docstring)


class _Store(Protocol):
    """The node lookup structure: maps paths to node objects (see ``_DictStore``)."""

    def bind(self, par: list[int], keys: list[int]) -> None:
        """Share the tree's parent and key slot lists (mutated in place, never replaced)."""

    def walk(self, key: Sequence[int]) -> list[Node]: ...

    def extend(self, parent: Node, new: list[Node], hs: Sequence[int]) -> None:
        """Register ``new`` (a chain of nodes under ``parent``, -1 for the root), whose
        block hashes are ``hs``."""

    def discard(self, node: Node) -> None: ...

    def maintain(self) -> None: ...

    def size(self) -> int: ...

    def check(self, nodes: list[Node]) -> None: ...


class _Runs:
    """Node runs, shared by both stores (the lookup of run starts is each store's own).

    A run is a chain of nodes ``n0 -> n1 -> ...`` (each the parent of the next); every node
    is in exactly one run, which keeps the node slots and their block hashes in two lists
    (``_runs[r]``, ``_hs[r]``, ``None`` once the run is dead). New nodes under the last node of
    a run extend it (a conversation's next turn); under a mid-run node or the root they open a
    run, so a path is a few runs: a walk does one store lookup per run and follows each with a
    plain loop over the matching hashes (most walks share only a few blocks with a run, where
    building C iterators costs more) and a list slice, and an insert writes one store key per
    new run, none per node. Runs are tuples until they change (the collector then stops
    tracking them); one that changes becomes a list. The tree discards only leaves, which are
    their run's last node.
    """

    __slots__ = ("_free", "_hs", "_rid", "_runs", "keys", "par")

    def __init__(self) -> None:
        # Each run a tuple while unchanged, else a list (see _add).
        self._runs: list[Sequence[Node] | None] = []
        self._hs: list[Sequence[int] | None] = []
        self._rid: list[int] = []  # node slot -> its run id
        self._free: list[int] = []  # run ids free for reuse
        self.par: list[int] = []
        self.keys: list[int] = []

    def bind(self, par: list[int], keys: list[int]) -> None:
        """Share the tree's slot lists (parent slot and block hash per node slot)."""
        self.par = par
        self.keys = keys

    def size(self) -> int:
        """Live nodes (O(runs): for tests)."""
        return sum(map(len, filter(None, self._runs)))

    def _add(self, parent: Node, new: list[Node], hs: Sequence[int]) -> int:
        """Register ``new`` (a chain of nodes under ``parent``, hashes ``hs``): appended to
        the parent's run if the parent ends it (returns -1), else in a new run (a free id
        first), whose id is returned for the store to key."""
        rid = self._rid
        runs = self._runs
        r = rid[parent] if parent != _ROOT else -1
        if r >= 0 and runs[r][-1] == parent:  # type: ignore[index]
            run: Any = runs[r]
            if type(run) is tuple:  # a run that changes is a list from then on
                run = runs[r] = list(run)
                self._hs[r] = list(self._hs[r])  # type: ignore[arg-type]
            run += new
            self._hs[r] += hs  # type: ignore[operator]
            opened = -1
        elif self._free:
            r = opened = self._free.pop()
            runs[r] = tuple(new)
            self._hs[r] = hs if type(hs) is tuple else tuple(hs)
        else:
            # New runs are tuples: the collector stops tracking tuples of ints, so the
            # runs cost nothing in its full passes.
            r = opened = len(runs)
            runs.append(tuple(new))
            self._hs.append(hs if type(hs) is tuple else tuple(hs))
        if new[0] == len(rid):
            # Fresh slots at the end (the tree allocates them in order): extend in C.
            rid += [r] * len(new)
        else:
            grow = len(self.par) - len(rid)
            if grow > 0:
                rid.extend(repeat(-1, grow))
            _each(map(rid.__setitem__, new, repeat(r)))
        return opened

    def _pop(self, node: Node) -> int:
        """Drop leaf ``node``, its run's last node; the run's id if that emptied it (the run
        is then dead), else -1."""
        r = self._rid[node]
        run: Any = self._runs[r]
        assert run[-1] == node, "discarded node is not its run's last"
        if len(run) > 1:
            if type(run) is tuple:
                run = self._runs[r] = list(run)
                self._hs[r] = list(self._hs[r])  # type: ignore[arg-type]
            run.pop()
            self._hs[r].pop()  # type: ignore[union-attr]
            return -1
        self._runs[r] = None
        self._hs[r] = None
        return r

    def _check_runs(self, nodes: list[Node]) -> list[int]:
        """Assert the run invariants against the tree's ``nodes``; the live run ids."""
        par = self.par
        keys = self.keys
        ids = set(nodes)
        assert self.size() == len(ids), "store size differs from the tree's node count"
        assert len(self._hs) == len(self._runs), "run lists out of step"
        assert len(set(self._free)) == len(self._free), "run id freed twice"
        seen: set[Node] = set()
        live = []
        for r, run in enumerate(self._runs):
            if run is None:
                assert self._hs[r] is None, "dead run keeps hashes"
                continue
            assert r not in self._free, "live run listed free"
            hs: Any = self._hs[r]
            assert run and len(run) == len(hs), "run without nodes or hashes"
            assert list(hs) == [keys[n] for n in run], "run hashes differ from the nodes' keys"
            assert all(par[b] == a for a, b in pairwise(run)), "run broken"
            assert all(self._rid[n] == r for n in run), "node's run id wrong"
            assert not seen.intersection(run), "node in two runs"
            seen.update(run)
            live.append(r)
        assert seen == ids, "store nodes differ from the tree's"
        return live


def _follow(nodes: list[Node], run: Any, hs: Any, key: Sequence[int], d: int) -> int:
    """Extend ``nodes`` (the path's first ``d`` nodes) along ``run`` (hashes ``hs``, the first
    equal to ``key[d]``) while ``key`` matches; returns the new depth.

    A plain loop: a walk leaves most runs after a few blocks, where building C iterators
    over the rest of the key costs more than it saves (callgrind, on the trace)."""
    lim = len(hs) if len(hs) <= len(key) - d else len(key) - d
    j = 1
    while j < lim and hs[j] == key[d + j]:
        j += 1
    nodes += run[:j]
    return d + j


class _DictStore(_Runs):
    """Node runs (see ``_Runs``) whose starts are found by ``starts[hash]``, or by
    ``fallback[(parent slot, hash)]`` when another live run already holds that hash (two
    paths through the same hash: arbitrary key sequences, not chains). A ``starts`` hit
    counts only if its parent is the node found so far, so results are exact for any uint64
    sequence. A dead run leaves its dict at once and its id is reused.
    """

    __slots__ = ("_where", "fallback", "starts")

    def __init__(self) -> None:
        super().__init__()
        self.starts: dict[int, int] = {}
        self.fallback: dict[tuple[int, int], int] = {}
        self._where: list[Any] = []  # run id -> its start hash, or its fallback key

    def walk(self, key: Sequence[int]) -> list[Node]:
        nodes: list[Node] = []
        n_key = len(key)
        sget = self.starts.get
        runs = self._runs
        hs_of = self._hs
        par = self.par
        x = _ROOT
        d = 0
        while d < n_key:
            h = key[d]
            r = sget(h, -1)
            run: Any = runs[r] if r >= 0 else None
            if run is None or par[run[0]] != x:
                r = self.fallback.get((x, h), -1) if self.fallback else -1
                if r < 0:
                    break
                run = runs[r]
            # _follow inlined (the hot walk).
            hs: Any = hs_of[r]
            lim = len(hs) if len(hs) <= n_key - d else n_key - d
            j = 1
            while j < lim and hs[j] == key[d + j]:
                j += 1
            nodes += run[:j]
            d += j
            x = nodes[-1]
        return nodes

    def extend(self, parent: Node, new: list[Node], hs: Sequence[int]) -> None:
        r = self._add(parent, new, hs)
        if r < 0:
            return
        h = hs[0]
        where: Any = h
        if h in self.starts:
            where = (parent, h)
            self.fallback[where] = r
        else:
            self.starts[h] = r
        if r == len(self._where):
            self._where.append(where)
        else:
            self._where[r] = where

    def discard(self, node: Node) -> None:
        r = self._pop(node)
        if r < 0:
            return
        where = self._where[r]
        self._where[r] = None
        if type(where) is tuple:
            del self.fallback[where]
        else:
            del self.starts[where]
        self._free.append(r)

    def maintain(self) -> None:
        return None

    def check(self, nodes: list[Node]) -> None:
        live = self._check_runs(nodes)
        par = self.par
        assert len(self._where) == len(self._runs)
        for r in live:
            run: Any = self._runs[r]
            h = self.keys[run[0]]
            where = self._where[r]
            if type(where) is tuple:
                assert where == (par[run[0]], h) and self.fallback[where] == r
            else:
                assert where == h and self.starts[where] == r, "run start keyed wrongly"
        assert all(self._where[r] is None for r in self._free), "free run still keyed"
        assert len(self.starts) + len(self.fallback) == len(live)


class _Batch:
    """The nodes set by one ``insert`` (or taken over by a later one): owner, time, seq."""

    __slots__ = ("counted", "f", "live", "nodes", "owner", "seq", "t")
    # Made with object.__new__ and its fields set in place (RadixTree._observe, the hot path):
    owner: _Owner
    t: float  # last_seen of its nodes
    seq: int  # insert sequence number (tells stale heap entries apart)
    f: float  # weight factor 2**((t - t0) / half_life) of each live node
    live: int  # nodes still in this batch
    nodes: list[Node]  # its nodes in depth order, some of them since taken by later batches
    counted: bool  # live at the weight watermark: included in the owner's sum


_new_batch = object.__new__


class _Owner:
    """Per-value bookkeeping: its batches and its incrementally maintained weight sum."""

    __slots__ = ("batches", "live_sum", "ops", "peak", "value")

    def __init__(self, value: object) -> None:
        self.value = value
        self.batches: dict[_Batch, None] = {}
        self.live_sum = 0.0
        self.ops = 0
        self.peak = 0.0


def _make_store(backend: str) -> _Store:
    if backend == "dict":
        return _DictStore()
    if backend == "datrie":
        from prefixcache._datrie_store import DatrieStore

        return DatrieStore()
    raise InvalidRecordError("backend", backend, "must be 'dict' or 'datrie'")


def _check_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidRecordError(name, value, "must be a number (seconds), not NaN")
    return float(value)


def _bad_key(key: Sequence[Any], start: int) -> Sequence[int] | None:
    """Validate ``key``, knowing that ``key[:start]`` equals a stored path: return ``None`` if
    every element is an ``int`` in range, a normalised tuple if some are integer-like (numpy
    scalars), or raise.

    Every element's *type* is checked (a float or bool equal to a stored hash would otherwise
    walk like it: ``1.0 == 1`` and both hash alike), the range only for ``key[start:]`` (an
    ``int`` equal to a stored hash is in range): C-level passes, the range one by packing the
    tail into an unsigned 64-bit ``array`` (which rejects exactly the out-of-range ints)."""
    n = len(key)
    if list(map(type, key)).count(int) == n:
        if start >= n:
            return None
        try:
            array("Q", key[start:] if start else key)
        except OverflowError:
            pass  # some int out of range: raised below
        else:
            return None
    out: list[int] = []
    for h in key:
        if isinstance(h, bool) or not hasattr(h, "__index__"):
            raise InvalidRecordError("key", h, "block hashes must be integers in [0, 2**64)")
        v = h.__index__()
        if not 0 <= v < _U64:
            raise InvalidRecordError("key", h, "block hashes must be integers in [0, 2**64)")
        out.append(v)
    return tuple(out)


def _decay(x: float) -> float:
    """``0.5 ** x`` for ``x = age / half_life``; ``math.inf`` where that overflows a float
    (``x <= -1024``: an entry more than 1024 half-lives in the future of ``now``), where
    Python's ``**`` would raise ``OverflowError``. ``ReferenceIndex`` uses the same rule."""
    return math.inf if x <= -1024.0 else 0.5**x


class RadixTree(Generic[V]):
    """An uncompressed trie over sequences of uint64 block hashes, each node owned by a value.

    Semantics (SPEC §2 "The radix tree"):

    * ``insert(key, value, now)`` sets ``value`` and ``last_seen=now`` on **every** node of the
      path (the last writer owns shared prefixes); an empty key is a no-op.
    * ``longest_match(key, now)`` returns ``(value, depth)`` of the deepest node on the key's
      path holding a live value (walking through value-less or expired nodes), else ``None``.
    * A node is expired iff ``ttl > 0 and now - last_seen > ttl`` (age == ttl is live).
      ``ttl = 0`` never expires; ``half_life <= 0`` weighs every live node 1; ``max_entries
      = 0`` is unbounded.
    * ``evict(now)`` drops expired values and prunes value-less branches; ``remove(value)`` /
      ``remove_if(pred)`` drop a value's nodes (``pred`` is called once per distinct value).
    * ``weight(value, now)`` = sum over the value's live nodes of ``0.5 ** (age /
      half_life)``; ``weights_for`` the same for many values (absent ones are 0.0). Results
      equal the naive sum within 1e-11 relative (SPEC allows 1e-9). A term that overflows a
      float (an entry 1024 or more half-lives *after* ``now``, i.e. a clock far behind the
      writes) is ``math.inf`` instead of raising ``OverflowError``, so such a weight is inf.
    * ``len(tree)`` counts value-bearing nodes, unswept expired ones included.
    * ``max_entries``: after an insert that exceeds the cap, values are evicted in order of
      (``last_seen``, depth, insert sequence number) -- least recently seen first, ancestors
      before descendants on equal age, then older inserts first -- pruning as it goes.
    * Keys outside ``0 <= h < 2**64`` (or non-integers) raise
      :class:`clusterrouting.InvalidRecordError` (a ``ValueError``); nothing is stored.

    Backends (``backend=``): ``"dict"`` (nodes grouped in runs, run starts in a dict keyed
    by block hash, verified by parent, with a fallback map for paths sharing a hash) and
    ``"datrie"`` (nodes grouped in
    runs, one key per run start in a forest of small C tries behind a write overlay, see
    :mod:`prefixcache._datrie_store`). Both give identical results.

    Thread-safety: every public method holds one internal lock for its whole duration.

    Complexity: ``insert``/``longest_match`` O(len(key)) (plus amortised O(1) bookkeeping),
    ``weight`` amortised O(1), ``weights_for`` O(len(values)), ``evict``/``remove`` O(removed
    + log), ``remove_if`` O(distinct values + removed), ``items`` O(n log n).

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
        ttl = _check_time("ttl", ttl)
        if ttl < 0:
            raise InvalidRecordError("ttl", ttl, "must be >= 0 (0 never expires)")
        half_life = _check_time("half_life", half_life)
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise InvalidRecordError("max_entries", max_entries, "must be an int >= 0")
        self._ttl = ttl
        self._hl = half_life if half_life > 0 else 0.0
        self._cap = max_entries
        self._backend = backend
        # Node slots (see the module docstring): parallel lists and the free slots.
        self._par: list[int] = []
        self._key: list[int] = []
        self._bat: list[_Batch | None] = []
        self._kids: list[int] = []
        self._slots: list[int] = []
        self._store: _Store = _make_store(backend)
        self._store.bind(self._par, self._key)
        self._maintain = None if backend == "dict" else self._store.maintain
        self._lock = threading.RLock()
        self._owners: dict[Any, _Owner] = {}
        # id(value object) -> owner, for the exact value objects owners hold: resolves
        # candidate keys without calling their (Python-level) __hash__. Ids cannot be reused
        # while the owner keeps its value alive.
        self._by_id: dict[int, _Owner] = {}
        self._len = 0
        self._seq = 0  # bumped by every insert and removal (also guards the walk cache)
        self._w = -math.inf  # weight watermark: batches counted iff live at _w
        self._age: list[tuple[float, int, _Batch]] = []  # every batch with live nodes
        self._exp: list[tuple[float, int, _Batch]] = []  # counted batches (ttl > 0) ...
        # ... except those pushed in time order, which queue here (FIFO pops are O(1)).
        self._expq: deque[tuple[float, int, _Batch]] = deque()
        self._nbatches = 0
        self._tick = 32  # inserts until the next stale-entry check of the heaps
        self._t0 = 0.0  # weight origin shared by every owner (see _term)
        self._exact_only = False
        self._tiny = False  # some weight term is < 2**-400: check sums for tiny values
        self._walk_cache: tuple[Any, list[Node], int, Any] = _NO_CACHE
        # Owners resolved for the last ``_decide`` key list: (list object, _ogen, owners).
        self._ogen = 0  # bumped whenever an owner is created or dropped
        self._owner_cache: tuple[Any, int, list[_Owner | None]] = (None, -1, [])

    # ----------------------------------------------------------------- properties
    @property
    def ttl(self) -> float:
        """Entry lifetime in seconds (0: never expires)."""
        return self._ttl

    @property
    def half_life(self) -> float:
        """Weight half-life in seconds (0: every live entry weighs 1)."""
        return self._hl

    @property
    def max_entries(self) -> int:
        """Cap on value-bearing nodes (0: unbounded)."""
        return self._cap

    @property
    def backend(self) -> Backend:
        """The node-lookup backend (``"dict"`` or ``"datrie"``)."""
        return self._backend

    def __len__(self) -> int:
        return self._len

    # ----------------------------------------------------------------- public API
    def insert(self, key: Sequence[int], value: V, now: float) -> None:
        """Set ``value`` and ``last_seen=now`` on every node of ``key``'s path.

        Raises:
            InvalidRecordError: a block hash is not an integer in ``[0, 2**64)`` (nothing is
                stored), or ``now`` is NaN.
        """
        if len(key):
            self._observe(key, value, now)

    def longest_match(self, key: Sequence[int], now: float) -> tuple[V, int] | None:
        """``(value, depth)`` of the deepest live value on ``key``'s path, or ``None``.

        Raises:
            InvalidRecordError: a block hash is not an integer in ``[0, 2**64)``.
        """
        if not len(key):
            return None
        with self._lock:
            nodes = self._store.walk(key)
            fixed = _bad_key(key, len(nodes))
            if fixed is not None:
                nodes = self._store.walk(fixed)
            return self._match(nodes, now)

    def weight(self, value: V, now: float) -> float:
        """Sum of ``0.5 ** (age / half_life)`` over ``value``'s live nodes (0.0 if none)."""
        with self._lock:
            return self._weights((value,), now)[0]

    def weights_for(self, values: Sequence[V], now: float) -> dict[V, float]:
        """``{value: weight(value, now)}`` for every requested value (0.0 when absent)."""
        with self._lock:
            return dict(zip(values, self._weights(values, now), strict=True))

    def evict(self, now: float) -> int:
        """Remove every expired value (``ttl > 0 and now - last_seen > ttl``) and prune
        branches left without values. Returns the number of values removed."""
        now = _check_time("now", now)
        with self._lock:
            if self._ttl <= 0:
                return 0
            ttl = self._ttl
            age = self._age
            removed = 0
            while age and now - age[0][0] > ttl:
                _, seq, b = heapq.heappop(age)
                if b.live and b.seq == seq:
                    removed += self._drop_batch(b)
            if removed:
                self._after_removal()
            return removed

    def remove(self, value: V) -> int:
        """Drop every node owned by ``value``; returns how many were removed."""
        with self._lock:
            o = self._owners.get(value)
            if o is None:
                return 0
            removed = self._drop_owner(o)
            self._after_removal()
            return removed

    def remove_if(self, predicate: Callable[[V], bool]) -> int:
        """Drop the nodes of every value for which ``predicate(value)`` is true (called once
        per distinct value); returns how many nodes were removed."""
        with self._lock:
            doomed = [o for v, o in list(self._owners.items()) if predicate(v)]
            removed = sum(self._drop_owner(o) for o in doomed)
            if doomed:
                self._after_removal()
            return removed

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
                while cur != _ROOT and cur not in paths:
                    stack.append(cur)
                    cur = par[cur]
                base = () if cur == _ROOT else paths[cur]
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

    def _use_store(self, store: _Store) -> None:
        """Replace the (empty) node store, e.g. a ``DatrieStore`` with tiny merge/rebuild
        thresholds in tests."""
        assert self._len == 0, "only an empty tree may change its store"
        self._store = store
        store.bind(self._par, self._key)
        self._maintain = None if isinstance(store, _DictStore) else store.maintain

    # ------------------------------------------------------- Index fast paths
    def _decide(self, chain: Sequence[int], memo: tuple[Any, ...], now: float) -> PrefixDecision:
        """One locked call for ``Index.decide``: the decision for ``chain`` over ``Index``'s
        candidate memo ``(candidates, keys, ks, ids, shared in-flight)`` (``ks``: the keys
        sorted by (node_id, replica), never mutated; ``ids``: ids of the key objects). The
        hot owner counts only if it is one of the keys (by identity first, then equality).
        The decision keeps the owners' sums and their common decay factor unmultiplied, to
        order them only if asked (``_cold_of``).

        The walk of a tuple chain is remembered so that ``_observe`` of the same object can
        reuse it (tuples cannot change in between; the mutation counter guards the tree)."""
        with self._lock:
            if type(now) is not float or now != now:
                now = _check_time("now", now)
            n = len(chain)
            if n:
                nodes = self._store.walk(chain)
                m = len(nodes)
                key = chain
                # _bad_key's common case inlined: exact ints, the unmatched tail in range.
                try:
                    ok = list(map(type, chain)).count(int) == n and (
                        m >= n or array("Q", chain[m:] if m else chain) is not None
                    )
                except OverflowError:
                    ok = False
                if not ok:
                    fixed = _bad_key(chain, m)
                    if fixed is not None:
                        key = fixed
                        nodes = self._store.walk(fixed)
            # Weights (the common case of _weights inlined). ``ks`` is Index's cached list of
            # candidate keys (never mutated), so its owners are reused until one changes.
            ks = memo[2]
            oc = self._owner_cache
            if oc[0] is ks and oc[1] == self._ogen:
                owners = oc[2]
            else:
                owners = list(map(self._by_id.get, map(id, ks)))
                if None in owners:
                    get = self._owners.get
                    owners = [
                        o if o is not None else get(v) for o, v in zip(owners, ks, strict=True)
                    ]
                self._owner_cache = (ks, self._ogen, owners)
            scale = 1.0
            if now > self._w:
                self._advance(now)
            if now < self._w or self._exact_only:
                vals = [0.0 if o is None else self._exact(o, now) for o in owners]
            else:
                hl = self._hl
                if None in owners:
                    vals = [0.0 if o is None else o.live_sum for o in owners]
                else:
                    vals = [o.live_sum for o in owners]  # type: ignore[union-attr]
                if hl > 0:
                    e = (self._t0 - now) / hl
                    if self._tiny or not -_EXACT_EXP < e < _EXACT_EXP:
                        vals = [
                            0.0
                            if o is None
                            else (
                                s * 2.0**e if s > 1e-150 and e < _EXACT_EXP else self._exact(o, now)
                            )
                            for o, s in zip(owners, vals, strict=True)
                        ]
                    else:
                        scale = 2.0**e
            if n:
                if type(chain) is tuple:
                    self._walk_cache = (chain, nodes, self._seq, key)
                ttl = self._ttl
                bat = self._bat
                for i in range(len(nodes) - 1, -1, -1):
                    b = bat[nodes[i]]
                    if b is not None and not (ttl > 0 and now - b.t > ttl):
                        owner: Any = b.owner.value
                        # Identity first (the owner is usually one of these very objects);
                        # ``in`` alone would call the Python-level __eq__ of every other key.
                        if id(owner) in memo[3] or owner in memo[1]:
                            return _decision(owner, (i + 1) / n, memo, vals, scale)
                        break
            return _decision(None, 0.0, memo, vals, scale)

    def _observe(self, chain: Sequence[int], value: Any, now: float) -> bool:
        """Set ``value`` and ``last_seen=now`` on every node of ``chain`` (non-empty);
        returns False iff ``value`` already owned every node of the chain, live. ``insert``
        and ``Index.observe`` both land here; a walk remembered by ``_decide`` is reused."""
        with self._lock:
            cached = self._walk_cache
            if cached[0] is chain and cached[2] == self._seq:
                found = cached[1]
                key = cached[3]
            else:
                store = self._store
                found = store.walk(chain)
                key = chain
                fixed = _bad_key(chain, len(found))
                if fixed is not None:
                    key = fixed
                    found = store.walk(fixed)
            L = len(key)
            m = len(found)
            fresh = True
            if m == L:
                # Owned whole iff every node's batch is a live one of ``value`` (a prefix
                # re-taken by another key since is news for peers).
                ttl = self._ttl
                fresh = False
                for b in set(map(self._bat.__getitem__, found)):
                    if b is None or (ttl > 0 and now - b.t > ttl):
                        fresh = True
                        break
                    ov = b.owner.value
                    if ov is not value and ov != value:
                        fresh = True
                        break
            t = now if type(now) is float and now == now else _check_time("now", now)
            seq = self._seq = self._seq + 1
            o = self._by_id.get(id(value))
            if o is None:
                o = self._owners.get(value)
                if o is None:
                    o = self._owners[value] = _Owner(value)
                    self._by_id[id(value)] = o
                    self._ogen += 1
            ttl = self._ttl
            counted = ttl <= 0 or not (self._w - t > ttl)
            # The batch's weight factor (the common case of _term inlined).
            hl = self._hl
            if hl > 0:
                e = (t - self._t0) / hl
                f = 2.0**e if -400.0 <= e <= _REBASE else self._term(t)
            else:
                f = 1.0
            bat = self._bat
            take = False
            if m:
                olds = list(map(bat.__getitem__, found))
                b = olds[-1]
                k = olds.count(b)
                take = b is not None and b.live == k
            if take:
                # Take over the deepest node's batch: every one of its live nodes is on this
                # path (a conversation's next turn, a repeated prompt). Only the other found
                # nodes (e.g. a shared system-prompt block) change batch.
                assert b is not None
                oo = b.owner
                if b.counted:
                    b.counted = False  # before _adjust, which may re-sum counted batches
                    self._adjust(oo, -b.live * b.f)
                if oo is not o:
                    del oo.batches[b]
                    if not oo.batches:
                        del self._owners[oo.value]
                        del self._by_id[id(oo.value)]
                        self._ogen += 1
                    o.batches[b] = None
                    b.owner = o
                b.t = t
                b.seq = seq
                b.f = f
                if k != m:
                    for x in set(olds):
                        if x is not b:
                            self._release(x, olds.count(x))
                    _each(map(bat.__setitem__, found, repeat(b)))
                # Only now: a re-sum of an owner above must not count ``b`` (live is stale).
                b.counted = counted
                b.nodes = found
            else:
                # A new batch (built without an __init__ frame: the hot path).
                b = _new_batch(_Batch)
                b.owner = o
                b.t = t
                b.seq = seq
                b.f = f
                b.live = 0
                b.nodes = found
                b.counted = counted
                o.batches[b] = None
                self._nbatches += 1
                if m:
                    for x in set(olds):
                        # _release(x, run) inlined for the common case.
                        if x is None:
                            self._len += olds.count(x)
                            continue
                        run = olds.count(x)
                        live = x.live = x.live - run
                        if x.counted:
                            xo = x.owner
                            ws = xo.live_sum = xo.live_sum - run * x.f
                            if hl > 0:
                                ops = xo.ops = xo.ops + 1
                                if ops * xo.peak > _DRIFT * ws:
                                    self._resum(xo)
                        if not live:
                            self._retire(x)
                        elif live * 4 < len(x.nodes) and len(x.nodes) > 32:
                            xn = x.nodes
                            mine = map(is_, map(bat.__getitem__, xn), repeat(x))
                            x.nodes = list(compress(xn, mine))
                    _each(map(bat.__setitem__, found, repeat(b)))
            if m < L:
                # New nodes, each with one child (the next) and the last with none.
                k = L - m
                tail = key[m:] if m else key
                parent = found[-1] if m else _ROOT
                par = self._par
                kids = self._kids
                free = self._slots
                if not free:
                    # Fresh slots at the end of the lists: C-level extends only.
                    # ``par`` shares the slot int objects held by the store, so the walk's parent
                    # check compares them by identity without dereferencing them.
                    start = len(par)
                    new = list(range(start, start + k))
                    par.append(parent)
                    par.extend(new[:-1])
                    self._key.extend(tail)
                    self._bat += [b] * k
                    kids += [1] * (k - 1)
                    kids.append(0)
                else:
                    new = free[-k:]
                    del free[-k:]
                    if len(new) < k:
                        start = len(par)
                        more = k - len(new)
                        new.extend(range(start, start + more))
                        par.extend(repeat(_ROOT, more))
                        self._key.extend(repeat(0, more))
                        self._bat.extend(repeat(None, more))
                        kids.extend(repeat(0, more))
                    _each(map(par.__setitem__, new, [parent, *new[:-1]]))
                    _each(map(self._key.__setitem__, new, tail))
                    _each(map(self._bat.__setitem__, new, repeat(b)))
                    _each(map(kids.__setitem__, new, repeat(1)))
                    kids[new[-1]] = 0
                if m:
                    kids[parent] += 1
                self._store.extend(parent, new, tail)
                b.nodes.extend(new)
                self._len += L - m
            b.live = L
            if counted:
                # _adjust(o, L * f) inlined.
                ws = o.live_sum = o.live_sum + L * f
                if hl > 0:
                    ops = o.ops = o.ops + 1
                    if ws > o.peak:
                        o.peak = ws
                    if ops * o.peak > _DRIFT * ws:
                        self._resum(o)
            entry = (t, seq, b)
            heapq.heappush(self._age, entry)
            if counted and ttl > 0:
                q = self._expq
                if not q or t >= q[-1][0]:
                    q.append(entry)  # in time order (seq grows): a FIFO, O(1) pops
                else:
                    heapq.heappush(self._exp, entry)
            # Heaps are checked for stale entries every 32 inserts (at most 64 entries late).
            tick = self._tick = self._tick - 1
            if not tick:
                self._tick = 32
                if len(self._age) + len(self._exp) + len(self._expq) > 4 * self._nbatches + 128:
                    self._compact_heaps()
            if self._cap and self._len > self._cap:
                self._evict_lru()
            if self._maintain is not None:
                self._maintain()
            return fresh

    def _check(self) -> None:
        """Assert every internal invariant (for tests). O(n)."""
        with self._lock:
            nodes: list[Node] = []
            batches = self._live_batches()
            seen_batches: set[int] = set()
            live = 0
            for o in self._owners.values():
                assert o.batches, "owner without batches kept"
                assert self._owners.get(o.value) is o
                for b in o.batches:
                    assert b.owner is o and b.live > 0
                    seen_batches.add(id(b))
            assert seen_batches == {id(b) for b in batches}
            assert self._nbatches == len(batches)
            for b in batches:
                mine = [n for n in b.nodes if self._bat[n] is b]
                assert len(mine) == b.live, "batch live count wrong"
                assert len(set(mine)) == len(mine), "node twice in a batch"
                live += b.live
                assert any(e[2] is b and e[1] == b.seq for e in self._age), "batch not aged"
                assert b.counted == (self._ttl <= 0 or not (self._w - b.t > self._ttl)), (
                    "counted flag wrong"
                )
            assert live == self._len, "len differs from live node count"
            # Reachability and kids counts: gather every node reachable from live ones.
            par = self._par
            bat = self._bat
            allnodes: dict[int, None] = {}
            for b in batches:
                for n in b.nodes:
                    if bat[n] is b:
                        cur = n
                        while cur != _ROOT and cur not in allnodes:
                            allnodes[cur] = None
                            cur = par[cur]
            kids: dict[int, int] = {}
            for n in allnodes:
                if par[n] != _ROOT:
                    kids[par[n]] = kids.get(par[n], 0) + 1
            for n in allnodes:
                assert self._kids[n] == kids.get(n, 0), "kids count wrong"
                assert self._kids[n] > 0 or bat[n] is not None, "value-less leaf not pruned"
            slots = set(self._slots)
            assert len(slots) == len(self._slots), "slot freed twice"
            assert not slots & allnodes.keys(), "a live node's slot is free"
            assert len(slots) + len(allnodes) == len(par), "slot leaked"
            assert all(bat[s] is None for s in slots), "free slot holds a batch"
            nodes = list(allnodes)
            self._store.check(nodes)
            for o in self._owners.values():
                exact = sum(b.live * b.f for b in o.batches if b.counted)
                assert math.isclose(o.live_sum, exact, rel_tol=1e-9, abs_tol=1e-300), (
                    "weight sum drifted"
                )

    # ----------------------------------------------------------------- internals
    def _live_batches(self) -> list[_Batch]:
        return [b for o in self._owners.values() for b in o.batches]

    def _term(self, t: float) -> float:
        """``2**((t - t0) / half_life)`` (1.0 without half-life), rebasing ``t0`` first if the
        term would exceed ``2**_REBASE``."""
        hl = self._hl
        if hl <= 0:
            return 1.0
        e = (t - self._t0) / hl
        if e > _REBASE or e != e:
            self._rebase(t)
            e = 0.0
        elif e < -400.0:
            # Terms this small can sum below 1e-150, where weights take the exact path; a
            # write ~900 half-lives in the past of t0 would lose precision outright, so the
            # tree then answers weights by exact sums from now on (pathological clocks only).
            self._tiny = True
            if e < -900.0:
                self._exact_only = True
        return 2.0**e if e > -1074.0 else 0.0

    def _rebase(self, t0: float) -> None:
        self._t0 = t0
        hl = self._hl
        for o in self._owners.values():
            s = 0.0
            for b in o.batches:
                e = (b.t - t0) / hl
                b.f = 2.0**e if e > -1074.0 else 0.0
                if e < -400.0:
                    self._tiny = True
                    if e < -900.0:
                        self._exact_only = True
                if b.counted:
                    s += b.live * b.f
            o.live_sum = s
            o.ops = 0
            o.peak = s

    def _adjust(self, o: _Owner, delta: float) -> None:
        s = o.live_sum + delta
        o.live_sum = s
        if self._hl <= 0:
            return
        o.ops += 1
        if s > o.peak:
            o.peak = s
        if o.ops * o.peak > _DRIFT * s:
            self._resum(o)

    @staticmethod
    def _resum(o: _Owner) -> None:
        """Recompute ``o.live_sum`` exactly (its rounding bound could reach 1e-11)."""
        s = 0.0
        for b in o.batches:
            if b.counted:
                s += b.live * b.f
        o.live_sum = s
        o.ops = 0
        o.peak = s

    def _retire(self, b: _Batch) -> None:
        """``b`` has no live nodes left: forget it."""
        o = b.owner
        del o.batches[b]
        self._nbatches -= 1
        b.nodes = []
        if b.counted:
            b.counted = False
        if not o.batches:
            del self._owners[o.value]
            del self._by_id[id(o.value)]
            self._ogen += 1

    def _release(self, ob: _Batch | None, run: int) -> None:
        """``run`` nodes of batch ``ob`` (``None``: value-less nodes) join a new batch."""
        if ob is None:
            self._len += run
            return
        ob.live -= run
        if ob.counted:
            # _adjust(ob.owner, -run * ob.f) inlined.
            o = ob.owner
            ws = o.live_sum - run * ob.f
            o.live_sum = ws
            if self._hl > 0:
                ops = o.ops = o.ops + 1
                if ws > o.peak:
                    o.peak = ws
                if ops * o.peak > _DRIFT * ws:
                    self._resum(o)
        if not ob.live:
            self._retire(ob)
        elif ob.live * 4 < len(ob.nodes) and len(ob.nodes) > 32:
            nodes = ob.nodes
            ob.nodes = list(
                compress(nodes, map(is_, map(self._bat.__getitem__, nodes), repeat(ob)))
            )

    def _match(self, nodes: list[Node], now: float) -> tuple[Any, int] | None:
        ttl = self._ttl
        bat = self._bat
        for i in range(len(nodes) - 1, -1, -1):
            b = bat[nodes[i]]
            if b is not None and not (ttl > 0 and now - b.t > ttl):
                return b.owner.value, i + 1
        return None

    def _advance(self, now: float) -> None:
        """Move the watermark to ``now`` (>= current), uncounting batches that expire."""
        self._w = now
        ttl = self._ttl
        if ttl <= 0:
            return
        exp = self._exp
        q = self._expq
        hl_on = self._hl > 0
        # Pop in (t, seq) order from the in-order queue and the heap (keys are unique).
        while True:
            if exp and (not q or exp[0] < q[0]):
                if not now - exp[0][0] > ttl:
                    break
                _, seq, b = heapq.heappop(exp)
            elif q and now - q[0][0] > ttl:
                _, seq, b = q.popleft()
            else:
                break
            if b.counted and b.seq == seq and b.live:
                b.counted = False
                # _adjust(b.owner, -b.live * b.f) inlined (a sum only falls here).
                o = b.owner
                ws = o.live_sum = o.live_sum - b.live * b.f
                if hl_on:
                    ops = o.ops = o.ops + 1
                    if ops * o.peak > _DRIFT * ws:
                        self._resum(o)

    def _weights(self, values: Sequence[Any], now: float) -> list[float]:
        if type(now) is not float or now != now:
            now = _check_time("now", now)
        owners = list(map(self._by_id.get, map(id, values)))
        if None in owners:
            get = self._owners.get
            owners = [o if o is not None else get(v) for o, v in zip(owners, values, strict=True)]
        if now > self._w:
            self._advance(now)
        elif now < self._w or self._exact_only:
            return [0.0 if o is None else self._exact(o, now) for o in owners]
        sums = [0.0 if o is None else o.live_sum for o in owners]
        hl = self._hl
        if hl <= 0:
            return sums
        e = (self._t0 - now) / hl
        if self._tiny or not -_EXACT_EXP < e < _EXACT_EXP:
            return [
                0.0
                if o is None
                else (s * 2.0**e if s > 1e-150 and e < _EXACT_EXP else self._exact(o, now))
                for o, s in zip(owners, sums, strict=True)
            ]
        f = 2.0**e
        return [s * f for s in sums]

    def _exact(self, o: _Owner, now: float) -> float:
        ttl = self._ttl
        hl = self._hl
        s = 0.0
        for b in o.batches:
            age = now - b.t
            if ttl > 0 and age > ttl:
                continue
            s += b.live * (_decay(age / hl) if hl > 0 else 1.0)
        return s

    def _unset(self, n: Node) -> None:
        """Drop node ``n``'s value (its batch bookkeeping is the caller's) and prune."""
        bat = self._bat
        kids = self._kids
        bat[n] = None
        store = self._store
        free = self._slots
        while kids[n] == 0 and bat[n] is None:
            store.discard(n)
            free.append(n)
            p = self._par[n]
            if p == _ROOT:
                break
            kids[p] -= 1
            n = p

    def _drop_batch(self, b: _Batch) -> int:
        bat = self._bat
        nodes = [n for n in b.nodes if bat[n] is b]
        count = len(nodes)
        b.live = 0
        if b.counted:
            b.counted = False
            self._adjust(b.owner, -count * b.f)
        self._len -= count
        self._retire(b)
        # Deepest first so pruning walks each branch once.
        for n in reversed(nodes):
            self._unset(n)
        self._seq += 1  # a mutation: invalidates the walk cache
        return count

    def _drop_owner(self, o: _Owner) -> int:
        return sum(self._drop_batch(b) for b in list(o.batches))

    def _after_removal(self) -> None:
        if len(self._age) + len(self._exp) + len(self._expq) > 4 * self._nbatches + 128:
            self._compact_heaps()
        self._store.maintain()

    def _compact_heaps(self) -> None:
        self._age = [e for e in self._age if e[2].live and e[2].seq == e[1]]
        heapq.heapify(self._age)
        self._exp = [e for e in self._exp if e[2].counted and e[2].live and e[2].seq == e[1]]
        heapq.heapify(self._exp)
        self._expq = deque(e for e in self._expq if e[2].counted and e[2].live and e[2].seq == e[1])

    def _evict_lru(self) -> None:
        """Evict by (last_seen, depth, seq) until within the cap."""
        age = self._age
        cap = self._cap
        bat = self._bat
        par = self._par
        while self._len > cap and age:
            t, seq, b = heapq.heappop(age)
            if not b.live or b.seq != seq:
                continue
            group = [b]
            while age and age[0][0] == t:
                _, s2, b2 = heapq.heappop(age)
                if b2.live and b2.seq == s2:
                    group.append(b2)
            if len(group) == 1:
                # One batch: its node list is already in depth order (ancestors first).
                excess = self._len - cap
                victims = []
                for n in b.nodes:
                    if bat[n] is b:
                        victims.append(n)
                        if len(victims) == excess:
                            break
                k = len(victims)
                b.live -= k
                self._len -= k
                if b.counted:
                    if not b.live:
                        b.counted = False
                    self._adjust(b.owner, -k * b.f)
                if not b.live:
                    self._retire(b)
                else:
                    heapq.heappush(age, (t, seq, b))
                for n in victims:
                    self._unset(n)
                continue
            ordered: list[tuple[int, int, Node, _Batch]] = []
            for g in group:
                for n in g.nodes:
                    if bat[n] is g:
                        d = 0
                        cur = n
                        while cur != _ROOT:
                            d += 1
                            cur = par[cur]
                        ordered.append((d, g.seq, n, g))
            ordered.sort(key=itemgetter(0, 1))
            for _d, _s, n, g in ordered:
                if self._len <= cap:
                    break
                if bat[n] is not g:
                    continue
                g.live -= 1
                self._len -= 1
                if g.counted:
                    if not g.live:
                        g.counted = False
                    self._adjust(g.owner, -g.f)
                if not g.live:
                    self._retire(g)
                self._unset(n)
            for g in group:
                if g.live:
                    heapq.heappush(age, (g.t, g.seq, g))
        self._seq += 1  # a mutation: invalidates the walk cache

    def __iter__(self) -> Iterator[tuple[tuple[int, ...], V, float]]:
        return iter(self.items())
