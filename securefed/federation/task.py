"""What the coordinator runs: the task definition and the federation's node list."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from securefed.dp.settings import DpSettings
from securefed.errors import InvalidParameter
from securefed.preprocessing import Preprocessing
from securefed.secagg.bounds import resolve_colluders, smallest_safe_threshold
from securefed.secagg.graph import propose_parameters

if TYPE_CHECKING:
    from securefed.federation.computation import ComputationJob

__all__ = ["DEFAULT_DEADLINES", "STAGE_NAMES", "NodeEntry", "TaskDefinition"]

STAGE_NAMES = ("advertise", "reveal", "share", "masked_input", "consistency", "unmask")
#: Seconds per stage. Nodes advertise, reveal and deal their shares as soon as a round starts and
#: train after that, so local training falls in the masked-input stage.
DEFAULT_DEADLINES = {
    "advertise": 30.0,
    "reveal": 30.0,
    "share": 30.0,
    "masked_input": 120.0,
    "consistency": 30.0,
    "unmask": 30.0,
}


@dataclass(frozen=True)
class NodeEntry:
    """A federation member as the coordinator knows it: name, transport key, identity key."""

    name: str
    curve_public_key: bytes
    identity_public_key: bytes


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    model_kind: str
    n_features: int
    classes: tuple[int, ...]
    rounds: int
    model_options: dict = field(default_factory=dict)
    epochs: int = 1
    learning_rate: float = 0.1
    batch_size: int = 32
    min_nodes: int = 3
    max_nodes: int = 1000
    threshold: float | int | None = None
    neighbours: str | int = "complete"
    expected_dropout: float = 0.05
    max_colluders: int | float | None = None
    clip_norm: float = 10.0
    weight_cap: int = 100_000
    strategy: str = "fedavg"
    strategy_options: dict = field(default_factory=dict)
    evaluate: bool = True
    masking: bool = True
    deadlines: dict = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    dp: DpSettings | None = None
    #: the features' names in the model's order (None: a count only; see ``n_features``)
    feature_names: tuple[str, ...] | None = None
    #: the scaling every node applies to its data before training and evaluation (None: none)
    preprocessing: Preprocessing | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise InvalidParameter("task name must be 1..200 characters")
        if self.rounds < 1 or self.min_nodes < 1 or self.max_nodes < self.min_nodes:
            raise InvalidParameter("need rounds >= 1 and 1 <= min_nodes <= max_nodes")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))):
            raise InvalidParameter("threshold is a fraction in (0, 1), an absolute count, or unset (the smallest safe one)")
        if isinstance(self.threshold, float) and not 0 < self.threshold < 1:
            raise InvalidParameter("a fractional threshold must be in (0, 1)")
        if isinstance(self.threshold, int) and self.threshold < 1:
            raise InvalidParameter("an absolute threshold must be >= 1")
        if not (self.neighbours in ("complete", "auto") or (type(self.neighbours) is int and self.neighbours >= 2)):
            raise InvalidParameter('neighbours must be "complete", "auto" or an integer >= 2')
        missing = [stage for stage in STAGE_NAMES if stage not in self.deadlines]
        if missing or any(not (isinstance(v, (int, float)) and v > 0) for v in self.deadlines.values()):
            raise InvalidParameter(f"deadlines need positive seconds for every stage {STAGE_NAMES}")
        resolve_colluders(self.max_colluders, 1)  # type and range
        if not 0 <= self.expected_dropout < 1:
            raise InvalidParameter("expected_dropout must be in [0, 1)")
        if not math.isfinite(self.clip_norm) or self.clip_norm <= 0:
            raise InvalidParameter("clip_norm must be positive")
        if isinstance(self.n_features, bool) or not isinstance(self.n_features, int) or self.n_features < 1:
            raise InvalidParameter("the task needs at least one feature")
        if self.feature_names is not None:
            names = tuple(self.feature_names)
            if len(names) != self.n_features or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise InvalidParameter(f"feature_names must be {self.n_features} distinct non-empty names")
            object.__setattr__(self, "feature_names", names)
        if self.preprocessing is not None:
            if not isinstance(self.preprocessing, Preprocessing):
                raise InvalidParameter("preprocessing must be a Preprocessing (see securefed.preprocessing)")
            if self.preprocessing.n_features != self.n_features:
                raise InvalidParameter(
                    f"preprocessing is declared for {self.preprocessing.n_features} features, the task has {self.n_features}"
                )
        if not self.classes and self.model_kind != "analytics":
            raise InvalidParameter(
                f"a {self.model_kind} task needs its classes; only analytics tasks may have a numeric target (no classes)"
            )
        if self.is_computation:
            if self.dp is not None:
                raise InvalidParameter(
                    f"[task.dp] is not available for {self.model_kind} tasks yet: their vectors are released without "
                    "DP noise (docs/analytics.md, docs/trees.md); remove [task.dp] or train a model with SGD"
                )
            self.computation_job()  # refuses bad options now, not at the first round
        if self.dp is not None:
            if not isinstance(self.dp, DpSettings):
                if not isinstance(self.dp, dict):
                    raise InvalidParameter("[task.dp] must be a table with epsilon, delta and clip_norm")
                object.__setattr__(self, "dp", DpSettings.from_mapping(self.dp))
            if not self.masking:
                raise InvalidParameter(
                    "[task.dp] needs masking = true: unmasked, each node's vector would carry only its share of the noise"
                )

    @property
    def is_computation(self) -> bool:
        """True for trees and analytics: run as compute aggregations, not SGD rounds."""
        from securefed.federation.computation import COMPUTE_KINDS

        return self.model_kind in COMPUTE_KINDS

    def computation_job(self) -> ComputationJob:
        """A fresh :class:`~securefed.federation.computation.ComputationJob` for this task."""
        from securefed.federation.computation import ComputationJob

        return ComputationJob(self.model_kind, self.model_options, self.n_features, self.classes, self.preprocessing)

    def fingerprint(self) -> str:
        """Identifies the task's definition; ``rounds`` may grow on restart, nothing else may change."""
        described = asdict(self)
        described.pop("rounds")
        described.pop("deadlines")
        # Declared later than the rest: left out when unset, so an existing task keeps its fingerprint.
        for newer in ("feature_names", "preprocessing"):
            if described[newer] is None:
                described.pop(newer)
        if self.preprocessing is not None:
            described["preprocessing"] = self.preprocessing.to_json()
        if self.dp is not None:  # site-level settings describe themselves as before the privacy unit existed
            described["dp"] = self.dp.as_dict()
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()

    def spec_fields(self) -> dict:
        """What a round spec carries of the task's data agreement: ``RoundSpec(..., **task.spec_fields())``."""
        return {
            "feature_names": self.feature_names,
            "preprocessing": None if self.preprocessing is None else self.preprocessing.to_json(),
        }

    def colluders(self, roster_size: int) -> int:
        """How many colluding nodes the rounds are sized for (the nodes check their own bound too)."""
        return resolve_colluders(self.max_colluders, roster_size)

    def secagg_parameters(self, cohort_size: int, roster_size: int | None = None) -> tuple[int, int | None]:
        """(threshold, neighbours) for a cohort of this size, out of a roster of ``roster_size`` nodes.

        The threshold is never below the smallest one that withstands
        :meth:`colluders` colluding nodes against a malicious coordinator
        (2t > N + c for the complete graph; the 2^-40 neighbourhood bound for a
        sparse one); a configured ``threshold`` can only raise it. It may exceed
        the cohort size, in which case the round cannot run with this cohort.
        """
        n = cohort_size
        population = max(n, roster_size or 0)
        c = self.colluders(population)
        if self.neighbours == "auto":
            proposal = propose_parameters(n, self.expected_dropout, c, roster_size=population)
            return max(proposal.threshold, self._requested(proposal.neighbourhood_size(n))), proposal.neighbours
        # The one string left is "complete" ("auto" returned above).
        neighbours = None if isinstance(self.neighbours, str) or self.neighbours >= n - 1 else self.neighbours
        if neighbours is None:
            return max(smallest_safe_threshold(n, None, c, population), self._requested(n)), None
        degree = neighbours + neighbours % 2
        return max(smallest_safe_threshold(n, degree, c, population), self._requested(degree + 1)), neighbours

    def _requested(self, pool: int) -> int:
        """The configured threshold for a neighbourhood of ``pool`` nodes (0 when unset)."""
        if self.threshold is None:
            return 0
        if isinstance(self.threshold, float):
            threshold = max(1, math.ceil(self.threshold * pool))
            if threshold <= pool // 2 and pool > 1:
                threshold = pool // 2 + 1
            return threshold
        return min(int(self.threshold), pool)
