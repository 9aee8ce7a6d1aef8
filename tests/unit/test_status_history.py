"""``securefed status --history [--json|--csv]``: every round, three forms, fast, quiet in a pipe.

The state folder is laid out as the daemon leaves it (its store written through
:class:`CoordinatorStore`); the command runs in a child process where speed and imports matter.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from securefed import cli
from securefed.federation.store import CoordinatorStore
from securefed.status import STAGES, history_text
from tests.unit.test_round_history import CONTRACT, OLD_SCHEMA

HEAVY = ("numpy", "sklearn", "scipy", "zmq", "cryptography", "dp_accounting", "randomgen", "matplotlib", "prometheus_client")

CONFIG = """
[coordinator]
listen = "tcp://127.0.0.1:7700"
state_dir = "state"
curve_secret_key_file = "curve.key"

[task]
name = "history-task"
model = "sgd_logistic"
features = 4
classes = [0, 1]
rounds = 5
"""


@pytest.fixture
def coordinator(tmp_path: Path) -> Path:
    """A coordinator config and its store after three rounds: the second took a refused attempt first."""
    config = tmp_path / "coordinator.toml"
    config.write_text(textwrap.dedent(CONFIG))
    store = CoordinatorStore(tmp_path / "state" / "coordinator.sqlite")
    try:
        store.save_initial_model(np.zeros(3))
        for number in (1, 2, 3):
            if number == 2:
                refused = store.next_aggregation(2, "train")
                store.record_refusal(refused, "site-2", "too-many-rounds", "round 2 exceeds 1")
                store.finish_attempt(refused, "aborted", "refused")
            aggregation = store.next_aggregation(number, "train")
            stages = {stage: round(0.01 * (i + 1) * number, 4) for i, stage in enumerate(STAGES)}
            store.commit_round(
                number, np.ones(3), None, aggregation, ["site-1", "site-2", "site-3"][: 2 + (number % 2 == 0)], 3, 30.0,
                0.25 * number, 1.5 * number, stage_durations=stages, bytes_in=2_000 * number, bytes_out=3_500_000 * number,
            )  # fmt: skip
            if number < 3:  # the newest round is not evaluated yet
                evaluation = store.next_aggregation(number, "evaluate")
                store.record_evaluation(number, evaluation, 0.8 + 0.05 * number, 0.5 / number, 90, 3)
    finally:
        store.close()
    return config


def _run(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    python = [sys.executable, "-X", "importtime"] if importtime else [sys.executable]
    return subprocess.run([*python, "-m", "securefed.cli", "status", *args], capture_output=True, text=True, timeout=60)


def test_the_table_shows_every_round_with_its_stages_bytes_and_tries(coordinator: Path) -> None:
    text = history_text(coordinator)
    lines = text.splitlines()
    assert re.match(
        r"round\s+nodes\s+accuracy\s+loss\s+epsilon\s+seconds\s+stages \(s\) adv/rev/shr/inp/con/unm\s+in\s+out\s+tries\s+refusals\s+completed",
        lines[0],
    ), text
    assert len(lines) == 4, text
    first, second, third = lines[1:]
    assert re.match(
        r"\s+1\s+2/3\s+0\.8500\s+0\.5000\s+0\.250\s+1\.50\s+0\.010/0\.020/0\.030/0\.040/0\.050/0\.060\s+2\.0 kB\s+3\.5 MB\s+2\s+0\s+\d{4}-",
        first,
    ), first
    assert re.match(
        r"\s+2\s+3/3\s+0\.9000\s+0\.2500\s+0\.500\s+3\.00\s+0\.020/0\.040/0\.060/0\.080/0\.100/0\.120\s+4\.0 kB\s+7\.0 MB\s+3\s+1\s",
        second,
    ), second
    assert re.match(r"\s+3\s+2/3\s+-\s+-\s+0\.750\s+4\.50\s", third), third  # not evaluated yet


def test_json_is_a_list_of_every_field(coordinator: Path) -> None:
    rows = json.loads(history_text(coordinator, "json"))
    assert [row["round"] for row in rows] == [1, 2, 3]
    assert all(tuple(row) == CONTRACT for row in rows)
    second = rows[1]
    assert second["survivors"] == ["site-1", "site-2", "site-3"] and second["participants"] == 3
    assert (second["attempts"], second["refusals"], second["bytes_in"], second["bytes_out"]) == (3, 1, 4000, 7_000_000)
    assert list(second["stage_durations"]) == list(STAGES) and second["stage_durations"]["unmask"] == 0.12
    assert rows[2]["accuracy"] is None and rows[2]["loss"] is None


def test_csv_has_a_header_and_a_row_per_round(coordinator: Path) -> None:
    rows = list(csv.DictReader(io.StringIO(history_text(coordinator, "csv"))))
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert list(rows[0]) == [
        "round", "aggregation", "participants", "survivors", "accuracy", "loss", "epsilon", "duration",
        *(f"stage_{stage}" for stage in STAGES), "bytes_in", "bytes_out", "completed_at", "refusals", "attempts",
    ]  # fmt: skip
    assert rows[1]["survivors"] == "site-1 site-2 site-3" and rows[1]["stage_masked_input"] == "0.08"
    assert (rows[1]["attempts"], rows[1]["refusals"], rows[1]["bytes_out"]) == ("3", "1", "7000000")
    assert rows[2]["accuracy"] == "" and float(rows[2]["completed_at"]) > 1e9  # CSV has no null: empty


def test_no_state_yet_and_an_old_store(tmp_path: Path, coordinator: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text(coordinator.read_text().replace('state_dir = "state"', 'state_dir = "nothing-here"'))
    assert history_text(empty) == "no completed rounds yet\n"
    assert json.loads(history_text(empty, "json")) == []
    assert history_text(empty, "csv").count("\n") == 1  # the header alone

    old = tmp_path / "old"
    (old / "state").mkdir(parents=True)
    (old / "coordinator.toml").write_text(coordinator.read_text())
    db = sqlite3.connect(old / "state" / "coordinator.sqlite")
    db.executescript(OLD_SCHEMA)
    db.close()
    rows = json.loads(history_text(old / "coordinator.toml", "json"))
    assert [(r["round"], r["stage_durations"], r["bytes_in"], r["attempts"], r["refusals"]) for r in rows] == [
        (1, {}, None, 2, 0), (2, {}, None, 2, 1),
    ]  # fmt: skip
    assert re.search(
        r"^\s+1\s+3/3\s+0\.8000\s+0\.5000\s+-\s+1\.50\s+-\s+-\s+-\s+2\s+0\s", history_text(old / "coordinator.toml"), re.M
    )


def test_the_command_line_forms_and_their_errors(coordinator: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["status", "--config", str(coordinator), "--history", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert cli.main(["status", "--config", str(coordinator), "--history", "--csv"]) == 0
    assert capsys.readouterr().out.startswith("round,aggregation,")
    assert cli.main(["status", "--config", str(coordinator), "--json"]) == 0  # the status itself, as one object
    assert json.loads(capsys.readouterr().out)["completed"] == 3
    assert cli.main(["status", "--config", str(coordinator), "--csv"]) == 2
    assert "--csv goes with --history" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one format at a time
        cli.main(["status", "--config", str(coordinator), "--history", "--json", "--csv"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_history_imports_nothing_heavy(coordinator: Path) -> None:
    """One run is enough: the three forms share every import (csv and json are read at module level)."""
    done = _run("--config", str(coordinator), "--history", "--csv", importtime=True)
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    assert {"csv", "json", "sqlite3"} <= imported  # the measurement saw the history's own imports
    assert done.stdout.startswith("round,")


def test_history_in_a_closed_pipe_ends_quietly(coordinator: Path) -> None:
    command = [sys.executable, "-m", "securefed.cli", "status", "--config", str(coordinator), "--history"]
    shell = f"{' '.join(map(repr, command))} | head -1"
    done = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("round") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    child = subprocess.Popen([*command, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0 and err == b"", err.decode()
