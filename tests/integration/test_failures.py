"""Crashes mid-round: a node killed with SIGKILL, the coordinator killed with SIGKILL and restarted.

"Mid-round" is made reliable rather than lucky: local training is slowed to
about a second per round (an MLP with many local epochs, see ``SLOW_MLP``).
A node advertises its round keys first and trains afterwards, so a node is
killed once the coordinator's (debug) log shows that every node of the
aggregation has advertised, i.e. while they all train. Each test then checks,
from the store, that the kill did land inside that round before asserting on
the outcome.

Since the commit-reveal graph seed, a node that advertised keys and then
vanishes before revealing its graph randomness aborts the attempt at the
reveal stage, naming it (going on without it would let the coordinator choose
among graph seeds); the coordinator retries the round without it.
"""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest

from securefed.federation.store import CoordinatorStore
from tests.integration.conftest import SLOW_MLP

pytestmark = pytest.mark.integration

_TRAIN_START = r"round (\d+)/{rounds} train: aggregation (\d+) with {n} nodes"
_ADVERTISED = r"aggregation {aggregation}: advertise closed at"


def _start_with_stage_log(federation, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start the nodes, then a coordinator that logs when each stage closes (debug level)."""
    federation.start_nodes_ready()  # all of them are retrying their connection when the coordinator binds
    previous = os.environ.get("SECUREFED_LOG_LEVEL")
    monkeypatch.setenv("SECUREFED_LOG_LEVEL", "DEBUG")
    federation.start_coordinator()
    if previous is None:  # nodes started later (restarts) log as before
        monkeypatch.delenv("SECUREFED_LOG_LEVEL")
    else:
        monkeypatch.setenv("SECUREFED_LOG_LEVEL", previous)


def _kill_while_training(federation, victim: str, aggregation: int) -> None:
    """SIGKILL ``victim`` once every node of ``aggregation`` has advertised its keys (they now train)."""
    match = federation.wait_log(
        "coordinator", rf"aggregation {aggregation}: (advertise closed at|advertise deadline passed)",
        timeout=federation.deadlines["advertise"] + 30,
    )  # fmt: skip
    log = federation.log("coordinator")
    assert "closed" in match.group(1), f"not every node advertised in time:\n{log[-3000:]}"
    assert federation.kill(victim) == -signal.SIGKILL


@pytest.mark.integration
def test_node_killed_mid_round_round_is_retried_without_it(launch, monkeypatch) -> None:
    """4 nodes, threshold 3 of 4: one node SIGKILLed while it trains (after advertising its keys).

    The attempt aborts at the reveal stage naming it, the round is retried at once with the other three and
    completes, and the later rounds carry on without it. (Before the reveal stage existed the same round went
    on without the node; the abort and retry are by design.)"""
    rounds_total = 4
    federation = launch(n_nodes=4, rounds=rounds_total, min_nodes=3, **SLOW_MLP)
    _start_with_stage_log(federation, monkeypatch)

    # The first training round from round 2 on whose cohort is all four nodes (round 1 may start
    # with three if the fourth node is slower to come up).
    pattern = _TRAIN_START.format(rounds=rounds_total, n=4)
    offset = 0
    while True:
        match = federation.wait_log("coordinator", pattern, timeout=federation.time_budget(2), after=offset)
        offset = match.end()
        if int(match.group(1)) >= 2:
            break
    killed_round, killed_aggregation = int(match.group(1)), int(match.group(2))
    assert killed_round < rounds_total, "no four-node round left early enough to leave later rounds; see logs"
    previous = federation.rounds()[-1]  # round k-1 is committed before round k starts
    assert previous["round"] == killed_round - 1
    victim = sorted(previous["survivors"])[-1]  # a node that has been a working participant
    victim_id = federation.names.index(victim) + 1  # the cohort is every connected node, in name order
    _kill_while_training(federation, victim, killed_aggregation)

    # The kill landed inside the round: it was not committed yet.
    assert all(row["round"] < killed_round for row in federation.rounds()), federation.diagnostics()

    assert federation.wait_coordinator_exit(timeout=federation.time_budget(rounds_total)) == 0, federation.diagnostics()
    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == list(range(1, rounds_total + 1)), federation.diagnostics()
    attempts = federation.attempts()
    aborted = [a for a in attempts if a["status"] == "aborted"]
    # Exactly the attempt it died in aborted, at the reveal stage, naming it; nothing else did.
    assert [a["aggregation"] for a in aborted] == [killed_aggregation], attempts
    assert re.match(rf"reveal stage: nodes \[{victim_id}\] advertised keys but did not reveal", aborted[0]["detail"]), aborted
    assert f"node {victim} is left out of the retries of this round" in federation.log("coordinator")
    hit = rounds[killed_round - 1]
    # The round it died in was aggregated from the other three, in the retry.
    retry = [a for a in attempts if a["round"] == killed_round and a["phase"] == "train"]
    assert [a["aggregation"] for a in retry] == [killed_aggregation, hit["aggregation"]], attempts
    assert hit["participants"] == 3 and sorted(hit["survivors"]) == sorted(set(federation.names) - {victim}), hit
    assert hit["accuracy"] is not None, hit
    # Later rounds carry on without it.
    for row in rounds[killed_round:]:
        assert victim not in row["survivors"] and len(row["survivors"]) == 3, row
        assert row["accuracy"] is not None, row
    assert "reveal deadline passed" in federation.log("coordinator")
    status = federation.status()
    assert status["finished"] is True and status["completed_round"] == rounds_total, status
    assert victim not in status["connected_nodes"], status
    for name in federation.names:
        if name != victim:
            assert federation.alive(name), f"{name} died\n{federation.diagnostics()}"


@pytest.mark.integration
def test_node_killed_mid_round_and_restarted_the_task_still_finishes(launch, monkeypatch) -> None:
    """4 nodes and min_nodes = 4 (every round needs all four): one node SIGKILLed while it trains, after it
    advertised its keys, and restarted at once. Its attempt aborts at the reveal stage naming it; the task
    must still finish with all four, the restarted node included.

    Liveness under the new protocol: the coordinator leaves a reveal-stage culprit out of the round's
    retries, so a crash of one honest node must not stall a task whose rounds need every node."""
    rounds_total = 1
    federation = launch(n_nodes=4, rounds=rounds_total, evaluate=False, **SLOW_MLP)  # min_nodes = 4
    _start_with_stage_log(federation, monkeypatch)
    match = federation.wait_log("coordinator", _TRAIN_START.format(rounds=rounds_total, n=4), federation.time_budget(1))
    killed_round, killed_aggregation = int(match.group(1)), int(match.group(2))
    victim = federation.names[-1]
    _kill_while_training(federation, victim, killed_aggregation)
    assert federation.rounds() == [], "the kill did not land inside the first round"
    federation.start_node(victim)

    budget = federation.time_budget(rounds_total)
    coordinator = federation.processes["coordinator"]
    federation.wait_until(
        lambda: coordinator.poll() is not None,
        budget,
        f"the task to finish after {victim} was killed in aggregation {killed_aggregation} and restarted (a "
        f"coordinator that logs '{victim} is left out of the retries' and then 'waiting for nodes: 3 usable "
        f"connected, min_nodes is 4' while all four are connected has stalled for good)",
    )
    assert coordinator.returncode == 0, federation.diagnostics()
    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == list(range(1, rounds_total + 1)), federation.diagnostics()
    for row in rounds:
        assert sorted(row["survivors"]) == federation.names, row
    killed = [a for a in federation.attempts() if a["aggregation"] == killed_aggregation]
    assert killed[0]["round"] == killed_round and killed[0]["status"] == "aborted", killed
    assert killed[0]["detail"].startswith("reveal stage: nodes [4]"), killed


@pytest.mark.integration
def test_coordinator_killed_mid_round_resumes_after_restart(launch) -> None:
    """SIGKILL the coordinator while round 2 trains, restart it: rounds 1..R each once, round 1 untouched."""
    rounds_total = 3
    federation = launch(n_nodes=3, rounds=rounds_total, min_nodes=3, **SLOW_MLP)
    federation.start_coordinator()
    federation.start_nodes()

    match = federation.wait_log(
        "coordinator", _TRAIN_START.format(rounds=rounds_total, n=3).replace(r"(\d+)/", "2/", 1), federation.time_budget(2)
    )
    killed_aggregation = int(match.group(1))
    assert federation.kill("coordinator") == -signal.SIGKILL

    before = federation.rounds()
    assert [row["round"] for row in before] == [1], f"the kill did not land inside round 2: {before}"
    first = before[0]
    assert first["accuracy"] is not None
    first_model = federation.model(1)
    assert first_model is not None
    interrupted = [a for a in federation.attempts() if a["aggregation"] == killed_aggregation]
    assert interrupted == [
        {"aggregation": killed_aggregation, "round": 2, "phase": "train", "status": "running", "detail": ""}
    ]
    for name in federation.names:
        assert federation.alive(name), f"{name} died with the coordinator\n{federation.diagnostics()}"

    log_size = len(federation.log("coordinator"))
    restarted_at = time.time()
    federation.start_coordinator()  # same config, same state folder; the nodes reconnect by themselves
    federation.wait_log("coordinator", r"resuming after round 1 of 3 \(train next\)", timeout=30, after=log_size)
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(2)) == 0, federation.diagnostics()

    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == [1, 2, 3], federation.diagnostics()
    assert rounds[0] == first, "the round completed before the crash was rewritten"
    for row in rounds[1:]:
        assert row["completed_at"] > restarted_at, row  # run by the restarted coordinator
        assert row["aggregation"] > killed_aggregation, row  # with a fresh aggregation id
        assert sorted(row["survivors"]) == federation.names and row["participants"] == 3, row
        assert row["accuracy"] is not None, row
    attempts = federation.attempts()
    train = [(a["round"], a["status"]) for a in attempts if a["phase"] == "train"]
    # Round 2 was attempted twice (the interrupted attempt stays as it was); every round completed exactly once.
    assert train == [(1, "completed"), (2, "running"), (2, "completed"), (3, "completed")], attempts
    assert len({a["aggregation"] for a in attempts}) == len(attempts)

    store = CoordinatorStore(federation.fed.state_path)
    try:
        latest_round, _, _ = store.latest_model()
        history = store.rounds()
    finally:
        store.close()
    assert latest_round == 3
    assert [record.round for record in history] == [1, 2, 3]
    assert np.array_equal(federation.model(1), first_model), "round 1's model changed across the restart"
    assert "resuming after round 1 of 3" in federation.log("coordinator")
    assert federation.status()["finished"] is True
