"""Hypothesis strategies for property-testing routing decisions (needs the ``test`` extra).

Use them to state laws about your own gateway's decisions, for example::

    from hypothesis import given
    from clusterrouting.strategies import candidate_lists

    @given(candidate_lists(min_size=1))
    def test_my_router_picks_a_member(cands):
        assert my_router.pick(cands) in cands

Node ids are drawn from a small pool by default so that duplicates and ties, where routing
bugs live, are common. Every strategy yields only valid records.
"""

from __future__ import annotations

import datetime as _dt

from hypothesis import strategies as st

from clusterrouting._records import NodeData, ReplicaCandidate

__all__ = [
    "DEFAULT_NODE_IDS",
    "candidate_lists",
    "node_data",
    "node_ids",
    "replica_candidates",
    "rfc3339_timestamps",
    "wall_clock_times",
]

#: The small pool of node ids the strategies draw from by default.
DEFAULT_NODE_IDS: tuple[str, ...] = ("node-a", "node-b", "node-c", "node-d", "node-e")

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def node_ids(pool: tuple[str, ...] = DEFAULT_NODE_IDS) -> st.SearchStrategy[str]:
    """Node ids from ``pool`` (small on purpose: duplicates are where bugs hide)."""
    return st.sampled_from(pool)


def wall_clock_times(*, min_year: int = 2000, max_year: int = 2100) -> st.SearchStrategy[float]:
    """Wall-clock float seconds since the Unix epoch between two years (any float there)."""
    lo = (_dt.datetime(min_year, 1, 1, tzinfo=_dt.UTC) - _EPOCH).total_seconds()
    hi = (_dt.datetime(max_year, 1, 1, tzinfo=_dt.UTC) - _EPOCH).total_seconds()
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


def rfc3339_timestamps() -> st.SearchStrategy[str]:
    """RFC 3339 strings as peers write them: 0-9 fraction digits, ``Z`` or a numeric offset."""

    @st.composite
    def build(draw: st.DrawFn) -> str:
        y = draw(st.integers(1971, 9998))
        mo = draw(st.integers(1, 12))
        d = draw(st.integers(1, 28))
        h, mi, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
        digits = draw(st.integers(0, 9))
        frac = "".join(
            draw(st.lists(st.sampled_from("0123456789"), min_size=digits, max_size=digits))
        )
        zone = draw(
            st.one_of(
                st.just("Z"),
                st.builds(
                    lambda sign, oh, om: f"{sign}{oh:02d}:{om:02d}",
                    st.sampled_from("+-"),
                    st.integers(0, 23),
                    st.integers(0, 59),
                ),
            )
        )
        text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
        return text + (f".{frac}" if frac else "") + zone

    return build()


def replica_candidates(
    *,
    ids: st.SearchStrategy[str] | None = None,
    max_in_flight: int = 16,
    max_replica_index: int = 3,
    max_vram: int = 80 * 2**30,
) -> st.SearchStrategy[ReplicaCandidate]:
    """Valid :class:`ReplicaCandidate` records.

    Args:
        ids: strategy for node ids (default :func:`node_ids`).
        max_in_flight: upper bound of ``in_flight`` (small values make ties common).
        max_replica_index: upper bound of ``replica_index``.
        max_vram: upper bound of ``available_vram`` in bytes.
    """
    return st.builds(
        ReplicaCandidate,
        node_id=ids if ids is not None else node_ids(),
        address=st.sampled_from(("", "10.0.0.1:8080", "10.0.0.2:8080")),
        replica_index=st.integers(0, max_replica_index),
        in_flight=st.integers(0, max_in_flight),
        last_used=st.one_of(st.none(), st.integers(0, 20).map(float), wall_clock_times()),
        available_vram=st.one_of(st.just(0), st.integers(0, max_vram)),
    )


def candidate_lists(
    *,
    min_size: int = 0,
    max_size: int = 8,
    unique_node_ids: bool = False,
    elements: st.SearchStrategy[ReplicaCandidate] | None = None,
) -> st.SearchStrategy[list[ReplicaCandidate]]:
    """Lists of candidates, as a gateway would pass them to a policy.

    Args:
        min_size: fewest candidates.
        max_size: most candidates.
        unique_node_ids: one candidate per node id (as :func:`build_candidates` yields for
            distinct peers).
        elements: strategy for each candidate (default :func:`replica_candidates`).
    """
    elems = elements if elements is not None else replica_candidates()
    return st.lists(
        elems,
        min_size=min_size,
        max_size=max_size,
        unique_by=(lambda c: c.node_id) if unique_node_ids else None,
    )


def node_data(
    *,
    ids: st.SearchStrategy[str] | None = None,
    last_seen: st.SearchStrategy[float | None] | None = None,
    models: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[NodeData]:
    """Valid :class:`NodeData` records (any text in the free-form fields).

    Args:
        ids: strategy for ``id`` (default :func:`node_ids`).
        last_seen: strategy for ``last_seen`` (default: ``None`` or :func:`wall_clock_times`).
        models: strategy for one model name (default: a few names, so overlap is common).
    """
    return st.builds(
        NodeData,
        name=st.text(max_size=12),
        id=ids if ids is not None else node_ids(),
        tunnel_address=st.text(max_size=20),
        service_id=st.text(max_size=12),
        last_seen=last_seen if last_seen is not None else st.one_of(st.none(), wall_clock_times()),
        available_vram=st.integers(0, 2**64 - 1),
        models=st.lists(
            models if models is not None else st.sampled_from(("llama-3-8b", "qwen-7b", "m")),
            max_size=3,
        ).map(tuple),
    )
