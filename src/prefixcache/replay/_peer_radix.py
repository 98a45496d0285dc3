"""Peer policies on a character radix tree written from the router's own decisions:
SGLang router / SMG ``cache_aware`` before and after SMG PR #2161.

Every random choice draws from one ``random.Random(seed)`` per policy; the order of a
node's tenants in SMG's hashed map is a fixed function of the seed (:func:`map_rank`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from clusterrouting import InvalidRecordError
from prefixcache.replay._peer_base import CHARS_PER_TOKEN, CharTree, Peer, block_chars
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "SglangCacheAwarePolicy",
    "SmgCacheAwarePolicy",
    "map_rank",
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
            mean = sum(inf) / n
            if inf[r] > self.spill_rel * mean and inf[r] > mean + self.spill_abs:
                r = self._min_load(view)
        else:
            r = self._min_load(view)
        return self._commit(r, request, chars)
