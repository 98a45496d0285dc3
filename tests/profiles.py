"""Hypothesis profiles for this suite, and example counts derived from the active one.

``ci`` (selected by ``CI`` set to anything but ``""``, ``0`` or ``false``, or by
``HYPOTHESIS_PROFILE=ci``) is derandomized and runs 200 examples per test; ``dev`` (the default
for local runs) runs 60. A test that needs more or fewer examples than its neighbours asks for
a fraction of the active profile's count with :func:`scaled_examples`, never for a fixed
number, so one environment variable scales the whole suite.

Not a test module: ``tests/`` is on ``sys.path``; ``conftest.py`` imports it first.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["ci_enabled", "scaled_examples"]


def ci_enabled() -> bool:
    """Whether ``CI`` is set to a true value (anything but empty, ``0`` or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if ci_enabled() else "dev"))


def scaled_examples(fraction: float) -> int:
    """``fraction`` of the active profile's ``max_examples``, rounded, at least 1.

    Read when called: use it in ``@settings(max_examples=scaled_examples(0.5))``, which runs
    after ``conftest.py`` has loaded the profile.

    >>> scaled_examples(0.5) == max(1, round(settings.default.max_examples * 0.5))
    True
    >>> scaled_examples(0.0)
    1
    """
    if fraction < 0:
        raise ValueError(f"fraction must be >= 0, got {fraction!r}")
    return max(1, round(settings.default.max_examples * fraction))
