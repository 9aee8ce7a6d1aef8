"""The audit's own accountant: the published formulas, written here, never imported from ``securefed``.

Theory of operation. An audit that asks the product what a release cost can be
fooled by the product: an accounting bug lowers the bar the audit judges by.
So the privacy audit recomputes every charged release from the *raw* round
parameters a run leaves behind (the node variance V_node, the threshold t, the
colluder bound c, the clip norm C, the scale 2^f and the dimension d) with the
formulas below, and compares.

* The release (securefed's documented mechanism, ``docs/privacy.md``). Each
  honest node adds Skellam noise of variance V_node per coordinate; a round
  the protocol completes has at least t survivors, of whom up to c collude
  with the coordinator and may add nothing, so the aggregate certainly carries
  ``V = (t - c) V_node``. A node's integer vector is its update clipped to L2
  norm C, scaled by 2^f and stochastically rounded (each coordinate moves by
  less than 1): L2 sensitivity ``D2 = C 2^f + sqrt(d)`` and, for an integer
  vector, L1 sensitivity ``D1 = min(sqrt(d) D2, D2^2)``.
* c (``docs/threat-model.md``): ``max_colluders`` is a count, a fraction of the
  roster N (counted up: ceil(f N), at least one when f > 0), or unset for
  ``max(1, ceil(N / 5))``; the smallest threshold that withstands it on the
  complete graph is the least t with 2t > N + c.
* Skellam RDP: Agarwal, Kairouz and Liu, "The Skellam Mechanism for
  Differentially Private Federated Learning" (NeurIPS 2021), Theorem 3.5 /
  Corollary 3.6, for integer orders a >= 2 and noise of variance V:
  ``eps(a) <= a D2^2 / (2V) + min(((2a - 1) D2^2 + 6 D1) / (4 V^2), 3 D1 / (2V))``.
  RDP adds up over releases (Mironov 2017, Prop. 1).
* RDP -> (eps, delta), two conversions:
  - classic, Mironov, "Renyi Differential Privacy" (CSF 2017), Prop. 3:
    ``eps = min_a rdp(a) + log(1/delta) / (a - 1)``; looser;
  - improved, Canonne, Kamath and Steinke, "The Discrete Gaussian for
    Differential Privacy" (NeurIPS 2020), Prop. 12 (also Asoodeh et al. 2020,
    eq. 20; Balle et al. 2020, Thm. 21):
    ``eps = min_a rdp(a) + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1)``.
  Both are valid upper bounds, so a product that uses the improved one must
  never report *more* than the classic one and, minimising over a subset of
  the orders we use, never *less* than ours.
* A floor no sound accountant can go under: the Skellam RDP bound is at least
  the Gaussian mechanism's RDP ``a D2^2 / (2V)``, and any valid conversion of
  the Gaussian's RDP is at least the Gaussian's exact epsilon. The composition
  of Gaussian releases is mu-GDP with ``mu^2 = sum D2_i^2 / V_i`` (Dong, Roth
  and Su, "Gaussian Differential Privacy", JRSS-B 2022, Cor. 3.3), whose exact
  curve is ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``
  (Balle and Wang, ICML 2018, Thm. 8). So a Skellam epsilon below the exact
  Gaussian epsilon of the same variance and sensitivity is an undercharge,
  whatever the conversion.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import special

__all__ = [
    "ORDERS",
    "Accounted",
    "Release",
    "account",
    "colluders",
    "epsilon",
    "epsilon_classic",
    "gaussian_exact_epsilon",
    "gaussian_floor",
    "rdp_curve",
    "rdp_to_epsilon_classic",
    "rdp_to_epsilon_improved",
    "release_from_raw",
    "skellam_rdp",
    "skellam_rdp_poisson_rate",
    "smallest_threshold",
]

#: Every integer order up to 4096: a superset of any order grid a product may use.
ORDERS: tuple[int, ...] = tuple(range(2, 4097))


@dataclass(frozen=True)
class Release:
    """One aggregated release in the integer domain: noise variance V, sensitivities D2 and D1."""

    variance: float
    l2: float
    l1: float


def colluders(setting: int | float | None, roster_size: int) -> int:
    """``max_colluders`` as a count for a roster of N (docs/threat-model.md)."""
    if setting is None:
        return max(1, math.ceil(roster_size / 5))
    if isinstance(setting, int):
        return setting
    return math.ceil(Fraction(repr(setting)) * roster_size)


def smallest_threshold(roster_size: int, c: int) -> int:
    """The least t with 2t > N + c (complete graph, malicious coordinator)."""
    return (roster_size + c) // 2 + 1


def release_from_raw(node_variance: float, honest: int, clip_norm: float, scale_bits: int, dimension: int) -> Release:
    """The release a round makes: V = (t - c) V_node, D2 = C 2^f + sqrt(d), D1 = min(sqrt(d) D2, D2^2)."""
    d2 = clip_norm * float(2**scale_bits) + math.sqrt(dimension)
    return Release(honest * node_variance, d2, min(math.sqrt(dimension) * d2, d2 * d2))


def skellam_rdp(order: int, release: Release) -> float:
    """Agarwal-Kairouz-Liu 2021, Thm 3.5 / Cor 3.6, in terms of the variance V."""
    v, d2, d1 = release.variance, release.l2, release.l1
    return order * d2 * d2 / (2 * v) + min(((2 * order - 1) * d2 * d2 + 6 * d1) / (4 * v * v), 3 * d1 / (2 * v))


def skellam_rdp_poisson_rate(order: int, release: Release) -> float:
    """The same bound as the paper writes it, for Skellam(mu, mu) (Poisson rate mu, variance 2 mu)."""
    mu, d2, d1 = release.variance / 2.0, release.l2, release.l1
    return order * d2 * d2 / (4.0 * mu) + min(((2 * order - 1) * d2 * d2 + 6 * d1) / (16.0 * mu * mu), 3 * d1 / (4.0 * mu))


def rdp_to_epsilon_improved(orders: Sequence[int], rdp: Sequence[float], delta: float) -> float:
    """Canonne-Kamath-Steinke 2020, Prop. 12: min_a rdp(a) + log((a-1)/a) - (log delta + log a)/(a-1), at least 0."""
    a, r = np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or np.any(a < 2):
        raise ValueError("one RDP value per order, orders >= 2")
    return max(0.0, float(np.min(r + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1))))


def rdp_to_epsilon_classic(orders: Sequence[int], rdp: Sequence[float], delta: float) -> float:
    """Mironov 2017, Prop. 3: min_a rdp(a) + log(1/delta)/(a-1)."""
    a, r = np.asarray(orders, dtype=np.float64), np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or np.any(a < 2):
        raise ValueError("one RDP value per order, orders >= 2")
    return max(0.0, float(np.min(r + math.log(1 / delta) / (a - 1))))


@functools.lru_cache(maxsize=4096)
def rdp_curve(release: Release, orders: tuple[int, ...] = ORDERS) -> np.ndarray:
    """skellam_rdp at every order, vectorised (the same formula; the audit checks they agree)."""
    a = np.asarray(orders, dtype=np.float64)
    v, d2, d1 = release.variance, release.l2, release.l1
    return a * d2 * d2 / (2 * v) + np.minimum(((2 * a - 1) * d2 * d2 + 6 * d1) / (4 * v * v), 3 * d1 / (2 * v))


def _composed(releases: Iterable[Release], orders: Sequence[int]) -> list[float]:
    counts: dict[Release, int] = {}
    for release in releases:
        counts[release] = counts.get(release, 0) + 1
    orders = tuple(orders)
    total = np.zeros(len(orders))
    for release, k in counts.items():
        total += k * rdp_curve(release, orders)
    return total.tolist()


def epsilon(releases: Iterable[Release], delta: float, orders: Sequence[int] = ORDERS) -> float:
    """epsilon(delta) of the composition of ``releases`` (improved conversion, every order up to 4096)."""
    releases = list(releases)
    return rdp_to_epsilon_improved(orders, _composed(releases, orders), delta) if releases else 0.0


def epsilon_classic(releases: Iterable[Release], delta: float, orders: Sequence[int] = ORDERS) -> float:
    """The same with the classic conversion: a looser upper bound."""
    releases = list(releases)
    return rdp_to_epsilon_classic(orders, _composed(releases, orders), delta) if releases else 0.0


def _gaussian_delta(eps: float, mu: float) -> float:
    # Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), the second term in logs (it is e^8 x tiny)
    first = special.ndtr(-eps / mu + mu / 2)
    second = math.exp(eps + special.log_ndtr(-eps / mu - mu / 2))
    return first - second


def gaussian_exact_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon(delta) of mu-GDP (Balle and Wang 2018, Thm. 8), by bisection to 1e-10."""
    if _gaussian_delta(0.0, mu) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while _gaussian_delta(high, mu) > delta:
        high *= 2
    while high - low > 1e-10:
        middle = (low + high) / 2
        if _gaussian_delta(middle, mu) > delta:
            low = middle
        else:
            high = middle
    return high


def gaussian_floor(releases: Iterable[Release], delta: float) -> float:
    """The exact epsilon of Gaussian releases with the same variances and L2 sensitivities."""
    mu = math.sqrt(sum(r.l2 * r.l2 / r.variance for r in releases))
    return gaussian_exact_epsilon(mu, delta) if mu > 0 else 0.0


@dataclass(frozen=True)
class Accounted:
    """What the reference says a composition costs: improved and classic conversions, and the Gaussian floor."""

    epsilon: float
    classic: float
    floor: float

    def judge(self, reported: float, rel: float = 1e-6) -> str | None:
        """Why ``reported`` (the product's epsilon for the same releases) is wrong, or None.

        It must equal the reference (the product minimises over fewer orders, so it may exceed it by a
        hair; never fall below it), and in any case lie between the Gaussian floor and the classic
        conversion.
        """
        if reported < self.floor * (1 - rel):
            return f"{reported:.6f} is below the exact Gaussian epsilon {self.floor:.6f} of the same noise (undercharge)"
        if reported < self.epsilon * (1 - rel) - 1e-12:
            return f"{reported:.6f} understates the reference {self.epsilon:.6f}"
        if reported > self.classic * (1 + rel) + 1e-12:
            return f"{reported:.6f} is above even the classic conversion {self.classic:.6f}"
        if reported > self.epsilon * (1 + rel) + 1e-12:
            return f"{reported:.6f} disagrees with the reference {self.epsilon:.6f} (overstates)"
        return None


def account(releases: Sequence[Release], delta: float) -> Accounted:
    return Accounted(epsilon(releases, delta), epsilon_classic(releases, delta), gaussian_floor(releases, delta))
