"""Privacy audit, DP mutation canaries: each test plants one defect and shows a DP check catches it.

Every test first runs the check on the unmodified product (it must pass),
then again with exactly one thing patched (it must fail), and records the
canary with the check that caught it. A canary that is not caught fails the
suite: a check that cannot fail proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from unittest import mock

import numpy as np

from securefed.dp import accountant, mechanism
from securefed.dp.ledger import PrivacyLedger
from securefed.dp.mechanism import SkellamParameters
from securefed.dp.noise import NoiseSource
from tests.privacy_audit import checks_dp


def _canary(audit, name: str, check: Callable[[], checks_dp.CheckResult], defect: Callable[[], AbstractContextManager]) -> None:
    healthy = check()
    assert healthy.passed, f"{healthy.name} fails on the unmodified product: {healthy.detail}"
    with defect():
        broken = check()
    audit.canary(name, caught_by=broken.name if not broken.passed else None)
    assert not broken.passed, f"{name}: {broken.name} did not notice ({broken.detail})"


def _no_noise():
    return mock.patch.object(NoiseSource, "skellam", lambda self, variance, size: np.zeros(size, dtype=np.int64))


def test_noise_switched_off(audit):
    """Nodes that add no noise are caught by the aggregate-noise distribution check."""
    _canary(audit, "noise switched off", checks_dp.check_aggregate_noise, _no_noise)


def test_clipping_skipped(audit):
    """A mechanism that skips clipping (clip_l2 is the identity) is caught by the clipping-bound check."""
    _canary(
        audit,
        "clipping skipped",
        checks_dp.check_clipping,
        lambda: mock.patch("securefed.dp.mechanism.clip_l2", lambda vector, clip_norm: vector),
    )


def test_rounding_slack_missing_from_sensitivity(audit):
    """Charging for C*2^f instead of C*2^f + sqrt(d) (forgetting stochastic rounding) is caught by the clipping-bound check."""
    _canary(
        audit,
        "sensitivity without the rounding term sqrt(d)",
        checks_dp.check_clipping,
        lambda: mock.patch.object(SkellamParameters, "l2_sensitivity", property(lambda self: self.clip_norm * self.scale)),
    )


def test_noise_sized_for_n_instead_of_t(audit):
    """A plan that divides the noise among all n nodes instead of the t that may be all that survive is caught by the calibration check."""
    original = mechanism.plan_skellam

    def sized_for_n(target_epsilon, delta, rounds, clip_norm, dimension, cohort_size, threshold):
        return original(target_epsilon, delta, rounds, clip_norm, dimension, cohort_size, cohort_size)

    _canary(
        audit,
        "noise sized for n instead of t survivors",
        checks_dp.check_noise_calibration,
        lambda: mock.patch("securefed.dp.mechanism.plan_skellam", sized_for_n),
    )


def test_node_variance_divided_by_ten(audit):
    """Nodes that draw a tenth of their noise variance are caught by the aggregate-noise distribution check."""
    original = NoiseSource.skellam
    _canary(
        audit,
        "node noise variance divided by 10",
        checks_dp.check_aggregate_noise,
        lambda: mock.patch.object(NoiseSource, "skellam", lambda self, variance, size: original(self, variance / 10, size)),
    )


def test_node_variance_divided_by_ten_against_the_plan(audit):
    """Nodes that draw a tenth of the planned variance are also caught by the calibration check's measurement."""
    original = NoiseSource.skellam
    _canary(
        audit,
        "node noise variance divided by 10 (vs the plan)",
        checks_dp.check_noise_calibration,
        lambda: mock.patch.object(NoiseSource, "skellam", lambda self, variance, size: original(self, variance / 10, size)),
    )


def test_skellam_rdp_halved(audit):
    """An accountant that reports half the Skellam RDP (epsilon too small) is caught by the reference-value check."""
    original = accountant.skellam_rdp
    _canary(
        audit,
        "Skellam RDP halved",
        checks_dp.check_skellam_accountant,
        lambda: mock.patch(
            "securefed.dp.accountant.skellam_rdp", lambda release, orders=accountant.RDP_ORDERS: [r / 2 for r in original(release, orders)]
        ),
    )


def test_ledger_budget_check_skipped(audit, tmp_path):
    """A ledger that charges without checking the limit is caught by the budget-refusal check."""
    runs = iter(range(2))
    _canary(
        audit,
        "ledger budget check skipped",
        lambda: checks_dp.check_budget_refusal(_fresh(tmp_path, next(runs))),
        lambda: mock.patch.object(PrivacyLedger, "check", lambda self, task, release: self.preview(task, release)),
    )


def test_node_ignores_budget(audit, tmp_path):
    """A node whose ledger never refuses is caught by the node budget-refusal check."""
    runs = iter(range(2))
    _canary(
        audit,
        "node takes part beyond its budget",
        lambda: checks_dp.check_node_budget_refusal(_fresh(tmp_path, next(runs))),
        lambda: mock.patch.object(PrivacyLedger, "check", lambda self, task, release: self.preview(task, release)),
    )


def _fresh(base, index):
    directory = base / f"run{index}"
    directory.mkdir()
    return directory
