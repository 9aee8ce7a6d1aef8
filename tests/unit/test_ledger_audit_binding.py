"""The privacy ledger is bound to the site's signed audit log (issue 10, finding 5).

Before the change, deleting a node's ``ledger.sqlite`` silently reset its budget to 0: the node started
afresh and would spend the whole budget again. Now the node daemon (``node.daemon.run_node``, the real entry
point, called in-process with a config written to a temporary folder) refuses to start when its verified
audit log records DP releases that the ledger lacks, and names the recovery, ``securefed node ledger
--config ... --rebuild`` (``securefed.cli.main``), which puts the rows back from the log.

The site's state folder is a real one: a DP task is run in-process (the real Coordinator and Nodes, see
tests/unit/test_dp_records.py) with each node writing its signed receipts to ``audit.log`` and checkpointing
the head in ``node.sqlite``, as the daemon does, next to its ``ledger.sqlite``.
"""

from __future__ import annotations

import base64
import signal
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from node.daemon import run_node
from securefed import cli
from securefed.audit.log import AuditLog, verify_log
from securefed.crypto.identity import SigningKey
from securefed.dp import ledger as ledger_module
from securefed.dp.accountant import skellam_epsilon
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.errors import InvalidParameter
from securefed.federation.node import NodePolicy
from securefed.learning.data import save_csv
from securefed.localfed import free_port, toml_value
from securefed.wire.keys import CurveKeyPair
from tests.unit.test_dp_records import DpFederation

DELTA = 1e-5
NAMES = ["site-1", "site-2", "site-3", "site-4"]
ROUNDS = 3
SITE = "site-1"


@dataclass
class Site:
    """One node's folder after a DP task: config, state, and what its ledger said before anything was lost."""

    config: Path
    folder: Path
    task: str
    rows: list[tuple]
    spent: float
    total: float

    @property
    def ledger_path(self) -> Path:
        return self.folder / "ledger.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.folder / "audit.log"

    def ledger(self, max_epsilon: float = 4.0) -> PrivacyLedger:
        return PrivacyLedger(self.ledger_path, Budget(max_epsilon, max_epsilon, DELTA))

    def delete_ledger(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.ledger_path}{suffix}").unlink(missing_ok=True)


def _rows(ledger: PrivacyLedger) -> list[tuple]:
    return [(e.task, e.round, e.aggregation, e.model_hash, round(e.epsilon_task, 12)) for e in ledger.entries()]


def _write_node_config(folder: Path, name: str, task: str, roster: dict[str, bytes], dataset, policy: dict) -> Path:
    """A node.toml as docs/deployment.md lays it out, for a node whose state folder is ``folder``."""
    CurveKeyPair.generate().save(folder / "curve.key", folder / "curve.pub")
    coordinator = CurveKeyPair.generate()
    features = dataset.X.shape[1]
    save_csv(folder / "data.csv", dataset.X, dataset.y, [f"x{i}" for i in range(features)], "label")

    lines = [
        "[node]",
        f"name = {toml_value(name)}",
        f"coordinator = {toml_value(f'tcp://127.0.0.1:{free_port()}')}",
        f"coordinator_curve_public_key = {toml_value(coordinator.public.decode())}",
        'curve_secret_key_file = "curve.key"',
        'identity_key_file = "identity.pem"',
        'state_dir = "."',
        "",
        "[task]",
        f"name = {toml_value(task)}",
        f"features = {features}",
        "classes = [0, 1]",
        "",
        "[data]",
        'path = "data.csv"',
        'label_column = "label"',
        "",
        "[policy]",
        *(f"{key} = {toml_value(value)}" for key, value in policy.items()),
    ]
    for member, public in roster.items():
        key = base64.b64encode(public).decode()
        lines += ["", "[[roster]]", f"name = {toml_value(member)}", f"identity_public_key = {toml_value(key)}"]
    path = folder / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _dp_site(tmp_path: Path, policy: dict | None = None) -> Site:
    """Run a DP task of ROUNDS rounds in-process, every node keeping a signed audit log; return site-1's folder."""
    policy = policy or {"max_epsilon": 4.0, "delta": DELTA}
    dp = {"epsilon": 4.0, "delta": DELTA, "clip_norm": 0.5}
    federation = DpFederation(tmp_path, NAMES, ROUNDS, dp, NodePolicy(max_epsilon=4.0, delta=DELTA))
    try:
        for name, node in federation.nodes.items():
            state = federation.states[name]
            node.audit_log = AuditLog(tmp_path / name / "audit.log", node.identity, on_append=state.set_audit_head)
        federation.run_until(lambda f: f.coordinator.finished)
        federation.settle()  # the nodes take in the last result and write its receipt
        node = federation.nodes[SITE]
        node.identity.save(tmp_path / SITE / "identity.pem")
        task = federation.task.name
        config = _write_node_config(tmp_path / SITE, SITE, task, federation.roster, node.dataset, policy)
        ledger = federation.ledgers[SITE]
        rows, spent, total = _rows(ledger), ledger.spent(task), ledger.spent_total()
        history = [(r.round, r.aggregation) for r in federation.store.rounds()]
    finally:
        federation.close()
    assert [(round_number, aggregation) for _, round_number, aggregation, *_ in rows] == history
    assert len(rows) == ROUNDS and spent > 0
    return Site(config, tmp_path / SITE, task, rows, spent, total)


def _run_node(config: Path) -> int:
    """The daemon's entry point, told to stop at once (it still does every check before it would connect)."""
    stop = threading.Event()
    stop.set()
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run_node(config, stop)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _rebuild(config: Path) -> int:
    return cli.main(["node", "ledger", "--config", str(config), "--rebuild"])


# --- finding 5: deleting the ledger no longer resets the budget ---------------------------------------


def test_a_deleted_ledger_stops_the_node_until_it_is_rebuilt_from_the_audit_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    site = _dp_site(tmp_path)
    assert _run_node(site.config) == 0  # the intact site starts
    site.delete_ledger()

    with pytest.raises(InvalidParameter) as refused:
        _run_node(site.config)
    message = str(refused.value)
    assert f"lacks {ROUNDS} DP release(s)" in message, message
    assert f"securefed node ledger --config {site.config} --rebuild" in message, message
    assert str(site.ledger_path) in message and "backup" in message
    refused_ledger = site.ledger()
    try:
        assert refused_ledger.entries() == []  # the refusal wrote nothing, and spent nothing
    finally:
        refused_ledger.close()

    capsys.readouterr()
    assert _rebuild(site.config) == 0
    out = capsys.readouterr().out
    assert f"rebuilt {ROUNDS} ledger row(s)" in out and f"spent {site.spent:.3f}" in out, out
    rebuilt = site.ledger()
    try:
        assert rebuilt.spent(site.task) == pytest.approx(site.spent, rel=1e-12)
        assert rebuilt.spent_total() == pytest.approx(site.total, rel=1e-12)
        assert _rows(rebuilt) == site.rows
    finally:
        rebuilt.close()

    caplog.clear()
    caplog.set_level("INFO", logger="securefed")
    assert _run_node(site.config) == 0
    assert "connecting to" in caplog.text and f"spent {site.spent:.3f}" in caplog.text, caplog.text


def test_a_ledger_restored_from_an_older_backup_is_completed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Only the newest row lost (a backup from before the last round): the node names the one missing release."""
    site = _dp_site(tmp_path)
    db = sqlite3.connect(site.ledger_path)
    try:
        last = db.execute("SELECT round, aggregation FROM charges ORDER BY id DESC LIMIT 1").fetchone()
        db.execute("DELETE FROM charges WHERE aggregation = ?", (last[1],))
        db.commit()
    finally:
        db.close()
    with pytest.raises(InvalidParameter, match=r"lacks 1 DP release\(s\)") as refused:
        _run_node(site.config)
    assert f"round {last[0]}, aggregation {last[1]}" in str(refused.value)
    assert _rebuild(site.config) == 0
    assert "rebuilt 1 ledger row(s)" in capsys.readouterr().out
    ledger = site.ledger()
    try:
        assert ledger.spent(site.task) == pytest.approx(site.spent, rel=1e-12)
        assert [row[:3] for row in _rows(ledger)] == [row[:3] for row in site.rows]
    finally:
        ledger.close()
    assert _run_node(site.config) == 0


def test_rebuilding_is_idempotent_and_restores_even_beyond_a_lowered_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The releases did happen: they are put back even when the site's limit is now below what they cost (the
    node will then refuse further rounds), and a second rebuild adds nothing."""
    site = _dp_site(tmp_path, policy={"max_epsilon": 1.0, "max_epsilon_total": 1.0, "delta": DELTA})
    assert site.spent > 1.0
    site.delete_ledger()
    assert _rebuild(site.config) == 0
    assert _rebuild(site.config) == 0
    out = capsys.readouterr().out
    assert f"rebuilt {ROUNDS} ledger row(s)" in out and "rebuilt 0 ledger row(s)" in out, out
    ledger = site.ledger(max_epsilon=1.0)
    try:
        assert ledger.spent(site.task) == pytest.approx(site.spent, rel=1e-12) and len(ledger.entries()) == ROUNDS
    finally:
        ledger.close()
    assert _run_node(site.config) == 0


def test_a_tampered_audit_log_cannot_rebuild_the_ledger(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = _dp_site(tmp_path)
    site.delete_ledger()
    text = site.audit_path.read_text()
    site.audit_path.write_text(text.replace('"sent_masked_input":true', '"sent_masked_input":false', 1))
    assert _rebuild(site.config) == 1
    err = capsys.readouterr().err
    assert "fails verification" in err and "backup" in err, err
    ledger = site.ledger()
    try:
        assert ledger.entries() == []  # nothing made up from a log that does not verify
    finally:
        ledger.close()
    with pytest.raises(InvalidParameter, match="fails verification"):
        _run_node(site.config)


# --- what counts as a release in the audit log ------------------------------------------------------------


def test_audited_releases_are_the_dp_receipts_whose_masked_input_left(tmp_path: Path) -> None:
    site = _dp_site(tmp_path)
    report = verify_log(site.audit_path, SigningKey.load(site.folder / "identity.pem").public_bytes)
    assert report.ok
    receipts = [(entry.time, entry.receipt) for entry in report.entries]
    found, problems = ledger_module.audited_releases(receipts)
    assert problems == []
    # Each release is in the log twice (the "charged" receipt written before the masked input leaves, and the
    # aggregation's closing receipt): one release each.
    outcomes = [(r["aggregation"], r["outcome"]) for _, r in receipts if r.get("sent_masked_input")]
    assert sorted(outcomes) == sorted((row[2], outcome) for row in site.rows for outcome in ("charged", "completed"))
    assert [(r.task, r.round, r.aggregation, r.model_hash) for r in found] == [row[:4] for row in site.rows]
    # The receipts carry exactly what the ledger charged: the composition of the audited releases is the spend.
    assert skellam_epsilon([r.release for r in found], DELTA) == pytest.approx(site.spent, rel=1e-12)
    db = sqlite3.connect(f"file:{site.ledger_path}?mode=ro", uri=True)
    try:
        charged = db.execute("SELECT variance, l2_sensitivity, l1_sensitivity FROM charges ORDER BY id").fetchall()
    finally:
        db.close()
    assert [(r.release.variance, r.release.l2_sensitivity, r.release.l1_sensitivity) for r in found] == charged
    assert all(r.mechanism["dimension"] == found[0].mechanism["dimension"] > 0 for r in found)

    dp_receipt = receipts[0][1]
    others = [
        (1.0, {"task": site.task, "aggregation": 90, "outcome": "refused", "detail": "budget-exhausted: ..."}),
        (2.0, {**dp_receipt, "aggregation": 91, "sent_masked_input": False, "outcome": "aborted"}),  # never left
        (3.0, {**dp_receipt, "aggregation": 92, "dp": None}),  # not a DP round
    ]
    assert ledger_module.audited_releases(others) == ([], [])
    # A crash after the charge, before the aggregation closed: the "charged" receipt alone still counts.
    charged_only = [(at, r) for at, r in receipts if r.get("outcome") == "charged"]
    rebuilt_from_charges, _ = ledger_module.audited_releases(charged_only)
    assert [(r.task, r.aggregation) for r in rebuilt_from_charges] == [(row[0], row[2]) for row in site.rows]
    # A DP receipt without the release's numbers (written before they were recorded) cannot be rebuilt from.
    legacy = {**dp_receipt, "aggregation": 93, "dp": {k: v for k, v in dp_receipt["dp"].items() if k != "release"}}
    found, problems = ledger_module.audited_releases([(4.0, legacy)])
    assert found == [] and len(problems) == 1 and "aggregation 93" in problems[0]
