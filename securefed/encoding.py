"""Fixed-point encoding of float vectors into Z_(2^32), and decoding of their sums.

Theory of operation. Secure aggregation adds vectors mod R = 2^32. A float
update x is first clipped (L2 norm to ``clip_norm``, then every coordinate to
``[-max_abs, max_abs]`` as an L-infinity guard), scaled by 2^f, rounded
*stochastically* to an integer (round up with probability equal to the
fractional part, so the rounding is unbiased: E[round(v)] = v), and reduced
mod 2^32 into uint32. The sum of n such encodings, read back as a signed
32-bit integer and divided by 2^f, is the sum of the clipped inputs up to
n rounding steps of 2^-f each.

That read-back is only correct while the true integer sum stays inside
[-2^31, 2^31). Each rounded coordinate is at most ceil(max_abs * 2^f) in
magnitude, so the encoder is built for a maximum number of summands n and
refuses any (clip, f, n) with n * ceil(max_abs * 2^f) >= 2^31.

Rounding randomness comes from :class:`securefed.dp.noise.NoiseSource` (AES
counter mode keyed from ``os.urandom``), the one generator every encoding
uses, DP noise included: rounding bits are correlated with the input, so they
must not be predictable to an observer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefed.dp.noise import NoiseSource, UniformSource
from securefed.errors import EncodingError, InvalidParameter

__all__ = ["MODULUS", "FixedPointEncoder", "clip_l2", "max_safe_fractional_bits"]

MODULUS = 1 << 32
_SIGNED_LIMIT = 1 << 31
_MAX_FRACTIONAL_BITS = 30


def clip_l2(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale ``x`` down (never up) so its L2 norm is at most ``clip_norm``.

    The norm is taken of ``x / max|x|`` so that huge finite inputs do not
    overflow to an infinite norm (which would clip them to zero).
    """
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x
    norm = peak * float(np.linalg.norm(x / peak))
    if norm > clip_norm:
        return (x / peak) * (clip_norm / (norm / peak))
    return x


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _unit_bound(max_abs: float, fractional_bits: int) -> int:
    return math.ceil(max_abs * (1 << fractional_bits))


def max_safe_fractional_bits(max_abs: float, max_summands: int) -> int:
    """The largest f for which ``max_summands`` encodings cannot overflow; -1 if none."""
    best = -1
    for f in range(_MAX_FRACTIONAL_BITS + 1):
        if max_summands * _unit_bound(max_abs, f) < _SIGNED_LIMIT:
            best = f
    return best


@dataclass(frozen=True)
class FixedPointEncoder:
    """Encode clipped float vectors into uint32 so that up to ``max_summands`` of them sum safely.

    ``max_abs`` (the L-infinity guard) defaults to ``clip_norm``, the largest
    value a coordinate can take after L2 clipping; a smaller guard buys more
    fractional bits at the cost of clamping outlying coordinates.
    """

    clip_norm: float
    fractional_bits: int
    max_summands: int
    max_abs: float | None = None

    def __post_init__(self) -> None:
        if not (_is_real(self.clip_norm) and math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise InvalidParameter(f"clip_norm must be a positive finite number, got {self.clip_norm!r}")
        guard = self.max_abs
        if guard is None:
            guard = float(self.clip_norm)
            object.__setattr__(self, "max_abs", guard)
        if not (_is_real(guard) and math.isfinite(guard) and guard > 0):
            raise InvalidParameter(f"max_abs must be a positive finite number, got {guard!r}")
        if type(self.fractional_bits) is not int or not 0 <= self.fractional_bits <= _MAX_FRACTIONAL_BITS:
            raise InvalidParameter(f"fractional_bits must be an integer in 0..{_MAX_FRACTIONAL_BITS}")
        if type(self.max_summands) is not int or self.max_summands < 1:
            raise InvalidParameter("max_summands must be a positive integer")
        worst = self.max_summands * _unit_bound(self.effective_max_abs, self.fractional_bits)
        if worst >= _SIGNED_LIMIT:
            safe = max_safe_fractional_bits(self.effective_max_abs, self.max_summands)
            advice = f"use fractional_bits <= {safe}" if safe >= 0 else "lower max_abs/clip_norm or the number of summands"
            raise InvalidParameter(
                f"{self.max_summands} summands with |coordinate| <= {self.effective_max_abs:g} at "
                f"{self.fractional_bits} fractional bits could reach {worst} >= 2^31 and wrap; {advice}"
            )

    @classmethod
    def for_summands(cls, clip_norm: float, max_summands: int, max_abs: float | None = None) -> FixedPointEncoder:
        """The finest-resolution encoder that is still overflow-safe for ``max_summands``."""
        guard = clip_norm if max_abs is None else max_abs
        if not (_is_real(guard) and math.isfinite(guard) and guard > 0):
            raise InvalidParameter(f"clip_norm and max_abs must be positive finite numbers, got {guard!r}")
        if type(max_summands) is not int or max_summands < 1:
            raise InvalidParameter("max_summands must be a positive integer")
        bits = max_safe_fractional_bits(float(guard), max_summands)
        if bits < 0:
            raise InvalidParameter(f"no fixed-point precision keeps {max_summands} summands of magnitude {guard:g} below 2^31")
        return cls(clip_norm=clip_norm, fractional_bits=bits, max_summands=max_summands, max_abs=max_abs)

    @property
    def effective_max_abs(self) -> float:
        return float(self.max_abs if self.max_abs is not None else self.clip_norm)

    @property
    def scale(self) -> float:
        return float(1 << self.fractional_bits)

    @property
    def resolution(self) -> float:
        """The quantisation step 2^-f: one encoding is exact to within this, a sum of n to n times it."""
        return 1.0 / self.scale

    def clip(self, x: np.ndarray) -> np.ndarray:
        """L2-clip to ``clip_norm``, then clamp every coordinate to ``[-max_abs, max_abs]``."""
        vector = self._as_vector(x)
        clipped = clip_l2(vector, self.clip_norm)
        return np.clip(clipped, -self.effective_max_abs, self.effective_max_abs)

    def encode(self, x: np.ndarray, rng: UniformSource | None = None) -> np.ndarray:
        """Clip, scale, round stochastically and reduce mod 2^32 into a uint32 vector."""
        scaled = self.clip(x) * self.scale
        floor = np.floor(scaled)
        generator = rng if rng is not None else NoiseSource()
        round_up = generator.uniform(scaled.shape[0]) < (scaled - floor)
        integers = floor.astype(np.int64) + round_up
        return integers.astype(np.int32).view(np.uint32)

    def decode(self, encoded: np.ndarray) -> np.ndarray:
        """Read one encoding or a sum of up to ``max_summands`` encodings back as floats."""
        array = np.asarray(encoded)
        if array.dtype != np.uint32 or array.ndim != 1:
            raise EncodingError(f"expected a 1-D uint32 vector, got {array.dtype} with shape {array.shape}")
        return array.view(np.int32).astype(np.float64) / self.scale

    decode_sum = decode

    @staticmethod
    def _as_vector(x: np.ndarray) -> np.ndarray:
        try:
            raw = np.asarray(x)
            if np.iscomplexobj(raw):
                raise EncodingError("complex input cannot be encoded")
            vector = raw.astype(np.float64, copy=False)
        except EncodingError:
            raise
        except (TypeError, ValueError):
            raise EncodingError("input is not a numeric vector") from None
        if vector.ndim != 1:
            raise EncodingError(f"expected a 1-D vector, got shape {vector.shape}")
        if not np.all(np.isfinite(vector)):
            raise EncodingError("input contains NaN or infinity; refusing to encode it")
        return vector

    def describe(self) -> str:
        return (
            f"fixed point: {self.fractional_bits} fractional bits (resolution {self.resolution:.3g}), "
            f"|coordinate| <= {self.effective_max_abs:g}, L2 <= {self.clip_norm:g}, "
            f"safe for {self.max_summands} summands"
        )
