"""The neighbour graph: who shares secrets and pairwise masks with whom.

Theory of operation. Bonawitz et al. pair every node with every other (the
complete graph): O(n) work and traffic per node. Bell et al. (SecAgg+) pair
each node with only k = O(log n) others on a random k-regular graph and count
the threshold within each node's neighbourhood. We build a Harary graph: the
members are placed on a ring in a pseudorandom order and each is joined to
the k/2 nearest positions on either side (k is rounded up to even).

The graph is built over the **whole invited cohort** (ids 1..n), never over
the subset that happened to advertise: a node that never advertises is a
missing vertex, not a reason to draw a different graph. The ring order comes
from a seed the coordinator cannot steer, made by commit and reveal: each
node commits to 32 random bytes inside its signed advertisement, the
coordinator fixes the key list, and only then do nodes reveal; the seed is a
hash over every reveal of the key list (:func:`~securefed.secagg.transcript.graph_seed`).
The coordinator picks the key list before it has seen any reveal, and a node's
own reveal (unknown to the coordinator until the node has the key list in
hand) goes into the seed that node uses, so nothing it relays or withholds
lets it choose a graph; a missing reveal aborts the round instead of
producing another seed. Grinding therefore costs one whole aborted round per
try, and k is sized so that one try fails with probability at most 2^-40
(:func:`propose_parameters`, :mod:`securefed.secagg.bounds`). The permutation
is an argsort of AES-CTR output keyed by the seed (no non-cryptographic RNG).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from securefed.crypto.prg import expand_mask
from securefed.errors import InvalidParameter
from securefed.secagg.bounds import (
    ADVERSARIES,
    binomial_tail,
    describe_probability,
    minimum_safe_threshold,
    resolve_colluders,
    sparse_breaking_colluders,
)

__all__ = ["GraphParameters", "NeighbourGraph", "propose_parameters"]


@dataclass(frozen=True)
class NeighbourGraph:
    """Closed neighbourhoods (each includes the node itself) over a set of members."""

    members: tuple[int, ...]
    degree: int | None
    ring: tuple[int, ...] = field(repr=False)

    @classmethod
    def build(cls, members: Iterable[int], degree: int | None, seed: bytes) -> NeighbourGraph:
        """Complete graph if ``degree`` is None or covers everyone, else a Harary ring over a seeded order."""
        ordered = tuple(sorted(set(members)))
        m = len(ordered)
        if degree is not None and (type(degree) is not int or degree < 1):
            raise InvalidParameter("degree must be None or a positive integer")
        effective = None if degree is None else degree + degree % 2
        if effective is None or effective >= m - 1:
            return cls(ordered, None, ordered)
        keys = expand_mask(seed, 2 * m).view("<u8")
        ring = tuple(ordered[i] for i in np.argsort(keys, kind="stable"))
        return cls(ordered, effective, ring)

    @property
    def is_complete(self) -> bool:
        return self.degree is None

    def neighbours(self, node: int) -> frozenset[int]:
        """``node`` and the members it is joined to."""
        if self.degree is None:
            if node not in self._member_set:
                raise InvalidParameter(f"{node} is not a member of this graph")
            return self._member_set
        position = self._positions.get(node)
        if position is None:
            raise InvalidParameter(f"{node} is not a member of this graph")
        m = len(self.ring)
        half = self.degree // 2
        return frozenset(self.ring[(position + offset) % m] for offset in range(-half, half + 1))

    def all_neighbourhoods(self) -> dict[int, frozenset[int]]:
        return {node: self.neighbours(node) for node in self.members}

    @property
    def _member_set(self) -> frozenset[int]:
        cached = self.__dict__.get("_members_cache")
        if cached is None:
            cached = frozenset(self.members)
            object.__setattr__(self, "_members_cache", cached)
        return cached

    @property
    def _positions(self) -> dict[int, int]:
        cached = self.__dict__.get("_positions_cache")
        if cached is None:
            cached = {node: i for i, node in enumerate(self.ring)}
            object.__setattr__(self, "_positions_cache", cached)
        return cached


# --- parameter selection ----------------------------------------------------


@dataclass(frozen=True)
class GraphParameters:
    """A proposal: ``neighbours`` (None = complete graph) and ``threshold``, with the reasoning.

    ``colluders`` is the count it was sized for; ``failure_bound`` the proven
    upper bound on the probability that some neighbourhood can be broken by
    them (0 for the complete graph, where the bound is exact).
    """

    neighbours: int | None
    threshold: int
    explanation: str
    colluders: int = 0
    failure_bound: Fraction = Fraction(0)

    def neighbourhood_size(self, cohort_size: int) -> int:
        """Share holders per node: k + 1 for the sparse graph, the cohort for the complete one."""
        return cohort_size if self.neighbours is None else self.neighbours + 1


def _hypergeometric_suffix(population: int, successes: int, draws: int) -> tuple[list[int], int]:
    """Numerators of P[X >= a] for a = 0..draws+1 (suffix sums of the pmf), and the common denominator."""
    successes = max(0, min(successes, population))
    failures = population - successes
    pmf = [
        math.comb(successes, x) * math.comb(failures, draws - x) if x <= successes and draws - x <= failures else 0
        for x in range(draws + 1)
    ]
    suffix = [0] * (draws + 2)
    for x in range(draws, -1, -1):
        suffix[x] = suffix[x + 1] + pmf[x]
    return suffix, math.comb(population, draws)


def propose_parameters(
    n: int,
    dropout_rate: float,
    colluders: int | float | None = None,
    *,
    roster_size: int | None = None,
    adversary: str = "malicious",
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> GraphParameters:
    """Propose (k, t) for a cohort of ``n`` nodes that withstands ``colluders`` corrupt nodes.

    ``colluders`` is a count, a fraction of the roster, or None for the nodes'
    default max(1, ceil(N/5)); ``roster_size`` is N (defaults to n).

    Sparse graph: the smallest even k (with 2(k + 1) < n) and the smallest t
    such that, union-bounded over the n neighbourhoods, the probability that
    some closed neighbourhood holds enough colluders to break it
    (X >= min(2t - (k + 1), t - 1); see :mod:`securefed.secagg.bounds`) is at
    most 2^-security_bits, computed exactly from the hypergeometric
    distribution, while dropouts (Binomial(k + 1, δ)) leave fewer than t of a
    neighbourhood with probability at most 2^-correctness_bits / n, and
    floor((N + c)/2) + 1 nodes (the consistency quorum) survive likewise.
    Otherwise the complete graph with the exact bound 2t > N + c (t > c when
    curious), if t fits under the expected survivors (1 - δ)n.
    """
    if type(n) is not int or n < 1:
        raise InvalidParameter("n must be a positive integer")
    if not 0 <= dropout_rate < 1:
        raise InvalidParameter("dropout_rate must be in [0, 1)")
    if adversary not in ADVERSARIES:
        raise InvalidParameter(f"adversary must be one of {ADVERSARIES}")
    for name, bits in (("security_bits", security_bits), ("correctness_bits", correctness_bits)):
        if type(bits) is not int or not 1 <= bits <= 256:
            raise InvalidParameter(f"{name} must be an integer in 1..256")
    population = n if roster_size is None else roster_size
    if type(population) is not int or population < n:
        raise InvalidParameter("roster_size must be an integer of at least n")
    c = resolve_colluders(colluders, population)
    target = Fraction(1, 1 << security_bits)
    liveness_target = 2.0**-correctness_bits / n
    corrupt = min(c, n - 1)
    # Every round needs one view of the survivors backed by 2T > N + c signatures (bounds.py),
    # so a sparse graph is only worth it if that many nodes are expected to survive.
    consistent = minimum_safe_threshold(population, c, adversary)
    global_live = n >= consistent and binomial_tail(n, dropout_rate, n - consistent + 1) <= 2.0**-correctness_bits
    for k in range(2, n - 1, 2) if global_live else ():
        m = k + 1
        if 2 * m >= n:
            break  # the sparse graph saves little from here on; the complete graph's exact bound is tighter
        suffix, denominator = _hypergeometric_suffix(n - 1, corrupt, k)
        for t in range(1, m + 1):
            need = sparse_breaking_colluders(k, t, adversary)
            if need > k:
                failure = Fraction(0)
            else:
                failure = min(Fraction(1), Fraction(n * suffix[max(need, 0)], denominator))
            if failure <= target:
                break
        else:
            continue
        # liveness: at least t of m must survive, i.e. dropped D <= m - t
        if binomial_tail(m, dropout_rate, m - t + 1) > liveness_target:
            continue
        return GraphParameters(
            k,
            t,
            f"k={k}, t={t}: {c} colluders (of a roster of {population}) break some neighbourhood with "
            f"probability <= {describe_probability(failure)} (target 2^-{security_bits}; exact hypergeometric "
            f"tail, union bound over n={n}); every round needs {consistent} consistent survivors; "
            f"liveness failure <= 2^-{correctness_bits}/n at dropout rate {dropout_rate:g}",
            c,
            failure,
        )
    t = minimum_safe_threshold(population, c, adversary)
    survivors = math.floor((1 - dropout_rate) * n)
    if t > n or t > survivors:
        raise InvalidParameter(
            f"no threshold works for n={n}: withstanding {c} colluders from a roster of {population} needs "
            f"t >= {t}, but only {min(n, survivors)} nodes are expected to survive at dropout rate {dropout_rate:g}"
        )
    rule = "t > c" if adversary == "curious" else f"2t > N + c = {population} + {c}"
    return GraphParameters(
        None,
        t,
        f"complete graph, t={t}: {rule} against a {adversary} coordinator with {c} colluders; "
        f"tolerates {n - t} dropouts ({survivors} expected to survive)",
        c,
        Fraction(0),
    )
