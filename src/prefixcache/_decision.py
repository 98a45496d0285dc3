"""Routing decisions: the :class:`PrefixDecision` record, the cold order, and what a decision
remembers about the candidates it was made over.

* :func:`order_cold` is the cold-order rule.
* :class:`CandidateMemo` is what ``Index`` derives once from a candidate list (keys, their
  identities, the in-flight count they share, their order by name) and reuses while the
  same candidates come back.
* :class:`DecisionBasis` is what an ``Index`` decision was made from: the memo and every
  candidate's weight as ``sums[i] * scale``. The decision orders its cold keys from it only
  when asked, and :meth:`DecisionBasis.first_cold` finds the first eligible cold key
  without ordering the others when the weights make that plain.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import NUMBER_TYPES
from prefixcache._types import ReplicaKey

__all__ = [
    "WEIGHT_REL_TOLERANCE",
    "CandidateMemo",
    "DecisionBasis",
    "PrefixDecision",
    "order_cold",
]

WEIGHT_REL_TOLERANCE = 1e-9
"""Weights within this relative distance are equal for every ordering decision (float sums
are not associative, so orderings must not depend on summation order)."""

_GAP = 2e-9  # gaps above this fraction of the largest weight keep every scaled gap above 1e-9
_NORMAL = (1e-290, 1e290)  # a largest scaled weight in this range keeps that margin
_NODE_REPLICA = attrgetter("node_id", "replica")
_KEY = attrgetter("key")


def order_cold(keys: Sequence[ReplicaKey], weights: Sequence[float]) -> tuple[ReplicaKey, ...]:
    """``keys`` sorted by (weight ascending, node id, replica), near-equal weights tied.

    Weights are sorted; neighbours within a relative 1e-9 of each other
    (``math.isclose(a, b, rel_tol=1e-9)``) are joined into one tie group, chained, and each
    group is ordered by ``(node_id, replica)``. Duplicate keys keep their multiplicity. An
    inf weight ties only with inf. When no two distinct weights are that close this is
    plainly ``sorted(keys, key=lambda k: (weight[k], k.node_id, k.replica))``.

    Complexity: O(n log n) for n keys.

    >>> a, b, c = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")
    >>> [k.node_id for k in order_cold([c, b, a], [1.0, 2.0, 1.0 + 1e-12])]
    ['a', 'c', 'b']
    """
    pairs = sorted(zip(weights, map(_NODE_REPLICA, keys), keys, strict=True))
    out: list[ReplicaKey] = []
    group: list[tuple[float, tuple[str, int], ReplicaKey]] = []
    last = 0.0
    for p in pairs:
        w = p[0]
        if group and not _near(w, last):
            out.extend(q[2] for q in sorted(group, key=_by_name))
            group = []
        group.append(p)
        last = w
    out.extend(q[2] for q in sorted(group, key=_by_name))
    return tuple(out)


def _near(w: float, last: float) -> bool:
    """Whether sorted neighbours ``last <= w`` tie (inf ties only with inf)."""
    return w == last or (
        w != math.inf and abs(w - last) <= WEIGHT_REL_TOLERANCE * max(abs(w), abs(last))
    )


def _by_name(p: tuple[float, tuple[str, int], ReplicaKey]) -> tuple[str, int]:
    return p[1]


class CandidateMemo:
    """What ``Index`` derives once from a candidate list and reuses while it comes back.

    Attributes:
        candidates: the list as a tuple (the records themselves).
        keys: each candidate's key, in candidate order.
        key_ids: the identities of those key objects (membership without ``__eq__``).
        distinct: whether no key appears twice.
        flights: each candidate's in-flight count (bare keys count 0).
        equal_loads: whether every candidate has the same in-flight count.

    What depends on the keys alone (identities, positions, order by name) is kept from the
    previous memo when the same key objects come back in the same order, so records whose
    loads change cost one pass over their keys. Safe to share between threads (lazy parts
    are computed to equal values if threads race).
    """

    __slots__ = (
        "_by_name",
        "_names",
        "_where",
        "candidates",
        "distinct",
        "equal_loads",
        "flights",
        "key_ids",
        "keys",
    )

    def __init__(self, candidates: tuple[Any, ...], previous: CandidateMemo | None = None) -> None:
        keys: tuple[ReplicaKey, ...] = tuple([c.key for c in candidates])
        self.candidates = candidates
        try:
            self.flights: list[int] = [c.in_flight for c in candidates]
        except AttributeError:  # bare ReplicaKey values
            self.flights = [getattr(c, "in_flight", 0) for c in candidates]
        self.equal_loads = (
            self.flights.count(self.flights[0]) == len(self.flights) if candidates else True
        )
        self.keys: tuple[ReplicaKey, ...]
        self.key_ids: frozenset[int]
        self.distinct: bool
        if previous is not None and previous.keys == keys:
            # The same key objects in the same order: what depends on them alone stays.
            self.keys = previous.keys
            self.key_ids = previous.key_ids
            self.distinct = previous.distinct
            self._by_name: list[int] | None = previous._by_name
            self._names: frozenset[tuple[str, int]] | None = previous._names
            self._where: dict[object, int] | None = previous._where
        else:
            self.keys = keys
            self.key_ids = frozenset(map(id, keys))
            self.distinct = len(self.key_ids) == len(keys) and len(set(keys)) == len(keys)
            self._by_name = None
            self._names = None
            self._where = None

    def describes(self, over: tuple[Any, ...]) -> bool:
        """Whether ``over`` holds exactly these candidate records (compared by identity:
        tuple ``==`` never calls the ``__eq__`` of identical items, and the first item
        decides whether to try, so new records fail at once)."""
        c = self.candidates
        if over is c:
            return True
        return len(over) == len(c) != 0 and over[0] is c[0] and over == c

    def has_keys_of(self, over: Sequence[Any]) -> bool:
        """Whether ``over`` lists these very key objects in this order (its records, and
        so their loads, may differ)."""
        return len(over) == len(self.keys) and tuple([c.key for c in over]) == self.keys

    def position(self, key: ReplicaKey) -> int | None:
        """The first position of ``key`` among the candidates (identity first, then by
        name), or ``None``."""
        where = self._where
        if where is None:
            where = {}
            for i, k in enumerate(self.keys):
                where.setdefault(id(k), i)
                where.setdefault((k.node_id, k.replica), i)
            self._where = where
        found = where.get(id(key))
        return found if found is not None else where.get((key.node_id, key.replica))

    def holds(self, key: ReplicaKey) -> bool:
        """Whether ``key`` is one of the candidates' keys (identity first, then by name)."""
        if id(key) in self.key_ids:
            return True
        names = self._names
        if names is None:
            names = self._names = frozenset(map(_NODE_REPLICA, self.keys))
        return (key.node_id, key.replica) in names

    def by_name(self) -> list[int]:
        """Candidate positions ordered by (node id, replica), computed once."""
        order = self._by_name
        if order is None:
            names = list(map(_NODE_REPLICA, self.keys))
            order = self._by_name = sorted(range(len(names)), key=names.__getitem__)
        return order


class DecisionBasis:
    """What an ``Index`` decision was made from: its :class:`CandidateMemo` and the cache
    weights of the candidates that own something, ``sums[j] * scale`` for the candidate at
    ``positions[j]`` (ascending); every other candidate weighs 0.0. ``scale`` is shared, so
    ``sums`` already orders them. Immutable; the decision owns it."""

    __slots__ = ("memo", "positions", "scale", "sums")

    def __init__(
        self, memo: CandidateMemo, positions: list[int], sums: list[float], scale: float
    ) -> None:
        self.memo = memo
        self.positions = positions
        self.sums = sums
        self.scale = scale

    def weights(self) -> list[float]:
        """Each candidate's weight, in candidate order."""
        out = [0.0] * len(self.memo.keys)
        scale = self.scale
        for i, s in zip(self.positions, self.sums, strict=True):
            out[i] = s * scale
        return out

    def cold_order(self) -> tuple[ReplicaKey, ...]:
        """:func:`order_cold` of the candidates' keys by weight."""
        return order_cold(self.memo.keys, self.weights())

    def first_cold(
        self, flights: Sequence[int] | None = None, limit: float = math.inf
    ) -> ReplicaKey | None:
        """The first key of :meth:`cold_order` whose candidate is eligible, i.e. has
        ``flights[i] <= limit`` (every one when ``flights`` is ``None``), or ``None``.

        A weightless candidate (0.0 never near-ties a positive weight) comes first by name,
        found by walking the candidates by name up to it; otherwise the least eligible
        weight's copies come first by name when its neighbours among the weights are
        farther than 2e-9 of the largest (no near-tie can chain them, see
        :func:`order_cold`) and the largest scaled weight is normal; else the whole order
        is computed. So this costs the walk, or a few C-level passes over the owners.
        """
        keys = self.memo.keys
        sums = self.sums
        scale = self.scale
        if not keys:
            return None
        sv = sorted(sums)
        if len(sums) < len(keys) or (sv and sv[0] * scale == 0.0):
            i = self._first_weightless(flights, limit)
            if i is not None:
                return keys[i]
            sv = sv[bisect_right(sv, 0.0) :]  # the positive sums
            if sv and sv[0] * scale == 0.0:  # a weight that underflows when scaled
                return self._first_of_order(flights, limit)
        if not sv:
            return None
        if flights is None:
            lo = sv[0]
        else:
            eligible = [s for i, s in zip(self.positions, sums, strict=True) if flights[i] <= limit]
            if not eligible:
                return None
            lo = min(eligible)
        # sv[k:k2]: the copies of lo.
        k, k2 = (
            (0, sv.count(lo)) if flights is None else (bisect_left(sv, lo), bisect_right(sv, lo))
        )
        hi = sv[-1]
        if (k or k2 < len(sv)) and not (
            (not k or lo - sv[k - 1] > _GAP * hi)
            and (k2 == len(sv) or sv[k2] - lo > _GAP * hi)
            and _NORMAL[0] <= hi * scale <= _NORMAL[1]
        ):
            return self._first_of_order(flights, limit)
        positions = self.positions
        if k2 - k == 1:  # the least eligible weight's only copy
            return keys[positions[sums.index(lo)]]
        copies = {positions[j] for j, s in enumerate(sums) if s == lo}
        for i in self.memo.by_name():
            if i in copies and (flights is None or flights[i] <= limit):
                return keys[i]
        return None  # unreachable: lo is some eligible weight

    def _first_weightless(self, flights: Sequence[int] | None, limit: float) -> int | None:
        """The first eligible candidate by name that weighs 0.0, or ``None``."""
        positions = self.positions
        sums = self.sums
        scale = self.scale
        n_owned = len(positions)
        for i in self.memo.by_name():
            if flights is not None and flights[i] > limit:
                continue
            j = bisect_left(positions, i)
            if j == n_owned or positions[j] != i or not sums[j] * scale:
                return i
        return None

    def _first_of_order(self, flights: Sequence[int] | None, limit: float) -> ReplicaKey | None:
        order = self.cold_order()
        if flights is None:
            return order[0]
        ok = {k for k, f in zip(self.memo.keys, flights, strict=True) if f <= limit}
        return next((k for k in order if k in ok), None)


def _check_hot(_inst: object, _attr: object, value: Any) -> None:
    if value is not None and not isinstance(value, ReplicaKey):
        raise InvalidRecordError("hot", value, "must be a ReplicaKey or None")


def _check_ratio(_inst: object, _attr: object, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, NUMBER_TYPES)
        or math.isnan(value)
        or not 0.0 <= value <= 1.0
    ):
        raise InvalidRecordError("match_ratio", value, "must be a number in [0, 1]")


def _to_key_tuple(value: Iterable[ReplicaKey]) -> tuple[ReplicaKey, ...]:
    if type(value) is tuple:
        return value
    try:
        return tuple(value)
    except TypeError:
        raise InvalidRecordError("cold_order", value, "must be an iterable of ReplicaKey") from None


def _check_cold_order(_inst: object, _attr: object, value: tuple[object, ...]) -> None:
    for item in value:
        if not isinstance(item, ReplicaKey):
            raise InvalidRecordError("cold_order", value, f"item {item!r} is not a ReplicaKey")


@attrs.frozen(init=False, slots=False)
class PrefixDecision:
    """What the index knows about a request: its hot replica and a cold fallback order.

    Attributes:
        hot: the replica owning the longest live cached prefix of the chain, or ``None``
            (no match, or the owner is not among the candidates).
        match_ratio: matched depth / chain length, in [0, 1] (0.0 without a hot replica).
        cold_order: every candidate key, sorted by (cache weight ascending, node id, replica):
            the least-loaded-with-cache replicas first (see :func:`order_cold`).
        basis: for a decision made by ``Index``, the candidates and weights it was made
            from (:class:`DecisionBasis`); ``None`` for one built from a cold order.

    ``PrefixDecision(hot=None, match_ratio=0.0, cold_order=())``; every field has a default,
    so ``PrefixDecision()`` is the "nothing known" decision. A frozen attrs value record:
    equality, hash, repr, ``attrs.evolve`` and pickling are by its three fields. A decision
    built from a ``basis`` orders its cold keys on first access (routing that takes the hot
    replica never pays for the order); the value is the same either way.

    Raises:
        InvalidRecordError: a field has the wrong type or ``match_ratio`` is outside [0, 1].

    >>> PrefixDecision(None, 0.0, ()).has_hot, PrefixDecision() == PrefixDecision(None, 0.0, ())
    (False, True)
    """

    hot: ReplicaKey | None = attrs.field(default=None, validator=_check_hot)
    match_ratio: float = attrs.field(default=0.0, validator=_check_ratio)
    cold_order: tuple[ReplicaKey, ...] = attrs.field(
        default=(), converter=_to_key_tuple, validator=_check_cold_order
    )
    if TYPE_CHECKING:  # an attribute, not a field: set by __init__, never compared
        basis: DecisionBasis | None

    def __init__(
        self,
        hot: ReplicaKey | None = None,
        match_ratio: float = 0.0,
        cold_order: Iterable[ReplicaKey] = (),
        *,
        basis: DecisionBasis | None = None,
    ) -> None:
        if not (hot is None or type(hot) is ReplicaKey):
            _check_hot(self, None, hot)
        if not (type(match_ratio) is float and 0.0 <= match_ratio <= 1.0):
            _check_ratio(self, None, match_ratio)
        # Frozen: fields are written once, straight into the instance dict.
        fields = self.__dict__
        fields["hot"] = hot
        fields["match_ratio"] = match_ratio
        fields["basis"] = basis
        if basis is None:
            cold = _to_key_tuple(cold_order)
            _check_cold_order(self, None, cold)
            fields["cold_order"] = cold

    @property
    def has_hot(self) -> bool:
        """``True`` iff a hot replica was found (``hot is not None``)."""
        return self.hot is not None

    def first_cold(self) -> ReplicaKey | None:
        """``cold_order[0]`` (``None`` if empty), without ordering the rest when the basis
        makes the first one plain."""
        basis = self.basis
        if basis is None or "cold_order" in self.__dict__:
            return self.cold_order[0] if self.cold_order else None
        return basis.first_cold()

    def __reduce__(self) -> tuple[Any, ...]:
        return (PrefixDecision, (self.hot, self.match_ratio, self.cold_order))


class _ColdOrderFromBasis:
    """``PrefixDecision.cold_order`` while a decision built from a basis has not stored it:
    a non-data descriptor, so once stored (in the instance dict) it is a plain attribute
    read, like :class:`functools.cached_property`."""

    def __get__(self, d: PrefixDecision | None, owner: type) -> Any:
        if d is None:
            return self
        basis: DecisionBasis = d.__dict__["basis"]
        cold = d.__dict__["cold_order"] = basis.cold_order()  # racing threads store equals
        return cold


# attrs keeps no class attribute for the field; the descriptor serves unset instances only.
PrefixDecision.cold_order = _ColdOrderFromBasis()  # type: ignore[assignment]
