"""The neighbour graph: who shares secrets and pairwise masks with whom.

Theory of operation. Bonawitz et al. pair every node with every other (the
complete graph): O(n) work and traffic per node. Bell et al. (SecAgg+) pair
each node with only k = O(log n) others on a random k-regular graph and count
the threshold within each node's neighbourhood. We build a Harary graph: the
members are placed on a ring in a pseudorandom order and each is joined to
the k/2 nearest positions on either side (k is rounded up to even).

The order comes from a seed that every party derives from the round's
*public* data — the signed key advertisements of U1 — so the coordinator
cannot choose the graph alone: it cannot forge an honest node's signed keys,
and nodes sign the seed again in the consistency round, so parties that were
shown different key lists do not go on together. The permutation is an
argsort of AES-CTR output keyed by the seed (no non-cryptographic RNG).

:func:`propose_parameters` turns a cohort size, an expected dropout rate and
an assumed fraction of corrupt nodes into (k, t) using the published bounds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from securefed.crypto._encoding import encode_fields
from securefed.crypto.prg import expand_mask
from securefed.errors import InvalidParameter
from securefed.secagg.messages import AdvertiseKeys

__all__ = ["NeighbourGraph", "graph_seed", "GraphParameters", "propose_parameters"]

_GRAPH_DOMAIN = b"securefed/graph/v1"


def graph_seed(task: str, round_id: int, context: bytes, entries: Sequence[AdvertiseKeys]) -> bytes:
    """SHA-256 over the round and every signed advertisement, in id order."""
    digest = hashlib.sha256(_GRAPH_DOMAIN + encode_fields(task, round_id, context))
    for entry in sorted(entries, key=lambda e: e.sender):
        digest.update(encode_fields(entry.sender, entry.c_pk, entry.s_pk, entry.signature))
    return digest.digest()


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
    """A proposal: ``neighbours`` (None = complete graph) and ``threshold``, with the reasoning."""

    neighbours: int | None
    threshold: int
    explanation: str


def _binomial_tail(m: int, p: float, at_least: int) -> float:
    """P[Binomial(m, p) >= at_least], summed in log space for stability."""
    if at_least <= 0:
        return 1.0
    if at_least > m:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lgm = math.lgamma(m + 1)
    total = 0.0
    for i in range(at_least, m + 1):
        total += math.exp(lgm - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * log_p + (m - i) * log_q)
    return min(total, 1.0)


def _complete_threshold(n: int, corrupt: float, threat: str) -> int:
    if threat == "curious":
        return math.floor(corrupt * n) + 1  # t > γn
    return math.floor((n + corrupt * n) / 2) + 1  # t > (n + γn) / 2


def propose_parameters(
    n: int,
    dropout_rate: float,
    corrupt_fraction: float,
    threat: str = "semi-malicious",
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> GraphParameters:
    """Propose (k, t) for ``n`` nodes.

    Complete graph bounds (Bonawitz et al. 2017; Bell et al. 2020): a curious
    coordinator needs t > γn, an actively malicious one t > (n + γn)/2, and
    the round survives dropouts only if t <= (1 - δ)n. For a sparse graph the
    same bounds must hold inside every neighbourhood of k + 1 nodes; we model
    corrupt and dropped counts in a neighbourhood as Binomial(k + 1, γ) and
    Binomial(k + 1, δ), union-bound over the n neighbourhoods, and take the
    smallest even k whose failure probability is at most 2^-security_bits
    (privacy) and 2^-correctness_bits (liveness). If no k below n/2
    qualifies, the complete graph (with its exact bounds) is proposed.
    """
    if type(n) is not int or n < 1:
        raise InvalidParameter("n must be a positive integer")
    if not 0 <= dropout_rate < 1 or not 0 <= corrupt_fraction < 1:
        raise InvalidParameter("dropout_rate and corrupt_fraction must be in [0, 1)")
    if threat not in ("curious", "semi-malicious"):
        raise InvalidParameter("threat must be 'curious' or 'semi-malicious'")
    for name, bits in (("security_bits", security_bits), ("correctness_bits", correctness_bits)):
        if type(bits) is not int or not 1 <= bits <= 256:
            raise InvalidParameter(f"{name} must be an integer in 1..256")
    security_target = 2.0**-security_bits / n
    liveness_target = 2.0**-correctness_bits / n
    for k in range(2, n - 1, 2):
        m = k + 1
        if 2 * m >= n:
            break  # the sparse graph saves little from here on; the complete graph's exact bound is tighter
        for t in range(1, m + 1):
            # privacy: corrupt count C must stay below t (curious) or below 2t - m (semi-malicious)
            bad = t if threat == "curious" else 2 * t - m
            if bad <= 0 or _binomial_tail(m, corrupt_fraction, bad) > security_target:
                continue
            # liveness: at least t of m must survive, i.e. dropped D <= m - t
            if _binomial_tail(m, dropout_rate, m - t + 1) > liveness_target:
                break  # larger t only makes liveness worse
            return GraphParameters(
                k,
                t,
                f"k={k}, t={t}: per-neighbourhood privacy failure <= 2^-{security_bits}/n, "
                f"liveness failure <= 2^-{correctness_bits}/n (binomial tails, union bound over n={n})",
            )
    t = _complete_threshold(n, corrupt_fraction, threat)
    survivors = math.floor((1 - dropout_rate) * n)
    if t > survivors:
        raise InvalidParameter(
            f"no threshold works for n={n}: {threat} security needs t >= {t} but with dropout rate "
            f"{dropout_rate:g} only {survivors} nodes are expected to survive"
        )
    return GraphParameters(
        None,
        t,
        f"complete graph, t={t}: {threat} bound with γ={corrupt_fraction:g}, liveness t <= (1-δ)n = {survivors}",
    )
