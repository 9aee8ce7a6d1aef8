"""Tree models out of securefed: ``securefed model export``, ``securefed.load_model`` and ``securefed predict``.

A coordinator's state is laid out as the daemon leaves it for a tree task: the config file, and a
store written through :class:`CoordinatorStore` as the Coordinator writes it (task bound to its
fingerprint, the empty initial model, then every compute step committed with its request digest
and sum, the last one with the result and the model's arrays). The steps come from the task's own
:class:`ComputationJob` fed by real forest / boosting workers over iris and breast_cancer, bins cut
over the bundled public bounds. The exported file must predict exactly what the ensemble predicts
(class indices mapped through the task's classes), from raw features; and any damaged or hostile
file must be refused with an :class:`InvalidParameter`, never unpickled.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import pathlib
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import securefed
from coordinator.config import load_coordinator_config
from securefed.analytics import AnalyticsPolicy, respond
from securefed.cli import main
from securefed.crypto.identity import SigningKey
from securefed.errors import InvalidParameter
from securefed.federation.computation import request_digest
from securefed.federation.store import CoordinatorStore
from securefed.learning.datasets import bundled_preprocessing, load_bundled
from securefed.learning.export import (
    TREE_ARRAYS,
    TREE_METADATA_KEYS,
    TREE_OPTIONAL_ARRAYS,
    TreeModel,
    build_metadata,
    build_tree_metadata,
    encode_tree_model,
    read_model,
    read_tree_model,
    tree_sha256,
    write_model,
)
from securefed.learning.models import make_adapter
from securefed.trees import (
    Bins,
    BoostingBuilder,
    BoostingWorker,
    ForestBuilder,
    ForestWorker,
    TreeEnsemble,
)
from securefed.trees.histograms import secure_sum
from securefed.trees.simulate import run
from securefed.wire.keys import CurveKeyPair

SITES = ["site-0", "site-1", "site-2"]

#: (model, dataset, the task's classes in its declared order, label offset, model_options)
CASES = {
    # classes declared out of order and not 0..K-1: index i of the ensemble is classes[i]
    "forest": ("random_forest", "iris", (12, 10, 11), 10, {"n_trees": 12, "max_depth": 4, "n_bins": 16, "seed": 5}),
    "gbdt-softmax": ("gbdt", "iris", (2, 0, 1), 0, {"n_estimators": 4, "max_depth": 2, "n_bins": 16}),
    "gbdt-logistic": (
        "gbdt",
        "breast_cancer",
        (1, 0),
        0,
        {"n_estimators": 5, "max_depth": 2, "n_bins": 16, "max_rows_per_node": 1000},
    ),
    # bins placed at the cohort's quantiles by a secure quantile step: the file carries bins_edges
    "forest-quantiles": (
        "random_forest",
        "iris",
        (0, 1, 2),
        0,
        {"n_trees": 8, "max_depth": 4, "n_bins": 16, "bins": "quantiles"},
    ),
}


def names_of(dataset: str) -> list[str]:
    return [f"{dataset}_{i}" for i in range(bundled_preprocessing(dataset).n_features)]


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_config(folder: Path, case: str, named: bool = True, state: str = "state") -> Path:
    kind, dataset, classes, _, options = CASES[case]
    prep = bundled_preprocessing(dataset)
    features = names_of(dataset) if named else prep.n_features
    nodes = "".join(
        f"""
        [[nodes]]
        name = "{name}"
        curve_public_key = "{CurveKeyPair.generate().public.decode()}"
        identity_public_key = "{base64.b64encode(SigningKey.generate().public_bytes).decode()}"
        """
        for name in SITES
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
            name = "{dataset}-{case}"
            model = "{kind}"
            model_options = {toml_value(options)}
            features = {toml_value(features)}
            classes = {toml_value(list(classes))}
            evaluation_label_column = "outcome"

            [task.preprocessing]
            scaler = "minmax"
            min = {toml_value(list(prep.param("min")))}
            max = {toml_value(list(prep.param("max")))}
            clip = true
            """
        )
        + textwrap.dedent(nodes)
    )
    return path


def make_workers(kind: str, params, X: np.ndarray, index: np.ndarray) -> list:
    parts = np.array_split(np.random.default_rng(0).permutation(len(index)), len(SITES))
    if kind == "random_forest":
        return [ForestWorker(params, X[p], index[p], rng=np.random.default_rng(k)) for k, p in enumerate(parts)]
    return [BoostingWorker(params, X[p], index[p]) for p in parts]


@functools.cache
def computed(case: str) -> tuple[list[tuple[dict, np.ndarray]], TreeEnsemble, dict]:
    """The task's computation run to its end: every step's (computation, sum), the model, the result."""
    kind, dataset, classes, offset, _ = CASES[case]
    with tempfile.TemporaryDirectory() as folder:
        task = load_coordinator_config(write_config(Path(folder), case)).task
    data = load_bundled(dataset, scaled=False)
    labels = data.y + offset
    index = np.asarray([classes.index(int(v)) for v in labels], dtype=np.int64)  # as every node maps its labels
    job = task.computation_job()
    workers = None
    steps = []
    while not job.done:
        computation = json.loads(json.dumps(job.request()))  # as on the wire
        request = computation["request"]
        if "kind" in request:  # the quantile step that places the bins, answered as every node does
            sites = np.array_split(np.random.default_rng(0).permutation(len(index)), len(SITES))
            policy = AnalyticsPolicy(frozenset({"quantiles"}))
            summed = secure_sum([respond(request, data.X[p], None, policy) for p in sites])
            job.receive(summed, len(SITES))
            steps.append((computation, summed))
            continue
        if workers is None:  # built once the bins are known
            workers = make_workers(kind, job.params, data.X, index)
        summed = secure_sum([worker.compute(request) for worker in workers])
        job.receive(summed, len(workers))
        steps.append((computation, summed))
    # the job's model is exactly what the trees package builds from the same sites
    builder = ForestBuilder(job.params) if kind == "random_forest" else BoostingBuilder(job.params)
    assert run(builder, make_workers(kind, job.params, data.X, index)).equals(job.model)
    return steps, job.model, job.result()


def commit(config_path: Path, case: str, steps: int | None = None) -> None:
    """Write the store as the coordinator does, up to ``steps`` steps (None: all, with the result and model)."""
    config = load_coordinator_config(config_path)
    done, model, result = computed(case)
    count = len(done) if steps is None else steps
    store = CoordinatorStore(config.store_path)
    try:
        store.bind_task(config.task.name, config.task.fingerprint())
        store.save_initial_model(np.zeros(0))
        for number, (computation, summed) in enumerate(done[:count], start=1):
            aggregation = store.next_aggregation(number, "compute")
            last = number == len(done)
            store.commit_step(
                number,
                aggregation,
                request_digest(computation),
                summed,
                SITES,
                len(SITES),
                0.1,
                result=result if last else None,
                model=model.to_arrays() if last else None,
            )
    finally:
        store.close()


def dataset_of(case: str) -> tuple[np.ndarray, np.ndarray]:
    _, dataset, _, offset, _ = CASES[case]
    data = load_bundled(dataset, scaled=False)
    return data.X, data.y + offset


def write_csv(path: Path, X: np.ndarray, columns: list[str], y: np.ndarray | None = None, label: str = "outcome") -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + ([label] if y is not None else []))
        for i, row in enumerate(X.tolist()):
            writer.writerow([repr(v) for v in row] + ([int(y[i])] if y is not None else []))
    return path


def export(tmp_path: Path, case: str, named: bool = True) -> tuple[Path, Path]:
    config = write_config(tmp_path, case, named=named)
    commit(config, case)
    out = tmp_path / f"{case}.npz"
    assert main(["model", "export", "--config", str(config), "--out", str(out)]) == 0
    return config, out


# --- export -> load_model -> predict ------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_export_load_and_predict_give_the_ensembles_predictions(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    kind, dataset, classes, _, options = CASES[case]
    steps, ensemble, _ = computed(case)
    config, out = export(tmp_path, case)
    printed = capsys.readouterr().out
    assert f"{kind}" in printed and f"with {ensemble.n_trees} trees" in printed
    assert f"after {len(steps)} secure aggregations" in printed and "no differential privacy" in printed

    model = securefed.load_model(out)
    assert isinstance(model, TreeModel)
    assert model.ensemble.equals(ensemble)
    meta = model.securefed_metadata
    task = load_coordinator_config(config).task
    assert set(meta) == TREE_METADATA_KEYS
    assert meta["task"] == task.name and meta["aggregations"] == len(steps)
    assert meta["model"] == {
        "kind": kind,
        "options": options,
        "loss": ensemble.loss,
        "n_trees": ensemble.n_trees,
        "n_nodes": ensemble.n_nodes,
        "n_bins": options["n_bins"],
    }
    assert meta["classes"] == list(classes)  # the task's order: the ensemble's class indices
    assert meta["features"] == {"count": len(names_of(dataset)), "names": names_of(dataset)}
    assert meta["preprocessing"] == bundled_preprocessing(dataset).to_json() and meta["label_column"] == "outcome"
    assert meta["privacy"] is None
    assert meta["model_sha256"] == tree_sha256(ensemble.to_arrays())
    assert model.classes_.tolist() == sorted(classes)
    assert model.n_features_in_ == len(names_of(dataset))
    assert model.feature_names_in_.tolist() == names_of(dataset)

    X, y = dataset_of(case)  # raw units: the trees' bins are over raw values
    expected = np.asarray(classes)[ensemble.predict(X)]
    np.testing.assert_array_equal(model.predict(X), expected)
    proba = ensemble.predict_proba(X)[:, np.argsort(classes)]
    np.testing.assert_array_equal(model.predict_proba(X), proba)
    np.testing.assert_array_equal(model.classes_[np.argmax(model.predict_proba(X), axis=1)], expected)
    accuracy = float(np.mean(expected == y))
    assert accuracy > 0.85 and model.score(X, y) == accuracy  # a trained model, not a constant
    if kind == "gbdt" and len(classes) == 2:
        assert ensemble.loss == "logistic"
    elif kind == "gbdt":
        assert ensemble.loss == "softmax"

    # the CLI: columns in another order (matched by name), the label column present
    names = names_of(dataset)
    order = np.random.default_rng(3).permutation(len(names))
    table = write_csv(tmp_path / "test.csv", X[:, order], [names[i] for i in order], y)
    predictions = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(out), "--csv", str(table), "--out", str(predictions), "--proba"]) == 0
    summary = capsys.readouterr().out
    assert f"{len(y)} predictions by {kind}" in summary and f"{len(steps)} secure aggregations" in summary
    assert f"accuracy {accuracy:.4f} ({int(np.sum(expected == y))} of {len(y)} rows" in summary
    rows = list(csv.reader(predictions.open()))
    assert rows[0] == ["prediction", *(f"proba_{c}" for c in sorted(classes))]
    assert [int(r[0]) for r in rows[1:]] == expected.tolist()
    np.testing.assert_array_equal(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), proba)


def test_a_task_without_feature_names_takes_columns_in_order(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, out = export(tmp_path, "forest", named=False)
    model = securefed.load_model(out)
    assert model.securefed_metadata["features"] == {"count": 4, "names": None}
    assert not hasattr(model, "feature_names_in_")  # as scikit-learn: only for named features
    X, _ = dataset_of("forest")
    table = write_csv(tmp_path / "bare.csv", X, ["a", "b", "c", "d"])
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--csv", str(table)]) == 0
    lines = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [int(r[0]) for r in lines[1:]] == model.predict(X).tolist()


def test_the_file_is_plain_arrays_that_load_without_pickle(tmp_path: Path) -> None:
    _, out = export(tmp_path, "gbdt-softmax")
    _, ensemble, _ = computed("gbdt-softmax")
    with np.load(out, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    metadata = json.loads(arrays.pop("metadata").tobytes())
    assert set(arrays) == set(TREE_ARRAYS)
    assert TreeEnsemble.from_arrays(arrays).equals(ensemble)
    assert metadata["model_sha256"] == tree_sha256(arrays)
    assert read_tree_model(out)[0] == metadata


def test_the_file_layout_is_the_ensembles_own() -> None:
    """TREE_ARRAYS restates TreeEnsemble.to_arrays(): if securefed.trees changes its layout this fails first."""
    for case in CASES:
        arrays = computed(case)[1].to_arrays()
        quantile_binned = CASES[case][4].get("bins") == "quantiles"
        assert {name: (a.dtype, a.ndim) for name, a in arrays.items()} == (
            {**TREE_ARRAYS, **TREE_OPTIONAL_ARRAYS} if quantile_binned else TREE_ARRAYS
        )


def test_input_rows_are_checked(tmp_path: Path) -> None:
    _, out = export(tmp_path, "forest")
    model = securefed.load_model(out)
    X, _ = dataset_of("forest")
    with pytest.raises(InvalidParameter, match=r"X has shape \(150, 3\); the model takes rows x 4 features"):
        model.predict(X[:, :3])
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(InvalidParameter, match="NaN or infinity"):
        model.predict_proba(bad)
    with pytest.raises(InvalidParameter, match="numbers only"):
        model.predict([["a", "b", "c", "d"]])

    class Frame:  # what scikit-learn checks of a DataFrame: its column names
        def __init__(self, columns: list[str], values: np.ndarray) -> None:
            self.columns, self.values = columns, values

        def __array__(self, dtype=None, copy=None) -> np.ndarray:
            return self.values if dtype is None else self.values.astype(dtype)

    names = names_of("iris")
    np.testing.assert_array_equal(model.predict(Frame(names, X)), model.predict(X))
    with pytest.raises(InvalidParameter, match="not the model's features"):
        model.predict(Frame(names[::-1], X[:, ::-1]))
    assert repr(model) == "TreeModel(random_forest, 12 trees, 4 features, classes [10, 11, 12])"


# --- export errors ----------------------------------------------------------------------------------


def test_an_unfinished_computation_has_no_model_and_says_how_to_follow_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path, "gbdt-softmax")
    out = tmp_path / "m.npz"
    args = ["model", "export", "--config", str(config), "--out", str(out)]
    assert main(args) == 2
    assert "no coordinator state yet" in capsys.readouterr().err  # not even started

    commit(config, "gbdt-softmax", steps=0)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the computation has not finished (no secure aggregation done yet)"), err
    assert f"securefed status --config {config}" in err and err.count("\n") == 1

    config.parent.joinpath("state", "coordinator.sqlite").unlink()
    commit(config, "gbdt-softmax", steps=3)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has not finished (3 secure aggregations done so far)" in err and "securefed status --config" in err
    assert not out.exists()


def test_round_does_not_apply_to_tree_tasks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path, "forest")
    commit(config, "forest")
    assert main(["model", "export", "--config", str(config), "--out", str(tmp_path / "m.npz"), "--round", "1"]) == 2
    assert "--round does not apply to a random_forest task" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()


def test_build_refuses_metadata_that_does_not_describe_the_ensemble() -> None:
    _, ensemble, _ = computed("forest")
    base = {
        "task": "t",
        "aggregations": 3,
        "model_kind": "random_forest",
        "model_options": {},
        "feature_names": None,
        "classes": (12, 10, 11),
        "preprocessing": bundled_preprocessing("iris"),
        "ensemble": ensemble,
    }
    build_tree_metadata(**base)
    with pytest.raises(InvalidParameter, match="lists 2 classes, but the trees predict 3"):
        build_tree_metadata(**{**base, "classes": (0, 1)})
    with pytest.raises(InvalidParameter, match=r"model.loss of a gbdt file must be one of \['logistic', 'softmax'\], got ''"):
        build_tree_metadata(**{**base, "model_kind": "gbdt"})
    with pytest.raises(InvalidParameter, match="not cut over the metadata's preprocessing"):
        build_tree_metadata(
            **{
                **base,
                "preprocessing": bundled_preprocessing("iris").__class__.from_json(
                    {"scaler": "minmax", "min": [0.0] * 4, "max": [10.0] * 4, "clip": True}
                ),
            }
        )
    with pytest.raises(InvalidParameter, match="preprocessing must be the task's minmax bounds"):
        build_tree_metadata(**{**base, "preprocessing": None})


# --- damaged and hostile files ------------------------------------------------------------------------


@functools.cache
def tree_blob(case: str = "forest") -> bytes:
    _, ensemble, _ = computed(case)
    kind, dataset, classes, _, options = CASES[case]
    metadata = build_tree_metadata(
        task="fuzz",
        aggregations=4,
        model_kind=kind,
        model_options=options,
        feature_names=names_of(dataset),
        classes=classes,
        preprocessing=bundled_preprocessing(dataset),
        ensemble=ensemble,
        created_at=1_700_000_000.0,
    )
    return encode_tree_model(metadata, ensemble)


def parts(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    return json.loads(arrays.pop("metadata").tobytes()), arrays


def savez(path: Path, metadata: dict, arrays: dict, rehash: bool = True) -> Path:
    if rehash:
        metadata = {**metadata, "model_sha256": tree_sha256(arrays)}
    with path.open("wb") as handle:
        np.savez(handle, **arrays, metadata=np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8))
    return path


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(InvalidParameter) as caught:
        securefed.load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_damage_either_loads_the_same_model_or_is_refused_cleanly(data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(list(CASES)))
    original = tree_blob(case)
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        path.write_bytes(bytes(blob))
        try:
            model = securefed.load_model(path)
        except InvalidParameter as exc:
            assert str(exc).startswith(f"{path}: ")
        else:  # damage the checks let through (zip padding, a CRC byte) must leave the model itself intact
            assert isinstance(model, TreeModel)
            assert model.ensemble.equals(computed(case)[1])
            assert model.securefed_metadata == parts(original)[0]


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_crafted_arrays_with_a_matching_hash_load_only_if_they_are_a_valid_model(data: st.DataObject) -> None:
    """Past the zip CRCs and the hash: altered values, resized or retyped arrays meet TreeEnsemble's checks."""
    case = data.draw(st.sampled_from(list(CASES)))
    metadata, arrays = parts(tree_blob(case))
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(TREE_ARRAYS)))
        array = arrays[name].copy()
        how = data.draw(st.sampled_from(["set", "drop", "append", "retype"]))
        if how == "set" and array.size:
            flat = array.reshape(-1)
            at = data.draw(st.integers(0, flat.size - 1))
            if array.dtype.kind == "f":
                flat[at] = data.draw(st.floats(allow_nan=True, allow_infinity=True))
            else:
                info = np.iinfo(array.dtype)
                flat[at] = data.draw(st.integers(int(info.min), int(info.max)))
        elif how == "drop" and array.shape[0]:
            array = array[:-1]
        elif how == "append":
            array = np.concatenate([array, array[-1:] if array.shape[0] else np.zeros((1, *array.shape[1:]), array.dtype)])
        elif how == "retype":
            with np.errstate(invalid="ignore"):  # NaN or huge values cast to integers: any result will do
                array = array.astype(data.draw(st.sampled_from([np.float64, np.int32, np.int64, np.uint8])))
        arrays[name] = array
    with tempfile.TemporaryDirectory() as folder:
        path = savez(Path(folder) / "m.npz", metadata, arrays)
        try:
            model = securefed.load_model(path)
        except InvalidParameter as exc:
            assert str(exc).startswith(f"{path}: ")
        else:  # what loads is a checked ensemble that predicts
            X, _ = dataset_of(case)
            assert set(model.predict(X).tolist()) <= set(CASES[case][2])
            assert model.predict_proba(X).shape == (len(X), len(CASES[case][2]))


@pytest.mark.parametrize("keep", [0, 3, 30, 0.25, 0.5, 0.9, -22, -1])
def test_a_truncated_tree_file_is_refused(tmp_path: Path, keep: float) -> None:
    blob = tree_blob()
    cut = int(len(blob) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(blob) + keep)
    path = tmp_path / "model.npz"
    path.write_bytes(blob[:cut])
    refused(path)


WRONG_DTYPES = {"f8": np.float32, "i4": np.int64, "i8": np.int32, "u1": np.int8}


@pytest.mark.parametrize("name", sorted(TREE_ARRAYS))
def test_a_wrong_dtype_is_refused_naming_the_array(tmp_path: Path, name: str) -> None:
    metadata, arrays = parts(tree_blob())
    wrong = WRONG_DTYPES[TREE_ARRAYS[name][0].str[1:]]
    arrays[name] = arrays[name].astype(wrong)
    refused(
        savez(tmp_path / "m.npz", metadata, arrays),
        f"array {name!r} has dtype {np.dtype(wrong)}, expected {TREE_ARRAYS[name][0]}",
    )


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    metadata, arrays = parts(tree_blob())
    refused(
        savez(tmp_path / "m.npz", metadata, {**arrays, "value": arrays["value"].reshape(-1)}),
        "array 'value'",
        "expected a 2-D array",
    )
    refused(
        savez(tmp_path / "m.npz", metadata, {**arrays, "left": arrays["left"].reshape(1, -1)}),
        "array 'left'",
        "expected a 1-D array",
    )
    fortran = np.asfortranarray(arrays["value"])  # written column-major: read back in the right order
    savez(tmp_path / "m.npz", metadata, {**arrays, "value": fortran})
    assert securefed.load_model(tmp_path / "m.npz").ensemble.equals(computed("forest")[1])


class _Payload:
    """Pickled, it runs ``Path(sentinel).touch()`` when unpickled."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.sentinel),))


@pytest.mark.parametrize("member", [*sorted(TREE_ARRAYS), "metadata"])
def test_a_pickle_bearing_tree_file_is_refused_without_running_it(tmp_path: Path, member: str) -> None:
    metadata, arrays = parts(tree_blob())
    sentinel = tmp_path / "payload-ran"
    arrays = {**arrays, "metadata": np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)}
    arrays[member] = np.array([_Payload(sentinel)], dtype=object)
    path = tmp_path / "model.npz"
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    refused(path, f"array {member!r} is an object array")
    assert not sentinel.exists()
    with np.load(path, allow_pickle=True) as archive:  # the canary is live: with pickle allowed it runs
        archive[member]
    assert sentinel.exists()


def test_altered_arrays_fail_the_hash(tmp_path: Path) -> None:
    metadata, arrays = parts(tree_blob())
    value = arrays["value"].copy()
    value[0, 0] += 1e-9
    refused(savez(tmp_path / "m.npz", metadata, {**arrays, "value": value}, rehash=False), "SHA-256", "damaged or was altered")


def test_a_defective_tree_is_refused_by_the_ensembles_checks(tmp_path: Path) -> None:
    """A file crafted with a matching hash still passes TreeEnsemble.from_arrays' checks, named."""
    metadata, arrays = parts(tree_blob())
    left = arrays["left"].copy()
    internal = int(np.flatnonzero(left >= 0)[0])
    left[internal] = internal  # a node that is its own child: a cycle
    refused(
        savez(tmp_path / "m.npz", metadata, {**arrays, "left": left}),
        "tree model: a tree node's children must be distinct nodes after it",
    )
    feature = arrays["feature"].copy()
    feature[int(np.flatnonzero(feature >= 0)[0])] = 4
    refused(savez(tmp_path / "m.npz", metadata, {**arrays, "feature": feature}), "splits on a feature outside 0..3")
    offsets = arrays["tree_offsets"].copy()
    offsets[-1] += 1
    refused(savez(tmp_path / "m.npz", metadata, {**arrays, "tree_offsets": offsets}), "tree_offsets must start at 0")
    nested = np.frombuffer(b"[" * 100_000, dtype=np.uint8)
    refused(savez(tmp_path / "m.npz", metadata, {**arrays, "meta": nested}), "tree model")
    low = arrays["bins_low"].copy()
    low[0] -= 1.0
    refused(savez(tmp_path / "m.npz", metadata, {**arrays, "bins_low": low}), "not cut over the metadata's preprocessing")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m["classes"].pop(), "lists 2 classes, but the trees predict 3"),
        (
            lambda m: m["model"].update(kind="gbdt", loss="softmax"),
            "model.kind is 'gbdt', but the tree arrays hold 'random_forest'",
        ),
        (lambda m: m["model"].update(loss="squared_error"), "model.loss of a random_forest file must be one of ['']"),
        (lambda m: m["model"].update(n_trees=3), "model.n_trees is 3"),
        (lambda m: m.update(privacy={"epsilon": 1.0}), "privacy must be null"),
        (lambda m: m.update(preprocessing=None), "preprocessing must be the task's minmax bounds"),
        (lambda m: m.update(aggregations=0), "aggregations must be a positive integer"),
        (lambda m: m.update(round=3), "unknown fields ['round']"),
        (lambda m: m.pop("model_sha256"), "lacks ['model_sha256']"),
        (lambda m: m["features"].update(count=5, names=None), "preprocessing is declared for 4 features"),
    ],
)
def test_metadata_that_does_not_describe_the_trees_is_refused(tmp_path: Path, change, fragment: str) -> None:
    metadata, arrays = parts(tree_blob())
    change(metadata)
    refused(savez(tmp_path / "m.npz", metadata, arrays, rehash="model_sha256" in metadata), fragment)


def test_extra_or_missing_tree_arrays_are_refused(tmp_path: Path) -> None:
    metadata, arrays = parts(tree_blob())
    refused(savez(tmp_path / "m.npz", metadata, {**arrays, "weights": np.zeros(3)}), "unexpected arrays ['weights.npy']")
    del arrays["base_score"]
    refused(
        savez(tmp_path / "m.npz", metadata, arrays),
        "random_forest model file holds exactly the arrays",
        "missing arrays ['base_score.npy']",
    )


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_header_claiming_huge_arrays_is_refused_before_reading(tmp_path: Path) -> None:
    metadata, arrays = parts(tree_blob())
    path = savez(tmp_path / "m.npz", metadata, arrays)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i4", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(path, "a") as archive:  # a second 'feature.npy' entry
        archive.writestr("feature.npy", header.getvalue() + arrays["feature"].tobytes())
    refused(path, "repeated arrays")
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", header.getvalue() + array.tobytes() if name == "feature" else buffer.getvalue())
        buffer = io.BytesIO()
        np.save(buffer, np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8))
        archive.writestr("metadata.npy", buffer.getvalue())
    refused(path, "array 'feature' declares 1000000000000 values")


def test_each_reader_points_to_the_other_kind(tmp_path: Path) -> None:
    tree = tmp_path / "tree.npz"
    tree.write_bytes(tree_blob())
    with pytest.raises(
        InvalidParameter, match=r"holds a random_forest tree model, not weights; read it with securefed\.load_model"
    ):
        read_model(tree)
    adapter = make_adapter("sgd_logistic", 4, (0, 1))
    weights = adapter.initial_parameters(seed=1)
    sgd = tmp_path / "sgd.npz"
    write_model(
        sgd,
        build_metadata(
            task="t",
            round_number=1,
            model_kind="sgd_logistic",
            model_options={},
            n_features=4,
            feature_names=None,
            classes=(0, 1),
            preprocessing=None,
            weights=weights,
        ),
        weights,
    )
    with pytest.raises(InvalidParameter, match="holds a sgd_logistic model's weights, not trees"):
        read_tree_model(sgd)
    assert not isinstance(securefed.load_model(sgd), TreeModel)


def test_bins_from_the_preprocessing_are_the_models_bins() -> None:
    """The export relies on it: a tree task's bins span its declared min-max bounds in n_bins (equal width,
    or at the edges a secure quantile step placed inside them)."""
    for case, (_, dataset, _, _, options) in CASES.items():
        bins = computed(case)[1].bins
        declared = Bins.from_preprocessing(bundled_preprocessing(dataset), options["n_bins"])
        if options.get("bins") == "quantiles":
            assert (bins.low, bins.high, bins.n_bins) == (declared.low, declared.high, declared.n_bins) and bins.edges is not None
        else:
            assert bins == declared
