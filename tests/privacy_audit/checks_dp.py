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
* the Skellam RDP curve, the RDP -> (epsilon, delta) conversions and the
  exact Gaussian floor are the audit's own accountant,
  :mod:`tests.privacy_audit.reference_accountant` (Agarwal, Kairouz and Liu
  2021; Canonne, Kamath and Steinke 2020, Prop. 12 — the conversion
  dp-accounting 0.6.0 uses, which also returns 0 when the KL bound already
  gives delta, irrelevant at the values here; Mironov 2017, Prop. 3; Balle
  and Wang 2018), plus the real-domain form of Google's reference code
  ``federated/distributed_dp/accounting_utils.py``;
* the release a round makes is recomputed from the *raw* parameters real runs
  leave behind (the specs the nodes received, the rows of their ledgers, the
  coordinator's records) and the colluder bound of the documented policy —
  never from ``SkellamParameters.release`` or the product's ``colluders`` —
  so an accounting bug cannot lower the bar the audit judges by;
* the noise at production scale (node variance ~ 3e9-6e9) is compared with the
  variance that was *accounted*, (t - c) V_node from raw parameters, and a
  Gaussian-DP fit of the attacker's whole ROC is judged by the task's target;
* the Gaussian accountant is compared with golden values computed with
  dp-accounting 0.6.0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from scipy import stats

from securefed.audit.log import AuditLog, verify_log
from securefed.crypto.identity import SigningKey
from securefed.dp import accountant, mechanism
from securefed.dp.accountant import SkellamRelease
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.dp.mechanism import SkellamParameters
from securefed.dp.noise import NoiseSource
from securefed.errors import PrivacyBudgetExhausted
from securefed.federation.coordinator import Coordinator
from securefed.federation.messages import Envelope, Refusal, RoundStart
from securefed.federation.node import Node, NodePolicy, NodeState
from securefed.federation.spec import RoundSpec
from securefed.federation.store import CoordinatorStore
from securefed.federation.task import STAGE_NAMES, NodeEntry, TaskDefinition
from securefed.learning.data import LocalDataset
from securefed.learning.models import make_adapter
from securefed.secagg.messages import MaskedInput
from tests.privacy_audit import reference_accountant as reference

__all__ = [
    "ACCOUNTANT_GAUSSIAN",
    "ACCOUNTANT_SKELLAM",
    "AGGREGATE_NOISE",
    "BUDGET_REFUSAL",
    "CLIPPING",
    "CLIPPING_CONFIGS",
    "EMPIRICAL_AUDIT",
    "GAUSSIAN_GOLDEN",
    "GDP_AUDIT",
    "NODE_BUDGET_REFUSAL",
    "NOISE_CALIBRATION",
    "PRODUCTION_NOISE",
    "PRODUCTION_POINTS",
    "REFERENCE_ACCOUNTANT",
    "REFERENCE_SCENARIOS",
    "ROUNDING_MODES",
    "CheckResult",
    "DpFederation",
    "EmpiricalAudit",
    "GdpAudit",
    "ReferenceRuns",
    "RoundingOnly",
    "adversarial_updates",
    "aggregate_noise_samples",
    "auc_with_standard_error",
    "check_aggregate_noise",
    "check_budget_refusal",
    "check_clipping",
    "check_gaussian_accountant",
    "check_node_budget_refusal",
    "check_noise_calibration",
    "check_production_noise",
    "check_reference_accountant",
    "check_skellam_accountant",
    "clopper_pearson",
    "contribution",
    "contribution_within_bounds",
    "honest_survivors",
    "modular_sum",
    "production_plan",
    "reference_rdp_to_epsilon",
    "reference_skellam_epsilon",
    "reference_skellam_rdp",
    "reference_skellam_rdp_real_domain",
    "run_empirical_audit",
    "run_gdp_audit",
    "run_reference_scenarios",
    "skellam_goodness_of_fit",
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
REFERENCE_ACCOUNTANT = "dp.reference-accountant"
PRODUCTION_NOISE = "dp.production-scale-noise"
GDP_AUDIT = "empirical audit (GDP fit, production scale)"


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


def contribution_within_bounds(params: SkellamParameters, update: np.ndarray, source: NoiseSource) -> tuple[bool, float, str]:
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
                except (ValueError, ArithmeticError) as exc:
                    # a refusal (EncodingError, InvalidParameter are ValueErrors) or an overflow (Fraction, float
                    # conversion) on a finite update is a failure of the promise; anything else is a bug in this check
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
    spread = math.ceil(12 * math.sqrt(variance)) + 5
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
        "the noise in an aggregate of s surviving honest nodes is Skellam with variance s x node variance, "
        "which is >= the calibrated total variance whenever s >= t - c (the honest survivors it is sized for)"
    )
    failures: list[str] = []
    parts: list[str] = []
    t, n = params.assumed_survivors, params.cohort_size
    for survivors in range(t, n + 1):
        values = aggregate_noise_samples(params, survivors, samples, seed + survivors)
        variance = survivors * params.node_variance
        statistic, dof, p = skellam_goodness_of_fit(values, variance)
        z = _variance_z(values, params.total_variance)
        parts.append(
            f"s={survivors}: Skellam(var {variance:g}) chi2={statistic:.1f}/{dof} dof p={p:.3g}, sample var {np.var(values):.1f}"
        )
        if p < alpha:
            failures.append(f"s={survivors}: {values.size} sums do not fit Skellam(var {variance:g}) (chi2 p={p:.2g})")
        if variance < params.total_variance:
            failures.append(f"s={survivors}: variance {variance:g} < calibrated {params.total_variance:g}")
        if z < -4:
            failures.append(
                f"s={survivors}: sample variance {np.var(values):.1f} is below calibrated {params.total_variance:g} (z={z:.1f})"
            )
    return _result(AGGREGATE_NOISE, promise, failures, f"{samples} coordinates per s; " + "; ".join(parts))


# --- (b') calibration: with only t survivors the noise is enough for the target ------------------


# (target epsilon, delta, rounds, clip norm, dimension, cohort n); t and c follow from n by the documented
# policy (c = max(1, ceil(n/5)), t the least with 2t > n + c): 5 -> t 4, c 1; 20 -> 13, 4; 100 -> 61, 20
CALIBRATION_CONFIGS: tuple[tuple[float, float, int, float, int, int], ...] = (
    (2.0, 1e-5, 1, 1.0, 16, 5),
    (2.0, 1e-5, 1, 2.0**-20, 16, 5),  # moderate integer variance: the empirical part resolves it
    (1.0, 1e-6, 10, 0.5, 1000, 20),
    (8.0, 1e-5, 20, 1.0, 50_000, 100),
)


def _reference_minimum_variance(target: float, delta: float, rounds: int, d2: float, d1: float) -> float:
    """The smallest total variance the independent accountant allows (bisection, relative 1e-7)."""
    low, high = 1e-6 * d2 * d2, 1e8 * d2 * d2
    while high / low > 1 + 1e-7:
        middle = math.sqrt(low * high)
        if reference.epsilon([reference.Release(middle, d2, d1)] * rounds, delta) <= target:
            high = middle
        else:
            low = middle
    return high


def check_noise_calibration(
    configs: Iterable[tuple[float, float, int, float, int, int]] = CALIBRATION_CONFIGS,
    samples: int = 100_000,
    seed: int = 11,
) -> CheckResult:
    promise = (
        "the coordinator's plan (plan_skellam, given t - c) sizes each node's noise so that an aggregate with only t "
        "survivors, c of them colluders adding nothing, carries at least the variance the target epsilon needs "
        "(by the audit's own accountant)"
    )
    failures: list[str] = []
    parts: list[str] = []
    for target, delta, rounds, clip_norm, dimension, n in configs:
        t, c, honest = honest_survivors(n)
        plan = mechanism.plan_skellam(target, delta, rounds, clip_norm, dimension, n, honest)
        d2 = clip_norm * float(1 << plan.scale_bits) + math.sqrt(dimension)
        d1 = min(math.sqrt(dimension) * d2, d2 * d2)
        worst_case = honest * plan.node_variance  # the coordinator's view: t survivors, c of them add nothing
        needed = _reference_minimum_variance(target, delta, rounds, d2, d1)
        epsilon = reference.epsilon([reference.Release(worst_case, d2, d1)] * rounds, delta)
        label = f"eps={target:g} x{rounds} C={clip_norm:g} d={dimension} n={n} t={t} c={c}"
        parts.append(f"{label}: (t-c) x node var / needed = {worst_case / needed:.4f}, eps {epsilon:.4f}")
        if epsilon > target * (1 + 1e-9) or worst_case < needed * (1 - 1e-6):
            failures.append(
                f"{label}: t - c honest survivors carry variance {worst_case:.6g} < needed {needed:.6g} (eps {epsilon:.4f} > {target:g})"
            )
        if worst_case < 1e6:  # well resolved in integers: measure it
            values = aggregate_noise_samples(plan, honest, samples, seed)
            z = _variance_z(values, needed)
            parts.append(f"{label}: measured variance {np.var(values):.1f} vs needed {needed:.1f} (z={z:+.2f})")
            if z < -4:
                failures.append(
                    f"{label}: measured variance with t - c honest survivors {np.var(values):.1f} < needed {needed:.1f} (z={z:.1f})"
                )
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
    return reference.skellam_rdp_poisson_rate(order, reference.Release(variance, d2, d1))


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
    return reference.rdp_to_epsilon_improved(orders, rdp, delta)


REFERENCE_ORDERS: tuple[int, ...] = reference.ORDERS


def reference_skellam_epsilon(
    releases: Sequence[SkellamRelease], delta: float, orders: Sequence[int] = REFERENCE_ORDERS
) -> float:
    """epsilon(delta) of the composition: RDP adds up over releases."""
    return reference.epsilon([reference.Release(r.variance, r.l2_sensitivity, r.l1_sensitivity) for r in releases], delta, orders)


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
        "RDP bound and of the RDP -> (eps, delta) conversion, are never below the Gaussian RDP bound nor the exact "
        "Gaussian epsilon of the same noise, and never above the classic conversion"
    )
    failures: list[str] = []
    parts: list[str] = []
    orders = list(accountant.RDP_ORDERS)
    for label, release, scale in _reference_releases():
        v, d2, d1 = release.variance, release.l2_sensitivity, release.l1_sensitivity
        product = accountant.skellam_rdp(release, orders)
        paper = [reference_skellam_rdp(a, v, d2, d1) for a in orders]
        google = [reference_skellam_rdp_real_domain(a, v, d2, d1, scale) for a in orders]
        mine = reference.Release(v, d2, d1)
        by_variance = [reference.skellam_rdp(a, mine) for a in orders]
        vectorised = reference.rdp_curve(mine, tuple(orders)).tolist()
        worst = max(abs(p - r) / r for p, r in zip(product, paper))
        forms = max(abs(g - r) / r for other in (google, by_variance, vectorised) for g, r in zip(other, paper))
        if worst > 1e-9 or forms > 1e-9:
            failures.append(f"{label}: RDP curve differs from the reference by up to {worst:.3g} (relative; forms {forms:.3g})")
        for rounds in (1, 10):
            got = accountant.skellam_epsilon([release] * rounds, delta)
            same_orders = reference_rdp_to_epsilon(orders, [rounds * r for r in paper], delta)
            dense = reference_skellam_epsilon([release] * rounds, delta)
            gaussian = reference_rdp_to_epsilon(
                REFERENCE_ORDERS, [rounds * a * d2 * d2 / (2 * v) for a in REFERENCE_ORDERS], delta
            )
            parts.append(f"{label} x{rounds}: eps {got:.5f} (reference {same_orders:.5f}, dense orders {dense:.5f})")
            if not math.isclose(got, same_orders, rel_tol=1e-9, abs_tol=1e-12):
                failures.append(f"{label} x{rounds}: skellam_epsilon {got:.6f} != reference conversion {same_orders:.6f}")
            if not dense - 1e-9 <= got <= dense * 1.05 + 1e-9:
                failures.append(f"{label} x{rounds}: skellam_epsilon {got:.6f} outside [{dense:.6f}, +5%] (dense orders)")
            if got < gaussian - 1e-9:
                failures.append(f"{label} x{rounds}: skellam_epsilon {got:.6f} below the Gaussian RDP bound {gaussian:.6f}")
            floor, classic = reference.gaussian_floor([mine] * rounds, delta), reference.epsilon_classic([mine] * rounds, delta)
            if not floor * (1 - 1e-9) <= got <= classic * (1 + 1e-9):
                failures.append(
                    f"{label} x{rounds}: skellam_epsilon {got:.6f} outside [exact Gaussian {floor:.6f}, classic {classic:.6f}]"
                )
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
    # t = 3 of 3: the smallest threshold the default node policy accepts for a roster of 3 (2t > N + c, c = 1);
    # the noise is sized for the t - c = 2 honest survivors that are certain
    t, _, honest = honest_survivors(3)
    plan = mechanism.plan_skellam(0.45 * max_epsilon, delta, 1, 1.0, adapter.parameter_count, 3, honest)
    identities = {name: SigningKey.generate() for name in ("site-a", "site-b", "site-c")}
    roster = {name: key.public_bytes for name, key in identities.items()}
    cohort = ((1, "site-a"), (2, "site-b"), (3, "site-c"))

    def round_start(number: int) -> RoundStart:
        spec = RoundSpec(
            "task",
            number,
            "train",
            "sgd_logistic",
            {},
            3,
            (0, 1),
            1,
            0.1,
            8,
            1.0,
            16,
            1000,
            t,
            None,
            True,
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


def _epsilon_bound(
    positives: int, in_trials: int, false_positives: int, out_trials: int, delta: float, alpha: float
) -> tuple[float, float, float]:
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
    honest_count: int | None = None,
) -> EmpiricalAudit:
    """Distinguish D from D' (one node's update zeroed or the node absent) by the aggregate's projection.

    The claim it is judged by is the audit's own accountant's epsilon for one release of these raw
    parameters with ``honest_count`` = t - c honest survivors (by default from the documented policy for
    the cohort), never the product's.

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
    count = honest_count if honest_count is not None else honest_survivors(params.cohort_size)[2]
    claimed = reference.release_from_raw(params.node_variance, count, params.clip_norm, params.scale_bits, params.dimension)
    return EmpiricalAudit(
        label,
        bound,
        reference.epsilon([claimed], delta),
        tau,
        form,
        above_in / test_trials,
        above_out / test_trials,
        numerator_low,
        denominator_high,
        test_trials,
    )


# --- (e) the reference accountant over real runs: every charged release recomputed from raw parameters


#: Site-5's masked input of this round is lost on the way (it charged; the round completes with t survivors).
_LOST_INPUT_ROUND = 3


def _synthetic_dataset(seed: int, features: int, classes: Sequence[int], rows: int = 40) -> LocalDataset:
    rng = np.random.default_rng(seed)  # test data only
    return LocalDataset(rng.normal(size=(rows, features)), rng.choice(np.asarray(classes), rows).astype(np.int64), None)


class DpFederation:
    """The real Coordinator and real Nodes, each with its own privacy ledger, over the in-memory hub.

    The nodes' ledgers may be shared with another federation (another task at the same sites).
    Everything the coordinator sent each node is kept by the hub (``delivered``), so the round
    specs — the raw parameters every node really received — can be read back after the run.
    """

    def __init__(
        self,
        directory: Path,
        names: Sequence[str],
        *,
        task: str,
        rounds: int,
        target: float,
        delta: float,
        clip_norm: float,
        features: int,
        classes: Sequence[int],
        policy: NodePolicy,
        threshold: int | None = None,
        max_colluders: int | float | None = None,
        ledgers: dict[str, PrivacyLedger] | None = None,
        keys: dict[str, SigningKey] | None = None,
    ) -> None:
        from tests.inprocess import Clock, Hub

        self.directory = Path(directory)
        self.names = list(names)
        self.policy = policy
        self.keys = keys or {name: SigningKey.generate() for name in self.names}
        self.roster = {name: key.public_bytes for name, key in self.keys.items()}
        adversary = {} if max_colluders is None else {"max_colluders": max_colluders}
        self.task = TaskDefinition(
            name=task, model_kind="sgd_logistic", n_features=features, classes=tuple(classes), rounds=rounds,
            batch_size=16, min_nodes=len(self.names), threshold=threshold, evaluate=False,
            deadlines=dict.fromkeys(STAGE_NAMES, 5.0), dp={"epsilon": target, "delta": delta, "clip_norm": clip_norm},
            **adversary,
        )  # fmt: skip
        self.clock, self.hub = Clock(), Hub()
        self.store_path = self.directory / f"{task}-coordinator.sqlite"
        self.store = CoordinatorStore(self.store_path)
        self.entries = [NodeEntry(name, b"k" * 32, self.roster[name]) for name in self.names]
        self.coordinator = self._coordinator()
        self.owned_ledgers = ledgers is None
        self.ledgers = (
            ledgers
            if ledgers is not None
            else {name: PrivacyLedger(self.directory / name / "ledger.sqlite", policy.budget()) for name in self.names}
        )
        self.states = {name: NodeState(self.directory / name / f"{task}-node.sqlite") for name in self.names}
        self.log_paths = {name: self.directory / name / f"{task}-audit.log" for name in self.names}
        self.nodes = {
            name: Node(
                name,
                task,
                self.hub.node_socket(name),
                self.keys[name],
                self.roster,
                _synthetic_dataset(i, features, classes),
                self.states[name],
                policy,
                clock=self.clock,
                ledger=self.ledgers[name],
                audit_log=AuditLog(self.log_paths[name], self.keys[name], on_append=self.states[name].set_audit_head),
            )
            for i, name in enumerate(self.names)
        }

    def _coordinator(self) -> Coordinator:
        return Coordinator(self.task, self.entries, self.hub.coordinator_socket(), self.store, clock=self.clock)

    def run(self, max_steps: int = 600) -> bool:
        """Step everyone until the task is finished; False if it did not finish (the nodes refused, say)."""
        for _ in range(max_steps):
            if self.coordinator.finished:
                return True
            self.coordinator.step(0)
            for node in self.nodes.values():
                node.step(0)
            self.clock.now += 0.25
        return self.coordinator.finished

    def restart_with_rounds(self, rounds: int) -> None:
        """What an operator does after a finished task: raise ``rounds`` in the config and restart the coordinator."""
        self.store.close()
        self.task = dataclasses.replace(self.task, rounds=rounds)
        self.store = CoordinatorStore(self.store_path)
        self.coordinator = self._coordinator()

    def receipts(self) -> dict[str, tuple[list[dict], list[str]]]:
        """Each site's receipts from its signed audit log, verified against its key and recorded head."""
        found = {}
        for name in self.names:
            report = verify_log(self.log_paths[name], self.keys[name].public_bytes, self.states[name].audit_head())
            found[name] = ([entry.receipt for entry in report.entries], list(report.problems))
        return found

    def refusals(self) -> list[str]:
        return [
            f"{name}: {e.body.reason} ({e.body.detail})"
            for name in self.names
            for e in self.hub.from_node[name]
            if isinstance(e.body, Refusal)
        ]

    def close(self) -> None:
        self.store.close()
        for state in self.states.values():
            state.close()
        if self.owned_ledgers:
            for ledger in self.ledgers.values():
                ledger.close()


@dataclass(frozen=True)
class LedgerRow:
    """One row of a node's ledger file, read with plain SQL: what was charged, and the epsilons recorded."""

    task: str
    round: int
    aggregation: int
    mechanism: dict
    charged: reference.Release
    epsilon_task: float
    epsilon_total: float
    delta: float


@dataclass(frozen=True)
class SiteRecord:
    """What one site holds after the runs: its policy and roster size, its ledger rows, what the ledger reports,
    and the receipts of its signed audit log(s) (with any verification problems)."""

    name: str
    policy: NodePolicy
    roster_size: int
    rows: tuple[LedgerRow, ...]
    spent: dict[str, float]
    spent_total: float
    receipts: tuple[dict, ...] = ()
    log_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskRecord:
    """One task's run: its configuration, the specs every node received, and what the coordinator recorded."""

    label: str
    task: TaskDefinition
    roster_size: int
    finished: bool
    problems: tuple[str, ...]
    #: per node: aggregation -> (the round spec it received, cohort size, model length)
    specs: dict[str, dict[int, tuple[dict, int, int]]]
    #: (round, aggregation, epsilon) of every completed round, as ``securefed status`` shows it
    rounds: tuple[tuple[int, int, float | None], ...]
    #: (round, aggregation, variance, L2, L1) from the store's dp_releases table
    releases: tuple[tuple[int, int, float, float, float], ...]


def _read_rows(path: Path, query: str) -> list[tuple]:
    """Rows of a store or ledger file, read-only with plain SQL; none if the table does not exist."""
    connection = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        return connection.execute(query).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        connection.close()


def _task_record(label: str, federation: DpFederation, finished: bool, problems: Sequence[str] = ()) -> TaskRecord:
    specs: dict[str, dict[int, tuple[dict, int, int]]] = {}
    for name in federation.names:
        for envelope in federation.hub.delivered.get(name, []):
            if isinstance(envelope.body, RoundStart):
                body = envelope.body
                specs.setdefault(name, {})[envelope.aggregation] = (body.spec, len(body.cohort), int(np.asarray(body.model).size))
    rounds = _read_rows(federation.store_path, "SELECT round, aggregation, epsilon FROM rounds ORDER BY round")
    releases = _read_rows(
        federation.store_path,
        "SELECT round, aggregation, variance, l2_sensitivity, l1_sensitivity FROM dp_releases ORDER BY round",
    )
    if not finished:
        problems = [*problems, f"the task did not finish; refusals: {federation.refusals()[:3]}"]
    return TaskRecord(
        label, federation.task, len(federation.names), finished, tuple(problems), specs,
        tuple((int(r), int(a), e) for r, a, e in rounds), tuple((int(r[0]), int(r[1]), *map(float, r[2:])) for r in releases),
    )  # fmt: skip


def _site_records(federation: DpFederation, *others: DpFederation) -> list[SiteRecord]:
    """The sites of ``federation`` (whose ledgers ``others`` share), with the receipts of every task they ran."""
    logs = [f.receipts() for f in (federation, *others)]
    sites = []
    for name in federation.names:
        ledger = federation.ledgers[name]
        rows = _read_rows(
            ledger.path,
            "SELECT task, round, aggregation, mechanism, variance, l2_sensitivity, l1_sensitivity, epsilon_task, "
            "epsilon_total, delta FROM charges ORDER BY id",
        )
        parsed = tuple(
            LedgerRow(r[0], int(r[1]), int(r[2]), json.loads(r[3]), reference.Release(r[4], r[5], r[6]), r[7], r[8], r[9])
            for r in rows
        )
        tasks = sorted({row.task for row in parsed})
        receipts = tuple(receipt for log in logs for receipt in log[name][0])
        problems = tuple(problem for log in logs for problem in log[name][1])
        sites.append(
            SiteRecord(
                name,
                federation.policy,
                len(federation.roster),
                parsed,
                {t: ledger.spent(t) for t in tasks},
                ledger.spent_total(),
                receipts,
                problems,
            )
        )
    return sites


@dataclass(frozen=True)
class ReferenceRuns:
    tasks: tuple[TaskRecord, ...]
    sites: tuple[SiteRecord, ...]

    def __add__(self, other: ReferenceRuns) -> ReferenceRuns:
        return ReferenceRuns(self.tasks + other.tasks, self.sites + other.sites)


DEMO_NAMES = tuple(f"site-{i}" for i in range(1, 6))
REPLAN_NAMES = tuple(f"site-{i}" for i in range(1, 7))
REFERENCE_SCENARIOS = ("demo", "replanned-and-second-task")


def run_reference_scenarios(directory: Path, scenarios: Sequence[str] = REFERENCE_SCENARIOS) -> ReferenceRuns:
    """Real DP runs whose every charge the reference accountant recomputes.

    ``demo``: the demo's operating point — sgd_logistic over 64 features and 10 classes (d = 650),
    clip 0.5, epsilon 8 at delta 1e-5 over 10 rounds, 5 nodes (c = 1, t = 4: noise for 3 honest
    survivors); site-5's masked input of round 3 is lost, so that round completes with exactly t.
    ``replanned-and-second-task``: 6 nodes whose task and sites assume ``max_colluders = 0.34``
    (c = 3, t = 5: noise for 2), epsilon 2 at delta 1e-6 over 3 rounds; then ``rounds`` is raised
    to 5 and the coordinator restarted (it must account for the 3 recorded releases); then a second
    task (epsilon 1, 2 rounds) at the same sites, whose ledgers must compose both at one delta.
    """
    directory = Path(directory)
    tasks: list[TaskRecord] = []
    sites: list[SiteRecord] = []
    if "demo" in scenarios:
        folder = directory / "demo"
        federation = DpFederation(
            folder, DEMO_NAMES, task="audit-dp-demo", rounds=10, target=8.0, delta=1e-5, clip_norm=0.5, features=64,
            classes=range(10), policy=NodePolicy(max_epsilon=8.0, delta=1e-5), threshold=4,
        )  # fmt: skip
        hub = federation.hub

        def lost(direction: str, node: str, envelope: Envelope) -> bool:
            if direction != "up" or node != "site-5" or not isinstance(envelope.body, MaskedInput):
                return False
            starts = [
                e.body
                for e in hub.delivered.get(node, [])
                if e.aggregation == envelope.aggregation and isinstance(e.body, RoundStart)
            ]
            return bool(starts) and starts[0].spec.get("round") == _LOST_INPUT_ROUND

        hub.drop = lost
        try:
            finished = federation.run()
            tasks.append(_task_record("demo point (d=650, eps 8, 5 nodes)", federation, finished))
            sites.extend(_site_records(federation))
        finally:
            federation.close()
    if "replanned-and-second-task" in scenarios:
        folder = directory / "replanned"
        # the sites' limits leave room above the tasks' targets: a coordinator that overspends must be
        # caught by the audit's accounting, not merely stopped by the ledgers
        policy = NodePolicy(max_epsilon=4.0, max_epsilon_total=6.0, delta=1e-6, max_colluders=0.34)
        first = DpFederation(
            folder, REPLAN_NAMES, task="audit-dp-replanned", rounds=3, target=2.0, delta=1e-6, clip_norm=1.0, features=4,
            classes=(0, 1), policy=policy, max_colluders=0.34,
        )  # fmt: skip
        second = None
        try:
            finished = first.run()
            problems = []
            if finished:
                first.restart_with_rounds(5)
                finished = first.run()
            else:
                problems.append("the first 3 rounds did not finish")
            tasks.append(_task_record("re-planned (6 nodes, c=3, eps 2, rounds 3 -> 5)", first, finished, problems))
            second = DpFederation(
                folder, REPLAN_NAMES, task="audit-dp-second", rounds=2, target=1.0, delta=1e-6, clip_norm=1.0, features=4,
                classes=(0, 1), policy=policy, max_colluders=0.34, ledgers=first.ledgers, keys=first.keys,
            )  # fmt: skip
            tasks.append(_task_record("second task at the same sites (eps 1)", second, second.run()))
            sites.extend(_site_records(first, second))
        finally:
            first.owned_ledgers = second is None
            if second is not None:
                second.owned_ledgers = True
                second.close()
            first.close()
    return ReferenceRuns(tuple(tasks), tuple(sites))


def _raw_release(
    spec: dict, cohort_size: int, dimension: int, setting: int | float | None, roster_size: int
) -> tuple[reference.Release, int, int]:
    """(the reference release, t, c) from a round spec as received, and the colluder setting of who judges it."""
    dp = spec["dp"]
    threshold = int(spec["secagg"]["threshold"])
    c = reference.colluders(setting, max(roster_size, cohort_size))
    release = reference.release_from_raw(
        float(dp["node_variance"]), threshold - c, float(dp["clip_norm"]), int(dp["scale_bits"]), dimension
    )
    return release, threshold, c


def _same_release(a: reference.Release, b: reference.Release) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-12) for x, y in ((a.variance, b.variance), (a.l2, b.l2), (a.l1, b.l1)))


def _show(release: reference.Release) -> str:
    return f"(V {release.variance:.6g}, D2 {release.l2:.6g}, D1 {release.l1:.6g})"


def check_reference_accountant(runs: ReferenceRuns) -> CheckResult:
    """Recompute every release the coordinators recorded and the ledgers charged, and every epsilon, from raw parameters."""
    promise = (
        "every DP release of real runs, recomputed by the audit's own accountant from the raw round parameters "
        "(V = (t - c) V_node, D2 = C 2^f + sqrt(d), D1 = min(sqrt(d) D2, D2^2), delta), equals what the coordinator "
        "recorded, every ledger charged and every signed receipt records; every reported epsilon (per round, per task, per site at its one delta) "
        "equals the reference, never goes down, and stays within the task's target and the site's limits"
    )
    failures: list[str] = []
    parts: list[str] = []
    spec_of: dict[tuple[str, str, int], tuple[dict, int, int]] = {}
    for record in runs.tasks:
        failures.extend(f"{record.label}: {problem}" for problem in record.problems)
        task, dp = record.task, record.task.dp
        received = list(record.specs.values())
        for name, specs in record.specs.items():
            for aggregation, value in specs.items():
                spec_of[(name, task.name, aggregation)] = value
        releases: list[reference.Release] = []
        recorded = {round_number: (a, v, l2, l1) for round_number, a, v, l2, l1 in record.releases}
        previous = 0.0
        accounted = None
        for round_number, aggregation, reported in record.rounds:
            where = f"{record.label} round {round_number}"
            copies = [specs[aggregation] for specs in received if aggregation in specs]
            if not copies or any(copy != copies[0] for copy in copies):
                failures.append(f"{where}: {len(copies)} nodes received the spec, and not all the same one")
                continue
            spec, cohort, dimension = copies[0]
            if spec.get("dp") is None:
                failures.append(f"{where}: the round ran without DP")
                continue
            expected, t, c = _raw_release(spec, cohort, dimension, getattr(task, "max_colluders", None), record.roster_size)
            if int(spec["dp"]["assumed_survivors"]) > t - c:
                failures.append(
                    f"{where}: noise sized for {spec['dp']['assumed_survivors']} honest survivors, but t - c = {t} - {c} = {t - c}"
                )
            if float(spec["dp"]["clip_norm"]) != float(dp["clip_norm"]) or float(spec["dp"]["delta"]) != float(dp["delta"]):
                failures.append(f"{where}: spec's clip norm or delta differs from the task's")
            if round_number not in recorded:
                failures.append(f"{where}: the coordinator recorded no release for this DP round")
            else:
                got = reference.Release(*recorded[round_number][1:])
                if recorded[round_number][0] != aggregation or not _same_release(got, expected):
                    failures.append(f"{where}: coordinator recorded {_show(got)}, reference {_show(expected)}")
            releases.append(expected)
            accounted = reference.account(releases, float(dp["delta"]))
            if reported is None:
                failures.append(f"{where}: no epsilon reported")
                continue
            wrong = accounted.judge(float(reported))
            if wrong:
                failures.append(f"{where}: reported epsilon {wrong}")
            if reported < previous:
                failures.append(f"{where}: reported epsilon went down ({previous:.4f} -> {reported:.4f})")
            previous = float(reported)
        if accounted is not None:
            if accounted.epsilon > float(dp["epsilon"]) * (1 + 1e-9):
                failures.append(
                    f"{record.label}: the reference epsilon {accounted.epsilon:.4f} is above the task's target {dp['epsilon']:g}"
                )
            parts.append(
                f"{record.label}: {len(releases)} rounds, coordinator eps {previous:.5f}, reference {accounted.epsilon:.5f} "
                f"(classic conversion {accounted.classic:.4f}, exact-Gaussian floor {accounted.floor:.4f}), target {dp['epsilon']:g}"
            )
        elif record.finished:
            failures.append(f"{record.label}: no DP round completed")
    checked = receipts_checked = 0
    for site in runs.sites:
        setting = getattr(site.policy, "max_colluders", None)
        so_far: dict[str, list[reference.Release]] = {}
        everything: list[reference.Release] = []
        for row in site.rows:
            where = f"{site.name} ledger, {row.task} aggregation {row.aggregation}"
            if (site.name, row.task, row.aggregation) not in spec_of:
                failures.append(f"{where}: charged for an aggregation whose spec the site never received")
                continue
            spec, cohort, dimension = spec_of[(site.name, row.task, row.aggregation)]
            expected, t, c = _raw_release(spec, cohort, dimension, setting, site.roster_size)
            checked += 1
            if row.delta != site.policy.delta:
                failures.append(f"{where}: charged at delta {row.delta:g}, the site's is {site.policy.delta:g}")
            if not _same_release(row.charged, expected):
                failures.append(f"{where}: charged {_show(row.charged)}, reference {_show(expected)} (t={t}, c={c})")
            told = row.mechanism.get("release", {})
            noted = reference.Release(
                told.get("variance", math.nan), told.get("l2_sensitivity", math.nan), told.get("l1_sensitivity", math.nan)
            )
            if not _same_release(noted, row.charged) or row.mechanism.get("dimension") != dimension:
                failures.append(
                    f"{where}: the row's mechanism record {told}, d={row.mechanism.get('dimension')} differs from its charge"
                )
            so_far.setdefault(row.task, []).append(expected)
            everything.append(expected)
            for label, value, releases in (
                ("task", row.epsilon_task, so_far[row.task]),
                ("site total", row.epsilon_total, everything),
            ):
                wrong = reference.account(releases, site.policy.delta).judge(value)
                if wrong:
                    failures.append(f"{where}: recorded {label} epsilon {wrong}")
        for task_name, spent in site.spent.items():
            accounted = reference.account(so_far.get(task_name, []), site.policy.delta)
            wrong = accounted.judge(spent)
            if wrong:
                failures.append(f"{site.name}: ledger.spent({task_name!r}) {wrong}")
            if site.policy.max_epsilon is not None and accounted.epsilon > site.policy.max_epsilon * (1 + 1e-9):
                failures.append(
                    f"{site.name}: {task_name} cost {accounted.epsilon:.4f} by the reference, above the site's limit {site.policy.max_epsilon:g}"
                )
        failures.extend(f"{site.name} audit log: {problem}" for problem in site.log_problems)
        charged_rows = {(row.task, row.aggregation): row for row in site.rows}
        released = {}
        for receipt in site.receipts:
            if receipt.get("dp") and receipt.get("sent_masked_input"):
                released[(receipt["task"], int(receipt["aggregation"]))] = receipt
        if set(released) != set(charged_rows):
            lacking, unlogged = sorted(set(released) - set(charged_rows)), sorted(set(charged_rows) - set(released))
            failures.append(
                f"{site.name}: the signed audit log records {len(lacking)} DP releases the ledger lacks {lacking[:2]}, "
                f"the ledger {len(unlogged)} the log lacks {unlogged[:2]}"
            )
        for key, receipt in released.items():
            dp = receipt["dp"]
            try:
                raw = reference.release_from_raw(
                    float(dp["node_variance"]), int(receipt["threshold"]) - reference.colluders(setting, max(site.roster_size, int(receipt["cohort_size"]))),
                    float(dp["clip_norm"]), int(dp["scale_bits"]), int(dp["dimension"]),
                )  # fmt: skip
            except (KeyError, TypeError, ValueError) as exc:
                failures.append(f"{site.name} receipt {key}: lacks the raw parameters to recompute its release ({exc!r})")
                continue
            told = dp.get("release", {})
            noted = reference.Release(
                told.get("variance", math.nan), told.get("l2_sensitivity", math.nan), told.get("l1_sensitivity", math.nan)
            )
            if not _same_release(noted, raw):
                failures.append(f"{site.name} receipt {key}: records {_show(noted)}, its own raw parameters give {_show(raw)}")
            row = charged_rows.get(key)
            if row is not None and not math.isclose(
                float(receipt.get("epsilon_task_after") or math.nan), row.epsilon_task, rel_tol=1e-12
            ):
                failures.append(
                    f"{site.name} receipt {key}: epsilon {receipt.get('epsilon_task_after')} != the ledger's {row.epsilon_task}"
                )
        receipts_checked += len(released)
        total = reference.account(everything, site.policy.delta)
        wrong = total.judge(site.spent_total)
        if wrong:
            failures.append(f"{site.name}: ledger.spent_total() {wrong}")
        if site.policy.max_epsilon_total is not None and total.epsilon > site.policy.max_epsilon_total * (1 + 1e-9):
            failures.append(
                f"{site.name}: total {total.epsilon:.4f} by the reference, above the site's limit {site.policy.max_epsilon_total:g}"
            )
        if len(site.spent) > 1 and site.name in (DEMO_NAMES[0], REPLAN_NAMES[0]):
            parts.append(
                f"{site.name} (two tasks): site total {site.spent_total:.5f}, reference {total.epsilon:.5f} at delta "
                f"{site.policy.delta:g} (sum of per-task eps {sum(site.spent.values()):.4f})"
            )
    parts.append(f"{checked} ledger rows and {receipts_checked} signed receipts on {len(runs.sites)} sites recomputed")
    return _result(REFERENCE_ACCOUNTANT, promise, failures, "; ".join(parts))


# --- (f) the noise at production scale: what the nodes really add, against what is accounted -------


#: Planner inputs of real operating points (label, target eps, delta, rounds, clip, dimension, cohort n):
#: the demo's digits logistic regression at eps 8 and eps 1, and the MLP on d = 105,010 parameters.
PRODUCTION_POINTS: tuple[tuple[str, float, float, int, float, int, int], ...] = (
    ("digits logistic eps 8", 8.0, 1e-5, 10, 0.5, 650, 5),
    ("digits logistic eps 1", 1.0, 1e-5, 10, 0.5, 650, 5),
    ("MLP d=105010 eps 8", 8.0, 1e-5, 10, 1.0, 105_010, 10),
)
#: One-sided normal quantile for p = 1e-6, and the two-sided one.
Z_ONE_SIDED_1E6 = float(stats.norm.isf(1e-6))
Z_TWO_SIDED_1E6 = float(stats.norm.isf(5e-7))


def honest_survivors(cohort: int, setting: int | float | None = None) -> tuple[int, int, int]:
    """(t, c, t - c) for a cohort that is the whole roster, by the documented policy (not the product's code)."""
    c = reference.colluders(setting, cohort)
    t = reference.smallest_threshold(cohort, c)
    return t, c, t - c


def production_plan(point: tuple[str, float, float, int, float, int, int]) -> tuple[SkellamParameters, int]:
    """The planner's parameters at a production operating point, and the t - c honest survivors they are sized for."""
    _, target, delta, rounds, clip_norm, dimension, cohort = point
    _, _, honest = honest_survivors(cohort)
    return mechanism.plan_skellam(target, delta, rounds, clip_norm, dimension, cohort, honest), honest


def _normal_bins_chi_square(values: np.ndarray, variance: float, bins: int = 100) -> tuple[float, int, float]:
    """Pearson chi-square against the symmetric Skellam of ``variance`` on ``bins`` equiprobable bins.

    At the variances here (> 1e9) the Skellam is the normal N(0, V) to far better than any bin
    can resolve (excess kurtosis 1/V, unit steps against a standard deviation > 3e4): bin edges
    are put half-way between integers, so the continuity correction is exact.
    """
    sd = math.sqrt(variance)
    edges = np.floor(stats.norm.ppf(np.linspace(0, 1, bins + 1)[1:-1]) * sd) + 0.5
    probabilities = np.diff(np.concatenate([[0.0], stats.norm.cdf(edges / sd), [1.0]]))
    observed = np.bincount(np.searchsorted(edges, values), minlength=bins)
    expected = probabilities * values.size
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    return statistic, bins - 1, float(stats.chi2.sf(statistic, bins - 1))


def check_production_noise(
    points: Iterable[tuple[str, float, float, int, float, int, int]] = PRODUCTION_POINTS,
    samples: int = 400_000,
    seed: int = 29,
) -> CheckResult:
    promise = (
        "at the planner's real operating points (node variance ~ 3e9-6e9), the noise t - c honest nodes' encodings "
        "really carry has at least the accounted variance (t - c) V_node (one-sided test, p >= 1e-6), and the "
        "Skellam shape (chi-square on 100 bins, excess kurtosis)"
    )
    failures: list[str] = []
    parts: list[str] = []
    for index, point in enumerate(points):
        label = point[0]
        params, honest = production_plan(point)
        if params.node_variance <= 1e8:
            failures.append(
                f"{label}: node variance {params.node_variance:.3g} is not production-size; the check proves nothing there"
            )
        accounted = reference.release_from_raw(
            params.node_variance, honest, params.clip_norm, params.scale_bits, params.dimension
        ).variance
        values = aggregate_noise_samples(params, honest, samples, seed + index).astype(np.float64)
        n = values.size
        sample_variance = float(np.var(values, ddof=1))
        z = (sample_variance - accounted) / math.sqrt((2 * accounted * accounted + accounted) / n)
        statistic, dof, p_fit = _normal_bins_chi_square(values, accounted)
        kurtosis = float(stats.kurtosis(values))  # excess; the Skellam's is 1/V
        kurtosis_z = (kurtosis - 1 / accounted) / math.sqrt(24 / n)
        parts.append(
            f"{label}: 2^{params.scale_bits}, V_node {params.node_variance:.4g} x {honest} honest = {accounted:.4g}; "
            f"{n} sums: variance ratio {sample_variance / accounted:.5f} (z {z:+.2f}, p {stats.norm.cdf(z):.3g}), "
            f"chi2 {statistic:.1f}/{dof} (p {p_fit:.3g}), excess kurtosis {kurtosis:+.4f} (z {kurtosis_z:+.2f})"
        )
        if z < -Z_ONE_SIDED_1E6:
            failures.append(
                f"{label}: sample variance {sample_variance:.6g} < accounted {accounted:.6g} (ratio {sample_variance / accounted:.4f}, z {z:.1f})"
            )
        if p_fit < 1e-6:
            failures.append(
                f"{label}: the sums do not fit Skellam(var {accounted:.4g}) (chi2 {statistic:.0f}/{dof}, p {p_fit:.2g})"
            )
        if abs(kurtosis_z) > Z_TWO_SIDED_1E6:
            failures.append(f"{label}: excess kurtosis {kurtosis:.4f}, the Skellam's is {1 / accounted:.2g} (z {kurtosis_z:.1f})")
    return _result(PRODUCTION_NOISE, promise, failures, "; ".join(parts))


# --- the production-scale empirical audit: a Gaussian-DP fit of the whole ROC ---------------------


def auc_with_standard_error(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """The area under the full empirical ROC (Mann-Whitney) and its DeLong standard error."""
    m, n = positives.size, negatives.size
    ranks = stats.rankdata(np.concatenate([positives, negatives]))
    own_positive, own_negative = stats.rankdata(positives), stats.rankdata(negatives)
    above = (ranks[:m] - own_positive) / n  # for each positive: the share of negatives below it (ties half)
    below = 1 - (ranks[m:] - own_negative) / m  # for each negative: the share of positives above it
    auc = float(np.mean(above))
    return auc, math.sqrt(float(np.var(above, ddof=1)) / m + float(np.var(below, ddof=1)) / n)


@dataclass(frozen=True)
class GdpAudit:
    """The outcome of one Gaussian-DP fit: mu estimated from the ROC of one release, composed over the task."""

    label: str
    trials: int
    auc: float
    mu: float
    mu_low: float
    mu_moments: float
    mu_accounted: float
    rounds: int
    epsilon_lower: float
    epsilon_target: float
    epsilon_reference: float
    alpha: float

    @property
    def passed(self) -> bool:
        return self.epsilon_lower <= self.epsilon_target and self.mu_low <= self.mu_accounted

    @property
    def detail(self) -> str:
        return (
            f"{self.trials} trials per world: AUC {self.auc:.4f} -> mu {self.mu:.4f} (mean/sd fit {self.mu_moments:.4f}), "
            f"mu >= {self.mu_low:.4f} at confidence 1-{self.alpha:g}; the accounted noise allows mu {self.mu_accounted:.4f}; "
            f"over {self.rounds} rounds eps >= {self.epsilon_lower:.3f} vs target {self.epsilon_target:g} "
            f"(reference accountant {self.epsilon_reference:.3f})"
        )


def run_gdp_audit(
    point: tuple[str, float, float, int, float, int, int] = PRODUCTION_POINTS[0],
    *,
    trials: int = 8000,
    seed: int = 404,
    alpha: float = 1e-6,
) -> GdpAudit:
    """A two-world distinguishing game at a production operating point, judged by the task's promise.

    The coordinator sees the modular sum of the t - c honest survivors' encodings (c colluders add
    nothing and their inputs are known: they drop out of the game); one honest node's update is
    zero (D) or ``clip_norm * u`` (D'), the others' updates are known. The score is the decoded
    sum's projection on u. The whole ROC of the score is summarised by its area (Mann-Whitney),
    and a Gaussian trade-off curve is fitted to it: for mu-GDP, AUC = Phi(mu / sqrt 2) (Dong, Roth
    and Su 2022), so mu = sqrt(2) Phi^-1(AUC), with a DeLong confidence bound. Rounds use fresh
    noise with the same parameters, so ``rounds`` of them are sqrt(rounds) mu-GDP, whose exact
    epsilon at delta (Balle and Wang 2018) must not exceed the task's target; and the fitted mu
    must not exceed what the accounted noise allows (D2 / sqrt(V), raw parameters). The Gaussian
    shape is a model (securefed's noise is Skellam, normal to 1/V in kurtosis at this scale), so
    this is an estimate, not a proof; its power is against noise smaller than accounted.
    """
    label, target, delta, rounds, clip_norm, dimension, _cohort = point
    params, honest = production_plan(point)
    accounted = reference.release_from_raw(params.node_variance, honest, params.clip_norm, params.scale_bits, params.dimension)
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dimension)
    direction /= np.linalg.norm(direction)
    others = []
    for _ in range(honest - 1):
        vector = rng.standard_normal(dimension)
        others.append(vector / np.linalg.norm(vector) * clip_norm * rng.uniform(0.1, 1.0))
    sources = [NoiseSource(seed.to_bytes(8, "little") + i.to_bytes(8, "little")) for i in range(honest)]
    out_scores = _scores(params, others, np.zeros(dimension), direction, trials, sources, modular_sum, "projection")
    in_scores = _scores(params, others, clip_norm * direction, direction, trials, sources, modular_sum, "projection")
    auc, error = auc_with_standard_error(in_scores, out_scores)
    z = float(stats.norm.isf(alpha))
    mu = math.sqrt(2) * float(stats.norm.ppf(auc))
    mu_low = math.sqrt(2) * float(stats.norm.ppf(min(max(auc - z * error, 1e-12), 1 - 1e-12)))
    pooled = math.sqrt((np.var(in_scores, ddof=1) + np.var(out_scores, ddof=1)) / 2)
    return GdpAudit(
        label=f"GDP fit at production scale ({label}, {honest} honest survivors)",
        trials=trials,
        auc=auc,
        mu=mu,
        mu_low=mu_low,
        mu_moments=float((np.mean(in_scores) - np.mean(out_scores)) / pooled),
        mu_accounted=accounted.l2 / math.sqrt(accounted.variance),
        rounds=rounds,
        epsilon_lower=reference.gaussian_exact_epsilon(max(mu_low, 0.0) * math.sqrt(rounds), delta) if mu_low > 0 else 0.0,
        epsilon_target=target,
        epsilon_reference=reference.epsilon([accounted] * rounds, delta),
        alpha=alpha,
    )
