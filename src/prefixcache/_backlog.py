"""A router's estimate of each replica's prefill backlog when it sees no first token.

A gateway that hears of a request only when it ends (LiteLLM's callbacks) cannot drop a
request's uncached prompt tokens from its replica's backlog when the prefill is done, as
the replay's default router does at the first token. :class:`DrainedBacklog` is the rule
such a router uses instead, in one place for the LiteLLM plugin's ledger and the replay's
``CacheCostPolicy(prefill_rate=...)`` that models it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_rate

__all__ = ["DrainedBacklog"]

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

    __slots__ = ("_at", "_held", "_level", "rate")

    def __init__(self, rate: float | None) -> None:
        self.rate = check_rate("rate", rate)
        self._held: dict[K, int] = {}
        self._level: dict[K, float] = {}  # the level as of _at (rate set)
        self._at: dict[K, float] = {}

    def __len__(self) -> int:
        """Keys with tokens held."""
        return len(self._held)

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
