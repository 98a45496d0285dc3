"""Cost-based replica choice: cached prefix work saved weighed against queued prefill work.

Pieces a gateway combines (the replay's ``cache-cost`` policy is exactly this):

* :class:`KvCacheMirror`, the router's approximation of each replica's KV cache: an LRU of
  prefix-chained block hashes per :class:`ReplicaKey`, bounded by the replica's KV capacity
  in blocks less what its running requests hold (routers that receive the engines' KV
  events know this exactly; this mirrors it from what the router itself dispatched);
* :class:`DispatchWindow`, how many of the router's last N dispatches went to each replica
  (its recent share of the traffic);
* :func:`pick_lowest_cost`, a pure decision over :class:`CostCandidate` snapshots.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

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
    "CacheSource",
    "CostCandidate",
    "CostExplanation",
    "CostTerms",
    "DispatchWindow",
    "KvCacheMirror",
    "explain_lowest_cost",
    "pick_lowest_cost",
]

DEFAULT_QUEUE_WEIGHT = 0.1
"""A queued prefill token costs 0.1 uncached prompt token (see ``pick_lowest_cost``)."""

DEFAULT_IN_FLIGHT_TOKENS = 64
"""Each request in flight above the least-loaded replica costs 64 prompt tokens."""

DEFAULT_COST_MARGIN = 512
"""Costs within 512 prompt tokens (one 512-token block) of the least are ties, which go to
the lower ``tie_rank`` (see ``pick_lowest_cost``)."""

DEFAULT_SHARE_FACTOR = 1.1
"""Fair-share guard: a replica may take a request while its recent dispatches are at most
1.1 x the mean (+ ``DEFAULT_SHARE_SLACK``)."""

DEFAULT_SHARE_SLACK = 2
"""Absolute slack of the fair-share guard, in dispatches (absorbs small-number noise)."""

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
            (:meth:`DispatchWindow.count`); 0 everywhere disables the fair-share guard.
        cached_source: where ``cached_tokens`` came from (:class:`CacheSource`; default
            ``mirror``). Informational: the cost does not depend on it.
        pinned_tokens: prompt tokens credited to the replica because the request's session
            is pinned to it (e.g. ``DEFAULT_PIN_TOKENS``); 0 (the default) for no pin. A
            pinned replica is exempt from the fair-share guard: a session's turns are not
            the traffic's share. The host sets it only while the replica is within its load
            guard, so an overloaded session still moves.
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
    share_factor: float | None = DEFAULT_SHARE_FACTOR,
    share_slack: int = DEFAULT_SHARE_SLACK,
    cost_margin: float = DEFAULT_COST_MARGIN,
) -> ReplicaKey | None:
    """Pick the replica where the request costs the cluster least, within its fair share.

    Filter (the fair-share guard): a candidate is eligible iff ``recent_dispatches <=
    mean_recent * share_factor + share_slack``, ``mean_recent`` being the mean over all
    candidates (``share_factor=None`` disables it). The candidate with the fewest recent
    dispatches is always eligible, so the filter never empties the set. A candidate with
    ``pinned_tokens > 0`` is always eligible too.

    The cost of an eligible candidate, in prompt tokens::

        max(0, prompt_tokens - cached_tokens)                  # prefill work it adds
        + queue_weight * queued_tokens                         # backlog, discounted
        + in_flight_tokens * (in_flight - min_in_flight)       # load above the least
        - pinned_tokens                                        # the session's pin

    with ``min_in_flight`` the least ``in_flight`` over all candidates.

    Tiers, applied with one ``min`` key over the eligible candidates whose cost is at most
    the least cost + ``cost_margin`` (the *ties*; first non-tie wins):

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
    ``queue_weight=0, in_flight_tokens=0`` is pure affinity (hot replicas melt down).

    Why a margin. When the savings are alike everywhere (every replica holds a shared
    system prompt, or none holds a new session's), the costs differ only by backlog and
    in-flight noise, and following that noise sends bursts of requests to one replica.
    Costs within ``cost_margin`` of the least are ties, and ties go by the host's
    ``tie_rank``: with the least recently used replica ranked first, such requests rotate
    over the replicas exactly as round-robin does, which is what identical requests on even
    arrivals want, while a replica saving more than the margin (a cached conversation, a
    prefix only some replicas hold) still wins on cost. ``cost_margin=0`` breaks ties only
    between exactly equal costs.

    Why a guard on shares as well. Cache savings are unbounded (a shared 30k-token system
    prompt saves 30k tokens on every replica holding it), so no fixed load weight keeps
    request counts even on every trace. The guard caps each replica's share of the
    router's recent dispatches at 10 % above the mean: a replica over it is skipped, the
    request lands on the next-cheapest replica, which then holds the prefix too, and the
    savings even out. It counts dispatches, not in-flight requests: in-flight counts jump
    with every long decode, and a guard on them (as ``select``'s) moves sessions away from
    their cache on noise. (It is mean-based, unlike ``clusterrouting.within_load_guard``'s
    min-based in-flight guard: a share is a fraction of the traffic, whose fair value is
    the mean.)

    Args:
        candidates: the replicas that may serve the request.
        prompt_tokens: the request's prompt length in tokens (>= 0).
        queue_weight: cost per queued token (finite, >= 0).
        in_flight_tokens: cost per in-flight request above the least loaded (finite, >= 0).
        share_factor: the fair-share factor (finite, >= 1), or ``None`` for no guard.
        share_slack: the fair-share guard's absolute slack in dispatches (int >= 0).
        cost_margin: costs within this many prompt tokens of the least tie (finite, >= 0).

    Returns:
        The chosen key, or ``None`` for an empty ``candidates``.

    Raises:
        InvalidRecordError: ``prompt_tokens`` < 0 or not an int; a bad weight or margin.

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
    """
    _check_args(
        prompt_tokens, queue_weight, in_flight_tokens, share_factor, share_slack, cost_margin
    )
    if not candidates:
        return None
    min_if = min(c.in_flight for c in candidates)
    eligible = _eligible(candidates, share_factor, share_slack)
    costs = [_cost(c, prompt_tokens, queue_weight, in_flight_tokens, min_if) for c in eligible]
    limit = min(costs) + cost_margin
    return min(
        (
            (c.tie_rank, cost, c.queued_tokens, c.in_flight, c.key)
            for c, cost in zip(eligible, costs, strict=True)
            if cost <= limit
        )
    )[-1]


def _check_args(
    prompt_tokens: int,
    queue_weight: float,
    in_flight_tokens: float,
    share_factor: float | None,
    share_slack: int,
    cost_margin: float,
) -> None:
    if type(prompt_tokens) is not int or prompt_tokens < 0:
        raise InvalidRecordError("prompt_tokens", prompt_tokens, "must be an int >= 0")
    params = (queue_weight, in_flight_tokens, share_factor, share_slack, cost_margin)
    try:
        _check_params_once(*params)
    except InvalidRecordError:
        raise
    except TypeError:  # an unhashable parameter: the uncached check names it
        _check_params(*params)


def _check_params(
    queue_weight: float,
    in_flight_tokens: float,
    share_factor: float | None,
    share_slack: int,
    cost_margin: float,
) -> None:
    for name, w in (
        ("queue_weight", queue_weight),
        ("in_flight_tokens", in_flight_tokens),
        ("cost_margin", cost_margin),
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


def _share_limit(
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
    limit = _share_limit(candidates, share_factor, share_slack)
    if limit is None:
        return candidates
    return [c for c in candidates if c.recent_dispatches <= limit or c.pinned_tokens]


def _cost(
    c: CostCandidate,
    prompt_tokens: int,
    queue_weight: float,
    in_flight_tokens: float,
    min_in_flight: int,
) -> float:
    """The cost of ``c`` in prompt tokens (see ``pick_lowest_cost``)."""
    uncached = prompt_tokens - c.cached_tokens
    if uncached < 0:
        uncached = 0
    return (
        uncached
        + queue_weight * c.queued_tokens
        + in_flight_tokens * (c.in_flight - min_in_flight)
        - c.pinned_tokens
    )


@attrs.frozen(kw_only=True, slots=True)
class CostTerms:
    """One candidate in an :class:`CostExplanation`.

    Attributes:
        key: the replica.
        signals: every :class:`CostCandidate` field but ``key``, as passed (JSON-ready:
            enums as their value).
        excluded_by: ``"fair_share"`` when the fair-share guard left it out, else ``None``.
        uncached_tokens: ``max(0, prompt_tokens - cached_tokens)``.
        queue_term: ``queue_weight * queued_tokens``.
        load_term: ``in_flight_tokens * (in_flight - min_in_flight)``.
        pin_term: ``-pinned_tokens``.
        cost: the sum of the four terms (tier 1 of :func:`pick_lowest_cost`).
    """

    key: ReplicaKey
    signals: dict[str, int | str]
    excluded_by: str | None
    uncached_tokens: int
    queue_term: float
    load_term: float
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
        rule: what separated the winner from the best other eligible candidate:
            ``"cost"`` when no other eligible candidate's cost is within the margin (the
            winner is the only tie), else the first tier of :func:`pick_lowest_cost` on
            which the two ties differ: ``"tie_rank"``, ``"cost"``, ``"queued_tokens"``,
            ``"in_flight"`` or ``"key"``; ``"only_eligible"`` when one candidate passed
            the guard, ``"empty"`` for none.
        candidates: a :class:`CostTerms` per candidate, in input order.
        min_in_flight: the least ``in_flight`` over all candidates (``None`` when empty).
        share_limit: the fair-share guard's limit in dispatches (``None``: guard off or no
            candidates).
        params: the arguments the decision used (prompt tokens, weights and margin).
        tie_limit: the least eligible cost plus ``cost_margin``: eligible candidates
            costing at most this tie (``None`` when empty).
    """

    chosen: ReplicaKey | None
    rule: str
    candidates: tuple[CostTerms, ...]
    min_in_flight: int | None
    share_limit: float | None
    params: dict[str, int | float | None]
    tie_limit: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (no prompt content: only counts and weights)."""
        return {
            "chosen": None
            if self.chosen is None
            else f"{self.chosen.node_id}/{self.chosen.replica}",
            "rule": self.rule,
            "min_in_flight": self.min_in_flight,
            "share_limit": self.share_limit,
            "tie_limit": self.tie_limit,
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
    share_factor: float | None = DEFAULT_SHARE_FACTOR,
    share_slack: int = DEFAULT_SHARE_SLACK,
    cost_margin: float = DEFAULT_COST_MARGIN,
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
        share_factor=share_factor,
        share_slack=share_slack,
        cost_margin=cost_margin,
    )
    params: dict[str, int | float | None] = {
        "prompt_tokens": prompt_tokens,
        "queue_weight": queue_weight,
        "in_flight_tokens": in_flight_tokens,
        "share_factor": share_factor,
        "share_slack": share_slack,
        "cost_margin": cost_margin,
    }
    if not candidates:
        return CostExplanation(
            chosen=None,
            rule="empty",
            candidates=(),
            min_in_flight=None,
            share_limit=None,
            params=params,
        )
    min_if = min(c.in_flight for c in candidates)
    limit = _share_limit(candidates, share_factor, share_slack)
    terms = []
    ranked = []
    for c in candidates:
        excluded = None
        if limit is not None and not (c.recent_dispatches <= limit or c.pinned_tokens):
            excluded = "fair_share"
        total = _cost(c, prompt_tokens, queue_weight, in_flight_tokens, min_if)
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
            pin_term=float(-c.pinned_tokens),
            cost=float(total),
        )
        terms.append(t)
        if excluded is None:
            ranked.append((c.tie_rank, float(total), c.queued_tokens, c.in_flight, c.key))
    tie_limit = min(r[1] for r in ranked) + cost_margin
    ties = sorted(r for r in ranked if r[1] <= tie_limit)
    if len(ranked) == 1:
        rule = "only_eligible"
    elif len(ties) == 1:
        rule = "cost"
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
        share_limit=limit,
        params=params,
        tie_limit=float(tie_limit),
    )


class DispatchWindow:
    """The router's last ``size`` dispatches: how many went to each replica.

    ``record(key)`` appends a dispatch (the oldest falls out once ``size`` are held);
    ``count(key)`` is the key's dispatches in the window. O(1) each; memory O(size).
    Size it to a few hundred dispatches per replica (the replay uses 256 x replicas): long
    enough that one session's turns are noise, short enough to follow a replica joining.

    Not thread-safe: guard it with the router's lock.

    Raises (constructor):
        InvalidRecordError: ``size`` is not an ``int >= 1``.

    >>> w = DispatchWindow(size=3)
    >>> for k in ("a", "a", "b", "a"):
    ...     w.record(ReplicaKey(k))
    >>> w.count(ReplicaKey("a")), w.count(ReplicaKey("b")), len(w)
    (2, 1, 3)
    """

    __slots__ = ("_counts", "_recent", "_size")

    def __init__(self, *, size: int) -> None:
        if type(size) is not int or size < 1:
            raise InvalidRecordError("size", size, "must be an int >= 1")
        self._size = size
        self._recent: deque[ReplicaKey] = deque()
        self._counts: dict[ReplicaKey, int] = {}

    @property
    def size(self) -> int:
        """The window length in dispatches."""
        return self._size

    def __len__(self) -> int:
        return len(self._recent)

    def record(self, key: ReplicaKey) -> None:
        """Count one dispatch to ``key``, dropping the oldest once the window is full."""
        self._recent.append(key)
        self._counts[key] = self._counts.get(key, 0) + 1
        if len(self._recent) > self._size:
            old = self._recent.popleft()
            n = self._counts[old] - 1
            if n:
                self._counts[old] = n
            else:
                del self._counts[old]

    def count(self, key: ReplicaKey) -> int:
        """Dispatches to ``key`` in the window (0 if none)."""
        return self._counts.get(key, 0)


_PIN_BOUND = 4
"""Pinned (and private) blocks a :class:`KvCacheMirror` replica keeps, in multiples of its
capacity: past it, ``finish`` calls were lost and the oldest pins are released."""


class KvCacheMirror:
    """Per-replica LRU of prefix-chained block hashes: what each replica's KV cache holds.

    ``observe(key, chain)`` records that ``key`` computed (or reused) every block of
    ``chain``; blocks are touched deepest first, so a prefix is always more recent than its
    extensions and eviction removes leaves before their ancestors (as paged-attention
    engines do). With ``capacity_blocks`` set, each replica keeps at most that many blocks,
    evicting least-recently-touched first; ``None`` is unbounded. No clock: recency is the
    order of calls.

    Running requests. An engine's KV capacity is shared by the cached prefixes and the
    requests it is running: their prompt blocks cannot be evicted while they run, their
    output needs blocks of its own, and their prompt blocks become evictable (most recent
    first) only when they finish. A router that knows when each request it sent ends
    mirrors this with :meth:`start` and :meth:`finish` instead of :meth:`observe`:
    ``start(key, chain, private_blocks)`` records ``chain`` as held and *pinned* (never
    evicted while pinned; pins count per request) and ``private_blocks`` more blocks in use
    beside the cache (its output); ``finish`` with the same arguments unpins the chain,
    touching it deepest first as :meth:`observe` does, and frees the private blocks. A
    replica then keeps at most ``capacity_blocks - pinned - private`` unpinned blocks
    (evicting least-recent first). Pinned and private blocks may exceed the capacity (a
    router's running requests include those still queued at the engine; 1.7 x at the peak
    of the replay's overloaded eviction case) but are each bounded by
    four times ``capacity_blocks``: a host that loses ``finish`` calls cannot grow the
    mirror, because past that bound the oldest pins (oldest first pinned) are dropped
    (pinned blocks then fill the capacity, so no unpinned block stays either) and private
    blocks are counted up to it.
    Without :meth:`start`, nothing is pinned and the mirror is the plain LRU.
    :meth:`invalidate` also forgets pins and private blocks; a later ``finish`` of a request
    started before it records nothing for a replica not started since, and otherwise
    releases the pins it names (pins count per block, not per request: a block a newer
    request also pinned loses one of its pins) and frees at most the private blocks still
    recorded.

    Not thread-safe: guard it with the router's lock.

    Raises (constructor):
        InvalidRecordError: ``capacity_blocks`` is not ``None`` or an ``int >= 0``.

    >>> m = KvCacheMirror(capacity_blocks=3)
    >>> m.observe(ReplicaKey("a"), (1, 2, 3))
    >>> m.matched_blocks(ReplicaKey("a"), (1, 2, 9))
    2
    >>> m.observe(ReplicaKey("a"), (1, 7))      # evicts 3, the least recent leaf
    >>> m.matched_blocks(ReplicaKey("a"), (1, 2, 3))
    2
    >>> r = KvCacheMirror(capacity_blocks=4)
    >>> r.observe(ReplicaKey("a"), (1, 2))
    >>> r.start(ReplicaKey("a"), (5, 6), private_blocks=1)  # 2 pinned + 1 output: room for 1
    >>> r.matched_blocks(ReplicaKey("a"), (1, 2)), r.blocks(ReplicaKey("a"))
    (1, 3)
    >>> r.finish(ReplicaKey("a"), (5, 6), private_blocks=1)
    >>> r.matched_blocks(ReplicaKey("a"), (5, 6)), r.blocks(ReplicaKey("a"))
    (2, 3)
    """

    __slots__ = ("_cap", "_lru", "_pins", "_private")

    def __init__(self, *, capacity_blocks: int | None = None) -> None:
        if capacity_blocks is not None and (
            type(capacity_blocks) is not int or capacity_blocks < 0
        ):
            raise InvalidRecordError(
                "capacity_blocks", capacity_blocks, "must be None or an int >= 0"
            )
        self._cap = capacity_blocks
        self._lru: dict[ReplicaKey, OrderedDict[int, None]] = {}
        self._pins: dict[ReplicaKey, dict[int, int]] = {}
        self._private: dict[ReplicaKey, int] = {}

    @property
    def capacity_blocks(self) -> int | None:
        """Blocks kept per replica (``None``: unbounded)."""
        return self._cap

    def matched_blocks(self, key: ReplicaKey, chain: Sequence[int]) -> int:
        """Leading blocks of ``chain`` that ``key`` holds, pinned or not (0 for an unknown
        key). O(match)."""
        lru = self._lru.get(key)
        if lru is None:
            return 0
        pins = self._pins.get(key)
        k = 0
        n = len(chain)
        if pins:
            while k < n and (chain[k] in lru or chain[k] in pins):
                k += 1
        else:
            while k < n and chain[k] in lru:
                k += 1
        return k

    def _replica(self, key: ReplicaKey) -> OrderedDict[int, None]:
        lru = self._lru.get(key)
        if lru is None:
            lru = self._lru[key] = OrderedDict()
        return lru

    def _fit(self, key: ReplicaKey, lru: OrderedDict[int, None]) -> None:
        """Evict least-recent unpinned blocks until ``key``'s blocks fit its capacity."""
        cap = self._cap
        if cap is None:
            return
        pins = self._pins.get(key)
        room = cap - (len(pins) if pins else 0) - self._private.get(key, 0)
        if room < 0:
            room = 0
        while len(lru) > room:
            lru.popitem(last=False)

    def observe(self, key: ReplicaKey, chain: Sequence[int]) -> None:
        """Record that ``key`` now holds every block of ``chain`` (a pinned block stays
        pinned). O(len(chain))."""
        if not chain:
            return
        lru = self._replica(key)
        pins = self._pins.get(key)
        for b in reversed(chain):
            if pins and b in pins:
                continue
            if b in lru:
                lru.move_to_end(b)
            else:
                lru[b] = None
        self._fit(key, lru)

    def start(self, key: ReplicaKey, chain: Sequence[int], *, private_blocks: int = 0) -> None:
        """A request with prompt ``chain`` started on ``key``: hold and pin its blocks, and
        count ``private_blocks`` (int >= 0) more blocks in use there. O(len(chain)).

        Raises:
            InvalidRecordError: ``private_blocks`` is not an ``int >= 0``.
        """
        if type(private_blocks) is not int or private_blocks < 0:
            raise InvalidRecordError("private_blocks", private_blocks, "must be an int >= 0")
        lru = self._replica(key)
        pins = self._pins.get(key)
        if pins is None:
            pins = self._pins[key] = {}
        for b in chain:
            c = pins.get(b)
            if c is None:
                lru.pop(b, None)
                pins[b] = 1
            else:
                pins[b] = c + 1
        bound = None if self._cap is None else _PIN_BOUND * self._cap
        held = self._private.get(key, 0) + private_blocks
        if bound is not None:
            held = min(held, bound)
        if held:
            self._private[key] = held
        if bound is not None and len(pins) > bound:
            # Far more pinned than the replica holds: finishes were lost. Release the oldest.
            for b in list(itertools.islice(pins, len(pins) - bound)):
                del pins[b]
                lru[b] = None
        self._fit(key, lru)

    def finish(self, key: ReplicaKey, chain: Sequence[int], *, private_blocks: int = 0) -> None:
        """The request :meth:`start` recorded with these arguments ended: unpin its blocks
        (a block whose last pin this was becomes the most recent, deepest first) and free its
        private blocks. O(len(chain)).

        Raises:
            InvalidRecordError: ``private_blocks`` is not an ``int >= 0``.
        """
        if type(private_blocks) is not int or private_blocks < 0:
            raise InvalidRecordError("private_blocks", private_blocks, "must be an int >= 0")
        left = self._private.get(key, 0) - private_blocks
        if left > 0:
            self._private[key] = left
        else:
            self._private.pop(key, None)
        lru = self._lru.get(key)
        if lru is None:  # invalidated since (or never started): nothing to unpin
            return
        pins = self._pins.get(key)
        if pins:
            for b in reversed(chain):
                c = pins.get(b)
                if c is None:
                    continue
                if c == 1:
                    del pins[b]
                    lru[b] = None
                else:
                    pins[b] = c - 1
        self._fit(key, lru)

    def invalidate(self, key: ReplicaKey) -> int:
        """Forget everything ``key`` holds (it restarted), pins and private blocks included;
        returns the blocks dropped."""
        lru = self._lru.pop(key, None)
        pins = self._pins.pop(key, None)
        self._private.pop(key, None)
        return (0 if lru is None else len(lru)) + (0 if pins is None else len(pins))

    def blocks(self, key: ReplicaKey) -> int:
        """Blocks currently recorded for ``key``, pinned or not."""
        lru = self._lru.get(key)
        pins = self._pins.get(key)
        return (0 if lru is None else len(lru)) + (0 if pins is None else len(pins))

    def _check(self) -> None:
        """Assert the invariants (for tests): pins and private blocks only for recorded
        replicas; a block is pinned or in the LRU, not both; pin counts positive; pinned
        and private blocks each within the bound; the unpinned blocks within the room."""
        cap = self._cap
        assert self._pins.keys() <= self._lru.keys()
        assert self._private.keys() <= self._lru.keys() | self._pins.keys()
        for key, lru in self._lru.items():
            pins = self._pins.get(key, {})
            private = self._private.get(key, 0)
            assert not pins.keys() & lru.keys()
            assert all(c >= 1 for c in pins.values())
            if cap is not None:
                assert len(pins) <= _PIN_BOUND * cap
                assert private <= _PIN_BOUND * cap
                assert len(lru) <= max(0, cap - len(pins) - private)
        assert all(p > 0 for p in self._private.values())
