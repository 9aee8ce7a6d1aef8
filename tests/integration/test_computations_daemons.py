"""Trees and analytics over the real daemons: processes, CURVE ZeroMQ on loopback, secure aggregation.

The forest is grown level by level from secure sums only; the analytics results match numpy on
the pooled data within their stated bound; a site whose policy does not allow a computation
refuses it, and its signed audit log says why.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from node.config import load_node_config
from securefed.audit.log import authentic_entries, verify_log
from securefed.crypto.identity import SigningKey
from securefed.federation.store import CoordinatorStore
from securefed.learning.datasets import bundled_preprocessing, load_bundled, train_test_split_stratified
from securefed.learning.partition import partition
from securefed.localfed import LocalFederation
from securefed.trees import TreeEnsemble
from tests.integration.conftest import DEADLINE_FLOORS, STARTUP_BUDGET, Federation

pytestmark = pytest.mark.integration

NAMES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="module")
def raw_split():
    """The digits split the other integration tests use, with the raw features a site's CSV holds
    (tree bins and analytics bounds are declared in the data's own units)."""
    raw = load_bundled("digits", scaled=False)
    return train_test_split_stratified(raw.X, raw.y, 0.25, 0)


def _federation(tmp_path, digits, split, task: dict, policy: dict) -> Federation:
    parts = partition("iid", split.X_train, split.y_train, len(NAMES), 0)
    node_data = {name: (split.X_train[idx], split.y_train[idx]) for name, idx in zip(NAMES, parts)}
    base = {"features": list(digits.dataset.feature_names), "classes": list(digits.dataset.classes), "min_nodes": 3}
    deadlines = {stage: 2 * floor for stage, floor in DEADLINE_FLOORS.items()}
    local = LocalFederation.create(
        tmp_path / task["name"],
        node_data,
        list(digits.dataset.feature_names),
        {**task, **base},
        deadlines=deadlines,
        policy=policy,
    )
    return Federation(local, NAMES, digits, {**task, **base}, deadlines, training=1.0)


def _store(federation: Federation) -> CoordinatorStore:
    return CoordinatorStore(federation.fed.state_path, read_only=True)


def test_a_random_forest_grows_from_secure_sums_over_the_daemons(tmp_path, digits, raw_split) -> None:
    task = {
        "name": "forest",
        "model": "random_forest",
        "model_options": {"n_trees": 8, "max_depth": 5, "n_bins": 17},
        "preprocessing": bundled_preprocessing("digits"),
    }
    federation = _federation(tmp_path, digits, raw_split, task, {"allowed_models": ["random_forest"]})
    try:
        _grow_forest(federation, raw_split)
    finally:
        federation.stop_all()


def _grow_forest(federation: Federation, split) -> None:
    federation.start_coordinator()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=STARTUP_BUDGET + 120) == 0, federation.diagnostics()

    store = _store(federation)
    try:
        result, arrays, rounds, attempts = store.computation_result(), store.computation_model(), store.rounds(), store.attempts()
    finally:
        store.close()
    assert result is not None and result["kind"] == "random_forest" and result["trees"] == 8, result
    assert result["aggregations"] == len(rounds) >= 2
    assert all(r.participants == 3 and r.accuracy is None for r in rounds)
    assert {(a.phase, a.status) for a in attempts} == {("compute", "completed")}, attempts
    model = TreeEnsemble.from_arrays(arrays)
    accuracy = float((model.predict(split.X_test) == split.y_test).mean())
    assert accuracy >= 0.8, accuracy

    status = federation.status()
    assert status is not None and status["finished"] is True, status
    # every node signed a receipt per step naming the request it answered
    for name in NAMES:
        config = load_node_config(federation.fed.node_configs[name])
        public = SigningKey.load(config.identity_key_file).public_bytes
        assert verify_log(config.audit_path, public).ok
        receipts = [e.receipt for e in authentic_entries(config.audit_path, public)]
        steps = [r for r in receipts if r.get("phase") == "compute" and r.get("outcome") == "completed"]
        assert len(steps) == len(rounds), receipts
        assert {r["computation"]["kind"] for r in steps} == {"trees.forest-level"}
        assert len({r["computation"]["request_sha256"] for r in steps}) == len(steps)


def test_analytics_over_the_daemons_match_numpy_and_a_site_refuses_what_its_policy_does_not_allow(
    tmp_path, digits, raw_split
) -> None:
    low, high = [0.0] * 64, [16.0] * 64  # digits' pixels are 0..16
    covariance = {"max_nodes": 10, "max_rows": 5000, "low": low, "high": high}
    task = {
        "name": "stats",
        "model": "analytics",
        "computations": [
            {"kind": "count", "params": {"max_nodes": 10, "max_rows": 5000}},
            {"kind": "covariance", "params": covariance},
        ],
    }
    # site-3 allows counts only. With three sites the threshold is 3, so the covariance step cannot
    # run without it: the count is released by all three, then the computation waits.
    federation = _federation(tmp_path, digits, raw_split, task, {"allowed_computations": ["count", "covariance"]})
    try:
        _run_analytics(federation, raw_split)
    finally:
        federation.stop_all()


def _run_analytics(federation: Federation, split) -> None:
    strict = federation.fed.node_configs["site-3"]
    strict.write_text(
        strict.read_text().replace('allowed_computations = ["count", "covariance"]', 'allowed_computations = ["count"]')
    )
    federation.start_coordinator()
    federation.start_nodes()
    federation.wait_until(
        lambda: any(reason == "computation-not-allowed" for (reason,) in federation.query("SELECT reason FROM refusals")),
        timeout=STARTUP_BUDGET + 60,
        what="site-3 refusing the covariance",
    )
    config = load_node_config(strict)
    public = SigningKey.load(config.identity_key_file).public_bytes
    federation.wait_until(
        lambda: any(
            e.receipt.get("outcome") == "refused" and "computation-not-allowed" in e.receipt.get("detail", "")
            for e in authentic_entries(config.audit_path, public)
        ),
        timeout=30,
        what="the refusal in site-3's audit log",
    )
    federation.stop_all()

    # With the site's policy widened, the same state finishes the task (the count is not asked again).
    strict.write_text(
        strict.read_text().replace('allowed_computations = ["count"]', 'allowed_computations = ["count", "covariance"]')
    )
    federation.start_coordinator()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=STARTUP_BUDGET + 120) == 0, federation.diagnostics()
    store = _store(federation)
    try:
        result = store.computation_result()
    finally:
        store.close()
    count, cov = result["results"]
    pooled = split.X_train
    assert count["count"] == len(pooled)
    assert count["aggregations"] == 1 and cov["aggregations"] == 1
    expected = np.cov(pooled, rowvar=False, ddof=cov["ddof"])
    got = np.array(cov["covariance"])
    assert got.shape == (64, 64)
    assert np.all(np.abs(got - expected) <= np.array(cov["error_bound"]["covariance"]) + 1e-9)
    assert np.max(np.abs(got - expected)) < 1e-3


def test_securefed_analytics_runs_the_task_and_writes_the_results_an_operator_reads(tmp_path, digits, raw_split) -> None:
    """The operator's path, literally: nodes as daemons, then `securefed analytics --config ... --out ...`."""
    task = {
        "name": "operator-stats",
        "model": "analytics",
        "computations": [{"kind": "mean", "params": {"max_nodes": 10, "max_rows": 5000, "low": [0.0] * 64, "high": [16.0] * 64}}],
    }
    federation = _federation(tmp_path, digits, raw_split, task, {"allowed_computations": ["mean"]})
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "securefed.cli", "analytics", "--config", str(federation.fed.coordinator_config)]
    try:
        federation.start_nodes()
        ran = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=STARTUP_BUDGET + 120)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "analytics task operator-stats: finished now after 1 secure aggregation\n" in ran.stdout + ran.stderr
        result = json.loads(out.read_text())
        [mean] = result["results"]
        pooled = raw_split.X_train
        assert mean["count"] == len(pooled)
        assert np.all(np.abs(np.array(mean["mean"]) - pooled.mean(axis=0)) <= np.array(mean["error_bound"]["mean"]) + 1e-12)
        again = subprocess.run([*command, "--show"], capture_output=True, text=True, timeout=60)  # nothing runs twice
        assert again.returncode == 0 and "nothing was run" in again.stdout + again.stderr
    finally:
        federation.stop_all()
