"""Hypothesis: a node's ClientPolicy accepts a round exactly when the stated colluder bound holds.

The bound is restated here from the docs, not taken from the code: for the
complete graph 2t > N + c against a malicious coordinator (t > c against a
curious one), N = max(cohort, roster), c from ``max_colluders`` (None:
max(1, ceil(N/5)); an int: that count; a float: that decimal fraction of N,
rounded up). For the sparse graph the cohort must hold the consistency quorum
(2T > N + c, T <= n; T > c if curious) and the union bound n * P[X >= need],
need = min(2t - (k + 1), t - 1) (t - 1 if curious), X hypergeometric, is
recomputed exactly by a draw-by-draw recursion (not the binomial-coefficient
sum the library uses) and compared to 2^-security_bits.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

from hypothesis import event, given
from hypothesis import strategies as st
from scipy import stats

from securefed.errors import RemoteProtocolError
from securefed.secagg import ClientPolicy, RoundConfig

CONTEXT = bytes(range(32))

adversaries_ = st.sampled_from(["malicious", "curious"])
decimal_fractions_ = st.integers(0, 999).map(lambda thousandths: thousandths / 1000)


def expected_colluders(setting: int | float | None, roster: int) -> int:
    if setting is None:
        return max(1, -(-roster // 5))
    if isinstance(setting, int):
        return setting
    return math.ceil(Fraction(repr(setting)) * roster)


def accepts(policy: ClientPolicy, config: RoundConfig, roster_size: int | None = None) -> bool:
    try:
        policy.check(config, roster_size)
    except RemoteProtocolError as error:
        assert error.reason == "weaker-than-policy"
        return False
    return True


def permissive(setting: int | float | None, adversary: str = "malicious", bits: int = 40) -> ClientPolicy:
    """Only the colluder bound is in force (the older floors are switched off)."""
    return ClientPolicy(
        min_threshold=1,
        min_cohort=1,
        min_threshold_fraction=0.0,
        max_colluders=setting,
        adversary=adversary,
        security_bits=bits,
    )


@lru_cache(maxsize=4096)
def tail_by_recursion(population: int, successes: int, draws: int, at_least: int) -> Fraction:
    """P[X >= at_least] drawing ``draws`` without replacement, one draw at a time, exactly."""
    if at_least <= 0:
        return Fraction(1)
    dist = {0: Fraction(1)}
    for j in range(draws):
        left = population - j
        nxt: dict[int, Fraction] = {}
        for x, p in dist.items():
            good = successes - x
            bad = left - good
            if good > 0:
                nxt[x + 1] = nxt.get(x + 1, Fraction(0)) + p * Fraction(good, left)
            if bad > 0:
                nxt[x] = nxt.get(x, Fraction(0)) + p * Fraction(bad, left)
        dist = nxt
    return sum((p for x, p in dist.items() if x >= at_least), Fraction(0))


# --- complete graph ------------------------------------------------------------------------------


@st.composite
def complete_rounds(draw: st.DrawFn) -> tuple[int, int, int | None]:
    n = draw(st.integers(1, 80), label="n")
    roster = draw(st.one_of(st.none(), st.integers(n, n + 40)), label="roster")
    # Half the time t sits next to where 2t = N + (N / 5) would put it, so the boundary gets explored.
    population = max(n, roster or 0)
    near = (population + population // 5) // 2 + draw(st.integers(-2, 2), label="offset")
    t = draw(st.one_of(st.integers(1, n), st.just(min(n, max(1, near)))), label="t")
    return n, t, roster


@given(complete_rounds(), st.one_of(st.integers(0, 16), st.integers(0, 130)), adversaries_)
def test_complete_graph_accepted_iff_bound_holds_for_a_count(round_: tuple[int, int, int | None], c: int, adversary: str) -> None:
    n, t, roster = round_
    population = max(n, roster or 0)
    holds = t > c if adversary == "curious" else 2 * t > population + c
    config = RoundConfig("task", 0, n, t, 1, CONTEXT)
    event("accepted" if holds else "refused")
    assert accepts(permissive(c, adversary), config, roster) is holds


@given(complete_rounds(), st.one_of(st.none(), decimal_fractions_), adversaries_)
def test_complete_graph_accepted_iff_bound_holds_for_default_or_fraction(
    round_: tuple[int, int, int | None], setting: float | None, adversary: str
) -> None:
    n, t, roster = round_
    population = max(n, roster or 0)
    c = expected_colluders(setting, population)
    holds = t > c if adversary == "curious" else 2 * t > population + c
    policy = permissive(setting, adversary)
    assert policy.colluders(population) == c
    event("accepted" if holds else "refused")
    assert accepts(policy, RoundConfig("task", 0, n, t, 1, CONTEXT), roster) is holds


@given(complete_rounds())
def test_the_default_policy_accepts_iff_the_default_bound_and_floors_hold(round_: tuple[int, int, int | None]) -> None:
    n, t, roster = round_
    population = max(n, roster or 0)
    c = max(1, -(-population // 5))
    # min_cohort=2, min_threshold=2, t > n/2 (implied by 2t > N + c), and the colluder bound.
    holds = n >= 2 and t >= 2 and 2 * t > n and 2 * t > population + c
    event("accepted" if holds else "refused")
    assert accepts(ClientPolicy(), RoundConfig("task", 0, n, t, 1, CONTEXT), roster) is holds


# --- sparse graph ----------------------------------------------------------------------------------


@st.composite
def sparse_rounds(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(6, 60), label="n")
    k = 2 * draw(st.integers(1, (n - 3) // 2), label="half-degree")  # k < n - 1: really sparse
    t = draw(st.integers(1, k + 1), label="t")
    return n, k, t


@given(
    sparse_rounds(),
    st.one_of(st.integers(0, 6), st.integers(0, 70)),
    adversaries_,
    st.sampled_from([4, 8, 16, 40]),
    st.one_of(st.none(), st.integers(0, 30)),
)
def test_sparse_graph_accepted_iff_union_bound_is_small_enough(
    round_: tuple[int, int, int], c: int, adversary: str, bits: int, extra_roster: int | None
) -> None:
    n, k, t = round_
    roster = None if extra_roster is None else n + extra_roster
    population = max(n, roster or 0)
    config = RoundConfig("task", 0, n, t, 1, CONTEXT, k)
    assert config.degree == k
    need = t - 1 if adversary == "curious" else min(2 * t - (k + 1), t - 1)
    failure = min(Fraction(1), n * tail_by_recursion(n - 1, min(c, n - 1), k, need))
    # Some T <= n with 2T > n + c (T > c if curious): both say the cohort outnumbers the colluders.
    quorum_possible = any((q > c if adversary == "curious" else 2 * q > population + c) for q in range(1, n + 1))
    holds = quorum_possible and failure <= Fraction(1, 1 << bits)
    if not quorum_possible:
        event("cohort too small for the consistency quorum")
    # scipy agrees with the exact recursion (a third, floating-point opinion)
    approx = min(1.0, n * float(stats.hypergeom.sf(need - 1, n - 1, min(c, n - 1), k)))
    assert math.isclose(float(failure), approx, rel_tol=1e-6, abs_tol=1e-300)
    event("accepted" if holds else "refused")
    assert accepts(permissive(c, adversary, bits), config, roster) is holds


@given(sparse_rounds(), st.integers(0, 10))
def test_a_site_can_refuse_sparse_rounds_or_small_degrees(round_: tuple[int, int, int], extra: int) -> None:
    n, k, t = round_
    config = RoundConfig("task", 0, n, t, 1, CONTEXT, k)
    # With no colluders and t = k + 1 the bound holds for any k, so only the site's own rules speak.
    safe = RoundConfig("task", 0, n, k + 1, 1, CONTEXT, k)
    assert accepts(permissive(0), safe)
    assert not accepts(
        ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=0, allow_sparse_graph=False),
        config,
    )
    policy = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=0, min_neighbours=k + extra)
    assert accepts(policy, safe) is (extra == 0)
