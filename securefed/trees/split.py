"""Coordinator side: the best split of every frontier entry, and leaf values, from summed histograms only.

Theory of operation. For an entry's histogram (features x bins x channels,
integers) the statistics of "code <= b" are the cumulative sums over bins,
those of the other side the node's totals minus them, so every candidate
split (feature, b) is scored at once. Forests score class counts by the
decrease of weighted Gini impurity (or entropy), as CART does; boosting
scores (gradient, hessian) sums by XGBoost's gain

    1/2 [ G_L^2 / (H_L + lambda) + G_R^2 / (H_R + lambda) - G^2 / (H + lambda) ] - gamma

with ``min_child_weight`` on each side's hessian sum. Candidates leaving a
side with fewer than ``min_samples_leaf`` rows are discarded (bootstrap-
weighted for forests). A split is taken only if it gains more than rounding
noise (relative 1e-10).

Ties break deterministically: the lowest feature, then the lowest bin (the
first maximum in feature-major order, features sorted ascending). The scores
are computed from the same integers in the same order whether the histogram
came from one site or was summed from many, so the federated choice equals
the pooled one split for split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from securefed.errors import InvalidParameter
from securefed.trees.histograms import require_non_negative

__all__ = ["CRITERIA", "ClassCriterion", "GradientCriterion", "SplitChoice"]

#: Forest impurity criteria.
CRITERIA = ("gini", "entropy")
_RELATIVE_TOLERANCE = 1e-10


@dataclass(frozen=True)
class SplitChoice:
    """Per entry: the chosen feature slot (-1: no split), bin, gain, and the two children's channel totals."""

    slot: np.ndarray
    bin: np.ndarray
    gain: np.ndarray
    left: np.ndarray
    right: np.ndarray


def _prefix(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Totals (entries x channels), and left/right sums per candidate (entries x features x bins-1 x channels)."""
    left = np.cumsum(hist, axis=2)[:, :, :-1, :]
    total = hist[:, 0].sum(axis=1)
    right = total[:, None, None, :] - left
    return total, left, right


def _choose(gain: np.ndarray, valid: np.ndarray, tolerance: np.ndarray, left: np.ndarray, right: np.ndarray) -> SplitChoice:
    entries, _, candidates = gain.shape
    scored = np.where(valid, gain, -np.inf).reshape(entries, -1)
    best = np.argmax(scored, axis=1)  # first maximum: lowest feature slot, then lowest bin
    best_gain = scored[np.arange(entries), best]
    slot, bin_ = np.divmod(best, candidates)
    chosen = np.isfinite(best_gain) & (best_gain > tolerance)
    index = (np.arange(entries), slot, bin_)
    return SplitChoice(
        slot=np.where(chosen, slot, -1),
        bin=np.where(chosen, bin_, -1),
        gain=np.where(chosen, best_gain, 0.0),
        left=left[index],
        right=right[index],
    )


class ClassCriterion:
    """Random-forest splits on (bootstrap-weighted) class counts: Gini or entropy impurity decrease."""

    def __init__(self, n_classes: int, criterion: str, min_samples_split: int, min_samples_leaf: int, max_depth: int) -> None:
        if criterion not in CRITERIA:
            raise InvalidParameter(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
        self.channels = n_classes
        self.value_size = n_classes
        self.criterion = criterion
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = max(1, min_samples_leaf)
        self.max_depth = max_depth

    def check_totals(self, totals: np.ndarray) -> None:
        require_non_negative(totals, "class count")

    def _impurity_sum(self, counts: np.ndarray) -> np.ndarray:
        """N times the node's impurity (Gini: N - sum c^2/N; entropy: N log N - sum c log c)."""
        c = counts.astype(np.float64)
        n = c.sum(axis=-1)
        if self.criterion == "gini":
            return n - (c * c).sum(axis=-1) / np.where(n > 0, n, 1.0)  # an empty node (all zeros) gives 0
        return _xlogx(n) - _xlogx(c).sum(axis=-1)

    def best_splits(self, hist: np.ndarray) -> SplitChoice:
        total, left, right = _prefix(hist)
        n_left, n_right = left.sum(axis=-1), right.sum(axis=-1)
        parent = self._impurity_sum(total)
        gain = parent[:, None, None] - self._impurity_sum(left) - self._impurity_sum(right)
        valid = (n_left >= self.min_samples_leaf) & (n_right >= self.min_samples_leaf)
        return _choose(gain, valid, _RELATIVE_TOLERANCE * np.maximum(parent, 1e-300), left, right)

    def splittable(self, stats: np.ndarray, depth: int) -> bool:
        n = int(stats.sum())
        return (
            depth < self.max_depth
            and n >= max(self.min_samples_split, 2 * self.min_samples_leaf)
            and int(np.count_nonzero(stats)) > 1
        )

    def leaf_value(self, stats: np.ndarray) -> np.ndarray:
        """The class distribution at the node (uniform if it received no rows)."""
        n = float(stats.sum())
        if n <= 0:
            return np.full(self.channels, 1.0 / self.channels)
        return stats.astype(np.float64) / n


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


class GradientCriterion:
    """Boosting splits on (gradient, hessian, count) sums: XGBoost's gain, Newton leaf values."""

    channels = 3
    value_size = 1

    def __init__(
        self,
        grad_bits: int,
        hess_bits: int,
        *,
        reg_lambda: float,
        gamma: float,
        min_child_weight: float,
        min_samples_leaf: int,
        learning_rate: float,
        max_depth: int,
    ) -> None:
        self.grad_scale = float(1 << grad_bits)
        self.hess_scale = float(1 << hess_bits)
        self.reg_lambda = reg_lambda
        self.gamma = gamma
        self.min_child_weight = min_child_weight
        self.min_samples_leaf = max(1, min_samples_leaf)
        self.learning_rate = learning_rate
        self.max_depth = max_depth

    def check_totals(self, totals: np.ndarray) -> None:
        require_non_negative(totals[..., 1:], "hessian or row count")

    def decode(self, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gradient sum, hessian sum (floats) and row count from the integer channels."""
        return stats[..., 0] / self.grad_scale, stats[..., 1] / self.hess_scale, stats[..., 2]

    def _score(self, g: np.ndarray, h: np.ndarray) -> np.ndarray:
        denominator = h + self.reg_lambda
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(denominator > 0, g * g / np.where(denominator > 0, denominator, 1.0), 0.0)

    def best_splits(self, hist: np.ndarray) -> SplitChoice:
        total, left, right = _prefix(hist)
        g, h, _ = self.decode(total)
        g_l, h_l, n_l = self.decode(left)
        g_r, h_r, n_r = self.decode(right)
        parent = self._score(g, h)
        gain = 0.5 * (self._score(g_l, h_l) + self._score(g_r, h_r) - parent[:, None, None]) - self.gamma
        valid = (
            (h_l >= self.min_child_weight)
            & (h_r >= self.min_child_weight)
            & (n_l >= self.min_samples_leaf)
            & (n_r >= self.min_samples_leaf)
        )
        return _choose(gain, valid, _RELATIVE_TOLERANCE * parent, left, right)

    def splittable(self, stats: np.ndarray, depth: int) -> bool:
        _, h, n = self.decode(stats)
        return depth < self.max_depth and int(n) >= 2 * self.min_samples_leaf and float(h) >= 2 * self.min_child_weight

    def leaf_value(self, stats: np.ndarray) -> np.ndarray:
        """The shrunk Newton step -learning_rate * G / (H + lambda) (0 when H + lambda is 0)."""
        g, h, _ = self.decode(stats)
        denominator = float(h) + self.reg_lambda
        step = -float(g) / denominator if denominator > 0 else 0.0
        return np.array([self.learning_rate * step])
