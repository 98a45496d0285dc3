"""The ``datrie`` node store of :class:`prefixcache.RadixTree` (``backend="datrie"``).

This is the only module that imports :mod:`datrie`; it owns the key encoding and validates
every key before a write.

**Runs (path compression).** The tree's nodes are grouped into *runs*: chains ``n0 -> n1 ->
...`` (each the parent of the next), every node in exactly one run; a run keeps its node slots
and their block hashes in two lists. ``extend`` under a node that is the last of its run
appends the new nodes to that run (a conversation's next turn); under a mid-run node or the
root the new chain becomes a new run. Only a run's *start* is ever a trie key, so the trie
sees one write per run, not per node. Every child of a run's last node, and every child of a
mid-run node other than the run's next node, is a run start; so a lookup (``walk``) finds the
run starting at ``(root, key[0])``, follows it as far as the key's hashes match (a plain
loop, node lists built by slicing), then looks up the run starting at
``(deepest matched node, next hash)``, and so on: one store lookup per run on the path, none
per node. ``discard`` only ever removes a leaf, which is its run's last node: the run
shrinks, and once empty it is dead.

**Run start keys.** A run start's block hash is *interned* to a sequential id, written as a
fixed-width code (most significant digit first) of ``_WIDTH`` characters. Its trie key is that
code (the *primary* key of the hash) unless a live run already holds it, else the code
followed by the code of its parent slot (a *fallback* key): flat keys of 4 or 8
characters, exact for any uint64 sequences (chains never need a fallback). A lookup of
``(parent, hash)`` tries the primary key and accepts it only if the run's first node has that
parent, then the fallback key.

How each measured fact about datrie 0.8.3 is handled:

* **At most 255 alphabet symbols (more is remapped, then aborts); chr(0) truncates and merges
  keys.** The alphabet is exactly ``chr(1)..chr(255)`` (255 symbols, no chr(0)); codes are
  base-255 digits over it.
* **Characters outside the alphabet are dropped silently; ``__setitem__`` ignores failures.**
  Codes are generated only from the alphabet, and :func:`_validate` checks every key (length a
  multiple of ``_WIDTH``, every character in ``chr(1)..chr(255)``) before it is written.
* **``BaseTrie`` values are int32 and -1 cannot be read back; ``Trie`` never frees deleted
  values.** We use ``BaseTrie`` holding our own run ids in ``[0, 2**31 - 2]`` (never -1).
* **Insert cost grows with the trie.** A fresh build in sorted order costs ~0.2-3.5 us per key
  up to ~2,000 keys, but 0.3-100 us at 4,000-12,000 (depending on the key set) and 0.1-1.5 ms
  at 50,000 (libdatrie's free-cell search degrades as its double array fills); whole encoded
  paths as keys (long shared prefixes: the trace's 11,905 run starts) cost ~105 us each;
  random-order inserts 15-90 us; sorted inserts into an existing trie 7-40 us. So the run
  starts live in a *forest* of small tries, each holding one key range (``_bounds``: a C-level
  ``bisect`` picks the trie), each built fresh, in sorted order, and split into tries of
  ``part_size`` keys once it outgrows ``2 * part_size``. Flat keys keep every trie shallow,
  and sequential ids make the keys of new runs dense and increasing (the cheapest builds
  measured), so new runs mostly land in the last, small trie. New runs first go to a ``dict``
  *write overlay* (key -> run id), which lookups consult before the tries; once the overlay
  outgrows ``max(merge_min, live keys of the tries it falls in)``, those tries are rebuilt
  with it (amortised O(1) trie writes per run).
* **Per-key deletes cost 0.1-1 ms; tombstones never shrink a trie.** Nothing is ever deleted
  from a trie: a dead run's id stays in it as a tombstone (its run list is ``None``, which a
  lookup skips) until that trie is rebuilt; only then is the id reused. The whole forest is
  rebuilt once tombstones outnumber live trie keys, or once interned ids outnumber four times
  the live runs (then the start hashes are interned afresh), so memory stays bounded under
  churn.
* **``prefixes``/``prefix_items`` are O(depth**2); ``items()`` costs ~1.3 us per key.** Only
  ``get`` is used for lookups; rebuilds take each trie's keys from its member run ids.
* **A ``State`` or ``iter_*`` generator kept across a mutation is unsafe.** Neither is used;
  every datrie call completes inside the tree's lock, which also serialises all mutation.
* **``len()`` is O(N); nothing releases the GIL; pickling goes through a temp file.** Sizes
  are counted here; calls are short and made under one lock; the tries are never pickled
  (snapshots go through ``RadixTree.items()``).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import datrie

from prefixcache._runs import ROOT, Node, RunStore, follow

__all__ = ["DatrieStore"]

_ALPHABET = "".join(chr(i) for i in range(1, 256))
_WIDTH = 4  # 255**4 ~ 4.2e9 interned hashes (and node slots) per code
_MAX_ID = 2**31 - 2
_MERGE_MIN = 1024
_REBUILD_MIN = 4096
_PART_SIZE = 1024  # keys per trie after a split (a trie holds at most twice this)

_consume = deque
_KEY = itemgetter(0)
_VAL = itemgetter(1)


_DIGIT = list(_ALPHABET)
_OUTSIDE = re.compile("[^\x01-\xff]")  # any character outside the alphabet


def _code(i: int) -> str:
    # Most significant digit first: lexicographic order is numeric order, so sequential ids
    # give dense, increasing keys (the cheapest sorted builds measured).
    d = _DIGIT
    return d[i // 16581375 % 255] + d[i // 65025 % 255] + d[i // 255 % 255] + d[i % 255]


def _validate_all(paths: list[str]) -> None:
    """:func:`_validate` for many keys in C-level passes: one regex scan over their
    concatenation, then the lengths."""
    lens = list(map(len, paths))
    if (
        _OUTSIDE.search("".join(paths)) is not None
        or (lens and min(lens) == 0)
        or any(map(_WIDTH.__rmod__, lens))
    ):
        for s in paths:
            _validate(s)


def _validate(s: str) -> None:
    """Reject any key datrie would silently corrupt (chr(0), outside the alphabet). One C
    regex scan (``max(s)`` compared characters one by one at Python level)."""
    if not s or len(s) % _WIDTH or _OUTSIDE.search(s) is not None:
        raise ValueError(f"datrie key {s!r} is not a valid encoded path")


class _Part:
    """One trie of the forest: the run ids written to it (live or tombstoned) and how many
    of them are dead."""

    __slots__ = ("dead", "members", "trie")

    def __init__(self, items: list[tuple[str, int]]) -> None:
        paths = list(map(_KEY, items))
        ids = list(map(_VAL, items))
        _validate_all(paths)
        if ids and (min(ids) < 0 or max(ids) > _MAX_ID):
            raise ValueError("datrie store: run id out of range")
        trie = datrie.BaseTrie(_ALPHABET)
        _consume(map(trie.__setitem__, paths, ids), 0)
        self.trie = trie
        self.members = ids
        self.dead = 0


class DatrieStore(RunStore):
    """Runs of nodes; run starts in a forest of ``datrie.BaseTrie`` plus a dict write overlay.
    Not thread-safe on its own: :class:`prefixcache.RadixTree` calls it under its lock."""

    __slots__ = (
        "_bounds",
        "_cstr",
        "_dead",
        "_ids",
        "_in_trie",
        "_key",
        "_merge_min",
        "_overlay",
        "_part_size",
        "_parts",
        "_rebuild_min",
        "_tcost",
        "_touched",
    )

    def __init__(
        self,
        *,
        merge_min: int = _MERGE_MIN,
        rebuild_min: int = _REBUILD_MIN,
        part_size: int = _PART_SIZE,
    ) -> None:
        self._merge_min = merge_min
        self._rebuild_min = rebuild_min
        self._part_size = max(1, part_size)
        # The forest: _parts[k] holds the keys in [_bounds[k - 1], _bounds[k]).
        self._parts: list[_Part] = [_Part([])]
        self._bounds: list[str] = []
        super().__init__()
        # Per run id: its key ("" once dead or free). Tombstoned ids are not free until the
        # trie holding them is rebuilt.
        self._key: list[str] = []
        self._overlay: dict[str, int] = {}  # runs not yet in a trie: key -> run id
        # Overlay flush cost: the tries its keys fall in (indexes) and their live key counts.
        self._touched: dict[int, None] = {}
        self._tcost = 0
        self._dead = 0  # tombstones in the forest
        self._in_trie = 0  # live runs in the forest
        self._ids: dict[int, int] = {}  # block hash of a run start -> interned id
        self._cstr: list[str] = []  # interned id -> its code

    def _lookup(self, s: str) -> int:
        """The live run keyed ``s`` (overlay first, then its trie), or -1."""
        r = self._overlay.get(s)
        if r is not None:
            return r
        got: int = self._parts[bisect_right(self._bounds, s)].trie.get(s, -1)
        return got if got >= 0 and self.runs[got] is not None else -1

    def walk(self, key: Sequence[int]) -> list[Node]:
        nodes: list[Node] = []
        n_key = len(key)
        if not n_key:
            return nodes
        ids_get = self._ids.get
        cstr = self._cstr
        oget = self._overlay.get
        runs = self.runs
        hs_of = self.hashes
        par = self.par
        bounds = self._bounds
        parts = self._parts
        x = ROOT
        d = 0
        while True:
            # The run starting at (x, key[d]): a node there is always a run start.
            i = ids_get(key[d])
            if i is None:
                return nodes
            c = cstr[i]
            r = oget(c)
            if r is None:
                r = parts[bisect_right(bounds, c) if bounds else 0].trie.get(c, -1)
            run: Any = runs[r] if r >= 0 else None
            if run is None or par[run[0]] != x:
                r = self._lookup(c + _code(x + 1))
                if r < 0:
                    return nodes
                run = runs[r]
            d = follow(nodes, run, hs_of[r], key, d)  # type: ignore[arg-type]
            if d >= n_key:
                return nodes
            x = nodes[-1]

    def extend(self, parent: Node, new: list[Node], hs: Sequence[int]) -> None:
        if (
            not self.free_runs
            and len(self.runs) > _MAX_ID
            and (parent == ROOT or self.runs[self.run_of[parent]][-1] != parent)  # type: ignore[index]
        ):
            raise OverflowError("datrie store: too many runs")  # a new run needs an id
        r = self.add(parent, new, hs)
        if r < 0:
            return  # the parent ends its run: the run grows, no trie write
        # A new run, keyed by its start hash's code (or with its parent's code: see above).
        h = hs[0]
        i = self._ids.get(h)
        if i is None:
            i = self._ids[h] = len(self._cstr)
            s = _code(i)
            self._cstr.append(s)
        else:
            s = self._cstr[i]
            if self._lookup(s) >= 0:
                s += _code(parent + 1)
        if r == len(self._key):
            self._key.append(s)
        else:
            self._key[r] = s
        self._overlay[s] = r
        p = bisect_right(self._bounds, s)
        if p not in self._touched:
            self._touched[p] = None
            part = self._parts[p]
            self._tcost += len(part.members) - part.dead

    def discard(self, node: Node) -> None:
        r = self.pop(node)
        if r < 0:
            return
        # The run is dead.
        s = self._key[r]
        self._key[r] = ""
        if self._overlay.get(s) == r:
            del self._overlay[s]
            self.free_runs.append(r)
        else:
            self._parts[bisect_right(self._bounds, s)].dead += 1
            self._dead += 1
            self._in_trie -= 1

    def maintain(self) -> None:
        live = self._in_trie
        recycle = (
            len(self._cstr) > 4 * (live + len(self._overlay)) + 16 * self._rebuild_min
            or len(self._cstr) > 255**_WIDTH // 2
        )
        if recycle or self._dead > max(self._rebuild_min, live):
            self._rebuild(recycle)
        elif len(self._overlay) > max(self._merge_min, self._tcost):
            self._flush()

    def _split(self, items: list[tuple[str, int]]) -> list[_Part]:
        """Tries for sorted ``items``: one if at most ``2 * part_size``, else chunks of
        ``part_size``."""
        size = self._part_size
        if len(items) <= 2 * size:
            return [_Part(items)]
        return [_Part(items[j : j + size]) for j in range(0, len(items), size)]

    def _flush(self) -> None:
        """Rebuild the tries the overlay's keys fall in, with them (splitting big ones)."""
        bounds = self._bounds
        parts = self._parts
        runs = self.runs
        keys = self._key
        new = sorted(self._overlay.items())
        where = [bisect_right(bounds, s) for s, _ in new]
        # Highest trie first, so that splitting one does not shift the ones still to do.
        end = len(new)
        while end:
            p = where[end - 1]
            start = bisect_left(where, p)
            part = parts[p]
            live = [r for r in part.members if runs[r] is not None]
            self.free_runs += [r for r in part.members if runs[r] is None]
            self._dead -= part.dead
            items = sorted([*zip(map(keys.__getitem__, live), live, strict=True), *new[start:end]])
            out = self._split(items)
            parts[p : p + 1] = out
            bounds[p:p] = [items[j * self._part_size][0] for j in range(1, len(out))]
            end = start
        self._in_trie += len(new)
        self._overlay = {}
        self._touched = {}
        self._tcost = 0

    def _rebuild(self, recycle: bool) -> None:
        """A fresh forest of every live run's key (overlay included), in sorted order;
        tombstoned ids become free. With ``recycle``, the start hashes are interned afresh."""
        runs = self.runs
        hs_of = self.hashes
        live = [r for r, run in enumerate(runs) if run is not None]
        if recycle:
            ids: dict[int, int] = {}
            for r in live:
                ids.setdefault(hs_of[r][0], len(ids))  # type: ignore[index]
            self._ids = ids
            self._cstr = list(map(_code, range(len(ids))))
        # Keys afresh: the first live run of each start hash takes its primary key.
        cstr = self._cstr
        ids = self._ids
        par = self.par
        keys = self._key
        taken: set[str] = set()
        for r in live:
            run: Any = runs[r]
            s = cstr[ids[hs_of[r][0]]]  # type: ignore[index]
            if s in taken:
                s += _code(par[run[0]] + 1)
            else:
                taken.add(s)
            keys[r] = s
        items = sorted(zip(map(keys.__getitem__, live), live, strict=True))
        size = self._part_size
        self._parts = [_Part(items[j : j + size]) for j in range(0, len(items), size)] or [
            _Part([])
        ]
        self._bounds = [items[j][0] for j in range(size, len(items), size)]
        # Dead ids past the last live one are dropped; the others become free.
        n_ids = live[-1] + 1 if live else 0
        del runs[n_ids:], hs_of[n_ids:], keys[n_ids:]
        self.free_runs = [
            r for r in range(n_ids - 1, -1, -1) if runs[r] is None
        ]  # pop(): low first
        self._dead = 0
        self._in_trie = len(live)
        self._overlay = {}
        self._touched = {}
        self._tcost = 0

    def check(self, nodes: list[Node]) -> None:
        live = self.check_runs(nodes)
        par = self.par
        runs = self.runs
        n_ids = len(runs)
        assert len(self._key) == n_ids
        overlay = self._overlay
        assert all(self._key[r] == s for s, r in overlay.items()), "overlay keyed wrongly"
        keyed: dict[str, int] = {}
        for r in live:
            run: Any = runs[r]
            hs: Any = self.hashes[r]
            s = self._key[r]
            _validate(s)
            c = self._cstr[self._ids[hs[0]]]
            assert s in (c, c + _code(par[run[0]] + 1)), "run keyed wrongly"
            assert keyed.setdefault(s, r) == r, "two live runs share a key"
            if s not in overlay:
                got = self._parts[bisect_right(self._bounds, s)].trie.get(s, -1)
                assert got == r, "trie entry keyed wrongly"
        # Primary keys first: a fallback's hash has a live primary or had one (its tombstone
        # or its replacement in the overlay); lookups try both, so only uniqueness matters.
        assert set(overlay.values()) <= set(live), "overlay holds a dead run"
        assert self._in_trie == len(live) - len(overlay), "live trie run count wrong"
        # The forest: bounds sorted, members exactly the trie values, tombstones counted.
        bounds = self._bounds
        parts = self._parts
        assert len(parts) == len(bounds) + 1 and bounds == sorted(set(bounds))
        members: set[int] = set()
        dead = 0
        for p, part in enumerate(parts):
            items = part.trie.items()
            assert sorted(part.members) == sorted(map(_VAL, items)), "members differ"
            assert not members.intersection(part.members), "run id in two tries"
            members.update(part.members)
            lo = bounds[p - 1] if p else ""
            assert all(lo <= s and (p == len(bounds) or s < bounds[p]) for s, _ in items)
            for s, r in items:
                assert runs[r] is None or (self._key[r] == s and s not in overlay)
            d = sum(runs[r] is None for r in part.members)
            assert part.dead == d, "tombstone count wrong"
            dead += d
        assert self._dead == dead
        free = set(self.free_runs)
        assert len(free) == len(self.free_runs), "run id freed twice"
        assert not free & members and not free.intersection(live), "a used run id is free"
        dead_ids = {r for r in range(n_ids) if runs[r] is None}
        assert dead_ids == free | {r for r in members if runs[r] is None}, "run id lost"
        assert all(self.hashes[r] is None and not self._key[r] for r in dead_ids)
        assert self._cstr == list(map(_code, range(len(self._cstr)))), "codes wrong"
        assert (
            sorted(self._ids.values())
            == list(range(len(self._ids)))
            == list(range(len(self._cstr)))
        ), "interned ids wrong"
