"""Gradient-boosted trees from secure histograms: parameters, the coordinator's builder, the node's worker.

Theory of operation. Boosting starts with one aggregation for the base score
(``trees.boosting-base``): the class counts (classification) or the clipped
target sum and row count (squared error). The base score is the log-odds /
centred log-prior / mean, as scikit-learn's HistGradientBoosting starts.
Then every round grows one tree per output (one for logistic and squared
error, one per class for softmax), all of a round's trees together, level by
level: per level each node sends, per open (tree, node) entry, feature and
bin, the sums of its rows' quantised gradient, quantised hessian and row
count (:func:`~securefed.trees.histograms.stat_histogram`). The coordinator
chooses splits by XGBoost's gain and sets leaves to the shrunk Newton step
``-learning_rate * G / (H + lambda)``. A model of R rounds of depth D costs
at most 1 + R * D secure aggregations.

Losses (raw score F, label y; p = sigmoid(F) or softmax(F)):
- ``logistic``: g = p - y, h = p (1 - p); |g| <= 1, h <= 1/4;
- ``softmax``: per class k, g = p_k - [y = k], h = p_k (1 - p_k);
- ``squared_error``: g = F - y, h = 1; |g| is clipped to the declared ``grad_clip``.

Nodes keep their rows' raw scores. Each request of round r carries the trees
finished since (``previous``, normally round r - 1) and the SHA-256 chain
digest of the model so far (parameters, base score, every finished tree);
the node applies the new trees to its raw scores only if its own digest then
matches, so a node never computes gradients against a model other than the
coordinator's, and a node that missed rounds can be sent all it missed.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from securefed.errors import InvalidParameter, LocalProtocolError, ProtocolAborted
from securefed.trees._checks import check_choice, check_int, check_real
from securefed.trees.binning import BinnedParams, Bins
from securefed.trees.driver import Driver, State
from securefed.trees.grow import FinishedTree, LevelGrower
from securefed.trees.histograms import (
    Layout,
    check_no_wrap,
    class_indices,
    coded_rows,
    decode_sum,
    fractional_bits,
    quantise,
    require_non_negative,
    stat_histogram,
    to_uint32,
)
from securefed.trees.model import LOSSES, TreeEnsemble, n_outputs
from securefed.trees.request import (
    BOOSTING_BASE,
    BOOSTING_LEVEL,
    CheckedTree,
    HistogramRequest,
    check_request_tree,
    entry_of_row,
    frontier_lookup,
)
from securefed.trees.split import GradientCriterion
from securefed.trees.structure import route

__all__ = ["BoostingBuilder", "BoostingParams", "BoostingWorker", "base_score", "model_digest"]

_DEFAULT_CLIPS = {"logistic": (1.0, 0.25), "softmax": (1.0, 0.25), "squared_error": (None, 1.0)}
_EPS = float(np.finfo(np.float64).eps)
_T = TypeVar("_T")


def _resolved(value: _T | None, name: str) -> _T:
    """A field that ``BoostingParams.__post_init__`` always fills in (None only on an object it did not build)."""
    if value is None:
        raise LocalProtocolError(f"BoostingParams.{name} is None: build the parameters with the constructor")
    return value


@dataclass(frozen=True)
class BoostingParams(BinnedParams):
    """A federated GBDT's parameters: public, agreed by every site, carried in every request.

    ``n_classes`` is 2 for logistic, the number of classes (>= 2) for softmax,
    and 0 for squared error (None picks 2 / - / 0). ``grad_clip`` and
    ``hess_clip`` bound |g| and h per row (defaults 1 and 1/4 for the
    classification losses, which never exceed them; squared error must declare
    ``grad_clip``, a bound on |prediction - target| and on |target|). The
    fixed-point precisions follow from them and ``max_nodes`` x
    ``max_rows_per_node`` (:attr:`grad_bits`, :attr:`hess_bits`).
    """

    _JSON_NAME = "boosting params"  # what from_json says it read

    bins: Bins
    loss: str = "logistic"
    n_classes: int | None = None
    n_estimators: int = 100
    learning_rate: float = 0.1
    max_depth: int = 3
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1e-3
    min_samples_leaf: int = 1
    grad_clip: float | None = None
    hess_clip: float | None = None
    max_rows_per_node: int = 10_000
    max_nodes: int = 100
    max_vector_length: int = 1 << 22

    def __post_init__(self) -> None:
        if not isinstance(self.bins, Bins):
            raise InvalidParameter("bins must be a Bins")
        check_choice("loss", self.loss, LOSSES)
        classes = self.n_classes if self.n_classes is not None else {"logistic": 2, "squared_error": 0}.get(self.loss)
        if classes is None:
            raise InvalidParameter("softmax needs n_classes, the number of classes")
        if self.loss == "logistic" and classes != 2:
            raise InvalidParameter(f"logistic loss is for 2 classes, got n_classes={classes!r}; use softmax for more")
        if self.loss == "squared_error" and classes != 0:
            raise InvalidParameter("squared_error is regression: n_classes must be 0 (or left out)")
        check_int("n_classes", classes, 0 if self.loss == "squared_error" else 2, 1 << 12)
        object.__setattr__(self, "n_classes", classes)
        check_int("n_estimators", self.n_estimators, 1, 100_000)
        check_int("max_depth", self.max_depth, 1, 16)
        # reals are stored as floats: the model digest hashes canonical JSON, where 1 and 1.0 differ
        reals = {
            "learning_rate": check_real("learning_rate", self.learning_rate, 0.0, open_low=True, high=10.0),
            "reg_lambda": check_real("reg_lambda", self.reg_lambda, 0.0),
            "gamma": check_real("gamma", self.gamma, 0.0),
            "min_child_weight": check_real("min_child_weight", self.min_child_weight, 0.0),
        }
        for name, value in reals.items():
            object.__setattr__(self, name, value)
        check_int("min_samples_leaf", self.min_samples_leaf, 1)
        default_grad, default_hess = _DEFAULT_CLIPS[self.loss]
        grad = self.grad_clip if self.grad_clip is not None else default_grad
        if grad is None:
            raise InvalidParameter("squared_error needs grad_clip: a declared bound on |prediction - target| (and |target|)")
        object.__setattr__(self, "grad_clip", check_real("grad_clip", grad, 0.0, open_low=True))
        hess = self.hess_clip if self.hess_clip is not None else default_hess
        object.__setattr__(self, "hess_clip", check_real("hess_clip", hess, 0.0, open_low=True))
        check_int("max_rows_per_node", self.max_rows_per_node, 1)
        check_int("max_nodes", self.max_nodes, 1)
        check_int("max_vector_length", self.max_vector_length, 1)
        total = self.max_nodes * self.max_rows_per_node
        check_no_wrap(1, total, "boosting row counts")
        fractional_bits(self.grad_bound, total, "boosting gradients")  # refuses a clip too coarse for the cohort
        fractional_bits(self.hess_bound, total, "boosting hessians")
        per_entry = self.bins.n_features * self.bins.n_bins * GradientCriterion.channels
        if per_entry > self.max_vector_length:
            raise InvalidParameter(
                f"one tree node's histogram has {per_entry} entries, more than max_vector_length {self.max_vector_length}; use fewer bins"
            )

    @property
    def classes(self) -> int:
        """``n_classes`` as resolved at construction (2 for logistic, 0 for squared error when left out)."""
        return _resolved(self.n_classes, "n_classes")

    @property
    def grad_bound(self) -> float:
        """``grad_clip`` as resolved at construction (the loss's default when left out)."""
        return _resolved(self.grad_clip, "grad_clip")

    @property
    def hess_bound(self) -> float:
        """``hess_clip`` as resolved at construction (the loss's default when left out)."""
        return _resolved(self.hess_clip, "hess_clip")

    @property
    def grad_bits(self) -> int:
        """Fractional bits of each row's gradient: resolution 2^-grad_bits."""
        return fractional_bits(self.grad_bound, self.max_nodes * self.max_rows_per_node, "boosting gradients")

    @property
    def hess_bits(self) -> int:
        return fractional_bits(self.hess_bound, self.max_nodes * self.max_rows_per_node, "boosting hessians")

    @property
    def n_outputs(self) -> int:
        """Trees per round (raw-score columns)."""
        return n_outputs("gbdt", self.loss, self.classes)

    @property
    def base_channels(self) -> int:
        return self.classes if self.loss != "squared_error" else 2

    def describe(self) -> str:
        return (
            f"gbdt ({self.loss}): {self.n_estimators} rounds x {self.n_outputs} tree(s), depth <= {self.max_depth}, "
            f"learning rate {self.learning_rate:g}, lambda {self.reg_lambda:g}, {self.bins.n_bins} bins; "
            f"|g| <= {self.grad_clip:g} at 2^-{self.grad_bits}, h <= {self.hess_clip:g} at 2^-{self.hess_bits} per row, "
            f"safe for {self.max_nodes} nodes x {self.max_rows_per_node} rows"
        )

    def criterion(self) -> GradientCriterion:
        return GradientCriterion(
            self.grad_bits,
            self.hess_bits,
            reg_lambda=self.reg_lambda,
            gamma=self.gamma,
            min_child_weight=self.min_child_weight,
            min_samples_leaf=self.min_samples_leaf,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
        )


def base_score(params: BoostingParams, totals: np.ndarray) -> np.ndarray:
    """The initial raw score from the summed base vector (class counts, or [target sum, rows])."""
    if params.loss == "squared_error":
        rows = int(totals[1])
        if rows <= 0:
            raise ProtocolAborted("the cohort has no training rows", stage="trees.boosting-base")
        return np.array([totals[0] / float(1 << params.grad_bits) / rows])
    rows = int(totals.sum())
    if rows <= 0:
        raise ProtocolAborted("the cohort has no training rows", stage="trees.boosting-base")
    prior = np.clip(totals / rows, _EPS, 1.0 - _EPS)
    if params.loss == "logistic":
        return np.array([math.log(prior[1] / (1.0 - prior[1]))])
    logs = np.log(prior)
    return logs - logs.mean()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def model_digest(
    previous: str | None, *, params: dict | None = None, base: list[float] | None = None, round_trees: list[dict] | None = None
) -> str:
    """The chain digest: start from (params, base score), then fold in each finished round's trees."""
    if previous is None:
        return hashlib.sha256(b"securefed.trees.gbdt\x00" + _canonical({"params": params, "base_score": base})).hexdigest()
    return hashlib.sha256(bytes.fromhex(previous) + _canonical(round_trees)).hexdigest()


class BoostingBuilder(Driver):
    """The coordinator's side: base score, then round after round of level-wise trees."""

    def __init__(self, params: BoostingParams) -> None:
        super().__init__(State.AWAIT_BASE)
        self.params = params
        self._params_json = params.to_json()
        self._criterion = params.criterion()
        self._base: np.ndarray | None = None
        self._digests: list[str] = []  # after 0, 1, ... finished rounds
        self._rounds: list[list[FinishedTree]] = []
        self._grower: LevelGrower | None = None

    @property
    def round(self) -> int:
        return len(self._rounds)

    def _new_grower(self) -> LevelGrower:
        everything = tuple(range(self.params.bins.n_features))
        return LevelGrower(
            self.params.n_outputs,
            self._criterion,
            lambda t, node: everything,
            len(everything),
            self.params.bins.n_bins,
            self.params.max_vector_length,
        )

    def _make_request(self) -> HistogramRequest:
        if self._grower is None:
            return HistogramRequest(computation=BOOSTING_BASE, params=self._params_json)
        return self.request_since(self.round - 1 if self.round else 0)

    def request_since(self, first_missing_round: int) -> HistogramRequest:
        """The current request, carrying every finished round from ``first_missing_round`` on.

        The normal request carries only the last round; a node that missed
        rounds (it dropped out, or restarted) needs them all from its own count.
        """
        if self._grower is None or self._base is None:
            return self.request()
        if not 0 <= first_missing_round <= self.round:
            raise InvalidParameter(f"rounds finished so far: {self.round}; cannot start from {first_missing_round}")
        chunk = self._grower.chunk()
        return HistogramRequest(
            computation=BOOSTING_LEVEL,
            params=self._params_json,
            round=self.round,
            level=self._grower.level,
            trees=tuple(tree.routing() for tree in self._grower.trees),
            frontier=tuple(chunk),
            features=tuple(self._grower.features(chunk)),
            base_score=tuple(float(v) for v in self._base),
            previous=tuple(tuple(tree.to_json() for tree in trees) for trees in self._rounds[first_missing_round:]),
            model_digest=self._digests[-1],
        )

    def _take(self, summed: np.ndarray) -> TreeEnsemble | None:
        if self._grower is None or self._base is None:  # the two are set together, after the base sum
            totals = decode_sum(summed, Layout(1, 1, 1, self.params.base_channels)).reshape(-1)
            require_non_negative(totals if self.params.loss != "squared_error" else totals[1:], "class or row count")
            self._base = base_score(self.params, totals)
            self._digests.append(model_digest(None, params=self._params_json, base=[float(v) for v in self._base]))
            self._grower = self._new_grower()
            return None
        self._grower.apply(decode_sum(summed, self._grower.layout(self._grower.chunk())))
        if not self._grower.done:
            return None
        finished = self._grower.finish()
        self._rounds.append(finished)
        self._digests.append(model_digest(self._digests[-1], round_trees=[tree.to_json() for tree in finished]))
        if self.round < self.params.n_estimators:
            self._grower = self._new_grower()
            return None
        trees = [tree for round_trees in self._rounds for tree in round_trees]
        outputs = [k for _ in self._rounds for k in range(self.params.n_outputs)]
        return TreeEnsemble.from_trees(
            "gbdt", self.params.loss, self.params.classes, self.params.bins, trees, outputs, self._base
        )


class BoostingWorker:
    """A node's side: coded data, labels (class indices) or targets, and its rows' current raw scores."""

    def __init__(self, params: BoostingParams, X: np.ndarray, y: np.ndarray) -> None:
        self.params = params
        self._params_json = params.to_json()
        self._codes = coded_rows(params.bins, X, params.max_rows_per_node)
        n = self._codes.shape[0]
        target = np.asarray(y)
        if params.loss == "squared_error":
            if target.shape != (n,) or target.dtype.kind not in "iuf" or not np.all(np.isfinite(target)):
                raise InvalidParameter(f"targets must be {n} finite numbers")
            self._y = target.astype(np.float64)
        else:
            self._y = class_indices(target, n, params.classes)
        self._base: tuple[float, ...] | None = None
        self._raw: np.ndarray | None = None
        self._rounds = 0
        self._digest: str | None = None
        self._stats: tuple[int, np.ndarray] | None = None  # (round, trees x rows x 3) cache

    @property
    def rounds_applied(self) -> int:
        """Finished rounds folded into this node's raw scores (what to pass to ``request_since``)."""
        return self._rounds

    def compute(self, request: HistogramRequest | dict) -> np.ndarray:
        """Check the request against the agreed parameters and this node's model; return its uint32 vector."""
        req = HistogramRequest.coerce(request)
        if req.computation not in (BOOSTING_BASE, BOOSTING_LEVEL):
            raise InvalidParameter(f"this node computes trees.boosting-* for this task, not {req.computation}")
        if req.params != self._params_json:
            raise InvalidParameter("the request's boosting parameters differ from those this node agreed to (params-mismatch)")
        if req.computation == BOOSTING_BASE:
            return self._base_vector()
        return self._level_vector(req)

    def _base_vector(self) -> np.ndarray:
        params = self.params
        if params.loss == "squared_error":
            total = int(quantise(self._y, params.grad_bound, params.grad_bits).sum())
            return to_uint32(np.array([total, self._y.shape[0]], dtype=np.int64))
        return to_uint32(np.bincount(self._y, minlength=params.classes).astype(np.int64))

    def _level_vector(self, req: HistogramRequest) -> np.ndarray:
        params, bins = self.params, self.params.bins
        if req.level >= params.max_depth:
            raise InvalidParameter(f"level {req.level} is at or beyond max_depth {params.max_depth}")
        if len(req.trees) != params.n_outputs:
            raise InvalidParameter(f"a boosting request must carry the round's {params.n_outputs} tree(s)")
        self._sync(req)
        trees = [check_request_tree(raw, bins.n_features, bins.n_bins, params.max_depth) for raw in req.trees]
        lookup = frontier_lookup(req, trees)
        everything = tuple(range(bins.n_features))
        if any(chosen != everything for chosen in req.features):
            raise InvalidParameter("a boosting request must ask for every feature of every frontier entry")
        layout = req.layout(bins.n_bins, GradientCriterion.channels)
        if layout.length > params.max_vector_length:
            raise InvalidParameter(
                f"the request asks for {layout.length} entries, more than max_vector_length {params.max_vector_length}"
            )
        features = np.asarray(req.features, dtype=np.int64).reshape(layout.entries, layout.features)
        rows_entry = entry_of_row(self._codes, trees, lookup)
        return to_uint32(stat_histogram(self._codes, features, bins.n_bins, rows_entry, self._round_stats(req.round)))

    def _sync(self, req: HistogramRequest) -> None:
        """Bring the raw scores to the request's round, checking the model digest; refuse if out of step."""
        params = self.params
        if len(req.base_score) != params.n_outputs:
            raise InvalidParameter(f"the base score must have {params.n_outputs} value(s)")
        if self._base is not None and req.base_score != self._base:
            raise InvalidParameter("the request's base score differs from the one this node started with (model-digest-mismatch)")
        if self._rounds == req.round:
            if self._digest is not None and self._digest != req.model_digest:
                raise InvalidParameter("this node's model differs from the coordinator's (model-digest-mismatch)")
            if self._digest is not None:
                return
        start = req.round - len(req.previous)
        if not start <= self._rounds <= req.round:
            raise InvalidParameter(
                f"out of step: this node has {self._rounds} finished round(s), the request brings rounds {start}..{req.round - 1}; "
                f"ask the coordinator for the rounds from {self._rounds} on"
            )
        # Rounds this node has already folded in are skipped; the digest check below still covers
        # them, since the node's chain digest of its own rounds is where the chain continues.
        base = tuple(req.base_score)
        digest = self._digest if self._digest is not None else model_digest(None, params=self._params_json, base=list(base))
        raw = self._raw.copy() if self._raw is not None else np.tile(np.asarray(base), (self._codes.shape[0], 1))
        for round_trees in req.previous[self._rounds - start :]:
            if len(round_trees) != params.n_outputs:
                raise InvalidParameter(f"a finished round must have {params.n_outputs} tree(s)")
            for k, raw_tree in enumerate(round_trees):
                tree = check_request_tree(raw_tree, params.bins.n_features, params.bins.n_bins, params.max_depth, value_size=1)
                raw[:, k] += _leaf_values(self._codes, tree)
            digest = model_digest(digest, round_trees=list(round_trees))
        if digest != req.model_digest:
            raise InvalidParameter("this node's model differs from the coordinator's (model-digest-mismatch)")
        self._base, self._raw, self._rounds, self._digest = base, raw, req.round, digest

    def _round_stats(self, round_: int) -> np.ndarray:
        """Quantised (gradient, hessian, 1) of every row for every tree of the round: trees x rows x 3."""
        if self._stats is not None and self._stats[0] == round_:
            return self._stats[1]
        params, raw = self.params, self._raw
        if raw is None:  # pragma: no cover - _sync always sets it
            raise InvalidParameter("no base score yet")
        if params.loss == "squared_error":
            grad, hess = raw - self._y[:, None], np.ones_like(raw)
        elif params.loss == "logistic":
            p = _sigmoid(raw[:, 0])[:, None]
            grad, hess = p - (self._y == 1)[:, None], p * (1.0 - p)
        else:
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            p = shifted / shifted.sum(axis=1, keepdims=True)
            grad = p - (self._y[:, None] == np.arange(params.n_outputs)[None, :])
            hess = p * (1.0 - p)
        stats = np.empty((params.n_outputs, raw.shape[0], 3), dtype=np.int64)
        stats[:, :, 0] = quantise(grad, params.grad_bound, params.grad_bits).T
        stats[:, :, 1] = quantise(hess, params.hess_bound, params.hess_bits, non_negative=True).T
        stats[:, :, 2] = 1
        self._stats = (round_, stats)
        return stats


def _leaf_values(codes: np.ndarray, tree: CheckedTree) -> np.ndarray:
    if tree.value is None:
        raise LocalProtocolError("_leaf_values needs a finished tree: check it with value_size")
    leaf = route(codes, tree.feature, tree.bin, tree.left, tree.right, tree.max_depth)
    return tree.value[leaf, 0]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
