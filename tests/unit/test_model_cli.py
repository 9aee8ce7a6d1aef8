"""`securefed model export` and `securefed predict` end to end (issue 12, "models out").

A coordinator's state folder is laid out as the daemon leaves it: its config file, and a store
written through :class:`CoordinatorStore` the way the Coordinator writes it (task bound to its
fingerprint, the initial model, then each round committed with its DP release and the epsilon
composed so far), the models trained on iris by the task's own adapter behind the declared
min-max scaling. Then the CLI exports the model and predicts with it, and what comes out is
checked against the adapter's own predictions and the store's records.
"""

from __future__ import annotations

import base64
import csv
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import securefed
from coordinator.config import load_coordinator_config
from securefed.cli import main
from securefed.crypto.identity import SigningKey
from securefed.federation.store import CoordinatorStore
from securefed.learning.datasets import load_bundled
from securefed.learning.models import make_adapter
from securefed.learning.strategies import make_strategy
from securefed.wire.keys import CurveKeyPair

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROUNDS = 6  # the store then no longer holds round 1's model (it keeps round 0 and the newest five)
#: what the coordinator recorded as the task's epsilon after each round (composed over the releases)
EPSILON = {r: 0.75 * r for r in range(1, ROUNDS + 1)}
HEAVY = ("numpy", "sklearn", "scipy", "zmq", "cryptography", "dp_accounting", "matplotlib")


def write_config(folder: Path, model: str = "mlp", state: str = "state") -> Path:
    nodes = "".join(
        f"""
        [[nodes]]
        name = "site-{i}"
        curve_public_key = "{CurveKeyPair.generate().public.decode()}"
        identity_public_key = "{base64.b64encode(SigningKey.generate().public_bytes).decode()}"
        """
        for i in range(3)
    )
    path = folder / "coordinator.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [coordinator]
            listen = "tcp://127.0.0.1:7700"
            state_dir = "{state}"
            curve_secret_key_file = "curve.key"

            [task]
            name = "iris-federation"
            model = "{model}"
            model_options = {{ hidden_layer_sizes = [8] }}
            features = {FEATURES!r}
            classes = [0, 1, 2]
            rounds = 10
            evaluation_label_column = "species"

            [task.dp]
            epsilon = 8.0
            delta = 1e-6

            [task.preprocessing]
            scaler = "minmax"
            min = [4.0, 2.0, 1.0, 0.0]
            max = [8.0, 4.5, 7.0, 2.5]
            """
        ).replace("'", '"')
        + textwrap.dedent(nodes)
    )
    return path


@pytest.fixture
def federation(tmp_path: Path) -> dict:
    """A config, and its store after ROUNDS rounds trained and committed as the coordinator commits them."""
    config_path = write_config(tmp_path)
    config = load_coordinator_config(config_path)
    task = config.task
    data = load_bundled("iris", scaled=False)
    adapter = make_adapter(task.model_kind, task.n_features, task.classes, **task.model_options)
    strategy = make_strategy(task.strategy, **task.strategy_options)
    scaled = task.preprocessing.transform(data.X)
    store = CoordinatorStore(config.store_path)
    try:
        store.bind_task(task.name, task.fingerprint())
        store.save_initial_model(adapter.initial_parameters(seed=3))
        _, model, _ = store.latest_model()
        for round_number in range(1, ROUNDS + 1):
            aggregation = store.next_aggregation(round_number, "train")
            trained = adapter.fit_local(model, scaled, data.y, epochs=3, learning_rate=0.5, batch_size=8, seed=round_number)
            model = strategy.apply(model, trained - model)
            store.commit_round(
                round_number,
                model,
                strategy.state_dict(),
                aggregation,
                ["site-0", "site-1", "site-2"],
                3,
                3.0,
                EPSILON[round_number],
                1.5,
                (4.0e6, 1.0e3, 2.0e4),
            )
    finally:
        store.close()
    return {"config": config_path, "folder": tmp_path, "task": task, "adapter": adapter, "data": data, "model": model}


def write_csv(path: Path, X: np.ndarray, columns: list[str], y: np.ndarray | None = None, label: str = "species") -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + ([label] if y is not None else []))
        for i, row in enumerate(X.tolist()):
            writer.writerow([repr(v) for v in row] + ([int(y[i])] if y is not None else []))
    return path


def stored_sha256(config: Path, round_number: int) -> str:
    db = CoordinatorStore.open_readonly(load_coordinator_config(config).store_path)
    try:
        return db.execute("SELECT sha256 FROM models WHERE round = ?", (round_number,)).fetchone()[0]
    finally:
        db.close()


def test_export_then_predict_gives_the_adapters_predictions(federation: dict, capsys: pytest.CaptureFixture) -> None:
    folder, task, adapter, data, weights = (federation[k] for k in ("folder", "task", "adapter", "data", "model"))
    out = folder / "model.npz"
    assert main(["model", "export", "--config", str(federation["config"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"round {ROUNDS}," in printed and f"epsilon {EPSILON[ROUNDS]:g} spent at delta 1e-06 ({ROUNDS} DP releases)" in printed

    model = securefed.load_model(out)
    meta = model.securefed_metadata
    assert meta["task"] == "iris-federation" and meta["round"] == ROUNDS
    assert meta["model"] == {"kind": "mlp", "options": {"hidden_layer_sizes": [8]}, "parameter_count": adapter.parameter_count}
    assert meta["features"] == {"count": 4, "names": FEATURES}
    assert meta["classes"] == [0, 1, 2] and meta["label_column"] == "species"
    assert meta["preprocessing"] == task.preprocessing.to_json()
    assert meta["privacy"] == {
        "epsilon": EPSILON[ROUNDS],
        "delta": 1e-6,
        "epsilon_budget": 8.0,
        "releases": ROUNDS,
        "unit": "site",
    }
    assert meta["weights_sha256"] == stored_sha256(federation["config"], ROUNDS)

    # columns in another order, label column present: predictions by name, and the accuracy
    order = [2, 0, 3, 1]
    table = write_csv(folder / "test.csv", data.X[:, order], [FEATURES[i] for i in order], data.y)
    predictions = folder / "predictions.csv"
    args = ["predict", "--model", str(out), "--csv", str(table), "--out", str(predictions), "--proba"]
    assert main(args) == 0
    expected = adapter.predict(weights, task.preprocessing.transform(data.X))
    proba = adapter.predict_proba(weights, task.preprocessing.transform(data.X))
    accuracy = float(np.mean(expected == data.y))
    assert accuracy > 0.6  # a trained model, not a constant
    assert f"accuracy {accuracy:.4f} ({int(np.sum(expected == data.y))} of 150 rows" in capsys.readouterr().out
    rows = list(csv.reader(predictions.open()))
    assert rows[0] == ["prediction", "proba_0", "proba_1", "proba_2"]
    assert [int(r[0]) for r in rows[1:]] == expected.tolist()
    np.testing.assert_allclose(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), proba, rtol=1e-9, atol=1e-12)

    # no label column, predictions to standard output, the summary apart on standard error
    bare = write_csv(folder / "bare.csv", data.X, FEATURES)
    assert main(["predict", "--model", str(out), "--csv", str(bare)]) == 0
    captured = capsys.readouterr()
    assert list(csv.reader(io.StringIO(captured.out))) == [["prediction"], *([str(v)] for v in expected.tolist())]
    assert "150 predictions by mlp" in captured.err and "accuracy" not in captured.err


def test_user_errors_are_one_line_and_exit_2(federation: dict, capsys: pytest.CaptureFixture) -> None:
    folder, data, config = federation["folder"], federation["data"], str(federation["config"])
    out = folder / "model.npz"

    def fails(args: list[str], *fragments: str) -> None:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        for fragment in fragments:
            assert fragment in err, err

    # (only the latest is readable until the store offers older models; then those it keeps are listed)
    assert main(["model", "export", "--config", config, "--out", str(out), "--round", "1"]) == 2
    assert re.search(r"^error: the model of round 1 is .*rounds available: (0, 2, 3, 4, 5, )?6\b", capsys.readouterr().err)
    fails(["model", "export", "--config", config, "--out", str(out), "--round", "7"], "round 7 has not completed")
    assert main(["model", "export", "--config", config, "--out", str(out)]) == 0
    fails(["model", "export", "--config", config, "--out", str(out)], "already exists; use --force")
    assert main(["model", "export", "--config", config, "--out", str(out), "--force"]) == 0
    capsys.readouterr()

    missing = write_csv(folder / "missing.csv", data.X[:, :3], FEATURES[:3], data.y)
    fails(["predict", "--model", str(out), "--csv", str(missing)], "missing features ['petal_width']")
    renamed = write_csv(folder / "renamed.csv", data.X, FEATURES, data.y, label="class")
    fails(["predict", "--model", str(out), "--csv", str(renamed)], "['class']", "--label-column")
    assert main(["predict", "--model", str(out), "--csv", str(renamed), "--label-column", "class"]) == 0
    capsys.readouterr()
    text = write_csv(folder / "text.csv", data.X, FEATURES)
    text.write_text(text.read_text().replace(repr(float(data.X[3, 1])), "n/a", 1))
    fails(["predict", "--model", str(out), "--csv", str(text)], "non-numeric value 'n/a' at line 5")
    fails(["predict", "--model", str(folder / "test.csv"), "--csv", str(text)], "no such file")
    fails(["predict", "--model", str(missing), "--csv", str(text)], "not a securefed model file")

    other = folder / "other"
    other.mkdir()
    changed = write_config(other, model="sgd_logistic", state="../state")  # the same store, another task definition
    fails(["model", "export", "--config", str(changed), "--out", str(other / "m.npz")], "with another definition")
    fresh = write_config(other, state="new-state")
    fails(["model", "export", "--config", str(fresh), "--out", str(other / "m.npz")], "no coordinator state yet")


def test_a_dp_task_before_its_first_round_exports_epsilon_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_path = write_config(tmp_path)
    config = load_coordinator_config(config_path)
    task = config.task
    store = CoordinatorStore(config.store_path)
    store.bind_task(task.name, task.fingerprint())
    store.save_initial_model(
        make_adapter(task.model_kind, task.n_features, task.classes, **task.model_options).initial_parameters(seed=1)
    )
    store.close()
    out = tmp_path / "initial.npz"
    assert main(["model", "export", "--config", str(config_path), "--out", str(out)]) == 0
    assert "round 0 (the initial, untrained model)" in capsys.readouterr().out
    assert securefed.load_model(out).securefed_metadata["privacy"] == {
        "epsilon": 0.0,
        "delta": 1e-6,
        "epsilon_budget": 8.0,
        "releases": 0,
        "unit": "site",
    }


def test_the_commands_keep_heavy_imports_out_of_the_cli_parser() -> None:
    """`securefed status` builds the same parser: registering these commands must not import numpy and co."""
    code = (
        "import sys, securefed, securefed.cli; securefed.cli.build_parser(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == ""
    assert "load_model" in securefed.__all__
