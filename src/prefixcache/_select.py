"""Routing decisions over an index snapshot: :func:`select`, :class:`Pressure` and the
federation path (:func:`affinity_preferred`, :func:`select_peer`).

:func:`select`, :func:`affinity_preferred` and :func:`select_peer` are functions of their
arguments (the provider is only asked for a decision); "overloaded" is defined once, by
:func:`clusterrouting.within_load_guard`.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping, Sequence

import attrs

from clusterrouting import (
    InvalidRecordError,
    NodeData,
    ReplicaCandidate,
    build_candidates,
    load_limit,
    pick_with_affinity,
)
from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._decision import PrefixDecision
from prefixcache._keys import NUMBER_TYPES
from prefixcache._protocols import DecisionProvider
from prefixcache._types import Candidate, ReplicaKey

__all__ = ["DecisionProvider", "Pressure", "affinity_preferred", "select", "select_peer"]


def select(
    candidates: Sequence[Candidate],
    decision: PrefixDecision,
    config: Config = DEFAULT_CONFIG,
) -> ReplicaKey | None:
    """Pick the replica for a request from the index's decision and the replicas' load.

    ``min_if`` is the least ``in_flight`` over **all** candidates. A candidate is *eligible*
    iff :func:`clusterrouting.within_load_guard` holds with
    ``slack=config.balance_abs_threshold`` and ``factor=config.balance_rel_threshold``, i.e.
    ``in_flight <= min_if + balance_abs_threshold`` **and**
    ``in_flight <= min_if * balance_rel_threshold + 1`` (both boundaries are eligible).

    Tiers, first applicable wins:

    1. ``decision.hot`` when ``decision.has_hot``,
       ``decision.match_ratio >= config.min_prefix_match`` (equality wins) and the hot key is
       an eligible candidate;
    2. the first eligible key in ``decision.cold_order`` (keys that are not candidates are
       skipped);
    3. the eligible candidate with the least ``in_flight``, ties by node id then replica
       (the least loaded candidate is always eligible, so this never fails on a non-empty
       input);
    4. ``None`` for no candidates.

    Keys should be distinct; if a key appears in several candidates, every entry counts
    towards ``min_if`` and the key is eligible when any of its entries is.

    Args:
        candidates: the replicas that may serve the request, with their in-flight counts.
        decision: the index's :class:`PrefixDecision` for this request over these keys.
        config: supplies ``min_prefix_match``, ``balance_abs_threshold`` and
            ``balance_rel_threshold``.

    Returns:
        The chosen :class:`ReplicaKey`, or ``None`` when ``candidates`` is empty.

    Complexity: O(len(candidates) + len(cold_order)). For a decision ``Index`` made over
    these candidates (the same records, or records with the same key objects in the same
    order), a few C-level passes over their loads and weights, and no cold order is sorted
    unless near-equal weights need it (:meth:`prefixcache.DecisionBasis.first_cold`). Pure:
    reads only its arguments.

    >>> a, b = ReplicaKey("a"), ReplicaKey("b")
    >>> hot_a = PrefixDecision(a, 1.0, (b, a))
    >>> select([Candidate(a, 1), Candidate(b, 0)], hot_a)
    ReplicaKey(node_id='a', replica=0)
    >>> select([Candidate(a, 2), Candidate(b, 0)], hot_a)  # 2 > 0 * 1.5 + 1: a is overloaded
    ReplicaKey(node_id='b', replica=0)
    >>> select([], hot_a) is None
    True
    """
    if not candidates:
        return None
    over = candidates if type(candidates) is tuple else tuple(candidates)
    basis = decision.basis
    memo = basis.memo if basis is not None else None
    if basis is None or memo is None or not memo.distinct:
        return _select_any(over, decision, config)
    hot = decision.hot
    wants_hot = hot is not None and decision.match_ratio >= config.min_prefix_match
    if memo.describes(over):
        flights = memo.flights
        if memo.equal_loads:
            # Equal loads make every candidate eligible (Config keeps the slack >= 0 and the
            # factor >= 1): tiers 1 and 2 need no load test.
            return hot if wants_hot else basis.first_cold()
    elif memo.has_keys_of(over):
        # The decision's candidates, position by position, with their loads of now.
        flights = [c.in_flight for c in over]
    else:
        return _select_any(over, decision, config)
    limit = _limit(config, min(flights))
    at = memo.position(hot) if hot is not None and wants_hot else None
    if at is not None and flights[at] <= limit:
        return hot
    return basis.first_cold(flights, limit)


def _least_loaded_item(item: tuple[ReplicaKey, int]) -> tuple[int, str, int]:
    key, in_flight = item
    return (in_flight, key.node_id, key.replica)


def _limit(config: Config, min_in_flight: int) -> float:
    """The most in-flight requests an eligible candidate may have (the load guard)."""
    return load_limit(
        min_in_flight, slack=config.balance_abs_threshold, factor=config.balance_rel_threshold
    )


def _select_any(
    over: tuple[Candidate, ...], decision: PrefixDecision, config: Config
) -> ReplicaKey | None:
    """:func:`select` for any decision (built by hand, or over other candidates)."""
    limit = _limit(config, min([c.in_flight for c in over]))
    # Eligible keys with their least eligible in-flight count: a key listed several times
    # is eligible when any of its entries is.
    eligible: dict[ReplicaKey, int] = {}
    for c in over:
        f = c.in_flight
        if f <= limit:
            prev = eligible.get(c.key)
            if prev is None or f < prev:
                eligible[c.key] = f
    hot = decision.hot
    if hot is not None and decision.match_ratio >= config.min_prefix_match and hot in eligible:
        return hot
    for key in decision.cold_order:
        if key in eligible:
            return key
    return min(eligible.items(), key=_least_loaded_item)[0]


class Pressure:
    """Counts "forced disturbs" per model over a sliding time window.

    A forced disturb is a request whose hot replica matched at or above
    ``min_prefix_match`` but that :func:`select` sent elsewhere (the hot replica was
    overloaded). The router records one per such request; ``count(model, now) >=
    config.pressure_scale_threshold`` is the host's signal to scale the model up.

    Semantics (``window`` in seconds, the clock domain of the ``now`` values the host
    passes, which should not go backwards):

    - ``record(model, now)`` adds an event at ``now``;
    - ``count(model, now)`` is the number of events ``t`` with ``now - t <= window`` (an
      event exactly ``window`` old still counts; events stamped after ``now`` count);
    - ``reset(model)`` forgets the model's events.

    Storage stays bounded without calls to :meth:`count`: each ``record`` drops that model's
    events older than the window (``now - t > window``), and every few records (amortised
    O(1)) models whose every event has aged out are dropped entirely. So memory is
    O(events within one window + models recorded within one window).

    Thread-safe: one lock guards every method.

    Raises:
        InvalidRecordError: ``window`` is not a finite number > 0.

    >>> p = Pressure(60.0)
    >>> p.record("m", now=0.0); p.record("m", now=30.0)
    >>> p.count("m", now=60.0), p.count("m", now=61.0), p.count("other", now=0.0)
    (2, 1, 0)
    """

    __slots__ = ("_events", "_lock", "_records_since_sweep", "_window")

    def __init__(self, window: float) -> None:
        if (
            isinstance(window, bool)
            or not isinstance(window, NUMBER_TYPES)
            or not math.isfinite(window)
            or window <= 0
        ):
            raise InvalidRecordError("window", window, "must be a finite number > 0 (seconds)")
        self._window = float(window)
        self._events: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._records_since_sweep = 0

    @property
    def window(self) -> float:
        """The counting window in seconds."""
        return self._window

    def _first_live(self, events: list[float], now: float) -> int:
        # ``now - t`` is non-increasing in ``t`` (IEEE subtraction rounds monotonically), so
        # the predicate ``now - t > window`` is a prefix of the sorted list: bisect on it
        # exactly, never on a rearranged ``t >= now - window``, which rounds differently.
        window = self._window
        return bisect.bisect_left(events, True, key=lambda t: not (now - t > window))

    def record(self, model: str, now: float) -> None:
        """Record one forced disturb of ``model`` at ``now`` (seconds).

        Raises:
            InvalidRecordError: ``now`` is NaN (it would corrupt the time order).

        Complexity: amortised O(log n + pruned) for n events of the model in the window.
        """
        if now != now:
            raise InvalidRecordError("now", now, "must not be NaN")
        with self._lock:
            events = self._events.get(model)
            if events is None:
                events = self._events[model] = []
            if not events or events[-1] <= now:
                events.append(now)
            else:
                bisect.insort(events, now)  # a host clock stepped back: keep sorted
            stale = self._first_live(events, now)
            if stale:
                del events[:stale]
            self._records_since_sweep += 1
            if self._records_since_sweep > len(self._events):
                self._records_since_sweep = 0
                self._sweep(now)

    def _sweep(self, now: float) -> None:
        window = self._window
        dead = [m for m, ev in self._events.items() if now - ev[-1] > window]
        for m in dead:
            del self._events[m]

    def count(self, model: str, now: float) -> int:
        """Events of ``model`` with ``now - t <= window`` (the boundary counts).

        Exact for any ``now`` at or after the latest recorded time; read-only.

        Complexity: O(log n).
        """
        with self._lock:
            events = self._events.get(model)
            if not events:
                return 0
            return len(events) - self._first_live(events, now)

    def reset(self, model: str) -> None:
        """Forget every event of ``model`` (no-op for an unknown model)."""
        with self._lock:
            self._events.pop(model, None)

    def __len__(self) -> int:
        """Events currently stored over all models (aged-out ones not yet pruned included):
        for memory checks, not a count of anything in particular."""
        with self._lock:
            return sum(len(ev) for ev in self._events.values())

    def models(self) -> frozenset[str]:
        """Models currently holding events (possibly aged out but not yet pruned)."""
        with self._lock:
            return frozenset(self._events)


def affinity_preferred(
    provider: DecisionProvider | None,
    model: str,
    chain: Sequence[int],
    candidates: Sequence[ReplicaCandidate],
    config: Config,
    now: float,
) -> str | None:
    """The peer (node id) that holds the request's prefix, for federation-style routing.

    Asks ``provider.decide`` over ``ReplicaKey(node_id, 0)`` for each distinct node id of
    ``candidates``, in first-seen order (peers are addressed per node, so replica 0 stands
    for the node) and returns the hot node id when ``decision.has_hot`` and
    ``decision.match_ratio >= config.min_prefix_match``; else ``None``. ``None`` also, without
    asking the provider, for an empty ``chain``, no candidates or no provider (``None``).

    Args:
        provider: the index (anything with ``decide``).
        model: the requested model.
        chain: the request's prefix chain.
        candidates: the peers that may serve it (:func:`clusterrouting.build_candidates`).
        config: supplies ``min_prefix_match``.
        now: seconds, the clock domain of the provider's ``observe`` calls.

    Returns:
        The preferred node id, or ``None``.

    Complexity: one ``decide`` call, O(len(chain) + len(candidates)) for ``Index``.
    """
    if provider is None or not chain or not candidates:
        return None
    keys = [ReplicaKey(node_id, 0) for node_id in dict.fromkeys(c.node_id for c in candidates)]
    decision = provider.decide(model, chain, keys, now)
    if decision.hot is not None and decision.match_ratio >= config.min_prefix_match:
        return decision.hot.node_id
    return None


def select_peer(
    provider: DecisionProvider,
    nodes: Iterable[NodeData],
    in_flight: Mapping[str, int],
    *,
    model: str,
    chain: Sequence[int],
    now: float,
    config: Config = DEFAULT_CONFIG,
    last_used: Mapping[str, float] | None = None,
) -> ReplicaCandidate | None:
    """Choose the peer to forward a request to: online, serving the model, cache-affine.

    Steps:

    1. ``candidates = clusterrouting.build_candidates(nodes, in_flight, now=now, model=model)``
       (online at ``now``, serving ``model``, sorted by node id), each given
       ``last_used[node_id]`` when ``last_used`` is passed (gossip does not carry it; without
       it equally loaded peers do not take turns);
    2. ``preferred = affinity_preferred(provider, model, chain, candidates, config, now)``;
    3. ``clusterrouting.pick_with_affinity(candidates, preferred,
       slack=config.balance_abs_threshold)``.

    The host then forwards to the returned candidate's ``address`` and, **only after a
    successful serve**, observes the chain for it
    (``provider.observe(model, chain, ReplicaKey(peer.node_id, 0), now)``). ``in_flight``
    must be a real in-flight count (reserve at pick, release at completion), not a count of
    completed requests.

    Args:
        provider: the index (anything with ``decide``).
        nodes: the peers' gossip records.
        in_flight: node id -> requests in flight on that peer (missing = 0).
        model: the requested model (``""`` means any).
        chain: the request's prefix chain (``extract_chain(model, prompt, config)``).
        now: seconds, wall clock (the domain of ``NodeData.last_seen``), also passed to
            ``decide``.
        config: supplies ``min_prefix_match`` and ``balance_abs_threshold``.
        last_used: node id -> when the host last picked that peer (same clock as ``now``);
            missing ids count as never used.

    Returns:
        The chosen peer, or ``None`` when no peer is online and serves the model.

    Complexity: O(nodes log nodes) plus one ``decide``.
    """
    candidates = build_candidates(nodes, in_flight, now=now, model=model)
    if last_used:
        candidates = [
            attrs.evolve(c, last_used=last_used[c.node_id]) if c.node_id in last_used else c
            for c in candidates
        ]
    preferred = affinity_preferred(provider, model, chain, candidates, config, now)
    return pick_with_affinity(candidates, preferred, slack=config.balance_abs_threshold)
