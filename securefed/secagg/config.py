"""Public parameters of one secure-aggregation round, and a node's own minimums.

The coordinator proposes a :class:`RoundConfig`; every node checks it against
its :class:`ClientPolicy` before it advertises a key, so a coordinator cannot
talk a site into a round weaker than the site agreed to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from securefed.errors import InvalidParameter, RemoteProtocolError
from securefed.secagg.bounds import (
    ADVERSARIES,
    describe_probability,
    minimum_safe_threshold,
    resolve_colluders,
    sparse_failure_probability,
)

__all__ = ["CONTEXT_SIZE", "ClientPolicy", "RoundConfig"]

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
    """A site's minimums for any round it takes part in, and the adversary it defends against.

    ``max_colluders`` is how many corrupt nodes may work with the coordinator:
    a count, a fraction of the roster, or None for max(1, ceil(N/5)) where N
    is the node's own roster size. Against a ``"malicious"`` coordinator the
    node then insists on 2t > N + c for the complete graph; for the sparse
    graph it insists on a union-bound probability of at most
    2^-``security_bits`` that any neighbourhood holds enough colluders to break
    it, and before unmasking on 2T > N + c consistency signatures over its
    survivor list from the whole cohort (see :mod:`securefed.secagg.bounds`). ``"curious"`` assumes a coordinator that
    follows the protocol (t > c suffices); only choose it knowingly.
    ``min_threshold_fraction`` is an extra, older floor: t must exceed that
    fraction of the neighbourhood.

    ``min_participants`` is the site's participation floor: the fewest nodes
    whose inputs may make up a sum it helps to unmask. ``min_cohort`` bounds
    the cohort a round *starts* with; dropouts can shrink the survivors below
    it, and with two survivors each learns the other's input from the sum. The
    node checks the floor against the invited cohort (before it advertises),
    the key list (before it deals shares or trains) and, binding, the survivor
    list it is asked to sign: with fewer survivors it refuses to sign
    (``too-few-participants``) and so never reveals a share for that sum.
    0 means no floor beyond the threshold.
    """

    min_threshold: int = 2
    min_cohort: int = 2
    min_threshold_fraction: float = 0.5
    max_vector_length: int = 50_000_000
    max_colluders: int | float | None = None
    adversary: str = "malicious"
    allow_sparse_graph: bool = True
    min_neighbours: int = 0
    security_bits: int = 40
    min_participants: int = 0

    def __post_init__(self) -> None:
        if self.min_threshold < 1 or self.min_cohort < 1:
            raise InvalidParameter("policy minimums must be positive")
        if not 0 <= self.min_threshold_fraction < 1:
            raise InvalidParameter("min_threshold_fraction must be in [0, 1)")
        if type(self.max_vector_length) is not int or self.max_vector_length < 1:
            raise InvalidParameter("max_vector_length must be a positive integer")
        resolve_colluders(self.max_colluders, 1)  # type and range check
        if self.adversary not in ADVERSARIES:
            raise InvalidParameter(f"adversary must be one of {ADVERSARIES}, got {self.adversary!r}")
        if type(self.allow_sparse_graph) is not bool:
            raise InvalidParameter("allow_sparse_graph must be true or false")
        if type(self.min_neighbours) is not int or self.min_neighbours < 0:
            raise InvalidParameter("min_neighbours must be a non-negative integer")
        if type(self.security_bits) is not int or not 1 <= self.security_bits <= 256:
            raise InvalidParameter("security_bits must be an integer in 1..256")
        if type(self.min_participants) is not int or self.min_participants < 0:
            raise InvalidParameter(
                f"min_participants must be a non-negative integer (0: no floor), got {self.min_participants!r}"
            )

    def check_participants(self, count: int, what: str) -> None:
        """Raise :class:`RemoteProtocolError` (reason ``too-few-participants``) when ``count`` nodes, the
        most that can end up in the sum (``what`` says which list they are), fall below the floor."""
        if count < self.min_participants:
            raise RemoteProtocolError(
                f"round refused: {what} lists {count} nodes, below this site's participation floor of "
                f"{self.min_participants} (min_participants): a sum of so few inputs says too much about each",
                reason="too-few-participants",
            )

    def colluders(self, roster_size: int) -> int:
        """The colluder count this policy defends against, for a roster of ``roster_size`` members."""
        return resolve_colluders(self.max_colluders, roster_size)

    def consistency_quorum(self, roster_size: int) -> int:
        """How many valid consistency signatures over one survivor list a node needs before it reveals
        anything: T with 2T > N + c, so that every honest node answers for the same list."""
        return minimum_safe_threshold(roster_size, self.colluders(roster_size), self.adversary)

    def check(self, config: RoundConfig, roster_size: int | None = None) -> None:
        """Raise :class:`RemoteProtocolError` (reason ``weaker-than-policy``) naming what falls short.

        ``roster_size`` is N, the number of members in the node's own roster
        (at least the cohort size; defaults to it).
        """
        n, t = config.cohort_size, config.threshold
        population = max(n, roster_size or 0)
        c = self.colluders(population)
        problems = []
        if n < self.min_cohort:
            problems.append(f"cohort of {n} is below this site's minimum of {self.min_cohort}")
        if n < self.min_participants:
            problems.append(
                f"cohort of {n} can never reach this site's participation floor of {self.min_participants} (min_participants)"
            )
        if t < self.min_threshold:
            problems.append(f"threshold {t} is below this site's minimum of {self.min_threshold}")
        needed = math.floor(self.min_threshold_fraction * config.neighbourhood_size) + 1
        if self.min_threshold_fraction > 0 and t < needed:
            problems.append(
                f"threshold {t} does not exceed {self.min_threshold_fraction:g} of the "
                f"neighbourhood of {config.neighbourhood_size} (needs >= {needed})"
            )
        if config.vector_length > self.max_vector_length:
            problems.append(f"vector length {config.vector_length} exceeds this site's limit")
        k = config.degree
        if k is None:  # a complete graph
            safe = minimum_safe_threshold(population, c, self.adversary)
            if t < safe:
                rule = "t > c" if self.adversary == "curious" else f"2t > N + c = {population} + {c}"
                problems.append(
                    f"threshold {t} does not stop {c} colluding nodes (roster of {population}): needs {rule}, i.e. t >= {safe}"
                )
        elif not self.allow_sparse_graph:
            problems.append("this site does not take part in sparse-graph (SecAgg+) rounds")
        else:
            quorum = minimum_safe_threshold(population, c, self.adversary)
            if n < quorum:
                problems.append(
                    f"a cohort of {n} cannot gather the {quorum} consistent survivors that keep {c} colluders "
                    f"(roster of {population}) from showing nodes different survivor lists"
                )
            if k < self.min_neighbours:
                problems.append(f"{k} neighbours is below this site's minimum of {self.min_neighbours}")
            failure = sparse_failure_probability(n, k, t, c, self.adversary)
            if failure > Fraction(1, 1 << self.security_bits):
                problems.append(
                    f"with {k} neighbours and threshold {t}, {c} colluders break some neighbourhood "
                    f"with probability up to {describe_probability(failure)} (this site requires "
                    f"at most 2^-{self.security_bits})"
                )
        if problems:
            raise RemoteProtocolError("round refused: " + "; ".join(problems), reason="weaker-than-policy")
