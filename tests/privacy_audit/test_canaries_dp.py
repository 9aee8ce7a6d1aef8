"""Privacy audit, DP mutation canaries: each test plants one defect and shows a DP check catches it.

Every test first runs the check on the unmodified product (it must pass),
then again with exactly one thing patched (it must fail), and records the
canary with the check that caught it. A canary that is not caught fails the
suite: a check that cannot fail proves nothing.

The accounting canaries plant what issue 10 found the earlier suite let
through — node variance / 4 only at production-size variance, a release
charged at 2V, a release charged for n survivors instead of t - c — and
noise sized for t instead of t - c (colluders ignored); the reference
accountant and the production-scale noise check must catch them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from unittest import mock

import numpy as np
import pytest

from securefed.dp import accountant, mechanism
from securefed.dp.accountant import SkellamRelease, skellam_epsilon
from securefed.dp.ledger import PrivacyLedger
from securefed.dp.mechanism import SkellamParameters
from securefed.dp.noise import NoiseSource
from securefed.federation.coordinator import Coordinator
from tests.privacy_audit import checks_dp


def _canary(
    audit,
    name: str,
    check: Callable[[], checks_dp.CheckResult],
    defect: Callable[[], AbstractContextManager],
    healthy: checks_dp.CheckResult | None = None,
    figure: Callable[[checks_dp.CheckResult], str] | None = None,
) -> None:
    healthy = healthy if healthy is not None else check()
    assert healthy.passed, f"{healthy.name} fails on the unmodified product: {healthy.detail}"
    with defect():
        broken = check()
    audit.canary(name, caught_by=broken.name if not broken.passed else None, detail=figure(broken) if figure else "")
    assert not broken.passed, f"{name}: {broken.name} did not notice ({broken.detail})"


def _no_noise():
    return mock.patch.object(NoiseSource, "skellam", lambda self, variance, size: np.zeros(size, dtype=np.int64))


def test_noise_switched_off(audit):
    """Nodes that add no noise are caught by the aggregate-noise distribution check."""
    _canary(audit, "noise switched off", checks_dp.check_aggregate_noise, _no_noise)


def test_clipping_skipped(audit):
    """A mechanism that skips L2 clipping (clip_l2 is the identity; the L-infinity guard stays) is caught by the clipping-bound check."""
    _canary(
        audit,
        "clipping skipped",
        checks_dp.check_clipping,
        lambda: mock.patch("securefed.encoding.clip_l2", lambda vector, clip_norm: vector),
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
    """A plan that divides the noise among all n nodes instead of the t - c honest ones that may be all that survive is caught by the calibration check."""
    original = mechanism.plan_skellam

    def sized_for_n(target_epsilon, delta, rounds, clip_norm, dimension, cohort_size, honest_survivors, spent=()):
        return original(target_epsilon, delta, rounds, clip_norm, dimension, cohort_size, cohort_size, spent)

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
            "securefed.dp.accountant.skellam_rdp",
            lambda release, orders=accountant.RDP_ORDERS: [r / 2 for r in original(release, orders)],
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


# --- what the earlier suite let through (issue 10, finding 7), and colluders ignored ---------------


def _scaled_at_production_size(factor: float):
    """Nodes that draw variance / factor, but only when the variance is production-size (> 1e8)."""
    original = NoiseSource.skellam
    return mock.patch.object(
        NoiseSource,
        "skellam",
        lambda self, variance, size: original(self, variance / factor if variance > 1e8 else variance, size),
    )


def _first_point(result: checks_dp.CheckResult) -> str:
    return result.detail.split(";")[1].strip() if ";" in result.detail else result.detail[:160]


@pytest.fixture(scope="module")
def healthy_production_noise() -> checks_dp.CheckResult:
    return checks_dp.check_production_noise()


@pytest.mark.parametrize("factor", [4, 2], ids=["quartered", "halved"])
def test_node_variance_reduced_only_at_production_size(audit, healthy_production_noise, factor):
    """Nodes that draw 1/4 (or 1/2) of their variance only when it is production-size (> 1e8) are caught by the production-scale noise check."""
    _canary(
        audit,
        f"node variance / {factor} only at production-size variance (> 1e8)",
        checks_dp.check_production_noise,
        lambda: _scaled_at_production_size(factor),
        healthy=healthy_production_noise,
        figure=_first_point,
    )


def _release(variance_of: Callable[[SkellamParameters], float]):
    return mock.patch.object(
        SkellamParameters,
        "release",
        property(lambda self: SkellamRelease(variance_of(self), self.l2_sensitivity, self.l1_sensitivity)),
    )


def _reference_canary(audit, reference_runs, tmp_path, name: str, scenario: str, defect) -> None:
    healthy = checks_dp.check_reference_accountant(reference_runs[scenario])
    _canary(
        audit,
        name,
        lambda: checks_dp.check_reference_accountant(checks_dp.run_reference_scenarios(tmp_path, (scenario,))),
        defect,
        healthy=healthy,
        figure=lambda broken: broken.detail.split("FAILED: ", 1)[-1].split("; ")[0][:300],
    )


def test_release_charged_at_twice_the_variance(audit, reference_runs, tmp_path):
    """A release charged at 2V (the Poisson rate confused with the variance) is caught by the reference accountant."""
    _reference_canary(
        audit, reference_runs, tmp_path, "release charged at 2V (Poisson rate confused with variance)", "demo",
        lambda: _release(lambda params: 2 * params.total_variance),
    )  # fmt: skip


def test_release_charged_for_n_survivors(audit, reference_runs, tmp_path):
    """A release charged for all n nodes' noise instead of the t - c honest survivors' is caught by the reference accountant."""
    _reference_canary(
        audit, reference_runs, tmp_path, "release charged for n survivors instead of t - c", "demo",
        lambda: _release(lambda params: params.cohort_size * params.node_variance),
    )  # fmt: skip


@contextlib.contextmanager
def _colluders_ignored():
    # The one colluder count every DP sizing and check reads (the coordinator's task and the nodes' policy).
    with (
        mock.patch("securefed.federation.task.resolve_colluders", lambda setting, roster: 0),
        mock.patch("securefed.secagg.config.resolve_colluders", lambda setting, roster: 0),
    ):
        yield


def test_noise_sized_for_t_instead_of_t_minus_c(audit, reference_runs, tmp_path):
    """Colluders ignored (c = 0, so the noise is sized for t survivors, not t - c honest ones) is caught by the reference accountant, whose c is the documented policy's."""
    _reference_canary(
        audit, reference_runs, tmp_path, "noise sized for t instead of t - c (colluders ignored)", "demo", _colluders_ignored
    )


def test_epsilon_from_the_plan_not_the_records(audit, reference_runs, tmp_path):
    """A coordinator that forgets the recorded releases (epsilon and re-planning from the plan alone) is caught by the reference accountant on the re-planned task."""
    _reference_canary(
        audit, reference_runs, tmp_path, "coordinator ignores recorded releases (epsilon from the plan)", "replanned-and-second-task",
        lambda: mock.patch.object(Coordinator, "_recorded_releases", lambda self: []),
    )  # fmt: skip


def test_site_total_as_a_sum_of_task_epsilons(audit, reference_runs, tmp_path):
    """A site total that adds per-task epsilons (valid only at k x delta) instead of composing every release at the site's delta is caught by the reference accountant."""

    def summed(self):
        return sum(skellam_epsilon(releases, self.budget.delta) for releases in self._releases(None).values())

    _reference_canary(
        audit, reference_runs, tmp_path, "site total = sum of per-task epsilons (k x delta)", "replanned-and-second-task",
        lambda: mock.patch.object(PrivacyLedger, "spent_total", summed),
    )  # fmt: skip


def test_ledger_that_does_not_record_its_charges(audit, reference_runs, tmp_path):
    """A ledger that checks the budget but never writes the row (as good as a deleted ledger) is caught by the reference accountant against the signed audit log."""
    _reference_canary(
        audit, reference_runs, tmp_path, "ledger charges without recording (a deleted ledger)", "demo",
        lambda: mock.patch.object(
            PrivacyLedger, "charge", lambda self, task, round_number, aggregation, release, mech, model_hash: self.check(task, release)[0]
        ),
    )  # fmt: skip
