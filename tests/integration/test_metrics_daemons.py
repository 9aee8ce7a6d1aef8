"""Both daemons serve Prometheus metrics, and the round history holds what the coordinator measured (issue 12).

A 2-round task over the real daemons with ``[metrics]`` in every config: round 1 completes (trained and
evaluated), then every node refuses round 2 (its policy allows one round), so the coordinator stays up,
retrying, while the test scrapes both kinds of endpoint as Prometheus would and reads
``securefed status --history --json``. Waits are bounded by the federation's measured time budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from securefed.localfed import free_port
from securefed.status import STAGES

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{sample name: {label items: value}}, or {} while nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return {}
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _value(scraped: dict, name: str, **labels: str) -> float | None:
    return scraped.get(name, {}).get(tuple(sorted(labels.items())))


@pytest.mark.integration
def test_both_daemons_serve_metrics_once_a_round_completes(launch) -> None:
    federation = launch(n_nodes=3, rounds=2, policy={"max_rounds": 1})
    ports = {name: free_port() for name in ["coordinator", *federation.names]}
    configs = {"coordinator": federation.fed.coordinator_config, **federation.fed.node_configs}
    for name, config in configs.items():
        config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{ports[name]}"\n')
    federation.start_coordinator()
    federation.start_nodes()
    budget = federation.time_budget(1)

    def coordinator_ready() -> dict:
        scraped = _scrape(ports["coordinator"])
        refused = _value(scraped, "securefed_coordinator_refusals_total", reason="too-many-rounds") or 0
        return scraped if _value(scraped, "securefed_coordinator_completed_round") == 1 and refused >= 3 else {}

    coordinator = federation.wait_until(coordinator_ready, budget, "round 1 and round 2's refusals in the coordinator's metrics")
    assert _value(coordinator, "securefed_coordinator_rounds_planned") == 2
    assert _value(coordinator, "securefed_coordinator_finished") == 0
    assert _value(coordinator, "securefed_coordinator_known_nodes") == 3
    assert _value(coordinator, "securefed_coordinator_last_round") == 1
    assert 0.5 < _value(coordinator, "securefed_coordinator_last_round_accuracy") <= 1
    assert _value(coordinator, "securefed_coordinator_last_round_survivors") == 3
    assert _value(coordinator, "securefed_coordinator_last_round_attempts") == 2  # trained and evaluated
    assert _value(coordinator, "securefed_coordinator_aggregation_attempts", status="completed") == 2
    assert _value(coordinator, "securefed_coordinator_received_bytes_total") > 0
    assert _value(coordinator, "securefed_coordinator_sent_bytes_total") > 0
    for stage in STAGES:
        assert _value(coordinator, "securefed_coordinator_last_round_stage_seconds", stage=stage) >= 0, stage
    assert sum(coordinator["securefed_coordinator_stage"].values()) == 1  # exactly one state at a time

    def node_refused(name: str) -> dict:
        scraped = _scrape(ports[name])
        return scraped if (_value(scraped, "securefed_node_refusals_total", reason="too-many-rounds") or 0) >= 1 else {}

    for name in federation.names:
        node = federation.wait_until(
            lambda name=name: node_refused(name),
            budget,
            f"round 2's refusal in {name}'s metrics",
            must_live=("coordinator", name),
        )
        assert _value(node, "securefed_node_connected") == 1, name
        assert _value(node, "securefed_node_rounds_contributed_total") == 1, name
        assert _value(node, "securefed_node_evaluations_contributed_total") == 1, name
        assert _value(node, "securefed_node_last_training_seconds") > 0, name
        assert _value(node, "securefed_node_received_bytes_total") > _value(node, "securefed_node_sent_bytes_total") > 0
        assert _value(node, "securefed_node_epsilon_spent", task=federation.task["name"]) == 0  # no DP in this task
        info = node["securefed_node_info"]
        assert [dict(labels)["node"] for labels in info] == [name]

    shown = subprocess.run(
        [sys.executable, "-m", "securefed.cli", "status", "--config", str(configs["coordinator"]), "--history", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    (record,) = json.loads(shown.stdout)
    assert record["round"] == 1 and (record["attempts"], record["refusals"]) == (2, 0), record
    assert list(record["stage_durations"]) == list(STAGES), record
    assert sum(record["stage_durations"].values()) <= record["duration"] + 1e-6, record
    # The model went out to three nodes in RoundStart, their updates came back: both ways carry it.
    assert record["bytes_out"] > record["bytes_in"] > 0, record
    assert "metrics on http://127.0.0.1:" in federation.log("coordinator")
