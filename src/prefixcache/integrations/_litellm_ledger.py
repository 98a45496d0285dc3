"""The LiteLLM plugin's in-flight bookkeeping: reservations held per ``(request id,
deployment id)``, their deadlines, and per deployment the in-flight count, the backlog
of uncached prompt tokens still to prefill and the prompt blocks they hold."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import Final

from prefixcache._backlog import DrainedBacklog

__all__ = ["DEFAULT_PREFILL_TOKENS_PER_S", "Ledger", "Reservation"]

DEFAULT_PREFILL_TOKENS_PER_S: Final = 20_000.0
"""Prompt tokens a deployment prefills per second, for its backlog estimate: the replay's
default server (a 70B model on 8 H100s, docs/replay.md)."""


class Reservation:
    """One reserved attempt; ``done`` once released or expired."""

    __slots__ = ("chain", "deployment", "done", "expires", "group", "rid", "session", "uncached")

    def __init__(
        self,
        rid: str,
        deployment: str,
        group: str,
        chain: tuple[int, ...],
        session: str | None,
        uncached: int,
        expires: float,
    ) -> None:
        self.rid = rid
        self.deployment = deployment
        self.group = group
        self.chain = chain
        self.session = session
        self.uncached = uncached
        self.expires = expires
        self.done = False


class Ledger:
    """The reservations one plugin holds.

    ``in_flight`` maps a deployment id to its held reservations (a deployment with none is
    absent). ``backlog`` is each deployment's prefill backlog, a
    :class:`~prefixcache._backlog.DrainedBacklog` at ``prefill_rate`` (LiteLLM reports a
    request only when it ends, long after its prefill): a reservation adds its uncached
    prompt tokens, the level drains at the rate, and a released or expired reservation's
    tokens leave at once (``None``: the tokens stay until then). :meth:`running_blocks` extends a
    match by the blocks of the chains in flight on a deployment (an engine holds a running
    request's prompt in its KV cache); it tracks each chain's blocks at depths ``stride``,
    ``2 x stride``, ... and its last block, so a match is found to within ``stride - 1``
    blocks (exact for a whole chain in flight). Reservations expire first in, first out:
    every one shares the plugin's ttl, so ``expires`` grows with insertion.

    With ``learn_rate`` (and a ``prefill_rate`` to start from) the backlog learns its rate
    (:meth:`~prefixcache._backlog.DrainedBacklog.learn`).

    :meth:`prompt_blocks` counts the prompt blocks in flight on a deployment from the same
    tracked blocks: each stands for the blocks back to the previous tracked depth of its
    chain (a block id fixes its depth), so the count is exact with ``stride`` 1 and over by
    less than ``stride`` per chain otherwise.

    Memory: the reservations held and, per deployment, one count per distinct tracked
    block of their chains.

    Not thread-safe: the plugin calls it with its lock held.
    """

    __slots__ = (
        "_blocks",
        "_covered",
        "_expiry",
        "_held",
        "backlog",
        "in_flight",
        "stride",
    )

    def __init__(
        self, stride: int = 1, prefill_rate: float | None = None, *, learn_rate: bool = False
    ) -> None:
        self.stride = stride
        self.backlog: DrainedBacklog[str] = DrainedBacklog(prefill_rate, learn=learn_rate)
        self.in_flight: dict[str, int] = {}
        self._blocks: dict[str, dict[int, int]] = {}
        self._covered: dict[str, int] = {}  # the blocks the distinct tracked ones stand for
        self._held: dict[tuple[str, str], list[Reservation]] = {}
        self._expiry: deque[Reservation] = deque()

    def __len__(self) -> int:
        """Reservations held (not yet released or expired)."""
        return sum(len(v) for v in self._held.values())

    def reserve(self, res: Reservation, now: float) -> None:
        """Hold ``res``, reserved at ``now``, until :meth:`take` or :meth:`expire` drops it."""
        self._held.setdefault((res.rid, res.deployment), []).append(res)
        self._expiry.append(res)
        d = res.deployment
        self.in_flight[d] = self.in_flight.get(d, 0) + 1
        self.backlog.add(d, res.uncached, now)
        chain = res.chain
        if chain:
            blocks = self._blocks.setdefault(d, {})
            get = blocks.get
            new = 0
            for b in self._tracked(chain):
                c = get(b, 0)
                blocks[b] = c + 1
                if not c:
                    new += 1
            self._covered[d] = self._covered.get(d, 0) + self._stands_for(chain, new)

    def _tracked(self, chain: tuple[int, ...]) -> tuple[int, ...]:
        """The blocks of ``chain`` tracked in flight: every ``stride``-th, and the last."""
        s = self.stride
        if s == 1:
            return chain
        if len(chain) % s:
            return (*chain[s - 1 :: s], chain[-1])
        return chain[s - 1 :: s]

    def _stands_for(self, chain: tuple[int, ...], changed: int) -> int:
        """The blocks that ``changed`` tracked blocks of ``chain`` (just added, or just
        removed) stand for: ``stride`` each, back to the previous tracked depth, but
        ``len(chain) % stride`` for its last block off the stride. The last block is one of
        them whenever any is: chains are prefix-chained, so a chain in flight that holds
        none of this one's deeper tracked blocks cannot hold its last."""
        s = self.stride
        tail = len(chain) % s
        return changed * s - (s - tail if tail and changed else 0)

    def running_blocks(self, deployment: str, chain: Sequence[int], matched: int) -> int:
        """``matched`` (leading blocks of ``chain`` known to be cached on ``deployment``)
        extended by the following blocks that a request in flight there holds: the longest
        prefix ``chain`` shares with a chain in flight there, rounded down to a multiple of
        ``stride`` unless the two chains are equal. Chains are prefix-chained, so a block
        held in flight implies its whole prefix."""
        blocks = self._blocks.get(deployment)
        n = len(chain)
        if blocks is None or matched >= n:
            return matched
        if chain[n - 1] in blocks:
            return n
        s = self.stride
        depth = matched - matched % s + s
        while depth <= n and chain[depth - 1] in blocks:
            matched = depth
            depth += s
        return matched

    def prompt_blocks(self, deployment: str) -> int:
        """The distinct prompt blocks the reservations on ``deployment`` hold (over by less
        than ``stride`` per chain in flight there): what its engine holds for its running
        requests' prompts, as far as this plugin knows."""
        return self._covered.get(deployment, 0)

    def take(self, rids: Iterable[str], deployment: str, now: float) -> Reservation | None:
        """Drop and return the oldest reservation on ``deployment`` under the first of
        ``rids`` that holds one, released at ``now``; ``None`` when none does (or
        ``deployment`` is empty)."""
        if not deployment:
            return None
        for rid in rids:
            held = self._held.get((rid, deployment))
            if held:
                res = held[0]
                self._drop(res, now)
                return res
        return None

    def expire(self, now: float) -> int:
        """Drop the reservations whose deadline is before ``now``; returns how many."""
        expiry = self._expiry
        expired = 0
        while expiry and (expiry[0].done or expiry[0].expires < now):
            res = expiry.popleft()
            if not res.done:
                self._drop(res, now)
                expired += 1
        return expired

    def _drop(self, res: Reservation, now: float) -> None:
        res.done = True
        held = self._held.get((res.rid, res.deployment))
        if held is not None:
            held.remove(res)
            if not held:
                del self._held[(res.rid, res.deployment)]
        d = res.deployment
        self.in_flight[d] -= 1
        self.backlog.remove(d, res.uncached, now)
        if not self.in_flight[d]:
            del self.in_flight[d]
            self._blocks.pop(d, None)
            self._covered.pop(d, None)
        elif res.chain:
            blocks = self._blocks[d]
            gone = 0
            for b in self._tracked(res.chain):
                c = blocks[b]
                if c == 1:
                    del blocks[b]
                    gone += 1
                else:
                    blocks[b] = c - 1
            self._covered[d] -= self._stands_for(res.chain, gone)
