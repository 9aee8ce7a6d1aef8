"""Privacy audit, empirical: can an attacker who sees the aggregate tell whether a canary was in it?

Method (a two-run distinguishing test; see Jagielski, Ullman and Oprea 2020,
Nasr et al. 2021). The coordinator sees the modular sum of the surviving
nodes' ``SkellamParameters.encode`` outputs, exactly what secure aggregation
delivers (the protocol's exactness is proven by the secure-aggregation audit;
``test_audited_aggregate_is_what_secure_aggregation_delivers`` shows it on a
few rounds here). Two neighbouring worlds:

* D: a canary node takes part with a ZERO update, next to honest nodes with
  fixed updates the attacker knows (DP assumes it may);
* D': the same, but the canary's update is ``clip_norm * u`` for a fixed unit
  vector ``u``.

This is the "zero-out" adjacency: one participating node's update is what
changes, which is what securefed accounts for (its sensitivity is one node's
rounded, clipped vector). The attacker decodes the sum and scores it by its
projection on ``u``. A threshold (and which of the two DP inequalities to use)
is chosen on separate calibration trials; on fresh test trials (5000 per
world) the true and false positive rates of "canary in if score > threshold"
get one-sided Clopper-Pearson bounds at 97.5% each (so both hold together with
>= 95%, Bonferroni), and (eps, delta)-DP's TPR <= e^eps FPR + delta (or the
symmetric (1-FPR) <= e^eps (1-TPR) + delta) gives

    eps_lower = log((TPR_low - delta) / FPR_high)   (or log((1-FPR_high - delta) / (1-TPR_low))).

What the bound means: with 95% confidence the mechanism is NOT (eps, delta)-DP
for any eps below eps_lower. A healthy implementation must give
eps_lower <= the claimed eps: the audit's own reference accountant's epsilon
for one release of these raw parameters at that delta, noise for the
t - c = 3 honest survivors (t = 4 of 5, c = 1), never the product's number. A large gap is expected and is not a defect of the audit: one weak,
linear adversary with 5000 trials cannot see the rare tail events that
delta = 1e-5 and the RDP conversion pay for (a perfect separation of 5000
trials only shows eps >= 7.2). The canary run with the noise switched off
shows the audit has teeth: its lower bound is far above the claim.

The adjacency matters: ``test_claim_covers_updates_not_participation`` shows
that "a node took part (with its noise share) or not" is NOT covered by the
claim; the coordinator learns who took part from the protocol anyway.

At production scale (``test_gdp_fit_at_production_scale``) the game runs at
the demo's real operating point (d = 650, scale 2^17, node variance 5.8e9,
3 honest survivors) with 8000 trials per world, and instead of one threshold
the whole ROC is summarised: its area gives a Gaussian-DP mu
(AUC = Phi(mu / sqrt 2)) with a DeLong bound at confidence 1 - 1e-6; over the
task's 10 rounds that is sqrt(10) mu-GDP, whose exact epsilon must stay within
the task's target of 8, and mu itself within what the accounted noise allows
(D2 / sqrt(V) from raw parameters). Nodes that halve their variance at that
scale fail both (``test_gdp_fit_detects_halved_node_variance``).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from securefed.dp.mechanism import plan_skellam
from securefed.dp.noise import NoiseSource
from securefed.secagg.simulate import simulate
from tests.privacy_audit import checks_dp

DELTA = 1e-5
N = 5
T, C, HONEST = checks_dp.honest_survivors(N)  # t = 4 of 5, c = 1: noise sized for 3 honest survivors
# one release, target eps 2 at delta 1e-5, d = 16
AUDIT_PARAMS = plan_skellam(2.0, DELTA, 1, 1.0, 16, N, HONEST)


def _record(audit, outcome: checks_dp.EmpiricalAudit) -> None:
    audit.empirical_audit(outcome.label, outcome.epsilon_lower, outcome.epsilon_claimed)
    audit.check(
        checks_dp.EMPIRICAL_AUDIT + f" ({outcome.label})",
        "no attacker on the aggregate distinguishes a canary update better than the claimed epsilon allows",
        outcome.epsilon_lower <= outcome.epsilon_claimed,
        outcome.detail,
    )


def test_empirical_audit_worst_case_t_survivors(audit):
    """With only the t - c honest survivors' noise (the least the protocol and the adversary allow) the empirical epsilon lower bound stays below the reference epsilon."""
    outcome = checks_dp.run_empirical_audit(
        AUDIT_PARAMS, delta=DELTA, label=f"skellam, calibrated (t - c = {HONEST} honest of {N})", survivors=HONEST, seed=101
    )
    _record(audit, outcome)
    assert outcome.epsilon_lower <= outcome.epsilon_claimed, outcome.detail


def test_empirical_audit_all_survive(audit):
    """With all n nodes surviving the empirical epsilon lower bound stays below the reference epsilon."""
    outcome = checks_dp.run_empirical_audit(
        AUDIT_PARAMS, delta=DELTA, label=f"skellam, calibrated (all {N} survive)", survivors=N, seed=202
    )
    _record(audit, outcome)
    assert outcome.epsilon_lower <= outcome.epsilon_claimed, outcome.detail


def test_noise_switched_off_is_detected(audit):
    """With the nodes' noise switched off the same audit proves an epsilon clearly above the claim (the audit can fail)."""
    with mock.patch.object(NoiseSource, "skellam", lambda self, variance, size: np.zeros(size, dtype=np.int64)):
        outcome = checks_dp.run_empirical_audit(
            AUDIT_PARAMS, delta=DELTA, label="noise switched off (canary)", survivors=HONEST, seed=101
        )
    audit.empirical_audit(outcome.label, outcome.epsilon_lower, outcome.epsilon_claimed)
    caught = outcome.epsilon_lower > outcome.epsilon_claimed + 1.0
    audit.canary("noise switched off", caught_by="empirical audit" if caught else None)
    assert caught, outcome.detail


def test_audited_aggregate_is_what_secure_aggregation_delivers(audit):
    """The aggregate the audit scores (modular sum of the survivors' encodings) is bit-for-bit what the secure-aggregation protocol outputs."""
    rng = np.random.default_rng(5)
    mismatches = []
    rounds = 4
    for round_number in range(rounds):
        updates = [rng.standard_normal(AUDIT_PARAMS.dimension) for _ in range(N)]
        inputs = [AUDIT_PARAMS.encode(update) for update in updates]
        dropped = [] if round_number % 2 == 0 else [5]  # all survive, or exactly t do
        result = simulate(inputs, T, dropouts={"masked_input": dropped} if dropped else None, seed=round_number)
        expected = checks_dp.modular_sum([inputs[i - 1] for i in result.survivors])
        if result.survivors != tuple(i for i in range(1, N + 1) if i not in dropped) or not np.array_equal(result.sum, expected):
            mismatches.append(f"round {round_number}: survivors {result.survivors}")
    passed = not mismatches
    audit.check(
        "dp.audit-aggregate-is-secagg-output",
        "the empirical audit's aggregate is exactly what secure aggregation gives the coordinator",
        passed,
        f"{rounds} simulated rounds (all survive / t survive)" + (f"; mismatches: {mismatches}" if mismatches else ""),
    )
    assert passed, mismatches


def test_claim_covers_updates_not_participation(audit):
    """The epsilon claim protects a participating node's update, not whether it took part: adding a node with its noise share is detectable."""
    params = plan_skellam(2.0, DELTA, 1, 1.0, 256, N, HONEST)
    outcome = checks_dp.run_empirical_audit(
        params,
        delta=DELTA,
        label="add/remove a node with its noise share",
        survivors=HONEST + 1,  # D: t - c honest nodes, D': the same + the canary node
        adjacency="add-remove",
        score="energy",
        calibration_trials=1000,
        test_trials=3000,
        seed=303,
    )
    exceeds = outcome.epsilon_lower > outcome.epsilon_claimed
    audit.check(
        "dp.adjacency-scope",
        "the claimed epsilon is for zero-out adjacency (a participating node's update); participation itself is "
        "visible to the coordinator (survivor list, number of noise shares) and is not covered",
        exceeds,
        "add/remove audit by the sum's energy: " + outcome.detail,
    )
    assert exceeds, outcome.detail


# --- production scale: a Gaussian-DP fit of the whole ROC, judged by the task's target --------------


def _record_gdp(audit, outcome: checks_dp.GdpAudit) -> None:
    audit.empirical_audit(outcome.label, outcome.epsilon_lower, outcome.epsilon_target)
    audit.check(
        checks_dp.GDP_AUDIT,
        "at the demo's real operating point, the attacker's whole ROC fits a Gaussian-DP mu no larger than the "
        "accounted noise allows, and over the task's rounds no more than the task's target epsilon",
        outcome.passed,
        outcome.detail,
    )


@pytest.fixture(scope="module")
def gdp_healthy() -> checks_dp.GdpAudit:
    return checks_dp.run_gdp_audit()


def test_gdp_fit_at_production_scale(audit, gdp_healthy):
    """At the demo's operating point (node variance 5.8e9, 3 honest survivors) the Gaussian-DP fit of the ROC stays within the accounted noise and the task's target epsilon."""
    _record_gdp(audit, gdp_healthy)
    assert gdp_healthy.passed, gdp_healthy.detail


def test_gdp_fit_detects_halved_node_variance(audit, gdp_healthy):
    """Nodes that halve their variance only at production size (> 1e8) make the same fit exceed both the accounted mu and the target (the audit can fail)."""
    assert gdp_healthy.passed, gdp_healthy.detail
    original = NoiseSource.skellam
    halved = mock.patch.object(
        NoiseSource, "skellam", lambda self, variance, size: original(self, variance / 2 if variance > 1e8 else variance, size)
    )
    with halved:
        outcome = checks_dp.run_gdp_audit()
    audit.empirical_audit(
        outcome.label.replace("GDP fit", "node variance halved (canary), GDP fit"), outcome.epsilon_lower, outcome.epsilon_target
    )
    caught = outcome.epsilon_lower > outcome.epsilon_target and outcome.mu_low > outcome.mu_accounted
    audit.canary(
        "node variance / 2 only at production-size variance (> 1e8)",
        caught_by=checks_dp.GDP_AUDIT if caught else None,
        detail=f"mu >= {outcome.mu_low:.3f} vs accounted {outcome.mu_accounted:.3f}; eps >= {outcome.epsilon_lower:.2f} vs target {outcome.epsilon_target:g}",
    )
    assert caught, outcome.detail
