"""Cold orders and the decision records ``Index`` builds (shared by the index and its trees).

``order_cold`` is the rule; ``_cold_of`` applies it lazily for a ``PrefixDecision`` made by
``Index`` (see :attr:`prefixcache.PrefixDecision.cold_order`), and ``_decision`` builds
such a decision without running the record's validators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter, sub
from typing import Any

from prefixcache._types import PrefixDecision, ReplicaKey

__all__ = ["order_cold"]

#: Weights within this relative distance are equal for every ordering decision (SPEC).
_REL = 1e-9
#: Gaps above this fraction of the largest value keep every scaled gap above _REL.
_GAP = 2e-9
_INF = math.inf  # an inf weight (see RadixTree.weight) ties only with inf, as math.isclose
_sub = sub
_NODE_REPLICA = attrgetter("node_id", "replica")
_new = object.__new__
# The slot descriptors of the (frozen, slotted) record: set in C, bypassing validators.
_SET_HOT = PrefixDecision.__dict__["hot"].__set__
_SET_RATIO = PrefixDecision.__dict__["match_ratio"].__set__
_SET_COLD = PrefixDecision.__dict__["_cold"].__set__
_SET_SRC = PrefixDecision.__dict__["_src"].__set__
_SET_OVER = PrefixDecision.__dict__["_over"].__set__


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


def _group_key(p: tuple[float, tuple[str, int], ReplicaKey]) -> tuple[str, int]:
    return p[1]


_GROUP_KEY = _group_key


def _cold_of(ks: list[ReplicaKey], vals: list[float], scale: float, first: bool = False) -> Any:
    """The cold order of ``ks`` (sorted by (node_id, replica)) for the weights ``vals[i] *
    scale``; with ``first``, only its first key, or ``None`` if that needs the whole order.

    The values are ordered unscaled when every gap between sorted neighbours exceeds 2e-9 of
    the largest (the scaled weights then keep that order with gaps above 1e-9: no near-ties,
    see :func:`order_cold`) and the largest scaled weight is normal; else the weights are
    scaled and the full rule applies. The first key needs only the gap after the copies of the
    least weight."""
    sv = sorted(vals)
    n = len(sv)
    if first:
        if not n:
            return None
        # The first tie group is the copies of the least weight (the first of them in ``ks``
        # order) when the next weight clears the gap rule; all weights equal (idle replicas)
        # make one group.
        lo = sv[0]
        c = sv.count(lo)
        if c == n:
            return ks[0]
        if sv[c] - lo > _GAP * sv[-1] and 1e-290 <= sv[-1] * scale <= 1e290:
            return ks[vals.index(lo)]
        return None
    if n > 1 and min(map(_sub, sv[1:], sv)) > _GAP * sv[-1] and 1e-290 <= sv[-1] * scale <= 1e290:
        return tuple(map(ks.__getitem__, sorted(range(n), key=vals.__getitem__)))
    return order_cold(ks, vals if scale == 1.0 else list(map(scale.__mul__, vals)))


def _decision(
    hot: ReplicaKey | None,
    ratio: float,
    memo: tuple[Any, ...],
    vals: list[float],
    scale: float,
) -> PrefixDecision:
    """A :class:`PrefixDecision` over ``Index``'s candidate memo (candidates, keys, sorted
    keys, key ids, shared in-flight count) from values the caller guarantees valid, skipping
    the validators (hot path); its cold order is computed on first use (``_cold_of``)."""
    d: PrefixDecision = _new(PrefixDecision)
    _SET_HOT(d, hot)
    _SET_RATIO(d, ratio)
    _SET_COLD(d, None)
    _SET_SRC(d, (_cold_of, memo[2], vals, scale))
    _SET_OVER(d, memo)
    return d
