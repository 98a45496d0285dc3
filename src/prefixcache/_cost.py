"""Cost-based replica choice: cached prefix work saved weighed against queued prefill work.

:func:`pick_lowest_cost` is a pure decision over :class:`CostCandidate` snapshots. A
gateway fills them from the router's own records of what it dispatched
(:mod:`prefixcache._mirror`: ``KvCacheMirror``, ``DispatchWindow``) or from the engines' KV
events (``prefixcache.kvevents``); :mod:`prefixcache._cost_explain` says why it chose. The
replay's ``cache-cost`` policy is exactly this.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import NUMBER_TYPES
from prefixcache._types import ReplicaKey

__all__ = [
    "DEFAULT_COST_MARGIN",
    "DEFAULT_IN_FLIGHT_TOKENS",
    "DEFAULT_PIN_TOKENS",
    "DEFAULT_QUEUE_WEIGHT",
    "DEFAULT_SHARE_FACTOR",
    "DEFAULT_SHARE_SLACK",
    "DEFAULT_SHARE_TOKENS",
    "DEFAULT_TIE_QUEUE_TOKENS",
    "CacheSource",
    "CostCandidate",
    "pick_lowest_cost",
]

DEFAULT_QUEUE_WEIGHT = 0.1
"""A queued prefill token costs 0.1 uncached prompt token (see ``pick_lowest_cost``)."""

DEFAULT_IN_FLIGHT_TOKENS = 64
"""Each request in flight above the least-loaded replica costs 64 prompt tokens."""

DEFAULT_COST_MARGIN = 512
"""Costs within 512 prompt tokens (one 512-token block) of the least are ties, which go to
the lower ``tie_rank`` (see ``pick_lowest_cost``)."""

DEFAULT_TIE_QUEUE_TOKENS = 5120
"""A candidate whose backlog exceeds the least-cost candidate's by more than 5,120 tokens
(what the default margin buys at the default queue weight: 512 / 0.1) is no tie (see
``pick_lowest_cost``)."""

DEFAULT_SHARE_TOKENS = 32
"""Each recent dispatch above the least-dispatched replica's costs 32 prompt tokens: a
replica that took 16 more of the router's recent requests pays one cost margin."""

DEFAULT_SHARE_FACTOR = 1.1
"""The fair-share guard's factor: a replica may take a request while its recent
dispatches are at most 1.1 x the mean (+ ``DEFAULT_SHARE_SLACK``). ``pick_lowest_cost``
applies it only when given ``share_factor``; the default policy passes it for requests
behind a hot prefix (``HotPrefixes.needs_fair_share``), a host may pass it always."""

DEFAULT_SHARE_SLACK = 2
"""Absolute slack of the optional fair-share guard, in dispatches (absorbs small-number
noise)."""

DEFAULT_PIN_TOKENS = 1 << 20
"""A session pin is worth 2**20 prompt tokens: more than any prompt saves, so a pinned
replica within its load guard keeps the session (``CostCandidate.pinned_tokens``)."""


class CacheSource(StrEnum):
    """Where a :class:`CostCandidate`'s ``cached_tokens`` came from.

    * ``mirror``: the router's own guess, :class:`KvCacheMirror` (what it dispatched);
    * ``events``: the engine's KV-cache events, ``prefixcache.kvevents.KvResidency``, for a
      replica whose record is ``exact``.

    The source of a decision is the chosen candidate's ``cached_source``.
    """

    MIRROR = "mirror"
    EVENTS = "events"


def _check_source(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, CacheSource):
        raise InvalidRecordError("cached_source", value, "must be a CacheSource")


def _check_key(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, ReplicaKey):
        raise InvalidRecordError("key", value, "must be a ReplicaKey")


def _nonneg_int(name: str) -> Any:
    def check(_inst: object, _attr: object, value: Any) -> None:
        if type(value) is not int or value < 0:
            raise InvalidRecordError(name, value, "must be an int >= 0")

    return check


@attrs.frozen(kw_only=True, slots=True)
class CostCandidate:
    """A replica as the cost policy sees it.

    Attributes:
        key: the replica.
        in_flight: requests in flight on it (reserved at pick, released at completion).
        cached_tokens: prompt tokens of *this* request the replica is believed to hold in
            its KV cache (e.g. ``KvCacheMirror.matched_blocks * block_tokens``).
        queued_tokens: prefill tokens already dispatched to it whose first token has not
            come back yet (its prefill backlog, in tokens).
        recent_dispatches: requests the router sent it among its last N dispatches
            (:meth:`DispatchWindow.count`); equal everywhere (e.g. 0), the share price and
            the fair-share guard do nothing.
        cached_source: where ``cached_tokens`` came from (:class:`CacheSource`; default
            ``mirror``). Informational: the cost does not depend on it.
        pinned_tokens: prompt tokens credited to the replica because the request's session
            is pinned to it (e.g. ``DEFAULT_PIN_TOKENS``); 0 (the default) for no pin. A
            pinned replica pays no share price and passes the optional fair-share guard: a
            session's turns are not the traffic's share. The host sets it only while the
            replica is within its load guard, so an overloaded session still moves.
        tie_rank: orders the candidates whose costs tie (within ``cost_margin`` of the
            least), lower first. A host passes how recently it dispatched to each replica
            (0 for the least recently used; the replay does) or its ``recent_dispatches``,
            so that requests whose savings are alike everywhere rotate over the replicas as
            round-robin would instead of following in-flight noise; 0 (the default)
            everywhere leaves ties to the cost, then the queue, in-flight count and key.

    Raises:
        InvalidRecordError: a count is not an ``int >= 0``, ``key`` is not a ReplicaKey or
            ``cached_source`` not a :class:`CacheSource`.
    """

    key: ReplicaKey = attrs.field(validator=_check_key)
    in_flight: int = attrs.field(default=0, validator=_nonneg_int("in_flight"))
    cached_tokens: int = attrs.field(default=0, validator=_nonneg_int("cached_tokens"))
    queued_tokens: int = attrs.field(default=0, validator=_nonneg_int("queued_tokens"))
    recent_dispatches: int = attrs.field(default=0, validator=_nonneg_int("recent_dispatches"))
    cached_source: CacheSource = attrs.field(default=CacheSource.MIRROR, validator=_check_source)
    pinned_tokens: int = attrs.field(default=0, validator=_nonneg_int("pinned_tokens"))
    tie_rank: int = attrs.field(default=0, validator=_nonneg_int("tie_rank"))


def pick_lowest_cost(
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
) -> ReplicaKey | None:
    """Pick the replica where the request costs the cluster least.

    The cost of a candidate, in prompt tokens::

        max(0, prompt_tokens - cached_tokens)                  # prefill work it adds
        + queue_weight * queued_tokens                         # backlog, discounted
        + in_flight_tokens * (in_flight - min_in_flight)       # load above the least
        + share_tokens * (recent_dispatches - min_recent)      # share above the least
        - pinned_tokens                                        # the session's pin

    with ``min_in_flight`` and ``min_recent`` the least ``in_flight`` and
    ``recent_dispatches`` over all candidates; a pinned candidate (``pinned_tokens > 0``)
    has no share term.

    Optional filter (the fair-share guard, off by default): with ``share_factor`` set, a
    candidate is eligible iff ``recent_dispatches <= mean_recent * share_factor +
    share_slack``, ``mean_recent`` being the mean over all candidates. The candidate with
    the fewest recent dispatches is always eligible, so the filter never empties the set. A
    candidate with ``pinned_tokens > 0`` is always eligible too.

    The *ties* are the eligible candidates whose cost is at most the least cost +
    ``cost_margin`` and whose ``queued_tokens`` are at most the least-cost candidate's +
    ``tie_queue_tokens`` (of several at the least cost, the one with the shortest backlog;
    it is always a tie). Tiers, applied with one ``min`` key over the ties (first non-tie
    wins):

    1. ``tie_rank`` ascending (the host's rotation order; 0 everywhere skips this tier);
    2. cost ascending;
    3. ``queued_tokens`` ascending (of two equal costs, the shorter queue);
    4. ``in_flight`` ascending;
    5. ``key`` ascending (stable, deterministic).

    Why these weights. The request's own TTFT would weigh uncached work and backlog
    equally, but a cache miss costs more than that request's time: the uncached tokens join
    the replica's backlog and delay every later request there, and they copy the prefix to
    a second replica, spending cache capacity and splitting the session's future hits; a
    backlog drains. With ``queue_weight=0.1`` a replica holding the prefix keeps the request
    unless another's backlog is shorter by more than ten times the tokens it would save
    (``1.0`` is the greedy own-TTFT rule, which loses a large share of the hits in the
    replay). The in-flight term (an eighth of a 512-token
    block per extra request) moves a request off a replica only when many more requests run
    there; it is small because in-flight counts include requests that are only decoding,
    whose cost to a new request's first token is a sliver of a step.
    ``queue_weight=0, in_flight_tokens=0, share_tokens=0`` is pure affinity (hot replicas
    melt down), but for the ties' backlog bound.

    Why a margin. When the savings are alike everywhere (every replica holds a shared
    system prompt, or none holds a new session's), the costs differ only by backlog and
    in-flight noise, and following that noise sends bursts of requests to one replica.
    Costs within ``cost_margin`` of the least are ties, and ties go by the host's
    ``tie_rank``: with the least recently used replica ranked first, such requests rotate
    over the replicas exactly as round-robin does, which is what identical requests on even
    arrivals want, while a replica saving more than the margin (a cached conversation, a
    prefix only some replicas hold) still wins on cost. ``cost_margin=0`` breaks ties only
    between exactly equal costs. But a candidate whose backlog exceeds the least-cost
    candidate's by more than ``tie_queue_tokens`` (5,120: what the margin buys at the
    default weight, 512 / 0.1) is no tie, whatever its cost: its other terms (fewer
    dispatches, fewer requests in flight) bring it close, and a queue longer than the
    margin could hide is not noise. Rotating onto it would make the request wait behind
    that queue, as when the replicas that took fewer but heavier requests look cheap by
    their share (docs/replay.md measures it on a real trace).

    Why a price on shares. Sessions stick to the replica that holds their context, so the
    replicas that happened to start long sessions take more and more of the traffic, and a
    backlog or in-flight term sees that only once queues have formed. Each of the router's
    recent dispatches above the least-dispatched candidate's costs ``share_tokens`` (32: a
    replica that took 16 more of the router's recent requests, a window of ``256 x
    replicas`` in the replay and the LiteLLM plugin, pays one cost margin). A new
    session, whose savings are alike everywhere, then goes to a replica with a small
    share, and a session leaves its cache only when its replica's excess share costs more
    than the cache saves. It counts dispatches, not in-flight requests: in-flight counts
    jump with every long decode and would move sessions on noise.

    Why the guard is off. A guard skips a replica over its share whatever the request
    saves there: every skipped session pays a cold prefill elsewhere, and under overload
    every cold prefill lengthens every queue (docs/replay.md compares the two). The
    guard is mean-based, unlike ``clusterrouting.within_load_guard``'s min-based in-flight
    guard: a share is a fraction of the traffic, whose fair value is the mean.

    Args:
        candidates: the replicas that may serve the request.
        prompt_tokens: the request's prompt length in tokens (>= 0).
        queue_weight: cost per queued token (finite, >= 0).
        in_flight_tokens: cost per in-flight request above the least loaded (finite, >= 0).
        share_tokens: cost per recent dispatch above the least dispatched (finite, >= 0).
        share_factor: the fair-share guard's factor (finite, >= 1), or ``None`` (the
            default) for no guard.
        share_slack: the fair-share guard's absolute slack in dispatches (int >= 0).
        cost_margin: costs within this many prompt tokens of the least tie (finite, >= 0).
        tie_queue_tokens: a tie's backlog is at most the least-cost candidate's + this many
            tokens (finite, >= 0). It is in tokens and does not follow ``cost_margin`` or
            ``queue_weight``: with other values of those, set it too.

    Returns:
        The chosen key, or ``None`` for an empty ``candidates``.

    Raises:
        InvalidRecordError: ``prompt_tokens`` < 0 or not an int; a bad weight
            (``queue_weight``, ``in_flight_tokens``, ``share_tokens``), ``share_factor``,
            ``share_slack``, ``cost_margin`` or ``tie_queue_tokens``, named in the error.

    Complexity: O(len(candidates)).

    >>> a = CostCandidate(key=ReplicaKey("a"), cached_tokens=1024, queued_tokens=4000)
    >>> b = CostCandidate(key=ReplicaKey("b"), queued_tokens=0)
    >>> pick_lowest_cost([a, b], prompt_tokens=2048).node_id   # 1024 + 400 + 512 < 2048
    'a'
    >>> pick_lowest_cost([a, b], prompt_tokens=2048, queue_weight=1.0).node_id
    'b'
    >>> c = CostCandidate(key=ReplicaKey("c"), cached_tokens=1024, tie_rank=1)
    >>> d = CostCandidate(key=ReplicaKey("d"), cached_tokens=1024, queued_tokens=900)
    >>> pick_lowest_cost([c, d], prompt_tokens=2048).node_id   # 1024 vs 1114: a tie
    'd'
    >>> e = CostCandidate(key=ReplicaKey("e"), cached_tokens=1024, recent_dispatches=50)
    >>> f = CostCandidate(key=ReplicaKey("f"), recent_dispatches=10)
    >>> pick_lowest_cost([e, f], prompt_tokens=2048).node_id   # 1024 + 1280 vs 2048
    'f'
    >>> pick_lowest_cost([e, f], prompt_tokens=2048, share_tokens=8).node_id  # 1344
    'e'
    >>> g = CostCandidate(key=ReplicaKey("g"), queued_tokens=26_000, recent_dispatches=147)
    >>> h = CostCandidate(key=ReplicaKey("h"), queued_tokens=10_000, recent_dispatches=196,
    ...                   tie_rank=1)
    >>> pick_lowest_cost([g, h], prompt_tokens=2000).node_id  # 4600 vs 4568: g queues 16k more
    'h'
    >>> pick_lowest_cost([g, h], prompt_tokens=2000, tie_queue_tokens=20_000).node_id
    'g'
    """
    _check_args(
        prompt_tokens,
        (
            queue_weight,
            in_flight_tokens,
            share_tokens,
            share_factor,
            share_slack,
            cost_margin,
            tie_queue_tokens,
        ),
    )
    if not candidates:
        return None
    min_if = min(c.in_flight for c in candidates)
    min_recent = min(c.recent_dispatches for c in candidates)
    eligible = _eligible(candidates, share_factor, share_slack)
    costs = candidate_costs(
        eligible,
        prompt_tokens=prompt_tokens,
        queue_weight=queue_weight,
        in_flight_tokens=in_flight_tokens,
        share_tokens=share_tokens,
        min_in_flight=min_if,
        min_recent=min_recent,
    )
    return min(_ties(eligible, costs, cost_margin, tie_queue_tokens)[0])[-1]


#: A tie as ``pick_lowest_cost`` orders it, by its tiers: (tie_rank, cost, queued_tokens,
#: in_flight, key); the least is the pick.
TieRank = tuple[int, float, int, int, ReplicaKey]


class TieSet(NamedTuple):
    """The ties of one ``pick_lowest_cost`` decision (:func:`tie_set`).

    Attributes:
        ties: the ties as :data:`TieRank` tuples, in the candidates' order (not sorted).
        cost_limit: the least cost + ``cost_margin``.
        queue_limit: the least-cost candidate's backlog (of several, the shortest) +
            ``tie_queue_tokens``.
    """

    ties: list[TieRank]
    cost_limit: float
    queue_limit: float


def tie_set(
    eligible: Sequence[CostCandidate],
    costs: Sequence[float],
    *,
    cost_margin: float,
    tie_queue_tokens: float,
) -> TieSet:
    """The ties of ``pick_lowest_cost`` among ``eligible`` (not empty), whose costs are
    ``costs``: the candidates within ``cost_margin`` of the least cost whose backlog exceeds
    the reference backlog, the least-cost candidate's (of several, the shortest), by at
    most ``tie_queue_tokens``. That candidate is always a tie. The backlogs are compared by
    their difference, exact for integer backlogs of any size."""
    ties, least, ref = _ties(eligible, costs, cost_margin, tie_queue_tokens)
    return TieSet(ties, least + cost_margin, ref + tie_queue_tokens)


def _ties(
    eligible: Sequence[CostCandidate],
    costs: Sequence[float],
    cost_margin: float,
    tie_queue_tokens: float,
) -> tuple[list[TieRank], float, int]:
    """:func:`tie_set`'s ties, with the least cost and the reference backlog."""
    least = min(costs)
    limit = least + cost_margin
    ties = [
        (c.tie_rank, cost, c.queued_tokens, c.in_flight, c.key)
        for c, cost in zip(eligible, costs, strict=True)
        if cost <= limit
    ]
    if len(ties) == 1:
        # The least-cost candidate alone, a tie by definition: the result of the two
        # passes below without them. It saves about 5,000 instructions per LiteLLM plugin
        # call (callgrind, 8 deployments, most picks with one tie: 436.0k against 441.0k);
        # test_tie_set_is_the_documented_rule (tests/property) checks both paths.
        return ties, least, ties[0][2]
    ref = min([t[2] for t in ties if t[1] == least])
    return [t for t in ties if t[2] - ref <= tie_queue_tokens], least, ref


def _check_args(prompt_tokens: int, params: tuple[Any, ...]) -> None:
    """Check ``prompt_tokens`` and ``params``, the arguments of :func:`_check_params` in its
    order (``pick_lowest_cost``'s weights and bounds)."""
    if type(prompt_tokens) is not int or prompt_tokens < 0:
        raise InvalidRecordError("prompt_tokens", prompt_tokens, "must be an int >= 0")
    try:
        _check_params_once(*params)
    except InvalidRecordError:
        raise
    except TypeError:  # an unhashable parameter: the uncached check names it
        _check_params(*params)


def _check_params(
    queue_weight: float,
    in_flight_tokens: float,
    share_tokens: float,
    share_factor: float | None,
    share_slack: int,
    cost_margin: float,
    tie_queue_tokens: float,
) -> None:
    for name, w in (
        ("queue_weight", queue_weight),
        ("in_flight_tokens", in_flight_tokens),
        ("share_tokens", share_tokens),
        ("cost_margin", cost_margin),
        ("tie_queue_tokens", tie_queue_tokens),
    ):
        if isinstance(w, bool) or not isinstance(w, NUMBER_TYPES) or not math.isfinite(w) or w < 0:
            raise InvalidRecordError(name, w, "must be a finite number >= 0")
    if share_factor is not None and (
        isinstance(share_factor, bool)
        or not isinstance(share_factor, NUMBER_TYPES)
        or not math.isfinite(share_factor)
        or share_factor < 1
    ):
        raise InvalidRecordError("share_factor", share_factor, "must be a finite number >= 1")
    if type(share_slack) is not int or share_slack < 0:
        raise InvalidRecordError("share_slack", share_slack, "must be an int >= 0")


# A host passes the same few parameter sets on every call, so a set that passed is
# remembered: ``typed`` keeps ``True`` apart from ``1`` and ``1`` from ``1.0``, a NaN never
# equals itself (never found), and a set that raised is never stored.
_check_params_once = functools.lru_cache(maxsize=64, typed=True)(_check_params)


def share_limit(
    candidates: Sequence[CostCandidate], share_factor: float | None, share_slack: int
) -> float | None:
    """The fair-share guard's limit in dispatches (``None``: guard off)."""
    if share_factor is None:
        return None
    mean = sum(c.recent_dispatches for c in candidates) / len(candidates)
    return mean * share_factor + share_slack


def _eligible(
    candidates: Sequence[CostCandidate], share_factor: float | None, share_slack: int
) -> Sequence[CostCandidate]:
    """The candidates the fair-share guard lets through (never empty for a non-empty set)."""
    limit = share_limit(candidates, share_factor, share_slack)
    if limit is None:
        return candidates
    return [c for c in candidates if c.recent_dispatches <= limit or c.pinned_tokens]


def candidate_costs(
    candidates: Sequence[CostCandidate],
    *,
    prompt_tokens: int,
    queue_weight: float,
    in_flight_tokens: float,
    share_tokens: float,
    min_in_flight: int,
    min_recent: int,
) -> list[float]:
    """The cost of each of ``candidates`` in prompt tokens (see ``pick_lowest_cost``; a
    pinned candidate has no share term)."""
    costs: list[float] = []
    add = costs.append
    for c in candidates:
        uncached = prompt_tokens - c.cached_tokens
        if uncached < 0:
            uncached = 0
        pinned = c.pinned_tokens
        share = 0 if pinned else share_tokens * (c.recent_dispatches - min_recent)
        add(
            uncached
            + queue_weight * c.queued_tokens
            + in_flight_tokens * (c.in_flight - min_in_flight)
            + share
            - pinned
        )
    return costs
