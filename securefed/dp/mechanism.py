"""The distributed Skellam mechanism: what each node adds before masking, and what it costs.

Theory of operation. A node clips its update x to L2 norm C, scales it by
s = 2^f, rounds it stochastically to integers (unbiased), adds its share of
Skellam noise (variance V_node per coordinate) and reduces mod 2^32; secure
aggregation then masks it. The coordinator only ever sees the *sum*, which
carries Skellam noise of variance (number of survivors) x V_node. Nodes size
their share for the worst case the protocol and the stated adversary allow:
exactly t survivors of which c collude with the coordinator and add nothing,
so t - c honest shares: V_node = V_total / (t - c), and any aggregate that
completes carries at least the calibrated V_total from honest nodes alone
(typical case: all n survive honestly, and the noise is n/(t - c) times
larger than needed).

Exactness of the noise. A Skellam variate is Poisson(V/2) - Poisson(V/2);
numpy's Poisson sampler (PTRS, Hoermann 1993, for rates >= 10) is exact in
exact arithmetic but works in floating point, and at the rates the finest
scale would need (1e13 and more) it drifts measurably (variance off by 1.5%
at 6e13, non-Skellam tails at 1e15). So the planner never asks a node for
more than ``MAX_NODE_VARIANCE`` = 2^33 per coordinate (Poisson rate 2^32),
where the sampler's variance, kurtosis and tails are checked against the
Skellam distribution with millions of draws (tests/unit/test_dp_noise.py),
and nodes refuse plans above it; it lowers the scale instead, which costs
almost nothing (the rounding term sqrt(d) in the sensitivity stays small
against C 2^f).

Sensitivity in the integer domain. Stochastic rounding moves each coordinate
by less than 1, so the rounded vector has L2 norm at most C s + sqrt(d)
(the bound we account with; deterministic, no failure probability), and an
integer vector's L1 norm is at most min(sqrt(d) D2, D2^2).

Wrap-around. The sum must stay inside (-2^31, 2^31) to decode. Per
coordinate it is at most n (C s + 1) in magnitude plus noise of variance
n V_node; a Bernstein bound for the noise gives the probability that any of
the d coordinates wraps, and parameters above ``MAX_WRAP_PROBABILITY`` are
refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefed.dp.accountant import SkellamRelease, calibrate_skellam_variance, skellam_epsilon
from securefed.dp.noise import NoiseSource
from securefed.encoding import FixedPointEncoder
from securefed.errors import EncodingError, InvalidParameter

__all__ = ["SkellamParameters", "MAX_WRAP_PROBABILITY", "MAX_NODE_VARIANCE", "plan_skellam"]

MAX_WRAP_PROBABILITY = 2.0**-40
#: The largest per-coordinate noise variance a node samples: Poisson rates up to 2^32, where
#: numpy's sampler is validated (see the module docstring).
MAX_NODE_VARIANCE = float(1 << 33)
_LIMIT = float(1 << 31)


@dataclass(frozen=True)
class SkellamParameters:
    """Everything a node and the coordinator need to agree on for one DP round."""

    clip_norm: float
    scale_bits: int
    node_variance: float
    #: honest survivors the noise is sized for: t - c (threshold minus the colluders assumed)
    assumed_survivors: int
    dimension: int
    cohort_size: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise InvalidParameter("DP clip norm must be positive")
        if type(self.scale_bits) is not int or not 0 <= self.scale_bits <= 30:
            raise InvalidParameter("scale_bits must be an integer in 0..30")
        if not (math.isfinite(self.node_variance) and self.node_variance > 0):
            raise InvalidParameter("node noise variance must be positive")
        if self.node_variance > MAX_NODE_VARIANCE:
            raise InvalidParameter(
                f"node noise variance {self.node_variance:.4g} is above {MAX_NODE_VARIANCE:.4g}, where the noise "
                "sampler is validated to be Skellam: use a smaller scale"
            )
        if type(self.assumed_survivors) is not int or not 1 <= self.assumed_survivors <= self.cohort_size:
            raise InvalidParameter("assumed survivors must be in 1..cohort size")
        if self.dimension < 1:
            raise InvalidParameter("dimension must be positive")
        probability = self.wrap_probability
        if probability > MAX_WRAP_PROBABILITY:
            raise InvalidParameter(
                f"these DP parameters could wrap the modular sum (probability {probability:.2g} > 2^-40): "
                "lower the scale, the clip norm or the cohort size"
            )

    @property
    def scale(self) -> float:
        return float(1 << self.scale_bits)

    @property
    def l2_sensitivity(self) -> float:
        return self.clip_norm * self.scale + math.sqrt(self.dimension)

    @property
    def l1_sensitivity(self) -> float:
        d2 = self.l2_sensitivity
        return min(math.sqrt(self.dimension) * d2, d2 * d2)

    @property
    def total_variance(self) -> float:
        """The noise variance per coordinate in the worst case the round allows (t - c honest survivors)."""
        return self.node_variance * self.assumed_survivors

    @property
    def noise_multiplier(self) -> float:
        """Noise standard deviation over L2 sensitivity, in the worst case."""
        return math.sqrt(self.total_variance) / self.l2_sensitivity

    @property
    def release(self) -> SkellamRelease:
        return SkellamRelease(self.total_variance, self.l2_sensitivity, self.l1_sensitivity)

    @property
    def wrap_probability(self) -> float:
        n = self.cohort_size
        room = _LIMIT - 1 - n * (self.clip_norm * self.scale + 1)
        if room <= 0:
            return 1.0
        variance = n * self.node_variance
        tail = math.exp(-(room * room) / (2 * (variance + room / 3)))
        return min(1.0, 2 * self.dimension * tail)

    def epsilon(self, rounds: int, delta: float) -> float:
        return skellam_epsilon([self.release] * rounds, delta)

    # --- the node's side and the coordinator's side --------------------------

    def encode(self, update: np.ndarray, noise: NoiseSource | None = None) -> np.ndarray:
        """Clip, scale, round stochastically, add this node's noise share, reduce mod 2^32.

        The clipping and rounding are the one fixed-point encoder every update goes through (L2
        clip, L-infinity guard, unbiased rounding); the rounding bits and the noise come from one
        generator.
        """
        vector = np.asarray(update, dtype=np.float64)
        if vector.shape != (self.dimension,) or not np.all(np.isfinite(vector)):
            raise EncodingError(f"update must be a finite vector of length {self.dimension}")
        source = noise if noise is not None else NoiseSource()
        encoder = FixedPointEncoder(self.clip_norm, self.scale_bits, self.cohort_size, max_abs=self.clip_norm)
        rounded = encoder.encode(vector, source).view(np.int32).astype(np.int64)
        rounded += source.skellam(self.node_variance, self.dimension)
        return (rounded & 0xFFFFFFFF).astype(np.uint32)

    def decode_mean(self, total: np.ndarray, survivors: int) -> np.ndarray:
        """The noisy mean update from the unmasked sum of ``survivors`` encodings.

        The sum is refused (:class:`EncodingError`, "out-of-range") unless its
        L2 norm is within what ``survivors`` clipped, rounded encodings plus
        their noise can produce: m D2 + 2 sqrt(d m V) + 40 sqrt(m V), where the
        noise term is beyond anything the Skellam noise reaches (its norm
        concentrates at sqrt(d m V)); a garbled or poisoned-beyond-clipping sum
        is not.
        """
        array = np.asarray(total)
        if array.dtype != np.uint32 or array.shape != (self.dimension,) or survivors < 1:
            raise EncodingError("sum has the wrong shape or no survivors")
        integers = array.view(np.int32).astype(np.float64)
        variance = survivors * self.node_variance
        bound = survivors * self.l2_sensitivity + 2 * math.sqrt(self.dimension * variance) + 40 * math.sqrt(variance)
        norm = float(np.linalg.norm(integers))
        if not norm <= bound:
            raise EncodingError(
                f"out-of-range: the noisy sum has L2 norm {norm:.6g} in the integer domain, more than {bound:.6g}, "
                f"what {survivors} clipped inputs with their noise can produce"
            )
        return integers / self.scale / survivors

    # --- the round spec -------------------------------------------------------

    def to_spec(self, delta: float, target_epsilon: float, planned_rounds: int) -> dict[str, Any]:
        return {
            "mechanism": "skellam",
            "clip_norm": self.clip_norm,
            "scale_bits": self.scale_bits,
            "node_variance": self.node_variance,
            "assumed_survivors": self.assumed_survivors,
            "delta": delta,
            "target_epsilon": target_epsilon,
            "planned_rounds": planned_rounds,
        }

    @classmethod
    def from_spec(cls, spec: dict, dimension: int, cohort_size: int) -> SkellamParameters:
        if spec.get("mechanism") != "skellam":
            raise InvalidParameter(f"unsupported DP mechanism {spec.get('mechanism')!r}")
        try:
            return cls(
                clip_norm=float(spec["clip_norm"]),
                scale_bits=spec["scale_bits"],
                node_variance=float(spec["node_variance"]),
                assumed_survivors=spec["assumed_survivors"],
                dimension=dimension,
                cohort_size=cohort_size,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidParameter(f"malformed DP parameters: {exc}") from None


def plan_skellam(
    target_epsilon: float,
    delta: float,
    rounds: int,
    clip_norm: float,
    dimension: int,
    cohort_size: int,
    honest_survivors: int,
    spent: Sequence[SkellamRelease] = (),
) -> SkellamParameters:
    """The coordinator's plan: the finest scale that cannot wrap and keeps the sampler exact.

    The total variance is calibrated so that ``rounds`` more releases, together
    with the ``spent`` ones already recorded, cost at most ``target_epsilon`` at
    ``delta``; each node adds 1/``honest_survivors`` of it (t - c: the threshold
    minus the colluders the task assumes, who may add nothing).
    """
    if type(honest_survivors) is not int or honest_survivors < 1:
        raise InvalidParameter("the noise must be sized for at least one honest survivor (t - c >= 1)")
    last_error: InvalidParameter | None = None
    for bits in range(24, 0, -1):
        d2 = clip_norm * (1 << bits) + math.sqrt(dimension)
        d1 = min(math.sqrt(dimension) * d2, d2 * d2)
        total = calibrate_skellam_variance(target_epsilon, rounds, delta, d2, d1, spent)
        try:
            return SkellamParameters(clip_norm, bits, total / honest_survivors, honest_survivors, dimension, cohort_size)
        except InvalidParameter as exc:
            last_error = exc
    raise InvalidParameter(f"no safe DP scale for this cohort: {last_error}")
