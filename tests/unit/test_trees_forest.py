"""securefed.trees.forest: parameters, the builder's state machine, the worker's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from securefed.errors import InvalidParameter, LocalProtocolError, RemoteProtocolError
from securefed.trees.binning import Bins
from securefed.trees.driver import State
from securefed.trees.forest import ForestBuilder, ForestParams, ForestWorker, feature_subset
from securefed.trees.histograms import secure_sum
from securefed.trees.model import TreeEnsemble
from securefed.trees.request import HistogramRequest
from securefed.trees.simulate import run


def blobs(seed: int, n: int = 240, features: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, features)) * 0.6 + y[:, None] * np.linspace(0.5, 1.5, features)[None, :]
    return X, y


BINS = Bins((-2.0,) * 4, (4.0,) * 4, 16)


def params(**overrides: object) -> ForestParams:
    base: dict = {
        "bins": BINS,
        "n_classes": 3,
        "n_trees": 8,
        "max_depth": 4,
        "seed": 7,
        "max_rows_per_node": 1000,
        "max_nodes": 10,
    }
    return ForestParams(**{**base, **overrides})


def workers(p: ForestParams, X: np.ndarray, y: np.ndarray, n_nodes: int = 3) -> list[ForestWorker]:
    return [
        ForestWorker(p, X[part], y[part], rng=np.random.default_rng(k))
        for k, part in enumerate(np.array_split(np.arange(len(y)), n_nodes))
    ]


def test_a_forest_learns_separable_classes() -> None:
    X, y = blobs(0)
    p = params()
    builder = ForestBuilder(p)
    model = run(builder, workers(p, X, y), via_json=True)
    assert builder.state is State.DONE and builder.model is model
    assert model.n_trees == 8 and 1 <= builder.aggregations <= p.max_depth
    X_test, y_test = blobs(1)
    assert np.mean(model.predict(X_test) == y_test) > 0.8
    assert np.allclose(model.predict_proba(X_test).sum(axis=1), 1.0)


def test_feature_subsets_are_derived_sorted_and_vary() -> None:
    subsets = {feature_subset(3, t, node, 10, 3) for t in range(5) for node in range(5)}
    assert all(len(s) == 3 and list(s) == sorted(set(s)) and max(s) < 10 for s in subsets)
    assert len(subsets) > 5
    assert feature_subset(3, 1, 2, 10, 3) == feature_subset(3, 1, 2, 10, 3)
    assert feature_subset(3, 1, 2, 10, 3) != feature_subset(4, 1, 2, 10, 3) or feature_subset(3, 1, 3, 10, 3) != feature_subset(
        4, 1, 3, 10, 3
    )
    assert feature_subset(0, 0, 0, 4, 4) == (0, 1, 2, 3)
    assert params(max_features="sqrt").features_per_split == 2
    assert params(max_features="all").features_per_split == 4
    assert params(max_features=3).features_per_split == 3


def test_all_trees_of_a_level_travel_in_one_vector_unless_too_long() -> None:
    X, y = blobs(2)
    whole = ForestBuilder(params())
    first = whole.request()
    assert [t for t, _ in first.frontier] == list(range(8))
    model = run(whole, workers(params(), X, y))
    entry = params().features_per_split * BINS.n_bins * 3
    chunked_params = params(max_vector_length=3 * entry)  # three frontier entries per aggregation
    chunked = ForestBuilder(chunked_params)
    same = run(chunked, workers(chunked_params, X, y))
    assert chunked.aggregations > whole.aggregations
    assert np.array_equal(same.to_arrays()["feature"], model.to_arrays()["feature"])
    assert np.array_equal(same.value, model.value)


def test_state_machine_misuse_and_bad_sums() -> None:
    X, y = blobs(3)
    p = params(n_trees=2, max_depth=2)
    builder = ForestBuilder(p)
    assert builder.request() is builder.request()
    with pytest.raises(LocalProtocolError, match="no model"):
        _ = builder.model
    with pytest.raises(LocalProtocolError, match="expects"):
        builder.receive(np.zeros(5, dtype=np.uint32))
    assert builder.state is State.ABORTED
    with pytest.raises(LocalProtocolError, match="aborted"):
        builder.request()

    done = ForestBuilder(p)
    run(done, workers(p, X, y))
    with pytest.raises(LocalProtocolError, match="done"):
        done.receive(np.zeros(1, dtype=np.uint32))


def test_a_tampered_sum_is_refused() -> None:
    X, y = blobs(4)
    p = params(n_trees=1, max_depth=3)
    builder = ForestBuilder(p)
    nodes = workers(p, X, y)
    summed = secure_sum([w.compute(builder.request()) for w in nodes])
    tampered = summed.copy()
    tampered[0] += 1  # one feature's bins no longer add up to the same totals
    with pytest.raises(RemoteProtocolError, match="disagree"):
        builder.receive(tampered)
    assert builder.state is State.ABORTED

    builder = ForestBuilder(p)
    nxt = builder.receive(secure_sum([w.compute(builder.request()) for w in nodes]))
    assert isinstance(nxt, HistogramRequest)
    summed = secure_sum([w.compute(nxt) for w in nodes])
    # add the same count to every feature of the first entry: totals agree across features but not with the parent
    view = summed.reshape(len(nxt.frontier), p.features_per_split, BINS.n_bins, 3)
    view[0, :, 0, 0] += 1
    with pytest.raises(RemoteProtocolError, match="parent split"):
        builder.receive(summed)


def test_worker_refuses_what_the_task_did_not_agree() -> None:
    X, y = blobs(5)
    p = params()
    worker = ForestWorker(p, X, y, rng=np.random.default_rng(0))
    request = ForestBuilder(p).request().to_json()
    assert worker.compute(request).dtype == np.uint32

    other = ForestBuilder(params(seed=8)).request().to_json()
    with pytest.raises(InvalidParameter, match="params-mismatch"):
        worker.compute(other)
    forged = json.loads(json.dumps(request))
    forged["features"][0] = [0, 1] if forged["features"][0] != [0, 1] else [2, 3]
    with pytest.raises(InvalidParameter, match="seed derives"):
        worker.compute(forged)
    deep = {**request, "level": 1}
    with pytest.raises(InvalidParameter, match="not an open node at level 1"):
        worker.compute(deep)
    with pytest.raises(InvalidParameter, match="max_depth"):
        worker.compute({**request, "level": 4})
    with pytest.raises(InvalidParameter, match="all 8 trees"):
        worker.compute({**request, "trees": request["trees"][:3]})
    with pytest.raises(InvalidParameter, match=r"computes trees\.forest-level for this task, not trees\.boosting-base"):
        worker.compute({"computation": "trees.boosting-base", "version": 1, "params": request["params"]})
    with pytest.raises(InvalidParameter, match="wrong keys"):
        worker.compute({**request, "computation": "trees.boosting-base"})


def test_worker_refuses_bad_data_and_more_rows_than_declared() -> None:
    X, y = blobs(6, n=50)
    with pytest.raises(InvalidParameter, match="at most 20 per node"):
        ForestWorker(params(max_rows_per_node=20), X, y)
    with pytest.raises(InvalidParameter, match="class indices"):
        ForestWorker(params(), X, y + 1)
    with pytest.raises(InvalidParameter, match="bootstrap weights"):
        ForestWorker(params(), X, y, bootstrap_weights=-np.ones((8, 50), dtype=np.int64))
    with pytest.raises(InvalidParameter, match="does not bootstrap"):
        ForestWorker(params(bootstrap=False), X, y, bootstrap_weights=np.ones((8, 50), dtype=np.int64))


def test_params_json_round_trip_and_validation() -> None:
    p = params(max_features="log2", criterion="entropy")
    assert ForestParams.from_json(json.loads(json.dumps(p.to_json()))) == p
    with pytest.raises(InvalidParameter, match="wrong keys"):
        ForestParams.from_json({**p.to_json(), "n_tree": 3})
    for bad in (
        {"criterion": "mse"},
        {"max_features": 9},
        {"max_features": "half"},
        {"n_trees": 0},
        {"bootstrap": 1},
        {"seed": -1},
    ):
        with pytest.raises(InvalidParameter):
            params(**bad)
    with pytest.raises(InvalidParameter, match="max_vector_length"):
        params(max_vector_length=10)
    assert "8 trees" in p.describe()


def test_entropy_and_no_bootstrap_also_grow() -> None:
    X, y = blobs(7)
    for p in (params(criterion="entropy"), params(bootstrap=False, max_features="all")):
        model = run(ForestBuilder(p), workers(p, X, y))
        assert isinstance(model, TreeEnsemble) and np.mean(model.predict(X) == y) > 0.8
