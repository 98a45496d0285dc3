"""Feeding the cost policy from engine events: exact replicas from :class:`KvResidency`,
the others from the router's :class:`~prefixcache.KvCacheMirror`.

:func:`prefixcache.pick_lowest_cost` stays the one cost function; this only fills its
inputs' ``cached_tokens`` and says where each value came from (``cached_source``).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._cost import CacheSource, CostCandidate
from prefixcache._mirror import KvCacheMirror
from prefixcache._types import ReplicaKey
from prefixcache.kvevents._outcomes import ResidencyState
from prefixcache.kvevents._residency import KvResidency

__all__ = ["cache_source_of", "fill_cached_tokens"]


def fill_cached_tokens(
    candidates: Sequence[CostCandidate],
    *,
    prompt_tokens: int,
    chain: Sequence[int],
    residency: KvResidency | None,
    mirror: KvCacheMirror | None = None,
    mirror_chain: Sequence[int] | None = None,
    mirror_block_tokens: int | None = None,
) -> list[CostCandidate]:
    """``candidates`` with ``cached_tokens`` and ``cached_source`` filled in.

    Rules, per candidate:

    1. its residency state is ``exact``: ``cached_tokens = min(prompt_tokens,
       residency.overlap_chain(chain)[key] * residency.block_tokens)``, source ``events``;
    2. otherwise (``degraded``, ``unknown``, or no ``residency``): from ``mirror``,
       ``min(prompt_tokens, mirror.matched_blocks(key, mirror_chain) *
       mirror_block_tokens)``, source ``mirror`` (0 without a mirror).

    Every other field is kept. Pass the result to :func:`prefixcache.pick_lowest_cost`;
    the decision's source is :func:`cache_source_of` the chosen key.

    Args:
        candidates: the replicas, with load fields already set.
        prompt_tokens: the request's prompt length in tokens (>= 0).
        chain: the request's chain at ``residency.block_tokens``
            (``residency.chain(model, token_ids, ...)``).
        residency: the event-fed record, or ``None``.
        mirror: the router's dispatch mirror, or ``None``.
        mirror_chain: the chain the mirror is keyed by (default ``chain``).
        mirror_block_tokens: tokens per mirror block (default ``residency.block_tokens``;
            required without a residency).

    Returns:
        New candidates, in the same order.

    Raises:
        InvalidRecordError: ``prompt_tokens`` not an int >= 0; no block size for the mirror.

    Complexity: one :meth:`KvResidency.overlap_chain` walk plus one mirror match per
    non-exact candidate.

    >>> from prefixcache import ReplicaKey
    >>> from prefixcache.kvevents import BlockStored, EventBatch
    >>> res = KvResidency(block_tokens=2)
    >>> a, b = ReplicaKey("a"), ReplicaKey("b")
    >>> stored = BlockStored(block_hashes=[1], token_ids=[5, 6], block_size=2)
    >>> _ = res.apply(a, 0, EventBatch(ts=0.0, events=[stored]), model="m")
    >>> mirror = KvCacheMirror()
    >>> chain = res.chain("m", [5, 6, 7, 8])
    >>> mirror.observe(b, chain)
    >>> cands = fill_cached_tokens([CostCandidate(key=a), CostCandidate(key=b)],
    ...     prompt_tokens=4, chain=chain, residency=res, mirror=mirror)
    >>> [(c.cached_tokens, str(c.cached_source)) for c in cands]
    [(2, 'events'), (4, 'mirror')]
    """
    if type(prompt_tokens) is not int or prompt_tokens < 0:
        raise InvalidRecordError("prompt_tokens", prompt_tokens, "must be an int >= 0")
    if mirror_block_tokens is None:
        if residency is None:
            if mirror is not None:
                raise InvalidRecordError(
                    "mirror_block_tokens", None, "is required when there is no residency"
                )
            mirror_block_tokens = 1
        else:
            mirror_block_tokens = residency.block_tokens
    mchain = chain if mirror_chain is None else mirror_chain
    exact: list[ReplicaKey] = []
    if residency is not None:
        exact = [c.key for c in candidates if residency.state(c.key) is ResidencyState.EXACT]
    held = residency.overlap_chain(chain, exact) if residency is not None and exact else {}
    out: list[CostCandidate] = []
    for c in candidates:
        blocks = held.get(c.key)
        if blocks is not None:
            assert residency is not None
            tokens = blocks * residency.block_tokens
            source = CacheSource.EVENTS
        else:
            tokens = 0 if mirror is None else mirror.matched_blocks(c.key, mchain)
            tokens *= mirror_block_tokens
            source = CacheSource.MIRROR
        out.append(attrs.evolve(c, cached_tokens=min(prompt_tokens, tokens), cached_source=source))
    return out


def cache_source_of(
    candidates: Sequence[CostCandidate], key: ReplicaKey | None
) -> CacheSource | None:
    """The ``cached_source`` of the candidate with ``key`` (the source a decision used), or
    ``None`` when ``key`` is ``None`` or not among ``candidates``."""
    for c in candidates:
        if c.key == key:
            return c.cached_source
    return None
