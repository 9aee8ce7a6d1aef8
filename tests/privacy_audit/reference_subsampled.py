"""The audit's own record-level accountant: the subsampled bounds written out again, never imported from ``securefed``.

Theory of operation. The product (``securefed/dp/subsampled.py``) evaluates
the Renyi DP of a Poisson-subsampled Skellam round in floating point, in log
space, vectorised. This module recomputes the same published quantities by a
different road, so that a slip in either shows up as a disagreement:

* the sums in exact-ish arithmetic: ``decimal`` at 60 significant digits,
  exact integer binomials (``math.comb``), the sampling rate taken as the
  exact binary value of the float, ``Decimal.exp`` / ``Decimal.ln``, one
  order at a time, no log-sum-exp tricks;
* the base curve from the audit's own Skellam formula
  (:func:`tests.privacy_audit.reference_accountant.skellam_rdp`), the
  conversion from its own Canonne-Kamath-Steinke conversion;
* and, beyond the formulas, the *true* Renyi divergences of the subsampled
  mixture, for both neighbouring directions, where they can be computed:
  the 1-D Skellam mechanism by summing its probability mass function
  (Skellam(V/2, V/2) has pmf ``e^-V I_|k|(V)``, i.e. ``scipy.special.ive(|k|, V)``)
  and the Gaussian mechanism by numerical integration (``scipy.integrate.quad``).

The bounds (for integer alpha >= 2, base curve eps(l), sampling rate q):

* ``symmetric``: S(alpha) = sum_{l=0..alpha} C(alpha, l) (1-q)^(alpha-l) q^l e^((l-1) eps(l));
  the RDP is log S(alpha) / (alpha - 1). For removal it is the exact binomial
  expansion with E_P[(Q/P)^l] bounded by e^((l-1) eps(l)); for addition it
  rests on the symmetric-pair inequality A(t) <= B(t) (``pair_gap`` below,
  docs/record-level-dp.md).
* ``general``: Zhu and Wang (ICML 2019), the bound for any base mechanism: the
  same sum with the terms l >= 3 multiplied by 3.

Both are capped by eps(alpha) (subsampling never hurts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal, localcontext

import numpy as np
from scipy import integrate, special

from tests.privacy_audit.reference_accountant import Release, rdp_to_epsilon_improved, skellam_rdp

__all__ = [
    "epsilon",
    "gaussian_exact_divergences",
    "pair_gap",
    "skellam_exact_divergences",
    "skellam_subsampled_rdp",
    "subsampled_rdp",
]

_DIGITS = 60


def subsampled_rdp(order: int, q: float, base: Callable[[int], float], bound: str = "symmetric") -> float:
    """The subsampled RDP at one integer order, summed term by term in 60-digit decimal arithmetic."""
    if type(order) is not int or order < 2 or not 0 < q <= 1:
        raise ValueError("integer order >= 2 and 0 < q <= 1")
    if bound not in ("symmetric", "general"):
        raise ValueError("bound is 'symmetric' or 'general'")
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        dq = Decimal(q)  # the exact binary value of the float
        dp = Decimal(1) - dq
        total = Decimal(0)
        for ell in range(order + 1):
            weight = Decimal(math.comb(order, ell)) * dq**ell * dp ** (order - ell)
            if ell <= 1:
                moment = Decimal(1)  # E_P[L^0] = E_P[L] = 1
            else:
                moment = (Decimal(ell - 1) * Decimal(base(ell))).exp()
                if bound == "general" and ell >= 3:
                    moment *= 3
            total += weight * moment
        value = float(total.ln() / Decimal(order - 1))
    return min(value, base(order))


def skellam_subsampled_rdp(order: int, release: Release, q: float, bound: str = "symmetric") -> float:
    return subsampled_rdp(order, q, lambda ell: skellam_rdp(ell, release), bound)


def epsilon(rounds: Iterable[tuple[Release, float]], delta: float, orders: Sequence[int], bound: str = "symmetric") -> float:
    """epsilon(delta) of the composition of (release, q) rounds over ``orders`` (the caller's order grid)."""
    counts: dict[tuple[Release, float], int] = {}
    for item in rounds:
        counts[item] = counts.get(item, 0) + 1
    if not counts:
        return 0.0
    curve = [sum(k * skellam_subsampled_rdp(a, r, q, bound) for (r, q), k in counts.items()) for a in orders]
    return rdp_to_epsilon_improved(orders, curve, delta)


def _renyi(log_p: np.ndarray, log_m: np.ndarray, order: int) -> float:
    """D_order(P || M) for pmfs given in logs on the same support: log(sum p^a m^(1-a)) / (a - 1)."""
    terms = order * log_p + (1 - order) * log_m
    top = float(np.max(terms))
    return (top + math.log(float(np.sum(np.exp(terms - top))))) / (order - 1)


def skellam_exact_divergences(variance: float, shift: int, q: float, order: int) -> tuple[float, float]:
    """The true (remove, add) Renyi divergences of one Poisson-subsampled 1-D Skellam round.

    remove = D(M || P), add = D(P || M), with P = Skellam of the given variance at 0, Q = P shifted by
    ``shift`` and M = (1-q) P + q Q. The support is cut where the pmf underflows (below 1e-300).
    """
    reach = int(variance + 60 * math.sqrt(variance) + 60 + abs(shift))
    k = np.arange(-reach, reach + 1)
    pmf = special.ive(np.abs(k), variance)
    pmf_q = special.ive(np.abs(k - shift), variance)
    keep = (pmf > 1e-300) & (pmf_q > 1e-300)
    log_p, log_q = np.log(pmf[keep]), np.log(pmf_q[keep])
    log_m = np.logaddexp(math.log1p(-q) + log_p, math.log(q) + log_q) if q < 1 else log_q
    return _renyi(log_m, log_p, order), _renyi(log_p, log_m, order)


def gaussian_exact_divergences(sigma: float, q: float, order: int) -> tuple[float, float]:
    """The true (remove, add) Renyi divergences of one Poisson-subsampled Gaussian round (sensitivity 1)."""

    def log_p(y: float) -> float:
        return -0.5 * (y / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))

    def log_m(y: float) -> float:
        return float(np.logaddexp(math.log1p(-q) + log_p(y), math.log(q) + log_p(y - 1.0)))

    def integral(first, second) -> float:
        width = 12 * sigma * math.sqrt(order) + order / sigma
        integrand = lambda y: math.exp(order * first(y) + (1 - order) * second(y))  # noqa: E731
        value, _ = integrate.quad(integrand, -width, width + 1, limit=400, epsabs=0, epsrel=1e-12)
        return math.log(value) / (order - 1)

    return integral(log_m, log_p), integral(log_p, log_m)


def pair_gap(t: float, q: float, order: int) -> float:
    """log B(t) - log A(t): the symmetric-pair inequality is that this is never negative.

    A(t) = s^(1-a) + t^a u^(1-a) and B(t) = s^a + t^(1-a) u^a with s = 1-q+qt, u = (1-q)t+q: the
    symmetrised integrands of the add and remove directions at likelihood ratio t.
    """
    log_t = math.log(t)
    log_s, log_u = math.log1p(q * (t - 1)), math.log(q + (1 - q) * t)
    log_a = np.logaddexp((1 - order) * log_s, order * log_t + (1 - order) * log_u)
    log_b = np.logaddexp(order * log_s, (1 - order) * log_t + order * log_u)
    return float(log_b - log_a)
