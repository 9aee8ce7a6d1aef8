"""Crashes mid-round: a node killed with SIGKILL, the coordinator killed with SIGKILL and restarted.

"Mid-round" is made reliable rather than lucky: local training is slowed to
about a second per round (an MLP with many local epochs, see ``SLOW_MLP``).
A node advertises its round keys, reveals its graph randomness and deals its
shares first and trains afterwards, so a node is killed once the
coordinator's (debug) log shows that the share stage of the aggregation has
closed, i.e. while they all train. Each test then checks, from the store,
that the kill did land inside that round before asserting on the outcome.
A node that dies while it trains has simply dropped out at the masked-input
stage: the round goes on without it. (A node that dies between advertising
and revealing, a window of milliseconds, aborts the attempt naming it:
tests/unit/test_coordinator_recovery.py covers that case.)
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from securefed.federation.store import INTERRUPTED, CoordinatorStore
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
    """SIGKILL ``victim`` once every node of ``aggregation`` has dealt its shares (they now train)."""
    match = federation.wait_log(
        "coordinator", rf"aggregation {aggregation}: (share closed at|share deadline passed|advertise deadline passed|reveal deadline passed)",
        timeout=federation.deadlines["advertise"] + federation.deadlines["reveal"] + federation.deadlines["share"] + 30,
    )  # fmt: skip
    log = federation.log("coordinator")
    assert "closed" in match.group(1), f"not every node dealt its shares in time:\n{log[-3000:]}"
    assert federation.kill(victim) == -signal.SIGKILL


@pytest.mark.integration
def test_node_killed_mid_round_the_round_goes_on_without_it(launch, monkeypatch) -> None:
    """4 nodes, threshold 3 of 4: one node SIGKILLed while it trains (after dealing its shares).

    It drops out at the masked-input stage; the round completes from the other three in the same
    aggregation, and the later rounds carry on without it."""
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
    _kill_while_training(federation, victim, killed_aggregation)

    # The kill landed inside the round: it was not committed yet.
    assert all(row["round"] < killed_round for row in federation.rounds()), federation.diagnostics()

    assert federation.wait_coordinator_exit(timeout=federation.time_budget(rounds_total)) == 0, federation.diagnostics()
    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == list(range(1, rounds_total + 1)), federation.diagnostics()
    attempts = federation.attempts()
    assert [a for a in attempts if a["status"] == "aborted"] == [], attempts
    hit = rounds[killed_round - 1]
    # The round it died in was aggregated, in the same attempt, from the other three.
    assert hit["aggregation"] == killed_aggregation, (hit, attempts)
    assert hit["participants"] == 4 and sorted(hit["survivors"]) == sorted(set(federation.names) - {victim}), hit
    assert hit["accuracy"] is not None, hit
    # Later rounds carry on without it.
    for row in rounds[killed_round:]:
        assert victim not in row["survivors"] and len(row["survivors"]) == 3, row
        assert row["accuracy"] is not None, row
    # Its closed connection dropped it at once: the stage did not wait out its deadline (issue 12, item 7).
    log = federation.log("coordinator")
    assert f"node {victim} lost its connection in the masked_input stage" in log, log[-3000:]
    assert f"aggregation {killed_aggregation}: masked_input deadline passed" not in log, log[-3000:]
    status = federation.status()
    assert status["finished"] is True and status["completed_round"] == rounds_total, status
    assert victim not in status["connected_nodes"], status
    for name in federation.names:
        if name != victim:
            assert federation.alive(name), f"{name} died\n{federation.diagnostics()}"


@pytest.mark.integration
def test_node_killed_mid_round_and_restarted_the_task_still_finishes(launch, monkeypatch) -> None:
    """4 nodes and min_nodes = 4 (every round starts with all four): one node SIGKILLed while it trains
    in round 1, and restarted at once. Round 1 completes from the other three; round 2 runs with all
    four, the restarted node included."""
    rounds_total = 2
    federation = launch(n_nodes=4, rounds=rounds_total, evaluate=False, **SLOW_MLP)  # min_nodes = 4
    _start_with_stage_log(federation, monkeypatch)
    match = federation.wait_log("coordinator", _TRAIN_START.format(rounds=rounds_total, n=4), federation.time_budget(1))
    killed_round, killed_aggregation = int(match.group(1)), int(match.group(2))
    assert killed_round == 1, f"the first four-node training round was round {killed_round}, not 1"
    victim = federation.names[-1]
    _kill_while_training(federation, victim, killed_aggregation)
    assert federation.rounds() == [], "the kill did not land inside the first round"
    federation.start_node(victim)

    budget = federation.time_budget(rounds_total)
    coordinator = federation.processes["coordinator"]
    federation.wait_until(
        lambda: coordinator.poll() is not None, budget, f"the task to finish after {victim} was killed and restarted"
    )
    assert coordinator.returncode == 0, federation.diagnostics()
    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == list(range(1, rounds_total + 1)), federation.diagnostics()
    assert rounds[0]["aggregation"] == killed_aggregation and victim not in rounds[0]["survivors"], rounds[0]
    assert sorted(rounds[1]["survivors"]) == federation.names, rounds[1]


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
    assert interrupted == [{"aggregation": killed_aggregation, "round": 2, "phase": "train", "status": "running", "detail": ""}]
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
    # Round 2 was attempted twice (the restart marked the interrupted attempt aborted); every round completed once.
    assert train == [(1, "completed"), (2, "aborted"), (2, "completed"), (3, "completed")], attempts
    assert [a["detail"] for a in attempts if a["aggregation"] == killed_aggregation] == [INTERRUPTED], attempts
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
