"""Split a dataset's sample indices across simulated nodes.

Every partitioner returns one sorted int64 index array per node; together they
partition ``range(n_samples)`` (disjoint and complete) and every node gets at
least one sample. Results are deterministic given ``seed``; they use numpy's
generator, which is fine here: splitting data for a simulation is not a
security function.

- ``iid``: a uniform random permutation cut into near-equal parts.
- ``dirichlet``: label skew in the style of Hsu et al. 2019 ("Measuring the
  Effects of Non-Identical Data Distribution"), as popularised by Yurochkin et
  al. 2019: for each class, the class's samples are dealt to nodes in
  proportions drawn from Dir(alpha, ..., alpha). Small alpha gives each node few
  classes; large alpha approaches IID. Draws are repeated until every node has
  ``min_size`` samples.
- ``kmeans``: feature skew: KMeans with one cluster per node, each node
  gets one cluster.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from securefed.errors import InvalidParameter
from securefed.learning.models import _check_positive_int, _check_real, _check_seed

__all__ = ["PARTITIONERS", "dirichlet", "iid", "kmeans_clusters", "partition"]

#: How many times ``dirichlet`` redraws before declaring ``min_size`` out of reach.
DIRICHLET_MAX_TRIES = 1000


def _check_nodes(n_samples: int, n_nodes: object, min_size: int = 1) -> int:
    nodes = _check_positive_int("n_nodes", n_nodes)
    if n_samples < nodes * max(min_size, 1):
        raise InvalidParameter(
            f"cannot give each of {nodes} nodes at least {max(min_size, 1)} sample(s) "
            f"from {n_samples} samples; use fewer nodes or a larger dataset"
        )
    return nodes


def _labels(y: object) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise InvalidParameter(f"y must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidParameter(f"y must hold integer labels, got dtype {arr.dtype}")
    return arr


def iid(n_samples: int, n_nodes: int, seed: int | None) -> list[np.ndarray]:
    """Shuffle ``range(n_samples)`` and cut it into ``n_nodes`` parts differing by at most one."""
    n = _check_positive_int("n_samples", n_samples, minimum=0)
    nodes = _check_nodes(n, n_nodes)
    order = np.random.default_rng(_check_seed(seed)).permutation(n)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, nodes)]


def dirichlet(
    y: np.ndarray,
    n_nodes: int,
    alpha: float,
    seed: int | None,
    min_size: int = 10,
    max_tries: int = DIRICHLET_MAX_TRIES,
) -> list[np.ndarray]:
    """Label-skewed split: each class dealt to nodes in Dir(alpha) proportions.

    Redraws (up to ``max_tries`` times) until every node holds at least
    ``min_size`` samples; raises :class:`InvalidParameter` if it never does.
    """
    labels = _labels(y)
    n = labels.shape[0]
    size = _check_positive_int("min_size", min_size)
    nodes = _check_nodes(n, n_nodes, size)
    a = _check_real("alpha", alpha, low=0.0)
    tries = _check_positive_int("max_tries", max_tries)
    rng = np.random.default_rng(_check_seed(seed))
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(nodes)]
        for members in by_class:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(np.full(nodes, a))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            for node, chunk in enumerate(np.split(shuffled, cuts)):
                parts[node].append(chunk)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(r) for r in result) >= size:
            return result
    raise InvalidParameter(
        f"no Dirichlet(alpha={a}) split in {tries} tries gave all {nodes} nodes at least "
        f"{size} samples; raise alpha, lower min_size or use fewer nodes"
    )


def kmeans_clusters(X: np.ndarray, n_nodes: int, seed: int | None, min_size: int = 1) -> list[np.ndarray]:
    """Feature-skewed split: node i gets KMeans cluster i (clusters of the raw features).

    Raises :class:`InvalidParameter` if a cluster has fewer than ``min_size``
    samples (e.g. fewer distinct points than nodes).
    """
    data = np.asarray(X)
    if data.ndim != 2 or data.dtype.kind not in "fiu":
        raise InvalidParameter(f"X must be a numeric 2-D array, got shape {data.shape}, dtype {data.dtype}")
    data = data.astype(np.float64, copy=False)
    if not np.all(np.isfinite(data)):
        raise InvalidParameter("X contains NaN or infinity")
    size = _check_positive_int("min_size", min_size)
    nodes = _check_nodes(data.shape[0], n_nodes, size)
    seed = _check_seed(seed)
    if nodes == 1:
        return [np.arange(data.shape[0], dtype=np.int64)]
    with warnings.catch_warnings():
        # Fewer distinct points than clusters is reported below as InvalidParameter.
        warnings.simplefilter("ignore", ConvergenceWarning)
        assignment = KMeans(n_clusters=nodes, n_init=10, random_state=seed).fit_predict(data)
    result = [np.flatnonzero(assignment == k).astype(np.int64) for k in range(nodes)]
    smallest = min(len(r) for r in result)
    if smallest < size:
        raise InvalidParameter(
            f"KMeans found a cluster of {smallest} sample(s) (< min_size={size}); the data has too "
            f"few distinct points for {nodes} nodes; use fewer nodes or another partitioner"
        )
    return result


def _by_iid(X: np.ndarray, y: np.ndarray, n_nodes: int, seed: int | None) -> list[np.ndarray]:
    return iid(len(y), n_nodes, seed)


def _by_dirichlet(X: np.ndarray, y: np.ndarray, n_nodes: int, seed: int | None, **kw: Any) -> list[np.ndarray]:
    if "alpha" not in kw:
        raise InvalidParameter("the dirichlet partitioner needs alpha (e.g. alpha=0.5)")
    return dirichlet(y, n_nodes, seed=seed, **kw)


def _by_kmeans(X: np.ndarray, y: np.ndarray, n_nodes: int, seed: int | None, **kw: Any) -> list[np.ndarray]:
    return kmeans_clusters(X, n_nodes, seed, **kw)


_DISPATCH: dict[str, tuple[Callable[..., list[np.ndarray]], tuple[str, ...]]] = {
    "iid": (_by_iid, ()),
    "dirichlet": (_by_dirichlet, ("alpha", "min_size", "max_tries")),
    "kmeans": (_by_kmeans, ("min_size",)),
}

#: Names ``partition`` accepts.
PARTITIONERS: tuple[str, ...] = tuple(_DISPATCH)


def partition(name: str, X: np.ndarray, y: np.ndarray, n_nodes: int, seed: int | None, **options: Any) -> list[np.ndarray]:
    """Split ``(X, y)``'s indices with the named partitioner (see :data:`PARTITIONERS`)."""
    if name not in _DISPATCH:
        raise InvalidParameter(f"unknown partitioner {name!r}; valid partitioners are {list(PARTITIONERS)}")
    func, allowed = _DISPATCH[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidParameter(f"unknown option(s) {unknown} for partitioner {name!r}; valid options are {list(allowed)}")
    X_arr, y_arr = np.asarray(X), np.asarray(y)
    if X_arr.ndim != 2 or y_arr.ndim != 1 or X_arr.shape[0] != y_arr.shape[0]:
        raise InvalidParameter(f"X must be 2-D and y 1-D with as many rows; got {X_arr.shape} and {y_arr.shape}")
    return func(X_arr, y_arr, n_nodes, seed, **options)
