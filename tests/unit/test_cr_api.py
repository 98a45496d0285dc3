"""The public API is explicit, and clusterrouting stays the leaf of the layering."""

from __future__ import annotations

import subprocess
import sys

import clusterrouting


def test_all_is_sorted_unique_and_importable() -> None:
    names = clusterrouting.__all__
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(clusterrouting, name), name


def test_spec_names_are_public() -> None:
    for name in (
        "ReplicaCandidate",
        "NodeData",
        "NODE_ONLINE_WINDOW",
        "pick_best_replica",
        "pick_with_affinity",
        "build_candidates",
        "within_load_guard",
        "ClusterRoutingError",
    ):
        assert name in clusterrouting.__all__


def test_import_loads_neither_datrie_nor_numpy_nor_prefixcache() -> None:
    code = (
        "import sys, clusterrouting, clusterrouting.strategies\n"
        "bad = [m for m in ('datrie', 'numpy', 'prefixcache', 'xxhash') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
