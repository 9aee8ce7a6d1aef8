"""Crashes mid-round: a node killed with SIGKILL, the coordinator killed with SIGKILL and restarted.

"Mid-round" is made reliable rather than lucky: local training is slowed to
about a second per round (an MLP with many local epochs, see ``SLOW_MLP``) and
the kill is sent as soon as the coordinator's log shows that the round's
training aggregation has started, i.e. while the nodes are still training on
the ``RoundStart`` it just sent them. Each test then checks, from the store,
that the kill did land inside that round before asserting on the outcome.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from securefed.federation.store import CoordinatorStore
from tests.integration.conftest import SLOW_MLP

pytestmark = pytest.mark.integration

_TRAIN_START = r"round (\d+)/{rounds} train: aggregation (\d+) with {n} nodes"


@pytest.mark.integration
def test_node_killed_mid_round_round_completes_without_it(launch) -> None:
    """4 nodes, threshold 3 of 4: one node SIGKILLed while training; its round and the later ones go on."""
    rounds_total = 4
    federation = launch(n_nodes=4, rounds=rounds_total, min_nodes=3, **SLOW_MLP)
    federation.start_nodes_ready()  # all four are retrying their connection when the coordinator binds
    federation.start_coordinator()

    # The first training round from round 2 on whose cohort is all four nodes (round 1 may start
    # with three if the fourth node is slower to come up).
    pattern = _TRAIN_START.format(rounds=rounds_total, n=4)
    offset = 0
    while True:
        match = federation.wait_log("coordinator", pattern, timeout=90, after=offset)
        offset = match.end()
        if int(match.group(1)) >= 2:
            break
    killed_round, killed_aggregation = int(match.group(1)), int(match.group(2))
    assert killed_round < rounds_total, "no four-node round left early enough to leave later rounds; see logs"
    previous = federation.rounds()[-1]  # round k-1 is committed before round k starts
    assert previous["round"] == killed_round - 1
    victim = sorted(previous["survivors"])[-1]  # a node that has been a working participant
    assert federation.kill(victim) == -signal.SIGKILL

    # The kill landed inside the round: it was not committed yet.
    assert all(row["round"] < killed_round for row in federation.rounds()), federation.diagnostics()

    assert federation.wait_coordinator_exit(timeout=120) == 0, federation.diagnostics()
    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == list(range(1, rounds_total + 1)), federation.diagnostics()
    hit = rounds[killed_round - 1]
    # The round it died in was aggregated from the other three, in the same aggregation (no abort/retry).
    assert hit["aggregation"] == killed_aggregation, (hit, federation.attempts())
    assert hit["participants"] == 4, hit
    assert victim not in hit["survivors"] and len(hit["survivors"]) == 3, hit
    assert hit["accuracy"] is not None, hit
    # Later rounds carry on without it.
    for row in rounds[killed_round:]:
        assert victim not in row["survivors"] and len(row["survivors"]) == 3, row
        assert row["accuracy"] is not None, row
    assert not [a for a in federation.attempts() if a["status"] == "aborted"], federation.attempts()
    assert "advertise deadline passed" in federation.log("coordinator")
    status = federation.status()
    assert status["finished"] is True and status["completed_round"] == rounds_total, status
    assert victim not in status["connected_nodes"], status
    for name in federation.names:
        if name != victim:
            assert federation.alive(name), f"{name} died\n{federation.diagnostics()}"


@pytest.mark.integration
def test_coordinator_killed_mid_round_resumes_after_restart(launch) -> None:
    """SIGKILL the coordinator while round 2 trains, restart it: rounds 1..R each once, round 1 untouched."""
    rounds_total = 3
    federation = launch(n_nodes=3, rounds=rounds_total, min_nodes=3, **SLOW_MLP)
    federation.start_coordinator()
    federation.start_nodes()

    match = federation.wait_log("coordinator", _TRAIN_START.format(rounds=rounds_total, n=3).replace(r"(\d+)/", "2/", 1), 90)
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
    assert federation.wait_coordinator_exit(timeout=120) == 0, federation.diagnostics()

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
