"""The distributed Skellam mechanism: the plan, the wrap-around guard, encode -> sum -> decode, the spec.

The plan sizes each node's noise for t - c honest survivors (the threshold minus the colluders the
task assumes, who may add nothing), keeps every node's variance within ``MAX_NODE_VARIANCE`` (where
the sampler is validated) and, given the releases already made (``spent``), calibrates the remaining
rounds so that all of them together stay within the target.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from securefed.dp.accountant import SkellamRelease, calibrate_skellam_variance, skellam_epsilon
from securefed.dp.mechanism import MAX_NODE_VARIANCE, MAX_WRAP_PROBABILITY, SkellamParameters, plan_skellam
from securefed.dp.noise import NoiseSource
from securefed.encoding import clip_l2
from securefed.errors import EncodingError, InvalidParameter

DELTA = 1e-5
LIMIT = 2**31


def _source(label: str) -> NoiseSource:
    return NoiseSource(hashlib.sha256(f"securefed/tests/mechanism/{label}".encode()).digest())


def _sum_mod(encodings: list[np.ndarray]) -> np.ndarray:
    """What secure aggregation hands the coordinator: the sum of the encodings mod 2^32."""
    total = np.zeros_like(encodings[0])
    for vector in encodings:
        np.add(total, vector, out=total)  # uint32 arithmetic wraps like Z_(2^32)
    return total


# (target epsilon, delta, rounds, clip norm, dimension, cohort size, threshold, colluders): the threshold is
# the smallest the default colluder bound c = max(1, ceil(N/5)) allows (2t > N + c), and the noise is sized
# for t - c honest survivors. The last row is a site that assumes no colluders (c = 0).
PLANS = [
    (4.0, 1e-5, 3, 0.5, 650, 4, 3, 1),
    (8.0, 1e-5, 10, 0.5, 650, 5, 4, 1),  # the demo: digits, sgd_logistic, 5 nodes
    (1.0, 1e-5, 10, 1.0, 100, 10, 7, 2),
    (8.0, 1e-6, 100, 0.1, 5000, 20, 13, 4),
    (4.0, 1e-5, 3, 0.5, 100, 200, 121, 40),
    (2.0, 1e-5, 5, 1.0, 50, 1000, 601, 200),
    (0.1, 1e-5, 50, 1.0, 10, 5, 4, 1),
    (4.0, 1e-5, 3, 0.5, 650, 4, 3, 0),
]


# --- the plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("plan_args", PLANS)
def test_plan_stays_within_the_target_and_cannot_wrap(plan_args: tuple) -> None:
    target, delta, rounds, clip, dimension, cohort, threshold, colluders = plan_args
    honest = threshold - colluders
    plan = plan_skellam(target, delta, rounds, clip, dimension, cohort, honest)
    assert (plan.clip_norm, plan.dimension, plan.cohort_size) == (clip, dimension, cohort)
    # noise sized for the worst case: exactly t survivors, c of whom collude and add nothing
    assert plan.assumed_survivors == honest
    assert plan.total_variance == pytest.approx(honest * plan.node_variance, rel=1e-12)
    assert plan.epsilon(rounds, delta) <= target
    assert plan.wrap_probability <= MAX_WRAP_PROBABILITY
    assert plan.node_variance <= MAX_NODE_VARIANCE  # inside the range where the sampler is validated
    # Deterministic part of the worst case (every node at the clip on one coordinate) fits with room to spare.
    assert cohort * (clip * plan.scale + 1) < LIMIT
    # Not wasteful: 0.2% less noise (standard deviation) would overspend.
    weaker = SkellamRelease(plan.total_variance * 0.998**2, plan.l2_sensitivity, plan.l1_sensitivity)
    assert skellam_epsilon([weaker] * rounds, delta) > target


@pytest.mark.parametrize("plan_args", PLANS)
def test_plan_takes_the_finest_scale_that_is_safe(plan_args: tuple) -> None:
    """Safe: the sum cannot wrap, and no node is asked for more noise than the sampler is validated for."""
    target, delta, rounds, clip, dimension, cohort, threshold, colluders = plan_args
    honest = threshold - colluders
    plan = plan_skellam(target, delta, rounds, clip, dimension, cohort, honest)
    if plan.scale_bits == 24:
        return  # the plan's ceiling
    bits = plan.scale_bits + 1
    d2 = clip * (1 << bits) + math.sqrt(dimension)
    total = calibrate_skellam_variance(target, rounds, delta, d2, min(math.sqrt(dimension) * d2, d2 * d2))
    with pytest.raises(InvalidParameter, match=r"wrap|sampler is validated"):
        SkellamParameters(clip, bits, total / honest, honest, dimension, cohort)


#: (target, rounds, clip, dimension, cohort, honest survivors) -> (scale bits, node variance): operating
#: points the planner produces (docs/privacy.md); each is capped by the sampler's range, not by wrap-around.
OPERATING_POINTS = [
    ((8.0, 10, 0.5, 650, 5, 3), (17, 5.84e9)),  # the demo (digits logistic, n = 5, t = 4, c = 1)
    ((1.0, 10, 0.5, 650, 5, 3), (14, 3.68e9)),  # the demo at epsilon 1
    ((8.0, 10, 1.0, 105_010, 10, 5), (16, 3.53e9)),  # the MLP (n = 10, t = 7, c = 2)
]


@pytest.mark.parametrize(("plan_args", "expected"), OPERATING_POINTS)
def test_operating_points_stay_inside_the_sampler_range(plan_args: tuple, expected: tuple) -> None:
    target, rounds, clip, dimension, cohort, honest = plan_args
    plan = plan_skellam(target, DELTA, rounds, clip, dimension, cohort, honest)
    bits, variance = expected
    assert plan.scale_bits == bits
    assert plan.node_variance == pytest.approx(variance, rel=2e-3)
    # one scale finer would need ~4x the variance, beyond the sampler's range
    assert plan.node_variance <= MAX_NODE_VARIANCE < 4 * plan.node_variance
    assert plan.wrap_probability < 1e-100  # the sampler's range, not wrap-around, is what bounds the scale


def test_node_variance_above_the_sampler_range_is_refused_even_where_the_sum_could_not_wrap() -> None:
    args = {"clip_norm": 0.5, "scale_bits": 10, "assumed_survivors": 2, "dimension": 10, "cohort_size": 3}
    at_ceiling = SkellamParameters(node_variance=MAX_NODE_VARIANCE, **args)
    assert at_ceiling.wrap_probability == 0.0
    with pytest.raises(InvalidParameter, match="sampler is validated") as refused:
        SkellamParameters(node_variance=MAX_NODE_VARIANCE * 1.001, **args)
    assert "wrap" not in str(refused.value)
    assert MAX_NODE_VARIANCE == 2.0**33  # Poisson rates up to 2^32


@pytest.mark.parametrize("honest", [0, -1, 2.0, True])
def test_noise_for_no_honest_survivor_is_refused(honest: object) -> None:
    with pytest.raises(InvalidParameter):
        plan_skellam(4.0, DELTA, 3, 0.5, 650, 4, honest)


def test_plan_counts_the_releases_already_made() -> None:
    """With ``spent``, the remaining rounds are calibrated so that all of them together stay within the target."""
    target, rounds = 8.0, 10
    first = plan_skellam(target, DELTA, rounds, 0.5, 650, 5, 3)
    spent = [first.release] * 6  # six rounds made under the first plan
    rest = plan_skellam(target, DELTA, 4, 0.5, 650, 5, 3, spent=spent)
    total = skellam_epsilon([*spent, *[rest.release] * 4], DELTA)
    assert total <= target
    assert total == pytest.approx(target, rel=5e-3)  # and not wastefully below it
    # The same plan made for the same rounds gives the same noise (up to the bisection's 0.1%).
    assert rest.noise_multiplier == pytest.approx(first.noise_multiplier, rel=3e-3)
    # Raising the number of rounds after some were spent: more noise for the rest, never a lower epsilon.
    more = plan_skellam(target, DELTA, 8, 0.5, 650, 5, 3, spent=spent)
    assert more.noise_multiplier > rest.noise_multiplier
    assert skellam_epsilon([*spent, *[more.release] * 8], DELTA) <= target
    assert skellam_epsilon([*spent, more.release], DELTA) >= skellam_epsilon(spent, DELTA)


def test_plan_is_refused_when_the_releases_already_made_leave_no_room() -> None:
    done = plan_skellam(8.0, DELTA, 10, 0.5, 650, 5, 3)
    over = [done.release] * 11  # one more round than the target allows
    assert skellam_epsilon(over, DELTA) > 8.0
    with pytest.raises(InvalidParameter, match="already made"):
        plan_skellam(8.0, DELTA, 1, 0.5, 650, 5, 3, spent=over)


def test_plan_is_refused_when_no_scale_is_safe() -> None:
    with pytest.raises(InvalidParameter, match="no safe DP scale"):
        plan_skellam(1.0, DELTA, 3, 1.0, 10, 2_000_000_000, 1_200_000_000)


def test_plan_with_an_unreachable_target_is_refused() -> None:
    with pytest.raises(InvalidParameter):
        plan_skellam(1e-4, DELTA, 1000, 1.0, 10, 5, 3)


def test_sensitivities_are_the_documented_bounds() -> None:
    params = SkellamParameters(0.5, 10, 1e6, 3, 400, 5)
    assert params.scale == 1024.0
    assert params.l2_sensitivity == 0.5 * 1024 + 20  # C s + sqrt(d)
    assert params.l1_sensitivity == min(20 * params.l2_sensitivity, params.l2_sensitivity**2)
    assert params.noise_multiplier == pytest.approx(math.sqrt(3e6) / params.l2_sensitivity)
    assert params.release == SkellamRelease(3e6, params.l2_sensitivity, params.l1_sensitivity)
    # D2 = C s + sqrt(d) >= sqrt(d), so sqrt(d) D2 <= D2^2: the L1 bound is always sqrt(d) D2.
    tiny = SkellamParameters(1.0, 0, 1.0, 1, 100, 3)
    assert tiny.l1_sensitivity == 10 * 11.0


# --- the wrap-around guard --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        # the clipped inputs alone overflow: 4 (2^30 + 1) > 2^31
        {"clip_norm": 1.0, "scale_bits": 30, "node_variance": 1.0, "cohort_size": 4},
        # the inputs fit, but the noise of ten million nodes, each at the sampler's ceiling, does not
        {"clip_norm": 1.0, "scale_bits": 0, "node_variance": MAX_NODE_VARIANCE, "cohort_size": 10_000_000},
        # a huge cohort at a fine scale
        {"clip_norm": 0.5, "scale_bits": 24, "node_variance": 1.0, "cohort_size": 300},
    ],
)
def test_parameters_that_could_wrap_are_refused(kwargs: dict) -> None:
    args = {"assumed_survivors": 2, "dimension": 1000, **kwargs}
    with pytest.raises(InvalidParameter, match="wrap the modular sum"):
        SkellamParameters(**args)


def test_wrap_probability_grows_with_noise_cohort_and_dimension() -> None:
    # Within the sampler's range (node variance <= 2^33) the noise only threatens the sum of millions of nodes.
    base = {
        "clip_norm": 1.0, "scale_bits": 0, "node_variance": MAX_NODE_VARIANCE, "assumed_survivors": 2,
        "dimension": 100, "cohort_size": 5_000_000,
    }  # fmt: skip
    p = SkellamParameters(**base).wrap_probability
    assert 0 < p <= MAX_WRAP_PROBABILITY
    assert SkellamParameters(**{**base, "node_variance": MAX_NODE_VARIANCE / 2}).wrap_probability < p
    assert SkellamParameters(**{**base, "dimension": 10}).wrap_probability < p
    assert SkellamParameters(**{**base, "cohort_size": 4_000_000}).wrap_probability < p


#: 2000 nodes (c = 400, t = 1201: noise for 801 honest survivors): the finest safe scale is 2^21, where
#: the clipped inputs of the whole cohort alone reach ~98% of 2^31.
EDGE = (4.0, DELTA, 3, 0.5, 100, 2000, 801)


def test_sum_never_wraps_for_a_full_cohort_at_the_extreme() -> None:
    """2000 nodes, the finest safe scale, every node's update at the clip on the same coordinate and sign:
    the deterministic part is ~98% of 2^31, and the modular sum still decodes to the true integer sum.
    (With the node variance capped at 2^33 a cohort of 200 no longer gets near the edge: the planner's
    scale is bounded by the sampler's range there.)"""
    plan = plan_skellam(*EDGE)
    assert plan.scale_bits == 21 and plan.node_variance <= MAX_NODE_VARIANCE
    n, d, clip = plan.cohort_size, plan.dimension, plan.clip_norm
    assert n * (clip * plan.scale + 1) + 10 * math.sqrt(n * plan.node_variance) < LIMIT - 1
    extremes = {
        "one coordinate, +": np.eye(d)[0] * clip,
        "one coordinate, -": -np.eye(d)[0] * clip,
        "far beyond the clip": np.eye(d)[0] * 1e9,
        "every coordinate, +": np.full(d, clip / math.sqrt(d)),
    }
    for name, update in extremes.items():
        encodings = [plan.encode(update, _source(f"extreme/{name}/{i}")) for i in range(n)]
        exact = np.sum([e.view(np.int32).astype(np.int64) for e in encodings], axis=0)
        assert np.abs(exact).max() < LIMIT - 1, name
        decoded_sum = _sum_mod(encodings).view(np.int32).astype(np.int64)
        assert np.array_equal(decoded_sum, exact), f"{name}: the modular sum wrapped"
        mean = plan.decode_mean(_sum_mod(encodings), n)
        noise_sd = math.sqrt(n * plan.node_variance) / plan.scale / n
        assert np.all(np.abs(mean - clip_l2(update, clip)) < 6 * noise_sd + 1 / plan.scale), name
    first = np.sum([plan.encode(np.eye(d)[0] * clip, _source(f"edge/{i}")).view(np.int32).astype(np.int64) for i in range(n)])
    assert abs(first) > 0.95 * LIMIT  # the test does go near the edge


# --- encode -> sum -> decode -----------------------------------------------------------------


def test_decoded_mean_recovers_the_mean_of_clipped_updates_with_little_noise() -> None:
    """Tiny noise, so the tolerance is the rounding (< 1 / scale per node) plus a few noise units."""
    n, d = 5, 64
    params = SkellamParameters(clip_norm=1.0, scale_bits=16, node_variance=0.01, assumed_survivors=3, dimension=d, cohort_size=n)
    rng = np.random.default_rng(7)
    updates = [rng.normal(0, scale, d) for scale in (0.01, 0.05, 0.2, 1.0, 3.0)]  # the last two get clipped
    encodings = [params.encode(u, _source(f"small/{i}")) for i, u in enumerate(updates)]
    assert all(e.dtype == np.uint32 and e.shape == (d,) for e in encodings)
    mean = params.decode_mean(_sum_mod(encodings), n)
    expected = np.mean([clip_l2(u, 1.0) for u in updates], axis=0)
    assert np.all(np.abs(mean - expected) <= (1 + 6 / n) / params.scale), np.abs(mean - expected).max() * params.scale
    assert np.abs(mean - np.mean(updates, axis=0)).max() > 100 / params.scale  # clipping did matter


def test_stochastic_rounding_is_unbiased() -> None:
    d = 40_000
    params = SkellamParameters(clip_norm=1e4, scale_bits=0, node_variance=1e-9, assumed_survivors=1, dimension=d, cohort_size=3)
    for value in (0.3, -0.7, 2.25):
        integers = params.encode(np.full(d, value), _source(f"round/{value}")).view(np.int32)
        assert set(np.unique(integers)) <= {math.floor(value), math.ceil(value)}
        frac = value - math.floor(value)
        assert abs(integers.mean() - value) < 5 * math.sqrt(frac * (1 - frac) / d), (value, integers.mean())


def test_planned_noise_on_the_decoded_mean_has_the_intended_scale() -> None:
    """With the real plan, the decoded mean's error is the nodes' noise: sd sqrt(n V_node) / scale / n."""
    n, t, c, d = 5, 4, 1, 20_000
    plan = plan_skellam(4.0, DELTA, 3, 0.5, d, n, t - c)
    rng = np.random.default_rng(11)
    updates = [rng.normal(0, 0.02, d) for _ in range(n)]
    mean = plan.decode_mean(_sum_mod([plan.encode(u, _source(f"planned/{i}")) for i, u in enumerate(updates)]), n)
    residual = mean - np.mean([clip_l2(u, 0.5) for u in updates], axis=0)
    intended = math.sqrt(n * plan.node_variance) / plan.scale / n
    # the sample sd of d draws has relative sd ~ 1 / sqrt(2 d) = 0.5%
    assert residual.std() == pytest.approx(intended, rel=0.03), (residual.std(), intended)
    assert abs(residual.mean()) < 5 * intended / math.sqrt(d)
    # All n survived honestly: more noise than the worst case (t - c honest survivors) the accountant charged
    # for, never less.
    assert intended * n >= math.sqrt(plan.total_variance) / plan.scale


def test_encode_refuses_bad_updates() -> None:
    params = SkellamParameters(1.0, 8, 10.0, 2, 4, 3)
    for bad in (np.zeros(3), np.zeros((2, 2)), np.array([0.0, np.nan, 0.0, 0.0]), np.array([np.inf, 0, 0, 0])):
        with pytest.raises(EncodingError):
            params.encode(bad, _source("bad"))


def test_decode_refuses_bad_sums() -> None:
    params = SkellamParameters(1.0, 8, 10.0, 2, 4, 3)
    with pytest.raises(EncodingError):
        params.decode_mean(np.zeros(4, dtype=np.int64), 3)
    with pytest.raises(EncodingError):
        params.decode_mean(np.zeros(5, dtype=np.uint32), 3)
    with pytest.raises(EncodingError):
        params.decode_mean(np.zeros(4, dtype=np.uint32), 0)


# --- constructor checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": 0.0},
        {"clip_norm": -1.0},
        {"clip_norm": float("nan")},
        {"clip_norm": float("inf")},
        {"scale_bits": -1},
        {"scale_bits": 31},
        {"scale_bits": 8.0},
        {"scale_bits": True},
        {"node_variance": 0.0},
        {"node_variance": float("nan")},
        {"node_variance": float("inf")},
        {"assumed_survivors": 0},
        {"assumed_survivors": 6},
        {"assumed_survivors": 2.0},
        {"dimension": 0},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict) -> None:
    args = {"clip_norm": 1.0, "scale_bits": 8, "node_variance": 10.0, "assumed_survivors": 3, "dimension": 10, "cohort_size": 5}
    with pytest.raises(InvalidParameter):
        SkellamParameters(**{**args, **kwargs})


# --- the round spec -------------------------------------------------------------------------


def test_spec_round_trip() -> None:
    plan = plan_skellam(4.0, DELTA, 3, 0.5, 650, 4, 2)  # t = 3, c = 1: two honest survivors
    spec = plan.to_spec(DELTA, 4.0, 3)
    assert spec == {
        "mechanism": "skellam",
        "clip_norm": 0.5,
        "scale_bits": plan.scale_bits,
        "node_variance": plan.node_variance,
        "assumed_survivors": 2,
        "delta": DELTA,
        "target_epsilon": 4.0,
        "planned_rounds": 3,
    }
    assert SkellamParameters.from_spec(json.loads(json.dumps(spec)), 650, 4) == plan


@pytest.mark.parametrize(
    "change",
    [
        {"mechanism": "gaussian"},
        {"mechanism": None},
        {"clip_norm": None},
        {"clip_norm": "big"},
        {"clip_norm": -0.5},
        {"scale_bits": "24"},
        {"scale_bits": 24.0},
        {"scale_bits": 99},
        {"node_variance": "lots"},
        {"node_variance": -5.0},
        {"node_variance": [1.0]},
        {"assumed_survivors": 9},
        {"assumed_survivors": "3"},
        {"node_variance": 1e30},  # would wrap
        {"node_variance": MAX_NODE_VARIANCE * 2},  # beyond the sampler's validated range
        {"assumed_survivors": 0},
    ],
)
def test_malformed_spec_is_refused(change: dict) -> None:
    spec = plan_skellam(4.0, DELTA, 3, 0.5, 650, 4, 2).to_spec(DELTA, 4.0, 3)
    with pytest.raises(InvalidParameter):
        SkellamParameters.from_spec({**spec, **change}, 650, 4)


@pytest.mark.parametrize("missing", ["mechanism", "clip_norm", "scale_bits", "node_variance", "assumed_survivors"])
def test_spec_missing_a_field_is_refused(missing: str) -> None:
    spec = plan_skellam(4.0, DELTA, 3, 0.5, 650, 4, 2).to_spec(DELTA, 4.0, 3)
    del spec[missing]
    with pytest.raises(InvalidParameter):
        SkellamParameters.from_spec(spec, 650, 4)


def test_spec_for_a_different_cohort_or_dimension_is_checked_again() -> None:
    """from_spec re-checks wrap-around for the cohort the node actually sees."""
    plan = plan_skellam(*EDGE)
    spec = plan.to_spec(DELTA, 4.0, 3)
    assert SkellamParameters.from_spec(spec, 100, 2000) == plan
    with pytest.raises(InvalidParameter, match="wrap"):
        SkellamParameters.from_spec(spec, 100, 4000)
