"""securefed.trees.model: prediction by traversal, pickle-free export, strict loading."""

from __future__ import annotations

import io

import numpy as np
import pytest

from securefed.errors import InvalidParameter
from securefed.trees.binning import Bins
from securefed.trees.boosting import BoostingBuilder, BoostingParams, BoostingWorker
from securefed.trees.forest import ForestBuilder, ForestParams, ForestWorker
from securefed.trees.grow import FinishedTree
from securefed.trees.model import TreeEnsemble
from securefed.trees.simulate import run

BINS = Bins((0.0, 0.0), (1.0, 1.0), 4)


def stump_model() -> TreeEnsemble:
    """Hand-built: x0 in bins 0..1 (x0 < 0.5) -> class 0, else x1 < 0.75 -> class 1, else class 2."""
    tree = FinishedTree(
        feature=np.array([0, -1, 1, -1, -1]),
        bin=np.array([1, -1, 2, -1, -1]),
        left=np.array([1, -1, 3, -1, -1]),
        right=np.array([2, -1, 4, -1, -1]),
        value=np.array([[1 / 3] * 3, [1.0, 0, 0], [0, 0.5, 0.5], [0, 1.0, 0], [0, 0, 1.0]]),
    )
    return TreeEnsemble.from_trees("random_forest", "", 3, BINS, [tree])


def trained(kind: str) -> tuple[TreeEnsemble, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.uniform(-0.2, 1.2, size=(200, 2))
    y = (X[:, 0] > 0.5).astype(np.int64) + (X[:, 1] > 0.7)
    if kind == "forest":
        p = ForestParams(bins=BINS, n_classes=3, n_trees=5, max_depth=3, max_rows_per_node=1000, max_nodes=10)
        return run(ForestBuilder(p), [ForestWorker(p, X, y, rng=rng)]), X
    q = BoostingParams(bins=BINS, loss="softmax", n_classes=3, n_estimators=3, max_rows_per_node=1000, max_nodes=10)
    return run(BoostingBuilder(q), [BoostingWorker(q, X, y)]), X


def test_hand_built_tree_predicts_by_its_thresholds() -> None:
    model = stump_model()
    X = np.array([[0.1, 0.9], [0.49, 0.0], [0.5, 0.1], [0.9, 0.74], [0.9, 0.75], [-3.0, 9.0], [7.0, 9.0]])
    assert model.predict(X).tolist() == [0, 0, 1, 1, 2, 0, 2]
    assert model.leaves(X)[0].tolist() == [1, 1, 3, 3, 4, 1, 4]


def per_row_prediction(model: TreeEnsemble, X: np.ndarray) -> np.ndarray:
    """A straightforward reference: walk each tree for each row with Python ints."""
    codes = model.bins.digitize(X)
    out = []
    for row in codes:
        leaf_values = []
        for t in range(model.n_trees):
            tree, node = model.tree(t), 0
            while tree.feature[node] >= 0:
                node = tree.left[node] if row[tree.feature[node]] <= tree.bin[node] else tree.right[node]
            leaf_values.append((int(model.tree_output[t]), tree.value[node]))
        if model.kind == "random_forest":
            out.append(np.mean([v for _, v in leaf_values], axis=0))
        else:
            raw = model.base_score.copy()
            for k, v in leaf_values:
                raw[k] += v[0]
            out.append(raw)
    return np.array(out)


@pytest.mark.parametrize("kind", ["forest", "gbdt"])
def test_vectorised_prediction_matches_per_row_traversal(kind: str) -> None:
    model, X = trained(kind)
    reference = per_row_prediction(model, X)
    if kind == "forest":
        assert np.allclose(model.predict_proba(X), reference)
    else:
        assert np.allclose(model.predict_raw(X), reference)
        assert np.allclose(model.predict_proba(X).sum(axis=1), 1.0)


@pytest.mark.parametrize("kind", ["forest", "gbdt"])
def test_export_round_trip_without_pickle(kind: str) -> None:
    model, X = trained(kind)
    buffer = io.BytesIO()
    np.savez(buffer, **model.to_arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as loaded:
        again = TreeEnsemble.from_arrays({name: loaded[name] for name in loaded.files})
    assert again.equals(model)
    assert np.array_equal(again.predict_proba(X), model.predict_proba(X))


def corrupt(arrays: dict[str, np.ndarray], **changes: np.ndarray) -> dict[str, np.ndarray]:
    return {**{k: v.copy() for k, v in arrays.items()}, **changes}


def test_loading_refuses_damaged_models() -> None:
    arrays = stump_model().to_arrays()
    feature = arrays["feature"].copy()
    cases = {
        "exactly the arrays": {k: v for k, v in arrays.items() if k != "base_score"},
        "must be int32": corrupt(arrays, feature=feature.astype(np.int64)),
        "feature outside": corrupt(arrays, feature=np.where(feature == 1, 5, feature).astype(np.int32)),
        "after it": corrupt(arrays, left=np.array([0, -1, 3, -1, -1], dtype=np.int32)),
        "exactly one parent": corrupt(arrays, right=np.array([3, -1, 4, -1, -1], dtype=np.int32)),  # node 3 twice, 2 never
        "bin outside": corrupt(arrays, threshold_bin=np.array([3, -1, 2, -1, -1], dtype=np.int32)),
        "finite": corrupt(arrays, value=np.full((5, 3), np.nan)),
        "tree_offsets": corrupt(arrays, tree_offsets=np.array([0, 4], dtype=np.int64)),
        "UTF-8 JSON": corrupt(arrays, meta=np.frombuffer(b"\xff{", dtype=np.uint8).copy()),
        "uint8": corrupt(arrays, meta=np.zeros(3, dtype=object)),
        "must be float64": corrupt(arrays, value=np.zeros((5, 3), dtype=object)),
    }
    for message, damaged in cases.items():
        with pytest.raises(InvalidParameter, match=message):
            TreeEnsemble.from_arrays(damaged)


def test_model_checks_its_kind() -> None:
    model = stump_model()
    with pytest.raises(InvalidParameter, match="raw scores"):
        model.predict_raw(np.zeros((1, 2)))
    arrays = model.to_arrays()
    with pytest.raises(InvalidParameter, match="kind"):
        TreeEnsemble(
            kind="svm",
            loss="",
            n_classes=3,
            bins=BINS,
            **{
                k: arrays[k]
                for k in ("tree_offsets", "feature", "threshold_bin", "left", "right", "value", "tree_output", "base_score")
            },
        )
