"""Integer noise for distributed DP, drawn from a cryptographically strong generator.

Noise must be unpredictable to anyone who could otherwise subtract it, so
it comes from a numpy ``Generator`` over ``randomgen.AESCounter`` (AES-128 in
counter mode, AES-NI accelerated) keyed from ``os.urandom``; numpy's own bit
generators are not cryptographic. Sampling itself uses numpy's exact
Poisson sampler: a symmetric Skellam variate is Poisson(V/2) - Poisson(V/2),
an integer with variance V, and sums of independent Skellam variates are
Skellam again, which is what lets each node add only its share.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
from randomgen import AESCounter

from securefed.errors import InvalidParameter

__all__ = ["NoiseSource", "UniformSource"]


class UniformSource(Protocol):
    """Anything that gives uniform floats in [0, 1) from a cryptographic generator."""

    def uniform(self, size: int) -> np.ndarray: ...


class NoiseSource:
    """Skellam noise from an AES-CTR generator. ``seed`` (>= 16 bytes) is for tests only."""

    def __init__(self, seed: bytes | None = None) -> None:
        if seed is not None and (not isinstance(seed, (bytes, bytearray)) or len(seed) < 16):
            raise InvalidParameter("a noise seed must be at least 16 bytes")
        key_material = os.urandom(32) if seed is None else bytes(seed)
        key = int.from_bytes(key_material[:16], "little")
        counter = int.from_bytes(key_material[16:32] or bytes(16), "little")
        self._generator = np.random.Generator(AESCounter(key=key, counter=counter))

    def skellam(self, variance: float, size: int) -> np.ndarray:
        """``size`` symmetric Skellam variates with the given variance, as int64."""
        if not (variance >= 0 and np.isfinite(variance)):
            raise InvalidParameter("noise variance must be a non-negative finite number")
        if variance == 0:
            return np.zeros(size, dtype=np.int64)
        half = variance / 2.0
        return self._generator.poisson(half, size).astype(np.int64) - self._generator.poisson(half, size).astype(np.int64)

    def uniform(self, size: int) -> np.ndarray:
        """Uniform floats in [0, 1) (for stochastic rounding and record sampling under the same generator)."""
        return self._generator.random(size)

    def gaussian(self, std: float, size: int) -> np.ndarray:
        """Normal noise (for central DP-SGD baselines in benchmarks and audits; nodes add Skellam noise)."""
        if not (std >= 0 and np.isfinite(std)):
            raise InvalidParameter("the noise standard deviation must be a non-negative finite number")
        return self._generator.normal(0.0, std, size)
