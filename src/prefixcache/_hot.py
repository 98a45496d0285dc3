"""Warm copies for hot prefixes: how many replicas should hold a prefix, and which.

A prefix that more than one replica's worth of the traffic needs (one shared system prompt
in front of most requests) pins its requests to the replica that cached it first when a
router follows the cache alone: that replica queues while the others idle. A router that
keeps ``k`` *warm copies* of such a prefix, and treats every warm replica as holding it,
spreads its requests by load instead; each copy pays the prefix's prefill once.

:class:`HotPrefixes` decides ``k`` from the router's recent dispatches and remembers the
warm set, with hysteresis so that a steady load never flaps between ``k`` and ``k - 1``.
It reads no clock: recency is the order of :meth:`HotPrefixes.record` calls.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._keys import check_amount

if TYPE_CHECKING:
    from prefixcache._mirror import KvCacheMirror
    from prefixcache._types import ReplicaKey

__all__ = [
    "DEFAULT_GUARD_COVER",
    "DEFAULT_GUARD_DEMAND",
    "DEFAULT_HOT_CONFIDENCE",
    "DEFAULT_HOT_LOWER",
    "DEFAULT_HOT_MAX_CHAIN",
    "DEFAULT_HOT_PER_COPY",
    "DEFAULT_ROOM_BACKLOG_TOKENS",
    "DEFAULT_ROOM_KV_FILL",
    "DEFAULT_ROOM_QUEUE_WEIGHT",
    "DEFAULT_SHARED_DEMAND",
    "DEFAULT_SHARED_KV_USAGE",
    "DEFAULT_SHARED_QUEUE_WEIGHT",
    "HotCredit",
    "HotPrefixes",
    "caches_have_room",
]

DEFAULT_HOT_CONFIDENCE = 1.0
"""A prefix's demand is its share of the window's dispatches taken one standard error low
(the lower bound of the Wilson score interval at ``z = 1``; see :class:`HotPrefixes`): a
share seen over a few dispatches is a guess, and each copy made on it pays a cold
prefill."""

DEFAULT_HOT_LOWER = 0.75
"""A prefix with ``k`` warm copies drops to ``k - 1`` only once its demand falls below
``0.75 x (k - 1)`` replicas (see :class:`HotPrefixes`)."""

DEFAULT_HOT_PER_COPY = 0.75
"""One warm copy carries at most 0.75 of a replica's share of the traffic for its prefix,
leaving room on that replica for other work and for the rotation of ties (see
:class:`HotPrefixes`)."""

DEFAULT_HOT_MAX_CHAIN = 4096
"""Blocks of a chain :meth:`HotPrefixes.record` counts (a 2M-token prompt at 512 tokens
per block); deeper blocks are ignored, which bounds the memory per dispatch."""

DEFAULT_GUARD_DEMAND = 1.0
"""A request whose deepest cached prefix has a demand of at least one replica and is not
held everywhere picks with the fair-share guard (:meth:`HotPrefixes.needs_fair_share`):
at least one replica's share of the traffic starts with that prefix, so its affinity
alone would pile requests onto its holders."""

DEFAULT_GUARD_COVER = 0.75
"""A hot prefix that makes up at least three quarters of the request's chain is guarded
even when every candidate holds it (:meth:`HotPrefixes.needs_fair_share`): such a request
is light wherever it goes."""

DEFAULT_SHARED_DEMAND = 0.25
"""A prefix whose demand is at least a quarter of one replica's share of the traffic is
*shared* (:meth:`HotPrefixes.shared`): many requests in the window start with it."""

DEFAULT_SHARED_QUEUE_WEIGHT = 0.5
"""The backlog weight the replay's ``cache-cost`` passes to ``pick_lowest_cost`` for a
request whose deepest cached prefix is shared but not held everywhere, instead of
``DEFAULT_QUEUE_WEIGHT`` (0.1): one more copy of a shared prefix serves many later
requests, so a busy holder should give way to an idle replica sooner than it would for a
conversation's own history."""

DEFAULT_SHARED_KV_USAGE = 0.8
"""The replay's ``cache-cost`` weighs a shared prefix's backlog at
``DEFAULT_SHARED_QUEUE_WEIGHT`` only while every replica's KV usage (the blocks its running
requests hold over its capacity, as engines report it; ``KvCacheMirror.running_blocks``)
is below 0.8, the KV threshold at which llm-d's saturation detector counts a pod as
saturated: a copy of a prefix is cheap while the caches have room beside the running
requests, and on a saturated replica it pushes out blocks that later requests need."""

DEFAULT_ROOM_QUEUE_WEIGHT = 0.2
"""The backlog weight ``cache-cost`` (the replay's policy and the LiteLLM plugin) passes to
``pick_lowest_cost`` while the caches have room and the cluster is not saturated (every
replica's mirrored KV cache filled below ``DEFAULT_ROOM_KV_FILL`` and some replica's
backlog under ``DEFAULT_ROOM_BACKLOG_TOKENS``), instead of ``DEFAULT_QUEUE_WEIGHT`` (0.1;
the larger weight applies, so a shared prefix keeps its 0.5): a copy of a prefix on a less
busy replica then evicts nothing for a while and uses prefill capacity the cluster has to
spare, so a miss costs little more than its own prefill."""

DEFAULT_ROOM_KV_FILL = 0.5
"""The fill of a replica's mirrored KV cache (its blocks and output blocks over its
capacity, :meth:`KvCacheMirror.filled_below`) below which a copy evicts nothing for a
while."""

DEFAULT_ROOM_BACKLOG_TOKENS = 4096
"""The room weight holds only while some replica's prefill backlog is under this many
tokens (half a step's token budget of the replayed server, a fifth of a second of its
prefill): at or past it on every replica the cluster is saturated and each miss costs
capacity every request needs."""

R = TypeVar("R", bound=Hashable)


def caches_have_room(
    mirror: KvCacheMirror,
    keys: Sequence[ReplicaKey],
    backlogs: Sequence[float],
    *,
    kv_fill: float = DEFAULT_ROOM_KV_FILL,
    backlog_tokens: float = DEFAULT_ROOM_BACKLOG_TOKENS,
) -> bool:
    """Whether the room weight (``DEFAULT_ROOM_QUEUE_WEIGHT``) applies: some replica's
    prefill backlog (``backlogs``, in tokens) is under ``backlog_tokens`` and every one of
    ``keys`` is filled below ``kv_fill`` in ``mirror`` (:meth:`KvCacheMirror.filled_below`;
    ``False`` without a capacity). The backlogs are read first: they cost nothing to test.

    >>> from prefixcache import KvCacheMirror, ReplicaKey
    >>> m = KvCacheMirror(capacity_blocks=8)
    >>> m.observe(ReplicaKey("a"), (1, 2, 3))
    >>> keys = [ReplicaKey("a"), ReplicaKey("b")]
    >>> caches_have_room(m, keys, [5000, 0]), caches_have_room(m, keys, [5000, 4096])
    (True, False)
    >>> caches_have_room(m, keys, [0, 0], kv_fill=3 / 8)
    False
    """
    return min(backlogs) < backlog_tokens and mirror.filled_below(keys, kv_fill)


@attrs.frozen(kw_only=True)
class HotCredit(Generic[R]):
    """What the hot-prefix rule (:meth:`HotPrefixes.credit`) changes for one request.

    Attributes:
        held: per candidate (in the order given), the leading blocks it counts as holding:
            the blocks it holds, or the prefix's depth for a warm copy.
        warm: the prefix's warm replicas (empty: one copy is enough).
        shared: whether the prefix is shared and not held everywhere: the policy then
            weighs the backlog at ``DEFAULT_SHARED_QUEUE_WEIGHT`` (or more).
    """

    held: tuple[int, ...] = attrs.field(validator=lambda _i, _a, v: _check_held(v))
    warm: tuple[R, ...] = attrs.field(validator=lambda _i, a, v: _check_type(a.name, v, tuple))
    shared: bool = attrs.field(validator=lambda _i, a, v: _check_type(a.name, v, bool))


def _check_held(value: object) -> None:
    if type(value) is not tuple or any(type(h) is not int or h < 0 for h in value):
        raise InvalidRecordError("held", value, "must be a tuple of ints >= 0")


def _check_type(name: str, value: object, kind: type) -> None:
    if type(value) is not kind:
        raise InvalidRecordError(name, value, f"must be a {kind.__name__}")


class HotPrefixes:
    """How many warm copies each prefix needs, from the router's last ``window`` dispatches.

    Demand. :meth:`record` counts one dispatch and every block of its prefix chain (blocks
    are prefix-chained hashes, so a block stands for the whole prefix ending there). A
    prefix's share is ``p = c / n``, ``c`` of the ``n`` dispatches in the window containing
    it, and its demand in replicas is ``u = low(c, n) x replicas``: 1.0 is one replica's
    fair share of the traffic. ``low`` is the lower bound of the Wilson score interval of
    ``p`` at ``z = confidence`` standard errors::

        low(c, n) = (p + z**2 / (2n) - z * sqrt(p (1 - p) / n + z**2 / (4 n**2)))
                    / (1 + z**2 / n)

    so a share seen over few dispatches counts for less than it seems (1 of 3 dispatches:
    0.14, not 0.33; 1 of 20: 0.02, not 0.05), and the bound nears ``p`` as the window
    fills (0.25 over 2,048 dispatches: 0.240). ``confidence=0`` gives ``p`` itself. A
    shared system prompt in front of every request has ``low = n / (n + z**2)``: with the
    default ``z = 1``, ``u = replicas / 2`` at the first dispatch and ``0.9 x replicas`` at
    the ninth, so its copies are placed at once, not after a queue has formed; a prefix
    seen in a few of the first dispatches gets its copies only once more dispatches show
    it (each copy pays a cold prefill, which lengthens a queue under load).

    Copies, with hysteresis. Each copy may carry ``per_copy`` replicas of demand, so the
    prefix needs ``c = u / per_copy`` copies. :meth:`warm` keeps a count ``k`` per prefix
    (1 when absent): ``k`` rises to ``min(replicas, ceil(c))`` as soon as ``c > k`` and
    falls by one while ``c < (k - 1) x lower``. Under a constant demand, ``k = ceil(c)``
    and never changes (``(ceil(c) - 1) x lower < c``); a demand must fall by more than
    ``1 - lower`` of a copy before a copy is dropped.

    Placement. The warm set starts with the replicas that hold the prefix (``holders``, in
    the order given); a new copy goes to the replica with the fewest requests in flight
    (the first in ``in_flight``'s order on ties); when ``k`` falls, the copy added last
    leaves first. A warm replica missing from ``in_flight`` (it left) is dropped.

    Stride. With ``stride`` s > 1 only the prefixes ending at depths s, 2s, ... (the
    chain's blocks ``s - 1``, ``2s - 1``, ...) are counted, and :meth:`credit` rounds a
    request's prefix down to such a depth: s times less work per dispatch, for a credit
    up to ``s - 1`` blocks short, which can turn a small advantage into a tie. It suits a
    router whose blocks are small next to the cost margin (the LiteLLM plugin: 64-token
    blocks, every eighth tracked, a 512-token margin).

    Memory. The window holds ``window`` chains of at most ``max_chain / stride`` counted
    blocks, and one count per distinct block among them; copy counts and warm sets are kept only for
    prefixes whose ``k >= 2`` and whose block is still counted in the window (a prefix
    that leaves the window is forgotten). O(window x max_chain) in all.

    The clock is the dispatch order: no time is read. Not thread-safe: guard it with the
    router's lock.

    Args:
        window: dispatches remembered (int >= 1); a few hundred per replica (the replay uses
            256 x replicas).
        lower: the hysteresis factor in (0, 1] (1: drop a copy as soon as ``c < k - 1``).
        max_chain: blocks of a chain read (int >= 1); deeper blocks are ignored.
        stride: count every ``stride``-th prefix depth only (int >= 1; default 1: all).
        per_copy: the demand one copy may carry, in replicas (finite, > 0; 1.0: a copy per
            replica's worth of traffic). Below 1, a prefix at ``u = 0.75`` already gets a
            second copy: its requests then rotate over two replicas instead of queueing on
            one that is nearly full with them.
        confidence: the standard errors ``z`` the demand is taken below the observed share
            (finite, >= 0; 0: the observed share).

    Raises:
        InvalidRecordError: a bad ``window``, ``lower``, ``max_chain``, ``per_copy``,
            ``stride`` or ``confidence`` (the message names it and the value).

    >>> hot = HotPrefixes(window=4, confidence=0)   # the observed share
    >>> for chain in [(1, 2), (1, 3), (1, 4), (9,)]:
    ...     hot.record(chain)
    >>> hot.demand(1, replicas=4)      # 3 of 4 dispatches share block 1
    3.0
    >>> loads = {"a": 5, "b": 2, "c": 0, "d": 0}
    >>> hot.warm(1, holders=["a"], in_flight=loads)  # 3 / 0.75 = 4 copies
    ('a', 'c', 'd', 'b')
    >>> hot.warm(9, holders=["b"], in_flight=loads)  # 1 / 0.75: 2 copies
    ('b', 'c')
    >>> low = HotPrefixes(window=4)   # the default: one standard error below
    >>> for chain in [(1, 2), (1, 3), (1, 4), (9,)]:
    ...     low.record(chain)
    >>> low.demand(1, replicas=4), round(low.demand(9, replicas=4), 3)
    (2.0, 0.4)
    >>> low.warm(1, holders=["a"], in_flight=loads)  # 2 / 0.75: 3 copies
    ('a', 'c', 'd')
    >>> per_replica = HotPrefixes(window=4, per_copy=1.0, confidence=0)
    >>> per_replica.record((9,))
    >>> per_replica.warm(9, holders=["b"], in_flight={"a": 0, "b": 0}), per_replica.copies(9)
    (('b', 'a'), 2)
    """

    __slots__ = (
        "_chains",
        "_counts",
        "_k",
        "_warm",
        "confidence",
        "lower",
        "max_chain",
        "per_copy",
        "stride",
        "window",
    )

    def __init__(
        self,
        *,
        window: int,
        lower: float = DEFAULT_HOT_LOWER,
        max_chain: int = DEFAULT_HOT_MAX_CHAIN,
        per_copy: float = DEFAULT_HOT_PER_COPY,
        stride: int = 1,
        confidence: float = DEFAULT_HOT_CONFIDENCE,
    ) -> None:
        if type(window) is not int or window < 1:
            raise InvalidRecordError("window", window, "must be an int >= 1")
        if isinstance(lower, bool) or not isinstance(lower, int | float) or not 0 < lower <= 1:
            raise InvalidRecordError("lower", lower, "must be a number in (0, 1]")
        if type(max_chain) is not int or max_chain < 1:
            raise InvalidRecordError("max_chain", max_chain, "must be an int >= 1")
        if (
            isinstance(per_copy, bool)
            or not isinstance(per_copy, int | float)
            or not math.isfinite(per_copy)
            or per_copy <= 0
        ):
            raise InvalidRecordError("per_copy", per_copy, "must be a finite number > 0")
        if type(stride) is not int or stride < 1:
            raise InvalidRecordError("stride", stride, "must be an int >= 1")
        confidence = check_amount("confidence", confidence)
        self.window = window
        self.lower = float(lower)
        self.max_chain = max_chain
        self.per_copy = float(per_copy)
        self.stride = stride
        self.confidence = confidence
        self._chains: deque[tuple[int, ...]] = deque()
        self._counts: dict[int, int] = {}
        self._k: dict[int, int] = {}
        self._warm: dict[int, list[Hashable]] = {}

    def __len__(self) -> int:
        """Dispatches in the window."""
        return len(self._chains)

    def record(self, chain: Sequence[int]) -> None:
        """Count one dispatch whose prompt has the prefix chain ``chain`` (may be empty):
        its blocks at depths ``stride``, ``2 x stride``, ... up to ``max_chain``.

        O(len(chain) / stride), amortised with the dispatch that leaves the window.

        Raises:
            InvalidRecordError: a counted block is not an int.
        """
        blocks = tuple(chain[self.stride - 1 : self.max_chain : self.stride])
        for b in blocks:
            if type(b) is not int:
                raise InvalidRecordError("chain", b, "blocks must be ints")
        counts = self._counts
        get = counts.get
        # Kept as a tuple (a set takes four times the memory for as many blocks).
        distinct = blocks if len(set(blocks)) == len(blocks) else tuple(dict.fromkeys(blocks))
        for b in distinct:
            counts[b] = get(b, 0) + 1
        self._chains.append(distinct)
        if len(self._chains) > self.window:
            for b in self._chains.popleft():
                c = counts[b] - 1
                if c:
                    counts[b] = c
                else:
                    del counts[b]
                    self._k.pop(b, None)
                    self._warm.pop(b, None)

    def demand(self, prefix: int, replicas: int) -> float:
        """``u``: the share of the window's dispatches containing ``prefix``, taken
        ``confidence`` standard errors low (see the class docstring), times ``replicas``
        (0.0 before any dispatch).

        Raises:
            InvalidRecordError: ``replicas`` is not an int >= 1.
        """
        if type(replicas) is not int or replicas < 1:
            raise InvalidRecordError("replicas", replicas, "must be an int >= 1")
        n = len(self._chains)
        if not n:
            return 0.0
        c = self._counts.get(prefix, 0)
        z = self.confidence
        if not z or not c:  # the bound is 0 at c = 0 (and its form 0 / 0 when z * z is 0)
            return c * replicas / n
        # The class docstring's bound, its numerator multiplied out by its conjugate: no
        # subtraction, so never negative, and 0.0 (not NaN) when z * z overflows.
        zz = z * z
        low = 2 * c * c / (n * (2 * c + zz + z * math.sqrt(zz + 4 * c * (n - c) / n)))
        return low * replicas

    def shared(self, prefix: int, replicas: int, demand: float = DEFAULT_SHARED_DEMAND) -> bool:
        """Whether ``prefix`` is shared: its demand (:meth:`demand`) is at least ``demand``
        replicas (default a quarter of one replica's share of the traffic).

        >>> hot = HotPrefixes(window=8, confidence=0)   # the observed share
        >>> for chain in [(1, 2), (1, 3), (4,), (5,), (6,), (7,), (8,), (9,)]:
        ...     hot.record(chain)
        >>> hot.shared(1, replicas=1), hot.shared(2, replicas=1), hot.shared(2, replicas=2)
        (True, False, True)

        Raises:
            InvalidRecordError: ``replicas`` is not an int >= 1, or ``demand`` is not a
                finite number >= 0.
        """
        check_amount("demand", demand)
        return self.demand(prefix, replicas) >= demand

    def copies(self, prefix: int) -> int:
        """The prefix's current number of warm copies (1 when it is not hot)."""
        return self._k.get(prefix, 1)

    def _depth(self, chain: Sequence[int], held: Sequence[int]) -> int:
        """The request's prefix depth: ``max(held)`` rounded down to a multiple of
        ``stride`` (``chain[d - 1]`` is the prefix; 0: none). Refuses a ``held`` outside
        ``[0, len(chain)]``."""
        d = max(held)
        if d > len(chain) or min(held) < 0:
            raise InvalidRecordError("held", held, f"must be in [0, {len(chain)}] (the chain)")
        return d - d % self.stride

    def needs_fair_share(
        self,
        chain: Sequence[int],
        *,
        held: Sequence[int],
        demand: float = DEFAULT_GUARD_DEMAND,
        cover: float = DEFAULT_GUARD_COVER,
    ) -> bool:
        """Whether a request should pick only among the replicas within their fair share of
        the router's recent dispatches (``pick_lowest_cost``'s fair-share guard): its
        prefix, ``chain[d - 1]`` with ``d = max(held)`` rounded down to a multiple of
        ``stride``, has a demand (:meth:`demand`) of at least ``demand`` replicas, and
        some candidate holds fewer than ``d`` blocks or the prefix is at least ``cover`` of
        the chain (``d >= cover x len(chain)``).

        Why. A prefix in front of a replica's share of the traffic or more is not one
        conversation's history: a replica that lacks it pays its prefill once and then
        serves its later requests as well as its holders do. Left to the cost alone, its
        requests stay with the holders as long as one of them is idle (an idle holder saves
        the whole prefix), so when they are light (a long shared prompt, a short question,
        a few output tokens) the holders take far more requests than their share while
        new conversations, whose savings are alike everywhere, are steered by the share
        price onto the other replicas, which then prefill more. The guard sends such a
        request elsewhere once its holders are over their share, which is also where the
        next copy is needed. A prefix every candidate holds gives no affinity (nothing to
        correct) unless it is most of the request: then the request is light wherever it
        goes, and under load the backlog term would send it away from the replicas busy
        with long prefills and pile such requests onto the others. A conversation's own
        history (demand below one replica) keeps its replica: moving it would pay its whole
        prefill again.

        Args:
            chain: the request's prefix chain.
            held: per candidate, the leading blocks of ``chain`` it holds (non-empty).
            demand: the demand, in replicas, from which the guard applies (finite, >= 0).
            cover: the share of the chain from which a prefix every candidate holds is
                guarded too (finite, >= 0; above 1: never).

        Raises:
            InvalidRecordError: an empty ``held``, a ``held`` outside ``[0, len(chain)]``,
                or a bad ``demand`` or ``cover``.

        Complexity: O(len(held)).

        >>> hot = HotPrefixes(window=8, confidence=0)   # the observed share
        >>> for chain in [(1, 2), (1, 3), (1, 4), (5,), (6,), (7,), (8,), (9,)]:
        ...     hot.record(chain)
        >>> hot.demand(1, replicas=4)   # 3 of 8 dispatches start with block 1
        1.5
        >>> hot.needs_fair_share((1, 10), held=[1, 0, 0, 0])   # hot, held by one replica
        True
        >>> hot.needs_fair_share((1, 10), held=[1, 1, 1, 1])   # held everywhere, half
        False
        >>> hot.needs_fair_share((1,), held=[1, 1, 1, 1])   # held everywhere, all of it
        True
        >>> hot.needs_fair_share((1, 2, 11), held=[2, 1, 0, 0])   # prefix (1, 2): 0.5
        False
        """
        if not held:
            raise InvalidRecordError("held", held, "must name at least one candidate")
        check_amount("demand", demand)
        check_amount("cover", cover)
        d = self._depth(chain, held)
        if d == 0 or (min(held) >= d and d < cover * len(chain)):
            return False
        return self.demand(chain[d - 1], len(held)) >= demand

    def warm(
        self, prefix: int, *, holders: Collection[R], in_flight: Mapping[R, int]
    ) -> tuple[R, ...]:
        """Update ``prefix``'s copy count from its demand and return its warm replicas.

        Args:
            prefix: the prefix's block (its deepest block, e.g. the deepest block of the
                request's chain cached on some replica).
            holders: replicas believed to hold the prefix, preferred first.
            in_flight: every candidate replica with its requests in flight; its length is
                the replica count and its order breaks placement ties.

        Returns:
            The warm replicas, holders first then newer copies in the order they were
            added; empty when the prefix needs one copy (it is then forgotten).

        Raises:
            InvalidRecordError: ``prefix`` is not an int, or ``in_flight`` is empty.

        Complexity: O(replicas x k) when copies are added, O(k + len(holders)) otherwise.
        """
        if type(prefix) is not int:
            raise InvalidRecordError("prefix", prefix, "must be an int (a chain block)")
        n = len(in_flight)
        if n == 0:
            raise InvalidRecordError("in_flight", in_flight, "must name at least one replica")
        u = self.demand(prefix, n) / self.per_copy
        k = self._k.get(prefix, 1)
        if u > k:
            k = min(n, math.ceil(u))
        k = min(k, n)
        while k > 1 and u < (k - 1) * self.lower:
            k -= 1
        if k <= 1:
            self._k.pop(prefix, None)
            self._warm.pop(prefix, None)
            return ()
        self._k[prefix] = k
        warm = [r for r in self._warm.get(prefix, ()) if r in in_flight]
        for h in holders:
            if len(warm) >= k:
                break
            if h in in_flight and h not in warm:
                warm.append(h)
        if len(warm) < k:
            order = {r: pos for pos, r in enumerate(in_flight)}
            rest = sorted(
                (r for r in in_flight if r not in warm), key=lambda r: (in_flight[r], order[r])
            )
            warm.extend(rest[: k - len(warm)])
        del warm[k:]
        self._warm[prefix] = warm
        return tuple(warm)  # type: ignore[arg-type]

    def credit(
        self,
        chain: Sequence[int],
        *,
        held: Sequence[int],
        replicas: Sequence[R],
        in_flight: Sequence[int],
        overloaded: Callable[[int, int], bool] | None = None,
        shared_demand: float = DEFAULT_SHARED_DEMAND,
        room: Callable[[], bool] | None = None,
    ) -> HotCredit[R] | None:
        """The default policy's hot-prefix rule for one request (``cache-cost``, and the
        LiteLLM plugin).

        The request's *prefix* is ``chain[d - 1]``, ``d`` being ``max(held)`` (its deepest
        block some candidate holds) rounded down to a multiple of ``stride``. The rule
        applies only while every *holder* (``held >= d``) is *busy*: by default, it has a
        request in flight (an idle holder serves the next request at once, so its requests
        keep their affinity and a light load never pays for an extra copy); with
        ``overloaded``, ``overloaded(its in-flight count, the least in-flight count)`` is
        true (the LiteLLM plugin passes its load guard, so that a prompt keeps its
        deployment until that deployment is overloaded). A holder with nothing in flight
        is never busy. Then

        * :meth:`warm` places the prefix's copies (holders first, then the fewest in flight),
          and every warm replica counts as holding at least ``d`` blocks;
        * the prefix is *shared* when some candidate holds fewer than ``d`` blocks, its
          demand is at least ``shared_demand`` replicas (:meth:`shared`) and ``room()``
          (default: always) says no replica is saturated.

        Does not record the dispatch: call :meth:`record` once the request is sent.
        O(len(held)), plus :meth:`warm`'s placement when copies are added.

        Args:
            chain: the request's prefix chain.
            held: per candidate, the leading blocks of ``chain`` it holds (ints in
                ``[0, len(chain)]``).
            replicas: the candidates (distinct hashable ids, stable across calls: warm
                sets are kept by id), in the order of ``held`` and ``in_flight``.
            in_flight: per candidate, its requests in flight.
            overloaded: ``overloaded(in_flight, least) -> bool``, when a holder is busy
                (default: ``in_flight > 0``).
            shared_demand: the demand, in replicas, from which a prefix is shared.
            room: ``room() -> bool``, called only when the rest of the shared test holds.

        Returns:
            ``None`` when the rule changes nothing (no counted prefix held, a holder not
            busy, one copy enough and not shared), else the :class:`HotCredit`.

        Raises:
            InvalidRecordError: ``held``, ``replicas`` and ``in_flight`` differ in length or
                are empty; a ``held`` outside ``[0, len(chain)]``; repeated replicas (when
                the holders are busy); a bad ``shared_demand``.

        >>> hot = HotPrefixes(window=8)
        >>> for _ in range(8):
        ...     hot.record((1, 2))
        >>> hot.credit((1, 2), held=[2, 0, 0], replicas="abc", in_flight=[0, 0, 0]) is None
        True
        >>> hot.credit((1, 2), held=[2, 0, 0], replicas="abc", in_flight=[3, 1, 0])
        HotCredit(held=(2, 2, 2), warm=('a', 'c', 'b'), shared=True)
        """
        n = len(held)
        if n == 0 or len(replicas) != n or len(in_flight) != n:
            raise InvalidRecordError(
                "held", held, "held, replicas and in_flight must be non-empty and of equal length"
            )
        d = self._depth(chain, held)
        if not any(in_flight):
            return None  # every holder is idle
        if d == 0:
            return None
        least = min(in_flight)
        for h, f in zip(held, in_flight, strict=True):
            if h >= d and (f == 0 if overloaded is None else not overloaded(f, least)):
                return None  # a holder that is not busy
        if len(set(replicas)) != n:
            raise InvalidRecordError("replicas", replicas, "must be distinct")
        holders = [r for r, h in zip(replicas, held, strict=True) if h >= d]
        prefix = chain[d - 1]
        shared = (
            min(held) < d and self.shared(prefix, n, shared_demand) and (room is None or room())
        )
        warm = self.warm(
            prefix, holders=holders, in_flight=dict(zip(replicas, in_flight, strict=True))
        )
        if not warm and not shared:
            return None
        if warm:
            hot = set(warm)
            held = [max(h, d) if r in hot else h for r, h in zip(replicas, held, strict=True)]
        return HotCredit(held=tuple(held), warm=warm, shared=shared)
