"""Under CI a skip is a failure: a skipped test hides a broken environment.

Not a test module: ``conftest.py`` imports these hooks, so they apply to every test and every
collected module. Outside CI (see ``profiles.ci_enabled``) skips are reported as usual. An
expected failure (``xfail``) is not a skip and is left alone.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest
from profiles import ci_enabled

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]


def _fail_if_skipped(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and ci_enabled()) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix(
        "Skipped: "
    )
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, which must run every test: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_skipped(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _fail_if_skipped(report)
    return report
