"""The one definition of "overloaded" shared by every policy in the library."""

from __future__ import annotations

import math

from clusterrouting._errors import InvalidRecordError

__all__ = ["load_limit", "within_load_guard"]


def within_load_guard(
    in_flight: int,
    min_in_flight: int,
    *,
    slack: int,
    factor: float | None = None,
) -> bool:
    """Whether a replica with ``in_flight`` requests may still take a preferred request.

    A replica is within the guard iff both hold:

    1. ``in_flight <= min_in_flight + slack`` (absolute slack, always applied);
    2. ``in_flight <= min_in_flight * factor + 1`` (relative factor; skipped when ``factor``
       is ``None``).

    ``min_in_flight`` is the minimum in-flight count over *all* candidates of the decision.
    :func:`clusterrouting.pick_with_affinity` uses the absolute slack only;
    ``prefixcache.select`` uses both (``balance_abs_threshold``, ``balance_rel_threshold``).

    Args:
        in_flight: requests in flight on the replica under test (>= 0).
        min_in_flight: the least in-flight count among all candidates (>= 0).
        slack: absolute slack in requests (>= 0).
        factor: relative factor (>= 1), or ``None`` to apply the absolute slack alone.

    Returns:
        ``True`` when the replica is not overloaded relative to the least loaded one.

    Raises:
        InvalidRecordError: ``slack`` is negative or ``factor`` is NaN or below 1.

    Complexity: O(1).

    >>> within_load_guard(3, 1, slack=2)
    True
    >>> within_load_guard(4, 1, slack=2)
    False
    >>> within_load_guard(3, 1, slack=2, factor=1.5)
    False
    """
    return in_flight <= load_limit(min_in_flight, slack=slack, factor=factor)


def load_limit(min_in_flight: int, *, slack: int, factor: float | None = None) -> float:
    """The largest in-flight count :func:`within_load_guard` accepts: ``min(min_in_flight +
    slack, min_in_flight * factor + 1)`` (the second term only with a ``factor``; an
    infinite ``factor`` means no relative cap, also when ``min_in_flight`` is 0, where the
    product would be NaN).

    So a policy over many replicas computes the guard once and compares each count with
    it: ``in_flight <= load_limit(...)`` iff ``within_load_guard(in_flight, ...)``.

    Raises:
        InvalidRecordError: ``slack`` is negative or ``factor`` is NaN or below 1.

    >>> load_limit(1, slack=2), load_limit(1, slack=2, factor=1.5)
    (3, 2.5)
    >>> load_limit(0, slack=3, factor=float("inf"))
    3
    """
    if slack < 0:
        raise InvalidRecordError("slack", slack, "must be >= 0")
    limit = min_in_flight + slack
    if factor is None or factor == math.inf:
        return limit
    if math.isnan(factor) or factor < 1:
        raise InvalidRecordError("factor", factor, "must be >= 1 (or None)")
    rel = min_in_flight * factor + 1
    return rel if rel < limit else limit
