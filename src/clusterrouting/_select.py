"""Replica selection: pure functions over a snapshot of candidates.

Nothing here reads a clock, draws randomness, logs or mutates: the host passes ``now`` and the
in-flight counts, and refreshes ``last_used`` on the replica it picks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from clusterrouting._errors import InvalidRecordError
from clusterrouting._guard import within_load_guard
from clusterrouting._records import NodeData, ReplicaCandidate

__all__ = ["DEFAULT_AFFINITY_SLACK", "build_candidates", "pick_best_replica", "pick_with_affinity"]

#: Default slack of :func:`pick_with_affinity`; equals prefixcache's ``balance_abs_threshold``.
DEFAULT_AFFINITY_SLACK = 2


def _best_key(c: ReplicaCandidate) -> tuple[int, float, int]:
    # Tier 1: fewest in flight. Tier 2: least recently used (never used = oldest), so equally
    # loaded replicas take turns. Tier 3: most free VRAM (cold start).
    return (c.in_flight, -math.inf if c.last_used is None else c.last_used, -c.available_vram)


def pick_best_replica(candidates: Sequence[ReplicaCandidate]) -> ReplicaCandidate | None:
    """The least loaded replica.

    Tiers, in order (the first that is not a tie decides):

    1. ``in_flight`` ascending;
    2. ``last_used`` ascending, ``None`` (never used) oldest: equally loaded replicas take turns
       because the host refreshes ``last_used`` on each pick (without this tier the
       largest-VRAM node would take nearly all the load);
    3. ``available_vram`` descending (cold-start tiebreak).

    A full tie returns the earliest candidate (stable). Returns the element itself.

    Args:
        candidates: the replicas to choose among.

    Returns:
        The chosen candidate, or ``None`` when ``candidates`` is empty.

    Complexity: O(n).

    >>> a = ReplicaCandidate(node_id="a", in_flight=1)
    >>> b = ReplicaCandidate(node_id="b", in_flight=0, last_used=5.0)
    >>> pick_best_replica([a, b]).node_id
    'b'
    >>> pick_best_replica([]) is None
    True
    """
    if not candidates:
        return None
    return min(candidates, key=_best_key)


def pick_with_affinity(
    candidates: Sequence[ReplicaCandidate],
    preferred_node_id: str | None,
    *,
    slack: int = DEFAULT_AFFINITY_SLACK,
) -> ReplicaCandidate | None:
    """The preferred node's replica unless it is overloaded, else :func:`pick_best_replica`.

    Policy:

    1. empty ``candidates`` -> ``None``; an empty or ``None`` ``preferred_node_id`` is exactly
       ``pick_best_replica(candidates)``;
    2. ``min_in_flight`` is the minimum over **all** candidates;
    3. the preferred candidate is the **last** one whose ``node_id`` equals
       ``preferred_node_id``; it is returned iff it exists and
       ``within_load_guard(preferred.in_flight, min_in_flight, slack=slack)``, i.e.
       ``preferred.in_flight <= min_in_flight + slack``;
    4. otherwise ``pick_best_replica(candidates)``.

    Args:
        candidates: the replicas to choose among.
        preferred_node_id: the node whose cache is warm for this request, if any.
        slack: how many more requests than the least loaded replica the preferred one may
            have (>= 0); defaults to prefixcache's ``balance_abs_threshold`` (2).

    Returns:
        The chosen candidate (an element of ``candidates``), or ``None`` when it is empty.

    Raises:
        InvalidRecordError: ``slack`` is negative or not an int.

    Complexity: O(n).

    >>> a = ReplicaCandidate(node_id="a", in_flight=3)
    >>> b = ReplicaCandidate(node_id="b", in_flight=1)
    >>> pick_with_affinity([a, b], "a").node_id, pick_with_affinity([a, b], "a", slack=1).node_id
    ('a', 'b')
    """
    if isinstance(slack, bool) or not isinstance(slack, int):
        raise InvalidRecordError("slack", slack, "must be an int")
    if slack < 0:
        raise InvalidRecordError("slack", slack, "must be >= 0")
    if not candidates:
        return None
    if not preferred_node_id:
        return pick_best_replica(candidates)
    min_in_flight = min(c.in_flight for c in candidates)
    preferred = None
    for c in candidates:
        if c.node_id == preferred_node_id:
            preferred = c
    if preferred is not None and within_load_guard(preferred.in_flight, min_in_flight, slack=slack):
        return preferred
    return pick_best_replica(candidates)


def build_candidates(
    nodes: Iterable[NodeData],
    in_flight: Mapping[str, int],
    *,
    now: float,
    model: str = "",
) -> list[ReplicaCandidate]:
    """Candidates from the peers' gossip records.

    Keeps the nodes online at ``now`` (:meth:`NodeData.is_online_at`) that serve ``model``
    (:meth:`NodeData.serves_model`; ``""`` means any), with ``in_flight`` looked up by node id
    (missing = 0), ``address`` from the tunnel address and ``available_vram`` from the node.
    ``last_used`` is ``None`` (the gossip record does not carry it). The output is sorted by
    node id ascending (stable), so a full tie goes to the smallest id.

    Args:
        nodes: the peers' latest records.
        in_flight: requests in flight per node id (each >= 0).
        now: wall-clock seconds, the clock domain of ``NodeData.last_seen``.
        model: the requested model, or ``""`` for no filter.

    Returns:
        A new list (possibly empty).

    Raises:
        InvalidRecordError: an in-flight count is negative or not an int.

    Complexity: O(n log n).
    """
    out = [
        ReplicaCandidate(
            node_id=n.id,
            address=n.tunnel_address,
            in_flight=in_flight.get(n.id, 0),
            available_vram=n.available_vram,
        )
        for n in nodes
        if n.is_online_at(now) and n.serves_model(model)
    ]
    out.sort(key=lambda c: c.node_id)
    return out
