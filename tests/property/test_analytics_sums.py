"""Single-aggregation analytics: the finished sum of node vectors equals numpy on the pooled data.

Data is split among 1-10 nodes in arbitrary ways (empty nodes included); every
node's vector goes through the real encoder (stochastic rounding), the vectors
are summed mod 2^32, and the coordinator's result is compared with numpy on the
pooled, clipped data: exactly for counts and histograms, and within the
result's own stated error bound for everything the fixed point rounds.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from securefed.analytics import REGISTRY, modular_sum
from securefed.analytics.params import Cohort, Reader
from securefed.dp.noise import NoiseSource

_FLOAT_SLACK = 1e-9


@st.composite
def federations(draw: st.DrawFn, max_features: int = 3, with_y: bool = False, min_rows: int = 0) -> dict:
    """Pooled data, its split among nodes, declared bounds and a cohort that fits the split."""
    d = draw(st.integers(1, max_features))
    nodes = draw(st.integers(1, 10))
    rows = draw(st.integers(min_rows, 40))
    low = np.array(draw(st.lists(st.floats(-50, 50), min_size=d, max_size=d)))
    width = np.array(draw(st.lists(st.floats(0.5, 80), min_size=d, max_size=d)))
    unit = st.one_of(st.floats(-1.4, 1.4), st.sampled_from([-1.0, 1.0, 0.0]))  # some values clip, some sit on a bound
    E = draw(arrays(np.float64, (rows, d), elements=unit))
    X = low + width * (E + 1.0) / 2.0
    owner = draw(arrays(np.int64, rows, elements=st.integers(0, nodes - 1)))
    biggest = max([int(np.sum(owner == i)) for i in range(nodes)] + [1])
    max_rows = biggest * draw(st.sampled_from([1, 7, 1000]))
    max_nodes = nodes * draw(st.sampled_from([1, 3, 50]))
    out = {"X": X, "owner": owner, "nodes": nodes, "low": low, "high": low + width, "max_rows": max_rows, "max_nodes": max_nodes}
    if with_y:
        weights = np.array(draw(st.lists(st.floats(-3, 3), min_size=d, max_size=d)))
        noise = draw(arrays(np.float64, rows, elements=st.floats(-1, 1)))
        out["y"] = (np.clip(X, low, low + width) - low) @ weights + noise
    return out


def _base(f: dict) -> dict:
    return {"max_nodes": f["max_nodes"], "max_rows": f["max_rows"], "low": f["low"].tolist(), "high": f["high"].tolist()}


def _federate(kind: str, params: dict, f: dict) -> dict:
    """Every node's encoded vector, summed mod 2^32, finished by the coordinator."""
    computation = REGISTRY[kind]
    y = f.get("y")
    vectors = []
    for node in range(f["nodes"]):
        mine = f["owner"] == node
        rng = NoiseSource(b"analytics-test-%d-padding" % node)
        vectors.append(computation.node_vector(params, f["X"][mine], None if y is None else y[mine], rng=rng))
    result = computation.finish(params, modular_sum(vectors), f["nodes"])
    json.dumps(result, allow_nan=False)  # JSON-serialisable, no NaN
    return result


def _clipped(f: dict) -> np.ndarray:
    return np.clip(f["X"], f["low"], f["high"])


def _close(value: float, expected: float, bound: float, scale: float = 1.0) -> bool:
    return abs(value - expected) <= bound + _FLOAT_SLACK * (1.0 + abs(expected) + scale)


@given(federations())
def test_count_is_exact(f: dict) -> None:
    result = _federate("count", {"max_nodes": f["max_nodes"], "max_rows": f["max_rows"]}, f)
    assert result["count"] == f["X"].shape[0]


@given(federations())
def test_mean_within_its_stated_bound(f: dict) -> None:
    result = _federate("mean", _base(f), f)
    pooled = _clipped(f)
    assert result["count"] == pooled.shape[0]
    if pooled.shape[0] == 0:
        assert result["mean"] is None
        return
    for j, expected in enumerate(pooled.mean(axis=0)):
        assert _close(result["mean"][j], expected, result["error_bound"]["mean"][j], f["high"][j] - f["low"][j])


@given(federations(), st.sampled_from([0, 1]))
def test_variance_within_its_stated_bound(f: dict, ddof: int) -> None:
    result = _federate("variance", {**_base(f), "ddof": ddof}, f)
    pooled = _clipped(f)
    if pooled.shape[0] - ddof <= 0:
        assert result["variance"] is None
        return
    scale = float(np.max(f["high"] - f["low"])) ** 2
    for j, expected in enumerate(pooled.var(axis=0, ddof=ddof)):
        assert _close(result["variance"][j], expected, result["error_bound"]["variance"][j], scale)


@given(federations(), st.sampled_from([0, 1]))
def test_covariance_within_its_stated_bound(f: dict, ddof: int) -> None:
    result = _federate("covariance", {**_base(f), "ddof": ddof}, f)
    pooled = _clipped(f)
    if pooled.shape[0] - ddof <= 0:
        assert result["covariance"] is None
        return
    expected = np.atleast_2d(np.cov(pooled.T, ddof=ddof))
    bound = np.asarray(result["error_bound"]["covariance"])
    scale = float(np.max(f["high"] - f["low"])) ** 2
    got = np.asarray(result["covariance"])
    assert np.all(np.abs(got - expected) <= bound + _FLOAT_SLACK * (1.0 + np.abs(expected) + scale))
    assert np.allclose(got, got.T)


@given(federations())
def test_correlation_within_its_stated_bound_and_undetermined_only_near_zero_variance(f: dict) -> None:
    result = _federate("correlation", _base(f), f)
    pooled = _clipped(f)
    d = pooled.shape[1]
    if pooled.shape[0] < 2:
        assert all(v is None for row in result["correlation"] for v in row)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy divides by a zero variance
        expected = np.atleast_2d(np.corrcoef(pooled.T))
    cov = _federate("covariance", _base(f), f)
    variance_bound = np.diag(np.asarray(cov["error_bound"]["covariance"]))
    true_variance = pooled.var(axis=0, ddof=1)
    for i in range(d):
        for j in range(d):
            value = result["correlation"][i][j]
            if value is None:  # undetermined: one of the variances is within (twice) its bound of zero
                assert (
                    min(true_variance[i] - 2 * variance_bound[i], true_variance[j] - 2 * variance_bound[j]) <= _FLOAT_SLACK * 1e3
                )
                continue
            assert np.isfinite(expected[i, j])
            assert abs(value - expected[i, j]) <= result["error_bound"]["correlation"][i][j] + 1e-7
            assert -1.0 <= value <= 1.0


@st.composite
def edge_lists(draw: st.DrawFn, d: int) -> tuple[list[int], list[list[float]]]:
    count = draw(st.integers(1, 3))
    columns = draw(st.lists(st.integers(0, d - 1), min_size=count, max_size=count))
    edges = []
    for _ in range(count):
        points = draw(st.lists(st.floats(-80, 140), min_size=2, max_size=8, unique=True))
        edges.append(sorted(points))
    return columns, edges


@given(st.data())
def test_histogram_is_exact(data: st.DataObject) -> None:
    f = data.draw(federations())
    columns, edges = data.draw(edge_lists(f["X"].shape[1]))
    params = {"max_nodes": f["max_nodes"], "max_rows": f["max_rows"], "edges": edges, "columns": columns}
    result = _federate("histogram", params, f)
    assert result["count"] == f["X"].shape[0]
    for column, e, got in zip(columns, edges, result["histograms"]):
        values = f["X"][:, column]  # histograms bin the raw values: nothing is clipped
        assert got["counts"] == np.histogram(values, bins=np.asarray(e))[0].tolist()
        assert got["below"] == int(np.sum(values < e[0]))
        assert got["above"] == int(np.sum(values > e[-1]))


@given(federations(with_y=True, min_rows=4), st.sampled_from([0.0, 0.5, 10.0]))
def test_linear_regression_within_its_stated_bound(f: dict, ridge: float) -> None:
    y_low, y_high = -120.0, 120.0
    params = {**_base(f), "y_low": y_low, "y_high": y_high, "ridge": ridge}
    result = _federate("linear_regression", params, f)
    X, y = _clipped(f), np.clip(f["y"], y_low, y_high)
    n = X.shape[0]
    assert result["count"] == n
    event("coefficients determined" if result["error_bound"] is not None else "coefficients undetermined")
    if result["error_bound"] is None:
        return  # not determined at this resolution (too few or collinear records): nothing is claimed
    x_mean, y_mean = X.mean(axis=0), y.mean()
    Xc, yc = X - x_mean, y - y_mean
    slopes = np.linalg.solve(Xc.T @ Xc + ridge * np.eye(X.shape[1]), Xc.T @ yc)
    intercept = y_mean - x_mean @ slopes
    bound = result["error_bound"]
    for j, expected in enumerate(slopes):
        assert abs(result["coefficients"][j] - expected) <= bound["coefficients"][j] * (1 + 1e-6) + 1e-9 * (1 + abs(expected))
    assert abs(result["intercept"] - intercept) <= bound["intercept"] * (1 + 1e-6) + 1e-9 * (1 + abs(intercept))
    sse, sst = float(np.sum((y - intercept - X @ slopes) ** 2)), float(np.sum(yc**2))
    assert abs(result["sst"] - sst) <= bound["sst"] * (1 + 1e-6) + 1e-9 * (1 + sst)
    assert abs(result["sse"] - sse) <= bound["sse"] * (1 + 1e-6) + 1e-9 * (1 + sse)
    if bound["r2_train"] is not None:
        assert abs(result["r2_train"] - (1 - sse / sst)) <= bound["r2_train"] * (1 + 1e-6) + 1e-9


@given(st.integers(1, 200), st.integers(1, 1 << 24), st.sampled_from([1, 2, 5, 17]))
def test_extreme_contributions_never_wrap(max_nodes: int, max_rows: int, length: int) -> None:
    """Any cohort the parameters accept: max_nodes vectors at +max_rows (or -max_rows) decode exactly."""
    try:
        cohort = Reader("count", {"max_nodes": max_nodes, "max_rows": max_rows}, ("max_nodes", "max_rows")).cohort()
    except ValueError:
        assert max_nodes * max_rows >= 1 << 31
        return
    encoder = cohort.encoder(length)
    for sign in (1.0, -1.0):
        one = encoder.encode(np.full(length, sign * max_rows), NoiseSource(b"extreme-contributions"))
        total = modular_sum([one] * max_nodes)
        assert np.all(encoder.decode(total) == sign * max_nodes * max_rows)


def test_cohort_refuses_exactly_when_whole_numbers_could_wrap() -> None:
    allowed = ("max_nodes", "max_rows")
    Reader("count", {"max_nodes": 2, "max_rows": (1 << 30) - 1}, allowed).cohort()
    try:
        Reader("count", {"max_nodes": 2, "max_rows": 1 << 30}, allowed).cohort()
    except ValueError as exc:
        assert "max_rows" in str(exc)
    else:  # pragma: no cover - the check must refuse
        raise AssertionError("a cohort whose sum reaches 2^31 was accepted")
    assert Cohort(2, (1 << 30) - 1).fractional_bits == 0
