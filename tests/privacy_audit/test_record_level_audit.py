"""Privacy audit, record level: the checks of :mod:`tests.privacy_audit.checks_record_dp`, and their canaries.

Each canary plants one defect the issue names -- per-record clipping removed, records sampled at a
rate other than the one charged, the noise share sized for n instead of t - c, the noise switched
off -- and shows that a check catches it; a canary that is not caught fails the suite.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from unittest import mock

import numpy as np
import pytest

from securefed.dp import dpsgd, mechanism
from securefed.dp.noise import NoiseSource
from tests.privacy_audit import checks_record_dp
from tests.privacy_audit.checks_dp import CheckResult


def _record(audit, result: CheckResult) -> None:
    audit.check(result.name, result.promise, result.passed, result.detail)
    assert result.passed, result.detail


def _canary(audit, name: str, check: Callable[[], CheckResult], defect: Callable[[], AbstractContextManager]) -> None:
    healthy = check()
    assert healthy.passed, f"{healthy.name} fails on the unmodified product: {healthy.detail}"
    with defect():
        broken = check()
    audit.canary(name, caught_by=broken.name if not broken.passed else None, detail=broken.detail)
    assert not broken.passed, f"{name}: {broken.name} did not notice ({broken.detail})"


def test_record_clipping(audit):
    _record(audit, checks_record_dp.check_record_clipping())


def test_sampling_rate(audit):
    _record(audit, checks_record_dp.check_sampling_rate())


def test_record_noise_sized_for_t_minus_c(audit):
    _record(audit, checks_record_dp.check_record_noise())


def test_record_level_empirical_audit(audit):
    result, lower, claimed = checks_record_dp.run_record_empirical_audit()
    audit.empirical_audit("record level, one extreme record, distributed Skellam (5 sites, t - c = 3)", lower, claimed)
    _record(audit, result)


# --- canaries ---------------------------------------------------------------------------------------

_REAL_SUM = dpsgd.sampled_clipped_gradient_sum


def _without_clipping():
    def unclipped(adapter, params, X, y, clip_norm, sampling_rate, source):
        return _REAL_SUM(adapter, params, X, y, float("inf"), sampling_rate, source)

    return mock.patch.object(dpsgd, "sampled_clipped_gradient_sum", unclipped)


def _sampling_at(factor: float):
    def sampled(adapter, params, X, y, clip_norm, sampling_rate, source):
        return _REAL_SUM(adapter, params, X, y, clip_norm, min(1.0, sampling_rate * factor), source)

    return lambda: mock.patch.object(dpsgd, "sampled_clipped_gradient_sum", sampled)


def _noise_for_n():
    real = mechanism.plan_record_skellam

    def sized_for_n(target, delta, rounds, clip, dimension, cohort, honest, *rest, **options):
        return real(target, delta, rounds, clip, dimension, cohort, cohort, *rest, **options)

    return mock.patch.object(mechanism, "plan_record_skellam", sized_for_n)


def test_per_record_clipping_removed(audit):
    _canary(audit, "per-record clipping removed", checks_record_dp.check_record_clipping, _without_clipping)


@pytest.mark.parametrize("factor", [2.0, 1.1])
def test_sampling_rate_other_than_charged(audit, factor):
    _canary(
        audit, f"records sampled at {factor:g} x the charged rate", checks_record_dp.check_sampling_rate, _sampling_at(factor)
    )


def test_record_noise_sized_for_n(audit):
    _canary(audit, "record-level noise share sized for n instead of t - c", checks_record_dp.check_record_noise, _noise_for_n)


def test_record_noise_switched_off(audit):
    def no_noise():
        return mock.patch.object(NoiseSource, "skellam", lambda self, variance, size: np.zeros(size, dtype=np.int64))

    def check() -> CheckResult:
        return checks_record_dp.run_record_empirical_audit(trials=1500)[0]

    _canary(audit, "record-level noise switched off", check, no_noise)
