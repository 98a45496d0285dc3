"""The example gateway's membership table is bounded: a flood of invented node ids cannot
grow it (or the per-request candidate scan) without limit; silent nodes make room."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.membership import DEFAULT_MAX_NODES, Membership
from prefixcache.testing import ManualClock


def announce(m: Membership, node_id: str) -> None:
    m.handle_announcement(json.dumps({"ID": node_id, "Name": node_id}).encode())


def test_the_table_is_capped_and_silent_nodes_make_room() -> None:
    clock = ManualClock(0.0)
    m = Membership(max_nodes=3, forget_after=300.0, clock=clock)
    for name in ("a", "b", "c"):
        announce(m, name)
    m.mark_failed("a", at=0.0, reason="down")
    for i in range(1000):  # the flood: before, every one of them was kept
        announce(m, f"forged-{i}")
    assert [n.id for n in m.nodes()] == ["a", "b", "c"] and m.dropped_full == 1000
    clock.advance(200.0)
    announce(m, "b")  # a known node always re-announces
    clock.advance(150.0)  # a and c silent for 350 s, b for 150 s
    announce(m, "d")
    assert [n.id for n in m.nodes()] == ["b", "d"]  # a and c forgotten, a's mark too
    assert m.failure("a") is None
    assert Membership().max_nodes == DEFAULT_MAX_NODES
