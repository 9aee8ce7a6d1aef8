"""Shared test configuration.

Hypothesis profiles: ``ci`` is derandomized with bounded examples and no
deadline (CI machines are shared and slow); ``dev`` explores more. Select one
with ``HYPOTHESIS_PROFILE`` (default: ``ci``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
