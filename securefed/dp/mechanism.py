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

__all__ = ["MAX_NODE_VARIANCE", "MAX_WRAP_PROBABILITY", "SkellamParameters", "plan_record_skellam", "plan_skellam"]

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
    #: "site": a node's whole update is the unit; "record": each record's gradient (DP-SGD across sites)
    unit: str = "site"
    #: record level: each record's chance of being in the round (Poisson, sampled locally and in secret)
    sampling_rate: float = 1.0
    #: record level: records per round expected over all nodes (the coordinator divides the sum by it)
    expected_batch: float = 0.0
    #: record level: the records of all nodes together in one round exceed this with probability <= 2^-41
    batch_bound: int = 0

    def __post_init__(self) -> None:
        if self.unit not in ("site", "record"):
            raise InvalidParameter(f"unknown privacy unit {self.unit!r}")
        if self.unit == "site" and (self.sampling_rate != 1.0 or self.batch_bound or self.expected_batch):
            raise InvalidParameter("site-level DP has no sampling rate, batch or batch bound")
        if self.unit == "record":
            if not (isinstance(self.sampling_rate, float) and 0 < self.sampling_rate <= 1):
                raise InvalidParameter("the sampling rate must be in (0, 1]")
            if not (isinstance(self.expected_batch, float) and math.isfinite(self.expected_batch) and self.expected_batch > 0):
                raise InvalidParameter("the expected batch must be positive")
            if type(self.batch_bound) is not int or self.batch_bound < 1:
                raise InvalidParameter("the batch bound must be a positive integer")
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
        return SkellamRelease(self.total_variance, self.l2_sensitivity, self.l1_sensitivity, self.sampling_rate)

    @property
    def signal_bound(self) -> float:
        """The largest |coordinate| of the sum of the cohort's rounded inputs, before noise."""
        n = self.cohort_size
        if self.unit == "record":
            # all the records sampled in a round, over all nodes, are at most batch_bound (but with probability
            # 2^-41, charged below), each clipped to C; each node rounds its sum once (+1 per node)
            return self.batch_bound * self.clip_norm * self.scale + n
        return n * (self.clip_norm * self.scale + 1)

    @property
    def wrap_probability(self) -> float:
        n = self.cohort_size
        room = _LIMIT - 1 - self.signal_bound
        if room <= 0:
            return 1.0
        variance = n * self.node_variance
        tail = math.exp(-(room * room) / (2 * (variance + room / 3)))
        batch_tail = MAX_WRAP_PROBABILITY / 2 if self.unit == "record" else 0.0  # P[batch > batch_bound]
        return min(1.0, 2 * self.dimension * tail + batch_tail)

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

    def encode_gradient_sum(self, gradient_sum: np.ndarray, noise: NoiseSource | None = None) -> np.ndarray:
        """Record level: a node's sum of clipped per-record gradients, scaled, rounded once, plus its noise share.

        The sum is clipped to L2 norm ``batch_bound`` x C (it is at most the sampled count times C; the clip,
        a 1-Lipschitz projection, only binds in the 2^-41 event that the batch exceeds its bound, and keeps
        the modular sum from wrapping then). Rounding is stochastic and unbiased, from the same generator as
        the noise: one record moves the rounded sum by at most C s + sqrt(d) in L2 norm, the sensitivity
        accounted (docs/record-level-dp.md).
        """
        if self.unit != "record":
            raise EncodingError("encode_gradient_sum is for record-level rounds")
        vector = np.asarray(gradient_sum, dtype=np.float64)
        if vector.shape != (self.dimension,) or not np.all(np.isfinite(vector)):
            raise EncodingError(f"the gradient sum must be a finite vector of length {self.dimension}")
        source = noise if noise is not None else NoiseSource()
        limit = self.batch_bound * self.clip_norm
        norm = float(np.linalg.norm(vector))
        if norm > limit:
            vector = vector * (limit / norm)
        scaled = vector * self.scale
        floor = np.floor(scaled)
        rounded = (floor + (source.uniform(self.dimension) < (scaled - floor))).astype(np.int64)
        rounded += source.skellam(self.node_variance, self.dimension)
        return (rounded & 0xFFFFFFFF).astype(np.uint32)

    def decode_gradient_sum(self, total: np.ndarray, survivors: int) -> np.ndarray:
        """Record level: the noisy sum of clipped per-record gradients from the unmasked sum (range-checked).

        The sum is refused (:class:`EncodingError`, "out-of-range") unless its L2 norm is within what the
        survivors' clipped, rounded sums plus their noise can produce: batch_bound C s + m sqrt(d) +
        2 sqrt(d m V) + 40 sqrt(m V).
        """
        if self.unit != "record":
            raise EncodingError("decode_gradient_sum is for record-level rounds")
        signal = self.batch_bound * self.clip_norm * self.scale + survivors * math.sqrt(self.dimension)
        return self._plausible(total, survivors, signal, "clipped gradient sums") / self.scale

    def decode_mean(self, total: np.ndarray, survivors: int) -> np.ndarray:
        """The noisy mean update from the unmasked sum of ``survivors`` encodings.

        The sum is refused (:class:`EncodingError`, "out-of-range") unless its
        L2 norm is within what ``survivors`` clipped, rounded encodings plus
        their noise can produce: m D2 + 2 sqrt(d m V) + 40 sqrt(m V), where the
        noise term is beyond anything the Skellam noise reaches (its norm
        concentrates at sqrt(d m V)); a garbled or poisoned-beyond-clipping sum
        is not.
        """
        return self._plausible(total, survivors, survivors * self.l2_sensitivity, "clipped inputs") / self.scale / survivors

    def _plausible(self, total: np.ndarray, survivors: int, signal: float, what: str) -> np.ndarray:
        """The unmasked sum as floats (integer domain), if its norm is within ``signal`` plus the noise's reach."""
        array = np.asarray(total)
        if array.dtype != np.uint32 or array.shape != (self.dimension,) or survivors < 1:
            raise EncodingError("sum has the wrong shape or no survivors")
        integers = array.view(np.int32).astype(np.float64)
        variance = survivors * self.node_variance
        bound = signal + 2 * math.sqrt(self.dimension * variance) + 40 * math.sqrt(variance)
        norm = float(np.linalg.norm(integers))
        if not norm <= bound:
            raise EncodingError(
                f"out-of-range: the noisy sum has L2 norm {norm:.6g} in the integer domain, more than {bound:.6g}, "
                f"what {survivors} nodes' {what} with their noise can produce"
            )
        return integers

    # --- the round spec -------------------------------------------------------

    def to_spec(self, delta: float, target_epsilon: float, planned_rounds: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "mechanism": "skellam",
            "clip_norm": self.clip_norm,
            "scale_bits": self.scale_bits,
            "node_variance": self.node_variance,
            "assumed_survivors": self.assumed_survivors,
            "delta": delta,
            "target_epsilon": target_epsilon,
            "planned_rounds": planned_rounds,
        }
        if self.unit == "record":  # (only then: a site-level spec, and its context hash, stay as they were)
            spec.update(
                unit="record",
                sampling_rate=self.sampling_rate,
                expected_batch=self.expected_batch,
                batch_bound=self.batch_bound,
            )
        return spec

    @classmethod
    def from_spec(cls, spec: dict, dimension: int, cohort_size: int) -> SkellamParameters:
        if spec.get("mechanism") != "skellam":
            raise InvalidParameter(f"unsupported DP mechanism {spec.get('mechanism')!r}")
        try:
            unit = spec.get("unit", "site")
            record = {}
            if unit == "record":
                record = {
                    "sampling_rate": float(spec["sampling_rate"]),
                    "expected_batch": float(spec["expected_batch"]),
                    "batch_bound": spec["batch_bound"],
                }
            return cls(
                clip_norm=float(spec["clip_norm"]),
                scale_bits=spec["scale_bits"],
                node_variance=float(spec["node_variance"]),
                assumed_survivors=spec["assumed_survivors"],
                dimension=dimension,
                cohort_size=cohort_size,
                unit=unit,
                **record,
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


def plan_record_skellam(
    target_epsilon: float,
    delta: float,
    rounds: int,
    clip_norm: float,
    dimension: int,
    cohort_size: int,
    honest_survivors: int,
    total_records: int,
    expected_batch: float,
    spent: Sequence[SkellamRelease] = (),
) -> SkellamParameters:
    """The coordinator's plan for record-level rounds (:func:`securefed.dp.record_level.plan_record_level`),
    as the parameters a round spec carries; the noise is sized for t - c honest survivors, as for site level."""
    from securefed.dp.record_level import plan_record_level
    from securefed.dp.subsampled import SubsampledRelease

    plan = plan_record_level(
        target_epsilon,
        delta,
        total_records,
        expected_batch,
        rounds,
        clip_norm,
        dimension,
        honest_survivors,
        cohort_size,
        spent=[SubsampledRelease(r.variance, r.l2_sensitivity, r.l1_sensitivity, r.sampling_rate) for r in spent],
    )
    return SkellamParameters(
        clip_norm=float(clip_norm),
        scale_bits=plan.scale_bits,
        node_variance=plan.node_variance,
        assumed_survivors=honest_survivors,
        dimension=dimension,
        cohort_size=cohort_size,
        unit="record",
        sampling_rate=plan.sampling_rate,
        expected_batch=plan.expected_batch,
        batch_bound=plan.batch_bound,
    )
