"""Record-level accounting: the Poisson-subsampled Skellam curve, its composition, calibration and the run planner.

The reference points come from Google's ``dp-accounting`` 0.6.0: its RDP
accountant is run live (it is fast); the PLD numbers (slow) were computed
with ``PLDAccountant`` on ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
GaussianDpEvent(sigma)), rounds)`` at delta = 1e-5 and are written here.
In the large-variance limit (integer scale 2^20, so the Skellam slack and the
rounding term vanish) the Skellam bound must never be below the Gaussian
mechanism with the same noise multiplier: Skellam is not better than
Gaussian at equal variance.
"""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given
from hypothesis import strategies as st

from securefed.dp.accountant import SkellamRelease, skellam_rdp
from securefed.dp.mechanism import MAX_NODE_VARIANCE, MAX_WRAP_PROBABILITY
from securefed.dp.record_level import (
    RecordLevelPlan,
    batch_bound,
    plan_record_level,
    record_level_wrap_probability,
)
from securefed.dp.subsampled import (
    SUBSAMPLED_ORDERS,
    SubsampledRelease,
    calibrate_record_level,
    composed_curve,
    record_level_epsilon,
    subsampled_skellam_rdp,
)
from securefed.errors import InvalidParameter

DELTA = 1e-5
LARGE = 2.0**20  # an integer-domain sensitivity large enough for the Gaussian limit


def _l1(l2: float, dimension: int = 650) -> float:
    return min(math.sqrt(dimension) * l2, l2 * l2)


def _ours(sigma: float, q: float, rounds: int, bound: str = "symmetric") -> float:
    release = SubsampledRelease((sigma * LARGE) ** 2, LARGE, _l1(LARGE), q)
    return record_level_epsilon([release] * rounds, DELTA, bound=bound)


def _gaussian_rdp(sigma: float, q: float, rounds: int, orders: list[float] | None = None) -> float:
    sampled = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    event = dp_accounting.SelfComposedDpEvent(sampled, rounds)
    accountant = rdp_privacy_accountant.RdpAccountant(orders) if orders else rdp_privacy_accountant.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(DELTA))


# --- (a) q = 1 is the Skellam curve -----------------------------------------------------------


@pytest.mark.parametrize("bound", ["symmetric", "general"])
@pytest.mark.parametrize(("variance", "l2", "dimension"), [(4.0, 1.0, 1), (1e6, 300.0, 650), ((3 * LARGE) ** 2, LARGE, 650)])
def test_sampling_everything_is_the_skellam_curve(bound: str, variance: float, l2: float, dimension: int) -> None:
    l1 = _l1(l2, dimension)
    assert subsampled_skellam_rdp(variance, l2, l1, 1.0, bound=bound) == skellam_rdp(
        SkellamRelease(variance, l2, l1), SUBSAMPLED_ORDERS
    )


def test_the_symmetric_bound_tends_to_the_skellam_curve_as_q_tends_to_one() -> None:
    # continuity at q = 1: the sum is the single term l = alpha plus terms of order 1 - q
    l2 = 300.0
    base = skellam_rdp(SkellamRelease(1e6, l2, _l1(l2)), SUBSAMPLED_ORDERS)
    near = subsampled_skellam_rdp(1e6, l2, _l1(l2), 1 - 1e-12)
    assert all(abs(a - b) <= 1e-8 * b for a, b in zip(near, base))


def test_subsampling_never_costs_more_than_not_sampling() -> None:
    l2 = 50.0
    base = skellam_rdp(SkellamRelease(1e4, l2, _l1(l2)), SUBSAMPLED_ORDERS)
    for q in (0.001, 0.1, 0.5, 0.99):
        for bound in ("symmetric", "general"):
            assert all(a <= b for a, b in zip(subsampled_skellam_rdp(1e4, l2, _l1(l2), q, bound=bound), base))


# --- (b) the large-variance limit against dp-accounting's subsampled Gaussian -----------------

#: (q, sigma, rounds, dp-accounting PLD epsilon at delta 1e-5)
PLD_POINTS = [(0.01, 1.0, 1000, 1.8282), (0.05, 1.0, 200, 4.7659), (0.1, 2.0, 100, 2.3374)]


@pytest.mark.parametrize(("q", "sigma", "rounds", "pld"), PLD_POINTS)
def test_large_variance_limit_is_the_subsampled_gaussian(q: float, sigma: float, rounds: int, pld: float) -> None:
    ours = _ours(sigma, q, rounds)
    same_orders = _gaussian_rdp(sigma, q, rounds, [float(a) for a in SUBSAMPLED_ORDERS])
    default_orders = _gaussian_rdp(sigma, q, rounds)
    # never below the Gaussian's RDP on the same orders (our terms are termwise at least the Gaussian's) ...
    assert ours >= same_orders * (1 - 1e-9)
    # ... and in the limit equal to it: the Skellam slack is gone at this scale
    assert ours <= same_orders * (1 + 1e-4)
    # dp-accounting's default grid adds fractional orders, which help a little (measured: <= 0.3%)
    assert default_orders * (1 - 1e-9) <= ours <= default_orders * 1.01
    # and above the (tight) PLD epsilon by the RDP conversion's gap (measured: 1.107 .. 1.153)
    assert pld < ours <= 1.16 * pld


def test_the_general_bound_is_never_tighter_and_fails_at_high_noise() -> None:
    """Zhu-Wang's bound for any mechanism does not vanish as the noise grows; ours does."""
    for sigma in (1.0, 4.0):
        assert _ours(sigma, 0.089, 500, "general") >= _ours(sigma, 0.089, 500)
    assert _ours(50.0, 0.089, 500) < 0.2
    assert _ours(50.0, 0.089, 500, "general") > 1.5  # its floor: log(1 + 2 P[Bin(alpha, q) >= 3]) / (alpha - 1)


# --- (c) monotone in q, variance and rounds ---------------------------------------------------

_sensitivity = st.sampled_from([(1.0, 1), (40.0, 650), (LARGE, 650)])


@given(
    sensitivity=_sensitivity,
    sigma=st.floats(0.3, 30.0),
    q=st.floats(1e-3, 1.0),
    bigger=st.floats(1.0001, 5.0),
    rounds=st.integers(1, 2000),
    more=st.integers(1, 500),
)
def test_epsilon_is_monotone(sensitivity, sigma: float, q: float, bigger: float, rounds: int, more: int) -> None:
    l2, dimension = sensitivity
    l1, variance = _l1(l2, dimension), (sigma * l2) ** 2

    def eps(variance: float, q: float, rounds: int) -> float:
        return record_level_epsilon([SubsampledRelease(variance, l2, l1, q)] * rounds, DELTA)

    here = eps(variance, q, rounds)
    slack = 1e-9 * here + 1e-12
    assert eps(variance, min(1.0, q * bigger), rounds) >= here - slack  # more sampling costs more
    assert eps(variance * bigger, q, rounds) <= here + slack  # more noise costs less
    assert eps(variance, q, rounds + more) >= here - slack  # more rounds cost more
    # and per order, the curve itself
    curve = subsampled_skellam_rdp(variance, l2, l1, q)
    more_sampled = subsampled_skellam_rdp(variance, l2, l1, min(1.0, q * bigger))
    more_noise = subsampled_skellam_rdp(variance * bigger, l2, l1, q)
    assert all(a <= b * (1 + 1e-9) + 1e-15 for a, b in zip(curve, more_sampled))
    assert all(a >= b * (1 - 1e-9) - 1e-15 for a, b in zip(curve, more_noise))


def test_rounds_of_different_noise_compose_by_addition() -> None:
    a = SubsampledRelease(1e6, 300.0, _l1(300.0), 0.05)
    b = SubsampledRelease(4e6, 300.0, _l1(300.0), 0.02)
    curve = composed_curve([a, b, a])
    first, second = subsampled_skellam_rdp(1e6, 300.0, _l1(300.0), 0.05), subsampled_skellam_rdp(4e6, 300.0, _l1(300.0), 0.02)
    expected = [2 * x + y for x, y in zip(first, second)]
    assert curve == pytest.approx(expected, rel=1e-12)
    # tuples are accepted as (variance, l2, l1, q)
    assert record_level_epsilon([a, (4e6, 300.0, _l1(300.0), 0.02), a], DELTA) == record_level_epsilon([a, b, a], DELTA)
    assert record_level_epsilon([], DELTA) == 0.0


# --- (d) the calibrator -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "rounds", "q", "l2"),
    [(0.5, 100, 0.045, 32768.0), (2.0, 1000, 0.178, 65536.0), (8.0, 300, 0.089, 1000.0), (1.0, 50, 1.0, 30.0)],
)
def test_calibrated_variance_is_the_smallest_that_fits(target: float, rounds: int, q: float, l2: float) -> None:
    l1 = _l1(l2)
    variance = calibrate_record_level(target, DELTA, rounds, q, l2, l1)
    assert record_level_epsilon([SubsampledRelease(variance, l2, l1, q)] * rounds, DELTA) <= target
    slightly_less = variance * (1 - 1e-3)
    assert record_level_epsilon([SubsampledRelease(slightly_less, l2, l1, q)] * rounds, DELTA) > target


def test_calibration_counts_what_is_spent() -> None:
    l2, l1 = 1000.0, _l1(1000.0)
    spent = [SubsampledRelease((1.5 * l2) ** 2, l2, l1, 0.1)] * 40
    variance = calibrate_record_level(3.0, DELTA, 200, 0.1, l2, l1, spent)
    total = record_level_epsilon(spent + [SubsampledRelease(variance, l2, l1, 0.1)] * 200, DELTA)
    assert 3.0 * 0.99 < total <= 3.0
    assert variance > calibrate_record_level(3.0, DELTA, 200, 0.1, l2, l1)
    with pytest.raises(InvalidParameter, match="already made cost"):
        calibrate_record_level(0.1, DELTA, 10, 0.1, l2, l1, spent)


@pytest.mark.parametrize(
    "arguments",
    [
        dict(target_epsilon=0.0),
        dict(target_epsilon=float("nan")),
        dict(delta=1.0),
        dict(rounds=0),
        dict(rounds=2.5),
        dict(q=0.0),
        dict(q=1.5),
        dict(l2=-1.0),
        dict(tolerance=0.5),
        dict(bound="tight"),
        dict(target_epsilon=1e-9, rounds=10**6),
    ],
)
def test_calibrator_rejects_bad_arguments_with_one_line(arguments: dict) -> None:
    call = dict(target_epsilon=1.0, delta=DELTA, rounds=100, q=0.05, l2=100.0, l1=_l1(100.0)) | arguments
    with pytest.raises(InvalidParameter) as caught:
        calibrate_record_level(**call)
    assert "\n" not in str(caught.value)


def test_curve_rejects_bad_orders_and_releases() -> None:
    for orders in ((1,), (2, 300), (2.0,), ()):
        with pytest.raises(InvalidParameter):
            subsampled_skellam_rdp(1.0, 1.0, 1.0, 0.5, orders)
    for bad in ((0.0, 1.0, 1.0, 0.5), (1.0, 1.0, 1.0, 0.0), (1.0, float("inf"), 1.0, 0.5), (1.0, 1.0, 1.0), "abcd"):
        with pytest.raises(InvalidParameter):
            record_level_epsilon([bad], DELTA)


# --- (e) against central DP-SGD: noise multipliers next to dp-accounting PLD ------------------

#: digits: 1797 x 0.8 = 1437 records, d = 650, delta = 1e-5; PLD noise multipliers from
#: dp-accounting 0.6.0 (calibrate_gaussian(method="pld"), to 0.1%). The full table is in
#: docs/record-level-dp.md.
CENTRAL = [
    # (epsilon, expected batch, rounds, PLD noise multiplier)
    (0.5, 64, 100, 3.3656),
    (2.0, 64, 300, 1.7722),
    (4.0, 64, 300, 1.1388),
]


@pytest.mark.parametrize(("epsilon", "batch", "rounds", "pld"), CENTRAL)
def test_noise_multiplier_is_close_to_central_dp_sgd(epsilon: float, batch: int, rounds: int, pld: float) -> None:
    plan = plan_record_level(epsilon, DELTA, 1437, batch, rounds, 1.0, 650, 3, 5)
    # never less noise than the Gaussian needs by the same (RDP) analysis, and within 10% of the PLD one
    assert _gaussian_rdp(plan.noise_multiplier, plan.sampling_rate, rounds) <= plan.epsilon * (1 + 1e-6)
    assert pld < plan.noise_multiplier <= 1.10 * pld


# --- the planner ------------------------------------------------------------------------------


def _plan(**changes) -> RecordLevelPlan:
    arguments = (
        dict(
            target_epsilon=2.0,
            delta=DELTA,
            total_records=1437,
            expected_batch=128,
            rounds=500,
            clip_norm=1.0,
            dimension=650,
            honest_survivors=3,
            cohort_size=5,
        )
        | changes
    )
    return plan_record_level(**arguments)


def test_plan_numbers_are_consistent() -> None:
    plan = _plan()
    assert plan.sampling_rate == 128 / 1437
    assert plan.l2_sensitivity == plan.clip_norm * plan.scale + math.sqrt(650)
    assert plan.l1_sensitivity == min(math.sqrt(650) * plan.l2_sensitivity, plan.l2_sensitivity**2)
    assert plan.node_variance * plan.honest_survivors == pytest.approx(plan.total_variance, rel=1e-15)
    assert plan.noise_multiplier == math.sqrt(plan.total_variance) / plan.l2_sensitivity
    assert plan.noise_multiplier_if_all_honest == pytest.approx(plan.noise_multiplier * math.sqrt(5 / 3))
    assert plan.epsilon == record_level_epsilon([plan.release] * plan.rounds, DELTA)
    assert 2.0 * 0.999 < plan.epsilon <= 2.0
    assert plan.node_variance <= MAX_NODE_VARIANCE and plan.wrap_probability <= MAX_WRAP_PROBABILITY


def test_plan_uses_the_finest_safe_scale() -> None:
    plan = _plan()
    finer = plan.scale_bits + 1
    d2 = plan.clip_norm * 2.0**finer + math.sqrt(650)
    variance = calibrate_record_level(2.0, DELTA, 500, plan.sampling_rate, d2, _l1(d2))
    wrap, _ = record_level_wrap_probability(1437, plan.sampling_rate, 1.0, finer, 650, 5, variance / 3)
    assert variance / 3 > MAX_NODE_VARIANCE or wrap > MAX_WRAP_PROBABILITY


def test_noise_shares_are_sized_for_honest_survivors() -> None:
    one, three = _plan(honest_survivors=1, clip_norm=1e-5), _plan(honest_survivors=3, clip_norm=1e-5)
    assert one.scale_bits == three.scale_bits  # a small clip norm: neither hits the sampler's limit
    assert one.total_variance == three.total_variance
    assert one.node_variance == pytest.approx(3 * three.node_variance, rel=1e-12)


def test_plan_without_rounds_takes_the_most_that_fit() -> None:
    plan = _plan(rounds=None, noise_multiplier=3.0)
    assert plan.noise_multiplier == pytest.approx(3.0, rel=1e-12)
    assert plan.epsilon <= 2.0 < record_level_epsilon([plan.release] * (plan.rounds + 1), DELTA)
    capped = _plan(rounds=None, noise_multiplier=50.0, max_rounds=300)
    assert capped.rounds == 300


def test_batch_bound_holds_with_the_exact_binomial_tail() -> None:
    from scipy import stats

    for total, q in ((1437, 128 / 1437), (10**6, 0.001), (50, 0.5), (10, 1.0)):
        bound = batch_bound(total, q)
        assert bound >= total * q and bound <= total
        assert stats.binom.sf(bound, total, q) <= MAX_WRAP_PROBABILITY / 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(target_epsilon=-1.0), "target epsilon"),
        (dict(delta=0.0), "delta"),
        (dict(total_records=0), "total number of records"),
        (dict(expected_batch=2000), "expected batch"),
        (dict(rounds=0), "rounds"),
        (dict(clip_norm=0.0), "clip norm"),
        (dict(dimension=0), "dimension"),
        (dict(honest_survivors=0), "honest survivors"),
        (dict(honest_survivors=6), "honest survivors"),
        (dict(rounds=None), "noise multiplier"),
        (dict(noise_multiplier=1.0), "not both"),
        (dict(rounds=None, noise_multiplier=0.1), "not even one round"),
        (dict(clip_norm=1e12), "no safe integer scale"),
    ],
)
def test_plan_rejects_bad_input_with_a_clear_line(changes: dict, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message) as caught:
        _plan(**changes)
    assert "\n" not in str(caught.value)
