"""A finished tree model as plain arrays, with a numpy predictor and a pickle-free export form.

Theory of operation. Every tree of the ensemble is stored in one set of
concatenated arrays: ``tree_offsets`` (trees + 1) cuts ``feature``,
``threshold_bin``, ``left``, ``right`` (child indices local to the tree, -1
at leaves) and ``value`` (one row per node) into trees. A row goes left at a
node when its bin code of ``feature`` is <= ``threshold_bin``; the bins are
the task's declared equal-width bins (stored with the model), so prediction
from raw features digitizes them exactly as the sites did during training.

- random forest: ``value`` rows are class distributions; ``predict_proba`` is
  their mean over trees (as scikit-learn's forests do).
- gradient boosting: ``value`` is one leaf output per node; tree t adds it to
  output column ``tree_output[t]`` on top of ``base_score``; probabilities are
  the sigmoid (logistic) or softmax of the raw scores; squared error predicts
  the raw score itself.

:meth:`TreeEnsemble.to_arrays` gives only numeric arrays plus the metadata as
UTF-8 JSON bytes in a uint8 array, so the model can be written with
``np.savez`` and read back with ``allow_pickle=False``;
:meth:`TreeEnsemble.from_arrays` checks every array (keys, dtypes, shapes, and
that each tree is a tree over the declared features and bins) before use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from securefed.errors import InvalidParameter
from securefed.trees.binning import Bins
from securefed.trees.grow import FinishedTree
from securefed.trees.structure import check_tree, route

__all__ = ["KINDS", "LOSSES", "MODEL_FORMAT", "MODEL_VERSION", "TreeEnsemble"]

MODEL_FORMAT = "securefed-trees"
MODEL_VERSION = 1
KINDS = ("random_forest", "gbdt")
#: Boosting losses; a forest's loss is "" (it predicts class distributions).
LOSSES = ("logistic", "softmax", "squared_error")
_ARRAYS = {
    "bins_low": np.float64,
    "bins_high": np.float64,
    "tree_offsets": np.int64,
    "feature": np.int32,
    "threshold_bin": np.int32,
    "left": np.int32,
    "right": np.int32,
    "value": np.float64,
    "tree_output": np.int32,
    "base_score": np.float64,
}


def n_outputs(kind: str, loss: str, n_classes: int) -> int:
    """Raw-score columns of a boosting model (one tree per column per round)."""
    return n_classes if kind == "gbdt" and loss == "softmax" else 1


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A trained random forest or boosted ensemble; construct with :meth:`from_trees` or :meth:`from_arrays`."""

    kind: str
    loss: str
    n_classes: int
    bins: Bins
    tree_offsets: np.ndarray
    feature: np.ndarray
    threshold_bin: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    tree_output: np.ndarray
    base_score: np.ndarray
    # every tree's depth, found by _check_arrays (routing stops there)
    _depths: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.bins, Bins):
            raise InvalidParameter("model bins must be a Bins")
        if self.kind not in KINDS:
            raise InvalidParameter(f"model kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "random_forest":
            if self.loss != "":
                raise InvalidParameter("a random forest has no loss")
            if not isinstance(self.n_classes, int) or self.n_classes < 2:
                raise InvalidParameter("a random forest needs n_classes >= 2")
        else:
            if self.loss not in LOSSES:
                raise InvalidParameter(f"boosting loss must be one of {list(LOSSES)}, got {self.loss!r}")
            wanted = 0 if self.loss == "squared_error" else (2 if self.loss == "logistic" else None)
            if (
                not isinstance(self.n_classes, int)
                or (wanted is not None and self.n_classes != wanted)
                or (wanted is None and self.n_classes < 2)
            ):
                raise InvalidParameter(f"a {self.loss} model has the wrong n_classes {self.n_classes!r}")
        for name, dtype in _ARRAYS.items():
            if name.startswith("bins_"):
                continue
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != dtype:
                raise InvalidParameter(f"model array {name} must be {np.dtype(dtype).name}")
            frozen = array.copy()
            frozen.flags.writeable = False
            object.__setattr__(self, name, frozen)
        self._check_arrays()

    def _check_arrays(self) -> None:
        offsets = self.tree_offsets
        nodes = self.feature.shape[0] if self.feature.ndim == 1 else -1
        if offsets.ndim != 1 or offsets.shape[0] < 2 or offsets[0] != 0 or offsets[-1] != nodes or np.any(np.diff(offsets) < 1):
            raise InvalidParameter("tree_offsets must start at 0, rise strictly and end at the number of nodes")
        trees = offsets.shape[0] - 1
        width = self.n_classes if self.kind == "random_forest" else 1
        if self.value.shape != (nodes, width) or not np.all(np.isfinite(self.value)):
            raise InvalidParameter(f"model value must be finite, {nodes} x {width}")
        outputs = n_outputs(self.kind, self.loss, self.n_classes)
        if self.tree_output.shape != (trees,) or np.any(self.tree_output < 0) or np.any(self.tree_output >= outputs):
            raise InvalidParameter(f"tree_output must give one output column in 0..{outputs - 1} per tree")
        expected_base = (0,) if self.kind == "random_forest" else (outputs,)
        if self.base_score.shape != expected_base or not np.all(np.isfinite(self.base_score)):
            raise InvalidParameter(f"base_score must hold {expected_base[0]} finite value(s)")
        depths = []
        for t in range(trees):
            part = slice(int(offsets[t]), int(offsets[t + 1]))
            feature, bin_, left, right = (
                a[part].astype(np.int64) for a in (self.feature, self.threshold_bin, self.left, self.right)
            )
            depths.append(
                int(check_tree(feature, bin_, left, right, n_features=self.bins.n_features, n_bins=self.bins.n_bins).max())
            )
        object.__setattr__(self, "_depths", tuple(depths))

    @classmethod
    def from_trees(
        cls,
        kind: str,
        loss: str,
        n_classes: int,
        bins: Bins,
        trees: Sequence[FinishedTree],
        tree_output: Sequence[int] | None = None,
        base_score: Sequence[float] | np.ndarray = (),
    ) -> TreeEnsemble:
        sizes = [tree.feature.shape[0] for tree in trees]
        return cls(
            kind=kind,
            loss=loss,
            n_classes=n_classes,
            bins=bins,
            tree_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            feature=np.concatenate([t.feature for t in trees]).astype(np.int32),
            threshold_bin=np.concatenate([t.bin for t in trees]).astype(np.int32),
            left=np.concatenate([t.left for t in trees]).astype(np.int32),
            right=np.concatenate([t.right for t in trees]).astype(np.int32),
            value=np.concatenate([t.value for t in trees]).astype(np.float64),
            tree_output=np.asarray(tree_output if tree_output is not None else [0] * len(trees), dtype=np.int32),
            base_score=np.asarray(base_score, dtype=np.float64).reshape(-1),
        )

    @property
    def n_trees(self) -> int:
        return int(self.tree_offsets.shape[0] - 1)

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    def tree(self, t: int) -> FinishedTree:
        """Tree ``t``'s arrays (local child indices, int64)."""
        part = slice(int(self.tree_offsets[t]), int(self.tree_offsets[t + 1]))
        as_int = lambda a: a[part].astype(np.int64)  # noqa: E731
        return FinishedTree(
            as_int(self.feature), as_int(self.threshold_bin), as_int(self.left), as_int(self.right), self.value[part].copy()
        )

    def leaves(self, X: np.ndarray) -> np.ndarray:
        """The leaf (local node index) every row reaches in every tree: trees x rows."""
        codes = self.bins.digitize(X)
        out = np.empty((self.n_trees, codes.shape[0]), dtype=np.int64)
        for t in range(self.n_trees):
            tree = self.tree(t)
            out[t] = route(codes, tree.feature, tree.bin, tree.left, tree.right, self._depths[t])
        return out

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """Boosting: base score plus every tree's leaf output, rows x outputs."""
        if self.kind != "gbdt":
            raise InvalidParameter("raw scores belong to boosting models; use predict_proba for a forest")
        leaves = self.leaves(X)
        raw = np.tile(self.base_score, (leaves.shape[1], 1))
        for t in range(self.n_trees):
            raw[:, self.tree_output[t]] += self.value[self.tree_offsets[t] + leaves[t], 0]
        return raw

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, rows x classes."""
        if self.kind == "random_forest":
            leaves = self.leaves(X)
            total = np.zeros((leaves.shape[1], self.n_classes))
            for t in range(self.n_trees):
                total += self.value[self.tree_offsets[t] + leaves[t]]
            return total / self.n_trees
        if self.loss == "squared_error":
            raise InvalidParameter("a squared-error (regression) model has no class probabilities; use predict")
        raw = self.predict_raw(X)
        if self.loss == "logistic":
            p = _sigmoid(raw[:, 0])
            return np.column_stack([1.0 - p, p])
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices (int64) for classifiers, the predicted value (float64) for regression."""
        if self.kind == "gbdt" and self.loss == "squared_error":
            return self.predict_raw(X)[:, 0]
        return np.argmax(self.predict_proba(X), axis=1).astype(np.int64)

    def metadata(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "kind": self.kind,
            "loss": self.loss,
            "n_classes": self.n_classes,
            "n_bins": self.bins.n_bins,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Numeric arrays only (metadata as UTF-8 JSON in uint8 ``meta``): safe for ``np.savez``/``allow_pickle=False``."""
        meta = json.dumps(self.metadata(), sort_keys=True).encode("utf-8")
        arrays = {
            name: np.array(getattr(self, name), dtype=dtype) for name, dtype in _ARRAYS.items() if not name.startswith("bins_")
        }
        arrays["bins_low"] = np.asarray(self.bins.low, dtype=np.float64)
        arrays["bins_high"] = np.asarray(self.bins.high, dtype=np.float64)
        if self.bins.edges is not None:  # bins at secure quantiles: features x (n_bins - 1)
            arrays["bins_edges"] = self.bins.thresholds()
        arrays["meta"] = np.frombuffer(meta, dtype=np.uint8).copy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> TreeEnsemble:
        """Check and load :meth:`to_arrays`' form; any defect is an :class:`InvalidParameter` naming it."""
        expected = {*_ARRAYS, "meta"} | ({"bins_edges"} if "bins_edges" in arrays else set())
        if set(arrays) != expected:
            raise InvalidParameter(f"a tree model needs exactly the arrays {sorted(expected)}, got {sorted(arrays)}")
        meta_bytes = arrays["meta"]
        if not isinstance(meta_bytes, np.ndarray) or meta_bytes.dtype != np.uint8 or meta_bytes.ndim != 1:
            raise InvalidParameter("tree model meta must be a 1-D uint8 array of UTF-8 JSON")
        try:
            meta = json.loads(meta_bytes.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidParameter("tree model meta is not UTF-8 JSON") from None
        if not isinstance(meta, dict) or set(meta) != {"format", "version", "kind", "loss", "n_classes", "n_bins"}:
            raise InvalidParameter("tree model meta has the wrong keys")
        if meta["format"] != MODEL_FORMAT or meta["version"] != MODEL_VERSION:
            raise InvalidParameter(f"not a {MODEL_FORMAT} version {MODEL_VERSION} model")
        for name, dtype in _ARRAYS.items():
            array = arrays[name]
            if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype):
                raise InvalidParameter(f"tree model array {name} must be {np.dtype(dtype).name}")
        low, high = arrays["bins_low"], arrays["bins_high"]
        if low.ndim != 1 or high.ndim != 1:
            raise InvalidParameter("tree model bins must be 1-D")
        edges = None
        if "bins_edges" in arrays:
            raw_edges = arrays["bins_edges"]
            if not isinstance(raw_edges, np.ndarray) or raw_edges.dtype != np.float64 or raw_edges.ndim != 2:
                raise InvalidParameter("tree model array bins_edges must be 2-D float64 (features x (n_bins - 1))")
            edges = tuple(tuple(row) for row in raw_edges.tolist())
        bins = Bins(tuple(low.tolist()), tuple(high.tolist()), meta["n_bins"], edges)
        if not isinstance(meta["loss"], str) or not isinstance(meta["kind"], str) or type(meta["n_classes"]) is not int:
            raise InvalidParameter("tree model meta kind/loss must be strings and n_classes an integer")
        return cls(
            kind=meta["kind"],
            loss=meta["loss"],
            n_classes=meta["n_classes"],
            bins=bins,
            **{name: arrays[name] for name in _ARRAYS if not name.startswith("bins_")},
        )

    def equals(self, other: TreeEnsemble) -> bool:
        """Same kind, bins and arrays exactly (split for split, value for value)."""
        mine, theirs = self.to_arrays(), other.to_arrays()
        return all(np.array_equal(mine[k], theirs[k]) for k in mine)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out
