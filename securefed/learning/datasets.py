"""Small datasets that ship inside scikit-learn, for the demo and tests (no download).

Demo preprocessing: features are scaled to [0, 1] with *public* per-feature
bounds, declared as the task's min-max :class:`~securefed.learning.data.Preprocessing`
(see :func:`bundled_preprocessing`), never with statistics pooled from the
sites' data: for digits the pixel range 0..16; for iris, wine and
breast_cancer the per-feature Min/Max table printed in scikit-learn's own
description of the dataset (``bunch.DESCR``). Those tables are the published
ranges of the whole dataset, rounded; a few values fall just outside them and
are clipped. A real federation declares bounds from domain knowledge (valid
ranges of a lab value, a sensor's range) in the same way.

``diabetes`` (:data:`REGRESSION_DATASETS`) is the one regression set: its raw
features (age in years, sex 1/2, BMI, mean arterial pressure, six serum
values) have no published range table, so :data:`PUBLIC_BOUNDS` holds their
ranges rounded outwards to clinically plausible limits, and
:data:`TARGET_BOUNDS` the target's range (disease progression, whole numbers
25..346). A task over it declares a numeric target (``target = "numeric"``);
:func:`load_bundled` still lists ``classes = range(25, 347)`` for callers that
need a label set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.model_selection import train_test_split

from securefed.errors import InvalidParameter
from securefed.learning.models import _check_real, _check_seed
from securefed.preprocessing import Preprocessing

__all__ = [
    "BUNDLED_DATASETS",
    "PUBLIC_BOUNDS",
    "REGRESSION_DATASETS",
    "TARGET_BOUNDS",
    "BundledDataset",
    "Split",
    "bundled_preprocessing",
    "load_bundled",
    "train_test_split_stratified",
]


@dataclass(frozen=True)
class BundledDataset:
    """Features (float64, 2-D; in [0, 1] unless loaded raw), int64 labels, and what they are."""

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


_LOADERS: dict[str, tuple[Callable[..., Any], str]] = {
    "digits": (
        load_digits,
        "8x8 images of handwritten digits (1797 samples, 64 features, 10 classes); "
        "pixel counts 0..16 scaled by their known range",
    ),
    "iris": (
        load_iris,
        "Fisher's iris flowers (150 samples, 4 features, 3 classes); min-max scaled by the documented ranges",
    ),
    "wine": (
        load_wine,
        "wine chemical analysis (178 samples, 13 features, 3 classes); min-max scaled by the documented ranges",
    ),
    "breast_cancer": (
        load_breast_cancer,
        "Wisconsin diagnostic breast cancer (569 samples, 30 features, 2 classes); min-max scaled by the documented ranges",
    ),
    "diabetes": (
        lambda: load_diabetes(scaled=False),
        "diabetes progression (442 samples, 10 features, regression target 25..346); min-max scaled by public clinical ranges",
    ),
}

#: Public per-feature (min, max) of each bundled dataset, in scikit-learn's feature order: digits'
#: pixel range, and otherwise the "Summary Statistics" Min/Max table of the dataset's DESCR.
PUBLIC_BOUNDS: dict[str, tuple[float | tuple[float, ...], float | tuple[float, ...]]] = {
    "digits": (0.0, 16.0),
    "iris": ((4.3, 2.0, 1.0, 0.1), (7.9, 4.4, 6.9, 2.5)),
    "wine": (
        (11.0, 0.74, 1.36, 10.6, 70.0, 0.98, 0.34, 0.13, 0.41, 1.3, 0.48, 1.27, 278.0),
        (14.8, 5.80, 3.23, 30.0, 162.0, 3.88, 5.08, 0.66, 3.58, 13.0, 1.71, 4.00, 1680.0),
    ),
    "breast_cancer": (
        (6.981, 9.71, 43.79, 143.5, 0.053, 0.019, 0.0, 0.0, 0.106, 0.05,
         0.112, 0.36, 0.757, 6.802, 0.002, 0.002, 0.0, 0.0, 0.008, 0.001,
         7.93, 12.02, 50.41, 185.2, 0.071, 0.027, 0.0, 0.0, 0.156, 0.055),
        (28.11, 39.28, 188.5, 2501.0, 0.163, 0.345, 0.427, 0.201, 0.304, 0.097,
         2.873, 4.885, 21.98, 542.2, 0.031, 0.135, 0.396, 0.053, 0.079, 0.03,
         36.04, 49.54, 251.2, 4254.0, 0.223, 1.058, 1.252, 0.291, 0.664, 0.208),
    ),
    # age, sex, bmi, bp, s1 (total cholesterol), s2 (LDL), s3 (HDL), s4 (TC/HDL), s5 (log triglycerides), s6 (glucose)
    "diabetes": (
        (18.0, 1.0, 15.0, 60.0, 90.0, 40.0, 20.0, 2.0, 3.0, 55.0),
        (80.0, 2.0, 45.0, 135.0, 310.0, 250.0, 100.0, 10.0, 6.5, 125.0),
    ),
}  # fmt: skip

#: The public range of each regression dataset's target (whole numbers for diabetes).
TARGET_BOUNDS: dict[str, tuple[int, int]] = {"diabetes": (25, 346)}

#: The classification datasets ``load_bundled`` accepts.
BUNDLED_DATASETS: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer")
#: The regression datasets ``load_bundled`` accepts (targets as whole numbers, see the module docstring).
REGRESSION_DATASETS: tuple[str, ...] = ("diabetes",)
_FEATURES = {"digits": 64, "iris": 4, "wine": 13, "breast_cancer": 30, "diabetes": 10}


def _check_name(name: str) -> None:
    if name not in _LOADERS:
        raise InvalidParameter(
            f"unknown dataset {name!r}; bundled datasets are {list(BUNDLED_DATASETS)} "
            f"and, for regression, {list(REGRESSION_DATASETS)}"
        )


def bundled_preprocessing(name: str) -> Preprocessing:
    """The min-max preprocessing (public bounds, clipped) a task over this bundled dataset declares."""
    _check_name(name)
    low, high = PUBLIC_BOUNDS[name]
    made = Preprocessing.from_mapping({"scaler": "minmax", "min": low, "max": high, "clip": True}, _FEATURES[name])
    if made is None:  # pragma: no cover - a minmax table never gives None
        raise InvalidParameter(f"no preprocessing for {name}")
    return made


def load_bundled(name: str, scaled: bool = True) -> BundledDataset:
    """Load one of :data:`BUNDLED_DATASETS`.

    With ``scaled`` (the default) the features are scaled to [0, 1] by
    :func:`bundled_preprocessing` (public bounds, no pooled statistics);
    ``scaled=False`` gives the raw features, as a site's CSV would hold them.
    For a regression dataset ``y`` is the whole-number target and ``classes``
    every whole number of :data:`TARGET_BOUNDS` (what a task over it declares).
    """
    _check_name(name)
    loader, description = _LOADERS[name]
    bunch = loader()
    X = np.asarray(bunch.data, dtype=np.float64)
    if scaled:
        X = bundled_preprocessing(name).transform(X)
    else:
        description = description.split(";")[0] + "; raw features"
    target = np.asarray(bunch.target)
    y = target.astype(np.int64)
    if not np.array_equal(y, target):  # pragma: no cover - scikit-learn's bundled targets are whole numbers
        raise InvalidParameter(f"{name}: the target is not whole numbers; node data files carry integer labels")
    if name in TARGET_BOUNDS:
        low_y, high_y = TARGET_BOUNDS[name]
        classes = tuple(range(low_y, high_y + 1))
    else:
        classes = tuple(int(c) for c in np.unique(y))
    return BundledDataset(
        X=np.ascontiguousarray(X),
        y=y,
        feature_names=tuple(str(n) for n in bunch.feature_names),
        classes=classes,
        description=f"{name}: {description}",
    )


def train_test_split_stratified(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int | None) -> Split:
    """Hold out ``test_fraction`` of the samples, keeping class proportions (deterministic per seed)."""
    fraction = _check_real("test_fraction", test_fraction, low=0.0)
    if fraction >= 1.0:
        raise InvalidParameter(f"test_fraction must be in (0, 1), got {fraction}")
    X_arr, y_arr = np.asarray(X), np.asarray(y)
    if X_arr.ndim != 2 or y_arr.ndim != 1 or X_arr.shape[0] != y_arr.shape[0]:
        raise InvalidParameter(f"X must be 2-D and y 1-D with as many rows; got {X_arr.shape} and {y_arr.shape}")
    try:
        parts = train_test_split(X_arr, y_arr, test_size=fraction, random_state=_check_seed(seed), stratify=y_arr)
    except ValueError as exc:  # e.g. a class with a single member, or a too-small test set
        raise InvalidParameter(f"cannot make a stratified split: {exc}") from exc
    return Split(*parts)
