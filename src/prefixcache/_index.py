"""The per-model prefix index (:class:`Index`) and the provider protocol it implements."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from clusterrouting import InvalidRecordError
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._decision import CandidateMemo, DecisionBasis, PrefixDecision
from prefixcache._keys import check_key
from prefixcache._protocols import Provider
from prefixcache._tree import DEFAULT_BACKEND, Backend, RadixTree
from prefixcache._types import Candidate, ReplicaKey

__all__ = ["Index", "Provider"]

_NO_MEMO = CandidateMemo(())


class Index:
    """The prefix-affinity index: one :class:`RadixTree` per model, created lazily.

    Each tree is ``RadixTree(ttl=config.ttl, half_life=config.half_life, backend=backend)``
    owned by :class:`ReplicaKey` values. Times are float seconds of the host's clock (the
    wall clock if events cross routers through ``Sync``).

    * ``decide(model, chain, candidates, now)``: every candidate's cache weight; for a
      non-empty chain the longest live match, which counts only if its owner is one of the
      candidates (else no hot replica and ratio 0.0); ``match_ratio = depth / len(chain)``;
      ``cold_order`` = candidate keys sorted by (weight asc, node id, replica), see
      :func:`prefixcache._decision.order_cold`, computed on first access. Cost
      O(len(chain) + len(candidates)), independent of the number of stored entries
      (weights are maintained per owner, never by walking the tree).
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
        # What the last candidate list gave (see decide).
        self._memo = _NO_MEMO

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
        (``ReplicaKey.key`` is the key itself). In-flight counts do not change the decision.
        What depends only on the candidates (their keys, whether they share an in-flight
        count, their order by name) is derived once and reused while the same records, or
        records with the same key objects, come back (:class:`CandidateMemo`). The decision
        keeps its :class:`DecisionBasis`, from which :func:`prefixcache.select` finds the
        first cold key without ordering the others.
        """
        over = candidates if type(candidates) is tuple else tuple(candidates)
        memo = self._memo
        if not memo.describes(over):
            memo = self._memo = CandidateMemo(over, memo)
        tree = self._trees.get(model)
        if tree is None:
            if len(chain):
                check_key(chain, 0)
            basis = DecisionBasis(memo, [0.0] * len(memo.keys), 1.0)
            return PrefixDecision(None, 0.0, basis=basis)
        q = tree.query(chain, memo.keys, now)
        basis = DecisionBasis(memo, q.sums, q.scale)
        owner = q.owner
        if owner is not None and (id(owner) in memo.key_ids or memo.holds(owner)):
            return PrefixDecision(owner, q.depth / len(chain), basis=basis)
        return PrefixDecision(None, 0.0, basis=basis)

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
                return tree.observe(chain, key, now)
            except BaseException:
                # A rejected chain must not leave a new, empty tree behind in models().
                with self._lock:
                    if not len(tree) and self._trees.get(model) is tree:
                        del self._trees[model]
                raise
        return tree.observe(chain, key, now)

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
