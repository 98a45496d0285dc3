"""A router's estimate of each replica's prefill backlog when it sees no first token.

A gateway that hears of a request only when it ends (LiteLLM's callbacks) cannot drop a
request's uncached prompt tokens from its replica's backlog when the prefill is done, as
the replay's default router does at the first token. :class:`DrainedBacklog` is the rule
such a router uses instead, and :class:`PrefillRateEstimator` learns the rate it drains at
from first-token times revealed when requests end; both in one place for the LiteLLM
plugin's ledger and the replay's ``CacheCostPolicy(prefill_rate=...)`` that models it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_finite, check_rate

__all__ = [
    "DEFAULT_RATE_MIN_OBSERVATIONS",
    "DEFAULT_RATE_WINDOW",
    "DrainedBacklog",
    "PrefillRateEstimator",
]

DEFAULT_RATE_WINDOW: Final = 512
"""Observations a :class:`PrefillRateEstimator` keeps (the most recent)."""

DEFAULT_RATE_MIN_OBSERVATIONS: Final = 16
"""Observations a :class:`PrefillRateEstimator` needs before its first estimate; it
estimates again after every as many more."""

K = TypeVar("K", bound=Hashable)


class DrainedBacklog(Generic[K]):
    """Per replica, the uncached prompt tokens still to prefill, drained at a rate.

    The rule, per key: ``held`` is the uncached tokens of the requests not yet ended there;
    the backlog is a level that gains each request's tokens when it is added, falls at
    ``rate`` tokens per second, never below 0 and never above ``held``: when a request
    ends, its tokens leave ``held`` and the level is cut to it at that moment, then keeps
    falling (adds raise the level and ``held`` alike, so the level is never above ``held``
    between two events either). With ``rate=None`` the backlog is ``held``: tokens stay
    until their request ends. A key with nothing held has no backlog and no state (memory
    follows the requests not yet ended); a request of 0 tokens changes nothing.

    Bookkeeping errors are typed (:class:`clusterrouting.InvalidRecordError`): a negative
    ``tokens``, a removal of more tokens than ``key`` holds (a request removed twice, or
    never added), a ``rate`` that is not a finite number > 0 or ``None``.

    Time only moves forward for the drain: a ``now`` earlier than the key's last add or
    removal drains nothing (a wall clock stepping back pauses the drain). Reads change
    nothing.

    With ``learn=True`` (and a rate to start from), :meth:`learn` teaches the rate: a
    :class:`PrefillRateEstimator` over the requests' first-token times, each of its
    estimates applied with :meth:`set_rate` (the LiteLLM plugin's ledger and the replay's
    model of it learn through this one method).

    Not thread-safe: its owner serialises calls.

    >>> b = DrainedBacklog[str](rate=100.0)
    >>> b.add("a", 800, now=0.0)
    >>> b.read("a", now=2.0)          # 800 - 100 x 2
    600
    >>> b.add("a", 50, now=2.0)
    >>> b.remove("a", 800, now=3.0)   # 650 drained by then, cut to the 50 still held
    >>> b.read("a", now=3.0), b.read("a", now=3.2)
    (50, 30)
    >>> b.remove("a", 50, now=4.0)
    >>> b.read("a", now=4.0), len(b)
    (0, 0)
    """

    __slots__ = ("_at", "_held", "_learner", "_level", "rate")

    def __init__(self, rate: float | None, *, learn: bool = False) -> None:
        self.rate = check_rate("rate", rate)
        self._learner: PrefillRateEstimator[K] | None = (
            PrefillRateEstimator() if learn and self.rate is not None else None
        )
        self._held: dict[K, int] = {}
        self._level: dict[K, float] = {}  # the level as of _at (rate set)
        self._at: dict[K, float] = {}

    def __len__(self) -> int:
        """Keys with tokens held."""
        return len(self._held)

    def set_rate(self, rate: float, now: float) -> None:
        """Drain at ``rate`` from ``now`` on: every level is first drained to ``now`` at the
        old rate (a level stays where it was at that moment). Raises
        :class:`clusterrouting.InvalidRecordError` for a ``rate`` that is not a finite number
        > 0, or when the backlog has no rate (``None`` holds tokens until their request
        ends; it has no level to carry over)."""
        new = check_rate("rate", rate)
        if new is None or self.rate is None:
            raise InvalidRecordError(
                "rate", rate, "must be a finite number > 0 on a drained backlog"
            )
        for key, held in self._held.items():
            self._settle(key, held, now, 0)
        self.rate = new

    def learn(
        self, key: K, *, sent: float, first_token: float | None, tokens: int, now: float
    ) -> bool:
        """Teach the rate one request's prefill on ``key``, learned at ``now`` (see
        :meth:`PrefillRateEstimator.observe` for the arguments and their errors); ``True``
        when counted (always ``False`` without ``learn``)."""
        learner = self._learner
        if learner is None or not learner.observe(
            key, sent=sent, first_token=first_token, tokens=tokens
        ):
            return False
        rate = learner.rate()
        if rate is not None and rate != self.rate:
            self.set_rate(rate, now)
        return True

    def held(self, key: K) -> int:
        """The uncached tokens of ``key``'s requests not yet ended."""
        return self._held.get(key, 0)

    def read(self, key: K, now: float) -> int:
        """``key``'s backlog at ``now`` in tokens (rounded to the nearest)."""
        held = self._held.get(key, 0)
        if self.rate is None or not held:
            return held
        level = self._drained(key, now)
        return round(level) if level < held else held

    def add(self, key: K, tokens: int, now: float) -> None:
        """A request with ``tokens`` uncached prompt tokens was sent to ``key`` at ``now``."""
        if tokens <= 0:
            if tokens < 0:
                raise InvalidRecordError("tokens", tokens, "must be >= 0")
            return
        held = self._held.get(key, 0)
        self._held[key] = held + tokens
        if self.rate is not None:
            self._settle(key, held, now, tokens)

    def remove(self, key: K, tokens: int, now: float) -> None:
        """A request with ``tokens`` (as added) ended on ``key`` at ``now``: its tokens leave
        what is held, and the level is cut to what remains."""
        if tokens <= 0:
            if tokens < 0:
                raise InvalidRecordError("tokens", tokens, "must be >= 0")
            return
        held = self._held.get(key, 0) - tokens
        if held < 0:
            raise InvalidRecordError(
                "tokens", tokens, f"must be at most the {held + tokens} held on {key!r}"
            )
        if not held:  # nothing left to prefill: forget the key
            del self._held[key]
            self._level.pop(key, None)
            self._at.pop(key, None)
            return
        self._held[key] = held
        if self.rate is not None:
            self._settle(key, held, now, 0)

    def _settle(self, key: K, cap: int, now: float, tokens: int) -> None:
        """Drain ``key``'s level to ``now``, cut it to ``cap``, add ``tokens``."""
        level = self._drained(key, now)
        self._level[key] = (level if level < cap else cap) + tokens
        at = self._at.get(key)
        self._at[key] = now if at is None or now > at else at

    def _drained(self, key: K, now: float) -> float:
        """The level at ``now`` before the cap (0 for a key never added)."""
        at = self._at.get(key)
        rate = self.rate
        if at is None or rate is None:
            return 0.0
        level = self._level[key]
        if now > at:
            level -= rate * (now - at)
        return level if level > 0 else 0.0


class PrefillRateEstimator(Generic[K]):
    """Learns the rate replicas prefill at from requests' first-token times, told in any
    order (LiteLLM reveals a streamed request's first-token time only when it ends).

    Each observation is one request: its replica ``key``, when it was ``sent``, when its
    ``first_token`` came back (``None`` when the router never learns it, as for a response
    that was not streamed), and the uncached prompt ``tokens`` it had to prefill. The
    estimate is the tokens prefilled over the time the replicas were busy with them, over
    the last ``window`` observations:

    * busy time: per replica, the length of the union of the timed requests' ``[sent,
      first_token]`` intervals, summed over replicas. A request that waited behind another
      adds only the time after the other's first token, so queueing does not pass for a slow
      prefill (dividing each request's tokens by its own time to first token would, and a
      router that underestimates the rate queues more, which lowers the estimate further);
    * tokens: those of the timed requests, and of the untimed ones sent to that replica
      while it was busy (inside that union). The untimed requests' prefills take up part of
      the busy time; leaving their tokens out would read a mix of streamed and other
      responses as a slow replica (at 80 % load with a fifth of the requests timed, a
      first-come-first-served replica would be learned at about 40 % of its rate; counted,
      within 15 % of it, a little over or under as the untimed ones fall at the start or end
      of a busy period).

    Time spent on decode steps between prefill chunks, and network time, count as busy: the
    estimate is the rate a backlog actually drains at, not the engine's peak. A request that
    stalled (a first token after minutes) is busy time too, and lowers the estimate until
    ``window`` more observations have pushed it out.

    It estimates once ``min_observations`` are in and again after every as many more
    (an estimate costs a sort of the window); :meth:`rate` is ``None`` until an estimate
    found busy time (some timed request). An observation with a ``first_token`` not after
    ``sent`` (clocks out of step, an earlier attempt's) or no tokens to prefill is not
    kept (:meth:`observe` returns ``False``); a time that is not a finite number, an
    interval too long for a float, or ``tokens`` that is not an int in [0, 2^53] raise
    :class:`clusterrouting.InvalidRecordError` naming the argument.

    Memory: ``window`` observations. Not thread-safe: its owner serialises calls.

    >>> r = PrefillRateEstimator[str](min_observations=3)
    >>> r.observe("a", sent=0.0, first_token=1.0, tokens=1000)
    True
    >>> r.observe("a", sent=0.0, first_token=2.0, tokens=1000)  # queued behind the first
    True
    >>> r.observe("a", sent=1.5, first_token=None, tokens=500)  # untimed, sent while busy
    True
    >>> r.rate()                                                # 2,500 tokens in 2 s busy
    1250.0
    """

    __slots__ = ("_due", "_obs", "_rate", "min_observations")

    def __init__(
        self,
        *,
        window: int = DEFAULT_RATE_WINDOW,
        min_observations: int = DEFAULT_RATE_MIN_OBSERVATIONS,
    ) -> None:
        if type(window) is not int or window < 1:
            raise InvalidRecordError("window", window, "must be an int >= 1")
        if type(min_observations) is not int or not 1 <= min_observations <= window:
            raise InvalidRecordError(
                "min_observations", min_observations, f"must be an int in [1, {window}]"
            )
        self.min_observations = min_observations
        self._obs: deque[tuple[K, float, float | None, int]] = deque(maxlen=window)
        self._due = min_observations  # observations until the next estimate
        self._rate: float | None = None

    def __len__(self) -> int:
        """Observations kept (at most ``window``)."""
        return len(self._obs)

    def rate(self) -> float | None:
        """The latest estimate in tokens per second, or ``None`` before the first."""
        return self._rate

    def observe(self, key: K, *, sent: float, first_token: float | None, tokens: int) -> bool:
        """Count one request's prefill; ``True`` when kept (see the class)."""
        sent = check_finite("sent", sent)
        if first_token is not None:
            first_token = check_finite("first_token", first_token)
            if not math.isfinite(first_token - sent):
                raise InvalidRecordError(
                    "first_token", first_token, f"is too far from sent={sent!r}"
                )
        if type(tokens) is not int or not 0 <= tokens <= _MAX_TOKENS:
            raise InvalidRecordError("tokens", tokens, "must be an int in [0, 2^53]")
        if not tokens or (first_token is not None and first_token <= sent):
            return False
        self._obs.append((key, sent, first_token, tokens))
        self._due -= 1
        if self._due <= 0:
            self._due = self.min_observations
            estimate = self._estimate()
            if estimate is not None:
                self._rate = estimate
        return True

    def _estimate(self) -> float | None:
        """Tokens over busy time (see the class), or ``None`` with no busy time."""
        spans: dict[K, list[tuple[float, float]]] = {}
        untimed: dict[K, list[tuple[float, int]]] = {}
        tokens = 0
        for key, sent, first, n in self._obs:
            if first is None:
                untimed.setdefault(key, []).append((sent, n))
            else:
                spans.setdefault(key, []).append((sent, first))
                tokens += n
        busy = 0.0
        for key, intervals in spans.items():
            merged = _merged(intervals)
            busy += sum(stop - start for start, stop in merged)
            ends = [stop for _start, stop in merged]
            for sent, n in untimed.get(key, ()):
                k = bisect.bisect_left(ends, sent)  # the first busy period not over by then
                if k < len(merged) and merged[k][0] <= sent:
                    tokens += n
        rate = tokens / busy if busy > 0 else math.inf
        return rate if 0 < rate < math.inf else None


_MAX_TOKENS: Final = 2**53


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of ``intervals`` as disjoint intervals in ascending order."""
    intervals.sort()
    out: list[tuple[float, float]] = []
    for start, stop in intervals:
        if out and start <= out[-1][1]:
            if stop > out[-1][1]:
                out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return out
