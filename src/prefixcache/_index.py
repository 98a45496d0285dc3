"""The per-model prefix index (:class:`Index`) and the provider protocol it implements."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from clusterrouting import InvalidRecordError
from prefixcache._answers import TreeClosedError
from prefixcache._backends import DEFAULT_BACKEND, Backend
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._decision import CandidateMemo, DecisionBasis, PrefixDecision
from prefixcache._keys import check_key, check_time
from prefixcache._protocols import Provider
from prefixcache._tree import RadixTree
from prefixcache._types import Candidate, ReplicaKey

__all__ = ["Index", "Provider"]

_NO_MEMO = CandidateMemo(())


class Index:
    """The prefix-affinity index: one :class:`RadixTree` per model, created lazily.

    Each tree is ``RadixTree(ttl=config.ttl, half_life=config.half_life,
    max_entries=config.max_entries, backend=backend)`` owned by :class:`ReplicaKey` values.
    Times are float seconds of the host's clock (the wall clock if events cross routers
    through ``Sync``).

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
      for peers, so it is broadcast too). The chain and ``now`` are validated before a tree
      is created, so a rejected observe leaves nothing behind. A tree beyond
      ``config.max_models`` is not created: the observe stores nothing and returns
      ``False`` (:attr:`refused_observes` counts these). A tree over ``config.max_entries``
      evicts its least recently seen entries (see :class:`RadixTree`).
    * ``invalidate(model, key)`` / ``invalidate_node(model, node_id)``: drop that replica's /
      every replica of that node's entries; never create a tree. Return how many were
      dropped. ``evict(now)`` sweeps every tree (returns the total removed).
    * A tree that an ``evict``, ``invalidate`` or ``invalidate_node`` leaves empty is
      dropped at once (freeing its place under ``max_models``), so ``models()`` (the models
      holding a tree), ``tree(model)``, snapshots and digests never show an empty tree.
    * ``tree(model)``: the model's tree or ``None`` (read access for snapshots).

    Thread-safe: each tree locks itself; creating and dropping trees is serialised by the
    index's lock, and a tree is closed (:meth:`RadixTree.close_if_empty`) as it is dropped,
    so an observe racing with the drop either lands first (and the tree stays) or finds it
    closed and writes to the model's new tree: no write is lost.

    Raises:
        InvalidRecordError: a chain element is not an integer in ``[0, 2**64)``, ``now`` is
            not a number, or ``key`` is not a :class:`ReplicaKey`.

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
        self._refused = 0
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

    @property
    def refused_observes(self) -> int:
        """Observes that stored nothing because ``config.max_models`` trees existed."""
        return self._refused

    def tree(self, model: str) -> RadixTree[ReplicaKey] | None:
        """The model's tree, or ``None`` if it has none (read access for snapshots)."""
        return self._trees.get(model)

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
            basis = DecisionBasis(memo, [], [], 1.0)
            return PrefixDecision(None, 0.0, basis=basis)
        q = tree.query(chain, memo.keys, now)
        basis = DecisionBasis(memo, q.positions, q.sums, q.scale)
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
        if tree is not None:
            try:
                return tree.observe(chain, key, now)
            except TreeClosedError:
                pass  # dropped since we looked it up (it was empty): use the model's new tree
        return self._observe_creating(model, chain, key, now)

    def _observe_creating(
        self, model: str, chain: Sequence[int], key: ReplicaKey, now: float
    ) -> bool:
        """Observe into the model's tree under the index lock, creating it if absent (and
        allowed by ``max_models``). A new tree is published only with its first entry."""
        check_key(chain, 0)
        check_time("now", now)
        with self._lock:
            tree = self._trees.get(model)
            if tree is not None:
                return tree.observe(chain, key, now)  # never closed: dropping needs the lock
            c = self._config
            if c.max_models and len(self._trees) >= c.max_models:
                self._refused += 1
                return False
            tree = RadixTree(
                ttl=c.ttl, half_life=c.half_life, max_entries=c.max_entries, backend=self._backend
            )
            fresh = tree.observe(chain, key, now)
            self._trees[model] = tree
            return fresh

    def _drop_if_empty(self, model: str, tree: RadixTree[ReplicaKey]) -> None:
        """Drop ``model``'s tree if it is empty (the caller holds the index lock)."""
        if not len(tree) and tree.close_if_empty():
            del self._trees[model]

    def invalidate(self, model: str, key: ReplicaKey) -> int:
        """Drop every entry of ``model`` owned by ``key``; returns how many."""
        with self._lock:
            tree = self._trees.get(model)
            if tree is None:
                return 0
            removed = tree.remove(key)
            self._drop_if_empty(model, tree)
            return removed

    def invalidate_node(self, model: str, node_id: str) -> int:
        """Drop every entry of ``model`` owned by any replica of ``node_id``; returns how
        many."""
        with self._lock:
            tree = self._trees.get(model)
            if tree is None:
                return 0
            removed = tree.remove_if(lambda k: k.node_id == node_id)
            self._drop_if_empty(model, tree)
            return removed

    def evict(self, now: float) -> int:
        """Drop expired entries of every model, and the trees left empty; returns how many
        entries."""
        with self._lock:
            removed = 0
            for model, tree in list(self._trees.items()):
                removed += tree.evict(now)
                self._drop_if_empty(model, tree)
            return removed

    def models(self) -> frozenset[str]:
        """Models holding a tree (never an empty one)."""
        with self._lock:
            return frozenset(self._trees)
