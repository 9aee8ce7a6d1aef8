"""Random forests from secure histograms: parameters, the coordinator's builder and the node's worker.

Theory of operation. All trees of the forest grow together, level by level;
per level each node sends one vector holding, for every open (tree, node)
entry, the bootstrap-weighted class counts per (feature, bin) of its rows in
that node (:func:`~securefed.trees.histograms.class_count_histogram`), and
the coordinator splits every entry from the sum. A forest of depth D costs
at most D secure aggregations, whatever its number of trees.

Randomness, as in Breiman's forests:
- *feature subsets*: each tree node considers ``max_features`` features (as
  scikit-learn does, per split). They are public and derived, not drawn: a
  SHA-256 of (task seed, tree, node) seeds the choice, so the coordinator and
  every node compute the same subset, and a node checks the request's.
- *bootstrap*: each node weights each of its rows, per tree, by a Poisson(1)
  count, capped at ``max_weight`` (P(Poisson(1) > 8) is about 1e-6). The sum
  of independent per-site Poisson(1) weights is a Poisson bootstrap of the
  pooled data, close to drawing n rows with replacement. Nodes draw them
  locally and never reveal them; in production from an OS-seeded generator.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from securefed.errors import InvalidParameter
from securefed.trees._checks import check_bool, check_choice, check_int, is_int
from securefed.trees.binning import BinnedParams, Bins
from securefed.trees.driver import Driver, State
from securefed.trees.grow import LevelGrower
from securefed.trees.histograms import check_no_wrap, class_count_histogram, class_indices, coded_rows, decode_sum, to_uint32
from securefed.trees.model import TreeEnsemble
from securefed.trees.request import FOREST_LEVEL, HistogramRequest, check_request_tree, entry_of_row, frontier_lookup
from securefed.trees.split import CRITERIA, ClassCriterion

__all__ = ["ForestBuilder", "ForestParams", "ForestWorker", "feature_subset"]

_MAX_SEED = (1 << 63) - 1


@dataclass(frozen=True)
class ForestParams(BinnedParams):
    """A federated random forest's parameters: public, agreed by every site, carried in every request.

    ``max_features`` is a count or "sqrt" / "log2" / "all" (of the task's
    features, per split). ``min_samples_split`` and ``min_samples_leaf`` count
    bootstrap-weighted rows. ``max_nodes`` x ``max_rows_per_node`` x
    ``max_weight`` must stay below 2^31 (the wrap bound); a node with more rows
    than ``max_rows_per_node`` refuses to take part.
    """

    _JSON_NAME = "forest params"  # what from_json says it read

    bins: Bins
    n_classes: int
    n_trees: int = 100
    max_depth: int = 6
    max_features: int | str = "sqrt"
    criterion: str = "gini"
    bootstrap: bool = True
    min_samples_split: int = 2
    min_samples_leaf: int = 1
    seed: int = 0
    max_rows_per_node: int = 100_000
    max_nodes: int = 100
    max_weight: int = 8
    max_vector_length: int = 1 << 22

    def __post_init__(self) -> None:
        if not isinstance(self.bins, Bins):
            raise InvalidParameter("bins must be a Bins")
        check_int("n_classes", self.n_classes, 2, 1 << 16)
        check_int("n_trees", self.n_trees, 1, 100_000)
        check_int("max_depth", self.max_depth, 1, 32)
        if not (is_int(self.max_features) or self.max_features in ("sqrt", "log2", "all")):
            raise InvalidParameter(f"max_features must be a count or one of sqrt, log2, all; got {self.max_features!r}")
        if is_int(self.max_features):
            check_int("max_features", self.max_features, 1, self.bins.n_features)
        check_choice("criterion", self.criterion, CRITERIA)
        check_bool("bootstrap", self.bootstrap)
        check_int("min_samples_split", self.min_samples_split, 2)
        check_int("min_samples_leaf", self.min_samples_leaf, 1)
        check_int("seed", self.seed, 0, _MAX_SEED)
        check_int("max_rows_per_node", self.max_rows_per_node, 1)
        check_int("max_nodes", self.max_nodes, 1)
        check_int("max_weight", self.max_weight, 1, 255)
        check_int("max_vector_length", self.max_vector_length, 1)
        check_no_wrap(self.max_weight if self.bootstrap else 1, self.max_nodes * self.max_rows_per_node, "forest class counts")
        per_entry = self.features_per_split * self.bins.n_bins * self.n_classes
        if per_entry > self.max_vector_length:
            raise InvalidParameter(
                f"one tree node's histogram has {per_entry} entries, more than max_vector_length {self.max_vector_length}; use fewer bins or features per split"
            )

    @property
    def features_per_split(self) -> int:
        n = self.bins.n_features
        if self.max_features == "sqrt":
            return max(1, math.isqrt(n))
        if self.max_features == "log2":
            return max(1, int(math.log2(n)))
        if self.max_features == "all":
            return n
        return int(self.max_features)

    def describe(self) -> str:
        weight = self.max_weight if self.bootstrap else 1
        return (
            f"random forest: {self.n_trees} trees, depth <= {self.max_depth}, {self.features_per_split} of "
            f"{self.bins.n_features} features per split, {self.criterion}, {self.bins.n_bins} bins, "
            f"{'Poisson bootstrap (weights <= ' + str(self.max_weight) + ')' if self.bootstrap else 'no bootstrap'}; "
            f"counts <= {self.max_nodes} nodes x {self.max_rows_per_node} rows x {weight} < 2^31"
        )


def feature_subset(seed: int, tree: int, node: int, n_features: int, k: int) -> tuple[int, ...]:
    """The public, derived features tree node ``node`` of tree ``tree`` considers (sorted)."""
    if k >= n_features:
        return tuple(range(n_features))
    digest = hashlib.sha256(
        b"securefed.trees.forest.features\x00" + seed.to_bytes(8, "big") + tree.to_bytes(8, "big") + node.to_bytes(8, "big")
    ).digest()
    generator = np.random.Generator(np.random.PCG64(int.from_bytes(digest, "big")))
    return tuple(sorted(int(f) for f in generator.choice(n_features, size=k, replace=False)))


def _criterion(params: ForestParams) -> ClassCriterion:
    return ClassCriterion(params.n_classes, params.criterion, params.min_samples_split, params.min_samples_leaf, params.max_depth)


class ForestBuilder(Driver):
    """The coordinator's side: asks for one frontier at a time and grows every tree from the sums."""

    def __init__(self, params: ForestParams) -> None:
        super().__init__(State.AWAIT_HISTOGRAM)
        self.params = params
        self._params_json = params.to_json()
        bins = params.bins
        self._grower = LevelGrower(
            params.n_trees,
            _criterion(params),
            lambda t, node: feature_subset(params.seed, t, node, bins.n_features, params.features_per_split),
            params.features_per_split,
            bins.n_bins,
            params.max_vector_length,
        )

    @property
    def level(self) -> int:
        return self._grower.level

    def _make_request(self) -> HistogramRequest:
        chunk = self._grower.chunk()
        return HistogramRequest(
            computation=FOREST_LEVEL,
            params=self._params_json,
            level=self._grower.level,
            trees=tuple(tree.routing() for tree in self._grower.trees),
            frontier=tuple(chunk),
            features=tuple(self._grower.features(chunk)),
        )

    def _take(self, summed: np.ndarray) -> TreeEnsemble | None:
        layout = self._grower.layout(self._grower.chunk())
        self._grower.apply(decode_sum(summed, layout))
        if not self._grower.done:
            return None
        return TreeEnsemble.from_trees("random_forest", "", self.params.n_classes, self.params.bins, self._grower.finish())


class ForestWorker:
    """A node's side: its coded data, labels and secret bootstrap weights; answers checked requests.

    ``labels`` are class indices 0..n_classes-1. ``rng`` draws the Poisson
    weights (None: numpy's OS-seeded generator); ``bootstrap_weights`` (trees x
    rows) overrides them, for simulations that must reproduce a pooled run.
    """

    def __init__(
        self,
        params: ForestParams,
        X: np.ndarray,
        labels: np.ndarray,
        *,
        rng: np.random.Generator | None = None,
        bootstrap_weights: np.ndarray | None = None,
    ) -> None:
        self.params = params
        self._params_json = params.to_json()
        self._codes = coded_rows(params.bins, X, params.max_rows_per_node)
        n = self._codes.shape[0]
        self._labels = class_indices(labels, n, params.n_classes)
        self._weights: np.ndarray | None = None
        if params.bootstrap:
            if bootstrap_weights is None:
                generator = rng if rng is not None else np.random.default_rng()
                bootstrap_weights = generator.poisson(1.0, size=(params.n_trees, n))
            weights = np.asarray(bootstrap_weights)
            if weights.shape != (params.n_trees, n) or weights.dtype.kind not in "iu" or (weights.size and (weights.min() < 0)):
                raise InvalidParameter(f"bootstrap weights must be non-negative integers, trees x rows = {(params.n_trees, n)}")
            self._weights = np.minimum(weights, params.max_weight).astype(np.uint8)
        elif bootstrap_weights is not None:
            raise InvalidParameter("bootstrap weights given but the forest does not bootstrap")

    @property
    def n_rows(self) -> int:
        return int(self._codes.shape[0])

    def compute(self, request: HistogramRequest | dict) -> np.ndarray:
        """Check the request against the agreed parameters and return this node's uint32 vector."""
        req = HistogramRequest.coerce(request)
        params = self.params
        if req.computation != FOREST_LEVEL:
            raise InvalidParameter(f"this node computes {FOREST_LEVEL} for this task, not {req.computation}")
        if req.params != self._params_json:
            raise InvalidParameter("the request's forest parameters differ from those this node agreed to (params-mismatch)")
        if len(req.trees) != params.n_trees:
            raise InvalidParameter(f"a forest request must carry all {params.n_trees} trees")
        if req.level >= params.max_depth:
            raise InvalidParameter(f"level {req.level} is at or beyond max_depth {params.max_depth}")
        bins = params.bins
        trees = [check_request_tree(raw, bins.n_features, bins.n_bins, params.max_depth) for raw in req.trees]
        lookup = frontier_lookup(req, trees)
        for (t, node), chosen in zip(req.frontier, req.features):
            if chosen != feature_subset(params.seed, t, node, bins.n_features, params.features_per_split):
                raise InvalidParameter(f"frontier entry ({t}, {node}) asks for features other than the task's seed derives")
        layout = req.layout(bins.n_bins, params.n_classes)
        if layout.length > params.max_vector_length:
            raise InvalidParameter(
                f"the request asks for {layout.length} entries, more than max_vector_length {params.max_vector_length}"
            )
        features = np.asarray(req.features, dtype=np.int64).reshape(layout.entries, layout.features)
        rows_entry = entry_of_row(self._codes, trees, lookup)
        vector = class_count_histogram(
            self._codes, features, bins.n_bins, params.n_classes, rows_entry, self._labels, self._weights
        )
        return to_uint32(vector)
