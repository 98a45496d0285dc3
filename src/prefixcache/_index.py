"""The per-model prefix index (:class:`Index`) and the provider protocol it implements."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from operator import attrgetter, sub
from typing import Any, Protocol, runtime_checkable

from clusterrouting import InvalidRecordError
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._tree import DEFAULT_BACKEND, Backend, RadixTree, _bad_key
from prefixcache._types import Candidate, PrefixDecision, ReplicaKey

__all__ = ["Index", "Provider", "order_cold"]

#: Weights within this relative distance are equal for every ordering decision (SPEC).
_REL = 1e-9
#: Gaps above this fraction of the largest value keep every scaled gap above _REL.
_GAP = 2e-9
_INF = math.inf  # an inf weight (see RadixTree.weight) ties only with inf, as math.isclose
_KEY = attrgetter("key")
_sub = sub
_NODE_REPLICA = attrgetter("node_id", "replica")
_new = object.__new__
# The slot descriptors of the (frozen, slotted) record: set in C, bypassing validators.
_SET_HOT = PrefixDecision.__dict__["hot"].__set__
_SET_RATIO = PrefixDecision.__dict__["match_ratio"].__set__
_SET_COLD = PrefixDecision.__dict__["_cold"].__set__
_SET_SRC = PrefixDecision.__dict__["_src"].__set__
_SET_OVER = PrefixDecision.__dict__["_over"].__set__


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


def order_cold(keys: Sequence[ReplicaKey], weights: Sequence[float]) -> tuple[ReplicaKey, ...]:
    """``keys`` sorted by (weight ascending, node id, replica), near-equal weights tied.

    Weights are sorted; neighbours within a relative 1e-9 of each other
    (``math.isclose(a, b, rel_tol=1e-9)``) are joined into one tie group, chained, and each
    group is ordered by ``(node_id, replica)``. Duplicate keys keep their multiplicity.
    When no two distinct weights are that close this is plainly
    ``sorted(keys, key=lambda k: (weight[k], k.node_id, k.replica))``.

    Complexity: O(n log n) for n keys.

    >>> a, b, c = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")
    >>> [k.node_id for k in order_cold([c, b, a], [1.0, 2.0, 1.0 + 1e-12])]
    ['a', 'c', 'b']
    """
    pairs = sorted(zip(weights, map(_NODE_REPLICA, keys), keys, strict=True))
    if len(pairs) < 2:
        return tuple(p[2] for p in pairs)
    # Weights are >= 0 and sorted, so max(|w|, |prev|) == w.
    prev = pairs[0][0]
    tie = False
    for p in pairs:
        w = p[0]
        if w != prev and w - prev <= _REL * w and w != _INF:
            tie = True
            break
        prev = w
    if not tie:
        return tuple([p[2] for p in pairs])
    out: list[ReplicaKey] = []
    group: list[tuple[float, tuple[str, int], ReplicaKey]] = []
    last = pairs[0][0]
    for p in pairs:
        w = p[0]
        if group and not (
            w == last or (w != _INF and abs(w - last) <= _REL * max(abs(w), abs(last)))
        ):
            group.sort(key=_GROUP_KEY)
            out.extend(q[2] for q in group)
            group = []
        group.append(p)
        last = w
    group.sort(key=_GROUP_KEY)
    out.extend(q[2] for q in group)
    return tuple(out)


def _order_sorted(ks: list[ReplicaKey], ws: list[float]) -> tuple[ReplicaKey, ...]:
    """:func:`order_cold` for keys already sorted by (node_id, replica), in C-level passes.

    The stable sort by weight alone breaks exact ties by (node_id, replica). When every gap
    between neighbouring sorted weights exceeds ``1e-9`` times the largest weight, no two
    distinct weights are near-equal (``w - prev <= 1e-9 * w`` needs a gap at most ``1e-9 *
    w``), so that sort is the answer; otherwise (near or exact ties, infinities, fewer
    than two keys excluded) :func:`order_cold` applies the full rule."""
    order = sorted(range(len(ws)), key=ws.__getitem__)
    if len(order) > 1:
        sw = sorted(ws)
        if not min(map(_sub, sw[1:], sw)) > _REL * sw[-1]:
            return order_cold(ks, ws)
    return tuple(map(ks.__getitem__, order))


def _group_key(p: tuple[float, tuple[str, int], ReplicaKey]) -> tuple[str, int]:
    return p[1]


_GROUP_KEY = _group_key


def _cold_of(ks: list[ReplicaKey], vals: list[float], scale: float, first: bool = False) -> Any:
    """The cold order of ``ks`` (sorted by (node_id, replica)) for the weights ``vals[i] *
    scale``; with ``first``, only its first key, or ``None`` if that needs the whole order.

    The values are ordered unscaled when every gap between sorted neighbours exceeds 2e-9 of
    the largest (the scaled weights then keep that order with gaps above 1e-9: no near-ties,
    see :func:`order_cold`) and the largest scaled weight is normal; else the weights are
    scaled and the full rule applies. The first key needs only the first gap."""
    sv = sorted(vals)
    n = len(sv)
    if first:
        if n > 1 and sv[1] - sv[0] > _GAP * sv[-1] and 1e-290 <= sv[-1] * scale <= 1e290:
            return ks[vals.index(sv[0])]
        return ks[0] if n == 1 else None
    if n > 1 and min(map(_sub, sv[1:], sv)) > _GAP * sv[-1] and 1e-290 <= sv[-1] * scale <= 1e290:
        return tuple(map(ks.__getitem__, sorted(range(n), key=vals.__getitem__)))
    return _order_sorted(ks, vals if scale == 1.0 else list(map(scale.__mul__, vals)))


def _decision(
    hot: ReplicaKey | None,
    ratio: float,
    keys: tuple[ReplicaKey, ...],
    ks: list[ReplicaKey],
    vals: list[float],
    scale: float,
) -> PrefixDecision:
    """A :class:`PrefixDecision` over the candidate ``keys`` from values this module already
    guarantees valid, skipping the validators (hot path); its cold order is computed on
    first use (``_cold_of``)."""
    d: PrefixDecision = _new(PrefixDecision)
    _SET_HOT(d, hot)
    _SET_RATIO(d, ratio)
    _SET_COLD(d, None)
    _SET_SRC(d, (_cold_of, ks, vals, scale))
    _SET_OVER(d, keys)
    return d


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
        # (keys, keys sorted by (node_id, replica), ids of the keys) of the last decide.
        self._key_order: tuple[tuple[ReplicaKey, ...], list[ReplicaKey], frozenset[int]] = (
            (),
            [],
            frozenset(),
        )

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
        (a decision does not read in-flight counts; ``ReplicaKey.key`` is the key itself).
        """
        keys = tuple(map(_KEY, candidates))
        # Keys sorted by (node_id, replica) once per distinct candidate list: a stable sort
        # by weight alone then breaks ties correctly.
        cached = self._key_order
        if cached[0] == keys:
            ks = cached[1]
            ids = cached[2]
        else:
            ks = sorted(keys, key=_NODE_REPLICA)
            ids = frozenset(map(id, keys))
            self._key_order = (keys, ks, ids)
        tree = self._trees.get(model)
        if tree is None:
            if len(chain):
                _bad_key(chain, 0)
            return _decision(None, 0.0, keys, ks, [0.0] * len(ks), 1.0)
        owner, depth, vals, scale = tree._decide(chain, ks, now)
        # Identity first (the owner is usually one of these very objects); ``in`` alone
        # would call the Python-level __eq__ of every other key.
        if owner is not None and (id(owner) in ids or owner in keys):
            return _decision(owner, depth / len(chain), keys, ks, vals, scale)
        return _decision(None, 0.0, keys, ks, vals, scale)

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
