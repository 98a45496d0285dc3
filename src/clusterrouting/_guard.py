"""The one definition of "overloaded" shared by every policy in the library."""

from __future__ import annotations

import math

from clusterrouting._errors import InvalidRecordError

__all__ = ["within_load_guard"]


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
    if slack < 0:
        raise InvalidRecordError("slack", slack, "must be >= 0")
    if in_flight > min_in_flight + slack:
        return False
    if factor is None:
        return True
    if math.isnan(factor) or factor < 1:
        raise InvalidRecordError("factor", factor, "must be >= 1 (or None)")
    return in_flight <= min_in_flight * factor + 1
