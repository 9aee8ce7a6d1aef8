"""The Skellam noise sampler: its distribution, the sum of the nodes' shares, and its arguments.

The distribution tests are goodness-of-fit tests with a fixed seed, so they are
deterministic: a G-test (log-likelihood ratio) of 10^6 draws against the exact
Skellam pmf from scipy, tails merged so that every bin expects at least 5
draws, must not reject at p = 1e-4. Each comes with its power check: the same
test at the same sample size *does* reject a plausible wrong sampler (a
rounded Gaussian of the same variance, or Skellam with 20% too much
variance), so a pass means something.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from scipy import stats

from securefed.dp.noise import NoiseSource
from securefed.errors import InvalidParameter

DRAWS = 10**6
P_REJECT = 1e-4


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"securefed/tests/noise/{label}".encode()).digest()


def g_test(samples: np.ndarray, variance: float) -> tuple[float, int]:
    """(p-value, number of bins) of a G-test of integer ``samples`` against symmetric Skellam(variance).

    Bins: one per integer whose expected count is >= 5 (a contiguous range, the
    pmf being unimodal), plus a left and a right tail bin, each merged into its
    neighbour when it expects fewer than 5.
    """
    n = samples.size
    dist = stats.skellam(mu1=variance / 2, mu2=variance / 2)
    reach = int(50 + 20 * math.sqrt(variance))
    support = np.arange(-reach, reach + 1)
    central = support[n * dist.pmf(support) >= 5]
    lo, hi = int(central[0]), int(central[-1])
    assert np.all(np.diff(central) == 1)  # contiguous
    values, counts = np.unique(samples, return_counts=True)
    inside = (values >= lo) & (values <= hi)
    observed_central = np.zeros(hi - lo + 1)
    observed_central[values[inside] - lo] = counts[inside]
    observed = np.concatenate([[counts[values < lo].sum()], observed_central, [counts[values > hi].sum()]])
    expected = np.concatenate([[n * dist.cdf(lo - 1)], n * dist.pmf(np.arange(lo, hi + 1)), [n * dist.sf(hi)]])
    if expected[0] < 5:
        observed[1] += observed[0]
        expected[1] += expected[0]
        observed, expected = observed[1:], expected[1:]
    if expected[-1] < 5:
        observed[-2] += observed[-1]
        expected[-2] += expected[-1]
        observed, expected = observed[:-1], expected[:-1]
    assert expected.min() >= 5
    expected *= observed.sum() / expected.sum()  # pmf mass beyond +-reach is < 1e-80; keep totals equal
    _, p_value = stats.power_divergence(observed, expected, lambda_="log-likelihood")
    return float(p_value), len(observed)


# --- the sampler's distribution -------------------------------------------------------


@pytest.mark.parametrize("variance", [2.5, 10.0, 47.0, 1000.0])
def test_skellam_draws_match_the_skellam_pmf(variance: float) -> None:
    """10^6 draws fit Skellam(V/2, V/2); V/2 below and above 10 covers both of numpy's Poisson algorithms."""
    samples = NoiseSource(seed=_seed(f"fit/{variance}")).skellam(variance, DRAWS)
    assert samples.dtype == np.int64 and samples.shape == (DRAWS,)
    p_value, bins = g_test(samples, variance)
    assert bins >= 10
    assert p_value > P_REJECT, f"G-test rejects Skellam(V={variance}): p = {p_value:.3g} over {bins} bins"


@pytest.mark.parametrize("variance", [2.5, 10.0])
def test_g_test_rejects_a_rounded_gaussian_of_the_same_variance(variance: float) -> None:
    """Power: a rounded Gaussian (the obvious wrong integer sampler) fails the same test at the same size."""
    rng = np.random.default_rng(20240601)
    wrong = np.rint(rng.normal(0.0, math.sqrt(variance), DRAWS)).astype(np.int64)
    p_value, _ = g_test(wrong, variance)
    assert p_value < P_REJECT, f"the G-test cannot tell a rounded Gaussian from Skellam (p = {p_value:.3g})"


@pytest.mark.parametrize("variance", [2.5, 10.0, 47.0, 1000.0])
def test_g_test_rejects_skellam_with_twenty_percent_too_much_variance(variance: float) -> None:
    wrong = NoiseSource(seed=_seed(f"wide/{variance}")).skellam(1.2 * variance, DRAWS)
    p_value, _ = g_test(wrong, variance)
    assert p_value < P_REJECT, f"the G-test cannot see 1.2x variance (p = {p_value:.3g})"


# --- the sum of the nodes' shares -----------------------------------------------------


def test_sum_of_node_shares_has_n_times_the_node_variance_and_zero_mean() -> None:
    """n nodes (independent generators) adding V_node each give noise of variance n V_node, mean 0, Skellam."""
    n, node_variance, m = 5, 2.6, 400_000
    shares = np.stack([NoiseSource(seed=_seed(f"share/{i}")).skellam(node_variance, m) for i in range(n)])
    total = shares.sum(axis=0)
    target = n * node_variance
    # Sampling distribution of the sample variance: sd = sqrt((mu4 - sigma^4) / m), and for Skellam
    # mu4 = 3 sigma^4 + sigma^2 (excess kurtosis 1 / sigma^2).
    sd_of_variance = math.sqrt((2 * target**2 + target) / m)
    assert abs(total.var(ddof=1) - target) < 5 * sd_of_variance, (total.var(ddof=1), target)
    assert 5 * sd_of_variance < 0.05 * target  # the check could tell n V_node from (n - 1) V_node
    assert abs(total.mean()) < 5 * math.sqrt(target / m), total.mean()
    # Closed under addition: the sum is Skellam(n V_node), not merely something with that variance.
    p_value, _ = g_test(total, target)
    assert p_value > P_REJECT, p_value
    # The nodes' shares are uncorrelated (their generators are independent).
    correlations = np.corrcoef(shares)[np.triu_indices(n, 1)]
    assert np.all(np.abs(correlations) < 5 / math.sqrt(m)), correlations


# --- seeding and arguments ------------------------------------------------------------


def test_unseeded_sources_differ() -> None:
    first, second = NoiseSource().skellam(100.0, 1000), NoiseSource().skellam(100.0, 1000)
    assert not np.array_equal(first, second)
    assert not np.array_equal(NoiseSource().uniform(64), NoiseSource().uniform(64))


def test_same_seed_gives_the_same_stream_and_different_seeds_do_not() -> None:
    seed = _seed("repeat")
    assert np.array_equal(NoiseSource(seed).skellam(9.0, 1000), NoiseSource(seed).skellam(9.0, 1000))
    other = bytes([seed[0] ^ 1]) + seed[1:]
    assert not np.array_equal(NoiseSource(seed).skellam(9.0, 1000), NoiseSource(other).skellam(9.0, 1000))
    counter_only = seed[:16] + bytes([seed[16] ^ 1]) + seed[17:]
    assert not np.array_equal(NoiseSource(seed).skellam(9.0, 1000), NoiseSource(counter_only).skellam(9.0, 1000))


@pytest.mark.parametrize("seed", [b"", bytes(15), "0123456789abcdef0123", 12345, [0] * 32])
def test_short_or_non_bytes_seed_is_refused(seed: object) -> None:
    with pytest.raises(InvalidParameter, match="16 bytes"):
        NoiseSource(seed)  # type: ignore[arg-type]


def test_sixteen_byte_seed_is_accepted() -> None:
    assert NoiseSource(bytes(range(16))).skellam(4.0, 10).shape == (10,)


def test_zero_variance_gives_zeros() -> None:
    zeros = NoiseSource(_seed("zero")).skellam(0.0, 17)
    assert zeros.dtype == np.int64 and zeros.shape == (17,) and not zeros.any()


@pytest.mark.parametrize("variance", [-1.0, -1e-300, float("nan"), float("inf"), float("-inf")])
def test_negative_or_non_finite_variance_is_refused(variance: float) -> None:
    with pytest.raises(InvalidParameter, match="variance"):
        NoiseSource(_seed("bad")).skellam(variance, 10)


def test_uniform_is_in_unit_interval_and_uniform() -> None:
    u = NoiseSource(_seed("uniform")).uniform(200_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > P_REJECT


# --- the noise at the scales the planner really picks -------------------------------------------
#
# Skellam(V) has mean 0, variance V, excess kurtosis 1/V (about 0 here) and, at these variances,
# normal tails to within a relative 1e-4. numpy's Poisson sampler works in floating point and
# drifts above rates of ~1e12 (variance off by 1.5% at 6e13, kurtosis 0.22 at 1e15): the planner
# must never ask for that, and at every operating point it does produce, 4 million draws must
# show the calibrated variance, no excess kurtosis and normal tails (|z| < 5 each, p ~ 6e-7).

OPERATING_DRAWS = 4_000_000
#: (target epsilon, rounds, clip norm, dimension, cohort, honest survivors t - c): the demo's digits
#: model (5 sites, t = 4, c = 1) at epsilon 8 and 1, and the benchmark MLP with 10 sites (t = 7, c = 2)
OPERATING_POINTS = {
    "demo digits, epsilon 8": (8.0, 10, 0.5, 650, 5, 3),
    "demo digits, epsilon 1": (1.0, 10, 0.5, 650, 5, 3),
    "MLP d=105010, 10 sites, epsilon 8": (8.0, 10, 1.0, 105_010, 10, 5),
}


def _moments(samples: np.ndarray, variance: float) -> tuple[float, float, float]:
    """z-scores of (variance ratio - 1), excess kurtosis, and the 4-sigma tail frequency."""
    n = samples.size
    x = samples.astype(np.float64)
    ratio = float(x.var()) / variance
    z_variance = (ratio - 1) / math.sqrt(2 / n)
    standardised = x / math.sqrt(variance)
    kurtosis = float(np.mean(standardised**4)) - 3
    z_kurtosis = kurtosis / math.sqrt(24 / n)
    tail = 2 * stats.norm.sf(4)
    observed = float(np.mean(np.abs(standardised) > 4))
    z_tail = (observed - tail) / math.sqrt(tail * (1 - tail) / n)
    return z_variance, z_kurtosis, z_tail


@pytest.mark.parametrize("point", list(OPERATING_POINTS))
def test_noise_at_each_planned_operating_point_is_skellam(point: str) -> None:
    from securefed.dp.mechanism import MAX_NODE_VARIANCE, plan_skellam

    epsilon, rounds, clip, dimension, cohort, honest = OPERATING_POINTS[point]
    plan = plan_skellam(epsilon, 1e-5, rounds, clip, dimension, cohort, honest)
    assert plan.node_variance <= MAX_NODE_VARIANCE, f"{point}: the planner asked for V_node {plan.node_variance:.3g}"
    samples = NoiseSource(_seed(point)).skellam(plan.node_variance, OPERATING_DRAWS)
    z_variance, z_kurtosis, z_tail = _moments(samples, plan.node_variance)
    assert abs(z_variance) < 5, f"{point}: variance off by {z_variance:.1f} standard errors (V_node {plan.node_variance:.3g})"
    assert abs(z_kurtosis) < 5, f"{point}: excess kurtosis {z_kurtosis:.1f} standard errors from 0"
    assert abs(z_tail) < 5, f"{point}: 4-sigma tails {z_tail:.1f} standard errors from normal"
    assert abs(float(samples.mean())) < 5 * math.sqrt(plan.node_variance / OPERATING_DRAWS)


def test_the_moment_checks_catch_the_sampler_beyond_its_validated_range() -> None:
    """The power check: at a rate the old planner used (6e13 per Poisson, V = 1.2e14) the same checks
    reject numpy's sampler; the planner's bound keeps it out of that range."""
    variance = 1.2e14
    samples = NoiseSource(_seed("beyond")).skellam(variance, OPERATING_DRAWS)
    z_variance, _, _ = _moments(samples, variance)
    assert abs(z_variance) >= 5, f"expected the drift to show (z = {z_variance:.1f})"


def test_the_moment_checks_catch_half_the_variance() -> None:
    samples = NoiseSource(_seed("half")).skellam(4e9, OPERATING_DRAWS)
    z_variance, _, _ = _moments(samples, 8e9)
    assert z_variance < -5
