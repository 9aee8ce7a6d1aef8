"""Privacy accounting: golden values, monotonicity, the Skellam RDP curve, calibration, bad arguments.

The golden values were computed independently with Google's ``dp-accounting``
0.6.0 (``PLDAccountant`` / ``RdpAccountant`` on ``SelfComposedDpEvent`` of a
(Poisson-sampled) ``GaussianDpEvent``) at delta = 1e-5. The Skellam curve is
checked against a hand computation of Agarwal, Kairouz and Liu 2021 (Theorem
3.5 in the variance parametrisation: noise Poisson(V/2) - Poisson(V/2)) in
exact rational arithmetic, and the conversion to (epsilon, delta) against the
Canonne-Kamath-Steinke 2020 bound written out here.
"""

from __future__ import annotations

import math
from fractions import Fraction

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from securefed.dp.accountant import (
    RDP_ORDERS,
    SkellamRelease,
    calibrate_gaussian,
    calibrate_skellam_variance,
    gaussian_epsilon,
    skellam_epsilon,
    skellam_rdp,
)
from securefed.errors import InvalidParameter

DELTA = 1e-5
NAN = float("nan")


# --- golden values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("noise_multiplier", "steps", "sampling_rate", "method", "expected"),
    [
        (1.0, 100, 1.0, "pld", 91.8173),
        (1.0, 100, 1.0, "rdp", 96.1163),
        (1.1, 10_000, 0.01, "pld", 5.1926),
        (1.1, 10_000, 0.01, "rdp", 5.6320),
        (0.5, 10, 1.0, "pld", 46.2112),
    ],
)
def test_gaussian_epsilon_matches_dp_accounting_golden_values(
    noise_multiplier: float, steps: int, sampling_rate: float, method: str, expected: float
) -> None:
    epsilon = gaussian_epsilon(noise_multiplier, steps, DELTA, sampling_rate, method)
    assert abs(epsilon - expected) <= 5e-5, epsilon  # equal to 4 decimals


def test_pld_is_default_and_tighter_than_rdp() -> None:
    assert gaussian_epsilon(4.0, 1, DELTA) == gaussian_epsilon(4.0, 1, DELTA, method="pld")
    assert gaussian_epsilon(4.0, 1, DELTA, method="pld") < gaussian_epsilon(4.0, 1, DELTA, method="rdp")


def test_zero_steps_cost_nothing() -> None:
    assert gaussian_epsilon(1.0, 0, DELTA) == 0.0
    assert skellam_epsilon([], DELTA) == 0.0


# --- monotonicity -------------------------------------------------------------------------

SIGMAS = [0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]
RATES = [0.001, 0.01, 0.1, 0.5, 1.0]
STEPS = [1, 3, 10, 100, 500]


def _strictly_increasing(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("sampling_rate", [0.01, 1.0])
@pytest.mark.parametrize("steps", [1, 1000])
def test_gaussian_rdp_epsilon_decreases_with_noise(steps: int, sampling_rate: float) -> None:
    values = [gaussian_epsilon(z, steps, DELTA, sampling_rate, "rdp") for z in SIGMAS]
    assert _strictly_increasing(values[::-1]), values


@pytest.mark.parametrize("noise_multiplier", [0.7, 3.0])
@pytest.mark.parametrize("steps", [1, 1000])
def test_gaussian_rdp_epsilon_increases_with_sampling_rate(noise_multiplier: float, steps: int) -> None:
    values = [gaussian_epsilon(noise_multiplier, steps, DELTA, q, "rdp") for q in RATES]
    assert _strictly_increasing(values), values


@pytest.mark.parametrize("noise_multiplier", [0.7, 1.0, 3.0])
@pytest.mark.parametrize("sampling_rate", [0.01, 1.0])
def test_gaussian_rdp_epsilon_increases_with_rounds(noise_multiplier: float, sampling_rate: float) -> None:
    values = [gaussian_epsilon(noise_multiplier, steps, DELTA, sampling_rate, "rdp") for steps in STEPS]
    assert _strictly_increasing(values), values


def test_gaussian_pld_epsilon_is_monotone_on_a_small_grid() -> None:
    """The PLD accountant is slow at small noise, so a few cheap points only."""
    assert gaussian_epsilon(3.0, 2, DELTA) > gaussian_epsilon(4.0, 2, DELTA) > gaussian_epsilon(5.0, 2, DELTA)
    assert gaussian_epsilon(4.0, 1, DELTA) < gaussian_epsilon(4.0, 2, DELTA) < gaussian_epsilon(4.0, 4, DELTA)
    assert gaussian_epsilon(4.0, 2, DELTA, 0.2) < gaussian_epsilon(4.0, 2, DELTA, 0.5) < gaussian_epsilon(4.0, 2, DELTA, 1.0)


def _skellam(z: float, d2: float = 1000.0, d1: float = 30_000.0) -> SkellamRelease:
    """A Skellam release whose noise standard deviation is z times its L2 sensitivity (variance ~ sigma^2)."""
    return SkellamRelease((z * d2) ** 2, d2, d1)


@pytest.mark.parametrize("rounds", [1, 10, 300])
def test_skellam_epsilon_decreases_with_noise(rounds: int) -> None:
    values = [skellam_epsilon([_skellam(z)] * rounds, DELTA) for z in SIGMAS]
    assert _strictly_increasing(values[::-1]), values


@pytest.mark.parametrize("noise_multiplier", [0.7, 1.0, 3.0, 10.0])
def test_skellam_epsilon_increases_with_rounds(noise_multiplier: float) -> None:
    values = [skellam_epsilon([_skellam(noise_multiplier)] * steps, DELTA) for steps in STEPS]
    assert _strictly_increasing(values), values


def test_skellam_epsilon_increases_with_sensitivity_at_fixed_variance() -> None:
    variance = 1e6
    by_l2 = [skellam_epsilon([SkellamRelease(variance, d2, 1000.0)] * 5, DELTA) for d2 in (10, 100, 300, 1000)]
    by_l1 = [skellam_epsilon([SkellamRelease(1e4, 100.0, d1)] * 5, DELTA) for d1 in (100, 1e3, 1e4, 1e5)]
    assert _strictly_increasing(by_l2), by_l2
    assert _strictly_increasing(by_l1), by_l1


def test_composition_of_different_releases_adds_rdp() -> None:
    first, second = _skellam(1.0), _skellam(2.5)
    composed = skellam_epsilon([first, second], DELTA)
    assert skellam_epsilon([first], DELTA) < composed < skellam_epsilon([first, first], DELTA)
    assert skellam_epsilon([second, first], DELTA) == pytest.approx(composed, rel=1e-12)


# --- the Skellam RDP curve, by hand -------------------------------------------------------


def _hand_rdp(order: int, variance: Fraction, d2: Fraction, d1: Fraction) -> Fraction:
    """Agarwal-Kairouz-Liu 2021, Thm 3.5 with mu = V/2 per Poisson (so their 4 mu = 2V, 16 mu^2 = 4V^2):

    eps(a) = a D2^2 / (4 mu) + min(((2a - 1) D2^2 + 6 D1) / (16 mu^2), 3 D1 / (4 mu))
    """
    mu = variance / 2
    main = order * d2 * d2 / (4 * mu)
    surcharge = min(((2 * order - 1) * d2 * d2 + 6 * d1) / (16 * mu * mu), 3 * d1 / (4 * mu))
    return main + surcharge


def _hand_epsilon(orders: list[int], curve: list[float], delta: float) -> float:
    """Canonne, Kamath, Steinke 2020 (Prop. 12 of arXiv:2004.00010): min over orders of
    rdp(a) + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1), floored at 0."""
    return max(0.0, min(r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1) for a, r in zip(orders, curve)))


@pytest.mark.parametrize(
    ("variance", "d2", "d1"),
    [
        (Fraction(1), Fraction(1), Fraction(1)),  # tiny noise: the 3 D1 / (2V) branch of the min
        (Fraction(50), Fraction(3), Fraction(9)),
        (Fraction(10**6), Fraction(1000), Fraction(31623)),  # large noise: the 1 / V^2 branch
        (Fraction(7, 3), Fraction(5, 2), Fraction(6)),
    ],
)
def test_skellam_rdp_matches_a_hand_computation(variance: Fraction, d2: Fraction, d1: Fraction) -> None:
    orders = [2, 3, 7, 32, 128, 1024]
    got = skellam_rdp(SkellamRelease(float(variance), float(d2), float(d1)), orders)
    for order, value in zip(orders, got):
        assert value == pytest.approx(float(_hand_rdp(order, variance, d2, d1)), rel=1e-12), order


def test_both_branches_of_the_surcharge_are_exercised() -> None:
    small, large = (Fraction(1), Fraction(1), Fraction(1)), (Fraction(10**6), Fraction(1000), Fraction(31623))
    for (variance, d2, d1), first_branch in ((small, False), (large, True)):
        mu = variance / 2
        quadratic = ((2 * 2 - 1) * d2 * d2 + 6 * d1) / (16 * mu * mu)
        assert (quadratic < 3 * d1 / (4 * mu)) is first_branch


@pytest.mark.parametrize("rounds", [1, 4, 50])
@pytest.mark.parametrize("z", [0.8, 1.7, 6.0])
def test_skellam_epsilon_matches_hand_conversion(rounds: int, z: float) -> None:
    release = _skellam(z, d2=40.0, d1=200.0)
    curve = [rounds * float(_hand_rdp(a, Fraction(release.variance), Fraction(40), Fraction(200))) for a in RDP_ORDERS]
    expected = _hand_epsilon(list(RDP_ORDERS), curve, DELTA)
    assert skellam_epsilon([release] * rounds, DELTA) == pytest.approx(expected, rel=1e-9)


def test_skellam_is_never_better_than_gaussian_on_the_same_orders_and_converges_to_it() -> None:
    """Same orders, same noise multiplier: Skellam RDP = Gaussian RDP + a surcharge >= 0 that is O(1/V)."""
    gaps = []
    for d2 in (10.0, 100.0, 1e4):
        release = SkellamRelease((2.0 * d2) ** 2, d2, d2 * math.sqrt(1000))
        accountant = rdp_privacy_accountant.RdpAccountant(orders=list(RDP_ORDERS))
        accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 10))
        gaussian = accountant.get_epsilon(DELTA)
        skellam = skellam_epsilon([release] * 10, DELTA)
        assert skellam >= gaussian - 1e-12
        gaps.append(skellam / gaussian - 1)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5, gaps


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (2.0, 10), (0.8, 3), (5.0, 100), (10.0, 1000)])
def test_large_variance_skellam_approaches_gaussian_rdp_epsilon(z: float, rounds: int) -> None:
    """With V large and D1 small relative to V, Skellam's curve is the Gaussian curve a D2^2 / (2V) plus a
    discretisation surcharge of order D2^2 / V^2 per order, which vanishes; so epsilon approaches the Gaussian
    RDP epsilon of noise multiplier sqrt(V) / D2. What remains is only the order grid (dp-accounting's RDP
    accountant also tries fractional orders such as 2.5, Skellam's bound holds at integer orders only): within
    5% wherever epsilon is moderate (at epsilon in the hundreds the best order falls below 2 and the grids part).
    The tight comparison, on identical orders, is the test above."""
    d2 = 1e4
    release = SkellamRelease((z * d2) ** 2, d2, d2 * 30)
    skellam = skellam_epsilon([release] * rounds, DELTA)
    gaussian = gaussian_epsilon(math.sqrt(release.variance) / d2, rounds, DELTA, method="rdp")
    assert skellam >= gaussian * (1 - 1e-9)
    assert skellam == pytest.approx(gaussian, rel=0.05)


# --- calibration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "rounds", "d2", "d1"),
    [(1.0, 1, 100.0, 1000.0), (4.0, 3, 8_388_633.5, 2.1e8), (8.0, 100, 50.0, 2500.0), (0.5, 20, 1e4, 3e5)],
)
def test_calibrated_skellam_variance_is_within_target_and_tight(target: float, rounds: int, d2: float, d1: float) -> None:
    variance = calibrate_skellam_variance(target, rounds, DELTA, d2, d1)
    assert skellam_epsilon([SkellamRelease(variance, d2, d1)] * rounds, DELTA) <= target
    less = variance * 0.998**2  # 0.2% less noise (standard deviation)
    assert skellam_epsilon([SkellamRelease(less, d2, d1)] * rounds, DELTA) > target


@pytest.mark.parametrize(("already", "rounds"), [(1, 9), (5, 5), (9, 1), (3, 20)])
def test_calibration_counts_the_releases_already_made(already: int, rounds: int) -> None:
    """``rounds`` more releases on top of ``spent`` ones: all of them together within the target, and tight."""
    target, d2, d1 = 8.0, 1000.0, 30_000.0
    first = calibrate_skellam_variance(target, already + rounds, DELTA, d2, d1)
    spent = [SkellamRelease(first, d2, d1)] * already
    variance = calibrate_skellam_variance(target, rounds, DELTA, d2, d1, spent=spent)
    assert skellam_epsilon([*spent, *[SkellamRelease(variance, d2, d1)] * rounds], DELTA) <= target
    less = variance * 0.998**2
    assert skellam_epsilon([*spent, *[SkellamRelease(less, d2, d1)] * rounds], DELTA) > target
    # What was spent is what the first plan assumed, so the rest need no more noise than it planned (to the
    # bisection's 0.1%), and little less: only the first plan's slack below the target is left over for them.
    assert math.sqrt(first) * 0.99 <= math.sqrt(variance) <= math.sqrt(first) * 1.001
    # The spent releases may differ from the new ones (another scale): composed by their own parameters.
    other = [SkellamRelease(4e6, 500.0, 5000.0)] * already
    mixed = calibrate_skellam_variance(target, rounds, DELTA, d2, d1, spent=other)
    assert skellam_epsilon([*other, *[SkellamRelease(mixed, d2, d1)] * rounds], DELTA) <= target


def test_calibration_without_spent_releases_is_unchanged() -> None:
    assert calibrate_skellam_variance(4.0, 3, DELTA, 1000.0, 30_000.0, spent=()) == calibrate_skellam_variance(
        4.0, 3, DELTA, 1000.0, 30_000.0
    )


def test_calibration_refuses_when_the_releases_already_made_leave_no_room() -> None:
    d2, d1 = 1000.0, 30_000.0
    spent = [SkellamRelease(calibrate_skellam_variance(8.0, 10, DELTA, d2, d1), d2, d1)] * 10
    already = skellam_epsilon(spent, DELTA)
    assert 7.9 < already <= 8.0
    # The target already reached (or passed): no noise can make another round fit.
    for target in (already, already * 0.9):
        with pytest.raises(InvalidParameter, match="already made") as refused:
            calibrate_skellam_variance(target, 4, DELTA, d2, d1, spent=spent)
        assert f"{already:.4f}" in str(refused.value)
    # A sliver of room and many rounds: unreachable even with the largest noise searched, refused too.
    with pytest.raises(InvalidParameter):
        calibrate_skellam_variance(already + 1e-3, 10_000, DELTA, d2, d1, spent=spent)


@pytest.mark.parametrize(("target", "steps", "sampling_rate"), [(1.0, 1, 1.0), (2.0, 10, 1.0), (3.0, 1000, 0.01), (8.0, 50, 1.0)])
def test_calibrated_gaussian_noise_is_within_target_and_tight(target: float, steps: int, sampling_rate: float) -> None:
    z = calibrate_gaussian(target, steps, DELTA, sampling_rate, method="rdp")
    assert gaussian_epsilon(z, steps, DELTA, sampling_rate, "rdp") <= target
    assert gaussian_epsilon(z * 0.998, steps, DELTA, sampling_rate, "rdp") > target


def test_pld_calibration_searches_only_near_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """PLD is slow for tiny noise multipliers; the search must stay near the answer (no timing needed)."""
    import securefed.dp.accountant as accountant

    evaluated: list[float] = []
    real = accountant.gaussian_epsilon

    def recording(z, steps, delta, sampling_rate=1.0, method="pld"):
        if method == "pld":
            evaluated.append(z)
        return real(z, steps, delta, sampling_rate, method)

    monkeypatch.setattr(accountant, "gaussian_epsilon", recording)
    z = calibrate_gaussian(2.0, 1, DELTA)
    assert real(z, 1, DELTA) <= 2.0 < real(z * 0.998, 1, DELTA)
    assert evaluated and min(evaluated) >= z / 4, f"PLD evaluated at {min(evaluated):.3f}, answer {z:.3f}"
    assert len(evaluated) <= 20


def test_unreachable_targets_are_refused() -> None:
    with pytest.raises(InvalidParameter, match="unreachable"):
        calibrate_skellam_variance(1e-4, 1000, DELTA, 10.0, 100.0)
    with pytest.raises(InvalidParameter, match="unreachable"):
        calibrate_gaussian(1e-6, 3, DELTA, method="rdp")


# --- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0},
        {"noise_multiplier": -1.0},
        {"steps": -1},
        {"sampling_rate": 0.0},
        {"sampling_rate": 1.5},
        {"sampling_rate": NAN},
        {"delta": 0.0},
        {"delta": 1.0},
        {"delta": NAN},
        {"method": "moments"},
    ],
)
def test_gaussian_epsilon_refuses_bad_arguments(kwargs: dict) -> None:
    args = {"noise_multiplier": 1.0, "steps": 3, "delta": DELTA, "sampling_rate": 1.0, "method": "rdp", **kwargs}
    with pytest.raises(InvalidParameter):
        gaussian_epsilon(**args)


def test_gaussian_epsilon_refuses_nan_noise_multiplier() -> None:
    with pytest.raises(InvalidParameter):
        gaussian_epsilon(NAN, 3, DELTA, method="rdp")


def test_calibration_refuses_nan_target() -> None:
    with pytest.raises(InvalidParameter):
        calibrate_skellam_variance(NAN, 3, DELTA, 10.0, 100.0)
    with pytest.raises(InvalidParameter):
        calibrate_gaussian(NAN, 3, DELTA, method="rdp")


@pytest.mark.parametrize("target", [0.0, -1.0])
def test_calibration_refuses_non_positive_targets(target: float) -> None:
    with pytest.raises(InvalidParameter):
        calibrate_skellam_variance(target, 3, DELTA, 10.0, 100.0)
    with pytest.raises(InvalidParameter):
        calibrate_gaussian(target, 3, DELTA, method="rdp")


def test_calibration_refuses_zero_rounds_and_bad_sensitivities() -> None:
    with pytest.raises(InvalidParameter):
        calibrate_skellam_variance(1.0, 0, DELTA, 10.0, 100.0)
    for d2, d1 in ((0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (NAN, 1.0)):
        with pytest.raises(InvalidParameter):
            calibrate_skellam_variance(1.0, 3, DELTA, d2, d1)
    with pytest.raises(InvalidParameter):
        calibrate_skellam_variance(1.0, 3, 0.0, 10.0, 100.0)


@pytest.mark.parametrize(
    ("variance", "d2", "d1"),
    [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (NAN, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, -2.0), (1.0, NAN, 1.0)],
)
def test_skellam_release_refuses_non_positive_values(variance: float, d2: float, d1: float) -> None:
    with pytest.raises(InvalidParameter):
        SkellamRelease(variance, d2, d1)


@pytest.mark.parametrize("orders", [[1], [0, 2], [2.5], [2, 3.0]])
def test_skellam_rdp_refuses_orders_that_are_not_integers_of_at_least_two(orders: list) -> None:
    with pytest.raises(InvalidParameter):
        skellam_rdp(_skellam(1.0), orders)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, NAN])
def test_skellam_epsilon_refuses_bad_delta(delta: float) -> None:
    with pytest.raises(InvalidParameter):
        skellam_epsilon([_skellam(1.0)], delta)
