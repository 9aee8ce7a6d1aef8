"""Public parameters of one secure-aggregation round, and a node's own minimums.

The coordinator proposes a :class:`RoundConfig`; every node checks it against
its :class:`ClientPolicy` before it advertises a key, so a coordinator cannot
talk a site into a round weaker than the site agreed to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from securefed.errors import InvalidParameter, RemoteProtocolError

__all__ = ["CONTEXT_SIZE", "RoundConfig", "ClientPolicy"]

CONTEXT_SIZE = 32
MAX_COHORT = 0xFFFF


@dataclass(frozen=True)
class RoundConfig:
    """What every participant of a round agrees on.

    ``cohort_size`` nodes take ids 1..n. ``neighbours`` is None for the
    complete graph, or k for a k-regular SecAgg+ graph; ``threshold`` then
    counts within each closed neighbourhood (a node and its k neighbours).
    ``context`` is a 32-byte hash of the global model and task configuration
    the node trained on: it is bound into every signature and derived key.
    """

    task: str
    round_id: int
    cohort_size: int
    threshold: int
    vector_length: int
    context: bytes
    neighbours: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise InvalidParameter("task must be a non-empty string")
        if type(self.round_id) is not int or not 0 <= self.round_id < 1 << 63:
            raise InvalidParameter("round_id must be a non-negative integer")
        if type(self.cohort_size) is not int or not 1 <= self.cohort_size <= MAX_COHORT:
            raise InvalidParameter(f"cohort_size must be an integer in 1..{MAX_COHORT}")
        if type(self.vector_length) is not int or self.vector_length < 1:
            raise InvalidParameter("vector_length must be a positive integer")
        if not isinstance(self.context, bytes) or len(self.context) != CONTEXT_SIZE:
            raise InvalidParameter(f"context must be {CONTEXT_SIZE} bytes (a hash of model and task)")
        if self.neighbours is not None and (type(self.neighbours) is not int or self.neighbours < 1):
            raise InvalidParameter("neighbours must be None (complete graph) or a positive integer")
        if type(self.threshold) is not int or not 1 <= self.threshold <= self.neighbourhood_size:
            raise InvalidParameter(
                f"threshold must be in 1..{self.neighbourhood_size} (the neighbourhood size), got {self.threshold}"
            )

    @property
    def degree(self) -> int | None:
        """Neighbours per node in the sparse graph (k rounded up to even), or None if complete."""
        if self.neighbours is None:
            return None
        even = self.neighbours + self.neighbours % 2
        return None if even >= self.cohort_size - 1 else even

    @property
    def is_complete_graph(self) -> bool:
        return self.degree is None

    @property
    def neighbourhood_size(self) -> int:
        """A node plus its neighbours: the pool its secrets are shared over."""
        degree = self.degree
        return self.cohort_size if degree is None else degree + 1

    @property
    def ids(self) -> range:
        return range(1, self.cohort_size + 1)


@dataclass(frozen=True)
class ClientPolicy:
    """A site's minimums for any round it takes part in.

    ``min_threshold_fraction`` is the fraction of the neighbourhood the
    threshold must exceed; 0.5 is the semi-malicious bound for an honest
    majority (t > (n + γn)/2 needs more when γ > 0: raise it accordingly).
    """

    min_threshold: int = 2
    min_cohort: int = 2
    min_threshold_fraction: float = 0.5
    max_vector_length: int = 50_000_000

    def __post_init__(self) -> None:
        if self.min_threshold < 1 or self.min_cohort < 1:
            raise InvalidParameter("policy minimums must be positive")
        if not 0 <= self.min_threshold_fraction < 1:
            raise InvalidParameter("min_threshold_fraction must be in [0, 1)")
        if type(self.max_vector_length) is not int or self.max_vector_length < 1:
            raise InvalidParameter("max_vector_length must be a positive integer")

    def check(self, config: RoundConfig) -> None:
        """Raise :class:`RemoteProtocolError` (reason ``weaker-than-policy``) naming what falls short."""
        problems = []
        if config.cohort_size < self.min_cohort:
            problems.append(f"cohort of {config.cohort_size} is below this site's minimum of {self.min_cohort}")
        if config.threshold < self.min_threshold:
            problems.append(f"threshold {config.threshold} is below this site's minimum of {self.min_threshold}")
        needed = math.floor(self.min_threshold_fraction * config.neighbourhood_size) + 1
        if self.min_threshold_fraction > 0 and config.threshold < needed:
            problems.append(
                f"threshold {config.threshold} does not exceed {self.min_threshold_fraction:g} of the "
                f"neighbourhood of {config.neighbourhood_size} (needs >= {needed})"
            )
        if config.vector_length > self.max_vector_length:
            problems.append(f"vector length {config.vector_length} exceeds this site's limit")
        if problems:
            raise RemoteProtocolError("round refused: " + "; ".join(problems), reason="weaker-than-policy")
