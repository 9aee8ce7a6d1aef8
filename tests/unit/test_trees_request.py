"""securefed.trees.request and structure: the JSON a node accepts, and tree checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from securefed.errors import InvalidParameter
from securefed.trees.binning import Bins
from securefed.trees.boosting import BoostingBuilder, BoostingParams, BoostingWorker
from securefed.trees.forest import ForestBuilder, ForestParams
from securefed.trees.histograms import secure_sum
from securefed.trees.request import HistogramRequest
from securefed.trees.structure import check_tree, route

BINS = Bins((0.0, 0.0), (1.0, 1.0), 8)


def forest_request() -> HistogramRequest:
    return ForestBuilder(ForestParams(bins=BINS, n_classes=2, n_trees=3, max_depth=3)).request()


def boosting_request() -> HistogramRequest:
    p = BoostingParams(bins=BINS, n_estimators=2, max_rows_per_node=100, max_nodes=2)
    builder = BoostingBuilder(p)
    X = np.random.default_rng(0).uniform(size=(40, 2))
    worker = BoostingWorker(p, X, (X[:, 0] > 0.5).astype(np.int64))
    nxt = builder.receive(secure_sum([worker.compute(builder.request())]))
    assert isinstance(nxt, HistogramRequest)
    return nxt


@pytest.mark.parametrize("make", [forest_request, boosting_request])
def test_json_round_trip(make) -> None:  # type: ignore[no-untyped-def]
    request = make()
    again = HistogramRequest.from_json(json.loads(json.dumps(request.to_json())))
    assert again == request and again.digest() == request.digest()
    assert len(request.digest()) == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"computation": "trees.run-this"}, "unknown tree computation"),
        ({"version": 2}, "version"),
        ({"version": True}, "version"),
        ({"level": -1}, "level"),
        ({"level": 1.0}, "level"),
        ({"frontier": [[0]]}, "pairs"),
        ({"frontier": [[0, True]]}, "frontier entry"),
        ({"features": [[0]]}, "one equally long list"),
        ({"trees": [{"feature": [-1], "bin": [-1], "left": [-1]}]}, "wrong keys"),
        ({"trees": "none"}, "list"),
        ({"params": []}, "object"),
        ({"extra": 1}, "unexpected \\['extra'\\]"),
    ],
)
def test_malformed_forest_requests_are_refused(change: dict, message: str) -> None:
    raw = {**forest_request().to_json(), **change}
    with pytest.raises(InvalidParameter, match=message):
        HistogramRequest.from_json(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_digest": "XYZ"}, "hex"),
        ({"base_score": []}, "base_score"),
        ({"base_score": [float("nan")]}, "base_score"),
        ({"previous": [[{"feature": [-1], "bin": [-1], "left": [-1], "right": [-1], "value": [["a"]]}]]}, "finite"),
        ({"round": -2}, "round"),
    ],
)
def test_malformed_boosting_requests_are_refused(change: dict, message: str) -> None:
    raw = {**boosting_request().to_json(), **change}
    with pytest.raises(InvalidParameter, match=message):
        HistogramRequest.from_json(raw)


def test_not_json_is_refused() -> None:
    for raw in (None, [], "trees.forest-level", {"computation": 3}):
        with pytest.raises(InvalidParameter):
            HistogramRequest.from_json(raw)


def arrays(*rows: list[int]) -> list[np.ndarray]:
    return [np.array(r, dtype=np.int64) for r in rows]


def test_check_tree_accepts_trees_and_gives_depths() -> None:
    depth = check_tree(
        *arrays([0, -1, 1, -1, -1], [3, -1, 0, -1, -1], [1, -1, 3, -1, -1], [2, -1, 4, -1, -1]), n_features=2, n_bins=8
    )
    assert depth.tolist() == [0, 1, 1, 2, 2]
    codes = np.array([[0, 0], [5, 0], [5, 7]], dtype=np.uint8)
    tree = arrays([0, -1, 1, -1, -1], [3, -1, 0, -1, -1], [1, -1, 3, -1, -1], [2, -1, 4, -1, -1])
    assert route(codes, *tree, depth=2).tolist() == [1, 3, 4]


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (([0, -1, -1], [1, -1, -1], [1, -1, -1], [1, -1, -1]), "distinct"),
        (([0, -1, -1], [1, -1, -1], [0, -1, -1], [2, -1, -1]), "after it"),
        (([0, 0, -1, -1, -1], [1, 1, -1, -1, -1], [1, 2, -1, -1, -1], [2, 3, -1, -1, -1]), "one parent|after it"),
        (([0, -1, -1, -1], [1, -1, -1, -1], [1, -1, -1, -1], [2, -1, -1, -1]), "one parent"),
        (([2, -1, -1], [1, -1, -1], [1, -1, -1], [2, -1, -1]), "feature outside"),
        (([0, -1, -1], [7, -1, -1], [1, -1, -1], [2, -1, -1]), "bin outside"),
        (([-1, -1, -1], [-1, -1, -1], [1, -1, -1], [2, -1, -1]), "leaf"),
        (([], [], [], []), "non-empty"),
    ],
)
def test_check_tree_refuses_non_trees(tree: tuple, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        check_tree(*arrays(*tree), n_features=2, n_bins=8)
