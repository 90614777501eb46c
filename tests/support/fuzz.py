"""The settings of the property tests that hunt for bad inputs (tests/frontends/test_fuzz_*.py): derandomized in
the suite, so that CI is repeatable; ``MINDSERVE_FUZZ_PROFILE=explore`` draws 2000 new examples per test instead."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz_settings(examples: int) -> settings:
    """``examples`` derandomized examples per test (the suite), or 2000 random ones when exploring."""
    explore = os.environ.get("MINDSERVE_FUZZ_PROFILE", "ci") == "explore"
    return settings(
        max_examples=2000 if explore else examples,
        deadline=None,
        derandomize=not explore,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
