"""The distributed Skellam mechanism: the plan, the wrap-around guard, encode -> sum -> decode, the spec."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from securefed.dp.accountant import SkellamRelease, calibrate_skellam_variance, skellam_epsilon
from securefed.dp.mechanism import MAX_WRAP_PROBABILITY, SkellamParameters, plan_skellam
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


# (target epsilon, delta, rounds, clip norm, dimension, cohort size, threshold)
PLANS = [
    (4.0, 1e-5, 3, 0.5, 650, 4, 3),
    (1.0, 1e-5, 10, 1.0, 100, 10, 6),
    (8.0, 1e-6, 100, 0.1, 5000, 20, 11),
    (4.0, 1e-5, 3, 0.5, 100, 200, 120),
    (2.0, 1e-5, 5, 1.0, 50, 1000, 600),
    (0.1, 1e-5, 50, 1.0, 10, 5, 3),
]


# --- the plan ----------------------------------------------------------------------------


@pytest.mark.parametrize("plan_args", PLANS)
def test_plan_stays_within_the_target_and_cannot_wrap(plan_args: tuple) -> None:
    target, delta, rounds, clip, dimension, cohort, threshold = plan_args
    plan = plan_skellam(target, delta, rounds, clip, dimension, cohort, threshold)
    assert (plan.clip_norm, plan.dimension, plan.cohort_size) == (clip, dimension, cohort)
    assert plan.assumed_survivors == threshold  # noise sized for the worst case: exactly t survivors
    assert plan.total_variance == pytest.approx(threshold * plan.node_variance, rel=1e-12)
    assert plan.epsilon(rounds, delta) <= target
    assert plan.wrap_probability <= MAX_WRAP_PROBABILITY
    # Deterministic part of the worst case (every node at the clip on one coordinate) fits with room to spare.
    assert cohort * (clip * plan.scale + 1) < LIMIT
    # Not wasteful: 0.2% less noise (standard deviation) would overspend.
    weaker = SkellamRelease(plan.total_variance * 0.998**2, plan.l2_sensitivity, plan.l1_sensitivity)
    assert skellam_epsilon([weaker] * rounds, delta) > target


@pytest.mark.parametrize("plan_args", PLANS)
def test_plan_takes_the_finest_scale_that_is_safe(plan_args: tuple) -> None:
    target, delta, rounds, clip, dimension, cohort, threshold = plan_args
    plan = plan_skellam(target, delta, rounds, clip, dimension, cohort, threshold)
    if plan.scale_bits == 24:
        return  # the plan's ceiling
    bits = plan.scale_bits + 1
    d2 = clip * (1 << bits) + math.sqrt(dimension)
    total = calibrate_skellam_variance(target, rounds, delta, d2, min(math.sqrt(dimension) * d2, d2 * d2))
    with pytest.raises(InvalidParameter, match="wrap"):
        SkellamParameters(clip, bits, total / threshold, threshold, dimension, cohort)


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
        # the inputs fit, but noise of standard deviation ~2^31 / 3 per node does not
        {"clip_norm": 1.0, "scale_bits": 10, "node_variance": 5e17, "cohort_size": 4},
        # a huge cohort at a fine scale
        {"clip_norm": 0.5, "scale_bits": 24, "node_variance": 1.0, "cohort_size": 300},
    ],
)
def test_parameters_that_could_wrap_are_refused(kwargs: dict) -> None:
    args = {"assumed_survivors": 2, "dimension": 1000, **kwargs}
    with pytest.raises(InvalidParameter, match="wrap the modular sum"):
        SkellamParameters(**args)


def test_wrap_probability_grows_with_noise_cohort_and_dimension() -> None:
    base = {"clip_norm": 1.0, "scale_bits": 10, "node_variance": 5e15, "assumed_survivors": 2, "dimension": 100, "cohort_size": 4}
    p = SkellamParameters(**base).wrap_probability
    assert 0 < p <= MAX_WRAP_PROBABILITY
    assert SkellamParameters(**{**base, "node_variance": 4e15}).wrap_probability < p
    assert SkellamParameters(**{**base, "dimension": 10}).wrap_probability < p
    assert SkellamParameters(**{**base, "cohort_size": 3}).wrap_probability < p


def test_sum_never_wraps_for_a_full_cohort_at_the_extreme() -> None:
    """200 nodes, the finest safe scale, every node's update at the clip on the same coordinate and sign:
    the deterministic part is ~78% of 2^31, and the modular sum still decodes to the true integer sum."""
    plan = plan_skellam(4.0, DELTA, 3, 0.5, 100, 200, 120)
    assert plan.scale_bits == 24
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
    assert abs(first) > 0.7 * LIMIT  # the test does go near the edge


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
    n, t, d = 5, 3, 20_000
    plan = plan_skellam(4.0, DELTA, 3, 0.5, d, n, t)
    rng = np.random.default_rng(11)
    updates = [rng.normal(0, 0.02, d) for _ in range(n)]
    mean = plan.decode_mean(_sum_mod([plan.encode(u, _source(f"planned/{i}")) for i, u in enumerate(updates)]), n)
    residual = mean - np.mean([clip_l2(u, 0.5) for u in updates], axis=0)
    intended = math.sqrt(n * plan.node_variance) / plan.scale / n
    # the sample sd of d draws has relative sd ~ 1 / sqrt(2 d) = 0.5%
    assert residual.std() == pytest.approx(intended, rel=0.03), (residual.std(), intended)
    assert abs(residual.mean()) < 5 * intended / math.sqrt(d)
    # All n survived: more noise than the worst case (t survivors) the accountant charged for, never less.
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
    plan = plan_skellam(4.0, DELTA, 3, 0.5, 650, 4, 3)
    spec = plan.to_spec(DELTA, 4.0, 3)
    assert spec == {
        "mechanism": "skellam",
        "clip_norm": 0.5,
        "scale_bits": plan.scale_bits,
        "node_variance": plan.node_variance,
        "assumed_survivors": 3,
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
    ],
)
def test_malformed_spec_is_refused(change: dict) -> None:
    spec = plan_skellam(4.0, DELTA, 3, 0.5, 650, 4, 3).to_spec(DELTA, 4.0, 3)
    with pytest.raises(InvalidParameter):
        SkellamParameters.from_spec({**spec, **change}, 650, 4)


@pytest.mark.parametrize("missing", ["mechanism", "clip_norm", "scale_bits", "node_variance", "assumed_survivors"])
def test_spec_missing_a_field_is_refused(missing: str) -> None:
    spec = plan_skellam(4.0, DELTA, 3, 0.5, 650, 4, 3).to_spec(DELTA, 4.0, 3)
    del spec[missing]
    with pytest.raises(InvalidParameter):
        SkellamParameters.from_spec(spec, 650, 4)


def test_spec_for_a_different_cohort_or_dimension_is_checked_again() -> None:
    """from_spec re-checks wrap-around for the cohort the node actually sees."""
    plan = plan_skellam(4.0, DELTA, 3, 0.5, 100, 200, 120)
    spec = plan.to_spec(DELTA, 4.0, 3)
    with pytest.raises(InvalidParameter, match="wrap"):
        SkellamParameters.from_spec(spec, 100, 400)
