"""The SecAgg+ neighbour graph over the whole cohort, its commit-reveal seed, and the (k, t) helper."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from securefed.errors import InvalidParameter
from securefed.secagg import ClientPolicy, GraphParameters, NeighbourGraph, RoundConfig, propose_parameters
from securefed.secagg.bounds import sparse_failure_probability
from securefed.secagg.transcript import graph_seed

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))

members_ = st.sets(st.integers(1, 500), max_size=60)
degrees_ = st.one_of(st.none(), st.integers(1, 70))
seeds_ = st.binary(min_size=32, max_size=32)


def _effective(degree: int | None) -> int | None:
    return None if degree is None else degree + degree % 2


# --- NeighbourGraph.build ---------------------------------------------------------


@given(members_, degrees_, seeds_)
def test_neighbourhoods_are_closed_symmetric_and_of_the_right_size(members: set[int], degree: int | None, seed: bytes) -> None:
    graph = NeighbourGraph.build(members, degree, seed)
    m = len(members)
    assert graph.members == tuple(sorted(members))
    assert sorted(graph.ring) == sorted(members)
    hoods = graph.all_neighbourhoods()
    assert set(hoods) == members
    effective = _effective(degree)
    complete = effective is None or effective >= m - 1
    assert graph.is_complete is complete
    for node, hood in hoods.items():
        assert node in hood
        assert hood <= members
        if complete:
            assert hood == members
        else:
            assert graph.degree == effective
            assert len(hood) == effective + 1
    for u, hood in hoods.items():
        for v in hood:
            assert u in hoods[v], f"{v} in N({u}) but {u} not in N({v})"


@given(st.sets(st.integers(1, 300), min_size=12, max_size=50), st.integers(1, 5), seeds_)
def test_sparse_ring_joins_each_node_to_its_ring_neighbours(members: set[int], half_degree: int, seed: bytes) -> None:
    degree = 2 * half_degree
    graph = NeighbourGraph.build(members, degree, seed)
    assert not graph.is_complete
    ring, m = graph.ring, len(members)
    for position, node in enumerate(ring):
        expected = {ring[(position + offset) % m] for offset in range(-half_degree, half_degree + 1)}
        assert graph.neighbours(node) == expected


@pytest.mark.parametrize("odd", [1, 3, 5, 7])
def test_odd_degree_is_rounded_up(odd: int) -> None:
    graph = NeighbourGraph.build(range(1, 41), odd, SEED)
    assert graph.degree == odd + 1
    assert all(len(hood) == odd + 2 for hood in graph.all_neighbourhoods().values())


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9])
def test_degree_none_or_covering_everyone_gives_the_complete_graph(m: int) -> None:
    members = range(10, 10 + m)
    degrees = [None, m, m + 5] + ([m - 1] if m > 1 else [])
    if m > 2 and m % 2 == 1:
        degrees.append(m - 2)  # odd: rounded up to m - 1, which covers everyone
    for degree in degrees:
        graph = NeighbourGraph.build(members, degree, SEED)
        assert graph.is_complete and graph.degree is None
        assert all(graph.neighbours(node) == frozenset(members) for node in members)


def test_smallest_degree_that_is_still_sparse() -> None:
    # m=10: degree 8 < m - 1 = 9, so the graph is sparse with 9-member neighbourhoods.
    graph = NeighbourGraph.build(range(1, 11), 8, SEED)
    assert graph.degree == 8 and not graph.is_complete
    assert all(len(hood) == 9 for hood in graph.all_neighbourhoods().values())
    # degree 9 rounds up to 10 >= 9: complete.
    assert NeighbourGraph.build(range(1, 11), 9, SEED).is_complete


def test_members_are_deduplicated_and_sorted() -> None:
    graph = NeighbourGraph.build([5, 3, 5, 1, 3], None, SEED)
    assert graph.members == (1, 3, 5)


def test_empty_graph() -> None:
    graph = NeighbourGraph.build([], 4, SEED)
    assert graph.members == () and graph.all_neighbourhoods() == {}


@given(st.sets(st.integers(1, 1000), min_size=6, max_size=40), st.integers(1, 4), seeds_)
def test_deterministic_for_a_seed(members: set[int], half_degree: int, seed: bytes) -> None:
    first = NeighbourGraph.build(members, 2 * half_degree, seed)
    second = NeighbourGraph.build(sorted(members, reverse=True), 2 * half_degree, seed)
    assert first.ring == second.ring
    assert first.all_neighbourhoods() == second.all_neighbourhoods()


def test_different_seeds_give_different_permutations() -> None:
    members = range(1, 31)
    rings = {NeighbourGraph.build(members, 4, bytes([i]) * 32).ring for i in range(20)}
    # 30! orders: a collision among 20 seeds has probability below 2^-100.
    assert len(rings) == 20
    assert NeighbourGraph.build(members, 4, SEED).ring != NeighbourGraph.build(members, 4, OTHER_SEED).ring
    assert NeighbourGraph.build(members, 4, SEED).ring != tuple(members)


def test_neighbours_of_a_non_member_is_refused() -> None:
    for degree in (None, 2):
        graph = NeighbourGraph.build(range(1, 21), degree, SEED)
        with pytest.raises(InvalidParameter):
            graph.neighbours(99)


@pytest.mark.parametrize("degree", [0, -1, -4])
def test_non_positive_degree_is_refused(degree: int) -> None:
    with pytest.raises(InvalidParameter):
        NeighbourGraph.build(range(1, 21), degree, SEED)


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(33)])
def test_sparse_graph_needs_a_32_byte_seed(seed: bytes) -> None:
    with pytest.raises(InvalidParameter):
        NeighbourGraph.build(range(1, 21), 4, seed)


# --- the graph is a function of the cohort, the degree and the seed only -----------------------


def test_the_graph_is_built_over_the_whole_cohort() -> None:
    # A node that never advertised is a missing vertex: everyone else's neighbourhood is the one
    # in the cohort's graph, minus the missing node. Redrawing over the advertisers would move them.
    config = RoundConfig("task", 1, 30, 5, 1, SEED, 4)
    graph = NeighbourGraph.build(config.ids, config.degree, SEED)
    assert graph.members == tuple(range(1, 31))
    missing = {3, 17}
    live = set(config.ids) - missing
    redrawn = NeighbourGraph.build(live, config.degree, SEED)
    live_hoods = {node: graph.neighbours(node) & live for node in live}
    assert all(len(hood) >= 3 for hood in live_hoods.values())
    assert any(live_hoods[node] != redrawn.neighbours(node) for node in live)
    # Neighbours of a missing vertex lose exactly that vertex, no one gains a new neighbour.
    for node in live:
        assert live_hoods[node] <= graph.neighbours(node)
        assert graph.neighbours(node) - live_hoods[node] <= missing


@pytest.mark.parametrize(("m", "degree", "samples"), [(7, 2, 3000), (9, 4, 7000)])
def test_a_node_s_neighbours_are_a_uniform_subset(m: int, degree: int, samples: int) -> None:
    # The sparse bound (securefed.secagg.bounds) assumes a target's k neighbours are a uniform
    # k-subset of the other n - 1 nodes. Chi-square over fixed seeds (deterministic, not flaky):
    # a biased permutation (e.g. a modulo bias or a fixed ring offset) fails with p ~ 0.
    counts: Counter[frozenset[int]] = Counter()
    for i in range(samples):
        seed = hashlib.sha256(b"uniformity/%d" % i).digest()
        counts[NeighbourGraph.build(range(1, m + 1), degree, seed).neighbours(1) - {1}] += 1
    categories = list(itertools.combinations(range(2, m + 1), degree))
    assert set(counts) == {frozenset(c) for c in categories}
    observed = [counts[frozenset(c)] for c in categories]
    assert stats.chisquare(observed).pvalue > 1e-4


# --- the graph seed: commit and reveal (securefed.secagg.transcript.graph_seed) --------------------


def _config(**overrides: object) -> RoundConfig:
    fields = {"task": "task", "round_id": 3, "cohort_size": 30, "threshold": 5, "vector_length": 8}
    return RoundConfig(**{**fields, "context": SEED, "neighbours": 4, **overrides})


def _reveals(ids: range | list[int]) -> list[tuple[int, bytes]]:
    return [(node, hashlib.sha256(b"reveal/%d" % node).digest()) for node in ids]


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def test_graph_seed_changes_when_any_reveal_changes() -> None:
    config = _config()
    reveals = _reveals(range(1, 6))
    base = graph_seed(config, reveals)
    assert len(base) == 32
    seen = {base}
    for i, (sender, value) in enumerate(reveals):
        for changed in ((sender, _flip(value)), (sender + 10, value)):
            seed = graph_seed(config, [*reveals[:i], changed, *reveals[i + 1 :]])
            assert seed not in seen
            seen.add(seed)
    # Dropping or adding a reveal changes it too.
    for variant in (reveals[:-1], reveals[1:], _reveals(range(1, 7))):
        seed = graph_seed(config, variant)
        assert seed not in seen
        seen.add(seed)


@pytest.mark.parametrize(
    "change",
    [
        {"task": "task2"},
        {"round_id": 4},
        {"context": OTHER_SEED},
        {"cohort_size": 31},
        {"threshold": 4},
        {"neighbours": 6},
        {"neighbours": None},
        {"vector_length": 9},
    ],
    ids=repr,
)
def test_graph_seed_binds_the_round(change: dict) -> None:
    reveals = _reveals(range(1, 5))
    assert graph_seed(_config(**change), reveals) != graph_seed(_config(), reveals)


def test_graph_seed_ignores_the_order_of_the_list() -> None:
    reveals = _reveals(range(1, 7))
    assert graph_seed(_config(), reveals) == graph_seed(_config(), list(reversed(reveals)))


def test_one_reveal_moves_the_whole_graph() -> None:
    # Each node's own (secret until the key list is fixed) randomness changes the graph it uses.
    config = _config()
    reveals = _reveals(config.ids)
    changed = [*reveals[:-1], (reveals[-1][0], _flip(reveals[-1][1]))]
    first = NeighbourGraph.build(config.ids, config.degree, graph_seed(config, reveals))
    second = NeighbourGraph.build(config.ids, config.degree, graph_seed(config, changed))
    assert first.ring != second.ring
    assert first.all_neighbourhoods() != second.all_neighbourhoods()


# --- propose_parameters ---------------------------------------------------------------------


def _tail(m: int, p: float, at_least: int) -> float:
    """P[Binomial(m, p) >= at_least], straightforwardly."""
    return sum(math.comb(m, i) * p**i * (1 - p) ** (m - i) for i in range(max(0, at_least), m + 1))


def _colluders(setting: int | float | None, roster: int) -> int:
    """max_colluders as the docs define it (a float is a decimal fraction of the roster, rounded up)."""
    if setting is None:
        return max(1, -(-roster // 5))
    if isinstance(setting, int):
        return setting
    return math.ceil(Fraction(repr(setting)) * roster)


@pytest.mark.parametrize(
    ("n", "dropout", "colluders", "expected"),
    [
        (1, 0.0, 0, 1),
        (5, 0.0, 0, 3),
        (5, 0.0, None, 4),  # c = 1: 2t > 6
        (10, 0.1, 0.1, 6),  # c = 1: 2t > 11
        (10, 0.1, None, 7),  # c = 2: 2t > 12 (the docs' example)
        (10, 0.1, 2, 7),
        (20, 0.05, 0.2, 13),  # c = 4
        (50, 0.1, 0.2, 31),  # c = 10
        (100, 0.1, 0.1, 56),  # c = 10; the sparse graph cannot be both private and live here
        (7, 0.2, 0, 4),
        (11, 0.05, 0.15, 7),  # c = ceil(1.65) = 2: 2t > 13
    ],
)
def test_complete_graph_malicious_threshold(n: int, dropout: float, colluders: int | float | None, expected: int) -> None:
    proposal = propose_parameters(n, dropout, colluders)
    assert isinstance(proposal, GraphParameters)
    assert proposal.neighbours is None
    c = _colluders(colluders, n)
    assert proposal.colluders == c
    assert proposal.threshold == expected == (n + c) // 2 + 1
    assert 2 * proposal.threshold > n + c >= 2 * (proposal.threshold - 1)
    assert proposal.threshold <= math.floor((1 - dropout) * n)
    assert proposal.failure_bound == 0
    assert proposal.neighbourhood_size(n) == n
    assert f"2t > N + c = {n} + {c}" in proposal.explanation
    RoundConfig("t", 0, n, proposal.threshold, 1, SEED, proposal.neighbours)  # a usable configuration


@pytest.mark.parametrize(
    ("n", "dropout", "colluders", "expected"),
    [(10, 0.1, 0.1, 2), (20, 0.1, 0.2, 5), (30, 0.3, 0.3, 10), (3, 0.0, 0.5, 3), (10, 0.1, None, 3), (10, 0.1, 4, 5)],
)
def test_complete_graph_curious_threshold(n: int, dropout: float, colluders: int | float | None, expected: int) -> None:
    proposal = propose_parameters(n, dropout, colluders, adversary="curious")
    assert proposal.neighbours is None
    assert proposal.threshold == expected == _colluders(colluders, n) + 1
    assert "t > c" in proposal.explanation


@pytest.mark.parametrize(
    ("n", "roster", "colluders", "expected"),
    [(10, 10, None, 7), (10, 12, None, 8), (10, 14, None, 9), (10, 16, 1, 9), (10, 20, 0.05, 11)],
)
def test_complete_graph_counts_the_roster(n: int, roster: int, colluders: int | float | None, expected: int | None) -> None:
    c = _colluders(colluders, roster)
    assert expected == (roster + c) // 2 + 1
    if expected > n:
        with pytest.raises(InvalidParameter) as info:
            propose_parameters(n, 0.05, colluders, roster_size=roster)
        assert f"n={n}" in str(info.value)
        return
    proposal = propose_parameters(n, 0.05, colluders, roster_size=roster)
    assert (proposal.neighbours, proposal.threshold, proposal.colluders) == (None, expected, c)


@pytest.mark.parametrize(
    ("dropout", "colluders", "adversary", "expected"),
    [
        (0.05, 0.05, "malicious", (52, 37)),  # the docs' example
        (0.1, 0.1, "malicious", (102, 71)),
        (0.05, None, "malicious", (96, 75)),  # the nodes' default: 200 colluders
        (0.05, 0.05, "curious", None),
        (0.1, 0.2, "curious", None),
    ],
)
def test_sparse_graph_for_n_1000(
    dropout: float, colluders: float | None, adversary: str, expected: tuple[int, int] | None
) -> None:
    n = 1000
    proposal = propose_parameters(n, dropout, colluders, adversary=adversary)
    k, t = proposal.neighbours, proposal.threshold
    if expected is not None:  # recomputed independently in tests/unit/test_bounds.py
        assert (k, t) == expected
    c = _colluders(colluders, n)
    assert proposal.colluders == c
    assert k is not None and k % 2 == 0
    assert k <= n // 4, "the sparse graph should be much smaller than the cohort"
    assert 1 <= t <= k + 1
    m = k + 1
    # The stated bound, exactly: union over n targets of a hypergeometric neighbourhood tail, with
    # X >= min(2t - m, t - 1) colluding neighbours breaking one (t - 1 against a curious coordinator).
    need = t - 1 if adversary == "curious" else min(2 * t - m, t - 1)
    assert need >= 1
    exact = min(
        Fraction(1),
        n * Fraction(sum(math.comb(c, x) * math.comb(n - 1 - c, k - x) for x in range(need, min(c, k) + 1)), math.comb(n - 1, k)),
    )
    assert proposal.failure_bound == exact == sparse_failure_probability(n, k, t, c, adversary)
    assert proposal.failure_bound <= Fraction(1, 1 << 40)
    assert float(proposal.failure_bound) == pytest.approx(n * stats.hypergeom.sf(need - 1, n - 1, c, k), rel=1e-7)
    assert _tail(m, dropout, m - t + 1) <= 2.0**-20 / n
    assert "2^-40" in proposal.explanation
    config = RoundConfig("t", 0, n, t, 1, SEED, k)
    assert config.degree == k and config.neighbourhood_size == k + 1 == proposal.neighbourhood_size(n)
    ClientPolicy(max_colluders=c, adversary=adversary, min_threshold_fraction=0.0).check(config)


def test_sparse_k_is_the_smallest_even_k_that_works() -> None:
    n, dropout, c = 1000, 0.05, 50
    k = propose_parameters(n, dropout, 0.05).neighbours
    assert k == 52
    smaller = k - 2
    m = smaller + 1
    # No threshold works for the next smaller even k (scipy for the privacy tail).
    assert not any(
        n * stats.hypergeom.sf(2 * t - m - 1, n - 1, c, smaller) <= 2.0**-40 and _tail(m, dropout, m - t + 1) <= 2.0**-20 / n
        for t in range(1, m + 1)
    )


@pytest.mark.parametrize(
    ("n", "colluders", "expected"),
    [(10, None, (None, 7)), (20, 0.2, (6, 6)), (100, None, (16, 17)), (1000, 0.05, (12, 13)), (1000, None, (22, 23))],
)
def test_no_dropouts_does_not_give_a_graph_where_all_neighbours_can_collude(
    n: int, colluders: float | None, expected: tuple[int | None, int]
) -> None:
    # With no dropouts t = k + 1 is live, and a split view is impossible; what limits k then is a
    # target whose k neighbours all collude (it is unmasked in an honest run). An earlier version
    # proposed k = 2, t = 3 here.
    proposal = propose_parameters(n, 0.0, colluders)
    assert (proposal.neighbours, proposal.threshold) == expected
    if proposal.neighbours is None:
        return
    k, c = proposal.neighbours, _colluders(colluders, n)
    # Union bound over targets on "all k neighbours collude" (scipy): at most 2^-40 ...
    assert n * stats.hypergeom.sf(k - 1, n - 1, min(c, n - 1), k) <= 2.0**-40
    # ... and not for the next smaller even k (when the colluders can fill it at all).
    if k > 2 and c >= k - 2:
        assert n * stats.hypergeom.sf(k - 3, n - 1, min(c, n - 1), k - 2) > 2.0**-40


def test_a_count_and_the_same_fraction_give_the_same_proposal() -> None:
    assert propose_parameters(10, 0.1, 2) == propose_parameters(10, 0.1, 0.2)
    assert propose_parameters(1000, 0.05, 50) == propose_parameters(1000, 0.05, 0.05)
    assert propose_parameters(1000, 0.05, 200) == propose_parameters(1000, 0.05, None)


@pytest.mark.parametrize(
    ("n", "dropout", "colluders", "adversary"),
    [
        (10, 0.6, 0.3, "malicious"),
        (4, 0.5, 0, "malicious"),
        (10, 0.95, 0, "curious"),
        (1, 0.5, 0, "curious"),
        (5, 0.0, 10, "malicious"),  # more colluders than nodes: no threshold is safe
        (10, 0.35, None, "malicious"),  # c = 2 needs t = 7, but only 6 of 10 are expected to survive
    ],
)
def test_liveness_failure_is_refused(n: int, dropout: float, colluders: int | float | None, adversary: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        propose_parameters(n, dropout, colluders, adversary=adversary)
    assert f"n={n}" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"n": -5},
        {"n": 10.0},
        {"n": True},
        {"dropout_rate": 1.0},
        {"dropout_rate": -0.1},
        {"dropout_rate": float("nan")},
        {"colluders": 1.0},
        {"colluders": -0.01},
        {"colluders": float("nan")},
        {"colluders": -1},
        {"colluders": True},
        {"colluders": "2"},
        {"adversary": "semi-malicious"},
        {"adversary": ""},
        {"roster_size": 9},
        {"roster_size": 0},
        {"roster_size": 12.0},
        {"roster_size": True},
    ],
    ids=repr,
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    args = {"n": 10, "dropout_rate": 0.1, "colluders": 0.1, **kwargs}
    with pytest.raises(InvalidParameter):
        propose_parameters(**args)


@settings(max_examples=40)
@given(
    st.integers(1, 120),
    st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]),
    st.sampled_from([None, 0, 1, 3, 0.05, 0.1, 0.2]),
    st.sampled_from(["curious", "malicious"]),
)
def test_every_proposal_is_a_valid_round_config_a_node_accepts(
    n: int, dropout: float, colluders: int | float | None, adversary: str
) -> None:
    c = _colluders(colluders, n)
    try:
        proposal = propose_parameters(n, dropout, colluders, adversary=adversary)
    except InvalidParameter:
        # Only when the complete graph's bound cannot hold among the expected survivors.
        t = c + 1 if adversary == "curious" else (n + c) // 2 + 1
        assert t > math.floor((1 - dropout) * n) or t > n
        return
    config = RoundConfig("t", 0, n, proposal.threshold, 1, SEED, proposal.neighbours)
    assert 1 <= proposal.threshold <= config.neighbourhood_size
    assert proposal.colluders == c
    # A node that defends against the same adversary takes part.
    ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=colluders, adversary=adversary).check(
        config
    )


def test_non_integer_degree_is_refused_at_build() -> None:
    with pytest.raises((InvalidParameter, TypeError)):
        NeighbourGraph.build(range(1, 21), 3.0, SEED)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"security_bits": -20}, {"security_bits": 0}, {"correctness_bits": -5}, {"correctness_bits": 0}],
    ids=repr,
)
def test_non_positive_security_or_correctness_bits_are_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidParameter):
        propose_parameters(1000, 0.1, 0.1, **kwargs)
