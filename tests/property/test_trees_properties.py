"""Hypothesis invariants of securefed.trees (histogram trees over secure sums).

* the secure sum of the nodes' vectors, decoded, is the pooled histogram: exactly for (bootstrap-
  weighted) class counts, row counts and quantised hessians, and within rows * 2^-(f+1) of the exact
  real gradient sums; checked at every level against a naive per-row reference;
* with identical bins, the federated tree equals the tree grown on the pooled histograms, split for
  split and leaf for leaf, for forests (any split of rows, including empty nodes) and for boosting
  (logistic, softmax, squared error);
* encode/decode: uint32 sums of two's-complement parts decode to the exact integer sum; per-row
  quantisation is within half a step; parameters are refused exactly when a sum could reach 2^31;
* prediction equals a straightforward per-row traversal, for rows inside and outside the bounds.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.errors import InvalidParameter
from securefed.trees.binning import Bins
from securefed.trees.boosting import BoostingBuilder, BoostingParams, BoostingWorker
from securefed.trees.forest import ForestBuilder, ForestParams, ForestWorker
from securefed.trees.histograms import SIGNED_LIMIT, Layout, check_no_wrap, decode_sum, quantise, secure_sum, to_uint32
from securefed.trees.model import TreeEnsemble
from securefed.trees.request import HistogramRequest
from securefed.trees.simulate import run


@st.composite
def federations(draw: st.DrawFn, regression: bool = False) -> dict:
    """Rows (some outside the declared bounds, many tied), labels with some signal, bins, and an
    assignment of rows to 2-7 nodes (some of which may hold no rows)."""
    n_features = draw(st.integers(1, 4))
    n_rows = draw(st.integers(2, 80))
    n_classes = draw(st.integers(2, 4))
    n_bins = draw(st.sampled_from([2, 3, 5, 16]))
    grid = draw(st.sampled_from([0.0, 0.05, 0.25]))  # 0: continuous; else values tie on a grid
    n_nodes = draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = rng.uniform(-0.3, 1.3, size=(n_rows, n_features))
    if grid:
        X = np.round(X / grid) * grid
    signal = X[:, 0] + (X[:, -1] ** 2 if n_features > 1 else 0.0) + 0.3 * rng.normal(size=n_rows)
    if regression:
        y = 2.0 * signal
    else:
        y = np.digitize(signal, np.quantile(signal, np.linspace(0, 1, n_classes + 1)[1:-1])).astype(np.int64)
    owner = rng.integers(0, n_nodes, size=n_rows)
    parts = [np.flatnonzero(owner == k) for k in range(n_nodes)]
    bins = Bins((0.0,) * n_features, (1.0,) * n_features, n_bins)
    return {"X": X, "y": y, "classes": n_classes, "bins": bins, "parts": parts, "seed": seed}


def forest_params(f: dict, **extra: object) -> ForestParams:
    return ForestParams(
        bins=f["bins"], n_classes=f["classes"], n_trees=3, max_depth=3, seed=f["seed"] % 1000,
        max_rows_per_node=100, max_nodes=10, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def forest_workers(f: dict, params: ForestParams) -> tuple[list[ForestWorker], ForestWorker]:
    """One worker per node with its own Poisson weights, and the pooled worker with the same weights."""
    rng = np.random.default_rng(f["seed"])
    weights = [rng.poisson(1.0, size=(params.n_trees, part.size)) for part in f["parts"]]
    nodes = [ForestWorker(params, f["X"][p], f["y"][p], bootstrap_weights=w) for p, w in zip(f["parts"], weights)]
    order = np.concatenate(f["parts"])
    pooled = ForestWorker(params, f["X"][order], f["y"][order], bootstrap_weights=np.concatenate(weights, axis=1))
    return nodes, pooled


def walk(request_tree: dict, codes_row: np.ndarray) -> int:
    """Naive routing of one row through a request tree (Python ints)."""
    node = 0
    while request_tree["feature"][node] >= 0:
        goes_left = codes_row[request_tree["feature"][node]] <= request_tree["bin"][node]
        node = request_tree["left"][node] if goes_left else request_tree["right"][node]
    return node


@given(federations())
def test_secure_forest_histogram_is_the_pooled_histogram(f: dict) -> None:
    params = forest_params(f)
    nodes, _ = forest_workers(f, params)
    codes = f["bins"].digitize(f["X"])
    weights = np.zeros((params.n_trees, codes.shape[0]), dtype=np.int64)
    for node, part in zip(nodes, f["parts"]):
        weights[:, part] = node._weights
    builder = ForestBuilder(params)
    request: HistogramRequest | TreeEnsemble = builder.request()
    while isinstance(request, HistogramRequest):
        summed = secure_sum([node.compute(request) for node in nodes])
        layout = request.layout(f["bins"].n_bins, f["classes"])
        reference = np.zeros(layout.shape, dtype=np.int64)
        entries = {pair: e for e, pair in enumerate(request.frontier)}
        for t, tree in enumerate(request.trees):
            for r in range(codes.shape[0]):
                e = entries.get((t, walk(tree, codes[r])))
                if e is not None:
                    for slot, feature in enumerate(request.features[e]):
                        reference[e, slot, codes[r, feature], f["y"][r]] += weights[t, r]
        assert np.array_equal(decode_sum(summed, layout), reference)
        request = builder.receive(summed)


def boosting_params(f: dict, loss: str) -> BoostingParams:
    classes = {"logistic": 2, "softmax": f["classes"], "squared_error": 0}[loss]
    return BoostingParams(
        bins=f["bins"], loss=loss, n_classes=classes, n_estimators=3, max_depth=2, learning_rate=0.5,
        grad_clip=2.0 if loss == "squared_error" else None, max_rows_per_node=100, max_nodes=10,
    )  # fmt: skip


def labels_for(f: dict, loss: str) -> np.ndarray:
    return f["y"] % 2 if loss == "logistic" else f["y"]


@given(federations(), st.sampled_from(["logistic", "softmax"]))
def test_secure_gradient_histogram_is_the_pooled_one_to_the_resolution(f: dict, loss: str) -> None:
    params = boosting_params(f, loss)
    y = labels_for(f, loss)
    nodes = [BoostingWorker(params, f["X"][p], y[p]) for p in f["parts"]]
    codes = f["bins"].digitize(f["X"])
    builder = BoostingBuilder(params)
    request: HistogramRequest | TreeEnsemble = builder.receive(secure_sum([n.compute(builder.request()) for n in nodes]))
    raw, applied = None, 0
    while isinstance(request, HistogramRequest):
        if raw is None:
            raw = np.tile(np.asarray(request.base_score), (codes.shape[0], 1))
        for round_trees in request.previous[applied - (request.round - len(request.previous)) :]:
            for k, tree in enumerate(round_trees):
                raw[:, k] += [tree["value"][walk(tree, row)][0] for row in codes]
            applied += 1
        if loss == "logistic":
            p = 1.0 / (1.0 + np.exp(-raw))
            grad, hess = p - y[:, None], p * (1 - p)
        else:
            p = np.exp(raw - raw.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            grad, hess = p - (y[:, None] == np.arange(raw.shape[1])), p * (1 - p)
        layout = request.layout(f["bins"].n_bins, 3)
        summed = secure_sum([n.compute(request) for n in nodes])
        decoded = decode_sum(summed, layout)
        exact_g = np.zeros(layout.shape[:3])
        exact_h = np.zeros(layout.shape[:3])
        count = np.zeros(layout.shape[:3], dtype=np.int64)
        entries = {pair: e for e, pair in enumerate(request.frontier)}
        for t, tree in enumerate(request.trees):
            for r in range(codes.shape[0]):
                e = entries.get((t, walk(tree, codes[r])))
                if e is not None:
                    for slot in range(codes.shape[1]):
                        exact_g[e, slot, codes[r, slot]] += grad[r, t]
                        exact_h[e, slot, codes[r, slot]] += hess[r, t]
                        count[e, slot, codes[r, slot]] += 1
        assert np.array_equal(decoded[..., 2], count)
        g_step, h_step = 2.0**-params.grad_bits, 2.0**-params.hess_bits
        assert np.all(np.abs(decoded[..., 0] * g_step - exact_g) <= count * g_step / 2 + 1e-9)
        assert np.all(np.abs(decoded[..., 1] * h_step - exact_h) <= count * h_step / 2 + 1e-9)
        request = builder.receive(summed)


@given(federations(), st.sampled_from(["gini", "entropy"]), st.booleans())
def test_federated_forest_equals_pooled_forest_split_for_split(f: dict, criterion: str, bootstrap: bool) -> None:
    params = forest_params(f, criterion=criterion, bootstrap=bootstrap)
    if bootstrap:
        nodes, pooled = forest_workers(f, params)
    else:
        nodes = [ForestWorker(params, f["X"][p], f["y"][p]) for p in f["parts"]]
        pooled = ForestWorker(params, f["X"], f["y"])
    federated_builder, pooled_builder = ForestBuilder(params), ForestBuilder(params)
    federated = run(federated_builder, nodes)
    alone = run(pooled_builder, [pooled])
    assert federated.equals(alone)
    assert federated_builder.aggregations == pooled_builder.aggregations <= params.max_depth


@given(federations(), st.sampled_from(["logistic", "softmax"]))
def test_federated_boosting_equals_pooled_boosting_split_for_split(f: dict, loss: str) -> None:
    params = boosting_params(f, loss)
    y = labels_for(f, loss)
    federated = run(BoostingBuilder(params), [BoostingWorker(params, f["X"][p], y[p]) for p in f["parts"]])
    alone = run(BoostingBuilder(params), [BoostingWorker(params, f["X"], y)])
    assert federated.equals(alone)


@given(federations(regression=True))
def test_federated_regression_equals_pooled_regression(f: dict) -> None:
    params = boosting_params(f, "squared_error")
    federated = run(BoostingBuilder(params), [BoostingWorker(params, f["X"][p], f["y"][p]) for p in f["parts"]], via_json=True)
    alone = run(BoostingBuilder(params), [BoostingWorker(params, f["X"], f["y"])])
    assert federated.equals(alone)


bounded = st.integers(-(2**24), 2**24)


@given(st.lists(hnp.arrays(np.int64, 6, elements=bounded), min_size=1, max_size=64))
def test_uint32_sums_decode_to_the_exact_integer_sum(parts: list[np.ndarray]) -> None:
    summed = secure_sum([to_uint32(p) for p in parts])
    assert np.array_equal(decode_sum(summed, Layout(1, 1, 6, 1)).reshape(-1), np.sum(parts, axis=0))


@given(
    hnp.arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6, allow_nan=False)),
    st.floats(1e-3, 1e3),
    st.integers(0, 30),
)
def test_quantisation_is_within_half_a_step_of_the_clipped_value(values: np.ndarray, clip: float, bits: int) -> None:
    q = quantise(values, clip, bits)
    step = 2.0**-bits
    assert np.all(np.abs(q * step - np.clip(values, -clip, clip)) <= step / 2 + 1e-12 * clip)
    assert np.all(np.abs(q) <= np.ceil(clip * 2**bits))


@given(st.integers(1, 2**12), st.integers(1, 2**20), st.integers(1, 255), st.booleans())
def test_forest_params_are_refused_exactly_when_a_count_could_wrap(nodes: int, rows: int, weight: int, bootstrap: bool) -> None:
    bins = Bins((0.0,), (1.0,), 2)
    could_wrap = nodes * rows * (weight if bootstrap else 1) >= SIGNED_LIMIT
    try:
        ForestParams(bins=bins, n_classes=2, max_nodes=nodes, max_rows_per_node=rows, max_weight=weight, bootstrap=bootstrap)
        refused = False
    except InvalidParameter:
        refused = True
    assert refused == could_wrap
    try:
        check_no_wrap(weight, nodes * rows, "x")
        assert weight * nodes * rows < SIGNED_LIMIT
    except InvalidParameter:
        assert weight * nodes * rows >= SIGNED_LIMIT


@given(st.integers(1, 2**16), st.integers(1, 2**12), st.floats(1e-2, 1e2))
def test_boosting_precision_never_lets_a_gradient_sum_wrap(nodes: int, rows: int, clip: float) -> None:
    bins = Bins((0.0,), (1.0,), 2)
    try:
        params = BoostingParams(bins=bins, loss="squared_error", grad_clip=clip, max_nodes=nodes, max_rows_per_node=rows)
    except InvalidParameter:
        return
    per_row = np.ceil(clip * 2.0**params.grad_bits)
    assert nodes * rows * per_row < SIGNED_LIMIT
    assert clip * 2.0**params.grad_bits >= 2**8


@given(federations(), st.sampled_from(["forest", "softmax"]), hnp.arrays(np.float64, (7, 4), elements=st.floats(-5.0, 5.0)))
def test_prediction_equals_per_row_traversal(f: dict, kind: str, probe: np.ndarray) -> None:
    if kind == "forest":
        params = forest_params(f)
        nodes, _ = forest_workers(f, params)
        model = run(ForestBuilder(params), nodes)
    else:
        q = boosting_params(f, "softmax")
        model = run(BoostingBuilder(q), [BoostingWorker(q, f["X"][p], f["y"][p]) for p in f["parts"]])
    X = np.vstack([f["X"], probe[:, : f["X"].shape[1]]])
    codes = model.bins.digitize(X)
    expected = []
    for row in codes:
        if kind == "forest":
            leaves = [model.tree(t) for t in range(model.n_trees)]
            expected.append(np.mean([tree.value[walk(tree.to_json(), row)] for tree in leaves], axis=0))
        else:
            raw = model.base_score.copy()
            for t in range(model.n_trees):
                tree = model.tree(t)
                raw[model.tree_output[t]] += tree.value[walk(tree.to_json(), row)][0]
            expected.append(np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum())
    assert np.allclose(model.predict_proba(X), np.array(expected))
