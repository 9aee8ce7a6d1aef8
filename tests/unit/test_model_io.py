"""Exported model files (issue 12, "models out"): :mod:`securefed.learning.export`.

What must hold: a file round-trips its metadata and weights exactly; the estimator it loads into
predicts exactly as the task's model adapter does (behind the declared scaling); and anything that
is not such a file (truncated, altered, wrong length, extra arrays, object arrays carrying pickled
code) is refused with an :class:`InvalidParameter` naming the file and the problem, never any
other exception, and without running anything it holds. Also the store side: a round whose model
is not stored names the rounds that are.
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

import securefed
from securefed.errors import InvalidParameter
from securefed.federation.store import CoordinatorStore
from securefed.learning.export import (
    FORMAT,
    FORMAT_VERSION,
    METADATA_KEYS,
    build_metadata,
    encode_model,
    read_model,
    to_estimator,
    weights_sha256,
    write_model,
)
from securefed.learning.models import MODEL_KINDS, make_adapter
from securefed.model_cli import _stored_model
from securefed.preprocessing import Preprocessing

FINITE = st.floats(allow_nan=False, allow_infinity=False, width=64)
OPTIONS = {"sgd_logistic": {"l2": 1e-3}, "mlp": {"hidden_layer_sizes": [6, 3], "activation": "tanh"}}


def scaling(kind: str | None, n_features: int) -> Preprocessing | None:
    if kind is None:
        return None
    if kind.startswith("minmax"):
        low = tuple(float(-i - 1) for i in range(n_features))
        high = tuple(float(2 * i + 1) for i in range(n_features))
        return Preprocessing("minmax", (("min", low), ("max", high)), clip=kind == "minmax")
    mean = tuple(float(i) / 2 for i in range(n_features))
    spread = tuple(1.0 + i for i in range(n_features))
    return Preprocessing("standard", (("mean", mean), ("scale", spread)))


def model_case(kind: str, classes: tuple[int, ...], preprocessing: str | None, seed: int = 0, named: bool = True):
    """(adapter, preprocessing, metadata, weights) for a model with non-trivial weights."""
    n_features = 4
    adapter = make_adapter(kind, n_features, classes, **OPTIONS[kind])
    prep = scaling(preprocessing, n_features)
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, size=(120, n_features))  # in the scaled space the model is trained in
    y = np.asarray(sorted(classes))[np.argmax((X - 0.5) @ rng.normal(size=(n_features, len(classes))), axis=1)]
    start = adapter.initial_parameters(seed=seed)
    weights = adapter.fit_local(start, X, y, epochs=10, learning_rate=0.5, batch_size=8, seed=seed)
    metadata = build_metadata(
        task="readmission",
        round_number=7,
        model_kind=kind,
        model_options=OPTIONS[kind],
        n_features=n_features,
        feature_names=("age", "bmi", "glucose", "pressure") if named else None,
        classes=classes,
        preprocessing=prep,
        weights=weights,
        label_column="outcome",
        privacy={"epsilon": 1.25, "delta": 1e-5, "epsilon_budget": 4.0, "releases": 7, "unit": "record"},
        created_at=1_700_000_000.0,
    )
    return adapter, prep, metadata, weights


def raw_features(prep: Preprocessing | None, scaled: np.ndarray) -> np.ndarray:
    """Raw features that the declared preprocessing maps to ``scaled``."""
    if prep is None:
        return scaled
    if prep.scaler == "minmax":
        low, high = np.asarray(prep.param("min")), np.asarray(prep.param("max"))
        return low + scaled * (high - low)
    return np.asarray(prep.param("mean")) + scaled * np.asarray(prep.param("scale"))


@pytest.fixture
def model_file(tmp_path: Path) -> tuple[Path, dict, np.ndarray]:
    _, _, metadata, weights = model_case("mlp", (0, 1, 2), "minmax")
    path = tmp_path / "model.npz"
    write_model(path, metadata, weights)
    return path, metadata, weights


def savez(path: Path, **arrays: object) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def meta_array(metadata: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)


def refused(path: Path, *fragments: str) -> str:
    with pytest.raises(InvalidParameter) as caught:
        securefed.load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- round trip -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("preprocessing", [None, "minmax", "minmax-unclipped", "standard"])
@pytest.mark.parametrize("classes", [(0, 1), (3, -1, 7)], ids=["binary", "three-classes"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_loaded_estimator_predicts_exactly_as_the_adapter(
    tmp_path: Path, kind: str, classes: tuple[int, ...], preprocessing: str | None
) -> None:
    adapter, prep, metadata, weights = model_case(kind, classes, preprocessing)
    path = tmp_path / "model.npz"
    write_model(path, metadata, weights)
    model = securefed.load_model(path)

    X = raw_features(prep, np.random.default_rng(1).uniform(-0.3, 1.3, size=(200, 4)))  # some beyond a minmax range
    X[:5] = [[-9.0, 9.0, 50.0, -50.0]] * 5  # far outside: clipped only when declared so
    scaled = X if prep is None else prep.transform(X)
    expected_labels = adapter.predict(weights, scaled)
    expected_proba = adapter.predict_proba(weights, scaled)
    assert len(set(expected_labels.tolist())) > 1  # the comparison is not between two constants
    assert model.classes_.tolist() == sorted(classes)
    np.testing.assert_array_equal(model.predict(X), expected_labels)
    if prep is None:
        assert type(model) is type(adapter.to_estimator(weights))
        np.testing.assert_array_equal(model.predict_proba(X), expected_proba)  # bit for bit
    else:
        assert isinstance(model, Pipeline)
        scaler = model.steps[0][1]
        assert isinstance(scaler, MinMaxScaler if prep.scaler == "minmax" else StandardScaler)
        if prep.scaler == "minmax":
            assert scaler.clip is prep.clip
        # the scaler computes x * (1/range) - min/range where the node computes (x - min) / range: the same to rounding
        np.testing.assert_allclose(scaler.transform(X), scaled, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(model.predict_proba(X), expected_proba, rtol=1e-9, atol=1e-12)
    assert model.securefed_metadata == metadata
    assert model.securefed_metadata is not metadata


def test_the_file_holds_two_plain_numeric_arrays_and_loads_without_pickle(model_file) -> None:
    path, metadata, weights = model_file
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["metadata", "weights"]
        assert archive["weights"].dtype == np.dtype("<f8")
        assert archive["metadata"].dtype == np.uint8
        np.testing.assert_array_equal(archive["weights"], weights)
        assert json.loads(archive["metadata"].tobytes()) == metadata
    assert metadata["weights_sha256"] == hashlib.sha256(weights.astype("<f8").tobytes()).hexdigest()
    assert set(metadata) == METADATA_KEYS
    assert metadata["format"] == FORMAT and metadata["format_version"] == FORMAT_VERSION
    assert metadata["created_at"] == "2023-11-14T22:13:20Z"
    assert metadata["preprocessing"] == {
        "scaler": "minmax",
        "min": [-1.0, -2.0, -3.0, -4.0],
        "max": [1.0, 3.0, 5.0, 7.0],
        "clip": True,
    }


def test_write_is_atomic_and_leaves_no_temporary_file(model_file) -> None:
    path, metadata, weights = model_file
    before = path.read_bytes()
    write_model(path, metadata, weights)  # replaces in place
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npz"]


def test_metadata_without_feature_names_records_the_count(tmp_path: Path) -> None:
    _, _, metadata, weights = model_case("sgd_logistic", (0, 1), None, named=False)
    assert metadata["features"] == {"count": 4, "names": None}
    write_model(tmp_path / "m.npz", metadata, weights)
    assert securefed.load_model(tmp_path / "m.npz").securefed_metadata["features"]["names"] is None


@st.composite
def exported(draw: st.DrawFn) -> tuple[dict, np.ndarray]:
    kind = draw(st.sampled_from(MODEL_KINDS))
    n_features = draw(st.integers(1, 5))
    classes = draw(st.lists(st.integers(-(2**40), 2**40), min_size=2, max_size=4, unique=True))
    options: dict = {"l2": draw(st.floats(0, 1))}
    if kind == "mlp":
        options["hidden_layer_sizes"] = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2))
        options["activation"] = draw(st.sampled_from(["relu", "tanh", "logistic"]))
    adapter = make_adapter(kind, n_features, classes, **options)
    names = draw(st.none() | st.lists(st.text(min_size=1, max_size=8), min_size=n_features, max_size=n_features, unique=True))
    prep = None
    which = draw(st.sampled_from([None, "minmax", "standard"]))
    small = st.floats(-1e6, 1e6)
    if which == "minmax":
        low = draw(st.lists(small, min_size=n_features, max_size=n_features))
        high = [lo + draw(st.floats(1e-3, 1e6)) for lo in low]
        prep = Preprocessing("minmax", (("min", tuple(low)), ("max", tuple(high))), clip=draw(st.booleans()))
    elif which == "standard":
        mean = draw(st.lists(small, min_size=n_features, max_size=n_features))
        spread = draw(st.lists(st.floats(1e-3, 1e6), min_size=n_features, max_size=n_features))
        prep = Preprocessing("standard", (("mean", tuple(mean)), ("scale", tuple(spread))))
    privacy = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "epsilon": st.floats(0, 100),
                "delta": st.floats(1e-12, 0.5),
                "epsilon_budget": st.floats(0, 100),
                "releases": st.integers(0, 10_000),
                "unit": st.sampled_from(["site", "record"]),
            }
        )
    )
    weights = np.asarray(draw(st.lists(FINITE, min_size=adapter.parameter_count, max_size=adapter.parameter_count)))
    metadata = build_metadata(
        task=draw(st.text(min_size=1, max_size=30)),
        round_number=draw(st.integers(0, 10**6)),
        model_kind=kind,
        model_options=options,
        n_features=n_features,
        feature_names=names,
        classes=classes,
        preprocessing=prep,
        weights=weights,
        label_column=draw(st.text(min_size=1, max_size=10)),
        privacy=privacy,
        created_at=draw(st.floats(0, 4e9)),
    )
    return metadata, weights


@given(exported())
def test_metadata_and_weights_round_trip_exactly(case: tuple[dict, np.ndarray]) -> None:
    metadata, weights = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        write_model(path, metadata, weights)
        read_metadata, read_weights = read_model(path)
    assert read_metadata == metadata
    assert read_weights.dtype == np.float64
    assert read_weights.tobytes() == weights.astype("<f8").tobytes()  # bit for bit, signed zeros included
    assert read_metadata["weights_sha256"] == weights_sha256(read_weights)


# --- refusals -------------------------------------------------------------------------------------------


@given(data=st.data())
def test_any_damage_either_loads_or_is_refused_cleanly(data: st.DataObject) -> None:
    """Like the wire codec's fuzz invariant: altered bytes load or raise InvalidParameter, nothing else."""
    _, _, metadata, weights = model_case("sgd_logistic", (0, 1, 2), "standard")
    blob = bytearray(encode_model(metadata, weights))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        path.write_bytes(bytes(blob))
        try:
            read_metadata, read_weights = read_model(path)
        except InvalidParameter as exc:
            assert str(exc).startswith(f"{path}: ")
        else:  # damage the checks let through must leave the model itself intact
            assert read_metadata["weights_sha256"] == metadata["weights_sha256"]
            assert read_weights.tobytes() == weights.tobytes()


@pytest.mark.parametrize("keep", [0, 3, 30, 0.5, -22, -1])
def test_a_truncated_file_is_refused(model_file, keep: float) -> None:
    path, _, _ = model_file
    blob = path.read_bytes()
    cut = int(len(blob) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(blob) + keep)
    path.write_bytes(blob[:cut])
    refused(path)


def test_altered_weights_fail_the_hash(model_file) -> None:
    path, metadata, weights = model_file
    altered = weights.copy()
    altered[3] += 1e-9
    savez(path, weights=altered, metadata=meta_array(metadata))
    refused(path, "SHA-256", "damaged or was altered")


def test_a_wrong_number_of_weights_is_refused_even_with_a_matching_hash(model_file) -> None:
    path, metadata, weights = model_file
    for wrong in (weights[:-1], np.append(weights, 0.5)):
        savez(path, weights=wrong, metadata=meta_array({**metadata, "weights_sha256": weights_sha256(wrong)}))
        refused(path, f"holds {wrong.size} values, but the model's layout needs {weights.size}")


def test_a_parameter_count_that_does_not_fit_the_layout_is_refused(model_file) -> None:
    path, metadata, weights = model_file
    model = {**metadata["model"], "parameter_count": weights.size + 1}
    savez(path, weights=weights, metadata=meta_array({**metadata, "model": model}))
    refused(path, "parameter_count", f"has {weights.size}")


def test_extra_or_missing_arrays_are_refused(model_file) -> None:
    path, metadata, weights = model_file
    savez(path, weights=weights, metadata=meta_array(metadata), notes=np.zeros(2))
    refused(path, "unexpected arrays ['notes.npy']")
    savez(path, weights=weights)
    refused(path, "missing arrays ['metadata.npy']")


class _Payload:
    """Pickled, it runs ``Path(sentinel).touch()`` when unpickled."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.sentinel),))


@pytest.mark.parametrize("member", ["weights", "metadata"])
def test_a_pickle_bearing_file_is_refused_without_running_it(tmp_path: Path, model_file, member: str) -> None:
    path, metadata, weights = model_file
    sentinel = tmp_path / "payload-ran"
    arrays = {"weights": weights, "metadata": meta_array(metadata)}
    arrays[member] = np.array([_Payload(sentinel)], dtype=object)
    savez(path, **arrays)
    refused(path, f"array {member!r} is an object array")
    assert not sentinel.exists()
    # the canary is live: the same file read with pickle allowed runs the payload
    with np.load(path, allow_pickle=True) as archive:
        archive[member]
    assert sentinel.exists()


def test_a_raw_pickle_is_not_a_model_file(tmp_path: Path) -> None:
    import pickle  # the test builds the hostile file; the library never imports pickle

    sentinel = tmp_path / "payload-ran"
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps(_Payload(sentinel)))
    refused(path, "not an .npz archive")
    assert not sentinel.exists()


def _mutated(metadata: dict, change: str) -> dict:
    out = json.loads(json.dumps(metadata))
    if change == "round-as-text":
        out["round"] = "7"
    elif change == "one-class":
        out["classes"] = [0]
    elif change == "names-count":
        out["features"]["names"] = ["age"]
    elif change == "preprocessing-length":
        out["preprocessing"]["min"] = [0.0]
    elif change == "delta":
        out["privacy"]["delta"] = 2.0
    elif change == "kind":
        out["model"]["kind"] = "svm"
    elif change == "option":
        out["model"]["options"] = {"bogus": 1}
    elif change == "unknown-field":
        out["comment"] = "hi"
    elif change == "missing-field":
        del out["classes"]
    elif change == "bool-round":
        out["round"] = True
    elif change == "huge-number":
        out["privacy"]["epsilon"] = 10**400
    elif change == "hash-format":
        out["weights_sha256"] = "XYZ"
    elif change == "created-at":
        out["created_at"] = "yesterday"
    return out


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("round-as-text", "round must be a non-negative integer"),
        ("bool-round", "round must be a non-negative integer"),
        ("one-class", "classes must list at least two"),
        ("names-count", "features.names must be null or 4"),
        ("preprocessing-length", "metadata preprocessing:"),
        ("delta", "privacy.delta"),
        ("kind", "model.kind 'svm' is unknown"),
        ("option", "model.options: unknown option(s) ['bogus']"),
        ("unknown-field", "unknown fields ['comment']"),
        ("missing-field", "lacks ['classes']"),
        ("huge-number", "out of range"),
        ("hash-format", "weights_sha256 must be 64"),
        ("created-at", "not an ISO 8601 time"),
    ],
)
def test_wrong_metadata_is_refused_naming_the_field(model_file, change: str, fragment: str) -> None:
    path, metadata, weights = model_file
    savez(path, weights=weights, metadata=meta_array(_mutated(metadata, change)))
    refused(path, fragment)


def test_other_formats_and_versions_are_refused(model_file) -> None:
    path, metadata, weights = model_file
    savez(path, weights=weights, metadata=meta_array({**metadata, "format_version": FORMAT_VERSION + 1}))
    refused(path, "format version 2 is not supported", "upgrade")
    savez(path, weights=weights, metadata=meta_array({**metadata, "format": "onnx"}))
    refused(path, "not a securefed model file")
    savez(path, weights=weights, metadata=np.frombuffer(b"\xff{not json", dtype=np.uint8))
    refused(path, "not UTF-8 JSON")
    savez(path, weights=weights, metadata=np.frombuffer(b'{"format": NaN}', dtype=np.uint8))
    refused(path, "NaN")


def test_wrong_array_types_are_refused(model_file) -> None:
    path, metadata, weights = model_file
    savez(path, weights=weights, metadata=np.array(json.dumps(metadata)))  # a 0-d unicode string
    refused(path, "array 'metadata' has dtype <U")
    savez(path, weights=weights.astype(np.float32), metadata=meta_array(metadata))
    refused(path, "array 'weights' has dtype float32, expected float64")
    savez(path, weights=weights.reshape(1, -1), metadata=meta_array(metadata))
    refused(path, "expected a 1-D array")
    nan = weights.copy()
    nan[0] = np.nan
    savez(path, weights=nan, metadata=meta_array({**metadata, "weights_sha256": weights_sha256(nan)}))
    refused(path, "NaN or infinity")


def test_a_header_claiming_more_data_than_the_layout_allows_is_refused_before_reading(model_file) -> None:
    path, metadata, weights = model_file
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.npy", buffer.getvalue() + weights.tobytes())
        archive.writestr("metadata.npy", _npy(meta_array(metadata)))
    refused(path, "holds 1000000000000 values, but the model's layout needs")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_not_a_model_file_or_no_file(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n")
    refused(csv, "not a securefed model file")
    refused(tmp_path / "absent.npz", "no such file")


def test_export_refuses_inconsistent_input() -> None:
    _, _, metadata, weights = model_case("mlp", (0, 1), None)
    with pytest.raises(InvalidParameter, match=f"expected {weights.size} weights"):
        encode_model(metadata, weights[:-1])
    with pytest.raises(InvalidParameter, match="not the digest"):
        encode_model(metadata, weights + 1)
    with pytest.raises(InvalidParameter, match="not plain JSON"):
        build_metadata(
            task="t",
            round_number=1,
            model_kind="sgd_logistic",
            model_options={},
            n_features=1,
            feature_names=None,
            classes=(0, 1),
            preprocessing=None,
            weights=np.zeros(2),
            privacy={"epsilon": float("nan")},
        )
    with pytest.raises(InvalidParameter, match="parameter_count"):
        to_estimator({**metadata, "model": {**metadata["model"], "parameter_count": 3}}, weights)


# --- which rounds a store can give -------------------------------------------------------------------------


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "coordinator.sqlite"
    store = CoordinatorStore(path)
    store.save_initial_model(np.zeros(3))
    for round_number in range(1, 8):
        aggregation = store.next_aggregation(round_number, "train")
        store.commit_round(round_number, np.full(3, float(round_number)), None, aggregation, ["a", "b"], 2, 2.0, None, 1.0)
    store.close()
    return path


def test_a_round_still_stored_exports_and_a_pruned_one_names_those_kept(store_path: Path) -> None:
    store = CoordinatorStore(store_path, read_only=True)
    try:
        assert _stored_model(store, None)[0] == 7
        assert _stored_model(store, 7)[1].tolist() == [7.0, 7.0, 7.0]
        assert _stored_model(store, 4)[1].tolist() == [4.0, 4.0, 4.0]
        assert _stored_model(store, 0)[1].tolist() == [0.0, 0.0, 0.0]
        with pytest.raises(InvalidParameter, match="round 9 has not completed; the latest completed round is 7"):
            _stored_model(store, 9)
        with pytest.raises(InvalidParameter, match=r"round 1 is no longer stored .*rounds available: 0, 3, 4, 5, 6, 7\."):
            _stored_model(store, 1)
        with pytest.raises(InvalidParameter, match=">= 0"):
            _stored_model(store, -1)
    finally:
        store.close()


def test_an_empty_store_has_no_model(tmp_path: Path) -> None:
    CoordinatorStore(tmp_path / "c.sqlite").close()
    store = CoordinatorStore(tmp_path / "c.sqlite", read_only=True)
    try:
        with pytest.raises(InvalidParameter, match="holds no model yet"):
            _stored_model(store, None)
    finally:
        store.close()
