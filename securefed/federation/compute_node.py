"""A node's side of compute aggregations: the site's checks, its tree workers, the vector it adds.

The coordinator names a registered computation and its JSON request
(:mod:`securefed.federation.computation`); the node checks it against the
site's own rules before it reads a row:

- the computation is the task's own kind (a forest task never gets an analytics query);
- analytics: the kind is in ``[policy] allowed_computations``, its parameters pass
  the kind's strict checks, its bins are no narrower than ``min_bin_width``, and
  no released aggregate covers 1..``min_records``-1 of this site's records;
- trees: the parameters are exactly those the node derives from the round spec
  (bins from the task's public bounds), the trees are well formed, forest
  feature subsets are the ones the public seed derives, and a boosting node's
  model digest matches the coordinator's;
- the invited cohort is no larger than the request's ``max_nodes`` (the wrap bound).

Anything else is a :class:`ComputeRefusal` with a reason code, which the node
sends to the coordinator and writes to its audit log. The rerun protection and
the per-task query budget live in the node itself (:mod:`securefed.federation.node`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

import numpy as np

from securefed.errors import EncodingError, InvalidParameter
from securefed.federation.computation import COMPUTE_KINDS, quantile_spec, tree_params
from securefed.federation.spec import RoundSpec

if TYPE_CHECKING:  # imported where used: a process that runs no computation never loads them
    from securefed.analytics import AnalyticsPolicy
    from securefed.trees import BoostingParams, BoostingWorker, ForestParams, ForestWorker

__all__ = ["ComputeRefusal", "ComputeResponder"]


class ComputeRefusal(Exception):
    """The node will not compute this request: ``reason`` (a short code) and a one-line ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ComputeResponder:
    """Answers compute requests from one site's raw data (features as in its file, and its labels).

    Tree workers keep state between aggregations (a forest's secret bootstrap
    weights, a boosting node's current raw scores); they are kept per agreed
    parameter set and rebuilt when the parameters change.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, analytics_policy: AnalyticsPolicy) -> None:
        self.X = np.asarray(X, dtype=np.float64)
        self.y = np.asarray(y)
        self.analytics_policy = analytics_policy
        self._workers: dict[str, ForestWorker | BoostingWorker] = {}

    def vector(self, spec: RoundSpec, cohort_size: int) -> np.ndarray:
        """The uint32 vector this site adds to the sum for ``spec.computation``; raises ComputeRefusal."""
        computation = spec.computation
        if computation is None:  # parse_spec guarantees it for the compute phase
            raise ComputeRefusal("bad-spec", "a compute round without a computation")
        name = computation["name"]
        if name != spec.model_kind or name not in COMPUTE_KINDS:
            raise ComputeRefusal("computation-mismatch", f"the round asks for {name!r}, but this task is {spec.model_kind!r}")
        if name == "analytics":
            return self._analytics(computation["request"], cohort_size)
        return self._tree(spec, computation["request"], cohort_size)

    def _analytics(self, raw: dict, cohort_size: int) -> np.ndarray:
        from securefed.analytics import Refusal, get, respond

        allowed = self.analytics_policy.allowed_computations
        if not isinstance(raw, dict) or raw.get("kind") not in allowed:
            name = raw.get("kind") if isinstance(raw, dict) else None
            raise ComputeRefusal(
                "computation-not-allowed", f"{name!r} is not in this site's allowed_computations {sorted(allowed)}"
            )
        try:
            kind = get(raw.get("kind"))
            parsed = kind.parse(raw.get("params", {}))
        except InvalidParameter as exc:
            raise ComputeRefusal("invalid-parameters", str(exc)) from None
        if cohort_size > parsed.cohort.max_nodes:
            raise ComputeRefusal(
                "cohort-too-large",
                f"{cohort_size} nodes were invited, the request's wrap bound allows max_nodes = {parsed.cohort.max_nodes}",
            )
        answer = respond(raw, self.X, self.y, self.analytics_policy)
        if isinstance(answer, Refusal):
            raise ComputeRefusal(answer.code, answer.detail)
        return answer

    def _tree(self, spec: RoundSpec, raw: dict, cohort_size: int) -> np.ndarray:
        quantile_bins = spec.model_options.get("bins") == "quantiles"
        edges = None
        if quantile_bins and "kind" not in raw:
            # The bins were placed at the cohort's quantiles by the step before: the request carries
            # the edges (checked by Bins: inside the bounds, non-decreasing); all else must match.
            try:
                edges = raw["params"]["bins"]["edges"]
            except (KeyError, TypeError):
                raise ComputeRefusal("params-mismatch", "a quantile-binned tree request must carry its bin edges") from None
        try:
            params = tree_params(
                spec.model_kind, spec.model_options, spec.n_features, spec.classes, spec.preprocessing_object(), edges
            )
        except InvalidParameter as exc:
            raise ComputeRefusal("bad-parameters", str(exc)) from None
        if "kind" in raw:
            return self._binning_step(raw, params, quantile_bins, cohort_size)
        if cohort_size > params.max_nodes:
            raise ComputeRefusal(
                "cohort-too-large",
                f"{cohort_size} nodes were invited, the task's wrap bound allows max_nodes = {params.max_nodes}",
            )
        key = hashlib.sha256(json.dumps(params.to_json(), sort_keys=True).encode()).hexdigest()
        worker = self._workers.get(key)
        if worker is None:
            worker = self._new_worker(spec, params)
            self._workers = {key: worker}  # one task, one parameter set: drop any older worker
        try:
            return worker.compute(raw)
        except (InvalidParameter, EncodingError) as exc:
            text = str(exc)
            reason = (
                "model-digest-mismatch"
                if "model-digest-mismatch" in text
                else "params-mismatch"
                if "params-mismatch" in text
                else "bad-request"
            )
            raise ComputeRefusal(reason, text) from None

    def _binning_step(
        self, raw: dict, params: ForestParams | BoostingParams, quantile_bins: bool, cohort_size: int
    ) -> np.ndarray:
        """A tree task's secure quantile step: only the one the task derives, under this site's record rules."""
        from securefed.analytics import AnalyticsPolicy, Refusal, respond

        if not quantile_bins or raw.get("kind") != "quantiles" or not isinstance(raw.get("params"), dict):
            raise ComputeRefusal("computation-mismatch", "this tree task asks for no quantile step (its bins are equal-width)")
        expected = quantile_spec(params)
        for key in ("max_nodes", "max_rows", "low", "high", "resolution"):
            if raw["params"].get(key) != expected[key]:
                raise ComputeRefusal("params-mismatch", f"the quantile step's {key} differs from what the task derives")
        if cohort_size > params.max_nodes:
            raise ComputeRefusal(
                "cohort-too-large",
                f"{cohort_size} nodes were invited, the task's wrap bound allows max_nodes = {params.max_nodes}",
            )
        policy = self.analytics_policy
        binning_policy = AnalyticsPolicy(frozenset({"quantiles"}), policy.min_records, policy.min_bin_width)
        answer = respond(raw, self.X, self.y, binning_policy)
        if isinstance(answer, Refusal):
            raise ComputeRefusal(answer.code, answer.detail)
        return answer

    def _new_worker(self, spec: RoundSpec, params: ForestParams | BoostingParams) -> ForestWorker | BoostingWorker:
        from securefed.trees import BoostingWorker, ForestParams, ForestWorker

        index = {label: i for i, label in enumerate(spec.classes)}
        try:
            labels = np.array([index[int(v)] for v in self.y], dtype=np.int64)
        except KeyError as exc:
            raise ComputeRefusal("class-mismatch", f"local label {exc.args[0]} is not among the task's classes") from None
        try:
            if isinstance(params, ForestParams):  # tree_params: what a random_forest task derives
                # The bootstrap weights are this site's secret: drawn from a generator seeded by the OS CSPRNG.
                rng = np.random.default_rng(int.from_bytes(os.urandom(32), "big"))
                return ForestWorker(params, self.X, labels, rng=rng)
            return BoostingWorker(params, self.X, labels)
        except InvalidParameter as exc:
            raise ComputeRefusal("data-mismatch", str(exc)) from None
