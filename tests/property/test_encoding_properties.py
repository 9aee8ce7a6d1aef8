"""Hypothesis invariants of :class:`securefed.encoding.FixedPointEncoder`.

* round trip: one encoding decodes to within one resolution step of the clipped input;
* sums: n independent encodings decode to the sum of the clipped inputs within n steps;
* clipping: L2 then L-infinity bounds hold, in-bound vectors pass unchanged;
* rounding: always to the floor or the ceiling of the scaled value, never further;
* overflow: (clip, f, n) is refused exactly when n * ceil(max_abs * 2^f) >= 2^31, checked against
  an exact rational oracle; ``for_summands`` picks the largest safe f.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.crypto.prg import SecureRandom
from securefed.encoding import FixedPointEncoder
from securefed.errors import InvalidParameter

SIGNED_LIMIT = 1 << 31
MAX_BITS = 30

seeds = st.binary(min_size=32, max_size=32).map(lambda b: SecureRandom(seed=b))

# Mostly moderate coordinates, with some large ones to push vectors through the L2 clip and the
# L-infinity guard. (Magnitudes stay below ~1e154, where np.linalg.norm itself overflows; that case
# is pinned down separately in tests/unit/test_encoding.py.)
coordinates = st.one_of(
    st.floats(min_value=-10.0, max_value=10.0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e150, max_value=1e150, allow_nan=False, allow_infinity=False),
)
vectors = st.integers(min_value=1, max_value=200).flatmap(lambda n: hnp.arrays(np.float64, n, elements=coordinates))


@st.composite
def encoders(draw: st.DrawFn, max_summands: int = 10**4) -> FixedPointEncoder:
    """A valid encoder: sometimes the finest safe precision, sometimes a coarser one."""
    clip_norm = draw(st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False))
    n = draw(st.integers(min_value=1, max_value=max_summands))
    max_abs = draw(st.one_of(st.none(), st.floats(min_value=1e-3, max_value=1.0).map(lambda r: r * clip_norm)))
    finest = FixedPointEncoder.for_summands(clip_norm, n, max_abs=max_abs)
    bits = draw(st.one_of(st.just(finest.fractional_bits), st.integers(0, finest.fractional_bits)))
    return FixedPointEncoder(clip_norm=clip_norm, fractional_bits=bits, max_summands=n, max_abs=max_abs)


def as_integers(encoded: np.ndarray) -> np.ndarray:
    return encoded.view(np.int32).astype(np.int64)


def exact_unit_bound(max_abs: float, bits: int) -> int:
    """ceil(max_abs * 2^bits) in exact rational arithmetic: an oracle independent of the code's float maths."""
    return math.ceil(Fraction(max_abs) * (1 << bits))


# --- round trip ---------------------------------------------------------------------------------------


@given(enc=encoders(), x=vectors, rng=seeds)
def test_round_trip_within_one_resolution_of_the_clipped_input(enc: FixedPointEncoder, x: np.ndarray, rng: SecureRandom) -> None:
    encoded = enc.encode(x, rng)
    assert encoded.dtype == np.uint32
    assert encoded.shape == x.shape
    decoded = enc.decode(encoded)
    clipped = enc.clip(x)
    assert np.all(np.abs(decoded - clipped) <= enc.resolution)


@given(enc=encoders(), x=vectors, rng=seeds)
def test_rounding_goes_only_to_floor_or_ceiling(enc: FixedPointEncoder, x: np.ndarray, rng: SecureRandom) -> None:
    scaled = enc.clip(x) * enc.scale  # exact: scaling by a power of two
    integers = as_integers(enc.encode(x, rng))
    floor = np.floor(scaled)
    ceil = np.ceil(scaled)
    assert np.all((integers == floor) | (integers == ceil))
    on_grid = floor == scaled
    assert np.array_equal(integers[on_grid], scaled[on_grid])


# --- sums -----------------------------------------------------------------------------------------------


@st.composite
def summation_cases(draw: st.DrawFn) -> tuple[FixedPointEncoder, list[np.ndarray]]:
    enc = draw(encoders(max_summands=64))
    n = draw(st.integers(min_value=1, max_value=enc.max_summands))
    dim = draw(st.integers(min_value=1, max_value=200))
    xs = draw(st.lists(hnp.arrays(np.float64, dim, elements=coordinates), min_size=n, max_size=n))
    return enc, xs


@given(case=summation_cases(), data=st.data())
def test_decoded_sum_matches_sum_of_clipped_inputs(case: tuple[FixedPointEncoder, list[np.ndarray]], data: st.DataObject) -> None:
    enc, xs = case
    n = len(xs)
    encodings = [enc.encode(x, data.draw(seeds)) for x in xs]
    total = np.sum(np.stack(encodings), axis=0, dtype=np.uint32)  # wraps mod 2^32, as aggregation does
    decoded = enc.decode_sum(total)
    expected = np.array([math.fsum(column) for column in np.stack([enc.clip(x) for x in xs]).T])
    assert np.all(np.abs(decoded - expected) <= n * enc.resolution)


@settings(max_examples=40)
@given(
    n=st.integers(min_value=1, max_value=300),
    bits=st.integers(min_value=0, max_value=MAX_BITS),
    half_step=st.booleans(),
    sign=st.sampled_from([1.0, -1.0]),
    dim=st.integers(min_value=1, max_value=8),
    seed=st.binary(min_size=32, max_size=32),
)
def test_max_summands_copies_at_the_guard_never_wrap(
    n: int, bits: int, half_step: bool, sign: float, dim: int, seed: bytes
) -> None:
    """n copies of a vector whose coordinates all sit at +-max_abs, with n * unit just below 2^31."""
    unit = (SIGNED_LIMIT - 1) // n
    max_abs = (unit - (0.5 if half_step else 0.0)) / 2.0**bits
    enc = FixedPointEncoder(clip_norm=2 * dim * max_abs, fractional_bits=bits, max_summands=n, max_abs=max_abs)
    x = np.full(dim, sign * max_abs)
    assert np.array_equal(enc.clip(x), x)
    rng = SecureRandom(seed)
    total = np.sum(np.stack([enc.encode(x, rng) for _ in range(n)]), axis=0, dtype=np.uint32)
    integers = as_integers(total)
    assert np.all(np.abs(integers) <= n * unit)
    if not half_step:
        assert np.all(integers == int(sign) * n * unit)
    decoded = enc.decode_sum(total)
    assert np.all(np.abs(decoded - sign * n * max_abs) <= n * enc.resolution)


# --- clipping -------------------------------------------------------------------------------------------


@given(enc=encoders(), x=vectors)
def test_clip_respects_both_bounds(enc: FixedPointEncoder, x: np.ndarray) -> None:
    clipped = enc.clip(x)
    assert clipped.shape == x.shape
    assert np.linalg.norm(clipped) <= enc.clip_norm * (1 + 1e-12)
    assert np.all(np.abs(clipped) <= enc.effective_max_abs)


@given(enc=encoders(), x=vectors)
def test_clip_to_the_ball_keeps_direction(enc: FixedPointEncoder, x: np.ndarray) -> None:
    """With no tighter guard, clipping is the projection onto the L2 ball."""
    enc = FixedPointEncoder(clip_norm=enc.clip_norm, fractional_bits=0, max_summands=1)
    norm = float(np.linalg.norm(x))
    assume(norm > enc.clip_norm)
    clipped = enc.clip(x)
    assert math.isclose(float(np.linalg.norm(clipped)), enc.clip_norm, rel_tol=1e-9)
    np.testing.assert_allclose(clipped, x * (enc.clip_norm / norm), rtol=1e-12, atol=1e-300)


@given(enc=encoders(), x=vectors, shrink=st.floats(min_value=0.0, max_value=1.0))
def test_vectors_within_bounds_are_unchanged(enc: FixedPointEncoder, x: np.ndarray, shrink: float) -> None:
    # Shrink x into the ball and under the guard (with a little room for float rounding).
    norm = float(np.linalg.norm(x))
    peak = float(np.max(np.abs(x)))
    factor = shrink * 0.999 * min(1.0, enc.clip_norm / norm if norm else 1.0, enc.effective_max_abs / peak if peak else 1.0)
    inside = x * factor
    assume(np.linalg.norm(inside) <= enc.clip_norm and np.max(np.abs(inside)) <= enc.effective_max_abs)
    np.testing.assert_array_equal(enc.clip(inside), inside)


# --- overflow safety of parameters ------------------------------------------------------------------------


@st.composite
def parameter_triples(draw: st.DrawFn) -> tuple[float, float | None, int, int]:
    """(clip_norm, max_abs, f, n): half of them placed right at the 2^31 boundary."""
    bits = draw(st.integers(min_value=0, max_value=MAX_BITS))
    if draw(st.booleans()):
        n = draw(st.integers(min_value=1, max_value=1 << 32))
        guard = draw(st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False))
    else:
        # Powers of two make n * unit == 2^31 exactly reachable (the >= vs > boundary).
        n = draw(st.one_of(st.integers(min_value=1, max_value=1 << 20), st.integers(0, 20).map(lambda k: 1 << k)))
        unit = max(1, (SIGNED_LIMIT - 1) // n + draw(st.sampled_from([-1, 0, 0, 1, 2])))
        slack = draw(st.sampled_from([0.0, 0.25, 0.5, 0.999]))
        guard = (unit - slack) / 2.0**bits
    if draw(st.booleans()):
        return guard, None, bits, n
    return guard * draw(st.floats(min_value=1.0, max_value=100.0)), guard, bits, n


@given(params=parameter_triples())
def test_constructor_refuses_exactly_the_overflow_unsafe_parameters(
    params: tuple[float, float | None, int, int],
) -> None:
    clip_norm, max_abs, bits, n = params
    guard = clip_norm if max_abs is None else max_abs
    unsafe = n * exact_unit_bound(guard, bits) >= SIGNED_LIMIT
    try:
        enc = FixedPointEncoder(clip_norm=clip_norm, fractional_bits=bits, max_summands=n, max_abs=max_abs)
    except InvalidParameter:
        assert unsafe, "a safe configuration was refused"
    else:
        assert not unsafe, "an overflow-unsafe configuration was accepted"
        assert enc.fractional_bits == bits
        assert n * exact_unit_bound(enc.effective_max_abs, bits) < SIGNED_LIMIT


@given(params=parameter_triples())
def test_for_summands_picks_the_largest_safe_precision(params: tuple[float, float | None, int, int]) -> None:
    clip_norm, max_abs, _, n = params
    guard = clip_norm if max_abs is None else max_abs
    safe_bits = [f for f in range(MAX_BITS + 1) if n * exact_unit_bound(guard, f) < SIGNED_LIMIT]
    try:
        enc = FixedPointEncoder.for_summands(clip_norm, n, max_abs=max_abs)
    except InvalidParameter:
        assert not safe_bits, "for_summands refused although a safe precision exists"
        return
    assert safe_bits, "for_summands returned an encoder although none is safe"
    assert enc.fractional_bits == max(safe_bits)
    assert enc.max_summands == n
    if enc.fractional_bits < MAX_BITS:
        try:
            FixedPointEncoder(clip_norm=clip_norm, fractional_bits=enc.fractional_bits + 1, max_summands=n, max_abs=max_abs)
        except InvalidParameter:
            pass
        else:
            raise AssertionError("one more fractional bit was accepted, so for_summands was not the finest")
