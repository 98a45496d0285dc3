"""Why :func:`~prefixcache.pick_lowest_cost` chose what it chose: :func:`explain_lowest_cost`.

The explanation computes each candidate's terms with the decision's own helpers and calls
``pick_lowest_cost`` itself for the choice, so its ``chosen`` is always the decision's.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import attrs

from prefixcache._cost import (
    DEFAULT_COST_MARGIN,
    DEFAULT_IN_FLIGHT_TOKENS,
    DEFAULT_QUEUE_WEIGHT,
    DEFAULT_SHARE_SLACK,
    DEFAULT_SHARE_TOKENS,
    DEFAULT_TIE_QUEUE_TOKENS,
    CostCandidate,
    candidate_costs,
    pick_lowest_cost,
    share_limit,
    tie_set,
)
from prefixcache._types import ReplicaKey

__all__ = ["CostExplanation", "CostTerms", "explain_lowest_cost"]


@attrs.frozen(kw_only=True, slots=True)
class CostTerms:
    """One candidate in an :class:`CostExplanation`.

    Attributes:
        key: the replica.
        signals: every :class:`CostCandidate` field but ``key``, as passed (JSON-ready:
            enums as their value).
        excluded_by: ``"fair_share"`` when the optional fair-share guard left it out, else
            ``None``.
        uncached_tokens: ``max(0, prompt_tokens - cached_tokens)``.
        queue_term: ``queue_weight * queued_tokens``.
        load_term: ``in_flight_tokens * (in_flight - min_in_flight)``.
        share_term: ``share_tokens * (recent_dispatches - min_recent)`` (0 when pinned).
        pin_term: ``-pinned_tokens``.
        cost: the sum of the five terms (the cost of :func:`pick_lowest_cost`).
    """

    key: ReplicaKey
    signals: dict[str, int | str]
    excluded_by: str | None
    uncached_tokens: int
    queue_term: float
    load_term: float
    share_term: float
    pin_term: float
    cost: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``key`` as ``"node_id/replica"``)."""
        d = attrs.asdict(self, recurse=False)
        d["key"] = f"{self.key.node_id}/{self.key.replica}"
        d["signals"] = dict(self.signals)
        return d


@attrs.frozen(kw_only=True, slots=True)
class CostExplanation:
    """Why :func:`pick_lowest_cost` chose what it chose (:func:`explain_lowest_cost`).

    Attributes:
        chosen: the key :func:`pick_lowest_cost` returns for the same arguments.
        rule: what separated the winner from the best other eligible candidate. When the
            winner is the only tie: ``"cost"`` if no other eligible candidate is within
            the cost margin, ``"tie_queue"`` if some are but their backlogs exceed the
            bound (``tie_queue_limit``). Otherwise the first tier of
            :func:`pick_lowest_cost` on which the two best ties differ: ``"tie_rank"``,
            ``"cost"``, ``"queued_tokens"``, ``"in_flight"`` or ``"key"``.
            ``"only_eligible"`` when one candidate passed the guard, ``"empty"`` for none.
        candidates: a :class:`CostTerms` per candidate, in input order.
        min_in_flight: the least ``in_flight`` over all candidates (``None`` when empty).
        min_recent: the least ``recent_dispatches`` over all candidates (``None`` when
            empty).
        share_limit: the fair-share guard's limit in dispatches (``None``: guard off or no
            candidates).
        params: the arguments the decision used (prompt tokens, weights, the cost margin
            and the backlog bound).
        tie_limit: the least eligible cost plus ``cost_margin`` (``None`` when empty).
        tie_queue_limit: the least-cost eligible candidate's ``queued_tokens`` (of
            several, the shortest) plus ``tie_queue_tokens`` (``None`` when empty). The
            ties are the eligible candidates costing at most ``tie_limit`` whose
            ``queued_tokens`` are at most this.
    """

    chosen: ReplicaKey | None
    rule: str
    candidates: tuple[CostTerms, ...]
    min_in_flight: int | None
    share_limit: float | None
    params: dict[str, int | float | None]
    min_recent: int | None
    tie_limit: float | None = None
    tie_queue_limit: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (no prompt content: only counts and weights)."""
        return {
            "chosen": None
            if self.chosen is None
            else f"{self.chosen.node_id}/{self.chosen.replica}",
            "rule": self.rule,
            "min_in_flight": self.min_in_flight,
            "min_recent": self.min_recent,
            "share_limit": self.share_limit,
            "tie_limit": self.tie_limit,
            "tie_queue_limit": self.tie_queue_limit,
            "params": dict(self.params),
            "candidates": [c.to_json() for c in self.candidates],
        }


_TIERS = ("tie_rank", "cost", "queued_tokens", "in_flight", "key")


def explain_lowest_cost(
    candidates: Sequence[CostCandidate],
    *,
    prompt_tokens: int,
    queue_weight: float = DEFAULT_QUEUE_WEIGHT,
    in_flight_tokens: float = DEFAULT_IN_FLIGHT_TOKENS,
    share_tokens: float = DEFAULT_SHARE_TOKENS,
    share_factor: float | None = None,
    share_slack: int = DEFAULT_SHARE_SLACK,
    cost_margin: float = DEFAULT_COST_MARGIN,
    tie_queue_tokens: float = DEFAULT_TIE_QUEUE_TOKENS,
) -> CostExplanation:
    """:func:`pick_lowest_cost` with its reasons: every candidate's signals, the filter that
    excluded it, each cost term, and the tier that decided.

    Same arguments and errors as :func:`pick_lowest_cost`; ``chosen`` is always what it
    returns for them (it is called to decide). O(len(candidates) log len(candidates)).

    >>> a = CostCandidate(key=ReplicaKey("a"), cached_tokens=1024, queued_tokens=4000)
    >>> b = CostCandidate(key=ReplicaKey("b"))
    >>> e = explain_lowest_cost([a, b], prompt_tokens=2048)
    >>> e.chosen.node_id, e.rule, [c.cost for c in e.candidates], e.tie_limit
    ('a', 'cost', [1424.0, 2048.0], 1936.0)
    """
    chosen = pick_lowest_cost(
        candidates,
        prompt_tokens=prompt_tokens,
        queue_weight=queue_weight,
        in_flight_tokens=in_flight_tokens,
        share_tokens=share_tokens,
        share_factor=share_factor,
        share_slack=share_slack,
        cost_margin=cost_margin,
        tie_queue_tokens=tie_queue_tokens,
    )
    params: dict[str, int | float | None] = {
        "prompt_tokens": prompt_tokens,
        "queue_weight": queue_weight,
        "in_flight_tokens": in_flight_tokens,
        "share_tokens": share_tokens,
        "share_factor": share_factor,
        "share_slack": share_slack,
        "cost_margin": cost_margin,
        "tie_queue_tokens": tie_queue_tokens,
    }
    if not candidates:
        return CostExplanation(
            chosen=None,
            rule="empty",
            candidates=(),
            min_in_flight=None,
            min_recent=None,
            share_limit=None,
            params=params,
        )
    min_if = min(c.in_flight for c in candidates)
    min_recent = min(c.recent_dispatches for c in candidates)
    limit = share_limit(candidates, share_factor, share_slack)
    totals = candidate_costs(
        candidates,
        prompt_tokens=prompt_tokens,
        queue_weight=queue_weight,
        in_flight_tokens=in_flight_tokens,
        share_tokens=share_tokens,
        min_in_flight=min_if,
        min_recent=min_recent,
    )
    terms = []
    eligible: list[CostCandidate] = []
    eligible_costs: list[float] = []
    for c, total in zip(candidates, totals, strict=True):
        excluded = None
        if limit is not None and not (c.recent_dispatches <= limit or c.pinned_tokens):
            excluded = "fair_share"
        signals: dict[str, int | str] = {
            f.name: (v.value if isinstance(v, StrEnum) else v)
            for f in attrs.fields(type(c))
            if f.name != "key"
            for v in (getattr(c, f.name),)
        }
        t = CostTerms(
            key=c.key,
            signals=signals,
            excluded_by=excluded,
            uncached_tokens=max(0, prompt_tokens - c.cached_tokens),
            queue_term=float(queue_weight * c.queued_tokens),
            load_term=float(in_flight_tokens * (c.in_flight - min_if)),
            share_term=0.0
            if c.pinned_tokens
            else float(share_tokens * (c.recent_dispatches - min_recent)),
            pin_term=float(-c.pinned_tokens),
            cost=float(total),
        )
        terms.append(t)
        if excluded is None:
            eligible.append(c)
            eligible_costs.append(float(total))
    tie = tie_set(
        eligible, eligible_costs, cost_margin=cost_margin, tie_queue_tokens=tie_queue_tokens
    )
    ties = sorted(tie.ties)
    if len(eligible) == 1:
        rule = "only_eligible"
    elif len(ties) == 1:
        # Others within the cost margin were left out only by their backlogs.
        near = sum(1 for cost in eligible_costs if cost <= tie.cost_limit)
        rule = "tie_queue" if near > 1 else "cost"
    else:
        first, second = ties[0], ties[1]
        rule = next(
            (name for name, x, y in zip(_TIERS, first, second, strict=True) if x != y), "key"
        )
    return CostExplanation(
        chosen=chosen,
        rule=rule,
        candidates=tuple(terms),
        min_in_flight=min_if,
        min_recent=min_recent,
        share_limit=limit,
        params=params,
        tie_limit=float(tie.cost_limit),
        tie_queue_limit=float(tie.queue_limit),
    )
