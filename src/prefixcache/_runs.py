"""Node runs and the ``dict`` node store of :class:`prefixcache.RadixTree`.

A tree node is an ``int`` *slot* into the tree's parallel lists (parent slot, block hash,
batch, child count: see :mod:`prefixcache._tree`). A store finds the nodes on a key's path.
Both stores group nodes into *runs* (:class:`RunStore`): a run is a chain of nodes ``n0 ->
n1 -> ...`` (each the parent of the next), every node in exactly one run. New nodes under
the last node of a run extend it (a conversation's next turn); under a mid-run node or the
root they open a run. So a path is a few runs: a walk does one store lookup per run and
follows each with :func:`follow`, and an insert writes one store key per new run, none per
node. The stores differ only in how they find a run's start: :class:`DictStore` by a dict
keyed by block hash, ``prefixcache._datrie_store.DatrieStore`` by a forest of C tries.

Runs are tuples until they change (the collector stops tracking tuples of ints, so
untouched runs cost nothing in its full passes); one that changes becomes a list. The tree
discards only leaves, which are their run's last node.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

__all__ = ["ROOT", "DictStore", "Node", "RunStore", "follow"]

ROOT = -1
"""The parent slot of a depth-1 node."""

Node = int
"""A node slot of the tree."""


class RunStore:
    """The runs shared by both stores (the lookup of run starts is each store's own).

    Attributes (read by the stores, written only through the methods here):
        runs: run id -> its node slots (a tuple while unchanged, else a list), ``None`` once
            the run is dead.
        hashes: run id -> the block hashes of its nodes (same shape as ``runs``).
        run_of: node slot -> its run id.
        free_runs: dead run ids free for reuse.
        par, keys: the tree's parent-slot and block-hash lists (shared, see :meth:`bind`).

    Not thread-safe on its own: the tree calls it under its lock.
    """

    __slots__ = ("free_runs", "hashes", "keys", "par", "run_of", "runs")

    def __init__(self) -> None:
        self.runs: list[Sequence[Node] | None] = []
        self.hashes: list[Sequence[int] | None] = []
        self.run_of: list[int] = []
        self.free_runs: list[int] = []
        self.par: list[int] = []
        self.keys: list[int] = []

    def bind(self, par: list[int], keys: list[int]) -> None:
        """Share the tree's slot lists (mutated in place, never replaced)."""
        self.par = par
        self.keys = keys

    def size(self) -> int:
        """Live nodes (O(runs): for tests)."""
        return sum(map(len, filter(None, self.runs)))

    def add(self, parent: Node, new: list[Node], hs: Sequence[int]) -> int:
        """Register ``new`` (a chain of nodes under ``parent``, hashes ``hs``): appended to
        the parent's run if the parent ends it (returns -1), else in a new run (a free id
        first), whose id is returned for the store to key."""
        run_of = self.run_of
        runs = self.runs
        r = run_of[parent] if parent != ROOT else -1
        if r >= 0 and runs[r][-1] == parent:  # type: ignore[index]
            self._grow(r, new, hs)
            opened = -1
        else:
            opened = r = self.free_runs.pop() if self.free_runs else len(runs)
            run = tuple(new)
            hs_run = hs if type(hs) is tuple else tuple(hs)
            if r == len(runs):
                runs.append(run)
                self.hashes.append(hs_run)
            else:
                runs[r] = run
                self.hashes[r] = hs_run
        if new[0] == len(run_of):
            # Fresh slots at the end (the tree allocates them in order): extend in C.
            run_of += [r] * len(new)
        else:
            grow = len(self.par) - len(run_of)
            if grow > 0:
                run_of += [-1] * grow
            for n in new:
                run_of[n] = r
        return opened

    def _grow(self, r: int, new: list[Node], hs: Sequence[int]) -> None:
        run = self._as_list(r)
        run += new
        self.hashes[r] += hs  # type: ignore[operator]

    def _as_list(self, r: int) -> list[Node]:
        """Run ``r`` as a list (converted, with its hashes, the first time it changes)."""
        run: Any = self.runs[r]
        if type(run) is tuple:
            run = self.runs[r] = list(run)
            self.hashes[r] = list(self.hashes[r])  # type: ignore[arg-type]
        return run  # type: ignore[no-any-return]

    def pop(self, node: Node) -> int:
        """Drop leaf ``node``, its run's last node; the run's id if that emptied it (the run
        is then dead), else -1."""
        r = self.run_of[node]
        run = self.runs[r]
        assert run is not None and run[-1] == node, "discarded node is not its run's last"
        if len(run) > 1:
            self._as_list(r).pop()
            self.hashes[r].pop()  # type: ignore[union-attr]
            return -1
        self.runs[r] = None
        self.hashes[r] = None
        return r

    def check_runs(self, nodes: list[Node]) -> list[int]:
        """Assert the run invariants against the tree's ``nodes``; the live run ids."""
        par = self.par
        keys = self.keys
        ids = set(nodes)
        assert self.size() == len(ids), "store size differs from the tree's node count"
        assert len(self.hashes) == len(self.runs), "run lists out of step"
        assert len(set(self.free_runs)) == len(self.free_runs), "run id freed twice"
        seen: set[Node] = set()
        live = []
        for r, run in enumerate(self.runs):
            if run is None:
                assert self.hashes[r] is None, "dead run keeps hashes"
                continue
            assert r not in self.free_runs, "live run listed free"
            hs: Any = self.hashes[r]
            assert run and len(run) == len(hs), "run without nodes or hashes"
            assert list(hs) == [keys[n] for n in run], "run hashes differ from the nodes' keys"
            assert all(par[b] == a for a, b in pairwise(run)), "run broken"
            assert all(self.run_of[n] == r for n in run), "node's run id wrong"
            assert not seen.intersection(run), "node in two runs"
            seen.update(run)
            live.append(r)
        assert seen == ids, "store nodes differ from the tree's"
        return live


def follow(
    nodes: list[Node], run: Sequence[Node], hs: Sequence[int], key: Sequence[int], d: int
) -> int:
    """Extend ``nodes`` (the path's first ``d`` nodes) along ``run`` (hashes ``hs``, the
    first equal to ``key[d]``) while ``key`` matches; returns the new depth.

    A plain loop: a walk leaves most runs after a few blocks, where building C iterators
    over the rest of the key costs more than it saves."""
    lim = len(hs) if len(hs) <= len(key) - d else len(key) - d
    j = 1
    while j < lim and hs[j] == key[d + j]:
        j += 1
    nodes += run[:j]
    return d + j


class DictStore(RunStore):
    """Runs whose starts are found by ``starts[hash]``, or by ``fallback[(parent slot,
    hash)]`` when another live run already holds that hash (two paths through the same hash:
    arbitrary key sequences, not chains). A ``starts`` hit counts only if its parent is the
    node found so far, so results are exact for any uint64 sequence. A dead run leaves its
    dict at once and its id is reused. Not thread-safe on its own."""

    __slots__ = ("fallback", "starts", "where")

    def __init__(self) -> None:
        super().__init__()
        self.starts: dict[int, int] = {}
        self.fallback: dict[tuple[int, int], int] = {}
        self.where: list[Any] = []  # run id -> its start hash, or its fallback key

    def walk(self, key: Sequence[int]) -> list[Node]:
        """The nodes on ``key``'s path, root first (as deep as it is stored)."""
        nodes: list[Node] = []
        n_key = len(key)
        starts = self.starts.get
        runs = self.runs
        hashes = self.hashes
        par = self.par
        x = ROOT
        d = 0
        while d < n_key:
            h = key[d]
            r = starts(h, -1)
            run = runs[r] if r >= 0 else None
            if run is None or par[run[0]] != x:
                r = self.fallback.get((x, h), -1) if self.fallback else -1
                if r < 0:
                    break
                run = runs[r]
            d = follow(nodes, run, hashes[r], key, d)  # type: ignore[arg-type]
            x = nodes[-1]
        return nodes

    def extend(self, parent: Node, new: list[Node], hs: Sequence[int]) -> None:
        """Register ``new`` (a chain of nodes under ``parent``, hashes ``hs``)."""
        r = self.add(parent, new, hs)
        if r < 0:
            return
        h = hs[0]
        where: Any = h
        if h in self.starts:
            where = (parent, h)
            self.fallback[where] = r
        else:
            self.starts[h] = r
        if r == len(self.where):
            self.where.append(where)
        else:
            self.where[r] = where

    def discard(self, node: Node) -> None:
        """Drop leaf ``node`` (its run's last node)."""
        r = self.pop(node)
        if r < 0:
            return
        where = self.where[r]
        self.where[r] = None
        if type(where) is tuple:
            del self.fallback[where]
        else:
            del self.starts[where]
        self.free_runs.append(r)

    def maintain(self) -> None:
        """Nothing to do: a dict store never needs rebuilding."""
        return None

    def check(self, nodes: list[Node]) -> None:
        """Assert every invariant against the tree's live ``nodes`` (for tests)."""
        live = self.check_runs(nodes)
        par = self.par
        assert len(self.where) == len(self.runs)
        for r in live:
            run: Any = self.runs[r]
            h = self.keys[run[0]]
            where = self.where[r]
            if type(where) is tuple:
                assert where == (par[run[0]], h) and self.fallback[where] == r
            else:
                assert where == h and self.starts[where] == r, "run start keyed wrongly"
        assert all(self.where[r] is None for r in self.free_runs), "free run still keyed"
        assert len(self.starts) + len(self.fallback) == len(live)
