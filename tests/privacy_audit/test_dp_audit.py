"""Privacy audit, differential privacy: clipping, noise, calibration, accounting and the budget.

Each test runs one check from :mod:`checks_dp` (the canaries in
``test_canaries_dp.py`` run the same functions against broken variants),
records it in the audit report, and fails if the promise does not hold.
The accounting is judged by the audit's own accountant
(:mod:`tests.privacy_audit.reference_accountant`), from the raw parameters
of real runs, never by the product's own numbers.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from securefed.dp.mechanism import SkellamParameters
from tests.privacy_audit import checks_dp

# the sweep's configurations small enough for generated vectors (d <= 64)
_SMALL_CONFIGS = [config for config in checks_dp.CLIPPING_CONFIGS if config[2] <= 64]


def test_clipping_bound_on_adversarial_sweep(audit):
    """A node's integer contribution never exceeds the accounted L2/L1 sensitivity, for a seeded sweep of adversarial updates."""
    result = checks_dp.check_clipping()
    result.record(audit)
    assert result.passed, result.detail


def test_clipping_bound_on_generated_updates(audit):
    """A node's integer contribution never exceeds the accounted L2/L1 sensitivity, for any finite update hypothesis generates."""
    seen: list[float] = []

    # as many examples as the active hypothesis profile asks for (ci: bounded; dev: more)
    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data(), config=st.sampled_from(_SMALL_CONFIGS), mode=st.sampled_from(checks_dp.ROUNDING_MODES))
    def run(data, config, mode):
        clip_norm, bits, dimension, cohort = config
        params = SkellamParameters(clip_norm, bits, 1.0, min(2, cohort), dimension, cohort)
        update = data.draw(arrays(np.float64, dimension, elements=st.floats(allow_nan=False, allow_infinity=False, width=64)))
        ok, ratio, detail = checks_dp.contribution_within_bounds(params, update, checks_dp.RoundingOnly(bytes(32), mode[1]))
        seen.append(ratio)
        assert ok, f"{config} {mode[0]}: {detail}"

    try:
        run()
        passed, detail = True, f"{len(seen)} generated updates; largest L2 / bound = {max(seen):.8f}"
    except AssertionError as exc:
        passed, detail = False, str(exc).splitlines()[0]
    audit.check(
        checks_dp.CLIPPING + " (hypothesis)",
        "for any finite update, the integer vector a node adds has L2/L1 norm within the charged sensitivity",
        passed,
        detail,
    )
    assert passed, detail


def test_aggregate_noise_is_calibrated_skellam(audit):
    """The sum of s nodes' encodings of zero is Skellam with variance s x node variance (chi-square, 10^5 samples), at least the calibrated variance for s >= t."""
    result = checks_dp.check_aggregate_noise()
    result.record(audit)
    assert result.passed, result.detail


def test_planned_noise_suffices_with_only_t_survivors(audit):
    """plan_skellam's node noise, summed over only t survivors, reaches the target epsilon by an independent accountant, and measures so."""
    result = checks_dp.check_noise_calibration()
    result.record(audit)
    assert result.passed, result.detail


def test_gaussian_accountant_matches_golden_values(audit):
    """gaussian_epsilon equals dp-accounting 0.6.0's values at delta 1e-5 (PLD and RDP, with and without Poisson sampling)."""
    result = checks_dp.check_gaussian_accountant()
    result.record(audit)
    assert result.passed, result.detail


def test_skellam_accountant_matches_independent_reference(audit):
    """skellam_rdp and skellam_epsilon equal an independent implementation of Agarwal-Kairouz-Liu 2021 and of the RDP -> (eps, delta) conversion."""
    result = checks_dp.check_skellam_accountant()
    result.record(audit)
    assert result.passed, result.detail


def test_ledger_refuses_once_budget_is_spent(audit, tmp_path):
    """A site's ledger refuses the charge that would cross its epsilon limit, writes nothing, says so, and keeps refusing after a restart."""
    result = checks_dp.check_budget_refusal(tmp_path)
    result.record(audit)
    assert result.passed, result.detail


def test_node_refuses_once_budget_is_spent(audit, tmp_path):
    """A node refuses a DP round its ledger cannot pay for before training, and withholds its masked input if the budget ran out meanwhile."""
    result = checks_dp.check_node_budget_refusal(tmp_path)
    result.record(audit)
    assert result.passed, result.detail


def test_every_release_is_recomputed_by_the_reference_accountant(audit, reference_runs):
    """Every release of real DP runs (demo point, a re-planned task, two tasks at one site) recomputed from raw parameters equals what the coordinator recorded and each ledger charged, and so does every epsilon."""
    runs = reference_runs["demo"] + reference_runs["replanned-and-second-task"]
    result = checks_dp.check_reference_accountant(runs)
    result.record(audit)
    assert result.passed, result.detail


def test_noise_at_production_scale_carries_the_accounted_variance(audit):
    """At the planner's real operating points (node variance 3.5e9-5.8e9) the t - c honest nodes' noise has at least the accounted variance and the Skellam shape."""
    result = checks_dp.check_production_noise()
    result.record(audit)
    assert result.passed, result.detail
