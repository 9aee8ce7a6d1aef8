"""Unit tests for :mod:`securefed.learning.data` (a node's data file: round trips and
every refusal) and :mod:`securefed.learning.datasets` (the bundled demo datasets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from securefed.errors import InvalidParameter
from securefed.learning.data import LocalDataset, load_local_dataset, save_csv, save_npz
from securefed.learning.datasets import BUNDLED_DATASETS, load_bundled, train_test_split_stratified

NAMES = ("a", "b", "c")
CLASSES = (0, 1, 2)


def sample(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)) * 1e3, np.arange(n, dtype=np.int64) % 3


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, **kw) -> LocalDataset:
    args = {"label_column": "label", "features": NAMES, "classes": CLASSES}
    return load_local_dataset(path, **{**args, **kw})


# --- round trips ---------------------------------------------------------------------------------


def test_csv_round_trip_is_exact(tmp_path: Path) -> None:
    X, y = sample()
    save_csv(tmp_path / "d.csv", X, y, NAMES, "label")
    ds = load(tmp_path / "d.csv")
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.int64
    assert ds.X.tobytes() == X.tobytes()
    np.testing.assert_array_equal(ds.y, y)
    assert ds.feature_names == NAMES
    assert (ds.n_samples, ds.n_features) == (12, 3)


def test_npz_round_trip_is_exact(tmp_path: Path) -> None:
    X, y = sample()
    save_npz(tmp_path / "d.npz", X, y, NAMES)
    ds = load(tmp_path / "d.npz")
    assert ds.X.tobytes() == X.tobytes()
    np.testing.assert_array_equal(ds.y, y)
    assert ds.feature_names == NAMES
    save_npz(tmp_path / "plain.npz", X, y)
    plain = load(tmp_path / "plain.npz", features=3)
    assert plain.feature_names is None and plain.X.tobytes() == X.tobytes()


def test_columns_are_matched_by_name(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "c,label,a,b\n3,1,1,2\n6,2,4,5\n")
    ds = load(path)
    np.testing.assert_array_equal(ds.X, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(ds.y, [1, 2])
    assert ds.feature_names == NAMES
    by_count = load(path, features=3)
    np.testing.assert_array_equal(by_count.X, [[3, 1, 2], [6, 4, 5]])  # file order
    assert by_count.feature_names == ("c", "a", "b")


def test_csv_tolerates_bom_whitespace_blank_lines_and_integral_float_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeff a , b ,c,label\n1, 2,3, 2.0\n\n4,5,6,0\n\n".encode())
    ds = load(path)
    np.testing.assert_array_equal(ds.X, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(ds.y, [2, 0])


def test_a_node_may_lack_classes(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,c,label\n1,2,3,0\n")
    assert load(path, classes=range(10)).y.tolist() == [0]


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("d.csv", "a,b,c,target\n1,2,3,0\n", r"no label column 'label'.*'target'"),
        ("d.csv", "a,b,c,label\n1,2,x3,0\n", r"non-numeric value 'x3' at line 2, column 'c'"),
        ("d.csv", "a,b,c,label\n1,2,3,0\n1,,3,0\n", r"empty value at line 3, column 'b'"),
        ("d.csv", "a,b,c,label\n1,2,3,0\n1,nan,3,0\n", r"'nan' at line 3, column 'b'; NaN and infinity"),
        ("d.csv", "a,b,c,label\n1,2,-inf,0\n", r"'-inf' at line 2, column 'c'; NaN and infinity"),
        ("d.csv", "a,b,c,label\n1,2,3,0.5\n", r"label '0.5' at line 2 is not an integer"),
        ("d.csv", "a,b,c,label\n1,2,3,0\n1,2,3\n", r"line 3 has 3 fields, the header has 4"),
        ("d.csv", "a,b,c,label\n", r"no data rows"),
        ("d.csv", "", r"the file is empty"),
        ("d.csv", "a,b,a,label\n1,2,3,0\n", r"repeats column names \['a'\]"),
        ("d.csv", "a,b,label\n1,2,0\n", r"missing features \['c'\]"),
        ("d.csv", "a,b,c,d,label\n1,2,3,4,0\n", r"does not declare \['d'\] \(remove them\)"),
        ("d.csv", "a,b,c,label\n1,2,3,0\n1,2,3,7\n1,2,3,-1\n", r"labels \[-1, 7\] are not among the task's classes \[0, 1, 2\]"),
        ("d.txt", "a,b,c,label\n1,2,3,0\n", r"unknown file type '.txt'; use a .csv"),
        ("d.npz", "not a zip", r"not a readable .npz"),
    ],
)
def test_csv_and_file_refusals(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(InvalidParameter, match=match):
        load(path)


def test_refuses_missing_files_and_directories(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="no such file"):
        load(tmp_path / "absent.csv")
    with pytest.raises(InvalidParameter, match="not a regular file"):
        load(tmp_path)


def test_refuses_wrong_feature_count(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,c,label\n1,2,3,0\n")
    with pytest.raises(InvalidParameter, match="has 3 feature columns but the task declares 4"):
        load(path, features=4)


def save_raw_npz(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "kw", "match"),
    [
        ({"X": np.ones((2, 3))}, {}, r"missing array\(s\) \['y'\]"),
        ({"X": np.ones((0, 3)), "y": np.zeros(0, int)}, {"features": 3}, "empty"),
        ({"X": np.ones((2, 3)), "y": np.zeros(3, int)}, {"features": 3}, "one label per row"),
        (
            {"X": np.array([[1.0, np.inf, 0], [0, 0, 0]]), "y": np.zeros(2, int)},
            {"features": 3},
            r"NaN or infinity at row 0, column 1",
        ),
        ({"X": np.ones((2, 3)), "y": np.array([0.0, 1.5])}, {"features": 3}, r"non-integer label 1.5 at row 1"),
        ({"X": np.ones((2, 3)), "y": np.array(["0", "1"])}, {"features": 3}, "integer labels"),
        ({"X": np.ones((2, 3)), "y": np.array([0, 5])}, {"features": 3}, r"labels \[5\] are not among"),
        ({"X": np.ones((2, 3)), "y": np.zeros(2, int)}, {}, "add a 'feature_names' array"),
        ({"X": np.ones((2, 3)), "y": np.zeros(2, int), "feature_names": np.array(["a", "b"])}, {}, "one name per column"),
        (
            {"X": np.ones((2, 3)), "y": np.zeros(2, int), "feature_names": np.array(["a", "b", "x"])},
            {},
            r"missing features \['c'\]; columns the task does not declare \['x'\]",
        ),
        ({"X": np.ones((2, 2)), "y": np.zeros(2, int)}, {"features": 3}, "has 2 feature columns"),
        ({"X": np.array([[{"a": 1}]], dtype=object), "y": np.zeros(1, int)}, {"features": 1}, "object arrays or pickled data"),
        (
            {"X": np.ones((2, 3)), "y": np.zeros(2, int), "feature_names": np.array(["a", "b", "c"], dtype=object)},
            {},
            "object arrays",
        ),
    ],
)
def test_npz_refusals(tmp_path: Path, arrays, kw, match) -> None:
    path = save_raw_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(InvalidParameter, match=match):
        load(path, **kw)


def test_npz_holding_a_single_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with path.open("wb") as handle:
        np.save(handle, np.ones((2, 3)))
    with pytest.raises(InvalidParameter, match=r"single \.npy array, not an \.npz archive"):
        load(path, features=3)


def test_refuses_bad_declarations(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b,c,label\n1,2,3,0\n")
    with pytest.raises(InvalidParameter, match="at least two classes"):
        load(path, classes=[0])
    with pytest.raises(InvalidParameter, match="repeat"):
        load(path, features=["a", "a", "b"])
    with pytest.raises(InvalidParameter, match="label_column"):
        load(path, label_column="")


def test_savers_refuse_bad_input(tmp_path: Path) -> None:
    X, y = sample()
    with pytest.raises(InvalidParameter, match="feature name"):
        save_csv(tmp_path / "d.csv", X, y, ("a", "b", "label"), "label")
    with pytest.raises(InvalidParameter, match="feature_names"):
        save_csv(tmp_path / "d.csv", X, y, ("a", "b"), "label")
    with pytest.raises(InvalidParameter, match=r"end in \.npz"):
        save_npz(tmp_path / "d.bin", X, y)
    with pytest.raises(InvalidParameter, match="NaN"):
        save_npz(tmp_path / "d.npz", np.full((2, 3), np.nan), y[:2])
    with pytest.raises(InvalidParameter, match="NaN or infinity"):
        save_npz(tmp_path / "d.npz", X, np.full(len(y), np.inf))
    # float labels are a numeric target's values: saved as numbers, read back with classes=None only
    save_npz(tmp_path / "d.npz", X, y + 0.5)
    assert np.array_equal(load_local_dataset(tmp_path / "d.npz", label_column="label", features=None, classes=None).y, y + 0.5)


# --- bundled datasets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("digits", (1797, 64), tuple(range(10))),
        ("iris", (150, 4), (0, 1, 2)),
        ("wine", (178, 13), (0, 1, 2)),
        ("breast_cancer", (569, 30), (0, 1)),
    ],
)
def test_bundled_datasets_are_scaled_to_unit_range(name, shape, classes) -> None:
    d = load_bundled(name)
    assert d.X.shape == shape and d.X.dtype == np.float64 and d.y.dtype == np.int64
    assert d.classes == classes and len(d.feature_names) == shape[1]
    assert d.X.min() == 0.0 and d.X.max() == 1.0
    assert d.description.startswith(name)
    if name != "digits":  # min-max by the documented (public) ranges: every feature spans about [0, 1]
        np.testing.assert_allclose(d.X.min(axis=0), 0.0, atol=0.02)
        np.testing.assert_allclose(d.X.max(axis=0), 1.0, atol=0.02)


def test_digits_uses_the_known_pixel_range() -> None:
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(load_bundled("digits").X, load_digits().data / 16.0)
    assert BUNDLED_DATASETS == ("digits", "iris", "wine", "breast_cancer")
    with pytest.raises(InvalidParameter, match="bundled datasets are"):
        load_bundled("mnist")


def test_stratified_split() -> None:
    d = load_bundled("digits")
    s = train_test_split_stratified(d.X, d.y, 0.25, seed=0)
    assert len(s.y_test) == 450 and len(s.y_train) == 1347
    overall = np.bincount(d.y) / len(d.y)
    np.testing.assert_allclose(np.bincount(s.y_test) / len(s.y_test), overall, atol=0.01)
    again = train_test_split_stratified(d.X, d.y, 0.25, seed=0)
    assert again.X_test.tobytes() == s.X_test.tobytes()
    other = train_test_split_stratified(d.X, d.y, 0.25, seed=1)
    assert not np.array_equal(other.y_test, s.y_test)
    X_train, X_test, y_train, y_test = s  # scikit-learn order
    assert X_train.shape[0] == y_train.shape[0] and X_test.shape[0] == y_test.shape[0]
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(InvalidParameter, match="test_fraction"):
            train_test_split_stratified(d.X, d.y, bad, seed=0)
    with pytest.raises(InvalidParameter, match="stratified"):
        train_test_split_stratified(d.X[:3], np.array([0, 1, 1]), 0.5, seed=0)
