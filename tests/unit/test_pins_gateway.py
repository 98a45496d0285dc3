"""The example gateway's use of session pins: a pinned session prefers its backend over the
prefix-affinity choice while that backend is within the load guard, and moves when it is not.
The gateway's decision is called directly (no sockets), over backends it learned from
announcements."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.app import Gateway
from examples.gateway.mock_backend import MockBackend
from prefixcache import SessionPins, extract_chain

NOW = 1_000_000.0


def gateway() -> Gateway:
    gw = Gateway(
        membership_transport=None, clock=lambda: NOW, pins=SessionPins(ttl=600, max_entries=10)
    )
    announce = gw.membership.handler()
    for name in ("b1", "b2", "b3"):
        backend = MockBackend(name=name, models=["m"], available_vram=2**30, clock=lambda: NOW)
        backend.address = f"127.0.0.1:{1000 + int(name[1])}"
        announce(backend.node_data().to_json().encode())
    return gw


def test_a_pinned_session_beats_prefix_affinity_within_the_guard() -> None:
    gw = gateway()
    chain = extract_chain("m", "a long shared system prompt " * 20)
    gw.observe("m", chain, "b1")  # the prompt's affinity is b1
    assert gw.pins is not None
    gw.pins.pin("m", "s1", "b3", now=NOW)
    picked, _ = gw.choose("m", chain, NOW, session="s1")
    assert picked is not None and picked.node_id == "b3"
    gw.release("b3")
    # Counterfactual: without the session the affinity wins.
    picked, _ = gw.choose("m", chain, NOW)
    assert picked is not None and picked.node_id == "b1"


def test_an_overloaded_pinned_backend_is_left() -> None:
    gw = gateway()
    assert gw.pins is not None
    gw.pins.pin("m", "s1", "b3", now=NOW)
    gw.in_flight["b3"] = 3  # 3 > 0 + balance_abs_threshold (2): outside the load guard
    picked, _ = gw.choose("m", (), NOW, session="s1")
    assert picked is not None and picked.node_id != "b3"
    gw.in_flight["b3"] = 2  # at the boundary: within the guard again
    picked, _ = gw.choose("m", (), NOW, session="s1")
    assert picked is not None and picked.node_id == "b3"
