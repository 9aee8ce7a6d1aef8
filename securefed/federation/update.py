"""The vector a node puts into the secure sum, and how the coordinator reads the sum back.

Training (weighted FedAvg inside the sum):
    [ w * clip(delta) (P fixed-point entries) | w (1 fixed-point entry) ]
with w = min(samples, cap) / cap in (0, 1]. The coordinator learns only
S = sum w_k delta_k and W = sum w_k, and steps the global model by S / W.
With DP on, w = 1 for everyone (bounded sensitivity).

Evaluation (federated metrics through the sum):
    [ correct, count (raw integers) | loss_sum (fixed point, 2^-8) ]

Both are checked against overflow for the cohort size before anything is
encoded: the encoder refuses parameters under which n summands could wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefed.dp.noise import UniformSource
from securefed.encoding import FixedPointEncoder, clip_l2
from securefed.errors import EncodingError, InvalidParameter

__all__ = ["EvaluationCodec", "EvaluationTotals", "TrainingUpdateCodec", "choose_fractional_bits"]

_SIGNED_LIMIT = 1 << 31
_LOSS_BITS = 8


def _weighted_encoder(clip_norm: float, fractional_bits: int, cohort_size: int) -> FixedPointEncoder:
    # The vector [w * clip(delta), w] has L2 norm <= sqrt(C^2 + 1) and entries <= max(C, 1).
    return FixedPointEncoder(
        clip_norm=math.sqrt(clip_norm**2 + 1.0),
        fractional_bits=fractional_bits,
        max_summands=cohort_size,
        max_abs=max(clip_norm, 1.0),
    )


def choose_fractional_bits(clip_norm: float, cohort_size: int) -> int:
    """The finest overflow-safe precision for a cohort (what the coordinator proposes)."""
    return FixedPointEncoder.for_summands(math.sqrt(clip_norm**2 + 1.0), cohort_size, max_abs=max(clip_norm, 1.0)).fractional_bits


@dataclass(frozen=True)
class TrainingUpdateCodec:
    parameter_count: int
    clip_norm: float
    fractional_bits: int
    weight_cap: int
    cohort_size: int

    def __post_init__(self) -> None:
        _weighted_encoder(self.clip_norm, self.fractional_bits, self.cohort_size)  # refuses unsafe parameters

    @property
    def vector_length(self) -> int:
        return self.parameter_count + 1

    @property
    def encoder(self) -> FixedPointEncoder:
        return _weighted_encoder(self.clip_norm, self.fractional_bits, self.cohort_size)

    def weight(self, samples: int) -> float:
        if samples < 1:
            raise InvalidParameter("a node needs at least one training sample")
        return min(samples, self.weight_cap) / self.weight_cap

    def encode(self, delta: np.ndarray, samples: int, rng: UniformSource | None = None, uniform: bool = False) -> np.ndarray:
        if delta.shape != (self.parameter_count,):
            raise EncodingError(f"update has {delta.shape} entries, the model has {self.parameter_count}")
        weight = 1.0 if uniform else self.weight(samples)
        vector = np.empty(self.vector_length, dtype=np.float64)
        vector[:-1] = weight * clip_l2(np.asarray(delta, dtype=np.float64), self.clip_norm)
        vector[-1] = weight
        return self.encoder.encode(vector, rng)

    def decode_mean(self, total: np.ndarray, survivors: int | None = None) -> tuple[np.ndarray, float]:
        """Mean update S / W and the total weight W from the unmasked sum.

        With ``survivors`` (the number of summands) the sum is first checked
        against what that many honest encodings can produce: each weight lies
        in [1/cap, 1] and each weighted update has L2 norm at most w C, so
        W is in [m/cap, m] and ||S|| <= W C (plus stochastic-rounding slack).
        Anything else (a corrupt summand, a garbled unmasking) raises
        :class:`EncodingError` naming the check, and nothing is applied.
        """
        values = self.encoder.decode(total)
        weight = float(values[-1])
        if weight <= 0:
            raise EncodingError("aggregate weight is not positive; the sum is corrupt")
        if survivors is not None:
            if type(survivors) is not int or survivors < 1:
                raise InvalidParameter("survivors must be a positive integer")
            step = 2.0**-self.fractional_bits  # stochastic rounding moves each entry by less than one step
            low = survivors * (1.0 / self.weight_cap - step)
            high = survivors * (1.0 + step)
            if not low <= weight <= high:
                raise EncodingError(
                    f"out-of-range: total weight {weight:.6g} is outside [{low:.6g}, {high:.6g}], what "
                    f"{survivors} inputs with weights in [1/{self.weight_cap}, 1] can sum to"
                )
            norm = float(np.linalg.norm(values[:-1]))
            bound = weight * self.clip_norm + survivors * step * math.sqrt(self.parameter_count)
            if not norm <= bound:
                raise EncodingError(
                    f"out-of-range: the summed update has L2 norm {norm:.6g}, more than {bound:.6g}, what "
                    f"{survivors} clipped inputs (clip norm {self.clip_norm:g}) of total weight {weight:.6g} can sum to"
                )
        return values[:-1] / weight, weight


@dataclass(frozen=True)
class EvaluationTotals:
    correct: int
    count: int
    loss_sum: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")


@dataclass(frozen=True)
class EvaluationCodec:
    cohort_size: int
    max_count: int = 1 << 20

    vector_length = 3

    def __post_init__(self) -> None:
        if self.cohort_size * self.max_count >= _SIGNED_LIMIT:
            raise InvalidParameter("evaluation counts could overflow for this cohort size")

    def encode(self, correct: int, count: int, loss_sum: float) -> np.ndarray:
        if not 0 <= correct <= count <= self.max_count:
            raise EncodingError(f"evaluation counts out of range: {correct}/{count}")
        loss_cap = (_SIGNED_LIMIT // self.cohort_size - 1) / (1 << _LOSS_BITS)
        loss = min(max(float(loss_sum), 0.0), loss_cap) if math.isfinite(loss_sum) else loss_cap
        return np.array([correct, count, round(loss * (1 << _LOSS_BITS))], dtype=np.uint32)

    def decode(self, total: np.ndarray, survivors: int | None = None) -> EvaluationTotals:
        """The summed counts; with ``survivors``, refused (:class:`EncodingError`) unless they are
        what that many honest encodings can sum to (0 <= correct <= count <= m x max_count, loss >= 0)."""
        signed = total.astype(np.uint32).view(np.int32)
        totals = EvaluationTotals(int(signed[0]), int(signed[1]), float(signed[2]) / (1 << _LOSS_BITS))
        if survivors is not None:
            limit = survivors * self.max_count
            if not 0 <= totals.correct <= totals.count <= limit:
                raise EncodingError(
                    f"out-of-range: {totals.correct} correct of {totals.count} is not what {survivors} "
                    f"evaluations of at most {self.max_count} samples each can sum to"
                )
            loss_cap = survivors * ((_SIGNED_LIMIT // self.cohort_size - 1) / (1 << _LOSS_BITS))
            if not 0 <= totals.loss_sum <= loss_cap:
                raise EncodingError(f"out-of-range: summed loss {totals.loss_sum:.6g} is outside [0, {loss_cap:.6g}]")
        return totals
