"""Distributed DP over the real daemons: the epsilon history, the nodes' ledgers, kill -9, a spent budget, a lost
ledger.

Uses the ``launch`` fixture of ``tests/integration/conftest.py`` (a
LocalFederation in ``tmp_path``, processes tracked and stopped, bounded
waits). A node's ledger is ``<site>/state/ledger.sqlite``; it is read
read-only while the node runs and through :class:`PrivacyLedger` after.
"""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from securefed.audit.log import AuditLog
from securefed.crypto.identity import SigningKey
from securefed.dp.accountant import SkellamRelease, skellam_epsilon
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.dp.mechanism import plan_skellam
from securefed.federation.node import NodeState
from securefed.learning.models import make_adapter
from securefed.secagg.bounds import resolve_colluders
from tests.integration.conftest import SLOW_MLP

pytestmark = pytest.mark.integration

DELTA = 1e-5
DP = {"epsilon": 4.0, "delta": DELTA, "clip_norm": 0.5}


def _ledger_rows(federation, name: str) -> list[tuple[str, int, int, float]]:
    """(task, round, aggregation, epsilon_task) of every charge in a node's ledger, read-only."""
    path = federation.root / name / "state" / "ledger.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT task, round, aggregation, epsilon_task FROM charges ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # created but schema not written yet
        return []
    finally:
        db.close()


def _dp_rounds(federation) -> list[dict]:
    rows = federation.query("SELECT round, aggregation, participants, survivors, epsilon FROM rounds ORDER BY round")
    return [{"round": r, "aggregation": a, "participants": p, "survivors": json.loads(s), "epsilon": e} for r, a, p, s, e in rows]


def _set_policy(federation, name: str, key: str, value: float) -> None:
    """Give one site a different [policy] value than the others (LocalFederation writes one policy for all)."""
    path = federation.fed.node_configs[name]
    text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value!r}", path.read_text())
    assert count == 1, text
    path.write_text(text)


def _plan(federation, n: int, threshold: int):
    """The coordinator's plan for a cohort of ``n``: noise sized for t - c honest survivors."""
    digits = federation.digits.dataset
    dimension = make_adapter(federation.task["model"], digits.n_features, digits.classes).parameter_count
    honest = threshold - resolve_colluders(federation.task.get("max_colluders"), len(federation.names))
    return plan_skellam(DP["epsilon"], DELTA, federation.task["rounds"], DP["clip_norm"], dimension, n, honest)


def test_dp_task_over_daemons_records_epsilon_and_every_nodes_ledger(launch) -> None:
    """4 nodes, 3 DP rounds: epsilon history increasing and within the target, one ledger row per round joined,
    and ``securefed node ledger`` shows the rows and what is left."""
    federation = launch(n_nodes=4, rounds=3, dp=dict(DP), evaluate=False, policy={"max_epsilon": 4.0, "delta": DELTA})
    federation.start_coordinator()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(3)) == 0, federation.diagnostics()

    rounds = _dp_rounds(federation)
    assert [r["round"] for r in rounds] == [1, 2, 3], federation.diagnostics()
    epsilons = [r["epsilon"] for r in rounds]
    assert all(e is not None for e in epsilons), rounds
    assert all(a < b for a, b in zip(epsilons, epsilons[1:])) and epsilons[-1] <= DP["epsilon"], epsilons
    plan = _plan(federation, 4, 3)
    assert plan.assumed_survivors == 2  # t = 3, c = 1
    assert epsilons == pytest.approx([plan.epsilon(k, DELTA) for k in (1, 2, 3)], rel=1e-9)
    # The history is the composition of the releases the coordinator recorded, round by round.
    recorded = [SkellamRelease(v, l2, l1) for v, l2, l1 in federation.query(
        "SELECT variance, l2_sensitivity, l1_sensitivity FROM dp_releases ORDER BY round"
    )]  # fmt: skip
    assert recorded == [plan.release] * 3
    assert epsilons == pytest.approx([skellam_epsilon(recorded[:k], DELTA) for k in (1, 2, 3)], rel=1e-12)
    assert all(a["status"] == "completed" for a in federation.attempts()), federation.attempts()
    task = federation.task["name"]
    for name in federation.names:
        joined = [(r["round"], r["aggregation"]) for r in rounds if name in r["survivors"]]
        assert joined, f"{name} took part in no round: {rounds}"
        rows = _ledger_rows(federation, name)
        assert [(t, rnd, agg) for t, rnd, agg, _ in rows] == [(task, rnd, agg) for rnd, agg in joined], (name, rows)
        # The node's own accounting (its delta, its rows) agrees with the coordinator's history.
        assert rows[-1][3] == pytest.approx(plan.epsilon(len(rows), DELTA), rel=1e-9)
        assert rows[-1][3] <= 4.0

    config = federation.fed.node_configs["site-2"]
    shown = subprocess.run(
        [sys.executable, "-m", "securefed.cli", "node", "ledger", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    rows = _ledger_rows(federation, "site-2")
    for _, rnd, agg, eps in rows:
        assert re.search(rf"^{re.escape(task[:24])}\s+{rnd}\s+{agg}\s+\S+\s+{eps:.3f}\s", out, re.M), out
    spent = rows[-1][3]
    assert f"spent {spent:.3f} of 4 (remaining {4.0 - spent:.3f})" in out, out


def test_node_whose_budget_is_below_one_round_refuses_every_round_and_the_task_goes_on(launch) -> None:
    federation = launch(n_nodes=4, rounds=2, dp=dict(DP), evaluate=False, policy={"max_epsilon": 4.0, "delta": DELTA})
    plan = _plan(federation, 4, 3)
    one_round = plan.epsilon(1, DELTA)
    _set_policy(federation, "site-4", "max_epsilon", round(one_round / 2, 3))
    federation.start_coordinator()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(2)) == 0, federation.diagnostics()

    rounds = _dp_rounds(federation)
    assert [r["round"] for r in rounds] == [1, 2], federation.diagnostics()
    for r in rounds:
        assert sorted(r["survivors"]) == ["site-1", "site-2", "site-3"], r
        assert r["participants"] == 4, r  # it was asked
    refusals = federation.query("SELECT aggregation, node, reason, detail FROM refusals ORDER BY aggregation")
    assert [(a, n, reason) for a, n, reason, _ in refusals] == [(r["aggregation"], "site-4", "budget-exhausted") for r in rounds]
    for *_, detail in refusals:
        assert f"limit of {round(one_round / 2, 3):g}" in detail, detail
    assert _ledger_rows(federation, "site-4") == []
    assert re.search(r"refused aggregation \d+: budget-exhausted", federation.log("site-4")), federation.log("site-4")[-2000:]
    for name in ("site-1", "site-2", "site-3"):
        assert len(_ledger_rows(federation, name)) == 2


AUDIT_CRASH_WINDOW = (
    "a SIGKILL between appending an audit receipt and checkpointing the head leaves the log one valid, signed "
    "entry ahead of the recorded head; the node must accept that on restart and re-record the head"
)


def _bricked(federation) -> list[str]:
    """Nodes whose restarted daemon exited because its audit log failed verification."""
    return [
        name
        for name in federation.names
        if (process := federation.processes.get(name)) is not None
        and process.poll() is not None
        and "fails verification" in federation.log(name)
    ]


def _check_survivors_charged(federation, rounds: list[dict], kills: list[dict]) -> None:
    task = federation.task["name"]
    for r in rounds:
        for name in r["survivors"]:
            charged = {agg for t, _, agg, _ in _ledger_rows(federation, name) if t == task}
            assert r["aggregation"] in charged, (
                f"{name} is among the survivors of aggregation {r['aggregation']} (round {r['round']}) but its "
                f"ledger has no row for it: {_ledger_rows(federation, name)}; kills: {kills}"
            )
    for name in federation.names:
        aggregations = [agg for _, _, agg, _ in _ledger_rows(federation, name)]
        assert len(aggregations) == len(set(aggregations)), (name, aggregations)
    for k in kills:
        charged = k["aggregation"] in {agg for _, _, agg, _ in _ledger_rows(federation, k["victim"])}
        if k["moment"] == "after-charge":
            assert charged, k


def test_kill_9_during_rounds_never_leaves_spent_epsilon_unrecorded(launch) -> None:
    """SIGKILL a node in one round after another (four kills, each in a different round), alternately the moment
    its log says it has charged its ledger (about when its masked input leaves) and at a random moment while the
    round trains, restarting it at once. Afterwards, every node the coordinator counted among a round's survivors
    has a ledger row for that very aggregation, and no ledger holds a row twice.

    Local training is slow on purpose (an MLP with many epochs, about half a second per round) so that the
    random kills land inside the round; the random moment is drawn from the training time measured on this
    machine. t = 3 of 4: a node killed right after charging is usually still counted (its masked input made
    it), which is the case this is about. A node killed while it trains has dealt its shares and drops out
    at the masked-input stage; the round goes on without it, at once (its connection closed). min_nodes is 4,
    so the next round waits for the restarted node (a dropped node costs seconds, less than a restart: with
    min_nodes 3 the remaining rounds would run without it and leave too few four-node rounds to kill in).
    A kill can spill into the next round (the round ended just before it), so the next kill waits for the
    round after that: two kills never hit one round.
    (Whether the charge precedes the send is checked exactly, in-process, in tests/unit/test_node_dp_policy.py.)

    A kill can land between a node appending an audit receipt and checkpointing the log's head; the node must
    still restart (test_node_restarts_after_a_crash_between_audit_append_and_head_checkpoint pins that case).
    """
    rng = random.Random(20240611)
    rounds_total = 9
    federation = launch(
        n_nodes=4, rounds=rounds_total, min_nodes=4, dp=dict(DP), evaluate=False,
        policy={"max_epsilon": 8.0, "delta": DELTA}, **SLOW_MLP,
    )  # fmt: skip
    federation.start_nodes()
    federation.start_coordinator()
    coordinator = federation.processes["coordinator"]
    kills: list[dict] = []
    offset = 0
    start_pattern = re.compile(rf"round (\d+)/{rounds_total} train: aggregation (\d+) with 4 nodes")
    per_round = federation.time_budget(1)

    def wait_for(name: str, pattern: re.Pattern, after: int, what: str):
        return federation.wait_until(
            lambda: pattern.search(federation.log(name), after) or _bricked(federation), per_round, what, interval=0.02
        )

    next_round = 1
    for index, victim in enumerate(["site-1", "site-2", "site-3", "site-4"]):
        match = None
        while match is None:  # the next four-node round start, from round next_round on
            found = wait_for("coordinator", start_pattern, offset, f"a four-node round {next_round} or later to start")
            if isinstance(found, list):
                break
            offset = found.end()
            match = found if int(found.group(1)) >= next_round else None
        if match is None:
            break
        round_number, aggregation = int(match.group(1)), int(match.group(2))
        if round_number >= rounds_total:
            break  # leave the last round alone
        if index % 2 == 0:
            charged = re.compile(rf"aggregation {aggregation}: charged the privacy ledger")
            if isinstance(wait_for(victim, charged, 0, f"{victim} to charge"), list):
                break
            moment = "after-charge"
        else:
            time.sleep(rng.uniform(0.1, 0.9) * federation.training_time)  # while the cohort trains
            moment = "random"
        completed = [r["aggregation"] for r in _dp_rounds(federation)]
        federation.kill(victim)
        kills.append(
            {"victim": victim, "moment": moment, "aggregation": aggregation, "done-before-kill": aggregation in completed}
        )
        federation.start_node(victim)
        next_round = round_number + 2

    federation.wait_until(
        lambda: coordinator.poll() is not None or _bricked(federation),
        federation.time_budget(rounds_total, stalls=len(kills)),
        "the task to finish",
    )
    bricked = _bricked(federation)
    assert not bricked, f"{bricked} could not restart after kill -9 (audit-log crash window): {federation.diagnostics()}"
    assert federation.wait_coordinator_exit(timeout=10) == 0, f"kills: {kills}\n{federation.diagnostics()}"
    rounds = _dp_rounds(federation)
    assert [r["round"] for r in rounds] == list(range(1, rounds_total + 1)), federation.diagnostics()
    assert len(kills) >= 3, f"only {len(kills)} kills landed before the last round: {kills}; rounds: {rounds}"
    assert len([k for k in kills if not k["done-before-kill"]]) >= 2, f"too few kills landed inside their round: {kills}"
    _check_survivors_charged(federation, rounds, kills)
    task = federation.task["name"]
    for name in federation.names:
        ledger = PrivacyLedger(federation.root / name / "state" / "ledger.sqlite", Budget(8.0, 8.0))
        try:
            assert ledger.spent(task) <= 8.0
        finally:
            ledger.close()
    counted = [k for k in kills if any(k["victim"] in r["survivors"] and r["aggregation"] == k["aggregation"] for r in rounds)]
    print(f"kills: {kills}; killed yet counted among the survivors: {counted}")
    assert counted, f"no node was killed after its masked input had left, so the invariant was not put to the test: {kills}"


def test_node_restarts_after_a_crash_between_audit_append_and_head_checkpoint(launch) -> None:
    """The state a SIGKILL leaves between AuditLog.append's fsync and the head checkpoint, made on purpose."""
    federation = launch(n_nodes=3, rounds=1, dp=dict(DP), evaluate=False, policy={"max_epsilon": 4.0, "delta": DELTA})
    name = "site-1"
    state_dir = federation.root / name / "state"
    identity = SigningKey.load(federation.root / name / "identity.pem")
    state = NodeState(state_dir / "node.sqlite")
    try:
        AuditLog(state_dir / "audit.log", identity, on_append=state.set_audit_head).append({"aggregation": 1})
        AuditLog(state_dir / "audit.log", identity).append({"aggregation": 2})  # fsynced; the head not yet recorded
    finally:
        state.close()
    process = federation.start_node(name)
    federation.wait_until(lambda: "connecting to" in federation.log(name) or process.poll() is not None, 30, f"{name} to start")
    assert process.poll() is None and "connecting to" in federation.log(name), federation.log(name)[-1500:]


def test_a_deleted_ledger_stops_the_node_daemon_until_rebuilt(launch) -> None:
    """Issue 10, finding 5, over the real daemons: after a DP task, a site's ledger.sqlite is deleted. The node
    daemon refuses to start (its signed audit log records DP releases the ledger lacks) and names
    ``securefed node ledger --config ... --rebuild``; that command puts the rows back, so the budget the site
    shows is what it was, and the daemon then starts."""
    federation = launch(n_nodes=3, rounds=2, dp=dict(DP), evaluate=False, policy={"max_epsilon": 4.0, "delta": DELTA})
    federation.start_coordinator()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(2)) == 0, federation.diagnostics()
    name, task = "site-2", federation.task["name"]
    state = federation.root / name / "state"
    # The closing receipt of an aggregation is written when the node's part in it ends.
    federation.wait_until(
        lambda: (state / "audit.log").read_text().count('"outcome":"completed"') == 2,
        30,
        f"{name}'s audit log to record both releases",
        must_live=(name,),
    )
    federation.kill(name, signal.SIGTERM)
    before = _ledger_rows(federation, name)
    assert len(before) == 2
    ledger = PrivacyLedger(state / "ledger.sqlite", Budget(4.0, 4.0, DELTA))
    try:
        spent = ledger.spent(task)
    finally:
        ledger.close()
    for suffix in ("", "-wal", "-shm"):
        (state / f"ledger.sqlite{suffix}").unlink(missing_ok=True)

    config = federation.fed.node_configs[name]
    offset = len(federation.log(name))
    process = federation.start_node(name)
    federation.wait_until(
        lambda: process.poll() is not None or "connecting to" in federation.log(name)[offset:],
        60,
        f"{name} to refuse to start",
        must_live=(),
    )
    said = federation.log(name)[offset:]
    assert process.poll() is not None, f"{name} started without its ledger (the budget silently reset): {said[-1500:]}"
    assert process.returncode != 0, said
    assert "lacks 2 DP release(s)" in said and f"securefed node ledger --config {config} --rebuild" in said, said

    rebuilt = subprocess.run(
        [sys.executable, "-m", "securefed.cli", "node", "ledger", "--config", str(config), "--rebuild"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt 2 ledger row(s)" in rebuilt.stdout, rebuilt.stdout
    after = _ledger_rows(federation, name)
    assert [row[:3] for row in after] == [row[:3] for row in before]
    assert [row[3] for row in after] == pytest.approx([row[3] for row in before], rel=1e-12)
    ledger = PrivacyLedger(state / "ledger.sqlite", Budget(4.0, 4.0, DELTA))
    try:
        assert ledger.spent(task) == pytest.approx(spent, rel=1e-12)
    finally:
        ledger.close()

    offset = len(federation.log(name))
    process = federation.start_node(name)
    federation.wait_until(
        lambda: "connecting to" in federation.log(name)[offset:] or process.poll() is not None,
        30,
        f"{name} to start",
        must_live=(),
    )
    assert process.poll() is None, federation.log(name)[offset:]
    assert f"spent {spent:.3f} of 4" in federation.log(name)[offset:]


def test_record_level_dp_over_daemons(launch) -> None:
    """Record-level DP (DP-SGD across the sites) over the real daemons: 4 nodes, 3 DP-SGD steps. Every release is
    recorded with its sampling rate, by the coordinator and in every node's ledger (unit "record"), the epsilon
    history is the composition of those releases and stays within the target, and the sites' policy
    (privacy_unit = "record") accepts the rounds."""
    dp = {"epsilon": 2.0, "delta": DELTA, "clip_norm": 1.0, "unit": "record", "expected_batch": 40.0, "total_records": 400}
    federation = launch(
        n_nodes=4, rounds=3, dp=dp, evaluate=False,
        policy={"max_epsilon": 2.0, "delta": DELTA, "privacy_unit": "record"},
    )  # fmt: skip
    federation.start_coordinator()
    federation.start_nodes()
    assert federation.wait_coordinator_exit(timeout=federation.time_budget(3)) == 0, federation.diagnostics()

    rounds = _dp_rounds(federation)
    assert [r["round"] for r in rounds] == [1, 2, 3], federation.diagnostics()
    recorded = [SkellamRelease(v, l2, l1, q) for v, l2, l1, q in federation.query(
        "SELECT variance, l2_sensitivity, l1_sensitivity, sampling_rate FROM dp_releases ORDER BY round"
    )]  # fmt: skip
    assert [release.sampling_rate for release in recorded] == [0.1] * 3
    epsilons = [r["epsilon"] for r in rounds]
    assert epsilons == pytest.approx([skellam_epsilon(recorded[:k], DELTA) for k in (1, 2, 3)], rel=1e-12)
    assert all(a < b for a, b in zip(epsilons, epsilons[1:])) and epsilons[-1] <= dp["epsilon"], epsilons
    federation.stop_all()
    for name in federation.names:
        ledger = PrivacyLedger(federation.root / name / "state" / "ledger.sqlite", Budget(2.0, 2.0, DELTA))
        try:
            entries = ledger.entries()
            assert [e.round for e in entries] == [1, 2, 3], name
            assert all(e.mechanism["unit"] == "record" and e.mechanism["release"]["sampling_rate"] == 0.1 for e in entries)
            assert ledger.spent(federation.task["name"]) == pytest.approx(epsilons[-1], rel=1e-9), name
        finally:
            ledger.close()
