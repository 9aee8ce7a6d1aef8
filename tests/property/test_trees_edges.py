"""Bins at given edges (e.g. secure quantiles): codes, JSON and model arrays round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import InvalidParameter
from securefed.trees import Bins

finite = st.floats(-1e6, 1e6, allow_nan=False)


@st.composite
def binned(draw):
    n_features = draw(st.integers(1, 4))
    n_bins = draw(st.integers(2, 12))
    low = [draw(st.floats(-100, 0)) for _ in range(n_features)]
    high = [lo + draw(st.floats(1, 100)) for lo in low]
    edges = []
    for lo, hi in zip(low, high):
        row = sorted(draw(st.lists(st.floats(lo, hi), min_size=n_bins - 1, max_size=n_bins - 1)))
        edges.append(tuple(row))
    rows = draw(st.integers(1, 30))
    X = np.array([[draw(finite) for _ in range(n_features)] for _ in range(rows)])
    return Bins(tuple(low), tuple(high), n_bins, tuple(edges)), X


@settings(max_examples=150, deadline=None)
@given(binned())
def test_codes_are_the_number_of_edges_at_or_below_the_value(case) -> None:
    bins, X = case
    codes = bins.digitize(X)
    for f, row in enumerate(bins.edges):
        expected = np.array([sum(1 for e in row if e <= x) for x in X[:, f]])
        np.testing.assert_array_equal(codes[:, f], expected)
    assert codes.max() <= bins.n_bins - 1
    again = Bins.from_json(bins.to_json())
    assert again == bins and np.array_equal(again.digitize(X), codes)


def test_edges_out_of_order_or_outside_the_bounds_are_refused() -> None:
    with pytest.raises(InvalidParameter, match="must not decrease"):
        Bins((0.0,), (10.0,), 3, ((5.0, 4.0),))
    with pytest.raises(InvalidParameter, match="within its bounds"):
        Bins((0.0,), (10.0,), 3, ((-1.0, 4.0),))
    with pytest.raises(InvalidParameter, match="n_bins - 1"):
        Bins((0.0,), (10.0,), 3, ((1.0,),))
    with pytest.raises(InvalidParameter, match="one list per feature"):
        Bins((0.0, 0.0), (10.0, 10.0), 3, ((1.0, 2.0),))
    assert "edges" not in Bins((0.0,), (10.0,), 3).to_json()  # equal width keeps its old JSON
