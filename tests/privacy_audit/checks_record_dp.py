"""The privacy audit's record-level (DP-SGD across sites) checks, as functions that return a result.

Like :mod:`tests.privacy_audit.checks_dp`, each check returns a :class:`CheckResult` so that the
canaries can run the same function against a deliberately broken product. The checks look the
product up through its modules at call time (``dpsgd.sampled_clipped_gradient_sum``,
``mechanism.plan_record_skellam``), so a canary's patch is seen, and judge it by numbers written
here or in the audit's own accountant (:mod:`tests.privacy_audit.reference_subsampled`):

* per-record clipping: one record, however extreme, moves a node's encoded gradient sum by at most
  C s + sqrt(d) (L2) -- the sensitivity every record-level release is charged for;
* the sampling rate: the rate at which the node's own code path takes records into a round (counted
  through a gradient of known size, thousands of rounds) equals the q its release is charged at;
* the noise share: (t - c) times the per-node variance in the coordinator's plan -- the noise that
  remains when only the t - c honest survivors the documented adversary leaves add theirs -- costs at
  most the target epsilon, recomputed by the reference accountant from the raw plan;
* an empirical audit: an attacker who sees released sums with and without one extreme record
  distinguishes the two no better than the claimed epsilon allows (Clopper-Pearson, 99% over all thresholds).
"""

from __future__ import annotations

import math
import types

import numpy as np

from securefed.dp import mechanism
from securefed.dp.noise import NoiseSource
from securefed.federation import node as node_module
from tests.privacy_audit.checks_dp import CheckResult, RoundingOnly, _epsilon_bound, _result
from tests.privacy_audit.reference_accountant import Release, rdp_to_epsilon_improved
from tests.privacy_audit.reference_subsampled import epsilon as reference_epsilon

RECORD_CLIPPING = "dp.record-clipping-bound"
SAMPLING_RATE = "dp.record-sampling-rate"
RECORD_NOISE = "dp.record-noise-for-t-minus-c"
RECORD_EMPIRICAL = "empirical audit (record level)"

#: the audit's operating point: the demo's digits run (5 sites, c = 1 so t = 4 and t - c = 3)
POINT = dict(target=2.0, delta=1e-5, rounds=150, clip=1.0, dimension=650, nodes=5, threshold=4, colluders=1,
             records=1347, batch=256.0)  # fmt: skip


class _GradientStub:
    """A model whose every record has the gradient ``row`` (what the checks feed through the real code path)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.float64)
        self.parameter_count = self.rows.shape[1]

    def per_example_gradients(self, params, X, y):
        return self.rows[np.asarray(X, dtype=np.int64).reshape(-1)].copy()


def _node_sum(params: mechanism.SkellamParameters, rows: np.ndarray, source: NoiseSource) -> np.ndarray:
    """What the node's code path (Node._record_level_input) sends for records with gradients ``rows``: centred ints."""
    stub_node = types.SimpleNamespace(last_training_seconds=None)
    spec = types.SimpleNamespace(round=1)
    X = np.arange(len(rows)).reshape(-1, 1)
    original = node_module.NoiseSource
    node_module.NoiseSource = lambda: source  # the node draws sampling, rounding and noise from one generator
    try:
        encoded = node_module.Node._record_level_input(stub_node, _GradientStub(rows), None, spec, params, X, np.zeros(len(rows)))
    finally:
        node_module.NoiseSource = original
    return encoded.view(np.int32).astype(np.int64)


def _plan(sampling_everything: bool = False, dimension: int | None = None) -> mechanism.SkellamParameters:
    p = POINT
    batch = float(p["records"]) if sampling_everything else p["batch"]
    return mechanism.plan_record_skellam(
        p["target"], p["delta"], p["rounds"], p["clip"], dimension or p["dimension"], p["nodes"],
        p["threshold"] - p["colluders"], p["records"], batch,
    )  # fmt: skip


def check_record_clipping(seed: int = 20261201) -> CheckResult:
    """One record moves the node's rounded gradient sum by at most C s + sqrt(d), whatever its gradient."""
    params = _plan(sampling_everything=True, dimension=40)  # q = 1: every record is in, so the difference is its own
    rng = np.random.default_rng(seed)  # test inputs only
    base = rng.normal(size=(30, params.dimension)) * 0.05
    extremes = {
        "huge": np.full(params.dimension, 1e6),
        "one coordinate": np.eye(params.dimension)[0] * 1e9,
        "at the clip": np.full(params.dimension, params.clip_norm / math.sqrt(params.dimension)),
    }
    bound = params.clip_norm * params.scale + math.sqrt(params.dimension)
    failures, worst = [], 0.0
    for name, extreme in extremes.items():
        for trial in range(20):
            seed_bytes = bytes([trial]) * 16  # the same rounding draws in both worlds (the coupling of the proof)
            without = _node_sum(params, base, RoundingOnly(seed_bytes))
            with_it = _node_sum(params, np.vstack([base, extreme]), RoundingOnly(seed_bytes))
            moved = float(np.linalg.norm((with_it - without).astype(np.float64)))
            worst = max(worst, moved / bound)
            if moved > bound:
                failures.append(f"{name} record, trial {trial}: moved the sum by {moved:.6g} > C s + sqrt(d) = {bound:.6g}")
                break
    return _result(RECORD_CLIPPING, "one record moves a node's gradient sum by at most C s + sqrt(d)", failures,
                   f"largest move / bound = {worst:.4f} over {len(extremes)} extreme records x 20 rounding draws")  # fmt: skip


def check_sampling_rate(rounds: int = 3000, records: int = 200) -> CheckResult:
    """The node's code path takes each record with the probability q its release is charged at."""
    params = _plan(dimension=4)
    q = params.sampling_rate
    rows = np.zeros((records, params.dimension))
    rows[:, 0] = params.clip_norm / 2  # within the clip: the sum's first coordinate counts the records taken
    source = RoundingOnly(b"s" * 16)
    taken = 0.0
    for _ in range(rounds):
        taken += _node_sum(params, rows, source)[0] / (params.scale * params.clip_norm / 2)
    expected = rounds * records * q
    sd = math.sqrt(rounds * records * q * (1 - q))
    z = (taken - expected) / sd
    empirical = taken / (rounds * records)
    failures = [] if abs(z) <= 5 else [f"records taken at rate {empirical:.5f}, charged at q = {q:.5f} (z = {z:+.1f})"]
    return _result(SAMPLING_RATE, "records are sampled at the rate the ledger charges", failures,
                   f"empirical rate {empirical:.5f} vs charged q {q:.5f} over {rounds} rounds of {records} records (z {z:+.2f})")  # fmt: skip


def check_record_noise() -> CheckResult:
    """(t - c) x the plan's per-node variance, with the plan's sensitivities and q, costs at most the target."""
    p = POINT
    params = _plan()
    honest = p["threshold"] - p["colluders"]  # the documented adversary, not the plan's own figure
    variance = honest * params.node_variance
    d2 = params.clip_norm * params.scale + math.sqrt(params.dimension)
    d1 = min(math.sqrt(params.dimension) * d2, d2 * d2)
    orders = list(range(2, 65)) + [80, 96, 128]
    spent = reference_epsilon([(Release(variance, d2, d1), params.sampling_rate)] * p["rounds"], p["delta"], orders)
    failures = (
        []
        if spent <= p["target"] * (1 + 1e-6)
        else [
            f"noise from t - c = {honest} honest survivors costs epsilon {spent:.4f} > target {p['target']:g} "
            f"(per-node variance {params.node_variance:.4g}, plan sized for {params.assumed_survivors})"
        ]
    )
    return _result(RECORD_NOISE, "record-level noise is sized for t - c honest survivors", failures,
                   f"reference epsilon of (t - c) V_node over {p['rounds']} rounds at q {params.sampling_rate:.4f}: "
                   f"{spent:.4f} (target {p['target']:g})")  # fmt: skip


def run_record_empirical_audit(trials: int = 3000, seed: int = 7) -> tuple[CheckResult, float, float]:
    """Released sums with and without one extreme record at one site, over many rounds: the attacker's best
    threshold test on the projection onto the record's gradient; eps lower bound (99%) <= the claim."""
    dimension = 8
    params = _plan(dimension=dimension)
    claimed = rdp_to_epsilon_improved(list(range(2, 65)), _single_round_curve(params.release), POINT["delta"])
    rng = np.random.default_rng(seed)  # test data only
    sites = [rng.normal(size=(40, dimension)) * 0.05 for _ in range(POINT["nodes"])]
    canary = np.zeros(dimension)
    canary[0] = 1e6  # clipped to C along the first coordinate
    sources = [NoiseSource() for _ in range(POINT["nodes"])]

    def released(with_canary: bool) -> float:
        total = np.zeros(dimension, dtype=np.uint32)
        for i, rows in enumerate(sites):
            rows = np.vstack([rows, canary]) if with_canary and i == 0 else rows
            total += (_node_sum(params, rows, sources[i]) & 0xFFFFFFFF).astype(np.uint32)
        return float(params.decode_gradient_sum(total, POINT["nodes"])[0])

    outside = np.array([released(False) for _ in range(trials)])
    inside = np.array([released(True) for _ in range(trials)])
    best = (0.0, 0.0, 1.0, 0.0)
    quantiles = [0.9, 0.99, 0.999, 0.9999]
    for threshold in np.quantile(outside, quantiles):
        positives, false_positives = int(np.sum(inside > threshold)), int(np.sum(outside > threshold))
        # 99% confidence for the best of the thresholds together (Bonferroni): a false alarm is rare
        bound = _epsilon_bound(positives, trials, false_positives, trials, POINT["delta"], 0.01 / len(quantiles))
        if bound[0] > best[0]:
            best = (*bound, float(threshold))
    lower = best[0]
    failures = [] if lower <= claimed else [f"empirical epsilon >= {lower:.3f} exceeds the claimed {claimed:.3f} per round"]
    result = _result(RECORD_EMPIRICAL, "one record's presence is no more visible than the claimed epsilon", failures,
                     f"{trials} rounds per world: empirical epsilon >= {lower:.3f}, claimed {claimed:.3f} for one round")  # fmt: skip
    return result, lower, claimed


def _single_round_curve(release) -> list[float]:
    from tests.privacy_audit.reference_subsampled import skellam_subsampled_rdp

    return [
        skellam_subsampled_rdp(
            a, Release(release.variance, release.l2_sensitivity, release.l1_sensitivity), release.sampling_rate
        )
        for a in range(2, 65)
    ]
