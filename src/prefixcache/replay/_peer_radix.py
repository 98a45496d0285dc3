"""Peer policies on a character radix tree written from the router's own decisions:
SGLang router / SMG ``cache_aware`` before and after SMG PR #2161.

Every random choice draws from one ``random.Random(seed)`` per policy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from prefixcache.replay._peer_base import CHARS_PER_TOKEN, CharTree, Peer, block_chars
from prefixcache.replay._trace import Request
from prefixcache.replay._view import ClusterView

__all__ = [
    "SglangCacheAwarePolicy",
    "SmgCacheAwarePolicy",
]


# --- 1. SGLang / SMG cache_aware -----------------------------------------------------


class SglangCacheAwarePolicy(Peer):
    """SGLang router / SMG ``cache_aware``, HTTP path, as of SMG @73da68ca
    (``model_gateway/src/policies/cache_aware.rs``, ``crates/kv_index/src/string_tree.rs``;
    CLI defaults in ``model_gateway/src/main.rs``); fact sheet section 1.

    State: one character tree written at dispatch from the router's own decisions; load
    is the router's in-flight count plus ``processed`` (requests routed here).
    Decision: (1) if ``max - min > balance_abs_threshold`` and ``max > balance_rel_threshold
    x min`` over in-flight, the min-load worker (least ``(in_flight, processed, index)``);
    (2) otherwise walk the tree: ``rate = matched chars / text chars``; if ``rate >
    cache_threshold`` (strict) the owner of the deepest matched node (SMG's cached
    ``last_tenant``; if the owner was evicted there, the lowest-index remaining tenant,
    which then stays the owner), else the min-load worker (``miss_fallback="min_load"``)
    or, before sglang PR #14650, the tenant with the smallest tree
    (``miss_fallback="smallest_tree"``). The text is inserted for the pick.
    Stamps (``string_tree.rs``): one operation counter, starting after one insert per
    worker at registration; a lookup takes one value and, when it is a multiple of 8,
    stamps the deepest matched node for the resolved owner; an insert takes one and
    stamps the blocks it creates and its last block (path blocks it joins get 0, blocks
    it already held keep theirs).
    Eviction (``evict_tenant_by_size``): every ``eviction_interval_s`` from the first
    request (the eviction thread sleeps first, then runs), (tenant, leaf) entries go
    least recently stamped first, a parent becoming a leaf when its last child with that
    tenant goes, until each tenant holds at most ``max_tree_chars``.
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
        fixed grid from the first call; passes with no insert between them are one."""
        every = self.eviction_interval_s
        if self._next_evict is None:
            self._next_evict = now + every
        elif now >= self._next_evict:
            self.tree.evict(self.max_tree_chars, per_tenant=self._per_tenant)
            self._next_evict += every * (1 + math.floor((now - self._next_evict) / every))

    def _start(self, n: int) -> None:
        """First call (or a new replica count): workers registered, one insert each."""
        if len(self.processed) != n:
            self.processed = [0] * n
            self.tree.op = max(self.tree.op, n)

    def _lookup(self, blocks: Sequence[int], k: int) -> int | None:
        """The match's owner of the deepest matched block (``None`` with no match), and
        its one-in-eight stamp refresh (``match_prefix_with_counts``)."""
        tree = self.tree
        stamp = tree.next_stamp()
        if k == 0:
            return None
        b = blocks[k - 1]
        tenants = tree.nodes[b]
        owner = tree.owner[b]
        if owner not in tenants:
            owner = min(tenants)
            tree.owner[b] = owner
        if stamp & 7 == 0:
            tenants[owner] = stamp
        return owner

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
        owner = self._lookup(request.blocks, m.blocks)
        if owner is not None and m.rate > self.cache_threshold:
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

    No global switch. Hit (``rate > 0.3``): among up to 8 tenants of the deepest matched
    node (lowest indices), the lowest in-flight, random among ties; spill gate
    (``gate_selected_candidate``): if that pick has ``in_flight > 1.5 x mean`` and ``>
    mean + 64`` (both strict, mean over all workers), the min-load worker. Miss: the
    min-load worker ``(in_flight, processed, index)``. The text is inserted for the final
    pick (a hot prefix gains a second owner). Stamps as in the parent class;
    ``max_tree_chars`` is one budget for the whole tree (per model,
    ``evict_tenant_by_size`` at @f8daa883).
    """

    name = "smg-cache-aware"

    def __init__(
        self,
        *,
        block_tokens: int,
        seed: int = 0,
        max_owners: int = 8,
        chars_per_token: int = CHARS_PER_TOKEN,
    ) -> None:
        super().__init__(block_tokens=block_tokens, chars_per_token=chars_per_token)
        self._rng = random.Random(seed)
        self._per_tenant = False
        self.max_owners = max_owners
        self.spill_rel = 1.5
        self.spill_abs = 64

    def choose(self, i: int, request: Request, now: float, view: ClusterView) -> int:
        n = view.replicas
        self._start(n)
        self._maybe_evict(now)
        inf = view.in_flight
        chars = block_chars(request, self._bt, self._cpt)
        m = self.tree.match(request.blocks, chars)
        k = m.blocks
        self._lookup(request.blocks, k)
        # Owners gone from the pool are not candidates (none left: a miss).
        owners = [o for o in sorted(self.tree.nodes[request.blocks[k - 1]]) if o < n] if k else []
        if owners and m.rate > self.cache_threshold:
            owners = owners[: self.max_owners]
            least = min(inf[o] for o in owners)
            r = self._rng.choice([o for o in owners if inf[o] == least])
            mean = sum(inf) / n
            if inf[r] > self.spill_rel * mean and inf[r] > mean + self.spill_abs:
                r = self._min_load(view)
        else:
            r = self._min_load(view)
        return self._commit(r, request, chars)
