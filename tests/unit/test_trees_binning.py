"""securefed.trees.binning: equal-width bins from public bounds."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.errors import InvalidParameter
from securefed.preprocessing import Preprocessing
from securefed.trees.binning import Bins


def test_equal_width_codes_and_clipping_to_end_bins() -> None:
    bins = Bins((0.0, -1.0), (10.0, 1.0), 5)
    X = np.array([[0.0, -1.0], [1.99, -0.61], [2.0, -0.6], [9.99, 0.99], [10.0, 1.0], [-50.0, 7.0], [1e300, -1e300]])
    codes = bins.digitize(X)
    assert codes.dtype == np.uint8
    assert codes.tolist() == [[0, 0], [0, 0], [1, 1], [4, 4], [4, 4], [0, 4], [4, 0]]


def test_code_dtype_widens_beyond_256_bins() -> None:
    assert Bins((0.0,), (1.0,), 256).code_dtype is np.uint8
    wide = Bins((0.0,), (1.0,), 1000)
    assert wide.digitize(np.array([[0.9995]])).dtype == np.uint16
    assert wide.digitize(np.array([[0.9995]]))[0, 0] == 999


def test_thresholds_are_the_upper_bin_edges() -> None:
    bins = Bins((0.0,), (4.0,), 4)
    assert bins.thresholds().tolist() == [[1.0, 2.0, 3.0]]
    edges = bins.thresholds()[0]
    below, above = bins.digitize((edges - 1e-9)[:, None])[:, 0], bins.digitize((edges + 1e-9)[:, None])[:, 0]
    assert below.tolist() == [0, 1, 2] and above.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("low", "high", "n_bins", "message"),
    [
        ((0.0,), (0.0,), 4, "max > min"),
        ((0.0, 1.0), (1.0,), 4, "one of each"),
        ((float("nan"),), (1.0,), 4, "finite"),
        ((), (), 4, "non-empty"),
        ((0.0,), (1.0,), 1, "n_bins"),
        ((0.0,), (1.0,), True, "n_bins"),
        ((0.0,), (1.0,), 70000, "n_bins"),
    ],
)
def test_bad_bounds_are_refused(low: tuple, high: tuple, n_bins: object, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        Bins(low, high, n_bins)  # type: ignore[arg-type]


def test_bad_data_is_refused_with_a_clear_error() -> None:
    bins = Bins((0.0, 0.0), (1.0, 1.0), 4)
    with pytest.raises(InvalidParameter, match="NaN or infinity"):
        bins.digitize(np.array([[0.5, np.nan]]))
    with pytest.raises(InvalidParameter, match="2 features"):
        bins.digitize(np.zeros((3, 3)))
    with pytest.raises(InvalidParameter, match="numbers"):
        bins.digitize(np.array([["a", "b"]], dtype=object))


def test_bins_from_a_declared_minmax_preprocessing_only() -> None:
    minmax = Preprocessing.from_mapping({"scaler": "minmax", "min": [0.0, 5.0], "max": [2.0, 6.0]}, 2)
    assert minmax is not None
    bins = Bins.from_preprocessing(minmax, 8)
    assert bins.low == (0.0, 5.0) and bins.high == (2.0, 6.0) and bins.n_bins == 8
    standard = Preprocessing.from_mapping({"scaler": "standard", "mean": 0.0, "scale": 1.0}, 2)
    assert standard is not None
    with pytest.raises(InvalidParameter, match="declare a minmax"):
        Bins.from_preprocessing(standard, 8)


def test_json_round_trip_and_strict_reading() -> None:
    bins = Bins((0.0, 1.5), (1.0, 2.5), 16)
    assert Bins.from_json(bins.to_json()) == bins
    with pytest.raises(InvalidParameter, match="wrong keys"):
        Bins.from_json({**bins.to_json(), "extra": 1})
    with pytest.raises(InvalidParameter, match="list"):
        Bins.from_json({**bins.to_json(), "low": "0"})
