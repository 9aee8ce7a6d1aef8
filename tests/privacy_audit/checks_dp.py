"""The differential-privacy checks of the privacy audit, as plain functions that return a result.

Theory of operation. Every check here is a function that *returns* a
:class:`CheckResult` (name, promise, passed, detail) instead of asserting, so
that the audit tests can record it and the mutation canaries
(``test_canaries_dp.py``) can run the very same function against a
deliberately broken variant of the product and see it fail. Checks look up the
product's functions through their modules (``accountant.skellam_rdp``,
``mechanism.plan_skellam``, ...) at call time, so a canary's patch is seen.

What the checks compare against is written here independently of the product:

* the sensitivity bound is the one the mechanism documents and the ledger
  charges, ``C * 2^f + sqrt(d)`` (L2) and ``min(sqrt(d) D2, D2^2)`` (L1),
  checked with exact integer arithmetic on the vector a node actually emits;
* the noise distribution is ``scipy.stats.skellam`` (a Pearson chi-square
  goodness-of-fit test, fixed seeds);
* the Skellam RDP curve is re-implemented from Agarwal, Kairouz and Liu
  (NeurIPS 2021) in two parametrisations (the paper's Poisson rate
  ``mu = V / 2``, and the real-domain form of Google's reference code
  ``federated/distributed_dp/accounting_utils.py``), and the RDP ->
  (epsilon, delta) conversion is re-implemented as
  ``eps = min_a [rdp(a) + log((a-1)/a) - (log(delta) + log(a)) / (a-1)]``.
  That is the conversion dp-accounting 0.6.0 uses (``compute_epsilon``:
  Canonne, Kamath and Steinke 2020, Prop. 12, equivalently Asoodeh et al.
  2020 eq. 20 and Balle et al. 2020 Thm 21), plus a shortcut that returns 0
  when the KL bound already gives delta, irrelevant at the values here;
* the Gaussian accountant is compared with golden values computed with
  dp-accounting 0.6.0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from scipy import stats

from securefed.crypto.identity import SigningKey
from securefed.dp import accountant, mechanism
from securefed.dp.accountant import SkellamRelease
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.dp.mechanism import SkellamParameters
from securefed.dp.noise import NoiseSource
from securefed.errors import PrivacyBudgetExhausted
from securefed.federation.messages import Envelope, Refusal, RoundStart
from securefed.federation.node import Node, NodePolicy, NodeState
from securefed.federation.spec import RoundSpec
from securefed.learning.data import LocalDataset
from securefed.learning.models import make_adapter
from securefed.secagg.messages import MaskedInput

__all__ = [
    "CheckResult",
    "CLIPPING",
    "AGGREGATE_NOISE",
    "NOISE_CALIBRATION",
    "ACCOUNTANT_GAUSSIAN",
    "ACCOUNTANT_SKELLAM",
    "BUDGET_REFUSAL",
    "NODE_BUDGET_REFUSAL",
    "EMPIRICAL_AUDIT",
    "RoundingOnly",
    "contribution",
    "contribution_within_bounds",
    "adversarial_updates",
    "check_clipping",
    "aggregate_noise_samples",
    "skellam_goodness_of_fit",
    "check_aggregate_noise",
    "check_noise_calibration",
    "GAUSSIAN_GOLDEN",
    "check_gaussian_accountant",
    "reference_skellam_rdp",
    "reference_skellam_rdp_real_domain",
    "reference_rdp_to_epsilon",
    "reference_skellam_epsilon",
    "check_skellam_accountant",
    "check_budget_refusal",
    "check_node_budget_refusal",
    "clopper_pearson",
    "EmpiricalAudit",
    "modular_sum",
    "run_empirical_audit",
    "ROUNDING_MODES",
    "CLIPPING_CONFIGS",
]

# Check names: what the report shows, and what a canary names as ``caught_by``.
CLIPPING = "dp.clipping-bound"
AGGREGATE_NOISE = "dp.aggregate-noise-distribution"
NOISE_CALIBRATION = "dp.noise-calibration"
ACCOUNTANT_GAUSSIAN = "dp.accountant-gaussian-golden"
ACCOUNTANT_SKELLAM = "dp.accountant-skellam-reference"
BUDGET_REFUSAL = "dp.ledger-budget-refusal"
NODE_BUDGET_REFUSAL = "dp.node-budget-refusal"
EMPIRICAL_AUDIT = "empirical audit"


@dataclass(frozen=True)
class CheckResult:
    name: str
    promise: str
    passed: bool
    detail: str

    def record(self, audit: Any) -> None:
        audit.check(self.name, self.promise, self.passed, self.detail)


def _result(name: str, promise: str, failures: Sequence[str], summary: str) -> CheckResult:
    if failures:
        shown = "; ".join(failures[:5]) + (f"; ... ({len(failures) - 5} more)" if len(failures) > 5 else "")
        return CheckResult(name, promise, False, f"{summary}; FAILED: {shown}")
    return CheckResult(name, promise, True, summary)


# --- (a) clipping: the vector a node contributes stays within the accounted sensitivity -----------


class RoundingOnly(NoiseSource):
    """A noise source that adds no noise, so only clip + scale + round is left of ``encode``.

    ``pinned=None`` keeps the real (seeded) stochastic rounding; ``pinned=0.0``
    makes every non-integer coordinate round *up* and ``pinned`` just below 1
    makes every coordinate round down: the two extremes an unlucky draw can reach.
    """

    def __init__(self, seed: bytes, pinned: float | None = None) -> None:
        super().__init__(seed)
        self._pinned = pinned

    def skellam(self, variance: float, size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.int64)

    def uniform(self, size: int) -> np.ndarray:
        return super().uniform(size) if self._pinned is None else np.full(size, self._pinned)


ROUNDING_MODES: tuple[tuple[str, float | None], ...] = (
    ("random", None),
    ("always-up", 0.0),
    ("always-down", float(np.nextafter(1.0, 0.0))),
)


def contribution(params: SkellamParameters, update: np.ndarray, source: NoiseSource) -> np.ndarray:
    """What ``encode`` (the node's code path) adds to the modular sum, as its centred integer vector."""
    with np.errstate(invalid="ignore", over="ignore"):
        encoded = params.encode(update, source)
    return encoded.view(np.int32).astype(np.int64)


def contribution_within_bounds(
    params: SkellamParameters, update: np.ndarray, source: NoiseSource
) -> tuple[bool, float, str]:
    """Exact check of one contribution against the documented and the charged L2/L1 sensitivity.

    Returns (within bounds, L2 norm / L2 bound, detail).
    """
    ints = [int(v) for v in contribution(params, update, source)]
    l2_squared = sum(v * v for v in ints)
    l1 = sum(abs(v) for v in ints)
    documented_l2 = params.clip_norm * float(1 << params.scale_bits) + math.sqrt(params.dimension)
    charged = params.release  # what the ledger records and the accountant charges for
    bound_l2 = min(Fraction(documented_l2), Fraction(charged.l2_sensitivity))
    bound_l1 = Fraction(charged.l1_sensitivity)
    ok = l2_squared <= bound_l2 * bound_l2 and l1 <= bound_l1
    ratio = math.sqrt(l2_squared) / float(bound_l2)
    detail = f"L2 {math.sqrt(l2_squared):.10g} vs bound {float(bound_l2):.10g}, L1 {l1} vs bound {float(bound_l1):.10g}"
    return ok, ratio, detail


def adversarial_updates(dimension: int, clip_norm: float, scale: float, seed: int) -> list[tuple[str, np.ndarray]]:
    """Finite updates chosen to stress clipping and rounding: huge, tiny, subnormal, on the boundary, aligned."""
    rng = np.random.default_rng(seed)
    d = dimension
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    biggest = float(np.finfo(np.float64).max)
    alternating = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
    cases: list[tuple[str, np.ndarray]] = [
        ("zero", np.zeros(d)),
        ("max-float everywhere", np.full(d, biggest)),
        ("max-float alternating signs", biggest * alternating),
        ("max-float spike", np.eye(1, d, int(rng.integers(d)))[0] * -biggest),
        ("subnormal", np.full(d, 5e-324)),
        ("huge and tiny mixed", np.where(np.arange(d) % 2 == 0, 1e308, 1e-308)),
        ("spike 1e9 x clip", np.eye(1, d, 0)[0] * clip_norm * 1e9),
        ("exactly on the clip sphere", direction * clip_norm),
        ("a hair outside the sphere", np.full(d, clip_norm / math.sqrt(d)) * (1 + 1e-12)),
        ("a hair inside the sphere", np.full(d, clip_norm / math.sqrt(d)) * (1 - 1e-12)),
    ]
    # aligned just-above-integer coordinates: rounding up adds almost 1 in the update's own direction
    step = math.floor(clip_norm * scale / math.sqrt(d))
    cases.append(("aligned, fractional parts 1e-3", np.full(d, (step + 1e-3) / scale)))
    cases.append(("aligned, fractional parts 0.5", np.full(d, (max(step - 1, 0) + 0.5) / scale)))
    for factor in (0.5, 0.999999, 1.000001, 2.0, 1e6):
        cases.append((f"random direction, norm {factor!r} x clip", direction * clip_norm * factor))
    for exponent in range(-300, 301, 25):
        cases.append((f"gaussian x 1e{exponent}", rng.standard_normal(d) * 10.0**exponent))
    for index in range(20):
        cases.append((f"heavy-tailed #{index}", rng.standard_cauchy(d) * clip_norm * 10.0 ** rng.uniform(-3, 6)))
    return cases


# (clip norm, scale bits, dimension, cohort): realistic scales, a tiny clip where rounding dominates, d = 1
CLIPPING_CONFIGS: tuple[tuple[float, int, int, int], ...] = (
    (1.0, 24, 16, 5),
    (1.0, 20, 1000, 10),
    (0.01, 30, 7, 3),
    (1000.0, 10, 64, 100),
    (1e-6, 0, 3, 2),
    (5.0, 8, 1, 2),
)


def check_clipping(configs: Iterable[tuple[float, int, int, int]] = CLIPPING_CONFIGS, seed: int = 20240611) -> CheckResult:
    promise = (
        "whatever the update, the integer vector a node adds to the sum has L2 norm <= C*2^f + sqrt(d) "
        "and L1 norm <= min(sqrt(d) D2, D2^2), the sensitivities the accountant charges"
    )
    failures: list[str] = []
    count = 0
    worst = 0.0
    for index, (clip_norm, bits, dimension, cohort) in enumerate(configs):
        params = SkellamParameters(clip_norm, bits, 1.0, min(2, cohort), dimension, cohort)
        for label, update in adversarial_updates(dimension, clip_norm, params.scale, seed + index):
            for mode, pinned in ROUNDING_MODES:
                count += 1
                source = RoundingOnly(seed.to_bytes(8, "little") * 2 + bytes([index, count % 256]), pinned)
                try:
                    ok, ratio, detail = contribution_within_bounds(params, update, source)
                except Exception as exc:  # any exception on a finite update is a failure of the promise
                    failures.append(f"C={clip_norm:g} f={bits} d={dimension} {label} ({mode}): raised {exc!r}")
                    continue
                worst = max(worst, ratio)
                if not ok:
                    failures.append(f"C={clip_norm:g} f={bits} d={dimension} {label} ({mode}): {detail}")
    return _result(CLIPPING, promise, failures, f"{count} contributions checked exactly; largest L2 / bound = {worst:.8f}")


# --- (b) the aggregate noise: Skellam with variance (survivors x node variance) ------------------


def aggregate_noise_samples(params: SkellamParameters, survivors: int, samples: int, seed: int) -> np.ndarray:
    """Per-coordinate values of the modular sum of ``survivors`` encodings of the ZERO update.

    Zero scales and rounds to exactly zero, so what is left is the nodes' noise.
    Each node has its own seeded :class:`NoiseSource`, as each real node has its own.
    """
    trials = -(-samples // params.dimension)
    sources = [NoiseSource(seed.to_bytes(8, "little") + node.to_bytes(8, "little")) for node in range(survivors)]
    zero = np.zeros(params.dimension)
    values = []
    for _ in range(trials):
        total = np.zeros(params.dimension, dtype=np.uint32)
        for source in sources:
            total += params.encode(zero, source)  # uint32 addition wraps: the sum mod 2^32
        values.append(total.view(np.int32).astype(np.int64))
    return np.concatenate(values)[:samples]


def skellam_goodness_of_fit(values: np.ndarray, variance: float, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson chi-square of integer ``values`` against the symmetric Skellam of that variance: (stat, dof, p).

    Bins are single integers, with both tails pooled until every bin expects at least ``min_expected``.
    """
    n = values.size
    reference = stats.skellam(variance / 2.0, variance / 2.0)
    spread = int(math.ceil(12 * math.sqrt(variance))) + 5
    support = np.arange(-spread, spread + 1)
    cdf = reference.cdf(support)
    sf = reference.sf(support - 1)  # P(X >= k)
    low = int(support[np.argmax(cdf * n >= min_expected)])
    high = int(support[len(support) - 1 - np.argmax((sf * n >= min_expected)[::-1])])
    inner = np.arange(low + 1, high)
    expected = np.concatenate([[reference.cdf(low)], reference.pmf(inner), [reference.sf(high - 1)]]) * n
    middle = values[(values > low) & (values < high)] - (low + 1)
    observed = np.concatenate(
        [
            [np.count_nonzero(values <= low)],
            np.bincount(middle, minlength=inner.size)[: inner.size],
            [np.count_nonzero(values >= high)],
        ]
    )
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    dof = expected.size - 1
    return statistic, dof, float(stats.chi2.sf(statistic, dof))


def _variance_z(values: np.ndarray, variance: float) -> float:
    """z-score of the sample variance against ``variance`` (Skellam: 4th cumulant = variance)."""
    n = values.size
    sample = float(np.var(values.astype(np.float64), ddof=1))
    return (sample - variance) / math.sqrt((2 * variance * variance + variance) / n)


NOISE_FIT_PARAMETERS = SkellamParameters(
    clip_norm=1.0, scale_bits=16, node_variance=100.0, assumed_survivors=3, dimension=25_000, cohort_size=5
)


def check_aggregate_noise(
    params: SkellamParameters = NOISE_FIT_PARAMETERS, samples: int = 100_000, seed: int = 7, alpha: float = 1e-3
) -> CheckResult:
    promise = (
        "the noise in an aggregate of s surviving nodes is Skellam with variance s x node variance, "
        "which is >= the calibrated total variance whenever s >= t"
    )
    failures: list[str] = []
    parts: list[str] = []
    t, n = params.assumed_survivors, params.cohort_size
    for survivors in range(t, n + 1):
        values = aggregate_noise_samples(params, survivors, samples, seed + survivors)
        variance = survivors * params.node_variance
        statistic, dof, p = skellam_goodness_of_fit(values, variance)
        z = _variance_z(values, params.total_variance)
        parts.append(f"s={survivors}: Skellam(var {variance:g}) chi2={statistic:.1f}/{dof} dof p={p:.3g}, sample var {np.var(values):.1f}")
        if p < alpha:
            failures.append(f"s={survivors}: {values.size} sums do not fit Skellam(var {variance:g}) (chi2 p={p:.2g})")
        if variance < params.total_variance:
            failures.append(f"s={survivors}: variance {variance:g} < calibrated {params.total_variance:g}")
        if z < -4:
            failures.append(f"s={survivors}: sample variance {np.var(values):.1f} is below calibrated {params.total_variance:g} (z={z:.1f})")
    return _result(AGGREGATE_NOISE, promise, failures, f"{samples} coordinates per s; " + "; ".join(parts))


# --- (b') calibration: with only t survivors the noise is enough for the target ------------------


# (target epsilon, delta, rounds, clip norm, dimension, cohort n, threshold t)
CALIBRATION_CONFIGS: tuple[tuple[float, float, int, float, int, int, int], ...] = (
    (2.0, 1e-5, 1, 1.0, 16, 5, 3),
    (2.0, 1e-5, 1, 2.0**-20, 16, 5, 3),  # moderate integer variance: the empirical part resolves it
    (1.0, 1e-6, 10, 0.5, 1000, 20, 10),
    (8.0, 1e-5, 20, 1.0, 50_000, 100, 51),
)


def _reference_minimum_variance(target: float, delta: float, rounds: int, d2: float, d1: float) -> float:
    """The smallest total variance the independent accountant allows (bisection, relative 1e-7)."""
    low, high = 1e-6 * d2 * d2, 1e8 * d2 * d2
    while high / low > 1 + 1e-7:
        middle = math.sqrt(low * high)
        if reference_skellam_epsilon([SkellamRelease(middle, d2, d1)] * rounds, delta) <= target:
            high = middle
        else:
            low = middle
    return high


def check_noise_calibration(
    configs: Iterable[tuple[float, float, int, float, int, int, int]] = CALIBRATION_CONFIGS,
    samples: int = 100_000,
    seed: int = 11,
) -> CheckResult:
    promise = (
        "the coordinator's plan (plan_skellam) sizes each node's noise so that an aggregate with only t "
        "survivors carries at least the variance the target epsilon needs (by an independent accountant)"
    )
    failures: list[str] = []
    parts: list[str] = []
    for target, delta, rounds, clip_norm, dimension, n, t in configs:
        plan = mechanism.plan_skellam(target, delta, rounds, clip_norm, dimension, n, t)
        d2 = clip_norm * float(1 << plan.scale_bits) + math.sqrt(dimension)
        d1 = min(math.sqrt(dimension) * d2, d2 * d2)
        worst_case = t * plan.node_variance  # what the coordinator sees when exactly t nodes survive
        needed = _reference_minimum_variance(target, delta, rounds, d2, d1)
        epsilon = reference_skellam_epsilon([SkellamRelease(worst_case, d2, d1)] * rounds, delta)
        label = f"eps={target:g} x{rounds} C={clip_norm:g} d={dimension} n={n} t={t}"
        parts.append(f"{label}: t x node var / needed = {worst_case / needed:.4f}, eps at t survivors {epsilon:.4f}")
        if epsilon > target * (1 + 1e-9) or worst_case < needed * (1 - 1e-6):
            failures.append(f"{label}: t survivors carry variance {worst_case:.6g} < needed {needed:.6g} (eps {epsilon:.4f} > {target:g})")
        if worst_case < 1e6:  # well resolved in integers: measure it
            values = aggregate_noise_samples(plan, t, samples, seed)
            z = _variance_z(values, needed)
            parts.append(f"{label}: measured variance {np.var(values):.1f} vs needed {needed:.1f} (z={z:+.2f})")
            if z < -4:
                failures.append(f"{label}: measured variance with t survivors {np.var(values):.1f} < needed {needed:.1f} (z={z:.1f})")
    return _result(NOISE_CALIBRATION, promise, failures, "; ".join(parts))


# --- (c) the accountant against independent reference values ------------------------------------


# (noise multiplier, steps, delta, sampling rate, method, epsilon computed with dp-accounting 0.6.0)
GAUSSIAN_GOLDEN: tuple[tuple[float, int, float, float, str, float], ...] = (
    (1.0, 100, 1e-5, 1.0, "pld", 91.8173),
    (1.0, 100, 1e-5, 1.0, "rdp", 96.1163),
    (1.1, 10_000, 1e-5, 0.01, "pld", 5.1926),
    (1.1, 10_000, 1e-5, 0.01, "rdp", 5.6320),
    (0.5, 10, 1e-5, 1.0, "pld", 46.2112),
)


def check_gaussian_accountant(golden: Iterable[tuple[float, int, float, float, str, float]] = GAUSSIAN_GOLDEN) -> CheckResult:
    promise = "gaussian_epsilon (PLD and RDP, with and without Poisson sampling) equals dp-accounting 0.6.0 golden values"
    failures: list[str] = []
    parts: list[str] = []
    for sigma, steps, delta, q, method, expected in golden:
        got = accountant.gaussian_epsilon(sigma, steps, delta, sampling_rate=q, method=method)
        parts.append(f"sigma={sigma} x{steps} q={q} {method}: {got:.4f} (golden {expected})")
        if not math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-4):
            failures.append(f"sigma={sigma} x{steps} q={q} {method}: {got:.6f} != golden {expected}")
    return _result(ACCOUNTANT_GAUSSIAN, promise, failures, "; ".join(parts))


def reference_skellam_rdp(order: int, variance: float, d2: float, d1: float) -> float:
    """Agarwal, Kairouz, Liu 2021 (Thm 3.5 / Cor. 3.6) with the paper's Skellam(mu, mu), variance 2 mu."""
    mu = variance / 2.0
    gaussian_part = order * d2 * d2 / (4.0 * mu)
    return gaussian_part + min(((2 * order - 1) * d2 * d2 + 6 * d1) / (16.0 * mu * mu), 3 * d1 / (4.0 * mu))


def reference_skellam_rdp_real_domain(order: int, variance: float, d2: float, d1: float, scale: float) -> float:
    """The same bound in the real domain, as Google's distributed_dp ``_skellam_rdp`` writes it.

    Real-domain sensitivities are the integer ones over the scale s, the
    real-domain variance is the integer one over s^2.
    """
    l2, l1, central_variance = d2 / scale, d1 / scale, variance / (scale * scale)
    rdp = order / (2 * central_variance) * l2**2
    return rdp + min(
        ((2 * order - 1) * scale * l2**2 + 6 * l1) / (4 * scale**3 * central_variance**2),
        3 * l1 / (2 * scale * central_variance),
    )


def reference_rdp_to_epsilon(orders: Sequence[float], rdp: Sequence[float], delta: float) -> float:
    """eps = min over orders a of rdp(a) + log((a-1)/a) - (log(delta) + log(a)) / (a-1), floored at 0."""
    best = math.inf
    for a, r in zip(orders, rdp, strict=True):
        best = min(best, r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return max(0.0, best)


REFERENCE_ORDERS: tuple[int, ...] = tuple(range(2, 4097))


def reference_skellam_epsilon(releases: Sequence[SkellamRelease], delta: float, orders: Sequence[int] = REFERENCE_ORDERS) -> float:
    """epsilon(delta) of the composition: RDP adds up over releases (identical releases counted once)."""
    counts: dict[tuple[float, float, float], int] = {}
    for r in releases:
        key = (r.variance, r.l2_sensitivity, r.l1_sensitivity)
        counts[key] = counts.get(key, 0) + 1
    totals = [sum(k * reference_skellam_rdp(a, *key) for key, k in counts.items()) for a in orders]
    return reference_rdp_to_epsilon(orders, totals, delta)


def _reference_releases() -> list[tuple[str, SkellamRelease, float]]:
    """(label, release, scale): realistic scales, both branches of the min, small and large multipliers."""
    def at(multiplier: float, d2: float, d1: float) -> SkellamRelease:
        return SkellamRelease((multiplier * d2) ** 2, d2, d1)

    big, wide = 2.0**24 + 4.0, 2.0**20 + math.sqrt(1000)
    return [
        ("2^24 scale, d=16, z=2.15", at(2.15, big, 4 * big), 2.0**24),
        ("2^20 scale, d=1000, z=5", at(5.0, wide, math.sqrt(1000) * wide), 2.0**20),
        ("2^24 scale, d=16, tiny clip, z=2.15", at(2.15, 20.0, 80.0), 2.0**24),
        ("small variance (3 D1 / 2V branch)", SkellamRelease(4.0, 5.0, 9.0), 4.0),
        ("noise multiplier 10", at(10.0, 1e3, 1e3 * math.sqrt(1e3)), 1024.0),
        ("noise multiplier 0.6", at(0.6, 300.0, 300.0 * 8), 256.0),
    ]


def check_skellam_accountant(delta: float = 1e-5) -> CheckResult:
    promise = (
        "skellam_rdp and skellam_epsilon equal an independent implementation of the Agarwal-Kairouz-Liu 2021 "
        "RDP bound and of the RDP -> (eps, delta) conversion, and are never below the Gaussian RDP bound"
    )
    failures: list[str] = []
    parts: list[str] = []
    orders = list(accountant.RDP_ORDERS)
    for label, release, scale in _reference_releases():
        v, d2, d1 = release.variance, release.l2_sensitivity, release.l1_sensitivity
        product = accountant.skellam_rdp(release, orders)
        paper = [reference_skellam_rdp(a, v, d2, d1) for a in orders]
        google = [reference_skellam_rdp_real_domain(a, v, d2, d1, scale) for a in orders]
        worst = max(abs(p - r) / r for p, r in zip(product, paper))
        if worst > 1e-9 or max(abs(g - r) / r for g, r in zip(google, paper)) > 1e-9:
            failures.append(f"{label}: RDP curve differs from the reference by up to {worst:.3g} (relative)")
        for rounds in (1, 10):
            got = accountant.skellam_epsilon([release] * rounds, delta)
            same_orders = reference_rdp_to_epsilon(orders, [rounds * r for r in paper], delta)
            dense = reference_skellam_epsilon([release] * rounds, delta)
            gaussian = reference_rdp_to_epsilon(REFERENCE_ORDERS, [rounds * a * d2 * d2 / (2 * v) for a in REFERENCE_ORDERS], delta)
            parts.append(f"{label} x{rounds}: eps {got:.5f} (reference {same_orders:.5f}, dense orders {dense:.5f})")
            if not math.isclose(got, same_orders, rel_tol=1e-9, abs_tol=1e-12):
                failures.append(f"{label} x{rounds}: skellam_epsilon {got:.6f} != reference conversion {same_orders:.6f}")
            if not dense - 1e-9 <= got <= dense * 1.05 + 1e-9:
                failures.append(f"{label} x{rounds}: skellam_epsilon {got:.6f} outside [{dense:.6f}, +5%] (dense orders)")
            if got < gaussian - 1e-9:
                failures.append(f"{label} x{rounds}: skellam_epsilon {got:.6f} below the Gaussian RDP bound {gaussian:.6f}")
    return _result(ACCOUNTANT_SKELLAM, promise, failures, "; ".join(parts))


# --- (d) the budget: the ledger refuses the charge that would cross the limit ---------------------


def check_budget_refusal(directory: Path, max_epsilon: float = 1.0, delta: float = 1e-5) -> CheckResult:
    promise = (
        "a site's ledger charges releases until the next would cross its epsilon limit, then raises "
        "PrivacyBudgetExhausted, writes nothing, says so, and still refuses after a restart"
    )
    failures: list[str] = []
    path = Path(directory) / "ledger.sqlite"
    budget = Budget(max_epsilon=max_epsilon, max_epsilon_total=100 * max_epsilon, delta=delta)
    d2 = 2.0**20 + 4.0
    variance = accountant.calibrate_skellam_variance(0.4 * max_epsilon, 1, delta, d2, 4 * d2)
    release = SkellamRelease(variance, d2, 4 * d2)
    ledger = PrivacyLedger(path, budget)
    charged = 0
    try:
        while charged < 100 and ledger.preview("task", release)[0] <= max_epsilon:
            charged += 1
            ledger.charge("task", charged, charged, release, {"mechanism": "skellam"}, "model")
        spent = ledger.spent("task")
        rows = len(ledger.entries())
        try:
            ledger.charge("task", charged + 1, charged + 1, release, {"mechanism": "skellam"}, "model")
            failures.append(f"charge {charged + 1} (eps would be {ledger.preview('task', release)[0]:.3f}) was accepted")
            message = ""
        except PrivacyBudgetExhausted as exc:
            message = str(exc)
        if message and not ("above the site's limit" in message and f"{max_epsilon:g}" in message):
            failures.append(f"refusal message does not say the limit would be crossed: {message!r}")
        if len(ledger.entries()) != rows or ledger.spent("task") != spent:
            failures.append("the refused charge changed the ledger")
        if charged < 2 or spent > max_epsilon:
            failures.append(f"charged {charged} releases for eps {spent:.3f} (limit {max_epsilon:g})")
    finally:
        ledger.close()
    reopened = PrivacyLedger(path, budget)
    try:
        if len(reopened.entries()) != charged or not math.isclose(reopened.spent("task"), spent):
            failures.append("after a restart the ledger does not show the same charges")
        try:
            reopened.charge("task", charged + 2, charged + 2, release, {"mechanism": "skellam"}, "model")
            failures.append("after a restart the ledger accepted a charge beyond the limit")
        except PrivacyBudgetExhausted:
            pass
    finally:
        reopened.close()
    summary = f"{charged} releases of eps {accountant.skellam_epsilon([release], delta):.3f} charged (task eps {spent:.3f}); refusal: {message!r}"
    return _result(BUDGET_REFUSAL, promise, failures, summary)


class _RecordingSocket:
    def __init__(self) -> None:
        self.inbox: list[Any] = []
        self.sent: list[Any] = []

    def poll(self, timeout_ms: int) -> list[Any]:
        messages, self.inbox = self.inbox, []
        return messages

    def send(self, envelope: Any) -> bool:
        self.sent.append(envelope)
        return True


def check_node_budget_refusal(directory: Path, max_epsilon: float = 1.0, delta: float = 1e-5) -> CheckResult:
    """Drive a real :class:`Node` whose ledger is (nearly) spent with a DP ``RoundStart``.

    (1) spent: the node must refuse with reason ``budget-exhausted`` before it
    trains (``fit_local`` is made to explode) and send no protocol message;
    (2) the budget runs out between the round's start and the masked input
    (another round of the task charged meanwhile): the node must withhold the
    masked input. (2) calls the node's ``_charge_and_send`` directly, which is
    what its client protocol's ``MaskedInput`` goes through.
    """
    promise = (
        "a node whose ledger cannot pay for a DP round refuses it (reason budget-exhausted) before training, "
        "and withholds its masked input if the budget ran out after the round started"
    )
    failures: list[str] = []
    directory = Path(directory)
    policy = NodePolicy(max_epsilon=max_epsilon, delta=delta)
    rng = np.random.default_rng(3)
    dataset = LocalDataset(rng.standard_normal((40, 3)), rng.integers(0, 2, 40).astype(np.int64), None)
    adapter = make_adapter("sgd_logistic", 3, (0, 1))
    # t = 3 of 3: the smallest threshold the default node policy accepts for a roster of 3 (2t > N + c, c = 1)
    plan = mechanism.plan_skellam(0.45 * max_epsilon, delta, 1, 1.0, adapter.parameter_count, 3, 3)
    identities = {name: SigningKey.generate() for name in ("site-a", "site-b", "site-c")}
    roster = {name: key.public_bytes for name, key in identities.items()}
    cohort = ((1, "site-a"), (2, "site-b"), (3, "site-c"))

    def round_start(number: int) -> RoundStart:
        spec = RoundSpec(
            "task", number, "train", "sgd_logistic", {}, 3, (0, 1), 1, 0.1, 8, 1.0, 16, 1000, 3, None, True,
            plan.to_spec(delta, 0.45 * max_epsilon, 1),
        )
        return RoundStart(1, cohort, spec.to_json(), np.zeros(adapter.parameter_count))

    def replies(socket: _RecordingSocket, aggregation: int) -> list[Any]:
        return [e.body for e in socket.sent if e.aggregation == aggregation]

    ledger = PrivacyLedger(directory / "node-ledger.sqlite", policy.budget())
    other = PrivacyLedger(directory / "node-ledger.sqlite", policy.budget())  # "another round of the task"
    state = NodeState(directory / "node-state.sqlite")
    socket = _RecordingSocket()
    node = Node("site-a", "task", socket, identities["site-a"], roster, dataset, state, policy, ledger=ledger)
    try:
        # (2) room for exactly one more release: the round starts; meanwhile another charge spends it
        charged = 0
        while accountant.skellam_epsilon([plan.release] * (charged + 2), delta) <= max_epsilon:
            charged += 1
            ledger.charge("task", 100 + charged, 100 + charged, plan.release, {"mechanism": "skellam"}, "earlier")
        socket.inbox.append(Envelope("task", 1000, round_start(1)))
        node.step(0)
        started = replies(socket, 1000)
        if any(isinstance(body, Refusal) for body in started) or node.current is None:
            failures.append(f"with budget left the node did not start the round: {started!r}")
        else:
            other.charge("task", 999, 999, plan.release, {"mechanism": "skellam"}, "concurrent")
            before = len(socket.sent)
            node._charge_and_send(MaskedInput(1, np.zeros(adapter.parameter_count, dtype=np.uint32)))
            sent = [e.body for e in socket.sent[before:]]
            if any(isinstance(body, MaskedInput) for body in sent):
                failures.append("the node sent its masked input although the budget had run out")
            if not any(isinstance(body, Refusal) and body.reason == "budget-exhausted" for body in sent):
                failures.append(f"the node did not tell the coordinator its budget ran out: {sent!r}")
        # (1) the budget is now spent: a new round must be refused before any training
        spent_rows = len(ledger.entries())
        with mock.patch.object(type(adapter), "fit_local", side_effect=RuntimeError("the node trained")):
            socket.inbox.append(Envelope("task", 1001, round_start(2)))
            try:
                node.step(0)
            except RuntimeError as exc:
                failures.append(f"the node trained on a round its budget cannot pay for ({exc})")
        answer = replies(socket, 1001)
        refusals = [body for body in answer if isinstance(body, Refusal)]
        if not refusals or refusals[0].reason != "budget-exhausted" or len(answer) != 1:
            failures.append(f"a round beyond the budget was answered with {answer!r}")
        elif "limit" not in refusals[0].detail:
            failures.append(f"the refusal does not say the limit would be crossed: {refusals[0].detail!r}")
        if len(ledger.entries()) != spent_rows:
            failures.append("the refused round was charged to the ledger")
        spent = ledger.spent("task")
        if spent > max_epsilon:
            failures.append(f"the ledger shows eps {spent:.3f} above the limit {max_epsilon:g}")
    finally:
        ledger.close()
        other.close()
        state.close()
    detail = f"round eps {accountant.skellam_epsilon([plan.release], delta):.3f}, limit {max_epsilon:g}; " + (
        f"refusal: {refusals[0].detail!r}" if refusals else "no refusal"
    )
    return _result(NODE_BUDGET_REFUSAL, promise, failures, detail)


# --- the empirical audit: a two-run distinguishing test on the aggregate ---------------------------


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds, each holding with probability >= 1 - alpha."""
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha, successes + 1, trials - successes))
    return low, high


def _epsilon_bound(positives: int, in_trials: int, false_positives: int, out_trials: int, delta: float, alpha: float) -> tuple[float, float, float]:
    """(eps lower bound, TPR lower bound, FPR upper bound) from (eps, delta)-DP's TPR <= e^eps FPR + delta."""
    tpr_low, _ = clopper_pearson(positives, in_trials, alpha)
    _, fpr_high = clopper_pearson(false_positives, out_trials, alpha)
    if tpr_low - delta <= 0 or fpr_high <= 0:
        return 0.0, tpr_low, fpr_high
    return max(0.0, math.log((tpr_low - delta) / fpr_high)), tpr_low, fpr_high


@dataclass(frozen=True)
class EmpiricalAudit:
    """The outcome of one two-run audit. TPR/FPR are of the test "canary in when score > threshold"."""

    label: str
    epsilon_lower: float
    epsilon_claimed: float
    threshold: float
    form: str
    tpr: float
    fpr: float
    numerator_low: float
    denominator_high: float
    trials: int

    @property
    def detail(self) -> str:
        return (
            f"{self.trials} test trials per world, threshold {self.threshold:.4g}, bound {self.form}: "
            f"TPR {self.tpr:.4f}, FPR {self.fpr:.4f}, numerator >= {self.numerator_low:.4f}, "
            f"denominator <= {self.denominator_high:.4g}; eps >= {self.epsilon_lower:.3f} (95% confidence), "
            f"claimed {self.epsilon_claimed:.3f}"
        )


def _scores(
    params: SkellamParameters,
    honest: Sequence[np.ndarray],
    canary: np.ndarray | None,
    direction: np.ndarray,
    trials: int,
    sources: Sequence[NoiseSource],
    aggregate: Callable[[list[np.ndarray]], np.ndarray],
    score: str,
) -> np.ndarray:
    known = np.sum(honest, axis=0) if honest else np.zeros(params.dimension)
    scores = np.empty(trials)
    for trial in range(trials):
        inputs = [params.encode(update, sources[i]) for i, update in enumerate(honest)]
        if canary is not None:
            inputs.append(params.encode(canary, sources[len(honest)]))
        total = aggregate(inputs)
        decoded_sum = params.decode_mean(total, len(inputs)) * len(inputs)
        if score == "projection":
            scores[trial] = float(decoded_sum @ direction)
        else:  # "energy": how much noise (and signal) is left once the known updates are taken out
            residual = decoded_sum - known
            scores[trial] = float(residual @ residual)
    return scores


def modular_sum(inputs: list[np.ndarray]) -> np.ndarray:
    """What secure aggregation hands the coordinator: the sum of the inputs mod 2^32."""
    total = np.zeros_like(inputs[0])
    for vector in inputs:
        total += vector
    return total


def run_empirical_audit(
    params: SkellamParameters,
    *,
    delta: float,
    label: str,
    survivors: int,
    adjacency: str = "zero-out",
    calibration_trials: int = 2000,
    test_trials: int = 5000,
    seed: int = 1,
    confidence: float = 0.95,
    aggregate: Callable[[list[np.ndarray]], np.ndarray] = modular_sum,
    score: str = "projection",
) -> EmpiricalAudit:
    """Distinguish D from D' (one node's update zeroed or the node absent) by the aggregate's projection.

    ``zero-out``: the canary node takes part in both worlds, with a zero update
    in D and ``clip_norm * u`` in D' (the adjacency securefed accounts for: one
    node's contribution is what changes). ``add-remove``: D has
    ``survivors - 1`` honest nodes and D' adds the canary node (its noise too).
    The honest nodes' updates are fixed and known to the attacker, as DP assumes.
    """
    if adjacency not in ("zero-out", "add-remove") or score not in ("projection", "energy"):
        raise ValueError("adjacency is 'zero-out' or 'add-remove'; score is 'projection' or 'energy'")
    rng = np.random.default_rng(seed)
    d, clip_norm = params.dimension, params.clip_norm
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    canary = clip_norm * direction
    honest = []
    for _ in range(survivors - 1):
        vector = rng.standard_normal(d)
        honest.append(vector / np.linalg.norm(vector) * clip_norm * rng.uniform(0.1, 1.0))
    sources = [NoiseSource(seed.to_bytes(8, "little") + i.to_bytes(8, "little")) for i in range(survivors)]
    absent = np.zeros(d) if adjacency == "zero-out" else None

    def world(trials: int, with_canary: bool) -> np.ndarray:
        return _scores(params, honest, canary if with_canary else absent, direction, trials, sources, aggregate, score)

    alpha = (1 - confidence) / 2  # two one-sided bounds, Bonferroni: both hold with >= confidence

    def bounds(above_in: int, above_out: int, trials: int) -> dict[str, tuple[float, float, float]]:
        # TPR <= e^eps FPR + delta, and the symmetric (1 - FPR) <= e^eps (1 - TPR) + delta
        return {
            "log((TPR-delta)/FPR)": _epsilon_bound(above_in, trials, above_out, trials, delta, alpha),
            "log((1-FPR-delta)/(1-TPR))": _epsilon_bound(trials - above_out, trials, trials - above_in, trials, delta, alpha),
        }

    # calibration: the threshold and the form of the bound are chosen on separate trials
    cal_out, cal_in = world(calibration_trials, False), world(calibration_trials, True)
    pooled = np.concatenate([cal_out, cal_in])
    best = (-1.0, float(np.median(pooled)), "log((TPR-delta)/FPR)")
    for tau in np.unique(np.quantile(pooled, np.linspace(0.0005, 0.9995, 1999))):
        found = bounds(int(np.sum(cal_in > tau)), int(np.sum(cal_out > tau)), calibration_trials)
        for form, (value, _, _) in found.items():
            if value > best[0]:
                best = (value, float(tau), form)
    _, tau, form = best
    # the test: fresh trials, one threshold, one form of the bound
    out_scores, in_scores = world(test_trials, False), world(test_trials, True)
    above_in, above_out = int(np.sum(in_scores > tau)), int(np.sum(out_scores > tau))
    bound, numerator_low, denominator_high = bounds(above_in, above_out, test_trials)[form]
    return EmpiricalAudit(
        label,
        bound,
        params.epsilon(1, delta),
        tau,
        form,
        above_in / test_trials,
        above_out / test_trials,
        numerator_low,
        denominator_high,
        test_trials,
    )
