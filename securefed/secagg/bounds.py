"""How many colluders a round withstands: the bounds every node checks for itself.

Theory of operation. The adversary is a coordinator that may deviate from
the protocol in any way, working with up to ``c`` corrupt nodes. Honest
nodes reveal, per peer, either the b-share (the peer survived) or the
s-share (it dropped), never both. The coordinator can still show two groups
of honest nodes different survivor lists ("split view"): group A reveals
target u's b-shares, group B its s-shares, and the colluders add their own
shares of u to both. It recovers u's input when both |A| + c >= t and
|B| + c >= t. A and B are disjoint honest share holders of u, so
|A| + |B| <= N - c, and the attack needs 2(t - c) <= N - c. Hence the rule:

    2t > N + c        (complete graph; N = every roster member who could hold a share)

The same counting, over the consistency signatures instead of the shares,
gives the rule that keeps every honest node in *one* view of the round: a
node reveals only after it has checked T valid signatures over its exact
survivor list from anywhere in the cohort, with 2T > N + c. Two honest
nodes answering for different lists would need 2(T - c) distinct honest
signers, more than the N - c there are. For the complete graph T = t.

For the sparse SecAgg+ graph the shares of u live in u's closed
neighbourhood of m = k + 1 nodes, and the threshold t counts there. With
the single view above, the coordinator can still learn the sums of separate
*components*: the honest survivors cut apart by colluders (whose masks it
knows) and by nodes it declares dropped. A node's own check (t survivors in
its neighbourhood) makes every learnable component hold at least t - X of
its honest neighbours, X the colluders in its neighbourhood. So the node
requires X < min(2t - m, t - 1) in every neighbourhood, except with
probability 2^-40: then no component is a single node (t - X >= 2), every
component holds at least m + 1 - t honest nodes, and no neighbourhood holds
enough colluders for a split view of its own. X is random because the graph
comes from randomness the coordinator cannot steer (see
:mod:`securefed.secagg.graph`): for a fixed honest target its k neighbours
are a uniform k-subset of the other n - 1 nodes, so X is hypergeometric. We
union-bound over the n possible targets and compute the tail *exactly* in
integer arithmetic.

A merely curious coordinator (it follows the protocol) needs only that the
colluders alone hold fewer than t shares: t > c for the complete graph, and
X < t - 1 per neighbourhood (no isolated node) for the sparse one.
"""

from __future__ import annotations

import math
from fractions import Fraction

from securefed.errors import InvalidParameter

__all__ = [
    "ADVERSARIES",
    "binomial_tail",
    "default_colluders",
    "describe_probability",
    "hypergeometric_tail",
    "minimum_safe_threshold",
    "resolve_colluders",
    "smallest_safe_threshold",
    "sparse_breaking_colluders",
    "sparse_failure_probability",
]

ADVERSARIES = ("malicious", "curious")


def default_colluders(roster_size: int) -> int:
    """max(1, ceil(N / 5)): the colluder count a node defends against unless its site says otherwise."""
    return max(1, math.ceil(roster_size / 5))


def resolve_colluders(setting: int | float | None, roster_size: int) -> int:
    """A policy's ``max_colluders`` (None, a count, or a fraction of the roster) as a count."""
    if type(roster_size) is not int or roster_size < 1:
        raise InvalidParameter("roster size must be a positive integer")
    if setting is None:
        return default_colluders(roster_size)
    if isinstance(setting, bool):
        raise InvalidParameter("max_colluders is a count, a fraction in [0, 1), or unset")
    if isinstance(setting, int):
        if setting < 0:
            raise InvalidParameter("max_colluders must not be negative")
        return setting
    if isinstance(setting, float) and 0.0 <= setting < 1.0:
        # The fraction as written (0.07, not the float nearest it), so 0.07 of 100 is 7, not 8;
        # any positive fraction counts at least one colluder.
        return math.ceil(Fraction(repr(setting)) * roster_size)
    raise InvalidParameter("max_colluders is a count, a fraction in [0, 1), or unset")


def minimum_safe_threshold(population: int, colluders: int, adversary: str = "malicious") -> int:
    """Smallest t with 2t > N + c (malicious) or t > c (curious), for the complete graph."""
    if adversary == "curious":
        return colluders + 1
    return (population + colluders) // 2 + 1


def hypergeometric_tail(population: int, successes: int, draws: int, at_least: int) -> Fraction:
    """P[X >= at_least] for X ~ Hypergeometric (drawing ``draws`` of ``population``), exactly."""
    for name, value in (("population", population), ("successes", successes), ("draws", draws), ("at_least", at_least)):
        if type(value) is not int:
            raise InvalidParameter(f"{name} must be an integer")
    if population < 0 or not 0 <= draws <= population:
        raise InvalidParameter("need 0 <= draws <= population")
    successes = max(0, min(successes, population))
    if at_least <= 0:
        return Fraction(1)
    high = min(successes, draws)
    if at_least > high:
        return Fraction(0)
    failures = population - successes
    total = sum(math.comb(successes, x) * math.comb(failures, draws - x) for x in range(at_least, high + 1))
    return Fraction(total, math.comb(population, draws))


def binomial_tail(m: int, p: float, at_least: int) -> float:
    """P[Binomial(m, p) >= at_least], summed in log space (a liveness estimate, not a security bound)."""
    if at_least <= 0:
        return 1.0
    if at_least > m or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lgm = math.lgamma(m + 1)
    total = 0.0
    for i in range(at_least, m + 1):
        total += math.exp(lgm - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * log_p + (m - i) * log_q)
    return min(total, 1.0)


def sparse_breaking_colluders(degree: int, threshold: int, adversary: str = "malicious") -> int:
    """How many colluders in one closed neighbourhood (k + 1 nodes) break it: min(2t - m, t - 1), or t - 1 if curious."""
    m = degree + 1
    if adversary == "curious":
        return threshold - 1
    return min(2 * threshold - m, threshold - 1)


def sparse_failure_probability(
    cohort_size: int, degree: int, threshold: int, colluders: int, adversary: str = "malicious"
) -> Fraction:
    """Union bound, over all n possible targets, on a neighbourhood holding enough colluders to break it.

    ``degree`` is k (even, k + 1 <= n); a target's closed neighbourhood has k + 1 nodes. Breaking
    needs X >= :func:`sparse_breaking_colluders` colluders among its k neighbours.
    """
    n, k, t = cohort_size, degree, threshold
    if not 1 <= k < n:
        raise InvalidParameter("degree must be in 1..n-1 for a sparse graph")
    need = sparse_breaking_colluders(k, t, adversary)
    corrupt = min(colluders, n - 1)
    return min(Fraction(1), n * hypergeometric_tail(n - 1, corrupt, k, need))


def smallest_safe_threshold(
    cohort_size: int,
    degree: int | None,
    colluders: int,
    roster_size: int | None = None,
    adversary: str = "malicious",
    security_bits: int = 40,
) -> int:
    """The smallest threshold a node with this adversary accepts (may exceed the neighbourhood:
    then no threshold is safe for this graph)."""
    population = max(cohort_size, roster_size or 0)
    if degree is None:
        return minimum_safe_threshold(population, colluders, adversary)
    if cohort_size < minimum_safe_threshold(population, colluders, adversary):
        return degree + 2  # the consistency quorum cannot be reached with this cohort: nothing is safe
    target = Fraction(1, 1 << security_bits)
    for t in range(1, degree + 2):
        if sparse_failure_probability(cohort_size, degree, t, colluders, adversary) <= target:
            return t
    return degree + 2


def describe_probability(probability: Fraction) -> str:
    """'2^-41.3' style, for logs and refusals."""
    if probability <= 0:
        return "0"
    exponent = math.log2(probability.numerator) - math.log2(probability.denominator)
    return f"2^{exponent:.1f}"
