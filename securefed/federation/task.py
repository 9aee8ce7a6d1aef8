"""What the coordinator runs: the task definition and the federation's node list."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from securefed.errors import InvalidParameter
from securefed.secagg.graph import propose_parameters

__all__ = ["TaskDefinition", "NodeEntry", "STAGE_NAMES", "DEFAULT_DEADLINES"]

STAGE_NAMES = ("advertise", "share", "masked_input", "consistency", "unmask")
DEFAULT_DEADLINES = {"advertise": 120.0, "share": 30.0, "masked_input": 30.0, "consistency": 30.0, "unmask": 30.0}


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
    threshold: float | int = 0.6
    neighbours: str | int = "complete"
    expected_dropout: float = 0.05
    corrupt_fraction: float = 0.05
    clip_norm: float = 10.0
    weight_cap: int = 100_000
    strategy: str = "fedavg"
    strategy_options: dict = field(default_factory=dict)
    evaluate: bool = True
    masking: bool = True
    deadlines: dict = field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    dp: dict | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise InvalidParameter("task name must be 1..200 characters")
        if self.rounds < 1 or self.min_nodes < 1 or self.max_nodes < self.min_nodes:
            raise InvalidParameter("need rounds >= 1 and 1 <= min_nodes <= max_nodes")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise InvalidParameter("threshold is a fraction in (0, 1) or an absolute count")
        if isinstance(self.threshold, float) and not 0 < self.threshold < 1:
            raise InvalidParameter("a fractional threshold must be in (0, 1)")
        if isinstance(self.threshold, int) and self.threshold < 1:
            raise InvalidParameter("an absolute threshold must be >= 1")
        if not (self.neighbours in ("complete", "auto") or (type(self.neighbours) is int and self.neighbours >= 2)):
            raise InvalidParameter('neighbours must be "complete", "auto" or an integer >= 2')
        missing = [stage for stage in STAGE_NAMES if stage not in self.deadlines]
        if missing or any(not (isinstance(v, (int, float)) and v > 0) for v in self.deadlines.values()):
            raise InvalidParameter(f"deadlines need positive seconds for every stage {STAGE_NAMES}")
        if not math.isfinite(self.clip_norm) or self.clip_norm <= 0:
            raise InvalidParameter("clip_norm must be positive")
        if self.dp is not None:
            dp = self.dp
            unknown = set(dp) - {"epsilon", "delta", "clip_norm"}
            if unknown:
                raise InvalidParameter(f"[task.dp] has unknown keys {sorted(unknown)}; use epsilon, delta, clip_norm")
            for key in ("epsilon", "delta", "clip_norm"):
                value = dp.get(key)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                    raise InvalidParameter(f"[task.dp] {key} must be a positive number")
            if dp["delta"] >= 1:
                raise InvalidParameter("[task.dp] delta must be below 1")

    def fingerprint(self) -> str:
        """Identifies the task's definition; ``rounds`` may grow on restart, nothing else may change."""
        described = asdict(self)
        described.pop("rounds")
        described.pop("deadlines")
        return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()

    def secagg_parameters(self, cohort_size: int) -> tuple[int, int | None]:
        """(threshold, neighbours) for a cohort of this size."""
        if self.neighbours == "auto":
            proposal = propose_parameters(cohort_size, self.expected_dropout, self.corrupt_fraction)
            return proposal.threshold, proposal.neighbours
        neighbours = None if self.neighbours == "complete" or self.neighbours >= cohort_size - 1 else int(self.neighbours)
        pool = cohort_size if neighbours is None else min(cohort_size, neighbours + neighbours % 2 + 1)
        if isinstance(self.threshold, float):
            threshold = max(1, math.ceil(self.threshold * pool))
            if threshold <= pool // 2 and pool > 1:
                threshold = pool // 2 + 1
        else:
            threshold = min(int(self.threshold), pool)
        return threshold, neighbours
