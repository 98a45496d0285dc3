"""examples/sync_over_nats.py runs end to end against a nats-server it starts itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sync_over_nats.py"


@pytest.mark.integration
def test_two_routers_share_affinity_over_nats() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # Counterfactual: without sync, router B would answer "cold" and pick by load.
    assert lines[0] == "router A, turn 1: cold (cached ratio 0.00) -> gpu-2"
    assert lines[1] == "router B, turn 2: hot (cached ratio 0.50) -> gpu-2"
    assert "same replica on both routers: True" in lines
    assert "digests agree: True" in lines
