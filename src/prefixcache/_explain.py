"""Why :func:`prefixcache.select` routed where it did: :func:`explain_select`.

The explanation re-reads the same public pieces ``select`` decides with (the decision's hot
key, match ratio and cold order, the config's thresholds, and
:func:`clusterrouting.within_load_guard`) and calls ``select`` itself for the choice, so its
``chosen`` is always the decision's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from clusterrouting import within_load_guard
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._select import select
from prefixcache._types import Candidate, ReplicaKey

if TYPE_CHECKING:
    from prefixcache import PrefixDecision

__all__ = ["SelectCandidate", "SelectExplanation", "explain_select"]


def _key_text(key: ReplicaKey) -> str:
    return f"{key.node_id}/{key.replica}"


@attrs.frozen(kw_only=True, slots=True)
class SelectCandidate:
    """One candidate in a :class:`SelectExplanation`.

    Attributes:
        key: the replica.
        in_flight: its in-flight count as passed.
        excluded_by: ``"load_guard"`` when :func:`clusterrouting.within_load_guard` rejects
            it (``in_flight`` above ``min + balance_abs_threshold`` or above
            ``min * balance_rel_threshold + 1``), else ``None``.
        is_hot: it is the decision's hot replica.
        cold_rank: its position in the decision's cold order (``None``: not listed).
    """

    key: ReplicaKey
    in_flight: int
    excluded_by: str | None
    is_hot: bool
    cold_rank: int | None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``key`` as ``"node_id/replica"``)."""
        return {
            "key": _key_text(self.key),
            "in_flight": self.in_flight,
            "excluded_by": self.excluded_by,
            "is_hot": self.is_hot,
            "cold_rank": self.cold_rank,
        }


@attrs.frozen(kw_only=True, slots=True)
class SelectExplanation:
    """Why :func:`prefixcache.select` chose what it chose.

    Attributes:
        chosen: what ``select`` returns for the same arguments.
        rule: the tier that chose: ``"hot"`` (the hot replica, matched at or above
            ``min_prefix_match`` and within the load guard), ``"cold_order"`` (the first
            eligible key of the cold order), ``"least_loaded"`` (the eligible candidate with
            the least in-flight, ties by node id then replica) or ``"empty"``.
        hot: the decision's hot replica (``None``: no match).
        match_ratio: the decision's match ratio.
        min_prefix_match: the config's threshold for taking the hot replica.
        hot_blocked_by: why the hot replica was not taken although it matched enough:
            ``"load_guard"``, ``"not_a_candidate"``, or ``None``.
        min_in_flight: the least in-flight count over the candidates (``None`` when empty).
        candidates: a :class:`SelectCandidate` per candidate, in input order.
    """

    chosen: ReplicaKey | None
    rule: str
    hot: ReplicaKey | None
    match_ratio: float
    min_prefix_match: float
    hot_blocked_by: str | None
    min_in_flight: int | None
    candidates: tuple[SelectCandidate, ...]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (no prompt content)."""
        return {
            "chosen": None if self.chosen is None else _key_text(self.chosen),
            "rule": self.rule,
            "hot": None if self.hot is None else _key_text(self.hot),
            "match_ratio": self.match_ratio,
            "min_prefix_match": self.min_prefix_match,
            "hot_blocked_by": self.hot_blocked_by,
            "min_in_flight": self.min_in_flight,
            "candidates": [c.to_json() for c in self.candidates],
        }


def explain_select(
    candidates: Sequence[Candidate],
    decision: PrefixDecision,
    config: Config = DEFAULT_CONFIG,
) -> SelectExplanation:
    """:func:`prefixcache.select` with its reasons.

    Same arguments as ``select``; ``chosen`` is what ``select`` returns for them. Each
    candidate carries the filter that excluded it and its place in the decision; ``rule``
    names the tier that chose (see :class:`SelectExplanation`).

    Complexity: O(len(candidates) + len(cold_order)).

    >>> from prefixcache import PrefixDecision
    >>> a, b = ReplicaKey("a"), ReplicaKey("b")
    >>> e = explain_select([Candidate(a, 2), Candidate(b, 0)], PrefixDecision(a, 1.0, (b, a)))
    >>> e.chosen.node_id, e.rule, e.hot_blocked_by
    ('b', 'cold_order', 'load_guard')
    """
    chosen = select(candidates, decision, config)
    hot = decision.hot
    ratio = float(decision.match_ratio)
    if not candidates:
        return SelectExplanation(
            chosen=None,
            rule="empty",
            hot=hot,
            match_ratio=ratio,
            min_prefix_match=config.min_prefix_match,
            hot_blocked_by=None,
            min_in_flight=None,
            candidates=(),
        )
    min_if = min(c.in_flight for c in candidates)
    slack = config.balance_abs_threshold
    factor = config.balance_rel_threshold
    ranks: dict[ReplicaKey, int] = {}
    for n, key in enumerate(decision.cold_order):
        ranks.setdefault(key, n)
    eligible: dict[ReplicaKey, int] = {}
    rows = []
    for c in candidates:
        ok = within_load_guard(c.in_flight, min_if, slack=slack, factor=factor)
        if ok:
            prev = eligible.get(c.key)
            if prev is None or c.in_flight < prev:
                eligible[c.key] = c.in_flight
        rows.append(
            SelectCandidate(
                key=c.key,
                in_flight=c.in_flight,
                excluded_by=None if ok else "load_guard",
                is_hot=hot is not None and c.key == hot,
                cold_rank=ranks.get(c.key),
            )
        )
    keys = {c.key for c in candidates}
    matched = hot is not None and ratio >= config.min_prefix_match
    blocked = None
    if matched and hot not in eligible:
        blocked = "load_guard" if hot in keys else "not_a_candidate"
    if matched and hot in eligible:
        rule = "hot"
    elif any(k in eligible for k in decision.cold_order):
        rule = "cold_order"
    else:
        rule = "least_loaded"
    return SelectExplanation(
        chosen=chosen,
        rule=rule,
        hot=hot,
        match_ratio=ratio,
        min_prefix_match=config.min_prefix_match,
        hot_blocked_by=blocked,
        min_in_flight=min_if,
        candidates=tuple(rows),
    )
