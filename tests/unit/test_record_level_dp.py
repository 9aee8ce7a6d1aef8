"""Record-level DP (DP-SGD across the sites), end to end over the real Coordinator and Nodes, in-process.

What is checked: a record-level task runs; each round every node's ledger charges a release with the
task's sampling rate and the unit "record"; the coordinator's reported epsilon equals the composition of
its recorded releases and every node's ledger figure, and stays within the target; the model learns;
a site's ``privacy_unit`` policy refuses the other unit; the node's encoding of its gradient sum decodes
exactly (up to rounding and noise) and a sum no clipped inputs could produce is refused; and subsampled
and site-level releases compose in one ledger curve that is never above either bound alone.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.dp.accountant import RDP_ORDERS, SkellamRelease, skellam_epsilon, skellam_rdp
from securefed.dp.mechanism import SkellamParameters, plan_record_skellam
from securefed.dp.noise import NoiseSource
from securefed.dp.settings import DpSettings
from securefed.dp.subsampled import subsampled_skellam_rdp
from securefed.errors import EncodingError, InvalidParameter
from securefed.federation.node import NodePolicy
from tests.unit.test_dp_records import DpFederation

DELTA = 1e-5
NAMES = ["site-1", "site-2", "site-3", "site-4"]
RECORDS = 4 * 48  # tests/inprocess.py: 60 records per node, 20% held out for evaluation


class RecordFederation(DpFederation):
    """A DP-SGD step size that suits the synthetic data (the coordinator's learning rate)."""

    def _new_coordinator(self):
        self.task = dataclasses.replace(self.task, learning_rate=1.0)
        return super()._new_coordinator()


def record_dp(epsilon: float = 4.0, batch: float = 48.0) -> dict:
    return {
        "epsilon": epsilon,
        "delta": DELTA,
        "clip_norm": 1.0,
        "unit": "record",
        "expected_batch": batch,
        "total_records": RECORDS,
    }


def test_a_record_level_task_runs_charges_each_record_round_and_learns(tmp_path: Path) -> None:
    rounds, target = 12, 4.0
    federation = RecordFederation(tmp_path, NAMES, rounds, record_dp(target), NodePolicy(max_epsilon=target, delta=DELTA))
    try:
        federation.run_until(lambda f: f.coordinator.finished)
        federation.settle()
        records = federation.store.rounds()
        assert [r.round for r in records] == list(range(1, rounds + 1))
        releases = federation.store.dp_releases()
        q = 48.0 / RECORDS
        assert all(rate == pytest.approx(q) for *_, rate in releases), releases
        composed = skellam_epsilon([SkellamRelease(v, l2, l1, rate) for _, v, l2, l1, rate in releases], DELTA)
        assert records[-1].epsilon == pytest.approx(composed, rel=1e-12)
        assert composed <= target
        for name, ledger in federation.ledgers.items():
            entries = ledger.entries()
            assert len(entries) == rounds and all(e.mechanism["unit"] == "record" for e in entries), name
            assert all(e.mechanism["release"]["sampling_rate"] == pytest.approx(q) for e in entries), name
            assert ledger.spent(federation.task.name) == pytest.approx(composed, rel=1e-9), name
        # the model learns the (synthetic) rule y = [x0 > 0]
        adapter = federation.coordinator.adapter
        rng = np.random.default_rng(5)
        X = rng.normal(size=(2000, adapter.n_features))
        y = (X[:, 0] > 0).astype(np.int64)
        accuracy = adapter.evaluate(federation.coordinator.model, X, y).accuracy
        assert accuracy > 0.8, accuracy
    finally:
        federation.close()


@pytest.mark.parametrize(
    ("wanted", "dp", "reason"),
    [
        ("record", {"epsilon": 4.0, "delta": DELTA, "clip_norm": 0.5}, "weaker-than-policy"),
        ("site", record_dp(), "dp-unit-mismatch"),
    ],
)
def test_a_sites_privacy_unit_refuses_rounds_of_the_other_unit(tmp_path: Path, wanted: str, dp: dict, reason: str) -> None:
    policy = NodePolicy(max_epsilon=8.0, delta=DELTA, privacy_unit=wanted)
    federation = DpFederation(tmp_path, NAMES, 1, dp, policy)
    try:
        for _ in range(60):
            federation.step()
        assert federation.store.rounds() == []
        refusals = federation.store.refusals()
        assert refusals and {r[2] for r in refusals} == {reason}, refusals
        assert all(ledger.entries() == [] for ledger in federation.ledgers.values())
    finally:
        federation.close()


def _parameters(nodes: int = 3, dimension: int = 20) -> SkellamParameters:
    return plan_record_skellam(2.0, DELTA, 50, 1.0, dimension, nodes, nodes - 1, 1000, 64.0)


def test_gradient_sums_decode_to_their_sum_up_to_rounding_and_noise() -> None:
    params = _parameters()
    rng = np.random.default_rng(1)
    sums = [rng.normal(size=params.dimension) * 5 for _ in range(3)]
    total = np.zeros(params.dimension, dtype=np.uint32)
    for i, vector in enumerate(sums):
        total += params.encode_gradient_sum(vector, NoiseSource(bytes([i]) * 16))
    decoded = params.decode_gradient_sum(total, 3)
    noise_sd = math.sqrt(3 * params.node_variance) / params.scale
    assert np.max(np.abs(decoded - np.sum(sums, axis=0))) < 8 * noise_sd + 3 / params.scale


def test_a_sum_no_clipped_gradients_could_make_is_refused() -> None:
    params = _parameters()
    forged = np.full(params.dimension, 2**30, dtype=np.uint32)
    with pytest.raises(EncodingError, match="out-of-range"):
        params.decode_gradient_sum(forged, 3)
    with pytest.raises(EncodingError, match="record-level"):
        SkellamParameters(1.0, 10, 100.0, 2, 20, 3).encode_gradient_sum(np.zeros(20))


def test_a_spec_round_trips_and_a_site_spec_is_unchanged() -> None:
    params = _parameters()
    spec = params.to_spec(DELTA, 2.0, 50)
    assert spec["unit"] == "record" and SkellamParameters.from_spec(spec, params.dimension, params.cohort_size) == params
    site = SkellamParameters(1.0, 10, 100.0, 2, 20, 3)
    assert "unit" not in site.to_spec(DELTA, 2.0, 5) and site.release.sampling_rate == 1.0


def test_record_settings_are_checked() -> None:
    with pytest.raises(InvalidParameter, match="needs total_records"):
        DpSettings(epsilon=1.0, unit="record")
    with pytest.raises(InvalidParameter, match="more than total_records"):
        DpSettings(epsilon=1.0, unit="record", expected_batch=20, total_records=10)
    with pytest.raises(InvalidParameter, match='apply to unit = "record" only'):
        DpSettings(epsilon=1.0, expected_batch=20)
    with pytest.raises(InvalidParameter, match="unit must be one of"):
        DpSettings(epsilon=1.0, unit="patient")
    settings_ = DpSettings(epsilon=1.0, unit="record", expected_batch=25, total_records=100)
    assert settings_.sampling_rate == 0.25 and DpSettings(epsilon=1.0).sampling_rate == 1.0


@settings(max_examples=25, deadline=None)
@given(
    variance=st.floats(1e3, 1e9),
    l2=st.floats(1.0, 1e3),
    q=st.floats(1e-3, 0.99),
)
def test_a_subsampled_release_takes_the_subsampled_bound_and_never_exceeds_the_plain_one(variance, l2, q) -> None:
    l1 = min(math.sqrt(100) * l2, l2 * l2)
    sampled = SkellamRelease(variance, l2, l1, q)
    plain = SkellamRelease(variance, l2, l1)
    curve, base = skellam_rdp(sampled), skellam_rdp(plain)
    low = [a for a in RDP_ORDERS if a <= 256]
    expected = subsampled_skellam_rdp(variance, l2, l1, q, low)
    for order, value, bound in zip(RDP_ORDERS, curve, base):
        assert value <= bound
        if order <= 256:
            assert value == pytest.approx(min(expected[low.index(order)], bound), rel=1e-12)
    mixed = skellam_epsilon([sampled, plain], DELTA)
    assert skellam_epsilon([plain], DELTA) <= mixed <= skellam_epsilon([plain, plain], DELTA)
