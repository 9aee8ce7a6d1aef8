"""Unit tests for :mod:`securefed.encoding`: known answers, errors, rounding statistics.

The hypothesis invariants (round trip, sums, clipping, overflow refusal over
random parameters) live in ``tests/property/test_encoding_properties.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from securefed.crypto.prg import SecureRandom
from securefed.encoding import MODULUS, FixedPointEncoder, clip_l2, max_safe_fractional_bits
from securefed.errors import EncodingError, InvalidParameter, SecureFedError

SIGNED_LIMIT = 1 << 31


def seeded(tag: int) -> SecureRandom:
    return SecureRandom(seed=bytes([tag]) * 32)


def wrapping_sum(encodings: list[np.ndarray]) -> np.ndarray:
    """Sum uint32 vectors mod 2^32, as the secure aggregator does."""
    return np.sum(np.stack(encodings), axis=0, dtype=np.uint32)


# --- error tree -------------------------------------------------------------------------------


def test_error_classes_sit_in_the_tree() -> None:
    assert issubclass(InvalidParameter, SecureFedError)
    assert issubclass(InvalidParameter, ValueError)
    assert issubclass(EncodingError, SecureFedError)
    assert issubclass(EncodingError, ValueError)


def test_invalid_parameter_is_catchable_as_value_error() -> None:
    with pytest.raises(ValueError):
        FixedPointEncoder(clip_norm=-1.0, fractional_bits=8, max_summands=2)


# --- known answers ----------------------------------------------------------------------------


def test_known_answer_encoding_wraps_negatives_mod_2_32() -> None:
    enc = FixedPointEncoder(clip_norm=10.0, fractional_bits=2, max_summands=4)
    encoded = enc.encode(np.array([1.25, -1.25, 0.0, -0.25]), seeded(1))
    assert encoded.tolist() == [5, MODULUS - 5, 0, MODULUS - 1]
    assert enc.decode(encoded).tolist() == [1.25, -1.25, 0.0, -0.25]


def test_known_answer_sum_of_mixed_signs_decodes() -> None:
    enc = FixedPointEncoder(clip_norm=10.0, fractional_bits=3, max_summands=3)
    parts = [np.array([1.5, -2.0]), np.array([-3.125, 0.5]), np.array([0.0, -1.0])]
    total = wrapping_sum([enc.encode(p, seeded(i)) for i, p in enumerate(parts)])
    assert enc.decode_sum(total).tolist() == [-1.625, -2.5]


def test_resolution_and_scale() -> None:
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=12, max_summands=5)
    assert enc.scale == 4096.0
    assert enc.resolution == 2.0**-12


@pytest.mark.parametrize(
    ("clip_norm", "max_summands", "max_abs", "expected_bits"),
    [
        (1.0, 1, None, 30),  # 1 * 2^30 < 2^31 (and 30 is the cap)
        (1.0, 2, None, 29),  # 2 * 2^30 == 2^31 is refused
        (1.0, 3, None, 29),  # 3 * 2^29 < 2^31 <= 3 * 2^30
        (1.0, 5, None, 28),
        (1.0, 10, 0.25, 29),  # a guard four times tighter buys two bits
        (1000.0, 1000, None, 11),  # 1000 * 1000 * 2^11 ~ 2.05e9 < 2^31 <= 1000 * 1000 * 2^12
    ],
)
def test_for_summands_known_answers(clip_norm: float, max_summands: int, max_abs: float | None, expected_bits: int) -> None:
    enc = FixedPointEncoder.for_summands(clip_norm, max_summands, max_abs=max_abs)
    assert enc.fractional_bits == expected_bits
    assert enc.max_summands == max_summands
    assert max_safe_fractional_bits(enc.effective_max_abs, max_summands) == expected_bits


def test_for_summands_refuses_when_even_integers_overflow() -> None:
    with pytest.raises(InvalidParameter):
        FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=SIGNED_LIMIT)
    with pytest.raises(InvalidParameter):
        FixedPointEncoder.for_summands(clip_norm=1e10, max_summands=1)
    assert max_safe_fractional_bits(1.0, SIGNED_LIMIT) == -1


def test_max_abs_defaults_to_clip_norm() -> None:
    enc = FixedPointEncoder(clip_norm=3.0, fractional_bits=4, max_summands=2)
    assert enc.max_abs == 3.0
    assert enc.effective_max_abs == 3.0


def test_describe_mentions_the_parameters() -> None:
    text = FixedPointEncoder(clip_norm=2.0, fractional_bits=7, max_summands=9).describe()
    assert "7 fractional bits" in text
    assert "9 summands" in text


# --- clipping ---------------------------------------------------------------------------------


def test_clip_l2_then_linf_in_that_order() -> None:
    # L2 first: [6, 8] -> [3, 4], then clamp to 3.5 -> [3, 3.5].
    # (Clamping first would give [3.5, 3.5], whose norm 4.95 < 5 is left alone.)
    enc = FixedPointEncoder(clip_norm=5.0, fractional_bits=4, max_summands=2, max_abs=3.5)
    np.testing.assert_allclose(enc.clip(np.array([6.0, 8.0])), [3.0, 3.5], rtol=1e-15)


def test_clip_scales_down_never_up() -> None:
    small = np.array([0.1, -0.2])
    assert clip_l2(small, 1.0) is small
    np.testing.assert_allclose(clip_l2(np.array([3.0, 4.0]), 1.0), [0.6, 0.8], rtol=1e-15)


def test_clip_does_not_mutate_input() -> None:
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=8, max_summands=2, max_abs=0.5)
    x = np.array([3.0, -4.0])
    enc.clip(x)
    enc.encode(x, seeded(2))
    assert x.tolist() == [3.0, -4.0]


def test_clip_of_huge_finite_vector_keeps_direction_and_reaches_the_ball() -> None:
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=16, max_summands=4)
    with np.errstate(over="ignore"):
        clipped = enc.clip(np.array([1e200, 1.0]))
    # The L2 projection of [1e200, 1] onto the unit ball is [1, 1e-200] (to float precision).
    np.testing.assert_allclose(clipped, [1.0, 0.0], atol=1e-12)


# --- parameter validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": -1.0},
        {"clip_norm": 0.0},
        {"clip_norm": math.nan},
        {"clip_norm": math.inf},
        {"clip_norm": math.inf, "max_abs": 1.0},
        {"clip_norm": math.nan, "max_abs": 1.0},
        {"clip_norm": "1.0"},
        {"clip_norm": None},
        {"max_abs": -0.5},
        {"max_abs": 0.0},
        {"max_abs": math.nan},
        {"max_abs": math.inf},
        {"fractional_bits": -1},
        {"fractional_bits": 31},
        {"fractional_bits": 8.0},
        {"fractional_bits": True},
        {"fractional_bits": "8"},
        {"max_summands": 0},
        {"max_summands": -3},
        {"max_summands": 2.5},
        {"max_summands": 2.0},
        {"max_summands": "2"},
        {"max_summands": True},
    ],
    ids=lambda kw: ",".join(f"{k}={v!r}" for k, v in kw.items()),
)
def test_invalid_parameters_raise_invalid_parameter(kwargs: dict) -> None:
    params = {"clip_norm": 1.0, "fractional_bits": 8, "max_summands": 4}
    params.update(kwargs)
    with pytest.raises(InvalidParameter):
        FixedPointEncoder(**params)


def test_valid_baseline_of_the_invalid_parameter_table_constructs() -> None:
    # Guards the table above: each row differs from this working configuration in one field only.
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=8, max_summands=4, max_abs=0.5)
    assert enc.fractional_bits == 8


@pytest.mark.parametrize(
    ("clip_norm", "max_summands", "max_abs"),
    [
        (-1.0, 4, None),
        (0.0, 4, None),
        (math.nan, 4, None),
        (1.0, 0, None),
        (1.0, -1, None),
        (1.0, 2.5, None),
        (1.0, 4, -1.0),
        (1.0, 4, math.nan),
    ],
)
def test_for_summands_rejects_invalid_parameters(clip_norm: float, max_summands: int, max_abs: float | None) -> None:
    with pytest.raises(InvalidParameter):
        FixedPointEncoder.for_summands(clip_norm, max_summands, max_abs=max_abs)


@pytest.mark.parametrize(("clip_norm", "max_abs"), [(math.inf, None), (1.0, math.inf)])
def test_for_summands_rejects_infinite_bounds(clip_norm: float, max_abs: float | None) -> None:
    with pytest.raises(InvalidParameter):
        FixedPointEncoder.for_summands(clip_norm, 4, max_abs=max_abs)


def test_overflow_refusal_message_advises_a_safe_precision() -> None:
    with pytest.raises(InvalidParameter, match=r"fractional_bits <= 29"):
        FixedPointEncoder(clip_norm=1.0, fractional_bits=30, max_summands=2)


# --- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        np.array([0.0, math.nan]),
        np.array([math.inf, 1.0]),
        np.array([-math.inf]),
        np.array([1.0, 2.0, math.nan, math.inf]),
    ],
    ids=["nan", "inf", "-inf", "mixed"],
)
def test_non_finite_inputs_raise_encoding_error(bad: np.ndarray) -> None:
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=8, max_summands=4)
    with pytest.raises(EncodingError):
        enc.encode(bad, seeded(3))
    with pytest.raises(EncodingError):
        enc.clip(bad)


@pytest.mark.parametrize(
    "bad",
    [np.float64(0.5), np.zeros((2, 3)), np.zeros((1, 1)), np.zeros((2, 2, 2))],
    ids=["0-d", "2-D", "1x1", "3-D"],
)
def test_non_vector_inputs_raise_encoding_error(bad: np.ndarray) -> None:
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=8, max_summands=4)
    with pytest.raises(EncodingError):
        enc.encode(bad, seeded(4))


@pytest.mark.parametrize("bad", [["a", "b"], [object(), 1.0], [[1.0], [2.0, 3.0]]], ids=["str", "object", "ragged"])
def test_non_numeric_inputs_raise_encoding_error(bad: list) -> None:
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=8, max_summands=4)
    with pytest.raises(EncodingError):
        enc.encode(bad, seeded(5))


def test_encode_accepts_lists_and_integer_arrays() -> None:
    enc = FixedPointEncoder(clip_norm=10.0, fractional_bits=4, max_summands=2)
    assert enc.encode([1, -2], seeded(6)).tolist() == [16, MODULUS - 32]
    assert enc.encode(np.array([1, -2], dtype=np.int8), seeded(6)).tolist() == [16, MODULUS - 32]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(3, dtype=np.int32),
        np.zeros(3, dtype=np.int64),
        np.zeros(3, dtype=np.uint64),
        np.zeros(3, dtype=np.uint16),
        np.zeros(3, dtype=np.float64),
        np.zeros(3, dtype=np.float32),
        np.zeros((2, 3), dtype=np.uint32),
        np.uint32(7),
        [1, 2, 3],
    ],
    ids=["int32", "int64", "uint64", "uint16", "float64", "float32", "2-D uint32", "0-d uint32", "list"],
)
def test_decode_rejects_anything_but_a_uint32_vector(bad: object) -> None:
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=8, max_summands=4)
    with pytest.raises(EncodingError):
        enc.decode(bad)
    with pytest.raises(EncodingError):
        enc.decode_sum(bad)


# --- output shape, dtype, determinism -------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 7, 1000])
def test_encode_returns_uint32_of_input_length(length: int) -> None:
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=100)
    x = np.linspace(-1.0, 1.0, length) / max(1.0, math.sqrt(length))
    encoded = enc.encode(x, seeded(7))
    assert encoded.dtype == np.uint32
    assert encoded.shape == (length,)


def _fractional_vector(enc: FixedPointEncoder, length: int = 512) -> np.ndarray:
    # Every coordinate sits exactly half-way between two grid points, so each rounding is a fair coin.
    ramp = (np.arange(length) % 17 - 8).astype(np.float64)
    return (ramp + 0.5) * enc.resolution


def test_encode_is_deterministic_for_a_seed() -> None:
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=100)
    x = _fractional_vector(enc)
    first = enc.encode(x, seeded(8))
    second = enc.encode(x, seeded(8))
    np.testing.assert_array_equal(first, second)


def test_different_seeds_round_differently() -> None:
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=100)
    x = _fractional_vector(enc)
    a = enc.encode(x, seeded(9))
    b = enc.encode(x, seeded(10))
    # 512 fair coins agree everywhere with probability 2^-512.
    assert not np.array_equal(a, b)
    # ...yet both are within one step of the input, so they differ by at most one step.
    diff = a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)
    assert set(np.unique(diff).tolist()) <= {-1, 0, 1}


def test_one_generator_advances_between_encodings() -> None:
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=100)
    x = _fractional_vector(enc)
    rng = seeded(11)
    assert not np.array_equal(enc.encode(x, rng), enc.encode(x, rng))


def test_default_generator_is_unpredictable() -> None:
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=100)
    x = _fractional_vector(enc)
    assert not np.array_equal(enc.encode(x), enc.encode(x))


def test_grid_values_are_encoded_exactly_whatever_the_seed() -> None:
    enc = FixedPointEncoder(clip_norm=100.0, fractional_bits=10, max_summands=8)
    x = np.array([0.0, 1.0, -1.0, 3.5, -7.25, 2.0**-10, -(2.0**-10)])
    for tag in range(5):
        np.testing.assert_array_equal(enc.decode(enc.encode(x, seeded(tag))), x)


# --- stochastic rounding is unbiased --------------------------------------------------------------

DRAWS = 10**6
SIGMAS = 6.0


@pytest.mark.parametrize("steps", [0.3, 5.3, -2.7, 0.9, -0.05])
def test_stochastic_rounding_is_unbiased(steps: float) -> None:
    """Encode ``steps`` grid steps DRAWS times; the decoded mean must match within 6 standard errors.

    Each decoded value is floor(v) or floor(v)+1 steps, a Bernoulli(p) shift with p the fractional
    part, so the mean's standard error is sqrt(p(1-p)/DRAWS) steps (4.6e-4 steps for p = 0.3).
    """
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=1000)
    res = enc.resolution
    value = steps * res
    x = np.full(DRAWS, value)
    assert np.linalg.norm(x) < enc.clip_norm  # not clipped: we measure the rounding alone
    assert np.array_equal(enc.clip(x), x)

    decoded = enc.decode(enc.encode(x, seeded(12)))
    p = steps - math.floor(steps)
    standard_error = math.sqrt(p * (1.0 - p) / DRAWS) * res
    tolerance = SIGMAS * standard_error

    assert abs(decoded.mean() - value) <= tolerance
    # Power: deterministic rounding to nearest would miss by min(p, 1-p) steps, far beyond the
    # tolerance, so this test does detect a biased rounding rule.
    plain = np.round(x * enc.scale) / enc.scale
    assert abs(plain.mean() - value) > tolerance
    assert abs(plain.mean() - value) >= 10 * tolerance
    # ...and so would always rounding down.
    floored = np.floor(x * enc.scale) / enc.scale
    assert abs(floored.mean() - value) > tolerance


def test_rounding_frequency_matches_fractional_part() -> None:
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=1000)
    x = np.full(DRAWS, 0.3 * enc.resolution)
    integers = enc.encode(x, seeded(13)).view(np.int32)
    assert set(np.unique(integers).tolist()) == {0, 1}
    frequency = float(np.mean(integers == 1))
    assert abs(frequency - 0.3) <= SIGMAS * math.sqrt(0.3 * 0.7 / DRAWS)


# --- the overflow edge ------------------------------------------------------------------------------


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["plus", "minus"])
@pytest.mark.parametrize(
    ("max_summands", "fractional_bits"), [(1, 0), (1, 30), (3, 10), (7, 20), (1000, 8), (1000, 0), (12345, 3)]
)
def test_max_summands_copies_at_the_guard_sum_right_up_to_the_edge(max_summands: int, fractional_bits: int, sign: float) -> None:
    """n * unit is the largest multiple of n below 2^31; its decoding must not wrap."""
    unit = (SIGNED_LIMIT - 1) // max_summands
    max_abs = unit / 2.0**fractional_bits  # exact: unit < 2^31
    dim = 4
    enc = FixedPointEncoder.for_summands(clip_norm=2 * dim * max_abs, max_summands=max_summands, max_abs=max_abs)
    assert enc.fractional_bits == min(fractional_bits, 30)
    x = np.full(dim, sign * max_abs)
    assert np.array_equal(enc.clip(x), x)

    encodings = [enc.encode(x, seeded(i % 251)) for i in range(min(max_summands, 1000))]
    if max_summands > 1000:
        # Grid values encode deterministically, so the remaining copies equal the ones already made.
        assert all(np.array_equal(e, encodings[0]) for e in encodings)
        encodings = [encodings[0]] * max_summands
    total = wrapping_sum(encodings)
    true_integer = int(sign) * max_summands * unit
    assert abs(true_integer) > SIGNED_LIMIT - 1 - max_summands  # genuinely at the edge
    assert total.view(np.int32).tolist() == [true_integer] * dim
    np.testing.assert_array_equal(enc.decode_sum(total), np.full(dim, sign * max_summands * max_abs))


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["plus", "minus"])
def test_edge_with_random_rounding_stays_inside(sign: float) -> None:
    """A guard half a step below the edge unit: every rounding up lands exactly on the edge unit."""
    max_summands, fractional_bits = 50, 16
    unit = (SIGNED_LIMIT - 1) // max_summands
    max_abs = (unit - 0.5) / 2.0**fractional_bits
    dim = 64
    enc = FixedPointEncoder(
        clip_norm=2 * dim * max_abs, fractional_bits=fractional_bits, max_summands=max_summands, max_abs=max_abs
    )
    x = np.full(dim, sign * max_abs)
    encodings = [enc.encode(x, seeded(i)) for i in range(max_summands)]
    total = enc.decode_sum(wrapping_sum(encodings))
    expected = sign * max_summands * max_abs
    assert np.all(np.abs(total - expected) <= max_summands * enc.resolution)
    assert np.all(np.sign(total) == sign)  # a wrap would flip the sign


def test_a_worst_case_of_exactly_2_31_is_refused_because_it_wraps() -> None:
    # 2 summands of 1.0 at 30 bits reach 2 * 2^30 == 2^31 exactly, which reads back as -2^31.
    with pytest.raises(InvalidParameter):
        FixedPointEncoder(clip_norm=1.0, fractional_bits=30, max_summands=2)
    assert np.array([2 * 2**30], dtype=np.uint32).view(np.int32)[0] == -(2**31)
    # One bit coarser, the same two summands sit at 2^30 and are accepted.
    enc = FixedPointEncoder(clip_norm=1.0, fractional_bits=29, max_summands=2)
    total = wrapping_sum([enc.encode(np.array([1.0]), seeded(i)) for i in range(2)])
    assert enc.decode_sum(total).tolist() == [2.0]


def test_one_more_step_of_precision_would_wrap() -> None:
    """The refusal is not overcautious here: at f+1 the same sum really does wrap."""
    max_summands = 3
    enc = FixedPointEncoder.for_summands(clip_norm=1.0, max_summands=max_summands)
    f = enc.fractional_bits
    with pytest.raises(InvalidParameter):
        FixedPointEncoder(clip_norm=1.0, fractional_bits=f + 1, max_summands=max_summands)
    integer_sum = max_summands * math.ceil(1.0 * 2 ** (f + 1))
    wrapped = np.array([integer_sum % MODULUS], dtype=np.uint32).view(np.int32)[0]
    assert wrapped != integer_sum
