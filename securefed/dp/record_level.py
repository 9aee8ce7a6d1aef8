"""The plan of a record-level (DP-SGD across sites) run: sampling rate, rounds, integer scale and noise shares.

Theory of operation. Every round each node keeps each of its records with
probability q = expected batch / total records (Poisson, local, secret),
clips each kept record's gradient to L2 norm C, sums them, scales the sum by
s = 2^f, rounds it stochastically to integers and adds its Skellam noise
share. One record's integer contribution moves the node's rounded sum by an
integer vector whose coordinates are each within |g_i| + 1 of the scaled,
clipped gradient g (couple the two roundings through the same uniforms; the
round's output is a data-independent mixture over them, so joint convexity
lets us account per coupling): L2 sensitivity D2 = C s + sqrt(d) and, for an
integer vector, L1 sensitivity D1 = min(sqrt(d) D2, D2^2) -- the bound of
site-level DP, and the same whether a node rounds each example or (with less
rounding noise) its sum once.

The noise shares are sized exactly as for site-level DP
(:func:`securefed.dp.mechanism.plan_skellam`): the calibrated total variance
V must come from the t - c honest survivors alone, so each node adds
V / (t - c). The scale is the finest that keeps each node's share within
``MAX_NODE_VARIANCE`` (where the sampler is validated) and the modular sum
from wrapping: per coordinate the sum is at most B C s + n in magnitude
(B records sampled in all, n nodes each rounding once) plus noise of
variance n V / (t - c). B is random (Binomial(N, q)): the plan bounds it by
``batch_bound`` with a Chernoff tail, and the wrap probability charged is
P[B > batch_bound] plus the Bernstein tail of the noise, refused above
``MAX_WRAP_PROBABILITY``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from securefed.dp.mechanism import MAX_NODE_VARIANCE, MAX_WRAP_PROBABILITY
from securefed.dp.subsampled import (
    SUBSAMPLED_ORDERS,
    SubsampledRelease,
    calibrate_record_level,
    composed_curve,
    rdp_to_epsilon,
    record_level_epsilon,
    subsampled_skellam_rdp,
)
from securefed.errors import InvalidParameter

__all__ = ["RecordLevelPlan", "batch_bound", "plan_record_level", "record_level_wrap_probability"]

_LIMIT = float(1 << 31)  # the modular sum decodes in (-2^31, 2^31), as in securefed.dp.mechanism
_MAX_BITS = 24


@dataclass(frozen=True)
class RecordLevelPlan:
    """Every number of a record-level run; sensitivities and variances are in the integer domain."""

    target_epsilon: float
    delta: float
    total_records: int
    expected_batch: float
    sampling_rate: float
    rounds: int
    clip_norm: float
    dimension: int
    scale_bits: int
    l2_sensitivity: float
    l1_sensitivity: float
    #: the noise variance per coordinate from the t - c honest survivors alone (what is accounted)
    total_variance: float
    #: each node's share: total_variance / honest_survivors
    node_variance: float
    honest_survivors: int
    cohort_size: int
    #: sqrt(total_variance) / l2_sensitivity: the DP-SGD noise multiplier in the worst case
    noise_multiplier: float
    #: records sampled in one round, over all nodes, exceed this with probability <= 2^-41
    batch_bound: int
    wrap_probability: float
    #: epsilon at delta of the spent rounds plus ``rounds`` releases of this plan, recomputed from them
    epsilon: float

    @property
    def scale(self) -> float:
        return float(1 << self.scale_bits)

    @property
    def release(self) -> SubsampledRelease:
        """One round of this plan, as the ledger should record it."""
        return SubsampledRelease(self.total_variance, self.l2_sensitivity, self.l1_sensitivity, self.sampling_rate)

    @property
    def noise_multiplier_if_all_honest(self) -> float:
        """The noise multiplier when all n nodes survive and add their share (the typical case)."""
        return math.sqrt(self.node_variance * self.cohort_size) / self.l2_sensitivity


def _kl_bernoulli(a: float, q: float) -> float:
    if a >= 1.0:
        return -math.log(q)
    return a * math.log(a / q) + (1 - a) * math.log((1 - a) / (1 - q))


def _binomial_tail_bound(total: int, q: float, k: int) -> float:
    """Chernoff: P[Binomial(total, q) >= k] <= exp(-total KL(k/total || q)) for k >= total q."""
    if k > total:
        return 0.0
    if k <= total * q or q >= 1.0:
        return 1.0
    return math.exp(-total * _kl_bernoulli(k / total, q))


def batch_bound(total_records: int, q: float, probability: float = MAX_WRAP_PROBABILITY / 2) -> int:
    """The least b with P[records sampled in one round > b] <= ``probability`` (Chernoff), at most the total."""
    if _binomial_tail_bound(total_records, q, total_records) > probability:
        return total_records
    low, high = max(0, math.floor(total_records * q)), total_records  # tail(low) > probability >= tail(high)
    while high - low > 1:
        middle = (low + high) // 2
        if _binomial_tail_bound(total_records, q, middle) <= probability:
            high = middle
        else:
            low = middle
    return high - 1  # P[B > high - 1] = P[B >= high] <= probability


def record_level_wrap_probability(
    total_records: int, q: float, clip_norm: float, scale_bits: int, dimension: int, cohort_size: int, node_variance: float
) -> tuple[float, int]:
    """(probability that a round's modular sum wraps, the batch bound it assumes)."""
    bound = batch_bound(total_records, q)
    over = _binomial_tail_bound(total_records, q, bound + 1)
    room = _LIMIT - 1 - (bound * clip_norm * float(1 << scale_bits) + cohort_size)
    if room <= 0:
        return 1.0, bound
    variance = cohort_size * node_variance
    tail = 2 * dimension * math.exp(-(room * room) / (2 * (variance + room / 3)))
    return min(1.0, over + tail), bound


def _sensitivities(clip_norm: float, bits: int, dimension: int) -> tuple[float, float]:
    d2 = clip_norm * float(1 << bits) + math.sqrt(dimension)
    return d2, min(math.sqrt(dimension) * d2, d2 * d2)


def _check(
    target_epsilon: float,
    delta: float,
    total_records: int,
    expected_batch: float,
    rounds: int | None,
    clip_norm: float,
    dimension: int,
    honest_survivors: int,
    cohort_size: int,
) -> None:
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise InvalidParameter("the target epsilon must be a positive number")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise InvalidParameter(f"delta must be in (0, 1), got {delta}")
    if type(total_records) is not int or total_records < 1:
        raise InvalidParameter("the total number of records must be a positive integer")
    if not (isinstance(expected_batch, (int, float)) and 0 < expected_batch <= total_records):
        raise InvalidParameter(f"the expected batch must be in (0, {total_records}] (the total number of records)")
    if rounds is not None and (type(rounds) is not int or rounds < 1):
        raise InvalidParameter("rounds must be a positive integer (or None to plan the most rounds the budget allows)")
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise InvalidParameter("the per-example clip norm must be positive")
    if type(dimension) is not int or dimension < 1:
        raise InvalidParameter("the dimension must be a positive integer")
    if type(cohort_size) is not int or cohort_size < 1:
        raise InvalidParameter("the cohort size must be a positive integer")
    if type(honest_survivors) is not int or not 1 <= honest_survivors <= cohort_size:
        raise InvalidParameter("the noise must be sized for 1..cohort size honest survivors (t - c >= 1)")


def _most_rounds(release: SubsampledRelease, delta: float, target: float, spent: Sequence, max_rounds: int) -> int:
    """The most rounds of ``release`` that, with ``spent``, stay within ``target`` (0 if not even one)."""
    base = composed_curve(spent) if spent else [0.0] * len(SUBSAMPLED_ORDERS)
    curve = subsampled_skellam_rdp(release.variance, release.l2_sensitivity, release.l1_sensitivity, release.sampling_rate)

    def fits(rounds: int) -> bool:
        return rdp_to_epsilon(SUBSAMPLED_ORDERS, [b + rounds * c for b, c in zip(base, curve)], delta) <= target

    if not fits(1):
        return 0
    if fits(max_rounds):
        return max_rounds
    low, high = 1, max_rounds  # fits(low), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def plan_record_level(
    target_epsilon: float,
    delta: float,
    total_records: int,
    expected_batch: float,
    rounds: int | None,
    clip_norm: float,
    dimension: int,
    honest_survivors: int,
    cohort_size: int,
    *,
    noise_multiplier: float | None = None,
    max_rounds: int = 100_000,
    spent: Sequence[SubsampledRelease] = (),
) -> RecordLevelPlan:
    """The coordinator's plan for a record-level run: the finest safe scale and the noise for the target.

    With ``rounds`` given, the total variance is calibrated so that the rounds (with the ``spent`` ones)
    cost at most ``target_epsilon`` at ``delta``. With ``rounds=None``, ``noise_multiplier`` fixes the
    noise and the plan takes the most rounds (up to ``max_rounds``) that fit. q = expected_batch /
    total_records; each node adds 1/``honest_survivors`` of the variance (t - c).
    """
    _check(target_epsilon, delta, total_records, expected_batch, rounds, clip_norm, dimension, honest_survivors, cohort_size)
    q = float(expected_batch) / total_records
    spent = list(spent)
    if rounds is None:
        if noise_multiplier is None or not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise InvalidParameter("give the number of rounds, or a positive noise multiplier to plan the most rounds")
        if type(max_rounds) is not int or max_rounds < 1:
            raise InvalidParameter("max_rounds must be a positive integer")
    elif noise_multiplier is not None:
        raise InvalidParameter("give either the number of rounds or a noise multiplier, not both")

    def total_variance(d2: float, d1: float) -> tuple[float, int]:
        if rounds is not None:
            return calibrate_record_level(target_epsilon, delta, rounds, q, d2, d1, spent), rounds
        if noise_multiplier is None:  # refused above: without rounds, the noise multiplier is required
            raise InvalidParameter("give the number of rounds, or a positive noise multiplier to plan the most rounds")
        variance = (noise_multiplier * d2) ** 2
        planned = _most_rounds(SubsampledRelease(variance, d2, d1, q), delta, target_epsilon, spent, max_rounds)
        if planned == 0:
            raise InvalidParameter(
                f"not even one round fits in epsilon {target_epsilon:g} with noise multiplier {noise_multiplier:g}: "
                "raise the noise multiplier or lower the expected batch"
            )
        return variance, planned

    # the noise multiplier needed at the finest scale is the least over all scales (coarser scales add
    # relatively more rounding slack sqrt(d) to D2), so it rules out scales whose share is too large
    finest = total_variance(*_sensitivities(clip_norm, _MAX_BITS, dimension))
    least_multiplier = math.sqrt(finest[0]) / _sensitivities(clip_norm, _MAX_BITS, dimension)[0]
    last_reason = "no scale tried"
    for bits in range(_MAX_BITS, 0, -1):
        d2, d1 = _sensitivities(clip_norm, bits, dimension)
        if (least_multiplier * d2) ** 2 / honest_survivors > MAX_NODE_VARIANCE:
            last_reason = f"a node's noise share would exceed {MAX_NODE_VARIANCE:.4g} at scale 2^{bits}"
            continue
        variance, planned = finest if bits == _MAX_BITS else total_variance(d2, d1)
        node_variance = variance / honest_survivors
        if node_variance > MAX_NODE_VARIANCE:
            last_reason = f"a node's noise share would exceed {MAX_NODE_VARIANCE:.4g} at scale 2^{bits}"
            continue
        wrap, bound = record_level_wrap_probability(total_records, q, clip_norm, bits, dimension, cohort_size, node_variance)
        if wrap > MAX_WRAP_PROBABILITY:
            last_reason = f"the modular sum could wrap (probability {wrap:.2g} > 2^-40) at scale 2^{bits}"
            continue
        release = SubsampledRelease(variance, d2, d1, q)
        return RecordLevelPlan(
            target_epsilon=float(target_epsilon),
            delta=float(delta),
            total_records=total_records,
            expected_batch=float(expected_batch),
            sampling_rate=q,
            rounds=planned,
            clip_norm=float(clip_norm),
            dimension=dimension,
            scale_bits=bits,
            l2_sensitivity=d2,
            l1_sensitivity=d1,
            total_variance=variance,
            node_variance=node_variance,
            honest_survivors=honest_survivors,
            cohort_size=cohort_size,
            noise_multiplier=math.sqrt(variance) / d2,
            batch_bound=bound,
            wrap_probability=wrap,
            epsilon=record_level_epsilon(spent + [release] * planned, delta),
        )
    raise InvalidParameter(f"no safe integer scale for this record-level run ({last_reason}): lower the clip norm or the batch")
