"""Hypothesis strategies for testing prefix-cache routing (needs the ``test`` extra).

Use them to property-test your own router or to check your own provider against
:class:`prefixcache.reference.ReferenceIndex`::

    from hypothesis import given
    from prefixcache import Index
    from prefixcache.reference import ReferenceIndex, run_operations
    from prefixcache.strategies import operation_sequences

    @given(operation_sequences())
    def test_my_provider_agrees(ops):
        assert run_operations(MyProvider(), ops) == run_operations(ReferenceIndex(), ops)

Chains are drawn as paths in a small tree of block hashes, so different draws share
prefixes the way real prompts do (a common system prompt, then divergence, never
re-convergence). Models and node ids come from small pools so that collisions, ties and
shared owners, where routing bugs live, are common. Every strategy yields valid values only.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st
from xxhash import xxh64_intdigest

from prefixcache._config import DEFAULT_CONFIG, Config
from prefixcache._decision import PrefixDecision
from prefixcache._events import InvalidateEvent, ObserveEvent
from prefixcache._types import Candidate, ReplicaKey
from prefixcache.reference import (
    Advance,
    Decide,
    Evict,
    Invalidate,
    InvalidateNode,
    Observe,
    Operation,
)

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_NODE_IDS",
    "advances",
    "block_hashes",
    "candidate_lists",
    "candidates",
    "chains",
    "events",
    "invalidate_events",
    "observe_events",
    "operation_sequences",
    "operations",
    "prefix_decisions",
    "replica_keys",
]

#: The small pool of model names the strategies draw from by default.
DEFAULT_MODELS: tuple[str, ...] = ("model-a", "model-b")
#: The small pool of node ids the strategies draw from by default.
DEFAULT_NODE_IDS: tuple[str, ...] = ("node-a", "node-b", "node-c")


def block_hashes() -> st.SearchStrategy[int]:
    """Any block hash: an int in ``[0, 2**64)``."""
    return st.integers(min_value=0, max_value=2**64 - 1)


def _path_to_chain(path: Sequence[int], salt: int) -> tuple[int, ...]:
    prev = salt
    out = []
    for branch in path:
        prev = xxh64_intdigest(prev.to_bytes(8, "little") + branch.to_bytes(2, "little"))
        out.append(prev)
    return tuple(out)


def chains(
    *, min_size: int = 0, max_size: int = 8, branching: int = 3, salt: int = 0
) -> st.SearchStrategy[tuple[int, ...]]:
    """Chained block hashes that share prefixes realistically.

    A chain is a path of ``min_size..max_size`` branch choices (each in
    ``range(branching)``) in one fixed tree, hashed like :func:`prefixcache.extract_chain`
    (``h_i = XXH64(h_{i-1} as 8 LE bytes + branch as 2 LE bytes)``, ``h_{-1} = salt``).
    Two draws with the same first ``k`` choices share exactly their first ``k`` hashes, so
    with the default ``branching=3`` most pairs of draws share a prefix. Shrinks towards
    short chains of branch 0.
    """
    if not 1 <= branching <= 65536:
        raise ValueError(f"branching={branching!r}: must be in [1, 65536]")
    return st.lists(st.integers(0, branching - 1), min_size=min_size, max_size=max_size).map(
        lambda path: _path_to_chain(path, salt)
    )


def replica_keys(
    node_ids: Sequence[str] = DEFAULT_NODE_IDS, *, max_replica: int = 1
) -> st.SearchStrategy[ReplicaKey]:
    """``ReplicaKey`` over ``node_ids`` with replicas ``0..max_replica``."""
    return st.builds(ReplicaKey, st.sampled_from(tuple(node_ids)), st.integers(0, max_replica))


def candidates(
    keys: st.SearchStrategy[ReplicaKey] | None = None, *, max_in_flight: int = 8
) -> st.SearchStrategy[Candidate]:
    """``Candidate`` records with in-flight counts in ``0..max_in_flight``."""
    return st.builds(
        Candidate, keys if keys is not None else replica_keys(), st.integers(0, max_in_flight)
    )


def candidate_lists(
    *,
    min_size: int = 0,
    max_size: int = 6,
    keys: st.SearchStrategy[ReplicaKey] | None = None,
    max_in_flight: int = 8,
) -> st.SearchStrategy[list[Candidate]]:
    """Lists of candidates with **distinct** keys (as a router builds them)."""
    return st.lists(
        candidates(keys, max_in_flight=max_in_flight),
        min_size=min_size,
        max_size=max_size,
        unique_by=lambda c: c.key,
    )


def prefix_decisions(
    keys: Sequence[ReplicaKey], *, thresholds: Sequence[float] = (DEFAULT_CONFIG.min_prefix_match,)
) -> st.SearchStrategy[PrefixDecision]:
    """Decisions about ``keys`` as an index could return them (plus some it could not).

    ``hot`` is one of ``keys``, ``None`` or a stranger key; ``match_ratio`` is 0.0 without a
    hot key, else any ratio in [0, 1] with ``thresholds`` (exact boundaries) favoured;
    ``cold_order`` is a permutation of ``keys``, sometimes with strangers mixed in or keys
    left out (a stale decision).
    """
    pool = tuple(keys)
    stranger = ReplicaKey("stranger-node", 0)

    @st.composite
    def build(draw: st.DrawFn) -> PrefixDecision:
        hot = draw(st.sampled_from((None, stranger, *pool)))
        ratio = 0.0
        if hot is not None:
            ratio = draw(
                st.one_of(
                    st.sampled_from((0.0, 1.0, *thresholds)),
                    st.floats(0.0, 1.0, allow_nan=False),
                )
            )
        order = list(draw(st.permutations(pool)))
        drop_one: bool = draw(st.booleans())
        if order and drop_one:
            del order[draw(st.integers(0, len(order) - 1))]
        if draw(st.booleans()):
            order.insert(draw(st.integers(0, len(order))), stranger)
        return PrefixDecision(hot, ratio, tuple(order))

    return build()


def observe_events(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    node_ids: Sequence[str] = DEFAULT_NODE_IDS,
    max_replica: int = 1,
    max_chain: int = 8,
) -> st.SearchStrategy[ObserveEvent]:
    """``ObserveEvent`` values (non-empty chains from :func:`chains`)."""
    return st.builds(
        ObserveEvent,
        model=st.sampled_from(tuple(models)),
        chain=chains(min_size=1, max_size=max_chain),
        node_id=st.sampled_from(tuple(node_ids)),
        replica=st.integers(0, max_replica),
    )


def invalidate_events(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    node_ids: Sequence[str] = DEFAULT_NODE_IDS,
    max_replica: int = 1,
) -> st.SearchStrategy[InvalidateEvent]:
    """``InvalidateEvent`` values: one replica, or the whole node (``replica=-1``)."""
    return st.builds(
        InvalidateEvent,
        model=st.sampled_from(tuple(models)),
        node_id=st.sampled_from(tuple(node_ids)),
        replica=st.integers(-1, max_replica),
    )


def events(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    node_ids: Sequence[str] = DEFAULT_NODE_IDS,
    max_replica: int = 1,
) -> st.SearchStrategy[ObserveEvent | InvalidateEvent]:
    """Sync events as peers publish them: observes (3 in 4) and invalidates."""
    obs = observe_events(models=models, node_ids=node_ids, max_replica=max_replica)
    inv = invalidate_events(models=models, node_ids=node_ids, max_replica=max_replica)
    return st.one_of(obs, obs, obs, inv)


def advances(config: Config = DEFAULT_CONFIG) -> st.SearchStrategy[float]:
    """Clock steps (seconds, >= 0) that hit the expiry and decay boundaries of ``config``.

    Mostly exact boundary steps (0, 1, ``ttl``, ``ttl / 2``, ``half_life``...), so that
    sums of steps land exactly on ``age == ttl``; sometimes any float up to ``2 * ttl``.
    """
    ttl = config.ttl
    exact = sorted({0.0, 0.5, 1.0, ttl / 4, ttl / 2, ttl, ttl + 1.0, max(config.half_life, 0.0)})
    return st.one_of(
        st.sampled_from(exact),
        st.floats(0.0, 2 * ttl, allow_nan=False, allow_infinity=False),
    )


def operations(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    node_ids: Sequence[str] = DEFAULT_NODE_IDS,
    max_replica: int = 1,
    max_chain: int = 8,
    config: Config = DEFAULT_CONFIG,
) -> st.SearchStrategy[Operation]:
    """One provider operation (see :mod:`prefixcache.reference`), observes most often.

    Observes include the empty chain and the empty node id (both ignored by the index);
    decides use distinct candidate keys.
    """
    model = st.sampled_from(tuple(models))
    keys = replica_keys((*node_ids, ""), max_replica=max_replica)
    real_keys = replica_keys(node_ids, max_replica=max_replica)
    chain = chains(max_size=max_chain)
    return st.one_of(
        st.builds(Observe, model=model, chain=chain, key=keys),
        st.builds(Observe, model=model, chain=chain, key=real_keys),
        st.builds(
            Decide,
            model=model,
            chain=chain,
            candidates=candidate_lists(keys=real_keys),
        ),
        st.builds(Invalidate, model=model, key=real_keys),
        st.builds(InvalidateNode, model=model, node_id=st.sampled_from(tuple(node_ids))),
        st.builds(Evict),
        st.builds(Advance, seconds=advances(config)),
    )


def operation_sequences(
    *,
    min_size: int = 0,
    max_size: int = 40,
    models: Sequence[str] = DEFAULT_MODELS,
    node_ids: Sequence[str] = DEFAULT_NODE_IDS,
    config: Config = DEFAULT_CONFIG,
) -> st.SearchStrategy[list[Operation]]:
    """Lists of :func:`operations` to feed :func:`prefixcache.reference.run_operations`."""
    return st.lists(
        operations(models=models, node_ids=node_ids, config=config),
        min_size=min_size,
        max_size=max_size,
    )
