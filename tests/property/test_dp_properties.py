"""Hypothesis invariants of the DP layer: clipping and rounding bounds, no wrap-around, accounting, the ledger.

The clip-and-round properties run :meth:`SkellamParameters.encode` with a
noise source whose Skellam share is zero, so what comes out is exactly the
clipped, scaled, stochastically rounded update that the sensitivity bounds
are about (the node's own noise is not part of its sensitivity).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from securefed.dp.accountant import SkellamRelease, skellam_epsilon, skellam_rdp
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.dp.mechanism import MAX_NODE_VARIANCE, MAX_WRAP_PROBABILITY, SkellamParameters, plan_skellam
from securefed.dp.noise import NoiseSource
from securefed.encoding import clip_l2
from securefed.errors import InvalidParameter, PrivacyBudgetExhausted
from securefed.secagg.bounds import minimum_safe_threshold, resolve_colluders

LIMIT = 2**31


class RoundingOnly(NoiseSource):
    """The real generator for stochastic rounding, with the Skellam share switched off."""

    def skellam(self, variance: float, size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.int64)


def _norm(x: np.ndarray) -> float:
    """L2 norm without overflow for coordinates near the float64 limit."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return 0.0 if peak == 0.0 else peak * float(np.linalg.norm(x / peak))


def _rounded(params: SkellamParameters, update: np.ndarray, seed: bytes) -> np.ndarray:
    return params.encode(update, RoundingOnly(seed)).view(np.int32).astype(np.int64)


coordinate = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.floats(-1e-6, 1e-6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, -1.0, 1e300, -1e300, 5e-324]),
)


@st.composite
def clip_cases(draw: st.DrawFn) -> tuple[SkellamParameters, np.ndarray, bytes]:
    d = draw(st.integers(1, 48))
    update = np.array(draw(st.lists(coordinate, min_size=d, max_size=d)), dtype=np.float64)
    clip_norm = draw(st.floats(1e-3, 1e3))
    bits = draw(st.integers(0, 24))
    assume(clip_norm * 2**bits < 2**28)  # three nodes' worth must fit in 2^31
    params = SkellamParameters(clip_norm, bits, 1.0, 2, d, 3)
    return params, update, draw(st.binary(min_size=32, max_size=32))


@given(clip_cases())
def test_clipping_holds_for_every_update(case: tuple) -> None:
    params, update, _ = case
    clipped = clip_l2(update, params.clip_norm)
    assert np.all(np.isfinite(clipped))
    assert np.linalg.norm(clipped) <= params.clip_norm * (1 + 1e-12)
    if _norm(update) <= params.clip_norm:
        assert np.array_equal(clipped, update)  # never scaled up, never touched when inside
    else:
        assert np.linalg.norm(clipped) >= params.clip_norm * (1 - 1e-12)  # scaled to the boundary, not past it


@given(clip_cases())
def test_rounded_update_stays_within_the_documented_sensitivity(case: tuple) -> None:
    params, update, seed = case
    rounded = _rounded(params, update, seed)
    scaled = clip_l2(update, params.clip_norm) * params.scale
    # every coordinate is the floor or the ceiling of the scaled clipped value
    assert np.all((rounded == np.floor(scaled)) | (rounded == np.ceil(scaled)))
    l2 = math.sqrt(float(np.sum(rounded.astype(np.float64) ** 2)))
    assert l2 <= params.l2_sensitivity * (1 + 1e-12)
    assert float(np.abs(rounded).sum()) <= params.l1_sensitivity * (1 + 1e-12)
    # an integer vector's L1 norm is at most min(sqrt(d) L2, L2^2): the bound the L1 sensitivity rests on
    assert np.abs(rounded).sum() <= min(math.sqrt(params.dimension) * l2, l2 * l2) + 1e-9
    assert params.l1_sensitivity <= min(math.sqrt(params.dimension) * params.l2_sensitivity, params.l2_sensitivity**2)


@given(clip_cases())
def test_the_bound_is_tight_enough_to_mean_something(case: tuple) -> None:
    """An update at (or beyond) the clip keeps a rounded norm above C s - sqrt(d): rounding moves < 1 per coordinate."""
    params, update, seed = case
    assume(np.linalg.norm(clip_l2(update, params.clip_norm)) >= params.clip_norm * (1 - 1e-12))
    rounded = _rounded(params, update, seed)
    l2 = math.sqrt(float(np.sum(rounded.astype(np.float64) ** 2)))
    assert l2 > params.clip_norm * params.scale - math.sqrt(params.dimension) - 1e-9


@given(
    clip=st.floats(1e-3, 1e3),
    bits=st.integers(0, 30),
    log_variance=st.floats(-3, 20),
    cohort=st.integers(1, 10_000),
    survivors=st.floats(0.0, 1.0),
    dimension=st.integers(1, 10**7),
)
def test_constructible_parameters_cannot_wrap(
    clip: float, bits: int, log_variance: float, cohort: int, survivors: float, dimension: int
) -> None:
    t = max(1, math.ceil(survivors * cohort))
    try:
        params = SkellamParameters(clip, bits, 10.0**log_variance, t, dimension, cohort)
    except InvalidParameter as refused:
        # refused for one of the two reasons only: the sum could wrap, or the sampler is asked beyond its range
        beyond_sampler = 10.0**log_variance > MAX_NODE_VARIANCE
        assert ("wrap" in str(refused)) or (beyond_sampler and "sampler is validated" in str(refused)), refused
        return
    assert params.node_variance <= MAX_NODE_VARIANCE
    assert params.wrap_probability <= MAX_WRAP_PROBABILITY
    # Deterministic part of the worst case plus 7 standard deviations of the summed noise fit in int32.
    assert cohort * (clip * params.scale + 1) + 7 * math.sqrt(cohort * params.node_variance) < LIMIT


@settings(max_examples=25)
@given(
    target=st.floats(0.5, 10.0),
    rounds=st.integers(1, 20),
    clip=st.floats(0.05, 5.0),
    dimension=st.integers(1, 200),
    cohort=st.integers(3, 400),
    fraction=st.floats(0.5, 1.0),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_planned_sums_decode_exactly_even_at_the_extreme(
    target: float, rounds: int, clip: float, dimension: int, cohort: int, fraction: float, sign: float
) -> None:
    """Every node's update at the clip, on one coordinate, one sign: the modular sum decodes to the true sum.

    The noise is sized for t - c honest survivors, with c the default colluder bound and t at least the
    smallest threshold that withstands it."""
    colluders = resolve_colluders(None, cohort)
    threshold = min(cohort, max(minimum_safe_threshold(cohort, colluders), math.ceil(fraction * cohort)))
    plan = plan_skellam(target, 1e-5, rounds, clip, dimension, cohort, threshold - colluders)
    assert plan.assumed_survivors == threshold - colluders and plan.node_variance <= MAX_NODE_VARIANCE
    assert plan.epsilon(rounds, 1e-5) <= target
    update = np.zeros(dimension)
    update[0] = sign * clip
    encodings = [plan.encode(update, NoiseSource(bytes([i % 256, i // 256]) * 16)) for i in range(cohort)]
    exact = np.sum([e.view(np.int32).astype(np.int64) for e in encodings], axis=0)
    total = np.zeros(dimension, dtype=np.uint32)
    for e in encodings:
        np.add(total, e, out=total)
    assert np.array_equal(total.view(np.int32).astype(np.int64), exact)
    assert np.abs(exact).max() < LIMIT - 1


# --- accounting ---------------------------------------------------------------------------------

releases = st.builds(
    SkellamRelease,
    variance=st.floats(1e-2, 1e14),
    l2_sensitivity=st.floats(1e-2, 1e7),
    l1_sensitivity=st.floats(1e-2, 1e9),
)


@given(releases)
def test_skellam_rdp_is_positive_and_grows_with_the_order(release: SkellamRelease) -> None:
    curve = skellam_rdp(release, [2, 3, 5, 10, 50, 200])
    assert all(value > 0 for value in curve)
    assert all(a <= b for a, b in zip(curve, curve[1:]))


@given(releases, st.floats(1.01, 100.0))
def test_more_noise_never_costs_more(release: SkellamRelease, factor: float) -> None:
    noisier = SkellamRelease(release.variance * factor, release.l2_sensitivity, release.l1_sensitivity)
    assert all(a >= b for a, b in zip(skellam_rdp(release), skellam_rdp(noisier)))
    assert skellam_epsilon([noisier] * 3, 1e-5) <= skellam_epsilon([release] * 3, 1e-5)


@given(st.lists(releases, min_size=1, max_size=6), releases)
def test_one_more_release_never_costs_less(history: list[SkellamRelease], extra: SkellamRelease) -> None:
    before = skellam_epsilon(history, 1e-5)
    assert before >= 0
    assert skellam_epsilon([*history, extra], 1e-5) >= before


# --- the ledger never lets spending cross the budget ---------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Random charges to a few tasks; after every step, no task and no site total is above its limit, and the
    site total is every accepted release composed at the site's delta."""

    @initialize(per_task=st.floats(0.5, 8.0), total=st.floats(1.0, 12.0))
    def open(self, per_task: float, total: float) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="securefed-ledger-"))
        self.budget = Budget(per_task, total)
        self.ledger = PrivacyLedger(self.folder / "ledger.sqlite", self.budget)
        self.accepted: list[SkellamRelease] = []
        self.aggregation = 0

    @rule(task=st.sampled_from(["a", "b", "c"]), z=st.floats(0.5, 20.0), d2=st.floats(1.0, 1e5))
    def charge(self, task: str, z: float, d2: float) -> None:
        release = SkellamRelease((z * d2) ** 2, d2, d2 * 10)
        task_epsilon, total = self.ledger.preview(task, release)
        should_fit = task_epsilon <= self.budget.max_epsilon and total <= self.budget.max_epsilon_total
        self.aggregation += 1
        try:
            spent = self.ledger.charge(task, self.aggregation, self.aggregation, release, {"z": z}, "h")
        except PrivacyBudgetExhausted:
            assert not should_fit
        else:
            assert should_fit and spent == task_epsilon
            self.accepted.append(release)

    @rule()
    def reopen(self) -> None:
        self.ledger.close()
        self.ledger = PrivacyLedger(self.folder / "ledger.sqlite", self.budget)

    @invariant()
    def within_budget(self) -> None:
        if not hasattr(self, "ledger"):
            return
        spent = {task: self.ledger.spent(task) for task in "abc"}
        assert all(value <= self.budget.max_epsilon for value in spent.values())
        total = self.ledger.spent_total()
        assert total <= self.budget.max_epsilon_total
        assert math.isclose(total, skellam_epsilon(self.accepted, self.budget.delta), rel_tol=1e-12, abs_tol=1e-15)
        # composing everything costs at least any one task, and never more than adding the tasks up
        assert max(spent.values()) <= total * (1 + 1e-12) + 1e-15
        assert total <= sum(spent.values()) * (1 + 1e-12) + 1e-15
        assert len(self.ledger.entries()) == len(self.accepted)

    def teardown(self) -> None:
        if hasattr(self, "ledger"):
            self.ledger.close()
            shutil.rmtree(self.folder, ignore_errors=True)


LedgerMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)
TestLedgerNeverCrossesTheBudget = LedgerMachine.TestCase
