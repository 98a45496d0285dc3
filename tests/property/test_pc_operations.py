"""Index agrees with ReferenceIndex on operation sequences from ``prefixcache.strategies``,
through the public ``run_operations`` helper (the way a user checks a provider of theirs)."""

from __future__ import annotations

from hypothesis import given, settings
from profiles import scaled_examples

from prefixcache import Config, Index, PrefixDecision
from prefixcache.reference import (
    Decide,
    Observe,
    Operation,
    ReferenceIndex,
    run_operations,
)
from prefixcache.strategies import operation_sequences

CONFIG = Config(ttl=60.0, half_life=20.0)


@settings(max_examples=scaled_examples(0.75))
@given(operation_sequences(config=CONFIG, max_size=40))
def test_index_backends_agree_with_reference_on_operation_sequences(
    ops: list[Operation],
) -> None:
    expected = run_operations(ReferenceIndex(CONFIG), ops, start=1_000.0)
    for backend in ("dict", "datrie"):
        got = run_operations(Index(CONFIG, backend=backend), ops, start=1_000.0)
        assert len(got) == len(expected)
        for op, g, e in zip(ops, got, expected, strict=True):
            if isinstance(g, PrefixDecision) and isinstance(e, PrefixDecision):
                assert (g.hot, g.match_ratio, g.cold_order) == (
                    e.hot,
                    e.match_ratio,
                    e.cold_order,
                ), (
                    backend,
                    op,
                )
            else:
                assert g == e, (backend, op, g, e)


@given(operation_sequences(config=CONFIG, max_size=20))
def test_operation_sequences_are_well_formed(ops: list[Operation]) -> None:
    results = run_operations(ReferenceIndex(CONFIG), ops)
    for op, r in zip(ops, results, strict=True):
        if isinstance(op, Observe):
            assert isinstance(r, bool)
        elif isinstance(op, Decide):
            assert isinstance(r, PrefixDecision)
            assert sorted(r.cold_order) == sorted(c.key for c in op.candidates)
        else:
            assert r is None
