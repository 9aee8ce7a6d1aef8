"""Small datasets that ship inside scikit-learn, for the demo and tests (no download).

Demo preprocessing: features are scaled to [0, 1] with the *whole* dataset's
min and max per feature (for digits, the known pixel range 0..16). A real
federation would agree a scaling in its task definition, from domain ranges
rather than from pooled data; using global statistics here is a convenience
of the demo, and it touches the held-out split too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
from sklearn.model_selection import train_test_split

from securefed.errors import InvalidParameter
from securefed.learning.models import _check_real, _check_seed

__all__ = [
    "BUNDLED_DATASETS",
    "BundledDataset",
    "Split",
    "load_bundled",
    "train_test_split_stratified",
]


@dataclass(frozen=True)
class BundledDataset:
    """Features in [0, 1] (float64, 2-D), int64 labels, and what they are."""

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    classes: tuple[int, ...]
    description: str

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


class Split(NamedTuple):
    """A train/test split, in scikit-learn's ``train_test_split`` order."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


_LOADERS: dict[str, tuple[Callable[..., Any], float | None, str]] = {
    # name: (loader, known maximum or None for per-feature min-max, description)
    "digits": (
        load_digits,
        16.0,
        "8x8 images of handwritten digits (1797 samples, 64 features, 10 classes); "
        "pixel counts 0..16 divided by 16",
    ),
    "iris": (
        load_iris,
        None,
        "Fisher's iris flowers (150 samples, 4 features, 3 classes); per-feature min-max scaled",
    ),
    "wine": (
        load_wine,
        None,
        "wine chemical analysis (178 samples, 13 features, 3 classes); per-feature min-max scaled",
    ),
    "breast_cancer": (
        load_breast_cancer,
        None,
        "Wisconsin diagnostic breast cancer (569 samples, 30 features, 2 classes); "
        "per-feature min-max scaled",
    ),
}

#: Names ``load_bundled`` accepts.
BUNDLED_DATASETS: tuple[str, ...] = tuple(_LOADERS)


def _min_max(X: np.ndarray) -> np.ndarray:
    low = X.min(axis=0)
    span = X.max(axis=0) - low
    span[span == 0] = 1.0  # constant features map to 0
    return (X - low) / span


def load_bundled(name: str) -> BundledDataset:
    """Load one of :data:`BUNDLED_DATASETS`, features scaled to [0, 1] (demo preprocessing)."""
    if name not in _LOADERS:
        raise InvalidParameter(f"unknown dataset {name!r}; bundled datasets are {list(BUNDLED_DATASETS)}")
    loader, known_max, description = _LOADERS[name]
    bunch = loader()
    raw = np.asarray(bunch.data, dtype=np.float64)
    X = raw / known_max if known_max is not None else _min_max(raw)
    X = np.clip(X, 0.0, 1.0)
    y = np.asarray(bunch.target, dtype=np.int64)
    return BundledDataset(
        X=np.ascontiguousarray(X),
        y=y,
        feature_names=tuple(str(n) for n in bunch.feature_names),
        classes=tuple(int(c) for c in np.unique(y)),
        description=f"{name}: {description}",
    )


def train_test_split_stratified(
    X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int | None
) -> Split:
    """Hold out ``test_fraction`` of the samples, keeping class proportions (deterministic per seed)."""
    fraction = _check_real("test_fraction", test_fraction, low=0.0)
    if fraction >= 1.0:
        raise InvalidParameter(f"test_fraction must be in (0, 1), got {fraction}")
    X_arr, y_arr = np.asarray(X), np.asarray(y)
    if X_arr.ndim != 2 or y_arr.ndim != 1 or X_arr.shape[0] != y_arr.shape[0]:
        raise InvalidParameter(
            f"X must be 2-D and y 1-D with as many rows; got {X_arr.shape} and {y_arr.shape}"
        )
    try:
        parts = train_test_split(
            X_arr, y_arr, test_size=fraction, random_state=_check_seed(seed), stratify=y_arr
        )
    except ValueError as exc:  # e.g. a class with a single member, or a too-small test set
        raise InvalidParameter(f"cannot make a stratified split: {exc}") from exc
    return Split(*parts)
