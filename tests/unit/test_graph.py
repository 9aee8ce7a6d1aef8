"""The SecAgg+ neighbour graph, its public seed, and the (k, t) parameter helper."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.crypto.identity import SigningKey
from securefed.errors import InvalidParameter
from securefed.secagg import GraphParameters, NeighbourGraph, RoundConfig, propose_parameters
from securefed.secagg.graph import graph_seed
from securefed.secagg.messages import AdvertiseKeys

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))

members_ = st.sets(st.integers(1, 500), max_size=60)
degrees_ = st.one_of(st.none(), st.integers(1, 70))
seeds_ = st.binary(min_size=32, max_size=32)


def _effective(degree: int | None) -> int | None:
    return None if degree is None else degree + degree % 2


# --- NeighbourGraph.build ---------------------------------------------------------


@given(members_, degrees_, seeds_)
def test_neighbourhoods_are_closed_symmetric_and_of_the_right_size(
    members: set[int], degree: int | None, seed: bytes
) -> None:
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


# --- graph_seed ---------------------------------------------------------------


def _adverts(n: int) -> list[AdvertiseKeys]:
    return [
        AdvertiseKeys(node, bytes([node]) * 32, bytes([node + 100]) * 32, SigningKey.generate().sign(b"x"))
        for node in range(1, n + 1)
    ]


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def test_graph_seed_changes_when_any_advertised_field_changes() -> None:
    adverts = _adverts(5)
    base = graph_seed("task", 3, SEED, adverts)
    assert len(base) == 32
    seen = {base}
    for i, advert in enumerate(adverts):
        for changed in (
            replace(advert, c_pk=_flip(advert.c_pk)),
            replace(advert, s_pk=_flip(advert.s_pk)),
            replace(advert, signature=_flip(advert.signature)),
            replace(advert, sender=advert.sender + 10),
        ):
            seed = graph_seed("task", 3, SEED, [*adverts[:i], changed, *adverts[i + 1 :]])
            assert seed not in seen
            seen.add(seed)
    # Dropping or adding an advertisement changes it too.
    for variant in (adverts[:-1], adverts[1:], [*adverts, _adverts(6)[-1]]):
        seed = graph_seed("task", 3, SEED, variant)
        assert seed not in seen
        seen.add(seed)


def test_graph_seed_binds_the_round() -> None:
    adverts = _adverts(4)
    base = graph_seed("task", 3, SEED, adverts)
    assert graph_seed("task2", 3, SEED, adverts) != base
    assert graph_seed("task", 4, SEED, adverts) != base
    assert graph_seed("task", 3, OTHER_SEED, adverts) != base


def test_graph_seed_ignores_the_order_of_the_list() -> None:
    adverts = _adverts(6)
    assert graph_seed("task", 0, SEED, adverts) == graph_seed("task", 0, SEED, list(reversed(adverts)))


def test_graph_seed_and_graph_together_move_with_one_key() -> None:
    adverts = _adverts(30)
    changed = [*adverts[:-1], replace(adverts[-1], s_pk=_flip(adverts[-1].s_pk))]
    first = NeighbourGraph.build(range(1, 31), 4, graph_seed("t", 0, SEED, adverts))
    second = NeighbourGraph.build(range(1, 31), 4, graph_seed("t", 0, SEED, changed))
    assert first.ring != second.ring


# --- propose_parameters -------------------------------------------------------


def _tail(m: int, p: float, at_least: int) -> float:
    """P[Binomial(m, p) >= at_least], straightforwardly."""
    return sum(math.comb(m, i) * p**i * (1 - p) ** (m - i) for i in range(max(0, at_least), m + 1))


@pytest.mark.parametrize(
    ("n", "dropout", "corrupt"),
    [(1, 0.0, 0.0), (5, 0.0, 0.0), (10, 0.1, 0.1), (20, 0.0, 0.2), (50, 0.1, 0.2), (100, 0.1, 0.1), (7, 0.2, 0.0)],
)
def test_complete_graph_semi_malicious_threshold(n: int, dropout: float, corrupt: float) -> None:
    proposal = propose_parameters(n, dropout, corrupt)
    assert isinstance(proposal, GraphParameters)
    assert proposal.neighbours is None
    assert proposal.threshold == math.floor((n + corrupt * n) / 2) + 1
    assert proposal.threshold <= math.floor((1 - dropout) * n)
    assert proposal.explanation
    RoundConfig("t", 0, n, proposal.threshold, 1, SEED, proposal.neighbours)  # a usable configuration


@pytest.mark.parametrize(("n", "dropout", "corrupt"), [(10, 0.1, 0.1), (20, 0.0, 0.2), (30, 0.3, 0.3), (3, 0.0, 0.5)])
def test_complete_graph_curious_threshold(n: int, dropout: float, corrupt: float) -> None:
    proposal = propose_parameters(n, dropout, corrupt, threat="curious")
    assert proposal.neighbours is None
    assert proposal.threshold == math.floor(corrupt * n) + 1


@pytest.mark.parametrize(
    ("dropout", "corrupt", "threat"),
    [(0.1, 0.1, "semi-malicious"), (0.05, 0.05, "semi-malicious"), (0.05, 0.05, "curious"), (0.1, 0.2, "curious")],
)
def test_sparse_graph_for_n_1000(dropout: float, corrupt: float, threat: str) -> None:
    n = 1000
    proposal = propose_parameters(n, dropout, corrupt, threat=threat)
    k, t = proposal.neighbours, proposal.threshold
    assert k is not None and k % 2 == 0
    assert k <= n // 4, "the sparse graph should be much smaller than the cohort"
    assert t >= 1 and t <= k + 1
    m = k + 1
    # The published bounds, per neighbourhood, union-bounded over n neighbourhoods.
    bad = t if threat == "curious" else 2 * t - m
    assert bad >= 1
    assert _tail(m, corrupt, bad) <= 2.0**-40 / n
    assert _tail(m, dropout, m - t + 1) <= 2.0**-20 / n
    config = RoundConfig("t", 0, n, t, 1, SEED, k)
    assert config.degree == k and config.neighbourhood_size == k + 1


def test_sparse_k_is_the_smallest_even_k_that_works() -> None:
    n, dropout, corrupt = 1000, 0.05, 0.05
    k = propose_parameters(n, dropout, corrupt).neighbours
    assert k is not None
    smaller = k - 2
    m = smaller + 1
    # No threshold works for the next smaller even k.
    assert not any(
        2 * t - m >= 1 and _tail(m, corrupt, 2 * t - m) <= 2.0**-40 / n and _tail(m, dropout, m - t + 1) <= 2.0**-20 / n
        for t in range(1, m + 1)
    )


@pytest.mark.parametrize(
    ("n", "dropout", "corrupt", "threat"),
    [(10, 0.6, 0.3, "semi-malicious"), (4, 0.5, 0.0, "semi-malicious"), (10, 0.95, 0.0, "curious"), (1, 0.5, 0.0, "curious")],
)
def test_liveness_failure_is_refused(n: int, dropout: float, corrupt: float, threat: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        propose_parameters(n, dropout, corrupt, threat=threat)
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
        {"corrupt_fraction": 1.0},
        {"corrupt_fraction": -0.01},
        {"corrupt_fraction": float("nan")},
        {"threat": "malicious"},
        {"threat": ""},
    ],
    ids=repr,
)
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    args = {"n": 10, "dropout_rate": 0.1, "corrupt_fraction": 0.1, **kwargs}
    with pytest.raises(InvalidParameter):
        propose_parameters(**args)


@settings(max_examples=40)
@given(st.integers(1, 120), st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]), st.sampled_from([0.0, 0.05, 0.1, 0.2]), st.sampled_from(["curious", "semi-malicious"]))
def test_every_proposal_is_a_valid_round_config(n: int, dropout: float, corrupt: float, threat: str) -> None:
    try:
        proposal = propose_parameters(n, dropout, corrupt, threat=threat)
    except InvalidParameter:
        # Only when the complete graph's bounds cannot both hold.
        t = math.floor(corrupt * n) + 1 if threat == "curious" else math.floor((n + corrupt * n) / 2) + 1
        assert t > math.floor((1 - dropout) * n)
        return
    config = RoundConfig("t", 0, n, proposal.threshold, 1, SEED, proposal.neighbours)
    assert proposal.threshold >= 1 and proposal.threshold <= config.neighbourhood_size


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
