"""Analytics parameters are read strictly: every malformed value is refused with an error naming its key."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from securefed.analytics import REGISTRY, ParameterError, driver_for, get
from securefed.analytics.params import MAX_VECTOR_LENGTH
from securefed.errors import InvalidParameter

BOUNDS = {"max_nodes": 3, "max_rows": 10, "low": [0.0, -1.0], "high": [1.0, 1.0]}

VALID: dict[str, dict] = {
    "count": {"max_nodes": 3, "max_rows": 10},
    "mean": BOUNDS,
    "variance": {**BOUNDS, "ddof": 0},
    "covariance": BOUNDS,
    "correlation": {**BOUNDS, "ddof": 1},
    "histogram": {"max_nodes": 3, "max_rows": 10, "edges": [[0.0, 0.5, 1.0], [-1, 1]], "columns": [0, 1]},
    "quantiles": {**BOUNDS, "resolution": 0.25, "windows": [{"column": 0, "start": 0, "stop": 4, "bins": 2}]},
    "kmeans": {**BOUNDS, "centres": [[0.5, 0.0], [0.1, 0.9]]},
    "linear_regression": {**BOUNDS, "y_low": 0.0, "y_high": 10.0, "ridge": 0.5},
}

REQUIRED: dict[str, tuple[str, ...]] = {
    "count": ("max_nodes", "max_rows"),
    "mean": ("max_nodes", "max_rows", "low", "high"),
    "variance": ("low", "high"),
    "covariance": ("low", "high"),
    "correlation": ("low", "high"),
    "histogram": ("max_nodes", "max_rows", "edges"),
    "quantiles": ("low", "high", "resolution", "windows"),
    "kmeans": ("low", "high", "centres"),
    "linear_regression": ("low", "high", "y_low", "y_high"),
}

# (kind, key, bad value): each must be refused naming the key
BAD_VALUES = [
    ("count", "max_nodes", True),
    ("count", "max_nodes", 0),
    ("count", "max_nodes", 1 << 20),
    ("count", "max_rows", 2.5),
    ("count", "max_rows", "10"),
    ("count", "max_rows", 1 << 31),
    ("mean", "low", "0"),
    ("mean", "low", []),
    ("mean", "low", [0.0, float("nan")]),
    ("mean", "low", [0.0, float("inf")]),
    ("mean", "low", [True, 0.0]),
    ("mean", "high", [1.0]),  # one value short
    ("mean", "high", [0.0, 1.0]),  # high == low for feature 0
    ("mean", "high", [1.0, -2.0]),  # high < low
    ("variance", "ddof", 2),
    ("variance", "ddof", 0.0),
    ("histogram", "edges", [[0.0]]),
    ("histogram", "edges", [[0.0, 0.0, 1.0]]),
    ("histogram", "edges", [[1.0, 0.0]]),
    ("histogram", "edges", []),
    ("histogram", "edges", [0.0, 1.0]),
    ("histogram", "columns", [0]),  # two histograms, one column
    ("histogram", "columns", [0, -1]),
    ("quantiles", "resolution", 0.0),
    ("quantiles", "resolution", [0.1]),
    ("quantiles", "resolution", 1e-30),
    ("quantiles", "windows", [{"column": 0, "start": 0, "stop": 5, "bins": 2}]),  # past the 4 lattice cells
    ("quantiles", "windows", [{"column": 2, "start": 0, "stop": 4, "bins": 2}]),
    ("quantiles", "windows", [{"column": 0, "start": 2, "stop": 2, "bins": 1}]),
    ("quantiles", "windows", [{"column": 0, "start": 0, "stop": 4, "bins": 5}]),
    ("quantiles", "windows", [{"column": 0, "start": 0, "stop": 4}]),
    ("quantiles", "windows", [{"column": 0, "start": 0.0, "stop": 4, "bins": 2}]),
    ("kmeans", "centres", []),
    ("kmeans", "centres", [[0.5]]),
    ("kmeans", "centres", [[0.5, None]]),
    ("kmeans", "centres", [0.5, 0.5]),
    ("linear_regression", "y_high", -1.0),
    ("linear_regression", "y_low", "0"),
    ("linear_regression", "ridge", -0.1),
]


def test_every_registered_kind_has_a_valid_example() -> None:
    assert set(VALID) == set(REGISTRY)
    for kind, params in VALID.items():
        parsed = get(kind).parse(params)
        assert parsed.cohort.max_nodes == params["max_nodes"]


@pytest.mark.parametrize("kind", sorted(VALID))
def test_unknown_key_is_refused_by_name_with_the_nearest_valid_one(kind: str) -> None:
    params = {**VALID[kind], "max_rowz": 5}
    with pytest.raises(ParameterError) as caught:
        get(kind).parse(params)
    assert caught.value.key == "max_rowz" and caught.value.kind == kind
    assert "'max_rowz'" in str(caught.value) and "did you mean 'max_rows'" in str(caught.value)


@pytest.mark.parametrize(("kind", "key"), [(kind, key) for kind, keys in REQUIRED.items() for key in keys])
def test_missing_required_key_is_named(kind: str, key: str) -> None:
    params = {k: v for k, v in VALID[kind].items() if k != key}
    with pytest.raises(ParameterError, match=f"'{key}' is required") as caught:
        get(kind).parse(params)
    assert caught.value.key == key


@pytest.mark.parametrize(("kind", "key", "value"), BAD_VALUES, ids=[f"{k}-{key}-{i}" for i, (k, key, _) in enumerate(BAD_VALUES)])
def test_bad_value_is_refused_naming_its_key(kind: str, key: str, value: object) -> None:
    params = {**copy.deepcopy(VALID[kind]), key: value}
    with pytest.raises(ParameterError) as caught:
        get(kind).parse(params)
    assert caught.value.key == key
    assert f"{kind}: parameter '{key}'" in str(caught.value)
    assert isinstance(caught.value, InvalidParameter) and "\n" not in str(caught.value)


def test_parameters_must_be_an_object_with_string_keys() -> None:
    with pytest.raises(ParameterError, match="must be a JSON object"):
        get("mean").parse([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="not a string key"):
        get("count").parse({"max_nodes": 1, "max_rows": 1, 3: 4})  # type: ignore[dict-item]


def test_parameters_that_could_wrap_the_sum_are_refused() -> None:
    with pytest.raises(ParameterError, match="could wrap the 32-bit sum") as caught:
        get("mean").parse({**BOUNDS, "max_nodes": 1000, "max_rows": 3_000_000})
    assert caught.value.key == "max_rows"
    get("mean").parse({**BOUNDS, "max_nodes": 1000, "max_rows": 2_000_000})  # 2e9 < 2^31: accepted


def test_a_request_for_too_long_a_vector_is_refused() -> None:
    windows = [{"column": 0, "start": 0, "stop": 4096, "bins": 4096}] * 1100  # 1100 * 4098 > 2^22
    params = {"max_nodes": 3, "max_rows": 10, "low": [0.0], "high": [1.0], "resolution": 1 / 4096, "windows": windows}
    with pytest.raises(ParameterError, match=f"at most {MAX_VECTOR_LENGTH}") as caught:
        get("quantiles").parse(params)
    assert caught.value.key == "windows"


def test_unknown_computation_is_named_with_the_nearest() -> None:
    with pytest.raises(InvalidParameter, match="unknown computation 'meen'; did you mean 'mean'"):
        get("meen")
    with pytest.raises(InvalidParameter, match="unknown computation"):
        driver_for("train_and_exfiltrate", {})


@pytest.mark.parametrize(
    ("kind", "spec", "key"),
    [
        ("quantiles", {**BOUNDS, "resolution": 0.1, "quantiles": [1.5]}, "quantiles"),
        ("quantiles", {**BOUNDS, "resolution": 0.1, "quantiles": [0.5], "method": "nearest"}, "method"),
        ("quantiles", {**BOUNDS, "resolution": 0.1, "quantiles": [0.5], "bins_per_round": 1}, "bins_per_round"),
        ("quantiles", {**BOUNDS, "resolution": 0.1, "quantiles": [0.5], "columns": [2]}, "columns"),
        ("quantiles", {**BOUNDS, "resolution": 0.1, "quantile": [0.5]}, "quantile"),
        ("kmeans", {**BOUNDS, "centres": [[0.0, 0.0]], "max_iter": 0}, "max_iter"),
        ("kmeans", {**BOUNDS, "centres": [[0.0, 0.0]], "tol": -1.0}, "tol"),
        ("kmeans", {**BOUNDS, "centres": [[0.0, 0.0]], "windows": []}, "windows"),
        ("mean", {**BOUNDS, "ddof": 1}, "ddof"),
    ],
)
def test_driver_specs_are_read_strictly(kind: str, spec: dict, key: str) -> None:
    with pytest.raises(ParameterError) as caught:
        driver_for(kind, spec)
    assert caught.value.key == key


def test_requests_are_plain_json() -> None:
    driver = driver_for("kmeans", {**BOUNDS, "centres": [[0.0, 0.0]]})
    request = driver.next_request()
    assert request is not None
    assert json.loads(json.dumps(request.to_json())) == request.to_json()
    assert set(request.params) == {"max_nodes", "max_rows", "low", "high", "centres"}  # no driver-only keys reach nodes


def test_describe_names_the_computation_and_its_cohort() -> None:
    text = get("covariance").describe(BOUNDS)
    assert "covariance of 2 features" in text and "3 nodes x 10 rows" in text
    assert all(isinstance(kind.reveals, str) and kind.reveals for kind in REGISTRY.values())


def test_the_data_must_fit_the_request() -> None:
    mean = get("mean")
    with pytest.raises(InvalidParameter, match="declares 2 features"):
        mean.node_vector(BOUNDS, np.zeros((3, 3)))
    with pytest.raises(InvalidParameter, match="more than the request's max_rows"):
        mean.node_vector(BOUNDS, np.zeros((11, 2)))
    with pytest.raises(ValueError, match="column 1 holds NaN"):
        mean.node_vector(BOUNDS, np.array([[0.0, np.nan]]))
    with pytest.raises(InvalidParameter, match="needs a target y"):
        get("linear_regression").node_vector(VALID["linear_regression"], np.zeros((2, 2)))
    with pytest.raises(InvalidParameter, match="uses column 1"):
        get("histogram").node_vector(VALID["histogram"], np.zeros((2, 1)))
