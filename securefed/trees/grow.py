"""Level-wise growth of a batch of trees from summed histograms (shared by forests and boosting).

Theory of operation. All trees of a batch (every tree of a forest, or the K
trees of one boosting round) grow together, one depth level at a time. The
*frontier* is the list of open (tree, node) entries at the current depth; the
coordinator asks for their histograms, and from the sum alone it learns each
entry's channel totals, chooses its split (:mod:`securefed.trees.split`),
and creates the two children with the totals the split implies. A child that
cannot be split further (too deep, too few rows, pure) is closed at once as a
leaf; the others form the next level's frontier. A node's totals are thus
known before its histogram arrives (except the roots'), which makes a cheap
integrity check: every feature of a returned histogram must sum to exactly
those totals, or the sum is refused.

A frontier normally travels in one request; only when its vector would exceed
``max_vector_length`` is it cut into consecutive chunks, one secure
aggregation each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from securefed.errors import RemoteProtocolError
from securefed.trees.histograms import Layout
from securefed.trees.split import SplitChoice

__all__ = ["Criterion", "FinishedTree", "GrowingTree", "LevelGrower"]


class Criterion(Protocol):
    channels: int
    value_size: int

    def check_totals(self, totals: np.ndarray) -> None: ...
    def best_splits(self, hist: np.ndarray) -> SplitChoice: ...
    def splittable(self, stats: np.ndarray, depth: int) -> bool: ...
    def leaf_value(self, stats: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FinishedTree:
    """A grown tree: the routing arrays of :mod:`securefed.trees.structure` and a value row per node."""

    feature: np.ndarray
    bin: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    def to_json(self) -> dict:
        return {
            "feature": self.feature.tolist(),
            "bin": self.bin.tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "value": self.value.tolist(),
        }


class GrowingTree:
    """A tree under construction; node ids are assigned in creation (breadth-first) order."""

    def __init__(self) -> None:
        self.feature: list[int] = [-1]
        self.bin: list[int] = [-1]
        self.left: list[int] = [-1]
        self.right: list[int] = [-1]
        self.depth: list[int] = [0]
        self.stats: list[np.ndarray | None] = [None]

    def add(self, depth: int, stats: np.ndarray) -> int:
        for column, value in ((self.feature, -1), (self.bin, -1), (self.left, -1), (self.right, -1)):
            column.append(value)
        self.depth.append(depth)
        self.stats.append(stats)
        return len(self.feature) - 1

    def routing(self) -> dict[str, list[int]]:
        """The JSON form a request carries: enough to route rows, nothing about values."""
        return {"feature": list(self.feature), "bin": list(self.bin), "left": list(self.left), "right": list(self.right)}

    def finish(self, criterion: Criterion) -> FinishedTree:
        values = [criterion.leaf_value(s) if s is not None else np.zeros(criterion.value_size) for s in self.stats]
        as_int = lambda column: np.asarray(column, dtype=np.int64)  # noqa: E731
        return FinishedTree(
            as_int(self.feature), as_int(self.bin), as_int(self.left), as_int(self.right), np.asarray(values, dtype=np.float64)
        )


class LevelGrower:
    """The frontier bookkeeping of one batch of trees; the caller turns chunks into requests."""

    def __init__(
        self,
        n_trees: int,
        criterion: Criterion,
        features_for: Callable[[int, int], tuple[int, ...]],
        features_per_entry: int,
        n_bins: int,
        max_vector_length: int,
    ) -> None:
        self.trees = [GrowingTree() for _ in range(n_trees)]
        self.criterion = criterion
        self.level = 0
        self._features_for = features_for
        self._slots = features_per_entry
        self._n_bins = n_bins
        self._cap = max(1, max_vector_length // (features_per_entry * n_bins * criterion.channels))
        self._queue: list[tuple[int, int]] = [(t, 0) for t in range(n_trees)]
        self._next: list[tuple[int, int]] = []

    @property
    def done(self) -> bool:
        return not self._queue

    def chunk(self) -> list[tuple[int, int]]:
        """The (tree, node) entries of the next request."""
        return self._queue[: self._cap]

    def features(self, chunk: list[tuple[int, int]]) -> list[tuple[int, ...]]:
        return [self._features_for(t, node) for t, node in chunk]

    def layout(self, chunk: list[tuple[int, int]]) -> Layout:
        return Layout(len(chunk), self._slots, self._n_bins, self.criterion.channels)

    def apply(self, hist: np.ndarray) -> None:
        """Take the decoded histograms of :meth:`chunk` (entries x features x bins x channels)."""
        chunk = self.chunk()
        features = self.features(chunk)
        per_feature = hist.sum(axis=2)
        if np.any(per_feature != per_feature[:, :1]):
            raise RemoteProtocolError(
                "the features of a summed histogram disagree on the node's totals", reason="inconsistent-histogram"
            )
        totals = per_feature[:, 0]
        self.criterion.check_totals(totals)
        choice = self.criterion.best_splits(hist)
        for e, (t, node) in enumerate(chunk):
            tree = self.trees[t]
            known = tree.stats[node]
            if known is None:
                tree.stats[node] = totals[e].copy()
                if not self.criterion.splittable(totals[e], tree.depth[node]):
                    continue
            elif not np.array_equal(known, totals[e]):
                raise RemoteProtocolError(
                    "a summed histogram disagrees with its node's totals from the parent split", reason="inconsistent-histogram"
                )
            slot = int(choice.slot[e])
            if slot < 0:
                continue
            tree.feature[node] = features[e][slot]
            tree.bin[node] = int(choice.bin[e])
            depth = tree.depth[node] + 1
            children = []
            for stats in (choice.left[e].copy(), choice.right[e].copy()):
                child = tree.add(depth, stats)
                children.append(child)
                if self.criterion.splittable(stats, depth):
                    self._next.append((t, child))
            tree.left[node], tree.right[node] = children
        self._queue = self._queue[len(chunk) :]
        if not self._queue:
            self._queue, self._next = self._next, []
            self.level += 1

    def finish(self) -> list[FinishedTree]:
        return [tree.finish(self.criterion) for tree in self.trees]
