"""``securefed demo`` for compute tasks over the real daemons: a random forest and a linear regression.

The demo runs in this process (its coordinator and nodes are child processes it
stops itself); each run keeps its keys, configs and logs in ``tmp_path`` and
writes a ``--report``, which the tests check against scikit-learn and against
the model the coordinator stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from securefed import demo
from securefed.cli import build_parser
from securefed.errors import InvalidParameter
from securefed.federation.store import CoordinatorStore
from securefed.learning.datasets import PUBLIC_BOUNDS, TARGET_BOUNDS, load_bundled, train_test_split_stratified
from securefed.trees import TreeEnsemble

pytestmark = pytest.mark.integration

#: a bound on a hung run (a healthy one takes about 10 s); the demo stops its daemons when it gives up
TIMEOUT = 120.0


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> tuple[dict, Path]:
    monkeypatch.setattr(demo, "_OVERALL_TIMEOUT", TIMEOUT)
    workdir, report = tmp_path / "federation", tmp_path / "report.json"
    args = build_parser().parse_args(["demo", "--nodes", "3", *flags, "--workdir", str(workdir), "--report", str(report)])
    assert demo.run_demo(args) == 0
    return json.loads(report.read_text()), workdir


def test_random_forest_on_iris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    report, workdir = _run(tmp_path, monkeypatch, "--model", "random_forest", "--dataset", "iris")
    out = capsys.readouterr().out

    options = demo.TREE_OPTIONS["random_forest"]
    assert report["model"] == "random_forest" and report["trees"] == options["n_trees"]
    assert report["final_accuracy"] >= 0.85, out
    assert report["baseline"] == "RandomForestClassifier" and report["baseline_accuracy"] >= 0.85
    # one aggregation per tree level shared by all trees: at most max_depth levels (no chunking on iris)
    assert 0 < report["aggregations"] <= options["max_depth"]
    assert [row["round"] for row in report["rounds"]] == list(range(1, report["aggregations"] + 1))
    assert all(row["participants"] == 3 and row["accuracy"] is None for row in report["rounds"])
    progress = [line for line in out.splitlines() if line.startswith("aggregation ")]
    assert len(progress) == report["aggregations"] and progress[-1].endswith(")"), out
    assert report["seconds_per_tree"] == pytest.approx(report["aggregation_seconds"] / options["n_trees"])
    assert 0 < report["aggregation_seconds"] <= report["seconds"]

    # the reported accuracy is the stored model's, predicted from raw features on the demo's held-out split
    store = CoordinatorStore(workdir / "coordinator" / "state" / "coordinator.sqlite", read_only=True)
    try:
        model = TreeEnsemble.from_arrays(store.computation_model())
        assert store.computation_result()["aggregations"] == report["aggregations"]
    finally:
        store.close()
    data = load_bundled("iris", scaled=False)
    split = train_test_split_stratified(data.X, data.y, 0.25, 0)
    assert model.kind == "random_forest" and model.n_trees == options["n_trees"]
    assert float(np.mean(model.predict(split.X_test) == split.y_test)) == report["final_accuracy"]


def test_linear_regression_on_diabetes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report, workdir = _run(tmp_path, monkeypatch, "--dataset", "diabetes")

    assert report["model"] == "linear_regression" and report["aggregations"] == 2  # least squares, then ridge
    assert all(row["participants"] == 3 for row in report["rounds"])
    for fit in report["regressions"]:
        # the secure sums are exact to about 1e-6 in normalised units: scikit-learn's R² to far better than 0.01
        assert abs(fit["r2"] - fit["baseline_r2"]) < 1e-4, fit
        assert abs(fit["r2_train"] - fit["baseline_r2_train"]) < 1e-4, fit
        assert fit["r2"] > 0.3 and fit["count"] == 331
    assert report["final_r2"] == report["regressions"][0]["r2"] and report["regressions"][1]["ridge"] == demo.RIDGE_ALPHA
    # the sites' files carry the whole-number target as an integer label column
    header, first = (workdir / "site-1" / "data.csv").read_text().splitlines()[:2]
    assert header.split(",")[-1] == "label" and first.split(",")[-1].isdigit()


def test_diabetes_public_bounds_cover_the_data() -> None:
    data = load_bundled("diabetes", scaled=False)
    low, high = (np.asarray(bound) for bound in PUBLIC_BOUNDS["diabetes"])
    assert np.all(data.X >= low) and np.all(data.X <= high)  # so clipping leaves the regression's data alone
    y_low, y_high = TARGET_BOUNDS["diabetes"]
    assert data.y.min() == y_low and data.y.max() == y_high
    assert data.classes == tuple(range(y_low, y_high + 1))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "random_forest", "--epsilon", "1"], "differential privacy is not available"),
        (["--model", "gbdt", "--rounds", "5"], "--rounds is for SGD training"),
        (["--model", "gbdt", "--dataset", "diabetes"], "regression GBDT over the daemons is not available"),
        (["--model", "mlp", "--dataset", "diabetes"], "leave --model out"),
        (["--dataset", "diabetes", "--epsilon", "1"], "differential privacy is not available"),
        (["--dataset", "diabetes", "--partition", "dirichlet"], "use iid or kmeans"),
    ],
)
def test_unsupported_combinations_are_refused_before_anything_starts(tmp_path: Path, flags: list[str], message: str) -> None:
    workdir = tmp_path / "federation"
    args = build_parser().parse_args(["demo", "--nodes", "3", *flags, "--workdir", str(workdir)])
    with pytest.raises(InvalidParameter, match=message):
        demo.run_demo(args)
    assert not workdir.exists()
