"""Computation tasks (trees, analytics) as operators see them: ``securefed analytics``, ``status`` and ``report``.

The coordinator's store is written through :class:`CoordinatorStore` as the daemon writes a computation: one
``compute`` attempt and one ``commit_step`` per secure aggregation, the result with the last step. For analytics
the steps are real: a :class:`ComputationJob` plans each request, two in-memory sites answer with ``respond``,
and their vectors are summed mod 2^32 as secure aggregation reveals them. No daemon runs here (the integration
tests run the real ones); where ``securefed analytics`` would start one, a stand-in plays it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import load_coordinator_config
from securefed import analytics_cli, status
from securefed.analytics import AnalyticsPolicy, respond
from securefed.analytics_cli import EXACT, result_lines, summarize_result
from securefed.cli import main
from securefed.federation.computation import COMPUTE_KINDS, request_digest
from securefed.federation.store import CoordinatorStore
from securefed.report import gather_report
from securefed.status import STATUS_FILE, history_text, status_json, status_lines
from tests.unit.test_report import HOSTILE_DETAIL, HOSTILE_TASK, Page, _assert_only_safe_markup, _decode_png

HEAVY = ("numpy", "sklearn", "scipy", "zmq", "cryptography", "dp_accounting", "randomgen", "matplotlib")
HOSTILE_KIND = '<script>alert("kind")</script>'

COHORT = {"max_nodes": 3, "max_rows": 100}
COMPUTATIONS = [
    {"kind": "mean", "params": {**COHORT, "low": [0, 40], "high": [100, 200]}},
    {"kind": "count", "params": dict(COHORT)},
    {
        "kind": "quantiles",
        "params": {**COHORT, "low": [0, 40], "high": [100, 200], "resolution": 1.0, "quantiles": [0.5], "bins_per_round": 16},
    },
]


def _sites() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [np.column_stack([rng.uniform(20, 80, n), rng.uniform(50, 150, n)]) for n in (40, 50)]


def _nodes() -> str:
    from securefed.crypto.identity import SigningKey
    from securefed.wire.keys import CurveKeyPair

    out = []
    for name in ("site-a", "site-b", "site-c"):
        curve, identity = CurveKeyPair.generate(), SigningKey.generate()
        out.append(
            f'\n[[nodes]]\nname = "{name}"\ncurve_public_key = "{curve.public.decode()}"\n'
            f'identity_public_key = "{base64.b64encode(identity.public_bytes).decode()}"\n'
        )
    return "".join(out)


def _analytics_config(tmp_path: Path, name: str = "stats") -> Path:
    blocks = []
    for item in COMPUTATIONS:
        params = ", ".join(f"{key} = {json.dumps(value)}" for key, value in item["params"].items())
        blocks.append(f'[[computations]]\nkind = "{item["kind"]}"\nparams = {{{params}}}\n')
    config = tmp_path / "coordinator.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [coordinator]
            listen = "tcp://127.0.0.1:7700"
            state_dir = "state"
            curve_secret_key_file = "curve.key"

            [task]
            name = {json.dumps(name)}
            model = "analytics"
            features = ["age", "weight"]
            classes = [0, 1]
            min_nodes = 2
            """
        )
        + "\n"
        + "\n".join(blocks)
        + _nodes()
    )
    return config


def _tree_config(tmp_path: Path, model: str = "random_forest") -> Path:
    options = "{n_trees = 3, max_depth = 2, n_bins = 8}" if model == "random_forest" else "{n_estimators = 2, max_depth = 2}"
    config = tmp_path / "coordinator.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [coordinator]
            listen = "tcp://127.0.0.1:7700"
            state_dir = "state"
            curve_secret_key_file = "curve.key"

            [task]
            name = "forest"
            model = "{model}"
            features = ["a", "b"]
            classes = [0, 1]
            min_nodes = 2
            model_options = {options}

            [task.preprocessing]
            scaler = "minmax"
            min = [0.0, 0.0]
            max = [1.0, 1.0]
            """
        )
        + _nodes()
    )
    return config


def _store_path(config: Path) -> Path:
    return config.parent / "state" / "coordinator.sqlite"


def _run_analytics(config: Path, steps: int | None = None) -> dict | None:
    """Drive the config's analytics job over two in-memory sites, committing each step as the coordinator does.

    ``steps`` stops early (an unfinished task); returns the stored result (None when unfinished).
    """
    from coordinator.config import load_coordinator_config

    task = load_coordinator_config(config).task
    job = task.computation_job()
    sites = _sites()
    store = CoordinatorStore(_store_path(config))
    try:
        number = 0
        while (computation := job.request()) is not None and (steps is None or number < steps):
            number += 1
            aggregation = store.next_aggregation(number, "compute")
            vectors = [respond(computation["request"], X, None, AnalyticsPolicy.permissive()) for X in sites]
            summed = vectors[0] + vectors[1]  # uint32: wraps mod 2^32 as the secure sum does
            job.receive(summed, len(vectors))
            store.commit_step(
                number, aggregation, request_digest(computation), summed, ["site-a", "site-b"], 3, 0.25 * number,
                stage_durations={"advertise": 0.05, "masked_input": 0.1}, bytes_in=1000 * number, bytes_out=2000,
                result=job.result() if job.done else None,
            )  # fmt: skip
        return store.computation_result()
    finally:
        store.close()


def _tree_store(config: Path, describe: str = "random forest: 3 trees, depth <= 2", steps: int = 3) -> dict:
    result = {"kind": "random_forest", "trees": 3, "describe": describe, "aggregations": steps}
    store = CoordinatorStore(_store_path(config))
    try:
        for number in range(1, steps + 1):
            aggregation = store.next_aggregation(number, "compute")
            store.commit_step(
                number, aggregation, "0" * 64, np.arange(8, dtype=np.uint32), ["site-a", "site-b", "site-c"], 3,
                1.5, result=result if number == steps else None,
            )  # fmt: skip
    finally:
        store.close()
    return result


def _write_status(config: Path, **changes: object) -> None:
    data = {"pid": 4242, "rounds": 9, "finished": True, "current": None, "updated_at": time.time() - 5, "refused_connections": 0}
    data.update(changes)
    (config.parent / "state" / STATUS_FILE).write_text(json.dumps(data))


# --- the summaries ---------------------------------------------------------------------------


def test_the_lightweight_kind_list_matches_the_computations() -> None:
    """status.py keeps its own copy (the real one imports numpy)."""
    assert status.COMPUTE_KINDS == COMPUTE_KINDS


def test_a_summary_line_per_computation_with_its_numbers_and_bound(tmp_path: Path) -> None:
    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    mean, count, quantiles = result["results"]
    X = np.vstack(_sites())
    assert count["count"] == len(X) == 90
    np.testing.assert_allclose(mean["mean"], X.mean(axis=0), atol=1e-6)

    summaries = summarize_result(result)
    assert [s.name for s in summaries] == ["#1 mean", "#2 count", "#3 quantiles"]
    assert summaries[0].values == f"n = 90; mean [{mean['mean'][0]:.6g}, {mean['mean'][1]:.6g}]"
    assert summaries[0].bound == f"mean ± {max(mean['error_bound']['mean']):.2g}"
    assert (summaries[0].aggregations, summaries[0].survivors) == (1, 2)
    assert summaries[1].bound == EXACT and summaries[1].values == "n = 90"
    assert summaries[2].aggregations == quantiles["aggregations"] >= 2
    assert f"column 0: [{quantiles['quantiles'][0][0]:.6g}]" in summaries[2].values
    assert result_lines(result)[1] == "#2 count: n = 90; exact (1 aggregation, 2 nodes in the sum)"


def test_summaries_cut_long_values_and_survive_odd_results() -> None:
    long = {
        "kind": "analytics",
        "results": [{"computation": "mean", "count": 5, "mean": list(range(40)), "error_bound": {"mean": [None] * 40}}],
    }
    [summary] = summarize_result(long)
    assert summary.values == "n = 5; mean [0, 1, 2, 3, 4, 5, … (34 more)]" and summary.bound == "mean ± n/a"
    odd = {"kind": "analytics", "results": ["not a table", {"computation": "newkind", "score": 0.5, "encoding": {}}]}
    assert result_lines(odd) == ["#2 newkind: score 0.5; error bound n/a"]  # numbered as the config lists them
    assert result_lines({"kind": "gbdt", "trees": 1, "describe": "gbdt (logistic): 1 rounds", "aggregations": 4}) == [
        "gbdt: 1 tree; gbdt (logistic): 1 rounds (4 aggregations)"
    ]


# --- securefed status ------------------------------------------------------------------------


def test_status_shows_the_kind_steps_and_the_results(tmp_path: Path) -> None:
    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    steps = result["aggregations"]
    _write_status(config, rounds=9)
    lines = status_lines(config)
    text = "\n".join(lines)
    assert lines[0] == "task:        stats (analytics: 3 computations, at most 9 secure aggregations)"
    assert "coordinator: finished; the coordinator exited (its last status is 5.0 s old)" in text, text
    assert f"progress:    finished after {steps} steps (secure aggregations); 0 aborted attempts retried" in text
    at = lines.index("result:")
    assert lines[at + 1 : at + 4] == [f"  {line}" for line in result_lines(result)]
    assert " step  nodes  seconds" in text and "accuracy" not in text and "epsilon" not in text
    assert f"{steps:>5}   2/3   {0.25 * steps:7.2f}" in text, text


def test_status_of_an_unfinished_computation(tmp_path: Path) -> None:
    config = _analytics_config(tmp_path)
    assert _run_analytics(config, steps=2) is None
    text = "\n".join(status_lines(config))  # no status.json and no rounds key: the limit is unknown, not "?"
    assert text.startswith("task:        stats (analytics: 3 computations)\n"), text
    assert "progress:    2 steps done; 0 aborted attempts retried" in text
    assert "result:      not yet (the task has not finished)" in text
    assert "coordinator: NOT RUNNING\n" in text  # no daemon holds the folder and the task is not done


def test_status_json_has_the_kind_steps_and_the_result(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    assert status.print_status(config, "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["task"], data["model"], data["computation"], data["unit"]) == ("stats", "analytics", True, "step")
    assert (data["completed"], data["finished"]) == (result["aggregations"], True)
    assert data["result"] == result and data["summary"] == result_lines(result)
    assert data["attempts"] == {"completed": result["aggregations"]}
    assert status_json(config) == data
    with pytest.raises(Exception, match="text, json"):
        status.print_status(config, "xml")


def test_status_of_a_tree_task_shows_its_trees(tmp_path: Path) -> None:
    config = _tree_config(tmp_path)
    _tree_store(config)
    text = "\n".join(status_lines(config))
    assert text.startswith("task:        forest (random_forest)\n"), text
    assert "  random_forest: 3 trees; random forest: 3 trees, depth <= 2 (3 aggregations)" in text
    assert "progress:    finished after 3 steps" in text


def test_history_of_steps_prints_cleanly(tmp_path: Path) -> None:
    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    table = history_text(config).splitlines()
    assert table[0].split()[:3] == ["step", "nodes", "seconds"] and "accuracy" not in table[0]
    assert len(table) == 1 + result["aggregations"]
    assert table[1].split()[:3] == ["1", "2/3", "0.25"] and "None" not in "\n".join(table)
    rows = json.loads(history_text(config, "json"))
    assert [row["accuracy"] for row in rows] == [None] * result["aggregations"]
    assert rows[0]["stage_durations"] == {"advertise": 0.05, "masked_input": 0.1}
    csv_rows = history_text(config, "csv").splitlines()
    assert csv_rows[1].split(",")[4:7] == ["", "", ""]  # accuracy, loss, epsilon: empty, not "None"


def test_status_of_a_computation_imports_nothing_heavy(tmp_path: Path) -> None:
    config = _analytics_config(tmp_path)
    _run_analytics(config)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "securefed.cli", "status", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    assert "#1 mean: n = 90" in done.stdout


# --- securefed analytics ---------------------------------------------------------------------


def test_show_writes_the_stored_result_atomically_and_prints_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    out = tmp_path / "results.json"
    out.write_text("old")
    kept = tmp_path / "old-link.json"
    os.link(out, kept)  # an in-place rewrite would change this file too; a rename leaves it alone

    assert main(["analytics", "--config", str(config), "--show", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == result
    assert kept.read_text() == "old" and not out.samefile(kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coordinator.toml", "old-link.json", "results.json", "state"]
    assert (
        printed.splitlines()[0]
        == "analytics task stats: already finished (stored in " + str(_store_path(config)) + "); nothing was run"
    )
    assert [line.strip() for line in printed.splitlines()[1:4]] == result_lines(result)
    assert printed.splitlines()[-1] == f"wrote {out}"


def test_show_defaults_to_the_state_folder_and_dash_is_stdout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    assert main(["analytics", "--config", str(config), "--show"]) == 0
    assert json.loads((tmp_path / "state" / analytics_cli.DEFAULT_OUT).read_text()) == result
    capsys.readouterr()
    assert main(["analytics", "--config", str(config), "--show", "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == result  # stdout is the JSON alone
    assert "wrote standard output" in captured.err and "#1 mean" in captured.err


def test_show_before_the_end_says_how_far_it_got(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _analytics_config(tmp_path)
    out = tmp_path / "results.json"
    assert main(["analytics", "--config", str(config), "--show", "--out", str(out)]) == 1  # no store at all
    assert "not finished: 0 steps done" in capsys.readouterr().out
    _run_analytics(config, steps=1)
    assert main(["analytics", "--config", str(config), "--show", "--out", str(out)]) == 1
    assert "analytics task stats: not finished: 1 step done" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.parametrize("model", ["sgd_logistic", "random_forest"])
def test_a_task_that_is_not_analytics_is_refused(tmp_path: Path, model: str, capsys: pytest.CaptureFixture) -> None:
    if model == "random_forest":
        config = _tree_config(tmp_path)
    else:
        config = _analytics_config(tmp_path)
        text = config.read_text().replace('model = "analytics"', 'model = "sgd_logistic"\nrounds = 3')
        config.write_text(text.split("[[computations]]")[0] + _nodes())
    assert main(["analytics", "--config", str(config), "--show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"[task] model is '{model}', not \"analytics\"" in err, err
    assert "Traceback" not in err and not (tmp_path / "state").exists()


def test_a_finished_task_is_never_run_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coordinator.daemon

    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    monkeypatch.setattr(coordinator.daemon, "run_coordinator", lambda *a, **k: pytest.fail("the daemon was started"))
    assert main(["analytics", "--config", str(config)]) == 0
    assert "nothing was run" in capsys.readouterr().out
    assert json.loads((tmp_path / "state" / analytics_cli.DEFAULT_OUT).read_text()) == result


def test_without_a_result_the_coordinator_runs_until_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's entry point is called with the config; what it stored is then written."""
    import coordinator.daemon

    config = _analytics_config(tmp_path)
    _run_analytics(config, steps=1)  # a run stopped earlier: this one resumes
    calls = []

    def daemon(path: object) -> int:
        calls.append(Path(path))
        (_store_path(config)).unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(_store_path(config)) + suffix).unlink(missing_ok=True)
        _run_analytics(config)  # what the real daemon leaves behind: every step and the result
        return 0

    monkeypatch.setattr(coordinator.daemon, "run_coordinator", daemon)
    out = tmp_path / "r.json"
    assert main(["analytics", "--config", str(config), "--out", str(out)]) == 0
    assert calls == [config.resolve()]
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert stdout.startswith(f"analytics task stats: finished now after {result['aggregations']} secure aggregations\n")
    assert result == CoordinatorStore(_store_path(config), read_only=True).computation_result()


def test_a_coordinator_that_stops_early_or_already_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coordinator.daemon

    config = _analytics_config(tmp_path)
    monkeypatch.setattr(coordinator.daemon, "run_coordinator", lambda path: _run_analytics(config, steps=2) and 0)
    assert main(["analytics", "--config", str(config), "--out", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "stopped before the task finished: 2 steps done; run this command again to resume" in err
    assert not (tmp_path / "r.json").exists()

    script = f"from securefed._fs import StateLock; import time; StateLock.acquire({str(tmp_path / 'state')!r}, 'coordinator'); print('ok', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        monkeypatch.setattr(coordinator.daemon, "run_coordinator", lambda path: pytest.fail("started a second coordinator"))
        assert main(["analytics", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"a coordinator (PID {holder.pid}) is already running this task" in err and "--show" in err
    finally:
        holder.kill()
        holder.wait()


# --- securefed report ------------------------------------------------------------------------


def _report(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[Page, str, str]:
    out = tmp_path / "report.html"
    code = main(["report", "--config", str(config), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    _assert_only_safe_markup(page)
    return page, text, err


def test_the_report_of_an_analytics_task_has_its_steps_and_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _analytics_config(tmp_path)
    result = _run_analytics(config)
    steps = result["aggregations"]
    page, _, err = _report(config, tmp_path, capsys)
    assert f"task stats, analytics, {steps} steps (result stored), coordinator finished" in err

    assert {"results-heading", "plots", "rounds-heading", "refusals-heading", "aborts-heading"} <= set(page.headings)
    summaries = summarize_result(result)
    assert page.tables["results"] == [
        [
            s.name,
            s.values,
            "exact" if s.bound == EXACT else s.bound,
            str(s.aggregations),
            "–" if s.survivors is None else str(s.survivors),
        ]
        for s in summaries
    ]
    wall = sum(0.25 * n for n in range(1, steps + 1))
    joined = " ".join(page.text)
    assert f"{steps} secure aggregations; wall time {wall:.2f} s (the sum of the steps' durations)" in joined
    assert "analytics: 3 computations (mean, count, quantiles)" in joined

    # the steps are the history rows: no accuracy, loss or epsilon columns, and no plots of them
    assert page.column("rounds", 0) == [str(n) for n in range(1, steps + 1)]
    assert page.column("rounds", 2) == ["2 / 3"] * steps
    assert page.column("rounds", 3) == [f"{250 * n} ms" if n < 4 else f"{0.25 * n:.2f} s" for n in range(1, steps + 1)]
    images = {attrs["id"] for attrs in page.images()}
    assert images == {"plot-participation", "plot-duration", "plot-traffic"}
    for attrs in page.images():
        _decode_png(attrs["src"])
    assert "No accuracy recorded" not in joined and "Privacy budget" not in joined


def test_the_report_of_an_unfinished_computation_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _analytics_config(tmp_path)
    _run_analytics(config, steps=1)
    page, _, err = _report(config, tmp_path, capsys)
    assert "1 steps (at most" in err and "no result yet" in err
    assert "results" not in page.tables
    assert "Not finished: 1 step done" in " ".join(page.text)


def test_the_report_of_a_tree_task_has_the_model_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _tree_config(tmp_path)
    _tree_store(config, describe=HOSTILE_DETAIL, steps=3)
    page, text, _ = _report(config, tmp_path, capsys)
    assert "<script" not in text.lower()
    assert page.tables["results"] == [["random_forest", "3", HOSTILE_DETAIL, "3", "4.50 s"]]  # wall time 3 x 1.5 s
    assert "random_forest (histogram trees)" in " ".join(page.text)


def test_hostile_text_in_a_result_is_escaped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _analytics_config(tmp_path, name=HOSTILE_TASK)
    hostile = {
        "kind": "analytics",
        "aggregations": 1,
        "results": [
            {"computation": HOSTILE_KIND, "count": 3, "label": HOSTILE_DETAIL, "aggregations": 1, "error_bound": HOSTILE_DETAIL}
        ],
    }
    store = CoordinatorStore(_store_path(config))
    try:
        aggregation = store.next_aggregation(1, "compute")
        store.commit_step(1, aggregation, "0" * 64, np.zeros(4, dtype=np.uint32), ["site-a"], 3, 0.5, result=hostile)
    finally:
        store.close()
    page, text, _ = _report(config, tmp_path, capsys)
    assert "<script" not in text.lower()
    assert page.headings["h1"] == f"securefed report: {HOSTILE_TASK}"
    [row] = page.tables["results"]
    assert row[0] == f"#1 {HOSTILE_KIND}" and row[1] == f"n = 3; label {' '.join(HOSTILE_DETAIL.split())}"
    assert gather_report(load_coordinator_config(config)).result == hostile
