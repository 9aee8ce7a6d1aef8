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
eps_lower <= the claimed eps (the accountant's for one release at that
delta). A large gap is expected and is not a defect of the audit: one weak,
linear adversary with 5000 trials cannot see the rare tail events that
delta = 1e-5 and the RDP conversion pay for (a perfect separation of 5000
trials only shows eps >= 7.2). The canary run with the noise switched off
shows the audit has teeth: its lower bound is far above the claim.

The adjacency matters: ``test_claim_covers_updates_not_participation`` shows
that "a node took part (with its noise share) or not" is NOT covered by the
claim; the coordinator learns who took part from the protocol anyway.
"""

from __future__ import annotations

from unittest import mock

import numpy as np

from securefed.dp.mechanism import plan_skellam
from securefed.dp.noise import NoiseSource
from securefed.secagg.simulate import simulate
from tests.privacy_audit import checks_dp

DELTA = 1e-5
N, T = 5, 3
# one release, target eps 2 at delta 1e-5, d = 16, 5 nodes of which 3 must survive
AUDIT_PARAMS = plan_skellam(2.0, DELTA, 1, 1.0, 16, N, T)


def _record(audit, outcome: checks_dp.EmpiricalAudit) -> None:
    audit.empirical_audit(outcome.label, outcome.epsilon_lower, outcome.epsilon_claimed)
    audit.check(
        checks_dp.EMPIRICAL_AUDIT + f" ({outcome.label})",
        "no attacker on the aggregate distinguishes a canary update better than the claimed epsilon allows",
        outcome.epsilon_lower <= outcome.epsilon_claimed,
        outcome.detail,
    )


def test_empirical_audit_worst_case_t_survivors(audit):
    """With exactly t survivors (the least noise the protocol allows) the empirical epsilon lower bound stays below the claimed epsilon."""
    outcome = checks_dp.run_empirical_audit(
        AUDIT_PARAMS, delta=DELTA, label=f"skellam, calibrated ({T} of {N} survive)", survivors=T, seed=101
    )
    _record(audit, outcome)
    assert outcome.epsilon_lower <= outcome.epsilon_claimed, outcome.detail


def test_empirical_audit_all_survive(audit):
    """With all n nodes surviving the empirical epsilon lower bound stays below the claimed epsilon."""
    outcome = checks_dp.run_empirical_audit(
        AUDIT_PARAMS, delta=DELTA, label=f"skellam, calibrated (all {N} survive)", survivors=N, seed=202
    )
    _record(audit, outcome)
    assert outcome.epsilon_lower <= outcome.epsilon_claimed, outcome.detail


def test_noise_switched_off_is_detected(audit):
    """With the nodes' noise switched off the same audit proves an epsilon clearly above the claim (the audit can fail)."""
    with mock.patch.object(NoiseSource, "skellam", lambda self, variance, size: np.zeros(size, dtype=np.int64)):
        outcome = checks_dp.run_empirical_audit(
            AUDIT_PARAMS, delta=DELTA, label="noise switched off (canary)", survivors=T, seed=101
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
        dropped = [] if round_number % 2 == 0 else [4, 5]  # all survive, or exactly t do
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
    params = plan_skellam(2.0, DELTA, 1, 1.0, 256, N, T)
    outcome = checks_dp.run_empirical_audit(
        params,
        delta=DELTA,
        label="add/remove a node with its noise share",
        survivors=T + 1,  # D: t honest nodes, D': t honest nodes + the canary node
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
