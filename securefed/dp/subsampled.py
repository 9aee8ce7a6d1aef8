"""Record-level accounting: the Poisson-subsampled Skellam mechanism, composed over DP-SGD rounds.

Theory of operation. In record-level DP each node keeps each of its records
with probability q, independently and secretly, and adds the clipped,
integer-encoded gradients of the kept records to the round's secure sum,
which carries Skellam noise of variance V from honest nodes alone. For one
record z (add/remove at one site) a round is a Poisson-subsampled base
mechanism: given everything else (the other records' sampling, the rounding
uniforms, the model), the output with z is Sk_V(c + x) with probability q and
Sk_V(c) otherwise, and without z it is Sk_V(c), where x is z's integer
contribution. The base curve eps(l) at integer order l is the Skellam bound
of Agarwal, Kairouz and Liu 2021 (:func:`securefed.dp.accountant.skellam_rdp`,
L2 and L1 sensitivity of x); it bounds D_l(Sk(c+x) || Sk(c)) and, the Skellam
law being symmetric and shift-invariant, equally D_l(Sk(c) || Sk(c+x)).

Two bounds on the subsampled curve, both at integer orders alpha >= 2, with
P = Sk(c), Q = Sk(c+x), M = (1-q) P + q Q and L = Q/P:

* ``"symmetric"`` (the default). Removing z gives D_alpha(M || P), whose
  binomial expansion is exact for any mechanism:
      E_P[(M/P)^alpha] = sum_l C(alpha, l) (1-q)^(alpha-l) q^l E_P[L^l],  E_P[L^l] = e^((l-1) D_l(Q||P)),
  so it is at most S(alpha) = sum_l C(alpha, l) (1-q)^(alpha-l) q^l e^((l-1) eps(l)) (all terms are
  non-negative). Adding z gives D_alpha(P || M), bounded by the same S(alpha)
  because (P, Q) is a *symmetric pair*: the reflection k -> 2c + x - k maps P
  to Q and Q to P, so E_P[f(L)] = E_P[L f(1/L)] for every f. For t > 0 let
  s = 1 - q + q t and u = (1-q) t + q; symmetrising both integrands,
      E_P[(P/M)^(alpha-1)] = E_P[A(L)]/2,  A(t) = s^(1-alpha) + t^alpha u^(1-alpha),
      E_P[(M/P)^alpha]     = E_P[B(L)]/2,  B(t) = s^alpha + t^(1-alpha) u^alpha,
  and A(t) <= B(t) pointwise: s - 1 = t - u = q (t - 1) and s u - t = q (1-q) (t-1)^2 >= 0, and
  with psi(r) = (r^alpha - r^(1-alpha)) / (r - 1) = 1 + sum_{k=1..alpha-1} (r^k + r^-k), increasing
  for r > 1, B - A = q|t-1| (psi(s) - psi(t/u)) >= 0 for t > 1 and q|t-1| (psi(u/t) - psi(1/s)) >= 0
  for t < 1 (docs/record-level-dp.md writes it out). The conditional pairs are mixed with the same
  data-independent weights in both worlds, and exp((alpha-1) D_alpha) is jointly convex, so the
  round is (alpha, log S(alpha) / (alpha-1))-RDP for add and for remove. For the Gaussian this is
  the formula every DP-SGD accountant uses (Mironov, Talwar and Zhang 2019), exact there.
* ``"general"``: the upper bound of Zhu and Wang, "Poisson Subsampled Renyi
  Differential Privacy" (ICML 2019), valid for any base mechanism that is
  (l, eps(l))-RDP for all 2 <= l <= alpha in both directions: S(alpha) with the
  terms l >= 3 multiplied by 3. It does not vanish as the noise grows (its
  floor is log(1 + 2 P[Binomial(alpha, q) >= 3]) / (alpha - 1)), which makes it
  useless for DP-SGD at batch fractions of a few percent; kept for comparison.

Subsampling never hurts (joint convexity again), so the curve is
min(bound, eps(alpha)); at q = 1 it is the Skellam curve exactly. The sums
are evaluated in log space (log binomials from ``math.lgamma``), with the
log of 1 + small taken by ``log1p`` so that tiny q keeps its digits. RDP
composes by addition over rounds; the conversion to (epsilon, delta) is the
one :mod:`securefed.dp.accountant` uses, ``dp_accounting``'s
``compute_epsilon`` (Canonne, Kamath and Steinke 2020, Prop. 12).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant
from scipy.special import logsumexp

from securefed.dp.accountant import RDP_ORDERS, SkellamRelease, skellam_rdp
from securefed.errors import InvalidParameter

__all__ = [
    "SUBSAMPLED_ORDERS",
    "SubsampledRelease",
    "calibrate_record_level",
    "composed_curve",
    "rdp_to_epsilon",
    "record_level_epsilon",
    "subsampled_skellam_rdp",
]

#: Integer orders up to 256 (the bound at order alpha needs the base curve at every order <= alpha),
#: all of them among the accountant's RDP_ORDERS, so that a plan and a ledger compose the same curve.
SUBSAMPLED_ORDERS: tuple[int, ...] = tuple(a for a in RDP_ORDERS if a <= 256)
_MAX_ORDER = 256
_LOG3 = math.log(3.0)


@dataclass(frozen=True)
class SubsampledRelease:
    """One record-level round: noise variance, one record's sensitivities (integer domain), sampling rate."""

    variance: float
    l2_sensitivity: float
    l1_sensitivity: float
    sampling_rate: float

    def __post_init__(self) -> None:
        values = (self.variance, self.l2_sensitivity, self.l1_sensitivity, self.sampling_rate)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise InvalidParameter("a record-level release needs finite variance, sensitivities and sampling rate")
        if not (self.variance > 0 and self.l2_sensitivity > 0 and self.l1_sensitivity > 0):
            raise InvalidParameter("variance and sensitivities must be positive")
        if not 0 < self.sampling_rate <= 1:
            raise InvalidParameter(f"the sampling rate must be in (0, 1], got {self.sampling_rate}")


def _check_orders(orders: Sequence[int]) -> tuple[int, ...]:
    orders = tuple(orders)
    if not orders or any(type(a) is not int or not 2 <= a <= _MAX_ORDER for a in orders):
        raise InvalidParameter(f"subsampled RDP orders are integers in 2..{_MAX_ORDER}")
    return orders


@functools.lru_cache(maxsize=64)
def _log_binomials(max_order: int) -> np.ndarray:
    """log C(a, j) for a, j in 0..max_order (-inf where j > a)."""
    lg = np.array([math.lgamma(k + 1) for k in range(max_order + 1)])
    a = np.arange(max_order + 1)[:, None]
    j = np.arange(max_order + 1)[None, :]
    with np.errstate(invalid="ignore"):
        table = lg[a] - lg[j] - lg[np.maximum(a - j, 0)]
    return np.where(j <= a, table, -np.inf)


_BOUNDS = ("symmetric", "general")


def _check_bound(bound: str) -> None:
    if bound not in _BOUNDS:
        raise InvalidParameter(f"the subsampling bound must be one of {', '.join(_BOUNDS)}, got {bound!r}")


@functools.lru_cache(maxsize=1024)
def _curve(
    variance: float, l2: float, l1: float, q: float, orders: tuple[int, ...], bound: str = "symmetric"
) -> tuple[float, ...]:
    top = max(orders)
    base = np.asarray(skellam_rdp(SkellamRelease(variance, l2, l1), tuple(range(2, top + 1))))  # eps(l), l = 2..top
    if q == 1.0:
        return tuple(float(base[a - 2]) for a in orders)
    log_q, log_1q = math.log(q), math.log1p(-q)
    a = np.asarray(orders)[:, None]
    ell = np.arange(2, top + 1)[None, :]
    # the l-th term, l = 2..alpha, in logs: log C(alpha, l) + (alpha - l) log(1-q) + l log q + (l-1) eps(l)
    with np.errstate(invalid="ignore"):
        terms = _log_binomials(top)[a, ell] + (a - ell) * log_1q + ell * log_q + (ell - 1) * base[None, :]
    if bound == "general":
        terms = terms + np.where(ell >= 3, _LOG3, 0.0)
    terms = np.where(ell <= a, terms, -np.inf)
    log_rest = logsumexp(terms, axis=1)
    alphas = np.asarray(orders, dtype=np.float64)
    log_first = (alphas - 1) * log_1q + np.log1p((alphas - 1) * q)  # (1-q)^(alpha-1) (1 + (alpha-1) q) <= 1
    # the total is 1 + (first - 1) + rest: when the rest is small keep the digits with expm1/log1p
    small = log_rest < 0.0
    with np.errstate(over="ignore"):
        log_total = np.where(
            small,
            np.log1p(np.expm1(log_first) + np.exp(np.minimum(log_rest, 0.0))),
            np.logaddexp(log_first, log_rest),
        )
    eps = base[alphas.astype(int) - 2]
    return tuple(float(v) for v in np.minimum(log_total / (alphas - 1), eps))


def subsampled_skellam_rdp(
    variance: float,
    l2: float,
    l1: float,
    q: float,
    orders: Sequence[int] = SUBSAMPLED_ORDERS,
    *,
    bound: str = "symmetric",
) -> list[float]:
    """The RDP curve of one Poisson-subsampled Skellam round at each integer order (see the module docstring)."""
    _check_bound(bound)
    r = SubsampledRelease(float(variance), float(l2), float(l1), float(q))
    return list(_curve(r.variance, r.l2_sensitivity, r.l1_sensitivity, r.sampling_rate, _check_orders(orders), bound))


def _as_release(item: SubsampledRelease | Sequence[float]) -> SubsampledRelease:
    if isinstance(item, SubsampledRelease):
        return item
    try:
        variance, l2, l1, q = item
        return SubsampledRelease(float(variance), float(l2), float(l1), float(q))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InvalidParameter):
            raise
        raise InvalidParameter(f"a release is (variance, l2, l1, sampling rate), got {item!r}") from None


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise InvalidParameter(f"delta must be in (0, 1), got {delta}")


def rdp_to_epsilon(orders: Sequence[int], curve: Sequence[float] | np.ndarray, delta: float) -> float:
    """epsilon(delta) from an RDP curve: the conversion securefed.dp.accountant uses (CKS 2020, Prop. 12)."""
    epsilon, _ = rdp_privacy_accountant.compute_epsilon(list(orders), list(curve), delta)
    return float(epsilon)


def composed_curve(
    releases: Iterable[SubsampledRelease | Sequence[float]],
    orders: Sequence[int] = SUBSAMPLED_ORDERS,
    *,
    bound: str = "symmetric",
) -> list[float]:
    """The RDP curve of the composition (the sum of the rounds' curves; equal rounds are computed once)."""
    _check_bound(bound)
    orders = _check_orders(orders)
    counts: dict[SubsampledRelease, int] = {}
    for item in releases:
        release = _as_release(item)
        counts[release] = counts.get(release, 0) + 1
    total = np.zeros(len(orders))
    for r, k in counts.items():
        total += k * np.asarray(_curve(r.variance, r.l2_sensitivity, r.l1_sensitivity, r.sampling_rate, orders, bound))
    return total.tolist()


def record_level_epsilon(
    releases: Iterable[SubsampledRelease | Sequence[float]],
    delta: float,
    orders: Sequence[int] = SUBSAMPLED_ORDERS,
    *,
    bound: str = "symmetric",
) -> float:
    """epsilon(delta) of the rounds made, each recorded as (variance, l2, l1, q); no rounds cost nothing."""
    _check_delta(delta)
    releases = list(releases)
    if not releases:
        return 0.0
    return rdp_to_epsilon(_check_orders(orders), composed_curve(releases, orders, bound=bound), delta)


def calibrate_record_level(
    target_epsilon: float,
    delta: float,
    rounds: int,
    q: float,
    l2: float,
    l1: float,
    spent: Sequence[SubsampledRelease | Sequence[float]] = (),
    tolerance: float = 1e-4,
    *,
    bound: str = "symmetric",
) -> float:
    """The smallest total noise variance (to ``tolerance``, relative) for ``rounds`` more rounds within the target.

    ``spent`` are the rounds already made; all of them together cost at most ``target_epsilon``.
    Raises :class:`InvalidParameter` if the target is out of reach.
    """
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise InvalidParameter("the target epsilon must be a positive number")
    if type(rounds) is not int or rounds < 1:
        raise InvalidParameter("need at least one round")
    _check_delta(delta)
    if not 0 < tolerance < 0.1:
        raise InvalidParameter("the calibration tolerance must be in (0, 0.1)")
    _check_bound(bound)
    SubsampledRelease(1.0, l2, l1, q)  # validates l2, l1 and q
    spent_curve = np.asarray(composed_curve(spent, bound=bound)) if spent else np.zeros(len(SUBSAMPLED_ORDERS))
    if spent:
        already = rdp_to_epsilon(SUBSAMPLED_ORDERS, spent_curve, delta)
        if already >= target_epsilon:
            raise InvalidParameter(
                f"the rounds already made cost epsilon {already:.4f}, which leaves nothing of the target "
                f"{target_epsilon:g} for {rounds} more rounds"
            )

    def epsilon_for(variance: float) -> float:
        curve = np.asarray(_curve(variance, float(l2), float(l1), float(q), SUBSAMPLED_ORDERS, bound))
        return rdp_to_epsilon(SUBSAMPLED_ORDERS, spent_curve + rounds * curve, delta)

    # bracket in noise multipliers z = sqrt(V) / l2, then bisect geometrically in V; the answer is always
    # a variance whose epsilon was computed to be within the target (never an extrapolation), and the
    # bracket checks refuse a target the curve cannot reach
    low, high = (0.01 * l2) ** 2, (1e4 * l2) ** 2
    if epsilon_for(high) > target_epsilon:
        raise InvalidParameter(f"epsilon {target_epsilon:g} is out of reach for {rounds} rounds even with noise multiplier 1e4")
    if epsilon_for(low) <= target_epsilon:
        return low
    while high / low > 1 + tolerance:
        middle = math.sqrt(low * high)
        if epsilon_for(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high
