"""Privacy accounting: epsilon(delta) over the rounds of a task, and calibration from a target.

Gaussian mechanism (with or without Poisson sampling of participants): Google's
maintained ``dp-accounting`` library, privacy-loss-distribution (PLD, tight)
or Renyi DP (RDP) accountant.

Skellam mechanism (what securefed's nodes add): its Renyi DP curve from
Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private
Federated Learning" (NeurIPS 2021), Theorem 3.5 / Corollary 3.6. For integer
order a > 1, integer-valued inputs with L1 and L2 sensitivity D1, D2 (in the
integer domain) and Skellam noise of variance V per coordinate:

    eps(a) <= a D2^2 / (2V) + min( ((2a - 1) D2^2 + 6 D1) / (4 V^2),  3 D1 / (2V) )

RDP composes by addition over rounds; the conversion to (eps, delta) is
``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon`` (the improved
conversion of Balle et al. 2020 / Canonne et al. 2020). Amplification by
sampling is not claimed for Skellam: securefed asks every connected node
in every round (q = 1), the conservative case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from securefed.errors import InvalidParameter

__all__ = [
    "RDP_ORDERS",
    "SkellamRelease",
    "calibrate_gaussian",
    "calibrate_skellam_variance",
    "gaussian_epsilon",
    "skellam_epsilon",
    "skellam_rdp",
]

RDP_ORDERS: tuple[int, ...] = tuple(range(2, 129)) + (160, 192, 256, 384, 512, 768, 1024)


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise InvalidParameter(f"delta must be in (0, 1), got {delta}")


def gaussian_epsilon(noise_multiplier: float, steps: int, delta: float, sampling_rate: float = 1.0, method: str = "pld") -> float:
    """epsilon of ``steps`` compositions of the Gaussian mechanism (optionally Poisson-sampled)."""
    _check_delta(delta)
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0) or steps < 0 or not 0 < sampling_rate <= 1:
        raise InvalidParameter("need noise_multiplier > 0, steps >= 0 and 0 < sampling_rate <= 1")
    if steps == 0:
        return 0.0
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_rate, event)
    event = dp_accounting.SelfComposedDpEvent(event, steps)
    if method == "pld":
        accountant = pld_privacy_accountant.PLDAccountant()
    elif method == "rdp":
        accountant = rdp_privacy_accountant.RdpAccountant()
    else:
        raise InvalidParameter("method must be 'pld' or 'rdp'")
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def calibrate_gaussian(target_epsilon: float, steps: int, delta: float, sampling_rate: float = 1.0, method: str = "pld") -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon is at most the target."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise InvalidParameter("target epsilon must be a positive number")
    if method == "pld":
        # PLD is tight but slow for small noise; RDP is fast and never below it, so the RDP answer
        # is an upper bracket and PLD only searches just under it.
        high = calibrate_gaussian(target_epsilon, steps, delta, sampling_rate, "rdp")
        low = high / 2
        while low > 0.05 and gaussian_epsilon(low, steps, delta, sampling_rate, "pld") <= target_epsilon:
            low /= 2
        return _bisect_decreasing(
            lambda z: gaussian_epsilon(z, steps, delta, sampling_rate, "pld"), target_epsilon, low=low, high=high
        )
    return _bisect_decreasing(
        lambda z: gaussian_epsilon(z, steps, delta, sampling_rate, method), target_epsilon, low=0.05, high=500.0
    )


@dataclass(frozen=True)
class SkellamRelease:
    """One aggregated release: noise variance and sensitivities, all in the integer domain.

    ``sampling_rate`` is 1 for a site-level release (a whole site's update); a record-level
    (DP-SGD) round, in which each record took part with probability q, Poisson-sampled locally and
    in secret, records q and is accounted with the subsampled bound (:mod:`securefed.dp.subsampled`).
    Both kinds compose in one ledger.
    """

    variance: float
    l2_sensitivity: float
    l1_sensitivity: float
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        if not (self.variance > 0 and self.l2_sensitivity > 0 and self.l1_sensitivity > 0):
            raise InvalidParameter("variance and sensitivities must be positive")
        if not (isinstance(self.sampling_rate, (int, float)) and 0 < self.sampling_rate <= 1):
            raise InvalidParameter(f"the sampling rate must be in (0, 1], got {self.sampling_rate!r}")


def _plain_skellam_rdp(v: float, d2: float, d1: float, orders: Sequence[int]) -> list[float]:
    curve = []
    for a in orders:
        if type(a) is not int or a < 2:
            raise InvalidParameter("Skellam RDP orders are integers >= 2")
        curve.append(a * d2 * d2 / (2 * v) + min(((2 * a - 1) * d2 * d2 + 6 * d1) / (4 * v * v), 3 * d1 / (2 * v)))
    return curve


def skellam_rdp(release: SkellamRelease, orders: Sequence[int] = RDP_ORDERS) -> list[float]:
    """The Renyi-DP curve of one Skellam release at each integer order (Agarwal et al. 2021).

    A subsampled release (sampling rate below 1) takes the Poisson-subsampled bound at orders up to
    256, where it is defined, and the plain curve above (always valid: sampling never costs more).
    """
    v, d2, d1 = release.variance, release.l2_sensitivity, release.l1_sensitivity
    plain = _plain_skellam_rdp(v, d2, d1, orders)
    if release.sampling_rate >= 1:
        return plain
    from securefed.dp.subsampled import subsampled_skellam_rdp  # (that module builds on this one)

    low = [a for a in orders if a <= 256]
    sampled = dict(zip(low, subsampled_skellam_rdp(v, d2, d1, release.sampling_rate, low))) if low else {}
    return [min(sampled.get(a, value), value) for a, value in zip(orders, plain)]


def skellam_epsilon(releases: Iterable[SkellamRelease], delta: float, orders: Sequence[int] = RDP_ORDERS) -> float:
    """epsilon(delta) of the composition of the given releases."""
    _check_delta(delta)
    total = [0.0] * len(orders)
    count = 0
    curves: dict[SkellamRelease, list[float]] = {}  # many releases repeat: compute each curve once
    for release in releases:
        count += 1
        curve = curves.get(release)
        if curve is None:
            curve = curves[release] = skellam_rdp(release, orders)
        for i, value in enumerate(curve):
            total[i] += value
    if count == 0:
        return 0.0
    return _rdp_to_epsilon(orders, total, delta)


def _rdp_to_epsilon(orders: Sequence[int], curve: Sequence[float], delta: float) -> float:
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(list(orders), list(curve), delta)
    return float(epsilon)


def calibrate_skellam_variance(
    target_epsilon: float,
    rounds: int,
    delta: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    spent: Sequence[SkellamRelease] = (),
) -> float:
    """The smallest total noise variance (to 0.1%) for which ``rounds`` more releases stay within the target.

    ``spent`` are the releases already made (recorded, with their actual noise and sensitivity):
    the new ones are calibrated so that *all* of them together cost at most ``target_epsilon``.
    Raises :class:`InvalidParameter` if what is spent leaves no room at all.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0) or rounds < 1:
        raise InvalidParameter("need a positive target epsilon and at least one round")
    spent = list(spent)
    if spent:
        already = skellam_epsilon(spent, delta)
        if already >= target_epsilon:
            raise InvalidParameter(
                f"the releases already made cost epsilon {already:.4f}, which leaves nothing of the target "
                f"{target_epsilon:g} for {rounds} more rounds"
            )

    _check_delta(delta)
    spent_curve = [0.0] * len(RDP_ORDERS)
    for release in spent:
        for i, value in enumerate(skellam_rdp(release)):
            spent_curve[i] += value

    def epsilon_for(noise_multiplier: float) -> float:
        # RDP composes by addition: rounds equal releases add rounds times one curve.
        variance = (noise_multiplier * l2_sensitivity) ** 2
        curve = skellam_rdp(SkellamRelease(variance, l2_sensitivity, l1_sensitivity))
        return _rdp_to_epsilon(RDP_ORDERS, [a + rounds * b for a, b in zip(spent_curve, curve)], delta)

    z = _bisect_decreasing(epsilon_for, target_epsilon, low=0.05, high=1000.0)
    return (z * l2_sensitivity) ** 2


def _bisect_decreasing(function: Callable[[float], float], target: float, low: float, high: float) -> float:
    """The smallest x in [low, high] with function(x) <= target, for decreasing function."""
    if function(high) > target:
        raise InvalidParameter(f"epsilon {target} is unreachable even with noise multiplier {high}")
    if function(low) <= target:
        return low
    while high / low > 1.001:
        middle = math.sqrt(low * high)
        if function(middle) <= target:
            high = middle
        else:
            low = middle
    return high
