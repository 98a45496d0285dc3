"""Records of the prefix-affinity index: replica keys, candidates and decisions.

All three are frozen, slotted attrs records whose validators make invalid objects
impossible (errors are :class:`clusterrouting.InvalidRecordError`, which is both a
``ValueError`` and a ``TypeError`` and names the field and the bad value).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs

from clusterrouting import InvalidRecordError

__all__ = ["Candidate", "PrefixDecision", "ReplicaKey"]


def _check_node_id(_inst: object, _attr: object, value: Any) -> None:
    if type(value) is not str:
        raise InvalidRecordError("node_id", value, "must be a str")


def _check_replica(_inst: object, _attr: object, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise InvalidRecordError("replica", value, "must be an int >= 0")


@attrs.frozen(order=True, cache_hash=True)
class ReplicaKey:
    """One model replica on one node: the owner of prefix-cache entries.

    ``ReplicaKey(node_id, replica=0)``; positional arguments are allowed. Frozen, hashable
    (the hash is cached: keys are dictionary keys on the routing hot path) and ordered by
    ``node_id`` then ``replica``. An empty ``node_id`` is constructible (the index ignores
    observations for it).

    Raises:
        InvalidRecordError: ``node_id`` is not a ``str``; ``replica`` is not an ``int >= 0``.

    >>> keys = sorted([ReplicaKey("b"), ReplicaKey("a", 1), ReplicaKey("a")])
    >>> [(k.node_id, k.replica) for k in keys]
    [('a', 0), ('a', 1), ('b', 0)]
    """

    node_id: str = attrs.field(validator=_check_node_id)
    replica: int = attrs.field(default=0, validator=_check_replica)

    @property
    def key(self) -> ReplicaKey:
        """The key itself, so that ``decide`` takes keys and :class:`Candidate` alike."""
        return self


def _check_key(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, ReplicaKey):
        raise InvalidRecordError("key", value, "must be a ReplicaKey")


def _check_in_flight(_inst: object, _attr: object, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise InvalidRecordError("in_flight", value, "must be an int >= 0")


@attrs.frozen
class Candidate:
    """A replica that may serve a request, with its current in-flight request count.

    ``Candidate(key, in_flight=0)``. ``in_flight`` is a real in-flight count (reserved at
    pick, released at completion), not a cumulative counter.

    Raises:
        InvalidRecordError: ``key`` is not a :class:`ReplicaKey`; ``in_flight`` is not an
            ``int >= 0``.

    >>> Candidate(ReplicaKey("n1"), in_flight=3).in_flight
    3
    """

    key: ReplicaKey = attrs.field(validator=_check_key)
    in_flight: int = attrs.field(default=0, validator=_check_in_flight)


def _check_hot(_inst: object, _attr: object, value: Any) -> None:
    if value is not None and not isinstance(value, ReplicaKey):
        raise InvalidRecordError("hot", value, "must be a ReplicaKey or None")


def _check_ratio(_inst: object, _attr: object, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
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


_SET = object.__setattr__


@attrs.frozen
class _DecisionFields:
    """:class:`PrefixDecision`'s fields as attrs describes them: the record is written by
    hand (its cold order may be computed on first use) but lends these to ``attrs.has``,
    ``attrs.fields``, ``attrs.evolve`` and ``attrs.asdict``, as the other records."""

    hot: ReplicaKey | None = attrs.field(default=None, validator=_check_hot)
    match_ratio: float = attrs.field(default=0.0, validator=_check_ratio)
    cold_order: tuple[ReplicaKey, ...] = attrs.field(
        default=(), converter=_to_key_tuple, validator=_check_cold_order
    )


class PrefixDecision:
    """What the index knows about a request: its hot replica and a cold fallback order.

    Attributes:
        hot: the replica owning the longest live cached prefix of the chain, or ``None``
            (no match, or the owner is not among the candidates).
        match_ratio: matched depth / chain length, in [0, 1] (0.0 without a hot replica).
        cold_order: every candidate key, sorted by (cache weight ascending, node id, replica):
            the least-loaded-with-cache replicas first.

    Raises:
        InvalidRecordError: a field has the wrong type or ``match_ratio`` is outside [0, 1].

    Every field has a default (no hot replica, ratio 0.0, empty cold order), so
    ``PrefixDecision()`` is the "nothing known" decision. A frozen value record (equality,
    hash, repr and pickling by its three fields, as the other records). A decision made by
    ``Index`` computes ``cold_order`` on first access, from the weights it captured when it
    was made (routing that takes the hot replica never pays for the order): the value is
    the same either way.

    >>> PrefixDecision(None, 0.0, ()).has_hot, PrefixDecision() == PrefixDecision(None, 0.0, ())
    (False, True)
    """

    __slots__ = ("__weakref__", "_cold", "_over", "_src", "hot", "match_ratio")
    __match_args__ = ("hot", "match_ratio", "cold_order")
    __attrs_attrs__ = _DecisionFields.__attrs_attrs__

    hot: ReplicaKey | None
    match_ratio: float
    # The order, or None while ``_src`` holds how to compute it: (function, *arguments).
    _cold: tuple[ReplicaKey, ...] | None
    _src: tuple[Any, ...] | None
    # Index's memo of the candidates it decided over (see Index._memo_for), else None:
    # ``hot`` and every cold key are among their keys, which lets ``select`` skip its tests.
    _over: tuple[Any, ...] | None

    def __init__(
        self,
        hot: ReplicaKey | None = None,
        match_ratio: float = 0.0,
        cold_order: Iterable[ReplicaKey] = (),
    ) -> None:
        _check_hot(self, None, hot)
        _check_ratio(self, None, match_ratio)
        cold = _to_key_tuple(cold_order)
        _check_cold_order(self, None, cold)
        _SET(self, "hot", hot)
        _SET(self, "match_ratio", match_ratio)
        _SET(self, "_cold", cold)
        _SET(self, "_src", None)
        _SET(self, "_over", None)

    @property
    def cold_order(self) -> tuple[ReplicaKey, ...]:
        """Every candidate key by (cache weight ascending, node id, replica)."""
        cold = self._cold
        if cold is None:
            # ``_src`` is never cleared, so threads racing here compute the same value.
            fn, ks, vals, scale = self._src  # type: ignore[misc]
            cold = fn(ks, vals, scale)
            _SET(self, "_cold", cold)
        return cold

    def _first_cold(self) -> ReplicaKey | None:
        """``cold_order[0]`` (``None`` if empty), without ordering the rest when the
        captured weights make the first one plain (see ``prefixcache._order``)."""
        cold = self._cold
        if cold is None:
            fn, ks, vals, scale = self._src  # type: ignore[misc]
            first: ReplicaKey | None = fn(ks, vals, scale, True)
            if first is not None:
                return first
            cold = self.cold_order
        return cold[0] if cold else None

    @property
    def has_hot(self) -> bool:
        """``True`` iff a hot replica was found (``hot is not None``)."""
        return self.hot is not None

    def __setattr__(self, name: str, value: object) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def __delattr__(self, name: str) -> None:
        raise attrs.exceptions.FrozenInstanceError()

    def _fields(self) -> tuple[ReplicaKey | None, float, tuple[ReplicaKey, ...]]:
        return (self.hot, self.match_ratio, self.cold_order)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((PrefixDecision, *self._fields()))

    def __repr__(self) -> str:
        return (
            f"PrefixDecision(hot={self.hot!r}, match_ratio={self.match_ratio!r}, "
            f"cold_order={self.cold_order!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (PrefixDecision, self._fields())
