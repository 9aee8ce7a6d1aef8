"""The coordinator's liveness and recovery under the release guard, with real Nodes in one thread.

Nodes never contribute twice to a round they released (rerun protection), so what a coordinator
does when an attempt fails matters: it must not stall on an honest crash, must finish an
unmasking a restart interrupted by collecting the same shares again, and must not spin when
released nodes refuse a retry.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from securefed.federation.coordinator import PRESENCE_TIMEOUT
from securefed.federation.messages import Refusal
from securefed.secagg.messages import MaskedInput, SeedReveal, ShareKeys, UnmaskRequest, UnmaskShares
from tests.inprocess import InProcessFederation

NAMES = ["site-1", "site-2", "site-3", "site-4"]


@pytest.fixture
def federation(tmp_path: Path):
    made: list[InProcessFederation] = []

    def make(**options) -> InProcessFederation:
        made.append(InProcessFederation(tmp_path, NAMES, **options))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _rounds(f: InProcessFederation) -> list[int]:
    return [r.round for r in f.store.rounds()]


def _lose_first_reveal_of(victim: str):
    """A drop rule: the victim's first graph-randomness reveal never arrives (it crashed right after advertising)."""
    lost = {"done": False}

    def drop(direction: str, node: str, envelope) -> bool:
        if direction == "up" and node == victim and isinstance(envelope.body, SeedReveal) and not lost["done"]:
            lost["done"] = True
            return True
        return False

    return drop


def test_a_node_that_never_reveals_aborts_the_attempt_and_the_retry_runs_without_it(federation) -> None:
    f = federation(rounds=1, min_nodes=3)
    f.hub.drop = _lose_first_reveal_of("site-4")
    f.run_until(lambda f: f.coordinator.finished)
    (record,) = f.store.rounds()
    assert "site-4" not in record.survivors and len(record.survivors) == 3
    attempts = f.store._db.execute("SELECT status, detail FROM attempts ORDER BY aggregation").fetchall()
    assert attempts[0][0] == "aborted" and attempts[0][1].startswith("reveal stage: nodes [4]")
    assert attempts[1][0] == "completed"


def test_a_stalled_node_is_taken_back_when_the_round_cannot_run_without_it(federation) -> None:
    """min_nodes = 4: leaving out the node that missed its reveal would stall the task for good."""
    f = federation(rounds=1)
    f.hub.drop = _lose_first_reveal_of("site-4")
    f.run_until(lambda f: f.coordinator.finished)
    (record,) = f.store.rounds()
    assert sorted(record.survivors) == NAMES


def test_a_restart_during_unmasking_finishes_the_round_with_the_same_shares(federation) -> None:
    f = federation(rounds=2)
    seen: dict[str, object] = {}

    def hold_unmask_answers(direction: str, node: str, envelope) -> bool:
        # The coordinator dies after sending the unmask requests: the answers never reach it.
        if direction == "up" and isinstance(envelope.body, UnmaskShares) and not seen.get("restarted"):
            seen.setdefault("first", {})[node] = envelope.body
            return True
        return False

    f.hub.drop = hold_unmask_answers
    f.run_until(lambda f: len(seen.get("first", {})) == len(NAMES))
    assert _rounds(f) == []
    seen["restarted"] = True
    f.restart_coordinator()
    assert f.coordinator.current is not None and f.coordinator.current.stage.value == "unmask"
    f.run_until(lambda f: f.coordinator.finished)
    assert _rounds(f) == [1, 2]
    first = f.store.rounds()[0]
    assert sorted(first.survivors) == NAMES
    # Each node answered again with exactly the shares it had sent, and refused nothing.
    for name in NAMES:
        answers = [body for aggregation, body in f.said(name, UnmaskShares) if aggregation == first.aggregation]
        assert len(answers) == 2 and answers[0] == answers[1] == seen["first"][name]
        assert not [r for _, r in f.said(name, Refusal) if r.reason == "rerun"]


def test_released_nodes_refusing_a_retry_do_not_make_the_coordinator_spin(federation) -> None:
    """An attempt that fails after the shares left cannot be retried: the coordinator backs off and says why."""
    f = federation(rounds=1)

    def drop_all_unmask_answers(direction: str, node: str, envelope) -> bool:
        return direction == "up" and isinstance(envelope.body, UnmaskShares)

    f.hub.drop = drop_all_unmask_answers
    steps = 3000  # 750 simulated seconds
    for _ in range(steps):
        f.step()
    attempts = f.store._db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    refusals = [r for name in NAMES for _, r in f.said(name, Refusal) if r.reason == "rerun"]
    assert refusals, "released nodes must refuse the retry"
    assert attempts <= 15, f"{attempts} attempts in {steps * 0.25:.0f} s: the coordinator retried in a tight loop"
    assert _rounds(f) == []


def test_a_node_answers_an_unmask_request_again_only_for_the_same_survivors(federation) -> None:
    f = federation(rounds=1)
    f.run_until(lambda f: f.coordinator.finished)
    (record,) = f.store.rounds()
    node = f.nodes["site-1"]
    requests = [e.body for e in f.hub.delivered["site-1"] if isinstance(e.body, UnmaskRequest)]
    assert requests
    before = len(f.said("site-1", UnmaskShares))
    node._on_protocol_message(record.aggregation, requests[0])
    assert len(f.said("site-1", UnmaskShares)) == before + 1
    other = UnmaskRequest(requests[0].survivors[:-1], requests[0].dropped, requests[0].signatures)
    node._on_protocol_message(record.aggregation, other)
    assert len(f.said("site-1", UnmaskShares)) == before + 1  # a different list gets nothing


def test_an_evaluation_that_can_no_longer_run_is_skipped_and_training_goes_on(federation) -> None:
    f = federation(rounds=2, evaluate=True)
    evaluation_ids: set[int] = set()

    def drop_first_evaluation_answers(direction: str, node: str, envelope) -> bool:
        if direction == "down" and type(envelope.body).__name__ == "RoundStart":
            if envelope.body.spec["phase"] == "evaluate" and envelope.body.spec["round"] == 1:
                evaluation_ids.add(envelope.aggregation)
        return (
            direction == "up"
            and isinstance(envelope.body, UnmaskShares)
            and envelope.aggregation == min(evaluation_ids, default=-1)
        )

    f.hub.drop = drop_first_evaluation_answers
    f.run_until(lambda f: f.coordinator.finished)
    records = f.store.rounds()
    assert [r.round for r in records] == [1, 2]
    assert records[0].accuracy is None  # its evaluation was released once and could not be run again
    assert records[1].accuracy is not None


# --- dead nodes cost seconds: a closed connection is a dropout at once ------------------------------


def _kill_after(f: InProcessFederation, victim: str, kind: type) -> dict:
    """Kill ``victim`` right after it sends its first ``kind`` (e.g. ShareKeys: it would train next)."""
    state: dict = {}

    def watch(direction: str, node: str, envelope) -> bool:
        if direction == "up" and node == victim and isinstance(envelope.body, kind) and "at" not in state:
            state["at"] = f.clock.now
            state["aggregation"] = envelope.aggregation
            f.kill(victim)
        return False

    f.hub.drop = watch
    return state


@pytest.mark.parametrize("reports", [True, False], ids=["connection-events", "deadline-only"])
def test_a_node_killed_while_it_trains_costs_no_stage_deadline(federation, reports: bool) -> None:
    """4 nodes, threshold 3: site-4 dies after dealing its shares. With connection events the round completes
    from the other three, in the same aggregation, well before the masked-input deadline; without them (the
    control) the coordinator has to wait that deadline out."""
    f = federation(rounds=1, min_nodes=3, deadline=30.0, reports_connections=reports)
    killed = _kill_after(f, "site-4", ShareKeys)
    f.run_until(lambda f: f.coordinator.finished)
    (record,) = f.store.rounds()
    assert record.aggregation == killed["aggregation"] and sorted(record.survivors) == NAMES[:3]
    waited = f.clock.now - killed["at"]
    if reports:
        assert waited < 5.0, f"the round took {waited:.2f} s after the kill (deadline 30 s)"
    else:
        assert waited >= 30.0


def test_a_node_killed_after_its_masked_input_is_not_waited_for_at_later_stages(federation) -> None:
    """It is in the survivor list (its input is in the sum) but signs nothing and reveals nothing: the
    consistency and unmasking stages go on without waiting for it."""
    f = federation(rounds=1, min_nodes=3, deadline=30.0)
    killed = _kill_after(f, "site-4", MaskedInput)
    f.run_until(lambda f: f.coordinator.finished)
    (record,) = f.store.rounds()
    assert sorted(record.survivors) == NAMES  # its masked input made it in
    assert f.clock.now - killed["at"] < 5.0


def test_a_disconnected_node_is_not_picked_for_a_cohort(federation) -> None:
    """site-2 greets and dies before the coordinator reads its greeting: it is not counted as present (its
    connection is known to be closed), so the round starts with the other three and never waits for it."""
    f = federation(rounds=1, min_nodes=3, deadline=30.0)
    for node in f.nodes.values():
        node.step(0)  # every node greets
    f.kill("site-2")
    f.step()
    assert f.coordinator.connected_nodes() == ["site-1", "site-3", "site-4"]  # at once, not PRESENCE_TIMEOUT later
    f.run_until(lambda f: f.coordinator.finished)
    (record,) = f.store.rounds()
    assert record.participants == 3 and "site-2" not in record.survivors
    assert [a[0] for a in f.store._db.execute("SELECT status FROM attempts").fetchall()] == ["completed"]


def test_a_node_that_trains_for_long_without_greeting_is_not_dropped(federation) -> None:
    """Nodes train inside their loop and greet no one meanwhile; only a closed connection drops a node.
    site-4 trains for three times PRESENCE_TIMEOUT (it is not stepped, its connection stays open)."""
    f = federation(rounds=1, deadline=60.0)  # min_nodes = 4
    state = {}

    def stall(direction: str, node: str, envelope) -> bool:
        if direction == "up" and node == "site-4" and isinstance(envelope.body, ShareKeys) and "at" not in state:
            state["at"] = f.clock.now
        return False

    f.hub.drop = stall
    f.run_until(lambda f: "at" in state)
    f.killed.add("site-4")  # not stepped: "training"; the hub reports no disconnection
    while f.clock.now - state["at"] < 3 * PRESENCE_TIMEOUT:
        f.step()
    assert "site-4" not in f.coordinator.connected_nodes()  # no greeting for a while...
    assert f.coordinator.current is not None and "site-4" not in f.coordinator.current.gone
    f.killed.discard("site-4")  # ...done training
    f.run_until(lambda f: f.coordinator.finished)
    (record,) = f.store.rounds()
    assert sorted(record.survivors) == NAMES
