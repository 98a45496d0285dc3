"""The per-model prefix index (:class:`Index`) and the provider protocol it implements."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from operator import attrgetter
from typing import Protocol, runtime_checkable

from clusterrouting import InvalidRecordError
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._order import _decision, order_cold
from prefixcache._tree import DEFAULT_BACKEND, Backend, RadixTree, _bad_key
from prefixcache._types import Candidate, PrefixDecision, ReplicaKey

__all__ = ["Index", "Provider", "order_cold"]

_KEY = attrgetter("key")
#: (candidates, keys, keys sorted by (node_id, replica), ids of the keys, shared in-flight)
_Memo = tuple[
    tuple[object, ...], tuple[ReplicaKey, ...], list[ReplicaKey], frozenset[int], "int | None"
]
_NODE_REPLICA = attrgetter("node_id", "replica")


@runtime_checkable
class Provider(Protocol):
    """What routers call on a prefix index: :class:`Index`, ``Sync`` and
    ``ReferenceIndex`` all satisfy it structurally.

    Times are float seconds of the host's clock (the wall clock when events cross routers).
    """

    def decide(
        self,
        model: str,
        chain: Sequence[int],
        candidates: Sequence[Candidate | ReplicaKey],
        now: float,
    ) -> PrefixDecision: ...

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool: ...

    def invalidate(self, model: str, key: ReplicaKey) -> object: ...

    def invalidate_node(self, model: str, node_id: str) -> object: ...

    def evict(self, now: float) -> object: ...

    def models(self) -> frozenset[str]: ...


class Index:
    """The prefix-affinity index: one :class:`RadixTree` per model, created lazily.

    Each tree is ``RadixTree(ttl=config.ttl, half_life=config.half_life, backend=backend)``
    owned by :class:`ReplicaKey` values. Times are float seconds of the host's clock (the
    wall clock if events cross routers through ``Sync``).

    * ``decide(model, chain, candidates, now)``: every candidate's cache weight; for a
      non-empty chain the longest live match, which counts only if its owner is one of the
      candidates (else no hot replica and ratio 0.0); ``match_ratio = depth / len(chain)``;
      ``cold_order`` = candidate keys sorted by (weight asc, node id, replica), see
      :func:`order_cold`. Cost O(len(chain) + len(candidates)), independent of the number of
      stored entries (weights are maintained per owner, never by walking the tree).
    * ``observe(model, chain, key, now)``: ignores (``False``) an empty chain or empty node
      id; else records ``key`` as the owner of every node of the chain and returns ``True``
      unless ``key`` already owned the whole chain live, every node of it ("new or
      extended": the caller broadcasts on ``True``; a prefix another key took since is news
      for peers, so it is broadcast too).
    * ``invalidate(model, key)`` / ``invalidate_node(model, node_id)``: drop that replica's /
      every replica of that node's entries; never create a tree. Return how many were
      dropped. ``evict(now)`` sweeps every tree (returns the total removed).
      ``models()``: models holding a tree (a tree emptied by invalidation stays).
    * ``tree(model)``: the model's tree or ``None`` (read access for snapshots).

    Thread-safe: each tree locks itself; tree creation is serialised.

    Raises:
        InvalidRecordError: a chain element is not an integer in ``[0, 2**64)``, or ``key``
            is not a :class:`ReplicaKey`.

    >>> ix = Index()
    >>> a, b = ReplicaKey("a"), ReplicaKey("b")
    >>> ix.observe("m", (1, 2, 3), a, now=0.0)
    True
    >>> d = ix.decide("m", (1, 2, 9, 9), [Candidate(a), Candidate(b)], now=1.0)
    >>> d.hot.node_id, d.match_ratio, [k.node_id for k in d.cold_order]
    ('a', 0.5, ['b', 'a'])
    """

    def __init__(
        self, config: Config = DEFAULT_CONFIG, *, backend: Backend = DEFAULT_BACKEND
    ) -> None:
        if not isinstance(config, Config):
            raise InvalidRecordError("config", config, "must be a prefixcache.Config")
        if backend not in ("dict", "datrie"):
            raise InvalidRecordError("backend", backend, "must be 'dict' or 'datrie'")
        self._config = config
        self._backend: Backend = backend
        self._trees: dict[str, RadixTree[ReplicaKey]] = {}
        self._lock = threading.Lock()
        # The last candidate list's memo (see _memo_for).
        self._memo: _Memo = ((), (), [], frozenset(), None)

    @property
    def config(self) -> Config:
        """The configuration every tree was built from."""
        return self._config

    @property
    def backend(self) -> Backend:
        """The trees' backend."""
        return self._backend

    def tree(self, model: str) -> RadixTree[ReplicaKey] | None:
        """The model's tree, or ``None`` if none was created (read access for snapshots)."""
        return self._trees.get(model)

    def _tree_for(self, model: str) -> RadixTree[ReplicaKey]:
        tree = self._trees.get(model)
        if tree is None:
            with self._lock:
                tree = self._trees.get(model)
                if tree is None:
                    c = self._config
                    tree = RadixTree(ttl=c.ttl, half_life=c.half_life, backend=self._backend)
                    self._trees[model] = tree
        return tree

    def decide(
        self,
        model: str,
        chain: Sequence[int],
        candidates: Sequence[Candidate | ReplicaKey],
        now: float,
    ) -> PrefixDecision:
        """The hot replica, match ratio and cold order for ``chain`` over ``candidates``.

        ``candidates`` may be :class:`Candidate` records or bare :class:`ReplicaKey` values
        (``ReplicaKey.key`` is the key itself). In-flight counts do not change the decision;
        it notes whether the candidates share one, which spares :func:`select` reading them
        for the same candidates. The cold order is sorted on first access (see
        :class:`PrefixDecision`).
        """
        # What depends only on the candidates is computed once per distinct candidate list
        # (the very same candidate objects: ``==`` on tuples compares identical items
        # without calling their __eq__, and the first item decides whether to try, so new
        # Candidate records fail at once): see _memo_for.
        over = candidates if type(candidates) is tuple else tuple(candidates)
        memo = self._memo
        c_over = memo[0]
        if not (over is c_over or (over and c_over and over[0] is c_over[0] and over == c_over)):
            memo = self._memo_for(over)
        tree = self._trees.get(model)
        if tree is None:
            if len(chain):
                _bad_key(chain, 0)
            return _decision(None, 0.0, memo, [0.0] * len(memo[2]), 1.0)
        return tree._decide(chain, memo, now)

    def _memo_for(self, over: tuple[Candidate | ReplicaKey, ...]) -> _Memo:
        """``(candidates, their keys, the keys sorted by (node_id, replica), ids of the key
        objects, the in-flight count every candidate shares or None)``, cached as the last
        list's. A stable sort by weight alone of the sorted keys breaks ties correctly;
        ``select`` reads the shared in-flight count of a decision over these candidates."""
        keys = tuple(map(_KEY, over))
        old = self._memo
        if old[1] == keys:
            ks, ids = old[2], old[3]
        else:
            ks = sorted(keys, key=_NODE_REPLICA)
            ids = frozenset(map(id, keys))
        flights = [getattr(c, "in_flight", None) for c in over]
        flat = flights[0] if flights and flights.count(flights[0]) == len(flights) else None
        memo = self._memo = (over, keys, ks, ids, flat)
        return memo

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool:
        """Record that ``key`` caches ``chain``; ``True`` when new or extended."""
        if type(key) is not ReplicaKey and not isinstance(key, ReplicaKey):
            raise InvalidRecordError("key", key, "must be a ReplicaKey")
        if not len(chain) or not key.node_id:
            return False
        tree = self._trees.get(model)
        if tree is None:
            tree = self._tree_for(model)
            try:
                return tree._observe(chain, key, now)
            except BaseException:
                # A rejected chain must not leave a new, empty tree behind in models().
                with self._lock:
                    if not len(tree) and self._trees.get(model) is tree:
                        del self._trees[model]
                raise
        return tree._observe(chain, key, now)

    def invalidate(self, model: str, key: ReplicaKey) -> int:
        """Drop every entry of ``model`` owned by ``key``; returns how many."""
        tree = self._trees.get(model)
        return 0 if tree is None else tree.remove(key)

    def invalidate_node(self, model: str, node_id: str) -> int:
        """Drop every entry of ``model`` owned by any replica of ``node_id``; returns how
        many."""
        tree = self._trees.get(model)
        if tree is None:
            return 0
        return tree.remove_if(lambda k: k.node_id == node_id)

    def evict(self, now: float) -> int:
        """Drop expired entries of every model; returns how many."""
        return sum(t.evict(now) for t in list(self._trees.values()))

    def models(self) -> frozenset[str]:
        """Models holding a tree."""
        return frozenset(self._trees)
