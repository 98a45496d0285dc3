"""Suite-wide configuration: hypothesis profiles.

``ci`` (selected by ``CI=true`` or ``HYPOTHESIS_PROFILE=ci``) is derandomized and runs more
examples; ``dev`` is the quick default for local runs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)
