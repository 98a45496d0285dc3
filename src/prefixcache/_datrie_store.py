"""The ``datrie`` node store of :class:`prefixcache.RadixTree` (``backend="datrie"``).

This is the only module that imports :mod:`datrie`; it owns the key encoding and validates
every key before a write. How each measured fact about datrie 0.8.3 is handled:

* **At most 255 alphabet symbols (more is remapped, then aborts); chr(0) truncates and merges
  keys.** The alphabet is exactly ``chr(1)..chr(255)`` (255 symbols, no chr(0)). Every block
  hash is *interned* to a small integer id, written as a fixed-width code of ``_WIDTH``
  characters over that alphabet; a path is the concatenation of its codes.
* **Characters outside the alphabet are dropped silently; ``__setitem__`` ignores failures.**
  Codes are generated only from the alphabet, and :func:`_validate` checks every key (length a
  multiple of ``_WIDTH``, every character in ``chr(1)..chr(255)``) before it is written.
* **``BaseTrie`` values are int32 and -1 cannot be read back; ``Trie`` never frees deleted
  values.** We use ``BaseTrie`` holding our own node ids in ``[0, 2**31 - 2]`` (never -1);
  the tree's node slots live in a list indexed by id.
* **Random-order inserts cost ~100 us, sorted ~3 us; deletes 0.1-1 ms.** New nodes go to a
  ``dict`` *write overlay* (keyed by the encoded path) and are merged into the trie in sorted
  order once the overlay outgrows the trie's live size (amortised O(1) merges per node).
  Nothing is ever deleted from the trie: a removed node's id is marked dead (``None``) and the
  trie is rebuilt from the live nodes, in sorted order, once dead ids outnumber live ones
  (which also recycles interned ids, so memory stays bounded under churn).
* **``prefixes``/``prefix_items`` are O(depth**2).** Lookups use ``prefix_values`` only: one
  C call returns the ids of every stored prefix of the query, shallow to deep.
* **A ``State`` or ``iter_*`` generator kept across a mutation is unsafe.** Neither is used;
  every datrie call completes inside the tree's lock, which also serialises all mutation.
* **``len()`` is O(N); nothing releases the GIL; pickling goes through a temp file.** Sizes
  are counted here; calls are short and made under one lock; the trie is never pickled
  (snapshots go through ``RadixTree.items()``).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from functools import partial
from itertools import accumulate, compress, repeat
from operator import add, is_
from typing import Any

import datrie

__all__ = ["DatrieStore"]

_ALPHABET = "".join(chr(i) for i in range(1, 256))
_WIDTH = 4  # 255**4 ~ 4.2e9 interned hashes between rebuilds
_MAX_ID = 2**31 - 2
_MERGE_MIN = 4096
_REBUILD_MIN = 4096

_ROOT = -1  # the tree's parent slot of a depth-1 node
_consume = deque
_IS_NONE = partial(is_, None)
Node = int  # a node slot of prefixcache._tree.RadixTree


_DIGIT = list(_ALPHABET)
_OUTSIDE = re.compile("[^\x01-\xff]")  # any character outside the alphabet


def _code(i: int) -> str:
    # Least significant digit first: consecutive ids spread over the root's children. The
    # reverse order (shared leading characters) made inserts ~100x slower here.
    d = _DIGIT
    return d[i % 255] + d[i // 255 % 255] + d[i // 65025 % 255] + d[i // 16581375 % 255]


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


class DatrieStore:
    """Paths -> nodes in a ``datrie.BaseTrie`` plus a dict write overlay. Not thread-safe on
    its own: :class:`prefixcache.RadixTree` calls it under its lock."""

    __slots__ = (
        "_by_id",
        "_codes",
        "_live_ids",
        "_merge_min",
        "_next_code",
        "_overlay",
        "_par",
        "_rebuild_min",
        "_tags",
        "_trie",
        "_walked",
        "keys",
    )

    def __init__(self, *, merge_min: int = _MERGE_MIN, rebuild_min: int = _REBUILD_MIN) -> None:
        self._merge_min = merge_min
        self._rebuild_min = rebuild_min
        self._trie = datrie.BaseTrie(_ALPHABET)
        self._by_id: list[Node | None] = []
        self._overlay: dict[str, Node] = {}
        self._codes: dict[int, str] = {}
        self._next_code = 0
        self._live_ids = 0  # live nodes in the trie (len(_by_id) - _live_ids ids are dead)
        # (key, its encoded known prefix) of the last walk: ``extend`` of the same key object
        # takes the parent's path from it instead of climbing the parents.
        self._walked: tuple[object, str] = (None, "")
        self._par: list[int] = []
        self.keys: list[int] = []
        # Node slot -> its trie id (int) once merged, or its encoded path (str) in the overlay.
        self._tags: dict[int, Any] = {}

    def bind(self, par: list[int], keys: list[int]) -> None:
        """Share the tree's slot lists (parent slot and block hash per node slot)."""
        self._par = par
        self.keys = keys

    # A node's tag is its trie id (int) once merged, or its encoded path (str) in the overlay.

    def walk(self, key: Sequence[int]) -> list[Node]:
        enc: list[Any] = list(map(self._codes.get, key))
        if None in enc:
            del enc[enc.index(None) :]
        s = "".join(enc)
        self._walked = (key, s)
        if not s:
            return []
        by_id = self._by_id
        nodes: list[Any] = [by_id[i] for i in self._trie.prefix_values(s)]
        if None in nodes:
            del nodes[nodes.index(None) :]
        overlay = self._overlay
        if overlay:
            # A node's ancestors all exist, so the first miss ends the path. Level by level:
            # slicing every deeper prefix up front (C-level map) measured slower, as most of
            # a query's tail is new.
            d = len(nodes)
            n_enc = len(enc)
            get = overlay.get
            w = _WIDTH
            while d < n_enc:
                d += 1
                n = get(s[: d * w])
                if n is None:
                    break
                nodes.append(n)
        return nodes

    def _path(self, node: Node) -> str:
        parts = []
        tags = self._tags
        while node != _ROOT:
            tag = tags[node]
            if type(tag) is str:
                parts.append(tag)
                break
            parts.append(self._codes[self.keys[node]])
            node = self._par[node]
        return "".join(reversed(parts))

    def extend(self, parent: Node, new: list[Node], key: Sequence[int], m: int) -> None:
        codes = self._codes
        hs = key[m:] if m else key
        cs: list[Any] = list(map(codes.get, hs))
        if None in cs:
            # Intern the unseen hashes (first occurrences, in order) in C-level passes.
            fresh = list(dict.fromkeys(compress(hs, map(_IS_NONE, cs))))
            codes.update(zip(fresh, self._new_codes(len(fresh)), strict=True))
            cs = list(map(codes.__getitem__, hs))
        # Path strings of the new nodes, built and registered in C-level passes.
        walked = self._walked
        self._walked = (None, "")
        # The walk encoded (at least) key[:m] with the current codes (codes change only in
        # _rebuild, which also clears this), so its prefix is the parent's path.
        base = walked[1][: m * _WIDTH] if walked[0] is key else self._path(parent)
        paths = list(accumulate(cs, add, initial=base))
        del paths[0]
        self._overlay.update(zip(paths, new, strict=True))
        self._tags.update(zip(new, paths, strict=True))

    def _new_codes(self, k: int) -> list[str]:
        """The codes of the next ``k`` interned ids (``_code`` of each, built per run of
        ids sharing their three high digits)."""
        i = self._next_code
        self._next_code = i + k
        out: list[str] = []
        while k:
            r = i % 255
            take = min(k, 255 - r)
            out += map(add, _DIGIT[r : r + take], repeat(_code(i - r)[1:]))
            i += take
            k -= take
        return out

    def discard(self, node: Node) -> None:
        tag = self._tags.pop(node)
        if type(tag) is str:
            del self._overlay[tag]
        else:
            self._by_id[tag] = None
            self._live_ids -= 1

    def size(self) -> int:
        return self._live_ids + len(self._overlay)

    def maintain(self) -> None:
        live = self._live_ids
        if (
            len(self._by_id) - live > max(self._rebuild_min, 2 * live)
            or len(self._codes) > 4 * self.size() + 16 * self._rebuild_min
            or len(self._by_id) + len(self._overlay) > _MAX_ID
            or self._next_code > 255**_WIDTH // 2
        ):
            self._rebuild()
        elif len(self._overlay) > max(self._merge_min, live):
            self._merge()

    def _merge(self) -> None:
        trie = self._trie
        by_id = self._by_id
        paths = sorted(self._overlay)
        _validate_all(paths)
        nodes = list(map(self._overlay.__getitem__, paths))
        ids = range(len(by_id), len(by_id) + len(paths))
        _consume(map(trie.__setitem__, paths, ids), 0)
        by_id += nodes
        self._tags.update(zip(nodes, ids, strict=True))
        self._live_ids += len(paths)
        self._overlay = {}

    def _rebuild(self) -> None:
        self._walked = (None, "")  # codes change
        nodes = [n for n in self._by_id if n is not None]
        nodes.extend(self._overlay.values())
        codes: dict[int, str] = {}
        paths: dict[int, str] = {}
        items = []
        nxt = 0
        par = self._par
        keys = self.keys
        tags = self._tags
        for n in nodes:
            stack = []
            cur = n
            while cur != _ROOT and cur not in paths:
                stack.append(cur)
                cur = par[cur]
            base = "" if cur == _ROOT else paths[cur]
            for x in reversed(stack):
                c = codes.get(keys[x])
                if c is None:
                    c = codes[keys[x]] = _code(nxt)
                    nxt += 1
                base += c
                paths[x] = base
                items.append((base, x))
        items.sort(key=lambda e: e[0])
        trie = datrie.BaseTrie(_ALPHABET)
        by_id: list[Node | None] = []
        _validate_all([e[0] for e in items])
        for s, n in items:
            tags[n] = len(by_id)
            trie[s] = len(by_id)
            by_id.append(n)
        self._trie = trie
        self._by_id = by_id
        self._overlay = {}
        self._codes = codes
        self._next_code = nxt
        self._live_ids = len(by_id)

    def check(self, nodes: list[Node]) -> None:
        ids = set(nodes)
        stored = [n for n in self._by_id if n is not None] + list(self._overlay.values())
        assert len(stored) == len(ids), "datrie store size differs from the tree's node count"
        assert all(n in ids for n in stored), "datrie store holds a node not in the tree"
        assert self._tags.keys() == ids, "datrie store tags differ from its nodes"
        for s, n in self._overlay.items():
            assert self._tags[n] == s and self._path(n) == s, "overlay entry keyed wrongly"
        for i, x in enumerate(self._by_id):
            if x is not None:
                assert self._tags[x] == i
                s = self._path(x)
                assert self._trie[s] == i, "trie entry keyed wrongly"
