"""The colluder bounds of :mod:`securefed.secagg.bounds`, checked against numbers recomputed here.

Every expected value in this file comes from something other than the code
under test: ``scipy.stats`` (hypergeometric and binomial tails), brute-force
enumeration (all k-subsets of a tiny population; every split of the honest
share holders of a target into the two groups a split-view coordinator needs;
every set of honest neighbours it could declare dropped), exact decimal
arithmetic for fractions of a roster, or a number written out by hand. The
adversary is the one the docs state: a coordinator that may deviate from the
protocol, working with up to c colluding nodes (c from the policy).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from functools import cache

import numpy as np
import pytest
from scipy import stats

from securefed.errors import InvalidParameter, RemoteProtocolError
from securefed.secagg import ClientPolicy, RoundConfig, propose_parameters
from securefed.secagg.bounds import (
    ADVERSARIES,
    binomial_tail,
    default_colluders,
    describe_probability,
    hypergeometric_tail,
    minimum_safe_threshold,
    resolve_colluders,
    smallest_safe_threshold,
    sparse_breaking_colluders,
    sparse_failure_probability,
)

CONTEXT = bytes(range(32))
TARGET_40 = 2.0**-40
REL = 1e-9  # scipy is a float computation; the code's is exact


# --- independent references ---------------------------------------------------------


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def expected_colluders(setting: int | float | None, roster: int) -> int:
    """The documented meaning of ``max_colluders``: a float is a decimal fraction of the roster, rounded up."""
    if setting is None:
        return max(1, ceil_div(roster, 5))
    if isinstance(setting, int):
        return setting
    return math.ceil(Fraction(repr(setting)) * roster)  # repr: the decimal the user wrote, not the binary float


@cache
def achievable_splits(honest: int) -> frozenset[tuple[int, int]]:
    """Every (|A|, |B|) for disjoint groups A, B of ``honest`` nodes, by enumerating each node's side."""
    return frozenset((sides.count(1), sides.count(2)) for sides in itertools.product((0, 1, 2), repeat=honest))


def split_view_breaks(population: int, colluders: int, threshold: int, adversary: str = "malicious") -> bool:
    """Can the coordinator recover an honest target's input?

    The target's shares are held by ``population`` nodes, ``colluders`` of them
    corrupt. Group A (told the target survived) reveals b-shares, group B (told
    it dropped) reveals s-shares; the colluders add theirs to both. A curious
    coordinator shows everyone one view, so one group is empty.
    """
    honest = population - colluders
    for a, b in achievable_splits(honest):
        if adversary == "curious" and a and b:
            continue
        if a + colluders >= threshold and b + colluders >= threshold:
            return True
    return False


def brute_force_safe_threshold(population: int, colluders: int, adversary: str = "malicious") -> int:
    """The smallest t in 1..N+1 for which no split view works (t = N + 1 never breaks)."""
    for t in range(1, population + 2):
        if not split_view_breaks(population, colluders, t, adversary):
            return t
    raise AssertionError("unreachable: t = N + 1 cannot be broken")


def hypergeom_tail_scipy(population: int, successes: int, draws: int, at_least: int) -> float:
    """P[X >= at_least], X ~ HG(population, successes, draws), from scipy."""
    return float(stats.hypergeom.sf(at_least - 1, population, successes, draws))


def hypergeom_tail_brute(population: int, successes: int, draws: int, at_least: int) -> Fraction:
    """The same, by listing every ``draws``-subset of ``population`` items (the first ``successes`` marked)."""
    subsets = list(itertools.combinations(range(population), draws))
    hits = sum(1 for subset in subsets if sum(1 for item in subset if item < successes) >= at_least)
    return Fraction(hits, len(subsets))


def can_be_isolated(degree: int, corrupt: int, threshold: int) -> bool:
    """Can the coordinator leave an honest target with no honest neighbour among the survivors it lists,
    while the target's own check (t survivors in its closed neighbourhood) still passes? Then the
    target's masked input is unmasked on its own: the colluders know their pairwise masks, the
    declared-dropped neighbours' masks are removed via their s-shares, and its b is reconstructed."""
    honest_neighbours = degree - corrupt
    for declared_alive in itertools.chain.from_iterable(
        itertools.combinations(range(honest_neighbours), size) for size in range(honest_neighbours + 1)
    ):
        survivors_in_hood = 1 + corrupt + len(declared_alive)  # the target itself, the colluders, the listed
        if survivors_in_hood >= threshold and not declared_alive:
            return True
    return False


def neighbourhood_breaks(degree: int, corrupt: int, threshold: int, adversary: str = "malicious") -> bool:
    """One closed neighbourhood of k + 1 nodes with ``corrupt`` colluding neighbours: a split view of the
    target's shares, or an isolated target."""
    return split_view_breaks(degree + 1, corrupt, threshold, adversary) or can_be_isolated(degree, corrupt, threshold)


def sparse_failure_brute(n: int, k: int, t: int, c: int, adversary: str = "malicious") -> Fraction:
    """Union bound over n targets: an honest target's k neighbours are a uniform k-subset of the other
    n - 1 nodes, ``c`` of which collude; list every such subset and run the brute-force searches on the
    closed neighbourhood (k + 1 holders, X of them corrupt)."""
    others = n - 1
    corrupt = min(c, others)
    subsets = list(itertools.combinations(range(others), k))
    broken = sum(1 for subset in subsets if neighbourhood_breaks(k, sum(1 for v in subset if v < corrupt), t, adversary))
    return min(Fraction(1), n * Fraction(broken, len(subsets)))


def breaking_need(k: int, t: int, adversary: str = "malicious") -> int:
    """The documented count: X >= min(2t - (k + 1), t - 1) colluding neighbours break (t - 1 if curious).
    Checked against the brute-force searches in test_breaking_colluders_matches_brute_force."""
    return t - 1 if adversary == "curious" else min(2 * t - (k + 1), t - 1)


def sparse_failure_scipy(n: int, k: int, t: int, c: int, adversary: str = "malicious") -> float:
    return min(1.0, n * hypergeom_tail_scipy(n - 1, min(c, n - 1), k, breaking_need(k, t, adversary)))


def privacy_tails_scipy(n: int, k: int, c: int, adversary: str = "malicious") -> np.ndarray:
    """Union-bounded failure probability for t = 1..k+1 (index t - 1), one scipy call per k."""
    need = np.array([breaking_need(k, t, adversary) for t in range(1, k + 2)])
    tails = stats.hypergeom.sf(need - 1, n - 1, min(c, n - 1), k)
    return np.minimum(1.0, n * tails)


def liveness_scipy(m: int, dropout: float, t: int) -> float:
    """P[more than m - t of m drop] for Binomial(m, dropout) dropouts."""
    return float(stats.binom.sf(m - t, m, dropout))


def reference_proposal(
    n: int, dropout: float, c: int, population: int, adversary: str = "malicious"
) -> tuple[int | None, int] | None:
    """The documented selection rule, recomputed: if the consistency quorum T (2T > N + c) survives
    Binomial(n, dropout) dropouts except with probability 2^-20, the smallest even k (2(k+1) < n)
    admitting a t with privacy <= 2^-40 and liveness <= 2^-20 / n, and the smallest such t; else the
    complete graph's closed form; None when that cannot survive the expected dropouts."""
    quorum = c + 1 if adversary == "curious" else (population + c) // 2 + 1
    sparse_possible = quorum <= n and float(stats.binom.sf(n - quorum, n, dropout)) <= 2.0**-20 * (1 + REL)
    for k in range(2, n if sparse_possible else 0, 2):
        m = k + 1
        if 2 * m >= n:
            break
        privacy = privacy_tails_scipy(n, k, c, adversary)
        for t in range(1, m + 1):
            if privacy[t - 1] <= TARGET_40 * (1 + REL) and liveness_scipy(m, dropout, t) <= 2.0**-20 / n * (1 + REL):
                return k, t
    t = c + 1 if adversary == "curious" else (population + c) // 2 + 1
    if t > n or t > math.floor((1 - dropout) * n):
        return None
    return None, t


# --- default_colluders and resolve_colluders ----------------------------------------------


@pytest.mark.parametrize(
    ("roster", "expected"),
    [(1, 1), (2, 1), (4, 1), (5, 1), (6, 2), (9, 2), (10, 2), (11, 3), (20, 4), (21, 5), (100, 20), (1000, 200)],
)
def test_default_colluders_is_a_fifth_rounded_up_and_at_least_one(roster: int, expected: int) -> None:
    assert default_colluders(roster) == expected
    assert resolve_colluders(None, roster) == expected


def test_default_colluders_over_a_range() -> None:
    for roster in range(1, 5000):
        assert default_colluders(roster) == max(1, ceil_div(roster, 5)), roster


@pytest.mark.parametrize(("count", "roster"), [(0, 1), (0, 10), (1, 10), (7, 10), (10, 10), (50, 10), (200, 1000)])
def test_a_count_is_taken_as_it_is(count: int, roster: int) -> None:
    # A count above the roster is the site's choice; it makes every round unsafe (tested below).
    assert resolve_colluders(count, roster) == count


@pytest.mark.parametrize(
    ("fraction", "roster", "expected"),
    [
        (0.0, 10, 0),
        (0.0, 1000, 0),
        (0.05, 1000, 50),
        (0.1, 10, 1),
        (0.1, 1000, 100),
        (0.1, 11, 2),  # 1.1 rounds up
        (0.2, 1000, 200),
        (0.2, 5, 1),
        (0.2, 6, 2),  # 1.2 rounds up
        (0.07, 100, 7),  # 0.07 * 100 is 7.000000000000001 in binary floating point: still 7
        (0.29, 100, 29),  # ... and 0.29 * 100 is 28.999999999999996: still 29
        (0.57, 100, 57),
        (0.3, 10, 3),
        (0.01, 1, 1),
        (0.999, 1000, 999),
        (0.5, 65535, 32768),
    ],
)
def test_a_fraction_of_the_roster_rounds_up(fraction: float, roster: int, expected: int) -> None:
    assert expected == expected_colluders(fraction, roster)  # the hand-written value is the decimal one
    assert resolve_colluders(fraction, roster) == expected


def test_fractions_with_up_to_three_decimals_match_exact_decimal_rounding() -> None:
    for thousandths in range(0, 1000, 7):
        fraction = thousandths / 1000
        for roster in (1, 3, 7, 10, 99, 100, 1000, 4097, 65535):
            assert resolve_colluders(fraction, roster) == expected_colluders(fraction, roster), (fraction, roster)


@pytest.mark.parametrize(
    "setting",
    [True, False, -1, -100, 1.0, 1.5, -0.1, -0.0001, float("nan"), float("inf"), "2", "0.1", Fraction(1, 5), 2j, [1]],
    ids=repr,
)
def test_a_bad_colluder_setting_is_refused(setting: object) -> None:
    with pytest.raises(InvalidParameter):
        resolve_colluders(setting, 10)  # type: ignore[arg-type]


@pytest.mark.parametrize("roster", [0, -1, 1.0, 10.0, True, None, "10"], ids=repr)
def test_a_bad_roster_size_is_refused(roster: object) -> None:
    for setting in (None, 3, 0.1):
        with pytest.raises(InvalidParameter):
            resolve_colluders(setting, roster)  # type: ignore[arg-type]


# --- the complete-graph rule, 2t > N + c, by brute-force split-view search -----------------


@pytest.mark.parametrize("adversary", ADVERSARIES)
def test_minimum_safe_threshold_matches_a_brute_force_split_view_search(adversary: str) -> None:
    checked = 0
    for population in range(1, 12):
        for colluders in range(0, population + 1):
            expected = brute_force_safe_threshold(population, colluders, adversary)
            assert minimum_safe_threshold(population, colluders, adversary) == expected, (population, colluders)
            # ... and every threshold from there up is safe, every one below is not.
            for t in range(1, population + 1):
                assert split_view_breaks(population, colluders, t, adversary) is (t < expected)
            checked += 1
    assert checked == sum(range(2, 13))


@pytest.mark.parametrize(
    ("population", "colluders", "expected"),
    [
        (5, 1, 4),  # the issue: t=3 of 5 falls to one colluder
        (9, 2, 6),  # t=5 of 9 falls to two
        (10, 0, 6),  # no colluders: a strict majority
        (10, 1, 6),
        (10, 2, 7),  # the issue: t=6 of 10 falls to two colluders
        (11, 3, 8),  # t=6 of 11 falls to three
        (20, 4, 13),
        (100, 20, 61),
        (1000, 200, 601),
        (3, 3, 4),  # every holder corrupt: no threshold within the cohort is safe
    ],
)
def test_minimum_safe_threshold_known_values(population: int, colluders: int, expected: int) -> None:
    # 2t > N + c written out: t = floor((N + c) / 2) + 1.
    assert 2 * expected > population + colluders >= 2 * (expected - 1)
    assert minimum_safe_threshold(population, colluders) == expected
    assert minimum_safe_threshold(population, colluders, "curious") == colluders + 1


def test_the_issue_attack_works_exactly_below_the_bound() -> None:
    # n=10, t=6, c=2: honest holders 8 split 4/4; 4 + 2 >= 6 on both sides.
    assert (4, 4) in achievable_splits(8)
    assert split_view_breaks(10, 2, 6)
    assert not split_view_breaks(10, 2, 7)
    # t > n/2 alone protects against no colluder at all: n=10, t=6, c=1 is safe, c=2 is not.
    assert not split_view_breaks(10, 1, 6)


# --- hypergeometric_tail ----------------------------------------------------------------


def test_hypergeometric_tail_equals_enumeration_of_every_subset() -> None:
    cases = 0
    for population in range(0, 9):
        for successes in range(0, population + 1):
            for draws in range(0, population + 1):
                for at_least in range(-1, draws + 3):
                    expected = hypergeom_tail_brute(population, successes, draws, at_least)
                    assert hypergeometric_tail(population, successes, draws, at_least) == expected, (
                        population,
                        successes,
                        draws,
                        at_least,
                    )
                    cases += 1
    assert cases > 1000


@pytest.mark.parametrize(
    ("population", "successes", "draws", "at_least"),
    [
        (999, 50, 52, 7),
        (999, 50, 52, 22),
        (999, 200, 96, 55),
        (999, 200, 54, 23),
        (999, 100, 66, 33),
        (99, 20, 48, 21),
        (4999, 1000, 200, 90),
        (65534, 13107, 300, 170),
        (30, 30, 10, 10),
        (30, 0, 10, 1),
    ],
)
def test_hypergeometric_tail_agrees_with_scipy(population: int, successes: int, draws: int, at_least: int) -> None:
    exact = hypergeometric_tail(population, successes, draws, at_least)
    assert isinstance(exact, Fraction)
    assert float(exact) == pytest.approx(hypergeom_tail_scipy(population, successes, draws, at_least), rel=1e-7, abs=0.0)


def test_hypergeometric_tail_edges() -> None:
    assert hypergeometric_tail(10, 3, 4, 0) == 1
    assert hypergeometric_tail(10, 3, 4, -5) == 1
    assert hypergeometric_tail(10, 3, 4, 4) == 0  # only 3 successes exist
    assert hypergeometric_tail(10, 3, 2, 3) == 0  # only 2 draws
    assert hypergeometric_tail(10, 3, 4, 3) == Fraction(math.comb(3, 3) * math.comb(7, 1), math.comb(10, 4))
    # Successes are clamped into 0..population.
    assert hypergeometric_tail(10, 15, 4, 4) == 1
    assert hypergeometric_tail(10, -2, 4, 1) == 0


@pytest.mark.parametrize("args", [(5, 2, 7, 1), (5, 2, -1, 1), (-1, 0, 0, 0), (5.0, 2, 2, 1), (5, 2, 2, True)])
def test_hypergeometric_tail_rejects_impossible_draws_with_a_clear_error(args) -> None:
    with pytest.raises(InvalidParameter):
        hypergeometric_tail(*args)


def test_any_positive_fraction_counts_at_least_one_colluder() -> None:
    assert resolve_colluders(1e-12, 1000) == 1
    assert resolve_colluders(0.07, 100) == 7
    assert resolve_colluders(0.0, 1000) == 0


# --- sparse_breaking_colluders -------------------------------------------------------------------


@pytest.mark.parametrize("adversary", ADVERSARIES)
def test_breaking_colluders_matches_brute_force(adversary: str) -> None:
    for k in range(1, 11):
        for t in range(1, k + 2):
            need = sparse_breaking_colluders(k, t, adversary)
            assert need == breaking_need(k, t, adversary)
            for corrupt in range(0, k + 1):
                assert (corrupt >= need) is neighbourhood_breaks(k, corrupt, t, adversary), (k, t, corrupt)


def test_a_neighbourhood_of_all_colluders_breaks_even_at_t_equal_k_plus_1() -> None:
    # t = k + 1 leaves no room for a split view (it would need k + 1 colluders), but a target whose
    # k neighbours all collude is unmasked in an honest run: its own b-share and theirs make t.
    for k in (2, 4, 10):
        assert not split_view_breaks(k + 1, k, k + 1)
        assert can_be_isolated(k, k, k + 1)
        assert not can_be_isolated(k, k - 1, k + 1)
        assert sparse_breaking_colluders(k, k + 1) == k


# --- sparse_failure_probability ------------------------------------------------------------


@pytest.mark.parametrize("adversary", ADVERSARIES)
def test_sparse_failure_probability_equals_brute_force_over_neighbour_sets(adversary: str) -> None:
    cases = 0
    for n in range(3, 10):
        for k in range(1, n):
            for t in range(1, k + 2):
                for c in range(0, n + 2):
                    expected = sparse_failure_brute(n, k, t, c, adversary)
                    assert sparse_failure_probability(n, k, t, c, adversary) == expected, (n, k, t, c)
                    cases += 1
    assert cases > 500


@pytest.mark.parametrize(
    ("n", "k", "t", "c"),
    [
        (1000, 52, 37, 50),
        (1000, 96, 75, 200),
        (1000, 54, 39, 200),
        (1000, 66, 49, 100),
        (100, 28, 18, 5),
        (1000, 2, 2, 200),
    ],
)
def test_sparse_failure_probability_agrees_with_scipy(n: int, k: int, t: int, c: int) -> None:
    exact = sparse_failure_probability(n, k, t, c)
    assert float(exact) == pytest.approx(sparse_failure_scipy(n, k, t, c), rel=1e-7, abs=0.0)


@pytest.mark.parametrize("k", [0, -2, 10, 11])
def test_sparse_failure_probability_needs_a_sparse_degree(k: int) -> None:
    with pytest.raises(InvalidParameter):
        sparse_failure_probability(10, k, 1, 1)


# --- smallest_safe_threshold ------------------------------------------------------------------


@pytest.mark.parametrize(("n", "roster"), [(5, None), (10, None), (10, 10), (10, 20), (20, 5), (100, 150)])
@pytest.mark.parametrize("c", [0, 1, 2, 7])
def test_smallest_safe_threshold_for_the_complete_graph_is_the_closed_form(n: int, roster: int | None, c: int) -> None:
    population = max(n, roster or 0)
    assert smallest_safe_threshold(n, None, c, roster) == (population + c) // 2 + 1
    assert smallest_safe_threshold(n, None, c, roster, "curious") == c + 1


@pytest.mark.parametrize(
    ("n", "k", "c", "bits"),
    [
        (1000, 52, 50, 40),
        (1000, 96, 200, 40),
        (1000, 54, 200, 40),
        (1000, 20, 10, 40),
        (100, 28, 5, 40),
        (200, 40, 40, 20),
        (50, 10, 3, 10),
    ],
)
@pytest.mark.parametrize("adversary", ADVERSARIES)
def test_smallest_safe_threshold_for_a_sparse_graph_agrees_with_scipy(n: int, k: int, c: int, bits: int, adversary: str) -> None:
    t = smallest_safe_threshold(n, k, c, None, adversary, bits)
    target = 2.0**-bits
    assert 1 <= t <= k + 1
    assert sparse_failure_scipy(n, k, t, c, adversary) <= target * (1 + REL)
    if t > 1:
        assert sparse_failure_scipy(n, k, t - 1, c, adversary) > target * (1 - REL)


@pytest.mark.parametrize(("k", "expected"), [(2, 4), (10, 12), (20, 22), (22, 23)])
def test_smallest_safe_threshold_past_the_neighbourhood_means_none_is_safe(k: int, expected: int) -> None:
    # n=1000, 200 colluders: below k=22 even t = k + 1 fails, because all k neighbours of some honest
    # node collude with probability above 2^-40 (scipy); the answer k + 2 says "no threshold".
    t = smallest_safe_threshold(1000, k, 200)
    assert t == expected
    safe = [s for s in range(1, k + 2) if sparse_failure_scipy(1000, k, s, 200) <= TARGET_40]
    assert (min(safe) if safe else k + 2) == expected


def test_smallest_safe_threshold_known_sparse_values() -> None:
    # Recomputed with scipy: at n=1000 against 50 colluders, k=52 needs t=37 (the propose_parameters pick).
    assert smallest_safe_threshold(1000, 52, 50) == 37
    # Against 200 colluders k=54 needs far more than the issue's t=39.
    assert smallest_safe_threshold(1000, 54, 200) > 39


# --- describe_probability --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probability", "text"),
    [
        (Fraction(0), "0"),
        (Fraction(-1, 3), "0"),
        (Fraction(1), "2^0.0"),
        (Fraction(1, 2), "2^-1.0"),
        (Fraction(1, 1 << 40), "2^-40.0"),
        (Fraction(3, 1 << 42), "2^-40.4"),  # log2(3) - 42 = -40.415
        (Fraction(3, 4), "2^-0.4"),
        (Fraction(1, 1 << 3000), "2^-3000.0"),  # far below the smallest float
        (Fraction(1, 3**1000), "2^-1585.0"),  # 1000 * log2(3) = 1584.96
        (Fraction(1 << 50, 3), "2^48.4"),
    ],
)
def test_describe_probability(probability: Fraction, text: str) -> None:
    assert describe_probability(probability) == text


# --- binomial_tail (liveness estimate) ------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "p", "at_least"),
    [(53, 0.05, 17), (97, 0.05, 23), (81, 0.1, 29), (10, 0.5, 5), (3, 0.3, 1), (200, 0.2, 80), (153, 0.1, 42)],
)
def test_binomial_tail_agrees_with_scipy(m: int, p: float, at_least: int) -> None:
    assert binomial_tail(m, p, at_least) == pytest.approx(float(stats.binom.sf(at_least - 1, m, p)), rel=1e-9)


def test_binomial_tail_edges() -> None:
    assert binomial_tail(10, 0.1, 0) == 1.0
    assert binomial_tail(10, 0.1, 11) == 0.0
    assert binomial_tail(10, 0.0, 1) == 0.0
    assert binomial_tail(10, 1.0, 10) == 1.0


# --- propose_parameters against the recomputed rule -------------------------------------------

COLLUDER_SETTINGS = [None, 0, 1, 10, 0.05, 0.1, 0.2]


@pytest.mark.parametrize("n", [5, 10, 20, 100, 1000])
@pytest.mark.parametrize("colluders", COLLUDER_SETTINGS, ids=repr)
@pytest.mark.parametrize("dropout", [0.0, 0.05, 0.1])
def test_propose_parameters_matches_the_recomputed_rule(n: int, colluders: int | float | None, dropout: float) -> None:
    c = expected_colluders(colluders, n)
    expected = reference_proposal(n, dropout, c, n)
    if expected is None:
        with pytest.raises(InvalidParameter):
            propose_parameters(n, dropout, colluders)
        return
    proposal = propose_parameters(n, dropout, colluders)
    assert proposal.colluders == c
    assert (proposal.neighbours, proposal.threshold) == expected
    if proposal.neighbours is None:
        assert proposal.threshold == (n + c) // 2 + 1
        assert proposal.failure_bound == 0
        # The closed form is the brute-force split-view answer (for sizes small enough to enumerate).
        if n <= 10:
            assert proposal.threshold == brute_force_safe_threshold(n, c)
    else:
        k, t = proposal.neighbours, proposal.threshold
        assert k % 2 == 0 and 2 * (k + 1) < n
        failure = sparse_failure_scipy(n, k, t, c)
        assert failure <= TARGET_40
        assert float(proposal.failure_bound) == pytest.approx(failure, rel=1e-7, abs=1e-300)
        assert liveness_scipy(k + 1, dropout, t) <= 2.0**-20 / n
        # The threshold is the smallest private one for this k ...
        assert sparse_failure_scipy(n, k, t - 1, c) > TARGET_40
        # ... and no smaller even k admits any threshold that is both private and live.
        for smaller in range(2, k, 2):
            privacy = privacy_tails_scipy(n, smaller, c)
            assert not any(
                privacy[s - 1] <= TARGET_40 and liveness_scipy(smaller + 1, dropout, s) <= 2.0**-20 / n
                for s in range(1, smaller + 2)
            ), smaller
    # Whatever it proposes, a node with the same colluder bound accepts.
    config = RoundConfig("t", 0, n, proposal.threshold, 1, CONTEXT, proposal.neighbours)
    ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=c).check(config)


@pytest.mark.parametrize(
    ("n", "dropout", "colluders", "expected"),
    [
        (10, 0.05, None, (None, 7)),  # the docs' example: c = 2, 2t > 12
        (5, 0.05, None, (None, 4)),
        (20, 0.05, None, (None, 13)),
        (100, 0.05, None, (48, 35)),
        (100, 0.1, None, (None, 61)),
        (1000, 0.05, 0.05, (52, 37)),  # the docs' example
        (1000, 0.05, None, (96, 75)),
        (1000, 0.1, 0.1, (102, 71)),
    ],
)
def test_propose_parameters_known_answers(
    n: int, dropout: float, colluders: float | None, expected: tuple[int | None, int]
) -> None:
    # Each expected pair was recomputed with reference_proposal (scipy), and is rechecked here.
    c = expected_colluders(colluders, n)
    assert reference_proposal(n, dropout, c, n) == expected
    proposal = propose_parameters(n, dropout, colluders)
    assert (proposal.neighbours, proposal.threshold) == expected


@pytest.mark.parametrize(
    ("n", "roster", "c"),
    # (100, 160, 10) and (100, 180, 1): a sparse graph would be private and live per neighbourhood, but
    # the consistency quorum (86, 91 of 100) fails at 5% dropouts with probability 2^-12.8, 2^-5.1: complete graph.
    [(10, 12, 2), (10, 20, 1), (20, 30, 4), (100, 140, 10), (100, 160, 10), (100, 180, 1), (1000, 1500, 300)],
)
def test_propose_parameters_counts_the_whole_roster(n: int, roster: int, c: int) -> None:
    expected = reference_proposal(n, 0.05, c, roster)
    if expected is None:
        with pytest.raises(InvalidParameter):
            propose_parameters(n, 0.05, c, roster_size=roster)
        return
    proposal = propose_parameters(n, 0.05, c, roster_size=roster)
    assert (proposal.neighbours, proposal.threshold) == expected
    if proposal.neighbours is None:
        assert proposal.threshold == (roster + c) // 2 + 1


@pytest.mark.parametrize("n", [5, 10, 20, 100, 1000])
@pytest.mark.parametrize("colluders", [1, None, 0.1], ids=repr)
def test_propose_parameters_for_a_curious_coordinator(n: int, colluders: int | float | None) -> None:
    c = expected_colluders(colluders, n)
    expected = reference_proposal(n, 0.1, c, n, "curious")
    proposal = propose_parameters(n, 0.1, colluders, adversary="curious")
    assert (proposal.neighbours, proposal.threshold) == expected
    if proposal.neighbours is None:
        assert proposal.threshold == c + 1


# --- the issue's attack parameters against the default ClientPolicy ----------------------------


@pytest.mark.parametrize(
    ("n", "k", "t"),
    [
        (10, None, 6),  # complete graph, t > n/2 but 2t <= n + c with c = 2
        (9, None, 5),
        (11, None, 6),
        (5, None, 3),
        (1000, 54, 39),  # sparse, default c = 200
        (1000, 2, 2),
        (100, 2, 2),
    ],
)
def test_the_issue_attack_parameters_are_refused_by_default(n: int, k: int | None, t: int) -> None:
    c = default_colluders(n)
    if k is None:
        assert split_view_breaks(n, c, t)  # the attack works: refusing is right
    else:
        assert sparse_failure_scipy(n, k, t, c) > TARGET_40
    config = RoundConfig("t", 0, n, t, 1, CONTEXT, k)
    with pytest.raises(RemoteProtocolError) as info:
        ClientPolicy().check(config)
    assert info.value.reason == "weaker-than-policy"


@pytest.mark.parametrize(
    ("n", "k", "t"),
    [(10, None, 7), (9, None, 6), (11, None, 8), (5, None, 4), (20, None, 13), (1000, 96, 75)],
)
def test_safe_parameters_are_accepted_by_default(n: int, k: int | None, t: int) -> None:
    c = default_colluders(n)
    if k is None:
        assert 2 * t > n + c
        if n <= 12:  # small enough to enumerate every split
            assert not split_view_breaks(n, c, t)
    else:
        assert sparse_failure_scipy(n, k, t, c) <= TARGET_40
    ClientPolicy().check(RoundConfig("t", 0, n, t, 1, CONTEXT, k))


def test_the_proposal_for_1000_nodes_is_accepted_by_a_default_node() -> None:
    proposal = propose_parameters(1000, 0.05, None)
    config = RoundConfig("t", 0, 1000, proposal.threshold, 1, CONTEXT, proposal.neighbours)
    assert sparse_failure_scipy(1000, config.degree, config.threshold, 200) <= TARGET_40
    ClientPolicy().check(config)
    # The docs' 5% proposal is sized for 50 colluders, not the default 200: a default node refuses it.
    five_percent = propose_parameters(1000, 0.05, 0.05)
    config = RoundConfig("t", 0, 1000, five_percent.threshold, 1, CONTEXT, five_percent.neighbours)
    assert sparse_failure_scipy(1000, 52, 37, 200) > TARGET_40
    with pytest.raises(RemoteProtocolError) as info:
        ClientPolicy().check(config)
    assert info.value.reason == "weaker-than-policy"
    ClientPolicy(max_colluders=0.05).check(config)


def test_a_node_whose_neighbours_can_all_collude_is_refused() -> None:
    # n=1000, k=2, t=3 against the default 200 colluders: about 32 honest nodes are expected to have
    # both neighbours colluding (the union bound is >= 1). A split-view-only bound would call it safe.
    n, k, t, c = 1000, 2, 3, 200
    isolated = n * hypergeom_tail_scipy(n - 1, c, k, k)
    assert isolated > 1
    with pytest.raises(RemoteProtocolError) as info:
        ClientPolicy().check(RoundConfig("t", 0, n, t, 1, CONTEXT, k))
    assert info.value.reason == "weaker-than-policy"
    # The same with 10 neighbours: 1000 * P[all 10 collude] is about 1e-4, far above 2^-40.
    assert 1e-5 < n * hypergeom_tail_scipy(n - 1, c, 10, 10) < 1e-3
    with pytest.raises(RemoteProtocolError):
        ClientPolicy().check(RoundConfig("t", 0, n, 11, 1, CONTEXT, 10))
    # From k = 22 on, all-colluding neighbourhoods are rare enough (union bound below 2^-40).
    assert n * hypergeom_tail_scipy(n - 1, c, 22, 22) <= TARGET_40
    ClientPolicy().check(RoundConfig("t", 0, n, 23, 1, CONTEXT, 22))
