"""prefixcache.kvevents: the public surface, lazy optional imports, the cost-policy feed."""

from __future__ import annotations

import subprocess
import sys

import pytest

import prefixcache.kvevents as kv
from clusterrouting import InvalidRecordError
from prefixcache import CostCandidate, KvCacheMirror, ReplicaKey, pick_lowest_cost
from prefixcache.kvevents import (
    BlockStored,
    CacheSource,
    EventBatch,
    KvResidency,
    cache_source_of,
    fill_cached_tokens,
    rank_endpoints,
)

A, B, C = ReplicaKey("a"), ReplicaKey("b"), ReplicaKey("c")
TOKENS = list(range(1, 33))  # 8 blocks of 4


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert kv.__all__ == sorted(kv.__all__)
    for name in kv.__all__:
        assert getattr(kv, name) is not None


def test_importing_kvevents_loads_neither_msgspec_nor_zmq() -> None:
    # Hosts that only feed KvResidency (a simulator) need no optional dependency.
    code = (
        "import sys, prefixcache.kvevents as k; k.KvResidency(); "
        "print('msgspec' in sys.modules, 'zmq' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_rank_endpoints_one_port_per_rank() -> None:
    assert rank_endpoints("tcp://h:5557", 3) == ["tcp://h:5557", "tcp://h:5558", "tcp://h:5559"]
    with pytest.raises(InvalidRecordError):
        rank_endpoints("ipc:///tmp/x", 1)
    with pytest.raises(InvalidRecordError):
        rank_endpoints("tcp://h:65535", 2)


def _residency_with(a_blocks: int, *, degrade_b: bool) -> KvResidency:
    res = KvResidency(block_tokens=4, clock=lambda: 0.0)
    stored = BlockStored(
        block_hashes=list(range(a_blocks)), token_ids=TOKENS[: 4 * a_blocks], block_size=4
    )
    res.apply(A, 0, EventBatch(ts=0.0, events=[stored]), model="m")
    # b's first batch is seq 5: its record is degraded (batches 0..4 unseen).
    res.apply(B, 5 if degrade_b else 0, EventBatch(ts=0.0, events=[stored]), model="m")
    return res


def test_exact_replicas_take_events_and_the_others_the_mirror() -> None:
    res = _residency_with(2, degrade_b=True)
    chain = res.chain("m", TOKENS)
    mirror = KvCacheMirror()
    mirror.observe(A, chain[:6])  # the mirror is wrong about a: the events win
    mirror.observe(B, chain[:5])
    mirror.observe(C, chain[:1])
    cands = fill_cached_tokens(
        [CostCandidate(key=k, in_flight=1) for k in (A, B, C)],
        prompt_tokens=len(TOKENS),
        chain=chain,
        residency=res,
        mirror=mirror,
    )
    assert [(c.key, c.cached_tokens, c.cached_source) for c in cands] == [
        (A, 8, CacheSource.EVENTS),
        (B, 20, CacheSource.MIRROR),  # degraded: the mirror's 5 blocks
        (C, 4, CacheSource.MIRROR),  # unknown to the residency
    ]
    assert all(c.in_flight == 1 for c in cands)
    picked = pick_lowest_cost(cands, prompt_tokens=len(TOKENS))
    assert (picked, cache_source_of(cands, picked)) == (B, CacheSource.MIRROR)


def test_an_exact_record_overrides_a_stale_mirror_after_eviction() -> None:
    # The router dispatched the prompt to a, but a evicted it (exact, 0 blocks): the policy
    # must not send the next turn there for its cache.
    res = KvResidency(block_tokens=4, clock=lambda: 0.0)
    res.apply(A, 0, EventBatch(ts=0.0, events=[]), model="m")
    chain = res.chain("m", TOKENS)
    mirror = KvCacheMirror()
    mirror.observe(A, chain)
    cands = fill_cached_tokens(
        [CostCandidate(key=A, queued_tokens=100), CostCandidate(key=B)],
        prompt_tokens=32,
        chain=chain,
        residency=res,
        mirror=mirror,
    )
    assert [c.cached_tokens for c in cands] == [0, 0]
    assert pick_lowest_cost(cands, prompt_tokens=32) == B


def test_without_residency_everything_comes_from_the_mirror() -> None:
    mirror = KvCacheMirror()
    mirror.observe(A, (1, 2, 3))
    cands = fill_cached_tokens(
        [CostCandidate(key=A)], prompt_tokens=100, chain=(1, 2, 9), residency=None,
        mirror=mirror, mirror_block_tokens=16,
    )  # fmt: skip
    assert (cands[0].cached_tokens, cands[0].cached_source) == (32, CacheSource.MIRROR)
    with pytest.raises(InvalidRecordError, match="mirror_block_tokens"):
        fill_cached_tokens([], prompt_tokens=1, chain=(), residency=None, mirror=mirror)
    assert cache_source_of(cands, None) is None


def test_cost_candidate_source_defaults_to_mirror_and_validates() -> None:
    assert CostCandidate(key=A).cached_source is CacheSource.MIRROR
    with pytest.raises(InvalidRecordError, match="cached_source"):
        CostCandidate(key=A, cached_source="events")  # type: ignore[arg-type]
