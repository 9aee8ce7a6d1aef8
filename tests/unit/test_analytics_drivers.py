"""The sans-IO drivers and the coordinator's checks on a summed vector."""

from __future__ import annotations

import json

import numpy as np
import pytest

from securefed.analytics import AnalyticsPolicy, driver_for, get, modular_sum, run_local
from securefed.dp.noise import NoiseSource
from securefed.errors import EncodingError, InvalidParameter, LocalProtocolError, ProtocolAborted

MEAN = {"max_nodes": 4, "max_rows": 50, "low": [0.0, 0.0], "high": [10.0, 1.0]}


def _sites() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    X = np.column_stack((rng.uniform(0, 10, 60), rng.uniform(0, 1, 60)))
    y = 2 * X[:, 0] - X[:, 1] + 1
    return [(X[:25], y[:25]), (X[25:25], y[25:25]), (X[25:], y[25:])]


def test_the_driver_loop_is_strict() -> None:
    driver = driver_for("mean", MEAN)
    with pytest.raises(LocalProtocolError, match="no request is pending"):
        driver.receive(np.zeros(3, dtype=np.uint32), 1)
    with pytest.raises(LocalProtocolError, match="has not finished"):
        _ = driver.result
    first = driver.next_request()
    assert first is not None and driver.next_request() is first  # the same request until its sum arrives
    driver.receive(np.zeros(3, dtype=np.uint32), 1)
    assert driver.done and driver.next_request() is None and driver.aggregations == 1
    assert driver.result["count"] == 0 and driver.result["mean"] is None


def test_one_shot_results_are_json_and_state_their_encoding() -> None:
    specs = {
        "count": {"max_nodes": 4, "max_rows": 50},
        "mean": MEAN,
        "variance": MEAN,
        "covariance": MEAN,
        "correlation": MEAN,
        "histogram": {"max_nodes": 4, "max_rows": 50, "edges": [[0, 5, 10]]},
        "linear_regression": {**MEAN, "y_low": -5.0, "y_high": 25.0},
        "quantiles": {**MEAN, "resolution": 0.01, "quantiles": [0.25, 0.5]},
        "kmeans": {**MEAN, "centres": [[2.0, 0.5], [8.0, 0.5]]},
    }
    for kind, spec in specs.items():
        result = run_local(driver_for(kind, spec), _sites(), rng=NoiseSource(b"drivers-unit-test"))
        text = json.dumps(result, allow_nan=False)
        assert result["computation"] == kind and result["count"] == 60 and result["refusals"] == []
        assert result["encoding"]["max_nodes"] == 4 and result["aggregations"] >= 1, text


def test_quantile_driver_counts_its_aggregations() -> None:
    # range 10 at resolution 0.01 -> 1000 cells; 64-way fan-out: 1000 -> 16 -> 1, two aggregations
    spec = {**MEAN, "resolution": [0.01, 0.5], "quantiles": [0.5], "bins_per_round": 64}
    result = run_local(driver_for("quantiles", spec), _sites())
    assert result["aggregations"] == 2 and result["lattice_cell"] == [0.01, 0.5]


def test_kmeans_driver_stops_at_max_iter() -> None:
    spec = {**MEAN, "centres": [[0.0, 0.0], [0.1, 0.0], [9.0, 1.0]], "max_iter": 2, "tol": 0.0}
    result = run_local(driver_for("kmeans", spec), _sites())
    assert result["iterations"] == 2 and result["aggregations"] == 2 and len(result["inertia_trace"]) == 2
    assert result["inertia_trace"][1] <= result["inertia_trace"][0]  # Lloyd never increases the objective


def test_a_sum_no_honest_cohort_could_produce_is_refused() -> None:
    mean = get("mean")
    honest = mean.node_vector(MEAN, np.array([[1.0, 0.5]]), rng=NoiseSource(b"drivers-unit-test"))
    assert mean.finish(MEAN, honest, 1)["count"] == 1
    skewed = honest.copy()
    skewed[0] += np.uint32(1)  # a count that is not a whole number of records
    with pytest.raises(EncodingError, match="not a whole number"):
        mean.finish(MEAN, skewed, 1)
    negative = honest.copy()
    negative[0] = np.uint32((1 << 32) - int(honest[0]))  # -1 records
    with pytest.raises(EncodingError, match=r"outside 0\.\."):
        mean.finish(MEAN, negative, 1)
    inflated = honest.copy()
    inflated[1] = np.uint32(1 << 30)  # a sum of values one record cannot reach
    with pytest.raises(EncodingError, match="exceeds what its record count allows"):
        mean.finish(MEAN, inflated, 1)
    with pytest.raises(InvalidParameter, match=r"survivors must be 1\.\.max_nodes"):
        mean.finish(MEAN, honest, 5)
    with pytest.raises(EncodingError, match="length 3"):
        mean.finish(MEAN, honest[:2], 1)
    hist = {"max_nodes": 4, "max_rows": 50, "edges": [[0, 5, 10], [0, 1]], "columns": [0, 1]}
    cells = get("histogram").node_vector(hist, np.array([[1.0, 0.5]]))
    cells[0] += cells[1]  # the two histograms no longer count the same records
    with pytest.raises(EncodingError, match="different record totals"):
        get("histogram").finish(hist, cells, 1)


def test_refusing_sites_are_left_out_and_recorded() -> None:
    sites = _sites()
    strict = AnalyticsPolicy(frozenset({"mean"}), min_records=30)  # the first site (25 records) refuses
    result = run_local(driver_for("mean", MEAN), sites, [strict, strict, strict])
    assert result["count"] == 35 and result["encoding"]["survivors"] == 2
    assert result["refusals"] == [
        {"site": 0, "aggregation": 0, "code": "too-few-records", "detail": result["refusals"][0]["detail"]}
    ]
    with pytest.raises(ProtocolAborted, match="every site refused"):
        run_local(driver_for("mean", MEAN), sites, AnalyticsPolicy(frozenset({"count"})))


def test_one_node_vector_stays_inside_its_declared_bound() -> None:
    kinds = {"covariance": MEAN, "linear_regression": {**MEAN, "y_low": -5.0, "y_high": 25.0}}
    for kind, params in kinds.items():
        computation = get(kind)
        X, y = _sites()[0]
        vector = computation.node_vector(params, X * 100, y * 100)  # far outside the bounds: clipped
        p = computation.parse(params)
        decoded = p.cohort.encoder(vector.shape[0]).decode(vector)
        assert np.max(np.abs(decoded)) <= X.shape[0]
        assert modular_sum([vector] * 4).dtype == np.uint32


def test_an_empty_cluster_is_reseeded_from_the_sums() -> None:
    centres = [[5.0, 0.5]] * 3  # ties go to the lowest index: clusters 1 and 2 start empty
    params = {**MEAN, "centres": centres}
    step = get("kmeans").finish(params, modular_sum([get("kmeans").node_vector(params, X) for X, _ in _sites()]), 3)
    assert step["empty_clusters"] == [1, 2] and step["counts"] == [60, 0, 0]
    result = run_local(driver_for("kmeans", {**params, "tol": 0.0}), _sites())
    assert result["reseeded_empty_clusters"] >= 2 and min(result["counts"]) > 0 and result["converged"]


def test_analytics_is_sans_io() -> None:
    from tests.unit.test_architecture import _violations

    forbidden = (
        "zmq",
        "securefed.wire",
        "securefed.federation",
        "securefed.secagg",
        "socket",
        "threading",
        "time",
        "random",
        "coordinator",
        "node",
    )
    assert _violations("securefed.analytics", forbidden) == []
