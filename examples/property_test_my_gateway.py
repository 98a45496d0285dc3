"""Property-test your own gateway's routing decisions with clusterrouting's strategies.

Run it with pytest (needs the ``test`` extra)::

    .venv/bin/pytest examples/property_test_my_gateway.py

``MyGateway`` stands for your code: it wraps the library's pick with an extra rule (never
send to a replica that reports zero free VRAM unless every replica does). The laws below are
the ones a router should keep whatever its rules; hypothesis searches for a counterexample.
"""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import ReplicaCandidate, pick_with_affinity
from clusterrouting.strategies import candidate_lists, node_ids


class MyGateway:
    """A gateway's routing rule built on the library (the code under test)."""

    def choose(
        self, candidates: list[ReplicaCandidate], warm_node: str | None
    ) -> ReplicaCandidate | None:
        with_memory = [c for c in candidates if c.available_vram > 0]
        return pick_with_affinity(with_memory or candidates, warm_node)


gateway = MyGateway()


@given(candidate_lists(), st.one_of(st.none(), node_ids()))
def test_choice_is_one_of_the_candidates(cands: list[ReplicaCandidate], warm: str | None) -> None:
    got = gateway.choose(cands, warm)
    assert (got is None) == (not cands)
    assert got is None or any(got is c for c in cands)


@given(candidate_lists(min_size=1), st.one_of(st.none(), node_ids()))
def test_never_picks_a_full_replica_when_another_has_memory(
    cands: list[ReplicaCandidate], warm: str | None
) -> None:
    got = gateway.choose(cands, warm)
    assert got is not None
    if any(c.available_vram > 0 for c in cands):
        assert got.available_vram > 0


@given(candidate_lists(min_size=2), st.one_of(st.none(), node_ids()), st.data())
def test_more_load_elsewhere_never_attracts_the_request(
    cands: list[ReplicaCandidate], warm: str | None, data: st.DataObject
) -> None:
    got = gateway.choose(cands, warm)
    i = data.draw(st.integers(0, len(cands) - 1))
    if cands[i] is got:
        return
    busier = list(cands)
    busier[i] = attrs.evolve(cands[i], in_flight=cands[i].in_flight + 5)
    assert gateway.choose(busier, warm) is not busier[i]
