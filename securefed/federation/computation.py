"""Vetted computations other than SGD training, as the coordinator runs them (sans-IO).

A task whose model is ``random_forest``, ``gbdt`` or ``analytics`` is run as a
sequence of *compute* aggregations instead of training rounds. Each
aggregation carries, in its round spec, one request for a computation
registered in securefed (``spec["computation"] = {"name": ..., "request":
{...}}``): never code. The spec is hashed into the round context, so the
request is bound into every signature and mask of the aggregation, and
nodes handed different requests derive masks that do not cancel.

:class:`ComputationJob` wraps the pure drivers of :mod:`securefed.trees` and
:mod:`securefed.analytics`: ``request()`` says what to aggregate next,
``receive(summed, survivors)`` takes the unmasked sum. It is deterministic
given the sums, which is what makes it durable: the coordinator's store keeps
every step's sum, and after a restart :meth:`ComputationJob.replay` rebuilds
the job from them and goes on with the next step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

from securefed.errors import InvalidParameter, LocalProtocolError
from securefed.preprocessing import Preprocessing

if TYPE_CHECKING:  # imported where used: a process that runs no computation never loads them
    from securefed.analytics import Driver, QuantileDriver
    from securefed.trees import BoostingBuilder, BoostingParams, ForestBuilder, ForestParams, HistogramRequest, TreeEnsemble

__all__ = [
    "COMPUTE_KINDS",
    "DEFAULT_TREE_OPTIONS",
    "ComputationJob",
    "analytics_requests",
    "request_digest",
    "tree_params",
]

#: Task "models" run as computations rather than SGD training.
COMPUTE_KINDS = ("random_forest", "gbdt", "analytics")

#: What a tree task uses when ``model_options`` leaves a key out (docs/trees.md).
DEFAULT_TREE_OPTIONS: dict[str, dict[str, Any]] = {
    "random_forest": {"n_bins": 32, "n_trees": 50, "max_depth": 6, "max_rows_per_node": 100_000},
    "gbdt": {"n_bins": 32, "n_estimators": 50, "max_depth": 3, "learning_rate": 0.3},
}


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def request_digest(computation: Mapping[str, object]) -> str:
    """SHA-256 of a spec's ``computation`` object (what a node's rerun protection keys on)."""
    return hashlib.sha256(_canonical(dict(computation))).hexdigest()


#: The lattice a quantile-binning step refines to: this many cells per feature between its bounds.
QUANTILE_CELLS = 4096


def tree_params(
    kind: str,
    options: Mapping[str, object],
    n_features: int,
    classes: Sequence[int],
    preprocessing: Preprocessing | None,
    edges: Sequence[Sequence[float]] | None = None,
) -> ForestParams | BoostingParams:
    """The ForestParams / BoostingParams a tree task's options describe; InvalidParameter naming what is wrong.

    Bins come from the task's public per-feature bounds (``[task.preprocessing]``
    with ``scaler = "minmax"``) and ``n_bins``: equal-width by default, or with
    ``bins = "quantiles"`` at the ``edges`` a secure quantile step found (see
    :func:`quantile_request`); ``n_classes`` from the classes. Both the
    coordinator and every node derive them from the round spec, and a node
    refuses a request whose parameters differ from what it derived.
    """
    from securefed.trees import Bins, BoostingParams, ForestParams

    if preprocessing is None:
        raise InvalidParameter(
            f"a {kind} task needs public per-feature bounds for its bins: declare [task.preprocessing] "
            'scaler = "minmax" with min and max for every feature'
        )
    if preprocessing.n_features != n_features:
        raise InvalidParameter(
            f"the preprocessing is declared for {preprocessing.n_features} features, the task has {n_features}"
        )
    merged = {**DEFAULT_TREE_OPTIONS[kind], **dict(options)}
    n_bins = merged.pop("n_bins")
    binning = merged.pop("bins", "uniform")
    if binning not in ("uniform", "quantiles"):
        raise InvalidParameter(
            f'model_options bins must be "uniform" (equal width between the bounds) or "quantiles", got {binning!r}'
        )
    if isinstance(n_bins, bool) or not isinstance(n_bins, int):
        raise InvalidParameter(f"model_options n_bins must be an integer, got {n_bins!r}")
    bins = Bins.from_preprocessing(preprocessing, n_bins)
    if binning == "quantiles":
        if edges is None:
            edges = [list(np.linspace(lo, hi, n_bins + 1)[1:-1]) for lo, hi in zip(bins.low, bins.high)]  # until known
        bins = Bins(bins.low, bins.high, n_bins, tuple(tuple(float(v) for v in row) for row in edges))
    cls = ForestParams if kind == "random_forest" else BoostingParams
    allowed = {f.name for f in fields(cls)} - {"bins", "n_classes"}
    unknown = sorted(set(merged) - allowed)
    if unknown:
        from securefed.config_util import nearest

        valid = sorted(allowed | {"n_bins", "bins"})
        guess = nearest(unknown[0], valid)
        hint = f"; did you mean {guess!r}?" if guess else ""
        raise InvalidParameter(f"model_options: unknown {kind} option {unknown[0]!r}{hint} (valid: {valid})")
    if kind == "random_forest":
        return ForestParams(bins=bins, n_classes=len(classes), **merged)
    loss = merged.pop("loss", "logistic" if len(classes) == 2 else "softmax")
    if loss == "squared_error":
        raise InvalidParameter("gbdt tasks over the daemons are classifiers (logistic or softmax); node data holds class labels")
    return BoostingParams(bins=bins, loss=loss, n_classes=len(classes), **merged)


def quantile_spec(params: ForestParams | BoostingParams) -> dict:
    """The secure quantile step that places a tree task's bin edges (``bins = "quantiles"``).

    The n_bins - 1 inner quantiles of every feature, to 1/QUANTILE_CELLS of its declared range,
    over the same cohort bounds as the trees' histograms. Public, derived from the task alone:
    a node recomputes it and refuses any other.
    """
    bins = params.bins
    return {
        "max_nodes": int(params.max_nodes),
        "max_rows": int(params.max_rows_per_node),
        "low": list(bins.low),
        "high": list(bins.high),
        "resolution": [(hi - lo) / QUANTILE_CELLS for lo, hi in zip(bins.low, bins.high)],
        "quantiles": [i / bins.n_bins for i in range(1, bins.n_bins)],
        "method": "lower",
    }


def edges_from_quantiles(result: Mapping[str, object], params: ForestParams | BoostingParams) -> list[list[float]]:
    """Bin edges from a quantile step's result: clipped to the bounds and made non-decreasing."""
    bins = params.bins
    quantiles = result["quantiles"]
    if not isinstance(quantiles, list):
        raise LocalProtocolError("a quantile step's result lists each feature's quantiles")
    out = []
    for f, values in enumerate(quantiles):
        if values is None:  # no records at all: equal width
            row = np.linspace(bins.low[f], bins.high[f], bins.n_bins + 1)[1:-1]
        else:
            row = np.maximum.accumulate(np.clip(np.asarray(values, dtype=np.float64), bins.low[f], bins.high[f]))
        out.append([float(v) for v in row])
    return out


def analytics_requests(options: Mapping[str, object]) -> list[tuple[str, dict]]:
    """The analytics task's computations, in order, each checked by its driver: [(kind, spec), ...].

    ``options`` is the task's ``model_options``: ``{"computations": [{"kind": "mean", "params": {...}}, ...]}``.
    """
    from securefed.analytics import driver_for

    unknown = sorted(set(options) - {"computations"})
    if unknown:
        raise InvalidParameter(f"model_options: unknown analytics option {unknown[0]!r} (valid: ['computations'])")
    listed = options.get("computations")
    if not isinstance(listed, list) or not listed:
        raise InvalidParameter(
            'an analytics task lists its computations: model_options = {computations = [{kind = "mean", params = {...}}]}'
        )
    out = []
    for i, item in enumerate(listed):
        if not isinstance(item, Mapping) or set(item) != {"kind", "params"} or not isinstance(item["params"], Mapping):
            raise InvalidParameter(f"computation #{i + 1} must be {{kind = name, params = {{...}}}}")
        kind, spec = str(item["kind"]), dict(item["params"])
        try:
            driver_for(kind, spec)
        except InvalidParameter as exc:
            raise InvalidParameter(f"computation #{i + 1} ({kind}): {exc}") from None
        out.append((kind, spec))
    return out


def _level_aggregations(params: ForestParams | BoostingParams, trees: int, features: int, channels: int) -> int:
    """At most how many aggregations growing ``trees`` trees level by level takes: per level, the
    frontier (at most trees x 2^level open nodes) in as many chunks as max_vector_length needs."""
    per_entry = features * params.bins.n_bins * channels
    per_chunk = max(1, int(params.max_vector_length) // per_entry)
    return sum(-(-trees * 2**level // per_chunk) for level in range(int(params.max_depth)))


class ComputationJob:
    """One task's computation, driven one secure aggregation at a time; no I/O, no clock."""

    def __init__(
        self,
        kind: str,
        options: Mapping[str, object],
        n_features: int,
        classes: Sequence[int],
        preprocessing: Preprocessing | None,
    ) -> None:
        if kind not in COMPUTE_KINDS:
            raise InvalidParameter(f"{kind!r} is not a computation (known: {list(COMPUTE_KINDS)})")
        self.kind = kind
        self.aggregations = 0
        self._model: TreeEnsemble | None = None
        self._result: dict | None = None
        if kind == "analytics":
            from securefed.analytics import driver_for

            self._queue = analytics_requests(options)
            self._drivers: list[Driver] = [driver_for(k, spec) for k, spec in self._queue]
            self._index = 0
            self._results: list[dict] = []
        else:
            self._tree_args = (kind, dict(options), n_features, tuple(classes), preprocessing)
            self.params = tree_params(*self._tree_args)
            self._binning: QuantileDriver | None = None
            #: the secure quantile step's result, when the bins were placed at quantiles
            self.binning_result: dict | None = None
            if options.get("bins") == "quantiles":
                from securefed.analytics import QuantileDriver

                self._binning = QuantileDriver(quantile_spec(self.params))
            else:
                self._start_builder()
        self._pending: dict | None = None

    def _start_builder(self) -> None:
        from securefed.trees import BoostingBuilder, ForestBuilder, ForestParams

        params = self.params  # tree_params: ForestParams for a random forest, BoostingParams for gbdt
        self._builder: ForestBuilder | BoostingBuilder = (
            ForestBuilder(params) if isinstance(params, ForestParams) else BoostingBuilder(params)
        )

    # --- what to aggregate next ------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._result is not None

    def request(self) -> dict | None:
        """The spec's ``computation`` object for the next aggregation (the same until its sum arrives), or None."""
        if self._result is not None:
            return None
        if self._pending is None:
            self._pending = {"name": self.kind, "request": self._next()}
        return self._pending

    def _next(self) -> dict:
        if self.kind == "analytics":
            request = self._drivers[self._index].next_request()
            if request is None:
                raise LocalProtocolError("an analytics driver that finished is still current (receive() moves on)")
            return request.to_json()
        if self._binning is not None:
            request = self._binning.next_request()
            if request is None:
                raise LocalProtocolError("a finished binning step is still current (receive() starts the builder)")
            return request.to_json()
        from securefed.trees import BoostingBuilder
        from securefed.trees.driver import State

        builder = self._builder
        if isinstance(builder, BoostingBuilder) and builder.state is State.AWAIT_HISTOGRAM:
            # Every finished round travels with every request: a node that dropped out or restarted
            # catches up from it, and one that is current checks the model digest and skips it.
            return builder.request_since(0).to_json()
        return builder.request().to_json()

    def vector_length(self) -> int:
        """Coordinates of the pending request's vector (what the round config declares)."""
        computation = self.request()
        if computation is None:
            raise InvalidParameter("the computation has finished")
        raw = computation["request"]
        if self.kind == "analytics" or "kind" in raw:  # analytics, or a tree task's quantile step
            from securefed.analytics import get

            kind = get(raw["kind"])
            return kind.vector_length(kind.parse(raw["params"]))
        from securefed.trees.request import HistogramRequest

        request = HistogramRequest.from_json(raw)
        return self._tree_vector_length(request)

    def _tree_vector_length(self, request: HistogramRequest) -> int:
        from securefed.trees import ForestParams

        params = self.params
        if isinstance(params, ForestParams):
            return int(request.layout(params.bins.n_bins, params.n_classes).length)
        from securefed.trees.request import BOOSTING_BASE

        if request.computation == BOOSTING_BASE:
            return int(params.base_channels)
        return int(request.layout(params.bins.n_bins, 3).length)

    def max_nodes(self) -> int:
        """The most nodes the pending request's wrap bound allows in one sum."""
        if self.kind != "analytics":
            return int(self.params.max_nodes)
        computation = self.request()
        if computation is None:
            raise InvalidParameter("the computation has finished")
        raw = computation["request"]
        from securefed.analytics import get

        kind = get(raw["kind"])
        return int(kind.parse(raw["params"]).cohort.max_nodes)

    # --- taking sums ------------------------------------------------------------------------

    def receive(self, summed: np.ndarray, survivors: int) -> None:
        """Feed the unmasked sum of :meth:`request` from ``survivors`` nodes.

        A sum that fails its driver's checks raises (EncodingError / InvalidParameter /
        LocalProtocolError) and leaves the job unusable, as one bad sum taints what follows.
        """
        if self._pending is None:
            self.request()
        summed = np.asarray(summed)
        if self.kind != "analytics" and self._binning is not None:
            self._binning.receive(summed, survivors)
            if self._binning.done:
                self.binning_result = dict(self._binning.result)
                self.params = tree_params(*self._tree_args, edges=edges_from_quantiles(self.binning_result, self.params))
                self._binning = None
                self._start_builder()
        elif self.kind == "analytics":
            driver = self._drivers[self._index]
            driver.receive(summed, survivors)
            if driver.done:
                result = dict(driver.result)
                result.setdefault("computation", self._queue[self._index][0])
                self._results.append(result)
                self._index += 1
                if self._index == len(self._drivers):
                    self._result = {"kind": "analytics", "results": self._results}
        else:
            outcome = self._builder.receive(summed)
            from securefed.trees import TreeEnsemble

            if isinstance(outcome, TreeEnsemble):
                self._model = outcome
                self._result = {
                    "kind": self.kind,
                    "trees": int(outcome.n_trees),
                    "describe": self.params.describe(),
                    "bins": "uniform" if self.binning_result is None else "quantiles",
                }
                if self.binning_result is not None:
                    self._result["binning_aggregations"] = int(self.binning_result["aggregations"])
        self.aggregations += 1
        self._pending = None
        if self._result is not None:
            self._result["aggregations"] = self.aggregations

    def result(self) -> dict:
        """The JSON result (analytics results, or the tree model's summary) once done."""
        if self._result is None:
            raise InvalidParameter("the computation has not finished")
        return self._result

    @property
    def model(self) -> TreeEnsemble | None:
        """The finished :class:`~securefed.trees.TreeEnsemble` of a tree task (None otherwise or before the end)."""
        return self._model

    def expected_aggregations(self) -> int:
        """An upper bound on the aggregations the job takes (what status shows as the total)."""
        if self.kind != "analytics":
            from securefed.trees import ForestParams

            binning = 4 if self._binning is not None else 0
            params = self.params
            if isinstance(params, ForestParams):
                return binning + _level_aggregations(
                    params, int(params.n_trees), params.features_per_split, int(params.n_classes)
                )
            per_round = _level_aggregations(params, int(params.n_outputs), params.bins.n_features, 3)
            return binning + 1 + int(params.n_estimators) * per_round
        total = 0
        for kind, spec in self._queue:
            if kind == "kmeans":
                total += int(spec.get("max_iter", 300))
            elif kind == "quantiles":
                total += 8
            else:
                total += 1
        return total

    def replay(self, steps: Sequence[tuple[str, np.ndarray, int]]) -> None:
        """Rebuild the job from stored steps ``(request digest, sum, survivors)``, oldest first.

        Raises InvalidParameter when a stored step was for a different request than the
        job now asks for (the task or securefed changed under a running computation).
        """
        for number, (digest, summed, survivors) in enumerate(steps, start=1):
            computation = self.request()
            if computation is None or request_digest(computation) != digest:
                raise InvalidParameter(
                    f"stored step {number} answered a different request than this task now makes; "
                    "the task's definition or securefed changed under a running computation"
                )
            self.receive(summed, survivors)
