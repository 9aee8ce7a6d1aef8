"""securefed.trees.histograms: the wrap bound, per-row quantisation, vector layout and decoding."""

from __future__ import annotations

import numpy as np
import pytest

from securefed.errors import InvalidParameter, LocalProtocolError, RemoteProtocolError
from securefed.trees.binning import Bins
from securefed.trees.boosting import BoostingParams
from securefed.trees.forest import ForestParams
from securefed.trees.histograms import (
    SIGNED_LIMIT,
    Layout,
    check_no_wrap,
    class_count_histogram,
    decode_sum,
    fractional_bits,
    quantise,
    require_non_negative,
    secure_sum,
    stat_histogram,
    to_uint32,
)

BINS = Bins((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 4)


def test_wrap_bound_is_exact() -> None:
    check_no_wrap(1, SIGNED_LIMIT - 1, "counts")
    with pytest.raises(InvalidParameter, match="wrap"):
        check_no_wrap(1, SIGNED_LIMIT, "counts")
    check_no_wrap(8, (SIGNED_LIMIT - 1) // 8, "counts")
    with pytest.raises(InvalidParameter, match="lower max_nodes or max_rows_per_node"):
        check_no_wrap(8, (SIGNED_LIMIT - 1) // 8 + 1, "counts")


def test_fractional_bits_is_the_largest_safe_precision() -> None:
    bits = fractional_bits(1.0, 1_000_000, "g")
    assert 1_000_000 * (1 << bits) < SIGNED_LIMIT <= 1_000_000 * (1 << (bits + 1))
    assert fractional_bits(0.25, 1, "h") == 30
    with pytest.raises(InvalidParameter, match="8 bits of precision"):
        fractional_bits(1.0, 1 << 24, "g")


def test_params_refuse_cohorts_that_could_wrap() -> None:
    with pytest.raises(InvalidParameter, match="wrap"):
        ForestParams(bins=BINS, n_classes=2, max_nodes=1000, max_rows_per_node=300_000, max_weight=8)
    ForestParams(bins=BINS, n_classes=2, max_nodes=1000, max_rows_per_node=300_000, bootstrap=False)
    with pytest.raises(InvalidParameter, match="precision"):
        BoostingParams(bins=BINS, max_nodes=1000, max_rows_per_node=100_000)
    params = BoostingParams(bins=BINS, max_nodes=10, max_rows_per_node=1000)
    assert 10_000 * round(1.0 * 2**params.grad_bits) < SIGNED_LIMIT
    assert 10_000 * round(0.25 * 2**params.hess_bits) < SIGNED_LIMIT


def test_quantise_clips_and_rounds_to_nearest() -> None:
    values = np.array([-3.0, -0.3, 0.0, 0.26, 0.74, 5.0])
    assert quantise(values, 1.0, 2).tolist() == [-4, -1, 0, 1, 3, 4]
    assert quantise(values, 0.5, 2, non_negative=True).tolist() == [0, 0, 0, 1, 2, 2]


def test_two_complement_sum_decodes_signed() -> None:
    parts = [np.array([-5, 7, 0], dtype=np.int64), np.array([3, -9, SIGNED_LIMIT - 1], dtype=np.int64)]
    summed = secure_sum([to_uint32(p) for p in parts])
    assert decode_sum(summed, Layout(1, 1, 3, 1)).reshape(-1).tolist() == [-2, -2, SIGNED_LIMIT - 1]
    with pytest.raises(LocalProtocolError, match="2\\^31"):
        to_uint32(np.array([SIGNED_LIMIT], dtype=np.int64))


def test_decode_refuses_the_wrong_vector() -> None:
    layout = Layout(2, 1, 4, 3)
    with pytest.raises(LocalProtocolError, match="expects 24"):
        decode_sum(np.zeros(23, dtype=np.uint32), layout)
    with pytest.raises(LocalProtocolError, match="uint32"):
        decode_sum(np.zeros(24, dtype=np.int64), layout)
    with pytest.raises(RemoteProtocolError, match="negative"):
        require_non_negative(np.array([1, -1]), "count")


def test_class_counts_layout_by_hand() -> None:
    codes = np.array([[0, 1, 3], [2, 1, 0], [3, 3, 3]], dtype=np.uint8)
    labels = np.array([0, 1, 1])
    features = np.array([[0, 2], [1, 2]])  # entry 0 histograms features 0 and 2, entry 1 features 1 and 2
    # one tree: rows 0, 1 in entry 0, row 2 in entry 1
    hist = class_count_histogram(codes, features, 4, 2, np.array([[0, 0, 1]]), labels, np.array([[2, 1, 5]]))
    view = Layout(2, 2, 4, 2).unflatten(hist)
    expected = np.zeros((2, 2, 4, 2), dtype=np.int64)
    expected[0, 0, 0, 0] += 2  # row 0: feature 0 code 0, class 0, weight 2
    expected[0, 1, 3, 0] += 2  # row 0: feature 2 code 3
    expected[0, 0, 2, 1] += 1  # row 1: feature 0 code 2, class 1
    expected[0, 1, 0, 1] += 1  # row 1: feature 2 code 0
    expected[1, 0, 3, 1] += 5  # row 2: feature 1 code 3, class 1, weight 5
    expected[1, 1, 3, 1] += 5  # row 2: feature 2 code 3
    assert np.array_equal(view, expected)


def test_stat_histogram_layout_by_hand() -> None:
    codes = np.array([[1], [1], [0]], dtype=np.uint8)
    stats = np.array([[[5, 2, 1], [-3, 1, 1], [7, 4, 1]]])  # one tree
    hist = stat_histogram(codes, np.array([[0]]), 2, np.array([[0, 0, -1]]), stats)
    assert Layout(1, 1, 2, 3).unflatten(hist)[0, 0].tolist() == [[0, 0, 0], [2, 3, 2]]
