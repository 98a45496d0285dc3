"""A naive reference model of the prefix index, written straight from the specification.

:class:`ReferenceIndex` exists to be obviously right, not fast: one real nested trie per
model (a node per block hash, children in a dict), every weight computed by walking the whole
trie, nothing cached. Differential tests drive it and :class:`prefixcache.Index` (on both tree
backends) with the same operations and require identical answers; use it the same way to
check a provider of your own, for example with :func:`run_operations` and the strategies in
:mod:`prefixcache.strategies`.

Also here: operation records (:class:`Observe`, :class:`Decide`, ...) describing one call on a
provider, and :func:`run_operations`, which applies a sequence of them to any provider.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._decision import PrefixDecision
from prefixcache._protocols import ReferenceProvider
from prefixcache._types import Candidate, ReplicaKey

__all__ = [
    "WEIGHT_REL_TOLERANCE",
    "Advance",
    "Decide",
    "Evict",
    "Invalidate",
    "InvalidateNode",
    "Observe",
    "Operation",
    "ReferenceIndex",
    "ReferenceProvider",
    "order_by_weight",
    "run_operations",
]

#: Weights within this relative distance are equal for every ordering decision (SPEC: float
#: sums are not associative, so orderings must not depend on summation order).
WEIGHT_REL_TOLERANCE = 1e-9

_U64 = 1 << 64


class _Node:
    """One trie node: the block hash that leads here is its key in the parent's children;
    ``seq`` numbers the observe that last wrote it."""

    __slots__ = ("children", "last_seen", "seq", "value")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.value: ReplicaKey | None = None
        self.last_seen = 0.0
        self.seq = 0


def _decay(x: float) -> float:
    """``0.5 ** x``, or ``math.inf`` where that overflows a float (``x <= -1024``: an entry
    at least 1024 half-lives after ``now``), where ``**`` would raise ``OverflowError``."""
    return math.inf if x <= -1024.0 else 0.5**x


def _weights_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=WEIGHT_REL_TOLERANCE, abs_tol=0.0)


def order_by_weight(weights: dict[ReplicaKey, float]) -> tuple[ReplicaKey, ...]:
    """Keys sorted by (weight ascending, node id, replica), near-equal weights tied.

    The specification's "two weights within a relative 1e-9 of each other are equal" made
    into a total order: sort by weight, join neighbours whose weights are within
    :data:`WEIGHT_REL_TOLERANCE` (relative) into one tie group, and order each group by
    ``(node_id, replica)``. When no two distinct weights are that close, this is plainly
    ``sorted(keys, key=lambda k: (weights[k], k.node_id, k.replica))``.

    >>> a, b, c = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")
    >>> [k.node_id for k in order_by_weight({c: 1.0, b: 2.0, a: 1.0 + 1e-12})]
    ['a', 'c', 'b']
    """
    by_weight = sorted(weights.items(), key=lambda kv: (kv[1], kv[0].node_id, kv[0].replica))
    out: list[ReplicaKey] = []
    group: list[ReplicaKey] = []
    last: float | None = None
    for key, w in by_weight:
        if last is not None and not _weights_equal(last, w):
            out.extend(sorted(group))
            group = []
        group.append(key)
        last = w
    out.extend(sorted(group))
    return tuple(out)


class ReferenceIndex:
    """The naive, obviously-correct prefix index (SPEC §2 "Index" and "The radix tree").

    Per model, a nested trie keyed by block hash; every node may hold an owner
    (:class:`ReplicaKey`) and the time it was last written. Rules, straight from the spec
    (``ttl``/``half_life`` from ``config``; times are float seconds of the caller's clock):

    - an entry is expired iff ``ttl > 0 and now - last_seen > ttl`` (age == ttl is live);
    - ``observe`` writes ``key`` and ``now`` on **every** node of the chain's path;
    - the longest match is the deepest node on the path holding a live owner, walking
      through owner-less or expired nodes;
    - an owner's weight sums ``0.5 ** (age / half_life)`` (1 when ``half_life <= 0``) over
      its live nodes, computed here by visiting every node, summed with ``math.fsum``; a term
      that overflows a float (an entry 1024+ half-lives after ``now``) is ``math.inf``;
    - eviction and invalidation clear owners, then prune branches left without owners;
    - caps (``config.max_entries``, ``config.max_models``; 0: none): after an observe, while
      the model holds more than ``max_entries`` owners, the owner first in (last_seen,
      depth, observe sequence number) order is cleared; an observe that would create a tree
      while ``max_models`` trees exist stores nothing and returns ``False``.

    Trees are created by ``observe`` only (for a non-empty, valid chain and node id);
    ``decide``, ``invalidate`` and ``invalidate_node`` never create one; a tree that
    ``evict``, ``invalidate`` or ``invalidate_node`` leaves without owners is dropped.

    Not thread-safe. Cost: every call may walk everything (that is the point).

    >>> idx = ReferenceIndex()
    >>> a, b = ReplicaKey("a"), ReplicaKey("b")
    >>> idx.observe("m", (1, 2, 3), a, now=0.0)
    True
    >>> d = idx.decide("m", (1, 2, 9, 9), [Candidate(a), Candidate(b)], now=1.0)
    >>> d.hot.node_id, d.match_ratio, [k.node_id for k in d.cold_order]
    ('a', 0.5, ['b', 'a'])
    """

    def __init__(self, config: Config = DEFAULT_CONFIG) -> None:
        self.config = config
        self._roots: dict[str, _Node] = {}
        self._seq = 0

    # -- helpers ----------------------------------------------------------------------------
    def _live(self, node: _Node, now: float) -> bool:
        ttl = self.config.ttl
        return node.value is not None and not (ttl > 0 and now - node.last_seen > ttl)

    def _walk(self, node: _Node) -> Iterable[_Node]:
        stack = [node]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def _prune(self, root: _Node) -> None:
        """Drop every subtree below ``root`` that holds no owner (iterative: chains may be
        deeper than Python's recursion limit)."""
        order: list[tuple[_Node, int, _Node]] = []
        stack = [root]
        while stack:
            n = stack.pop()
            for h, child in n.children.items():
                order.append((n, h, child))
                stack.append(child)
        for parent, h, child in reversed(order):  # children before their parents
            if child.value is None and not child.children:
                del parent.children[h]

    def _clear_where(self, model: str, predicate: Callable[[_Node], bool]) -> int:
        root = self._roots.get(model)
        if root is None:
            return 0
        removed = 0
        for n in self._walk(root):
            if n is not root and n.value is not None and predicate(n):
                n.value = None
                removed += 1
        self._prune(root)
        if not root.children:
            del self._roots[model]
        return removed

    @staticmethod
    def _check_chain(chain: Sequence[int]) -> None:
        for h in chain:
            if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < _U64:
                raise InvalidRecordError("chain", h, "block hashes must be ints in [0, 2**64)")

    def longest_match(
        self, model: str, chain: Sequence[int], now: float
    ) -> tuple[ReplicaKey, int] | None:
        """``(owner, depth)`` of the deepest live node on ``chain``'s path, or ``None``."""
        node = self._roots.get(model)
        best: tuple[ReplicaKey, int] | None = None
        if node is None:
            return None
        for depth, h in enumerate(chain, start=1):
            child = node.children.get(h)
            if child is None:
                break
            node = child
            if node.value is not None and self._live(node, now):
                best = (node.value, depth)
        return best

    def weights_for(
        self, model: str, keys: Iterable[ReplicaKey], now: float
    ) -> dict[ReplicaKey, float]:
        """Every requested key's weight (0.0 when it owns nothing live), by a full walk."""
        wanted = list(keys)
        terms: dict[ReplicaKey, list[float]] = {k: [] for k in wanted}
        root = self._roots.get(model)
        half_life = self.config.half_life
        if root is not None:
            for n in self._walk(root):
                if n is root or n.value not in terms or not self._live(n, now):
                    continue
                age = now - n.last_seen
                terms[n.value].append(_decay(age / half_life) if half_life > 0 else 1.0)
        return {k: math.fsum(terms[k]) for k in wanted}

    def entry_count(self, model: str) -> int:
        """Owner-bearing nodes of ``model`` (expired but unswept ones included)."""
        root = self._roots.get(model)
        if root is None:
            return 0
        return sum(1 for n in self._walk(root) if n is not root and n.value is not None)

    # -- the provider methods ---------------------------------------------------------------
    def decide(
        self,
        model: str,
        chain: Sequence[int],
        candidates: Sequence[Candidate | ReplicaKey],
        now: float,
    ) -> PrefixDecision:
        """Hot replica, match ratio and cold order for ``chain`` over ``candidates``."""
        keys = [c.key for c in candidates]
        weights = self.weights_for(model, keys, now)
        hot: ReplicaKey | None = None
        ratio = 0.0
        if chain:
            self._check_chain(chain)
            match = self.longest_match(model, chain, now)
            if match is not None and match[0] in weights:
                hot, ratio = match[0], match[1] / len(chain)
        cold = order_by_weight(weights)
        # Duplicated candidate keys keep their multiplicity in the cold order.
        if len(cold) != len(keys):
            cold = tuple(k for k in cold for _ in range(keys.count(k)))
        return PrefixDecision(hot, ratio, cold)

    def observe(self, model: str, chain: Sequence[int], key: ReplicaKey, now: float) -> bool:
        """Record that ``key`` now caches ``chain``; True when new or extended."""
        if not chain or not key.node_id:
            return False
        self._check_chain(chain)
        # "True unless this exact key already owned the whole chain live": every node of
        # the path exists and is a live entry of ``key``.
        owned = True
        node = self._roots.get(model)
        for h in chain:
            node = None if node is None else node.children.get(h)
            if node is None or not self._live(node, now) or node.value != key:
                owned = False
                break
        root = self._roots.get(model)
        if root is None:
            if self.config.max_models and len(self._roots) >= self.config.max_models:
                return False
            root = self._roots[model] = _Node()
        self._seq += 1
        node = root
        for h in chain:
            node = node.children.setdefault(h, _Node())
            node.value = key
            node.last_seen = now
            node.seq = self._seq
        self._evict_over_cap(root)
        return not owned

    def _evict_over_cap(self, root: _Node) -> None:
        """Clear owners in (last_seen, depth, seq) order while more than ``max_entries``
        remain, then prune."""
        cap = self.config.max_entries
        if not cap:
            return
        owned: list[tuple[float, int, int, _Node]] = []
        stack = [(root, 0)]
        while stack:
            n, depth = stack.pop()
            if n is not root and n.value is not None:
                owned.append((n.last_seen, depth, n.seq, n))
            stack.extend((child, depth + 1) for child in n.children.values())
        if len(owned) <= cap:
            return
        owned.sort(key=lambda e: e[:3])
        for _, _, _, n in owned[: len(owned) - cap]:
            n.value = None
        self._prune(root)

    def invalidate(self, model: str, key: ReplicaKey) -> int:
        """Drop every entry owned by ``key``; returns how many were dropped."""
        return self._clear_where(model, lambda n: n.value == key)

    def invalidate_node(self, model: str, node_id: str) -> int:
        """Drop every entry owned by any replica of ``node_id``; returns how many."""
        return self._clear_where(
            model, lambda n: n.value is not None and n.value.node_id == node_id
        )

    def evict(self, now: float) -> int:
        """Drop expired entries of every model; returns how many were dropped."""
        removed = 0
        for model in list(self._roots):
            removed += self._clear_where(
                model, lambda n: n.value is not None and not self._live(n, now)
            )
        return removed

    def models(self) -> frozenset[str]:
        """Models holding a tree."""
        return frozenset(self._roots)


def _to_chain(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def _to_candidates(value: Iterable[Candidate]) -> tuple[Candidate, ...]:
    return tuple(value)


def _check_advance(_i: object, _a: object, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise InvalidRecordError("seconds", value, "must be a finite number >= 0")


@attrs.frozen(kw_only=True)
class Observe:
    """``provider.observe(model, chain, key, now)``; result: the returned bool."""

    model: str
    chain: tuple[int, ...] = attrs.field(converter=_to_chain)
    key: ReplicaKey


@attrs.frozen(kw_only=True)
class Decide:
    """``provider.decide(model, chain, candidates, now)``; result: the decision."""

    model: str
    chain: tuple[int, ...] = attrs.field(converter=_to_chain)
    candidates: tuple[Candidate, ...] = attrs.field(converter=_to_candidates)


@attrs.frozen(kw_only=True)
class Invalidate:
    """``provider.invalidate(model, key)``; result: ``None`` (return values differ)."""

    model: str
    key: ReplicaKey


@attrs.frozen(kw_only=True)
class InvalidateNode:
    """``provider.invalidate_node(model, node_id)``; result: ``None``."""

    model: str
    node_id: str


@attrs.frozen(kw_only=True)
class Evict:
    """``provider.evict(now)``; result: ``None``."""


@attrs.frozen(kw_only=True)
class Advance:
    """Move the clock forward by ``seconds`` (>= 0); result: ``None``."""

    seconds: float = attrs.field(validator=_check_advance)


Operation = Observe | Decide | Invalidate | InvalidateNode | Evict | Advance


def run_operations(
    provider: ReferenceProvider,
    operations: Iterable[Operation],
    *,
    start: float = 0.0,
) -> list[bool | PrefixDecision | None]:
    """Apply ``operations`` in order to ``provider`` with a clock starting at ``start``.

    Returns one result per operation: the bool of :class:`Observe`, the
    :class:`PrefixDecision` of :class:`Decide`, ``None`` for the rest (their return values
    are not part of the provider contract). Two providers that agree return equal lists,
    except that a ``cold_order`` may legitimately differ where two weights are within
    :data:`WEIGHT_REL_TOLERANCE` of each other but not equal.

    >>> ops = [Observe(model="m", chain=(1, 2), key=ReplicaKey("a")), Advance(seconds=1.0),
    ...        Decide(model="m", chain=(1, 2), candidates=(Candidate(ReplicaKey("a")),))]
    >>> run_operations(ReferenceIndex(), ops)[2].match_ratio
    1.0
    """
    now = start
    results: list[bool | PrefixDecision | None] = []
    for op in operations:
        if isinstance(op, Observe):
            results.append(provider.observe(op.model, op.chain, op.key, now))
        elif isinstance(op, Decide):
            results.append(provider.decide(op.model, op.chain, op.candidates, now))
        elif isinstance(op, Invalidate):
            provider.invalidate(op.model, op.key)
            results.append(None)
        elif isinstance(op, InvalidateNode):
            provider.invalidate_node(op.model, op.node_id)
            results.append(None)
        elif isinstance(op, Evict):
            provider.evict(now)
            results.append(None)
        else:
            now += op.seconds
            results.append(None)
    return results
