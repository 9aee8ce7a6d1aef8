"""Unit tests for :mod:`securefed.learning.partition`: every split is a partition
(hypothesis), is deterministic per seed, and has the skew it promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.errors import InvalidParameter
from securefed.learning.datasets import load_bundled
from securefed.learning.partition import PARTITIONERS, dirichlet, iid, kmeans_clusters, partition

SEEDS = st.integers(0, 2**32 - 1)


def assert_partition(parts: list[np.ndarray], n: int, n_nodes: int, min_size: int = 1) -> None:
    assert len(parts) == n_nodes
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert len(p) >= min_size
    joined = np.concatenate(parts)
    assert len(joined) == n  # disjoint (no index twice) ...
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))  # ... and complete


@given(n=st.integers(1, 400), data=st.data(), seed=SEEDS)
def test_iid_is_a_balanced_partition(n: int, data: st.DataObject, seed: int) -> None:
    nodes = data.draw(st.integers(1, min(n, 20)))
    parts = iid(n, nodes, seed)
    assert_partition(parts, n, nodes)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(a.tobytes() == b.tobytes() for a, b in zip(parts, iid(n, nodes, seed)))


def test_iid_is_shuffled_and_seeded() -> None:
    a, b = iid(100, 2, 0), iid(100, 2, 1)
    assert not np.array_equal(a[0], np.arange(50))  # not just contiguous blocks
    assert not np.array_equal(a[0], b[0])


@given(
    n_classes=st.integers(1, 10),
    nodes=st.integers(1, 5),
    per_node=st.integers(50, 120),
    alpha=st.floats(0.5, 100.0),
    min_size=st.integers(1, 5),
    seed=SEEDS,
)
def test_dirichlet_is_a_partition(n_classes, nodes, per_node, alpha, min_size, seed) -> None:
    n = nodes * per_node
    y = np.random.default_rng(seed).integers(0, n_classes, size=n)
    parts = dirichlet(y, nodes, alpha, seed, min_size=min_size)
    assert_partition(parts, n, nodes, min_size)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(parts, dirichlet(y, nodes, alpha, seed, min_size=min_size)))


def label_skew(parts: list[np.ndarray], y: np.ndarray) -> float:
    """Mean total-variation distance between each node's label mix and the global one."""
    classes = np.unique(y)
    overall = np.array([np.mean(y == c) for c in classes])
    tv = [0.5 * np.abs(np.array([np.mean(y[p] == c) for c in classes]) - overall).sum() for p in parts]
    return float(np.mean(tv))


def test_lower_alpha_skews_labels_more() -> None:
    y = load_bundled("digits").y
    skew = {alpha: np.mean([label_skew(dirichlet(y, 5, alpha, seed), y) for seed in range(5)]) for alpha in (0.1, 1.0, 100.0)}
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.4  # nodes see mostly a few classes
    assert skew[100.0] < 0.1  # close to IID
    assert label_skew(iid(len(y), 5, 0), y) < 0.1


def test_dirichlet_refuses_what_it_cannot_do() -> None:
    y = np.zeros(100, dtype=np.int64)
    with pytest.raises(InvalidParameter, match="at least 30"):
        dirichlet(y, 5, 1.0, 0, min_size=30)  # 150 > 100 samples: impossible up front
    with pytest.raises(InvalidParameter, match="in 50 tries"):
        dirichlet(y, 5, 0.001, 0, min_size=10, max_tries=50)  # one class, extreme skew
    with pytest.raises(InvalidParameter, match="alpha"):
        dirichlet(y, 2, 0.0, 0)
    with pytest.raises(InvalidParameter, match="integer labels"):
        dirichlet(np.linspace(0, 1, 100), 2, 1.0, 0)
    with pytest.raises(InvalidParameter, match="n_nodes"):
        dirichlet(y, 0, 1.0, 0)


@settings(max_examples=20)
@given(n=st.integers(3, 120), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_kmeans_is_a_partition(n: int, data: st.DataObject, seed: int) -> None:
    nodes = data.draw(st.integers(1, min(n, 6)))
    X = np.random.default_rng(seed).normal(size=(n, 3))
    assert_partition(kmeans_clusters(X, nodes, seed), n, nodes)


def test_kmeans_gives_each_node_one_region_of_feature_space() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    blob = np.repeat(np.arange(3), 40)
    X = centres[blob] + rng.normal(scale=0.5, size=(120, 2))
    parts = kmeans_clusters(X, 3, seed=0)
    assert_partition(parts, 120, 3)
    assert sorted(tuple(np.unique(blob[p])) for p in parts) == [(0,), (1,), (2,)]


def test_kmeans_refuses_too_few_distinct_points() -> None:
    X = np.array([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    with pytest.raises(InvalidParameter, match="distinct"):
        kmeans_clusters(X, 3, seed=0)
    with pytest.raises(InvalidParameter, match="NaN"):
        kmeans_clusters(np.array([[np.nan], [1.0], [2.0]]), 2, seed=0)


def test_partition_dispatches_and_refuses() -> None:
    d = load_bundled("iris")
    assert PARTITIONERS == ("iid", "dirichlet", "kmeans")
    for name, options in [("iid", {}), ("dirichlet", {"alpha": 0.5, "min_size": 5}), ("kmeans", {})]:
        assert_partition(partition(name, d.X, d.y, 3, 7, **options), len(d.y), 3)
    with pytest.raises(InvalidParameter, match=r"valid partitioners are \['iid', 'dirichlet', 'kmeans'\]"):
        partition("shards", d.X, d.y, 3, 0)
    with pytest.raises(InvalidParameter, match="unknown option"):
        partition("iid", d.X, d.y, 3, 0, alpha=1.0)
    with pytest.raises(InvalidParameter, match="needs alpha"):
        partition("dirichlet", d.X, d.y, 3, 0)
    with pytest.raises(InvalidParameter, match="as many rows"):
        partition("iid", d.X, d.y[:-1], 3, 0)
    with pytest.raises(InvalidParameter, match="at least 1 sample"):
        iid(3, 4, 0)
