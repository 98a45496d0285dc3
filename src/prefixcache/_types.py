"""Records of the prefix-affinity index: replica keys and candidates (decisions live in
:mod:`prefixcache._decision`).

Both are frozen, slotted attrs records whose validators make invalid objects
impossible (errors are :class:`clusterrouting.InvalidRecordError`, which is both a
``ValueError`` and a ``TypeError`` and names the field and the bad value).
"""

from __future__ import annotations

from typing import Any

import attrs

from clusterrouting import InvalidRecordError

__all__ = ["Candidate", "ReplicaKey"]


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
