"""Multi-aggregation analytics: secure quantiles against numpy, secure k-means against scikit-learn.

Sites hold arbitrary splits of the pooled data (empty sites included); each
driver runs to its end through ``run_local`` (every site's real encoded vector,
summed mod 2^32).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from hypothesis import assume, event, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.cluster import KMeans

from securefed.analytics import driver_for, run_local
from securefed.dp.noise import NoiseSource


def _split(X: np.ndarray, owner: np.ndarray, nodes: int) -> list[tuple[np.ndarray, None]]:
    return [(X[owner == i], None) for i in range(nodes)]


@st.composite
def quantile_tasks(draw: st.DrawFn) -> dict:
    d = draw(st.integers(1, 2))
    nodes = draw(st.integers(1, 10))
    rows = draw(st.integers(0, 60))
    low = np.array(draw(st.lists(st.floats(-100, 100), min_size=d, max_size=d)))
    width = np.array(draw(st.lists(st.floats(0.01, 500), min_size=d, max_size=d)))
    cells = draw(st.lists(st.integers(1, 5000), min_size=d, max_size=d))
    unit = st.one_of(st.floats(-1.3, 1.3), st.sampled_from([-1.0, 1.0, 0.0, 0.5]))
    # repeated values (ties) are common in real data: draw from a small pool some of the time
    E = draw(arrays(np.float64, (rows, d), elements=unit))
    X = low + width * (E + 1.0) / 2.0
    owner = draw(arrays(np.int64, rows, elements=st.integers(0, nodes - 1)))
    levels = draw(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
    spec = {
        "max_nodes": nodes,
        "max_rows": max(rows, 1),
        "low": low.tolist(),
        "high": (low + width).tolist(),
        "resolution": [float(w / c) for w, c in zip(width, cells)],
        "quantiles": levels,
        "method": draw(st.sampled_from(["linear", "lower", "higher", "inverted_cdf"])),
        "bins_per_round": draw(st.integers(2, 64)),
    }
    return {"X": X, "owner": owner, "nodes": nodes, "spec": spec}


@given(quantile_tasks())
def test_quantiles_within_one_lattice_cell_of_numpy(task: dict) -> None:
    spec = task["spec"]
    result = run_local(
        driver_for("quantiles", spec), _split(task["X"], task["owner"], task["nodes"]), rng=NoiseSource(b"quantile-tests-rng")
    )
    pooled = np.clip(task["X"], spec["low"], spec["high"])
    assert result["count"] == pooled.shape[0]
    if pooled.shape[0] == 0:
        assert result["quantiles"] == [None] * pooled.shape[1]
        return
    for j, column in enumerate(result["columns"]):
        cell = result["lattice_cell"][j]
        assert cell <= spec["resolution"][column] * (1 + 1e-12)
        expected = np.quantile(pooled[:, column], spec["quantiles"], method=spec["method"])
        for got, want in zip(result["quantiles"][j], expected):
            assert abs(got - want) <= cell + 1e-9 * (1 + abs(want))  # within one bin (the driver claims half)
            assert abs(got - want) <= result["error_bound"][j] + 1e-9 * (1 + abs(want) + cell)
    # every round narrows each window B-fold: ceil(log_B(cells)) aggregations at most
    most = max(round((spec["high"][c] - spec["low"][c]) / result["lattice_cell"][j]) for j, c in enumerate(result["columns"]))
    rounds, span = 1, most
    while (span := math.ceil(span / spec["bins_per_round"])) > 1:
        rounds += 1
    assert result["aggregations"] <= rounds


@st.composite
def clustering_tasks(draw: st.DrawFn) -> dict:
    """Blobs (seeded numpy draws), split arbitrarily among 1-10 sites; initial centres are distinct data points."""
    seed = draw(st.integers(0, 2**32 - 1))
    k = draw(st.integers(2, 4))
    d = draw(st.integers(1, 3))
    rows = draw(st.integers(3 * k, 60))
    nodes = draw(st.integers(1, 10))
    generator = np.random.default_rng(seed)
    centres = generator.uniform(-10, 10, size=(k, d))
    X = centres[generator.integers(0, k, rows)] + generator.normal(0, draw(st.floats(0.3, 3.0)), size=(rows, d))
    owner = draw(arrays(np.int64, rows, elements=st.integers(0, nodes - 1)))
    start = generator.choice(rows, size=k, replace=False)
    return {"X": X, "owner": owner, "nodes": nodes, "init": X[start], "k": k}


@given(clustering_tasks())
def test_kmeans_matches_scikit_learn_from_the_same_initial_centres(task: dict) -> None:
    low, high = [-15.0] * task["X"].shape[1], [15.0] * task["X"].shape[1]
    init = np.clip(task["init"], low, high)
    assume(len(np.unique(init, axis=0)) == task["k"])
    spec = {
        "max_nodes": task["nodes"],
        "max_rows": 100,
        "low": low,
        "high": high,
        "centres": init.tolist(),
        "max_iter": 100,
        "tol": 0.0,
    }
    result = run_local(
        driver_for("kmeans", spec), _split(task["X"], task["owner"], task["nodes"]), rng=NoiseSource(b"kmeans-tests-rng")
    )
    pooled = np.clip(task["X"], low, high)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. fewer distinct points than clusters
        reference = KMeans(task["k"], init=init, n_init=1, max_iter=100, tol=0.0, algorithm="lloyd").fit(pooled)
    assume(reference.inertia_ > 1e-9)
    assert result["count"] == pooled.shape[0]
    assert abs(result["inertia"] - reference.inertia_) <= 0.02 * reference.inertia_
    # where no point is near a boundary, the secure centres assign every point as scikit-learn's do
    ours = np.asarray(result["centres"])
    distances = ((pooled[:, None, :] - ours[None, :, :]) ** 2).sum(axis=2)
    ordered = np.sort(distances, axis=1)
    clear = ordered[:, 1] - ordered[:, 0] > 1e-3 * (1.0 + ordered[:, 0])
    same_optimum = np.max(np.abs(ours - reference.cluster_centers_)) <= 1e-3
    event("same local optimum" if same_optimum else "another local optimum within 2%")
    if same_optimum:
        assert np.array_equal(np.argmin(distances, axis=1)[clear], reference.labels_[clear])
