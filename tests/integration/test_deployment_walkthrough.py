"""docs/deployment.md's trial federation, run literally: the bash blocks of its walkthrough, as written.

An operator follows the documentation to the letter; so does this test. It takes every ```bash
block between the ``walkthrough:begin`` and ``walkthrough:end`` markers, in order, and runs them as
one bash script in an empty folder with ``set -eo pipefail`` (any failing command fails the test).
The only change is the port: 7700 becomes a free one, so that parallel runs do not collide.
"""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
BEGIN, END = "<!-- walkthrough:begin -->", "<!-- walkthrough:end -->"


def walkthrough_script(text: str) -> str:
    """The walkthrough's bash blocks, in order, as one script."""
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "the walkthrough markers are missing or repeated"
    section = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    blocks = re.findall(r"^```bash\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) >= 4, f"expected the walkthrough's bash blocks, found {len(blocks)}"
    return "\n".join(blocks)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_walkthrough_runs_as_written(tmp_path):
    script = walkthrough_script(DOC.read_text())
    assert script.count("tcp://127.0.0.1:7700") == 2, "the walkthrough's port appears in an unexpected place"
    script = script.replace("tcp://127.0.0.1:7700", f"tcp://127.0.0.1:{_free_port()}")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `securefed` installed here
    env.pop("SECUREFED_LOG_LEVEL", None)
    # A generous cap so that a hang fails instead of blocking CI; the run itself takes well under a minute.
    result = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    trial = tmp_path / "trial"
    logs = "\n".join(f"--- {log.relative_to(tmp_path)}\n{log.read_text()[-3000:]}" for log in sorted(trial.glob("*/daemon.log")))
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-5000:]}\nstderr:\n{result.stderr[-5000:]}\n{logs}"
    )

    out = result.stdout
    # Every config checked out, and the task ran all its rounds and said so.
    assert out.count("OK: the config is usable") == 4, out
    assert "coordinator: finished" in out and "20 of 20 rounds completed" in out, out
    # The model came out and predicted every held-out row, well above chance (1/3 on iris).
    assert (trial / "model.npz").stat().st_size > 0
    with (trial / "data" / "test.csv").open() as handle:
        test_rows = sum(1 for _ in csv.reader(handle)) - 1
    with (trial / "predictions.csv").open() as handle:
        prediction_rows = [row for row in csv.reader(handle) if row]
    assert len(prediction_rows) - 1 == test_rows, prediction_rows[:3]
    accuracy = re.search(r"wrote predictions\.csv: .*; accuracy ([01]\.[0-9]+)", out)
    assert accuracy is not None, out
    assert float(accuracy.group(1)) >= 0.7, out
    # The history, the report page, and the site's records.
    assert out.count("3/3") >= 30, out  # status (last 10 rounds) and --history (all 20): all three sites each time
    assert (trial / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert "verified: 20 entries" in out, out
