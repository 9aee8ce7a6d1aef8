"""Privacy audit, record-level accounting: the product's subsampled-Skellam accountant against the audit's own.

Three independent lines (see :mod:`tests.privacy_audit.reference_subsampled`):

* the same formulas summed again in 60-digit decimal arithmetic, from the raw
  numbers of a plan, must give the product's curve and epsilon (to 1e-9 per
  order, 1e-6 in epsilon);
* the true Renyi divergences of a Poisson-subsampled round, both directions
  (remove: D(M || P); add: D(P || M)), computed from the probability mass
  function of the 1-D Skellam mechanism and by numerical integration for the
  Gaussian, must never exceed the product's bound (the Gaussian's remove
  direction must *equal* the binomial formula, which it is exact for);
* the inequality that carries the add direction, A(t) <= B(t) for the
  symmetrised integrands, must hold at every likelihood ratio hypothesis picks.

A canary shows the comparison can fail: the same rounds accounted at a
sampling rate 10% lower than the one used are caught.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from securefed.dp.record_level import plan_record_level
from securefed.dp.subsampled import SubsampledRelease, record_level_epsilon, subsampled_skellam_rdp
from tests.privacy_audit import reference_subsampled as reference
from tests.privacy_audit.reference_accountant import Release, release_from_raw

DELTA = 1e-5
#: the orders both sides minimise over here (the decimal reference is slow beyond them)
ORDERS = tuple(range(2, 65)) + (80, 96, 128)
ACCOUNTING = "record-level accounting (subsampled Skellam)"

#: (variance, l2, l1, q, rounds, bound) operating points: DP-SGD-like, tiny q, large q, small integers
POINTS = [
    ((4.4 * 32793.5) ** 2, 32793.5, 836073.4, 128 / 1437, 500, "symmetric"),
    ((1.1 * 4096.0) ** 2, 4096.0, 104_448.0, 0.01, 1000, "symmetric"),
    ((0.9 * 100.0) ** 2, 100.0, 2550.0, 0.5, 20, "symmetric"),
    (25.0, 3.0, 5.0, 0.2, 50, "symmetric"),
    ((4.0 * 32793.5) ** 2, 32793.5, 836073.4, 0.05, 100, "general"),
]


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def test_curve_and_epsilon_match_the_decimal_reference(audit):
    worst_curve = worst_epsilon = 0.0
    failures = []
    for variance, l2, l1, q, rounds, bound in POINTS:
        ours = subsampled_skellam_rdp(variance, l2, l1, q, ORDERS, bound=bound)
        theirs = [reference.skellam_subsampled_rdp(a, Release(variance, l2, l1), q, bound) for a in ORDERS]
        gap = max(_relative(x, y) for x, y in zip(ours, theirs))
        worst_curve = max(worst_curve, gap)
        ours_eps = record_level_epsilon([SubsampledRelease(variance, l2, l1, q)] * rounds, DELTA, ORDERS, bound=bound)
        theirs_eps = reference.epsilon([(Release(variance, l2, l1), q)] * rounds, DELTA, ORDERS, bound)
        worst_epsilon = max(worst_epsilon, _relative(ours_eps, theirs_eps))
        if gap > 1e-9 or _relative(ours_eps, theirs_eps) > 1e-6:
            failures.append(f"q={q} bound={bound}: curve gap {gap:.2e}, epsilon {ours_eps:.8f} vs {theirs_eps:.8f}")
    audit.check(
        ACCOUNTING,
        "the product's subsampled RDP curve and epsilon equal the audit's 60-digit recomputation",
        not failures,
        f"{len(POINTS)} operating points; worst relative gap: curve {worst_curve:.1e}, epsilon {worst_epsilon:.1e}",
    )
    assert not failures, failures


def test_a_plan_is_charged_what_its_raw_numbers_cost(audit):
    """The reference recomputes a plan's epsilon from the raw round parameters (V_node, t - c, C, 2^f, d, q)."""
    plan = plan_record_level(2.0, DELTA, 1437, 128, 300, 1.0, 650, 3, 5)
    raw = release_from_raw(plan.node_variance, plan.honest_survivors, plan.clip_norm, plan.scale_bits, plan.dimension)
    theirs = reference.epsilon([(raw, plan.sampling_rate)] * plan.rounds, DELTA, ORDERS)
    ours = record_level_epsilon([plan.release] * plan.rounds, DELTA, ORDERS)
    passed = _relative(ours, theirs) <= 1e-6 and theirs <= plan.target_epsilon * (1 + 1e-3)
    audit.check(
        ACCOUNTING,
        "a record-level plan's epsilon, recomputed from its raw parameters, is what the product charges",
        passed,
        f"product {ours:.6f}, reference {theirs:.6f}, target {plan.target_epsilon}",
    )
    assert passed


def test_accounting_at_a_wrong_sampling_rate_is_caught(audit):
    variance, l2, l1, q, rounds, _ = POINTS[0]
    used = reference.epsilon([(Release(variance, l2, l1), q)] * rounds, DELTA, ORDERS)
    reported = record_level_epsilon([SubsampledRelease(variance, l2, l1, 0.9 * q)] * rounds, DELTA, ORDERS)
    caught = _relative(reported, used) > 1e-6 and reported < used
    audit.canary(
        "record-level rounds accounted at a sampling rate 10% below the one used",
        ACCOUNTING if caught else None,
        f"reported {reported:.4f} vs {used:.4f}",
    )
    assert caught


SKELLAM_CASES = [
    # (variance, integer shift, q, order)
    (4.0, 1, 0.1, 4),
    (10.0, 2, 0.05, 8),
    (50.0, 3, 0.2, 3),
    (2.0, 1, 0.5, 16),
    (100.0, 10, 0.01, 32),
    (1.0, 1, 0.3, 6),
    (400.0, 20, 0.089, 12),
]


def test_true_skellam_divergences_never_exceed_the_bound(audit):
    """1-D Skellam (L1 = L2 = |shift|): the mixture's true divergence, both directions, is within the product's bound."""
    failures, worst = [], 0.0
    for variance, shift, q, order in SKELLAM_CASES:
        remove, add = reference.skellam_exact_divergences(variance, shift, q, order)
        bound = subsampled_skellam_rdp(variance, abs(shift), abs(shift), q, (order,))[0]
        worst = max(worst, remove / bound, add / bound)
        if not (remove <= bound * (1 + 1e-9) and add <= remove * (1 + 1e-9)):
            failures.append(f"V={variance} x={shift} q={q} a={order}: remove {remove:.6g}, add {add:.6g}, bound {bound:.6g}")
    audit.check(
        ACCOUNTING,
        "a subsampled Skellam round's true Renyi divergence, adding or removing a record, is within the charged bound",
        not failures,
        f"{len(SKELLAM_CASES)} cases; largest true/bound {worst:.3f}; add <= remove in every case",
    )
    assert not failures, failures


def test_gaussian_divergences_are_the_binomial_formula(audit):
    """For the Gaussian the remove direction is exactly the formula, and the add direction is below it."""
    failures = []
    for sigma, q, order in [(1.0, 0.01, 8), (1.0, 0.1, 4), (2.0, 0.05, 16), (0.8, 0.2, 3), (5.0, 0.3, 32)]:
        remove, add = reference.gaussian_exact_divergences(sigma, q, order)
        formula = reference.subsampled_rdp(order, q, lambda ell, sigma=sigma: ell / (2 * sigma * sigma))
        if _relative(remove, formula) > 1e-8 or add > remove:
            failures.append(f"sigma={sigma} q={q} a={order}: remove {remove:.10g}, formula {formula:.10g}, add {add:.10g}")
    audit.check(
        ACCOUNTING,
        "the binomial formula is exact for the subsampled Gaussian (numerical integration) and bounds the add direction",
        not failures,
        "5 cases, remove within 1e-8 of the formula",
    )
    assert not failures, failures


@given(log_t=st.floats(-40.0, 40.0), q=st.floats(1e-6, 1.0 - 1e-9), order=st.integers(2, 256))
def test_symmetric_pair_inequality(log_t: float, q: float, order: int) -> None:
    # A(t) <= B(t): the add direction's symmetrised integrand never exceeds the remove direction's
    assert reference.pair_gap(math.exp(log_t), q, order) >= -1e-12
