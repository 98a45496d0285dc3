"""Peer policies on a character radix tree written from the router's own decisions:
SGLang router / SMG ``cache_aware`` before and after SMG PR #2161, and after PR #2341
(the final pick by LeastLoad's expected wait over polled engine loads).

Every random choice draws from one ``random.Random(seed)`` per policy; the order of a
node's tenants in SMG's hashed map is a fixed function of the seed (:func:`map_rank`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import attrs

from clusterrouting import InvalidRecordError
from prefixcache.replay._cluster import finite_nonneg
from prefixcache.replay._peer_base import CHARS_PER_TOKEN, CharTree, Peer, block_chars
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView, EngineLoad

__all__ = [
    "SMG_DEFAULT_THROUGHPUT",
    "SMG_KV_PRESSURE_WEIGHT",
    "SMG_LOAD_CHECK_INTERVAL_S",
    "SMG_MEAN_PREFILL_TOKENS",
    "SglangCacheAwarePolicy",
    "SmgCacheAwareCurrentPolicy",
    "SmgCacheAwarePolicy",
    "SmgLoadReport",
    "map_rank",
    "select_min_expected_wait",
    "smg_expected_waits",
]


# --- 1. SGLang / SMG cache_aware -----------------------------------------------------

_M64 = (1 << 64) - 1


def map_rank(seed: int, node: int, tenant: int) -> int:
    """``tenant``'s place in ``node``'s tenant map, as a fixed pseudo-random 64-bit rank:
    the deterministic stand-in for the iteration order of SMG's ``DashMap`` (smg
    @f8daa883 ``crates/kv_index/src/string_tree.rs`` ``new_tenant_map``, ``Node::
    matched_tenants``), which follows the hash of the worker URL under a key drawn per
    map, so it is neither index nor recency order, differs between nodes and router
    processes, and stays put for one node (a split copies the map with its hasher).

    ``node`` is the node's :attr:`CharTree.origin`. The mix is splitmix64's finaliser
    over ``seed``, ``node`` and ``tenant``; ints of any sign or size.

    >>> map_rank(0, 7, 1) == map_rank(0, 7, 1) != map_rank(0, 7, 2)
    True
    """
    x = (seed * 0x9E3779B97F4A7C15 + node * 0xBF58476D1CE4E5B9 + tenant * 0x94D049BB133111EB) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class SglangCacheAwarePolicy(Peer):
    """SGLang router / SMG ``cache_aware``, HTTP path, as of SMG @73da68ca
    (``model_gateway/src/policies/cache_aware.rs``, ``crates/kv_index/src/string_tree.rs``;
    CLI defaults in ``model_gateway/src/main.rs``); fact sheet section 1.

    State: one character tree written at dispatch from the router's own decisions, with
    SMG's nodes (runs of blocks, see :class:`CharTree`); load is the router's in-flight
    count plus ``processed`` (requests routed here).
    Decision: (1) if ``max - min > balance_abs_threshold`` and ``max > balance_rel_threshold
    x min`` over in-flight, the min-load worker (least ``(in_flight, processed, index)``);
    (2) otherwise walk the tree: ``rate = matched chars / text chars``; if ``rate >
    cache_threshold`` (strict) the owner of the node holding the last matched block
    (SMG's cached ``last_tenant``; if the owner was evicted there, the lowest-index
    remaining tenant, which then stays the owner of the whole node), else the min-load
    worker (``miss_fallback="min_load"``) or, before sglang PR #14650, the tenant with
    the smallest tree (``miss_fallback="smallest_tree"``). The text is inserted for the
    pick.
    Stamps (``string_tree.rs``): one operation counter; registering ``n`` workers one at
    a time runs ``init_workers`` over all registered so far (one empty insert each), so
    it starts at ``n (n + 1) / 2``. That is a choice: the gateway registers its workers
    concurrently, so the count starts anywhere from ``n (n + 1) / 2`` to ``n^2``, and its
    phase decides which requests get the refresh below (on the bundled trace 7 of the 8
    phases give ``smg-cache-aware`` a p99 of 6.783 s, this one 6.617 s; ``sglang`` is the
    same at every phase). A lookup takes one value and, when it is a multiple of 8, stamps the
    resolved owner on the whole node where the match ended (a later split copies it to
    both halves); an insert takes one and stamps the node it creates or ends at (nodes it
    joins get 0, nodes it already held keep theirs). A balanced request takes two values,
    so the refresh falls on every 4th of a stream of them, or on none.
    Eviction (``evict_tenant_by_size``): every ``eviction_interval_s`` from t = 0, the
    gateway's start (``PeriodicTask`` sleeps first, then runs; the policy is built before
    any worker registers), (tenant, leaf node) entries go least recently stamped first,
    each taking the tenant off a whole node, a parent becoming a leaf when its last child
    with that tenant goes, until each tenant holds at most ``max_tree_chars`` (checked
    between nodes, so a pass may end up to one node below it).
    Defaults: 0.3 / 64 / 1.5 / 120 s / 2**26 chars.
    """

    name = "sglang-cache-aware"

    def __init__(
        self,
        *,
        block_tokens: int,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        eviction_interval_s: float = 120.0,
        max_tree_chars: int = 2**26,
        miss_fallback: str = "min_load",
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        self.tree = CharTree()
        self.processed: list[int] = []
        self._bt = block_tokens
        self._cpt = chars_per_token
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        if not 0 < eviction_interval_s < math.inf:
            raise InvalidRecordError(
                "eviction_interval_s", eviction_interval_s, "must be a finite number > 0"
            )
        self.eviction_interval_s = eviction_interval_s
        self.max_tree_chars = max_tree_chars
        self.miss_fallback = miss_fallback
        self._next_evict: float | None = None
        self._per_tenant = True

    def _min_load(self, view: ClusterView) -> int:
        inf = view.in_flight
        pr = self.processed
        return min(range(view.replicas), key=lambda k: (inf[k], pr[k], k))

    def _maybe_evict(self, now: float) -> None:
        """The eviction thread's passes (``PeriodicTask``: sleep, then run) fall on a
        fixed grid ``eviction_interval_s, 2 x eviction_interval_s, ...`` from t = 0; a due
        pass runs before the first request at or after its time, and passes with no
        insert between them are one."""
        every = self.eviction_interval_s
        if self._next_evict is None:
            self._next_evict = every
        if now >= self._next_evict:
            self.tree.evict(self.max_tree_chars, per_tenant=self._per_tenant)
            self._next_evict += every * (1 + math.floor((now - self._next_evict) / every))

    def _start(self, n: int) -> None:
        """First call (or more replicas): each worker registered in turn re-registers
        every worker so far, one empty insert (one stamp) each."""
        had = len(self.processed)
        if had != n:
            self.processed = [0] * n
            self.tree.op += max(0, n * (n + 1) // 2 - had * (had + 1) // 2)

    def _lookup(self, blocks: Sequence[int], k: int) -> int | None:
        """The end of the node holding the last matched block (``None`` with no match),
        its owner resolved (:meth:`CharTree.resolve_owner`), and the one-in-eight stamp
        refresh of that owner on the node (``match_prefix_with_counts``)."""
        tree = self.tree
        stamp = tree.next_stamp()
        if k == 0:
            return None
        end = tree.node_end(blocks[k - 1])
        owner = tree.resolve_owner(end)
        if stamp & 7 == 0:
            tree.nodes[end][owner] = stamp
        return end

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        self._start(n)
        self._maybe_evict(now)
        inf = view.in_flight
        hi = max(inf)
        lo = min(inf)
        chars = block_chars(request, self._bt, self._cpt)
        if hi - lo > self.balance_abs_threshold and hi > self.balance_rel_threshold * lo:
            return self._commit(self._min_load(view), request, chars)
        m = self.tree.match(request.blocks, chars)
        end = self._lookup(request.blocks, m.blocks)
        if end is not None and m.rate > self.cache_threshold:
            owner = self.tree.owner[end]
            if owner >= n:  # gone from the pool: the first worker, no insert
                return 0
            r = owner
        elif self.miss_fallback == "smallest_tree":
            ch = self.tree.chars
            r = min(range(n), key=lambda x: (ch.get(x, 0), x))
        else:
            r = self._min_load(view)
        return self._commit(r, request, chars)

    def _commit(self, r: int, request: Request, chars: list[int]) -> int:
        self.tree.insert(request.blocks, chars, r)
        self.processed[r] += 1
        return r


class SmgCacheAwarePolicy(SglangCacheAwarePolicy):
    """SMG ``cache_aware`` after PR #2161 (read at smg @f8daa883,
    ``model_gateway/src/policies/cache_aware.rs``); fact sheet section 1b.

    No global switch. Hit (``rate > 0.3``): the tenants of the node holding the last
    matched block, less workers gone from the pool (SMG purges a removed worker from the
    whole tree, ``remove_tenant_all``; here it is only left out of the candidates, and
    its characters still count in the budget: no replay shrinks the pool); if more than
    ``max_owners``, the ``max_owners`` first in the node's map order
    (``Node::matched_tenants``), read as the lowest :func:`map_rank` for this ``seed``
    (a fixed pseudo-random subset per node, as a hashed map gives); among them the lowest
    in-flight, random among ties; spill gate (``gate_selected_candidate``): if that pick
    has ``in_flight > 1.5 x mean`` and ``> mean + 64`` (both strict, mean over all
    workers), the min-load worker. Miss: the min-load worker ``(in_flight, processed,
    index)``. The text is inserted for the final pick (a hot prefix gains a second
    owner). Stamps and eviction grid as in the parent class; ``max_tree_chars`` is one
    budget for the whole tree (per model, ``evict_tenant_by_size`` at @f8daa883),
    checked between nodes.
    """

    name = "smg-cache-aware"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        max_owners: int = 8,
        eviction_interval_s: float = 120.0,
        max_tree_chars: int = 2**26,
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        super().__init__(
            block_tokens=block_tokens,
            eviction_interval_s=eviction_interval_s,
            max_tree_chars=max_tree_chars,
            chars_per_token=chars_per_token,
        )
        self._seed = seed
        self._rng = random.Random(seed)
        self._per_tenant = False
        self.max_owners = max_owners
        self.spill_rel = 1.5
        self.spill_abs = 64

    def _requires_spill(self, load: int, mean: float) -> bool:
        """SMG's count gate (``gate_selected_candidate`` at @f8daa883,
        ``candidate_requires_spill`` after PR #2341): in-flight ``load`` above
        ``spill_rel x mean`` and above ``mean + spill_abs``, both strict, ``mean`` the
        in-flight mean over all workers."""
        return load > self.spill_rel * mean and load > mean + self.spill_abs

    def _candidates(self, end: int, n: int) -> list[int]:
        """The node's tenants still in the pool, cut to ``max_owners`` in map order, in
        index order."""
        owners = [o for o in self.tree.nodes[end] if o < n]
        if len(owners) > self.max_owners:
            seed = self._seed
            node = self.tree.origin[end]
            owners.sort(key=lambda o: map_rank(seed, node, o))
            del owners[self.max_owners :]
        owners.sort()
        return owners

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        self._start(n)
        self._maybe_evict(now)
        inf = view.in_flight
        chars = block_chars(request, self._bt, self._cpt)
        m = self.tree.match(request.blocks, chars)
        end = self._lookup(request.blocks, m.blocks)
        owners = self._candidates(end, n) if end is not None else []
        if owners and m.rate > self.cache_threshold:
            least = min(inf[o] for o in owners)
            r = self._rng.choice([o for o in owners if inf[o] == least])
            if self._requires_spill(inf[r], sum(inf) / n):
                r = self._min_load(view)
        else:
            r = self._min_load(view)
        return self._commit(r, request, chars)


# --- 2. SMG cache_aware after PR #2341: LeastLoad's expected wait ------------------------

SMG_MEAN_PREFILL_TOKENS = 1024
"""LeastLoad's ``DEFAULT_MEAN_PREFILL_TOKENS``: the credit of one HTTP dispatch (the HTTP
path has no token count) and the weight of one waiting request without a token count."""

SMG_DEFAULT_THROUGHPUT = 2000.0
"""LeastLoad's ``DEFAULT_THROUGHPUT`` (tokens/s): the drain rate of a report without a
positive ``gen_throughput``."""

SMG_KV_PRESSURE_WEIGHT = 0.15
"""LeastLoad's ``DEFAULT_KV_PRESSURE_WEIGHT`` (seconds) on the ``k / (1 - k)`` barrier."""

SMG_LOAD_CHECK_INTERVAL_S = 10.0
"""The WorkerMonitor's load poll period (``worker_load_check_interval_secs``)."""


@attrs.frozen(kw_only=True)
class SmgLoadReport:
    """One worker's load as SMG's WorkerMonitor last polled it (``WorkerLoadResponse``,
    one DP rank): ``waiting_reqs`` (``num_waiting_reqs``), ``waiting_uncached_tokens``
    (``num_waiting_uncached_tokens``, 0: not reported), ``token_usage`` (KV use in
    [0, 1]) and ``gen_throughput`` (tokens/s, 0: not reported)."""

    waiting_reqs: int = attrs.field(validator=finite_nonneg)
    waiting_uncached_tokens: int = attrs.field(default=0, validator=finite_nonneg)
    token_usage: float = attrs.field(default=0.0, validator=finite_nonneg)
    gen_throughput: float = attrs.field(default=0.0, validator=finite_nonneg)


def _report_wait(report: SmgLoadReport, credit_tokens: int) -> float:
    """LeastLoad ``score`` for a worker with a fresh report: ``(queued_tokens +
    credit_tokens) / throughput + 0.15 k / (1 - k)``, ``queued_tokens`` the reported
    uncached waiting tokens if positive, else ``waiting_reqs x 1024``; ``throughput`` the
    reported ``gen_throughput`` if positive, else 2000; ``k`` the KV use clamped to
    [0, 0.999]."""
    if report.waiting_uncached_tokens > 0:
        queued = float(report.waiting_uncached_tokens)
    else:
        queued = float(report.waiting_reqs * SMG_MEAN_PREFILL_TOKENS)
    tp = report.gen_throughput if report.gen_throughput > 0 else SMG_DEFAULT_THROUGHPUT
    k = min(report.token_usage, 0.999)  # >= 0 by the record's validator
    return (queued + credit_tokens) / tp + SMG_KV_PRESSURE_WEIGHT * k / (1.0 - k)


def smg_expected_waits(
    candidates: Sequence[int],
    *,
    reports: Sequence[SmgLoadReport | None],
    credit_tokens: Sequence[int],
    in_flight: Sequence[int],
) -> list[float]:
    """The expected-wait score (seconds, lower is better) of each of ``candidates``, as
    SMG's LeastLoad ``select_min_expected_wait_with_freshness`` computes it after PR
    #2341 (smg-project/smg @11b1fe08 ``model_gateway/src/policies/least_load.rs``).

    Tiers, scoped to ``candidates`` as in the source:
    1. a worker with a report (``reports[w]`` not ``None``): ``(queued tokens +
       credit_tokens[w]) / throughput + 0.15 k / (1 - k)`` (:func:`_report_wait`);
    2. a worker without one while some candidate has one: the lowest score of the
       reporting candidates plus ``in_flight[w] x 1024 / nominal``, ``nominal`` the mean
       positive ``gen_throughput`` of the reporting candidates, else 2000;
    3. no candidate with a report: ``in_flight[w]`` (join-shortest-queue).

    Args:
        candidates: worker indices, in the order the selector scans them.
        reports: per worker, its last polled load or ``None`` (never polled).
        credit_tokens: per worker, tokens credited to its dispatches since its last poll.
        in_flight: per worker, the router's live in-flight count (``Worker::load``).

    Returns:
        One score per candidate, in ``candidates`` order.

    Complexity: O(len(candidates)).

    >>> smg_expected_waits([0, 1], reports=[None, None], credit_tokens=[0, 0],
    ...                    in_flight=[3, 1])
    [3.0, 1.0]
    >>> smg_expected_waits([0, 1], reports=[SmgLoadReport(waiting_reqs=1), None],
    ...                    credit_tokens=[1024, 0], in_flight=[0, 2])
    [1.024, 2.048]
    """
    known = [(w, rep) for w in candidates if (rep := reports[w]) is not None]
    if not known:
        return [float(in_flight[w]) for w in candidates]
    tps = [rep.gen_throughput for _, rep in known if rep.gen_throughput > 0]
    nominal = sum(tps) / len(tps) if tps else SMG_DEFAULT_THROUGHPUT
    baseline = min(_report_wait(rep, credit_tokens[w]) for w, rep in known)
    out = []
    for w in candidates:
        rep = reports[w]
        if rep is not None:
            out.append(_report_wait(rep, credit_tokens[w]))
        else:
            out.append(baseline + in_flight[w] * SMG_MEAN_PREFILL_TOKENS / nominal)
    return out


def select_min_expected_wait(
    candidates: Sequence[int],
    *,
    reports: Sequence[SmgLoadReport | None],
    credit_tokens: Sequence[int],
    in_flight: Sequence[int],
    rng: random.Random,
) -> int:
    """The candidate with the lowest :func:`smg_expected_waits` score, ties uniformly at
    random by SMG's reservoir sampling (scanning ``candidates`` in order, the ``t``-th
    equal score replaces the pick when ``rng.randrange(t) == 0``): one draw per tie met,
    none without ties.

    Raises:
        ValueError: ``candidates`` is empty.

    >>> select_min_expected_wait([0, 1, 2], reports=[None] * 3, credit_tokens=[0] * 3,
    ...                          in_flight=[2, 0, 1], rng=random.Random(0))
    1
    """
    if not candidates:
        raise ValueError("candidates must not be empty")
    scores = smg_expected_waits(
        candidates, reports=reports, credit_tokens=credit_tokens, in_flight=in_flight
    )
    best, best_score, tied = candidates[0], scores[0], 1
    for w, s in zip(candidates[1:], scores[1:], strict=True):
        if s < best_score:
            best, best_score, tied = w, s, 1
        elif s == best_score:
            tied += 1
            if rng.randrange(tied) == 0:
                best = w
    return best


class SmgCacheAwareCurrentPolicy(SmgCacheAwarePolicy):
    """SMG ``cache_aware`` after PR #2341 ("finalize cache-aware routing before
    recording", merged about 2026-08-27), HTTP string-tree path at defaults; read in a
    stored later version of ``model_gateway/src/policies/cache_aware.rs``
    (``select_worker``, ``select_worker_with_text``, ``select_matched_candidate``,
    ``select_final_from_affinity``, ``candidate_requires_spill``, ``is_kv_imbalanced``,
    ``needs_backend_loads``) and smg @11b1fe08 ``least_load.rs``; fact sheet section 1b.

    Tree, stamps, eviction, the ``max_owners`` cut and the ``rate > 0.3`` hit test as in
    :class:`SmgCacheAwarePolicy`; what changed is the final pick, made by
    :func:`select_min_expected_wait` over a candidate set:

    1. hit: the matched owners (at most ``max_owners``) that pass the count gate
       (:meth:`_requires_spill`, in-flight against the mean over all workers);
    2. hit with every owner gated (a spill): the workers that pass the gate, or all
       workers if none does;
    3. miss: all workers (no gate).

    The KV imbalance trigger (``is_kv_imbalanced``) is off at its defaults (both
    thresholds 1.0), and overlap decay and temperature are 0, so every owner scores 1.0
    and the owners are one group. The winner's since-poll credit grows by 1,024 tokens
    (the HTTP path has no token count) and its ``processed`` by one.

    Poll: ``needs_backend_loads`` is true for every configuration, so the WorkerMonitor
    polls each worker every ``load_check_interval_s`` (10 s). Modelled as a snapshot
    taken at the first decision at or after each tick ``0, 10 s, 20 s, ...`` from t = 0
    (passes with no decision between them are one) of what SGLang's ``/v1/loads``
    answers then (:meth:`~prefixcache.replay.ClusterView.engine_load`): per worker its
    waiting requests, uncached waiting tokens and KV use, and its ``gen_throughput``
    only with ``engine_metrics`` (SGLang's ``--enable-metrics``, off by default: without
    it SGLang reports 0 and every worker drains at SMG's 2,000 tokens/s); every credit
    resets to 0. With the rate reported, a worker decoding a large batch drains fast by
    this score and an idle or lightly loaded one slowly (a few tokens per step), so
    between polls the credits of 1,024 tokens a dispatch fill the busy workers first:
    LeastLoad's formula fed SGLang's rate, not an artefact of the simulator. A view
    never scraped (``view.scraped_at`` is ``-inf``: no engine has answered yet) gives no
    report at all, and the pick is then the lowest live in-flight count, random among
    ties.

    Args:
        engine_metrics: the workers run with ``--enable-metrics`` and report their
            generation rate (default: SGLang's default, off).

    Not thread-safe (one simulated router).
    """

    name = "smg-cache-aware-current"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        max_owners: int = 8,
        eviction_interval_s: float = 120.0,
        max_tree_chars: int = 2**26,
        load_check_interval_s: float = SMG_LOAD_CHECK_INTERVAL_S,
        chars_per_token: int = CHARS_PER_TOKEN,
        engine_metrics: bool = False,
    ) -> None:
        super().__init__(
            block_tokens=block_tokens,
            seed=seed,
            max_owners=max_owners,
            eviction_interval_s=eviction_interval_s,
            max_tree_chars=max_tree_chars,
            chars_per_token=chars_per_token,
        )
        self.engine_metrics = engine_metrics
        if not 0 < load_check_interval_s < math.inf:
            raise InvalidRecordError(
                "load_check_interval_s", load_check_interval_s, "must be a finite number > 0"
            )
        self.load_check_interval_s = load_check_interval_s
        self.reports: list[SmgLoadReport | None] = []
        self.credit_tokens: list[int] = []
        self._next_poll = 0.0

    def _start(self, n: int) -> None:
        super()._start(n)
        if len(self.reports) != n:
            self.reports = [None] * n
            self.credit_tokens = [0] * n

    def _poll(self, now: float, view: ClusterView) -> None:
        """The WorkerMonitor's load poll, due at ``0, interval, 2 x interval, ...``: each
        engine's answer becomes its report and every since-poll credit resets
        (``update_loads``: both in one step)."""
        n = view.replicas
        if now < self._next_poll:
            return
        if view.scraped_at > -math.inf:
            self.reports = [self._report(view.engine_load(w)) for w in range(n)]
        self.credit_tokens = [0] * n
        every = self.load_check_interval_s
        self._next_poll += every * (1 + math.floor((now - self._next_poll) / every))

    def _report(self, load: EngineLoad) -> SmgLoadReport:
        """What SMG keeps of an engine's answer; its rate rounded to 0.01 as SGLang sends
        it, or 0 from an engine without ``--enable-metrics``."""
        return SmgLoadReport(
            waiting_reqs=load.waiting_reqs,
            waiting_uncached_tokens=load.waiting_uncached_tokens,
            token_usage=load.token_usage,
            gen_throughput=round(load.gen_throughput, 2) if self.engine_metrics else 0.0,
        )

    def _final_candidates(self, owners: Sequence[int], in_flight: Sequence[int]) -> list[int]:
        """``select_final_from_affinity``: the owners that pass the count gate; if none
        does, the workers that pass it; if none does, all of them. ``owners`` empty (a
        miss): all workers."""
        n = len(in_flight)
        if not owners:
            return list(range(n))
        mean = sum(in_flight) / n
        safe = [o for o in owners if not self._requires_spill(in_flight[o], mean)]
        if safe:
            return safe
        spill = [w for w in range(n) if not self._requires_spill(in_flight[w], mean)]
        return spill or list(range(n))

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        self._start(n)
        self._maybe_evict(now)
        self._poll(now, view)
        chars = block_chars(request, self._bt, self._cpt)
        m = self.tree.match(request.blocks, chars)
        end = self._lookup(request.blocks, m.blocks)
        hit = end is not None and m.rate > self.cache_threshold
        owners = self._candidates(end, n) if hit and end is not None else []
        r = select_min_expected_wait(
            self._final_candidates(owners, view.in_flight),
            reports=self.reports,
            credit_tokens=self.credit_tokens,
            in_flight=view.in_flight,
            rng=self._rng,
        )
        self.credit_tokens[r] += SMG_MEAN_PREFILL_TOKENS
        return self._commit(r, request, chars)
