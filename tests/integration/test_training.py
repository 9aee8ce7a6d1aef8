"""A whole small task over real daemons: coordinator + nodes as processes, CURVE ZeroMQ on loopback."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from securefed.federation.store import CoordinatorStore
from securefed.learning.models import make_adapter

pytestmark = pytest.mark.integration


@pytest.mark.integration
def test_small_task_completes_with_every_node_in_every_round(launch) -> None:
    """3 nodes, 3 rounds of secure aggregation: history, status command and a useful final model."""
    federation = launch(n_nodes=3, rounds=3)
    federation.start_coordinator()
    federation.start_nodes()

    assert federation.wait_coordinator_exit(timeout=federation.time_budget(3)) == 0, federation.diagnostics()

    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == [1, 2, 3], federation.diagnostics()
    for row in rounds:
        assert row["participants"] == 3, row
        assert sorted(row["survivors"]) == federation.names, row
        assert row["accuracy"] is not None and 0.5 < row["accuracy"] <= 1.0, row  # federated evaluation ran
        assert row["loss"] is not None and math.isfinite(row["loss"]) and row["loss"] > 0, row
        assert row["eval_participants"] == 3, row
        assert row["total_weight"] > 0, row
    # Each round took exactly one training aggregation and one evaluation aggregation: nothing aborted or retried.
    attempts = federation.attempts()
    assert [(a["round"], a["phase"]) for a in attempts] == [
        (1, "train"), (1, "evaluate"), (2, "train"), (2, "evaluate"), (3, "train"), (3, "evaluate"),
    ], attempts  # fmt: skip
    # ...and each is marked completed: the attempts table is the audit trail, a finished aggregation
    # (evaluations included) must not look interrupted.
    assert [a["status"] for a in attempts] == ["completed"] * 6, attempts
    assert [row["aggregation"] for row in rounds] == [1, 3, 5]

    status = federation.status()
    assert status is not None and status["finished"] is True and status["completed_round"] == 3, status
    assert status["current"] is None, status

    shown = subprocess.run(
        [sys.executable, "-m", "securefed.cli", "status", "--config", str(federation.fed.coordinator_config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert re.search(rf"^task:\s+{re.escape(federation.task['name'])} \(sgd_logistic, 3 rounds\)", out, re.M), out
    assert re.search(r"^progress:\s+3 of 3 rounds completed; 0 aborted attempts", out, re.M), out
    for row in rounds:  # one table line per round: number, survivors/participants, accuracy
        assert re.search(rf"^\s+{row['round']}\s+3/3\s+{row['accuracy']:.4f}\s", out, re.M), out

    store = CoordinatorStore(federation.fed.state_path)
    try:
        latest_round, weights, _ = store.latest_model()
    finally:
        store.close()
    assert latest_round == 3
    digits = federation.digits
    adapter = make_adapter("sgd_logistic", digits.dataset.n_features, digits.dataset.classes)
    assert weights.shape == (adapter.parameter_count,)
    initial = federation.model(0)
    assert initial is not None and not np.allclose(weights, initial)  # it did train
    held_out = adapter.evaluate(weights, digits.split.X_test, digits.split.y_test).accuracy
    assert held_out > 0.8, f"held-out accuracy of the federated model is only {held_out:.3f}"
