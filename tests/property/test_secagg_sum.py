"""Hypothesis invariants of the whole secure-aggregation protocol, run through
``securefed.secagg.simulate`` (the real client and server state machines).

For any cohort, threshold, neighbour count and dropout pattern, a round either

* returns ``.sum`` equal to the exact sum mod 2^32 of the inputs of exactly
  ``.survivors``, where ``.survivors`` is exactly the set of nodes whose masked
  input the coordinator kept, or
* raises :class:`ProtocolAborted` naming the stage that fell short and by how
  much.

Which of the two happens, and with which survivors, is predicted by an
independent model of the protocol's rules (``_expected_outcome``). For the
sparse graph the model needs the neighbour graph, which depends on the fresh
round keys; it is rebuilt from public data only (the signed advertisements the
coordinator received, through ``graph_seed`` and ``NeighbourGraph.build``). For
the complete graph the outcome is also checked against the closed form: with
U1 ⊇ ... ⊇ U5 the nodes still talking at each stage, the round aborts at the
first stage i with |Ui| < t (short by t - |Ui|), and otherwise the survivors
are U3.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.errors import InvalidParameter, ProtocolAborted, SecureFedError
from securefed.secagg import NeighbourGraph, RoundConfig, ServerProtocol, simulate
from securefed.secagg.graph import graph_seed
from securefed.secagg.messages import AdvertiseKeys, Stage

# ``securefed.secagg.simulate`` the attribute is the function; the module is in sys.modules.
_simulate_module = importlib.import_module("securefed.secagg.simulate")

STAGE_NAMES = [stage.value for stage in Stage]  # in protocol order
NEVER = len(STAGE_NAMES)
MOD = 1 << 32


# --- a recording coordinator, so the model can rebuild the public graph ------


class _RecordingServer(ServerProtocol):
    """The real server; remembers the advertisements it received (public data)."""

    log: list[_RecordingServer] | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.adverts: dict[int, AdvertiseKeys] = {}
        if _RecordingServer.log is not None:
            _RecordingServer.log.append(self)

    def receive(self, event: object):  # type: ignore[override]
        if isinstance(event, AdvertiseKeys):
            self.adverts[event.sender] = event
        return super().receive(event)


@contextmanager
def _recording() -> Iterator[list[_RecordingServer]]:
    servers: list[_RecordingServer] = []
    _RecordingServer.log = servers
    try:
        with mock.patch.object(_simulate_module, "ServerProtocol", _RecordingServer):
            yield servers
    finally:
        _RecordingServer.log = None


# --- the model ---------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    aborted_at: str | None  # stage name, or None when the round completes
    shortfalls: frozenset[int]  # acceptable shortfall values when aborted
    survivors: tuple[int, ...]  # when completed


def _talking(silent: Mapping[int, int], nodes: set[int], stage_index: int) -> set[int]:
    return {node for node in nodes if silent.get(node, NEVER) > stage_index}


def _expected_outcome(
    n: int, t: int, silent: Mapping[int, int], graph_for: object
) -> Outcome:
    """Predict the round from the protocol's rules.

    ``graph_for(U1)`` returns the neighbour graph over the nodes that advertised.
    """
    everyone = set(range(1, n + 1))
    u1 = _talking(silent, everyone, 0)
    if len(u1) < t:
        return Outcome("advertise", frozenset({t - len(u1)}), ())
    graph: NeighbourGraph = graph_for(u1)  # type: ignore[operator]
    hood = graph.all_neighbourhoods()
    u2 = _talking(silent, u1, 1)
    if len(u2) < t:
        return Outcome("share", frozenset({t - len(u2)}), ())
    # A sharer whose neighbourhood has fewer than t sharers cannot be protected.
    shared = set(u2)
    while True:
        weak = {node for node in shared if len(hood[node] & shared) < t}
        if not weak:
            break
        shared -= weak
    if shared != u2:
        event("sharers pruned for thin neighbourhoods")
    if len(shared) < t:
        return Outcome("share", frozenset({t - len(shared)}), ())
    u3 = _talking(silent, shared, 2)
    u4 = _talking(silent, u3, 3)
    u5 = _talking(silent, u4, 4)
    # Every secret shared in stage 1 must keep t holders among those still talking.
    for stage, holders in (("masked_input", u3), ("consistency", u4)):
        worst = min(len(hood[node] & holders) for node in shared)
        if worst < t:
            return Outcome(stage, frozenset({t - worst}), ())
    failing = {t - len(hood[node] & u5) for node in shared if len(hood[node] & u5) < t}
    if failing:
        # The coordinator names the first owner it finds short; any short owner is a fair report.
        return Outcome("unmask", frozenset(failing), ())
    return Outcome(None, frozenset(), tuple(sorted(u3)))


def _complete_graph_outcome(n: int, t: int, silent: Mapping[int, int]) -> Outcome:
    """Closed form for the complete graph: the first stage with fewer than t talking aborts."""
    talking = set(range(1, n + 1))
    for index, name in enumerate(STAGE_NAMES):
        talking = _talking(silent, talking, index)
        if len(talking) < t:
            return Outcome(name, frozenset({t - len(talking)}), ())
    return Outcome(None, frozenset(), tuple(sorted(node for node in range(1, n + 1) if silent.get(node, NEVER) > 2)))


def _exact_sum(inputs: list[np.ndarray], ids: tuple[int, ...], d: int) -> np.ndarray:
    total = [0] * d
    for node in ids:
        for j, value in enumerate(inputs[node - 1].tolist()):
            total[j] += value
    return np.array([value % MOD for value in total], dtype=np.uint32)


def _neighbourhood_size(n: int, neighbours: int | None) -> int:
    if neighbours is None:
        return n
    even = neighbours + neighbours % 2
    return n if even >= n - 1 else even + 1


# --- strategies --------------------------------------------------------------

# Shrinks towards "nobody drops"; about one node in three drops somewhere.
_SILENCE = st.sampled_from([NEVER] * 10 + list(range(NEVER)))


@dataclass(frozen=True)
class Scenario:
    inputs: list[np.ndarray]
    threshold: int
    neighbours: int | None
    silent: dict[int, int]
    dropouts: dict[str, list[int]]
    seed: object

    @property
    def n(self) -> int:
        return len(self.inputs)

    def __repr__(self) -> str:  # keep failure reports readable
        return (
            f"Scenario(n={self.n}, d={self.inputs[0].shape[0]}, t={self.threshold}, "
            f"neighbours={self.neighbours}, dropouts={self.dropouts}, seed={self.seed!r})"
        )


@st.composite
def scenarios(draw: st.DrawFn, min_n: int = 1, max_n: int = 14, max_d: int = 40, sparse_only: bool = False) -> Scenario:
    n = draw(st.integers(min_n, max_n), label="n")
    d = draw(st.integers(1, max_d), label="d")
    if sparse_only:
        neighbours: int | None = draw(st.integers(1, max(1, n - 4)), label="neighbours")
    else:
        neighbours = draw(st.one_of(st.none(), st.integers(1, n)), label="neighbours")
    size = _neighbourhood_size(n, neighbours)
    threshold = draw(st.integers(1, size), label="threshold")
    matrix = draw(hnp.arrays(np.uint32, (n, d)), label="inputs")
    silence = draw(st.lists(_SILENCE, min_size=n, max_size=n), label="silent-from")
    silent = {node: stage for node, stage in enumerate(silence, start=1) if stage < NEVER}
    dropouts: dict[str, list[int]] = {}
    for node, stage in sorted(silent.items()):
        dropouts.setdefault(STAGE_NAMES[stage], []).append(node)
        # Listing a node again under a later stage changes nothing: silence starts at the first.
        if stage + 1 < NEVER and draw(st.booleans(), label=f"relist-{node}"):
            later = draw(st.integers(stage + 1, NEVER - 1), label=f"later-{node}")
            dropouts.setdefault(STAGE_NAMES[later], []).append(node)
    seed = draw(st.one_of(st.none(), st.integers(0, 2**64), st.binary(max_size=8)), label="seed")
    return Scenario([matrix[i].copy() for i in range(n)], threshold, neighbours, silent, dropouts, seed)


# --- the check shared by every test -------------------------------------------


def _run_and_check(scenario: Scenario) -> Outcome:
    n, t = scenario.n, scenario.threshold
    d = scenario.inputs[0].shape[0]
    with _recording() as servers:
        try:
            result = simulate(scenario.inputs, t, dropouts=scenario.dropouts, neighbours=scenario.neighbours, seed=scenario.seed)
        except ProtocolAborted as exc:
            result, aborted = None, exc
        else:
            aborted = None
    (server,) = servers

    def graph_for(u1: set[int]) -> NeighbourGraph:
        assert set(server.adverts) == u1, "the coordinator received advertisements from exactly U1"
        config: RoundConfig = server.config
        seed = graph_seed(config.task, config.round_id, config.context, [server.adverts[v] for v in sorted(u1)])
        return NeighbourGraph.build(u1, config.degree, seed)

    expected = _expected_outcome(n, t, scenario.silent, graph_for)
    if server.config.is_complete_graph:
        assert expected == _complete_graph_outcome(n, t, scenario.silent)
    event(f"graph: {'complete' if server.config.is_complete_graph else 'sparse'}")
    event(f"outcome: {expected.aborted_at or 'sum'}")

    if expected.aborted_at is None:
        assert aborted is None, f"round aborted unexpectedly: {aborted}"
        assert isinstance(result.sum, np.ndarray)
        assert result.sum.dtype == np.uint32 and result.sum.shape == (d,)
        assert tuple(result.survivors) == expected.survivors
        # Survivors are exactly the nodes that sent a masked input (none was silent before it).
        assert all(scenario.silent.get(node, NEVER) > 2 for node in result.survivors)
        np.testing.assert_array_equal(result.sum, _exact_sum(scenario.inputs, expected.survivors, d))
    else:
        assert aborted is not None, f"expected an abort at {expected.aborted_at}, got survivors {result.survivors}"
        assert aborted.stage == expected.aborted_at
        assert aborted.shortfall in expected.shortfalls
        assert aborted.shortfall >= 1
        message = str(aborted)
        assert expected.aborted_at in message
        assert f"short by {aborted.shortfall}" in message
        assert isinstance(aborted, SecureFedError)
    return expected


# --- properties ---------------------------------------------------------------


@settings(max_examples=200)
@given(scenarios())
def test_sum_of_exactly_the_survivors_or_a_named_abort(scenario: Scenario) -> None:
    _run_and_check(scenario)


@settings(max_examples=25)
@given(scenarios(min_n=12, max_n=24, max_d=8, sparse_only=True))
def test_sparse_graphs_sum_or_abort_as_the_model_predicts(scenario: Scenario) -> None:
    _run_and_check(scenario)


@settings(max_examples=40)
@given(
    st.integers(1, 10).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(1, n),
            st.lists(st.sampled_from([NEVER, 0, 1, 2, 3, 4]), min_size=n, max_size=n),
        )
    )
)
def test_complete_graph_aborts_iff_fewer_than_t_talk_at_some_stage(params: tuple[int, int, list[int]]) -> None:
    n, t, silence = params
    silent = {node: stage for node, stage in enumerate(silence, start=1) if stage < NEVER}
    dropouts: dict[str, list[int]] = {}
    for node, stage in silent.items():
        dropouts.setdefault(STAGE_NAMES[stage], []).append(node)
    inputs = [np.full(3, node, dtype=np.uint32) for node in range(1, n + 1)]
    last_talking = [node for node in range(1, n + 1) if node not in silent]
    try:
        result = simulate(inputs, t, dropouts=dropouts)
    except ProtocolAborted as exc:
        # The talking sets only shrink, so the round fails iff fewer than t answer unmasking.
        assert len(last_talking) < t
        expected = _complete_graph_outcome(n, t, silent)
        assert (exc.stage, exc.shortfall) == (expected.aborted_at, min(expected.shortfalls))
    else:
        assert len(last_talking) >= t
        sent_masked_input = tuple(node for node in range(1, n + 1) if silent.get(node, NEVER) > 2)
        assert result.survivors == sent_masked_input
        assert result.sum.tolist() == [sum(sent_masked_input)] * 3


# --- examples -----------------------------------------------------------------


def _vectors(n: int, d: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, MOD, size=d, dtype=np.uint32) for _ in range(n)]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_each_stage_dropout_is_recovered_n8_t5(stage: str) -> None:
    inputs = _vectors(8, 17)
    dropped = [2, 5, 7]
    result = simulate(inputs, 5, dropouts={stage: dropped})
    if STAGE_NAMES.index(stage) <= STAGE_NAMES.index("masked_input"):
        survivors = (1, 3, 4, 6, 8)
    else:  # their masked inputs are in; their self-masks are recovered from the others' shares
        survivors = tuple(range(1, 9))
    assert result.survivors == survivors
    np.testing.assert_array_equal(result.sum, _exact_sum(inputs, survivors, 17))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_each_stage_one_too_many_dropouts_aborts_n8_t5(stage: str) -> None:
    with pytest.raises(ProtocolAborted) as info:
        simulate(_vectors(8, 5), 5, dropouts={stage: [1, 2, 3, 4]})
    assert info.value.stage == stage
    assert info.value.shortfall == 1
    assert stage in str(info.value) and "short by 1" in str(info.value)


def test_dropouts_spread_over_every_stage_n8_t3() -> None:
    inputs = _vectors(8, 9)
    dropouts = {"advertise": [8], "share": [7], "masked_input": [6], "consistency": [5], "unmask": [4]}
    result = simulate(inputs, 3, dropouts=dropouts)
    assert result.survivors == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(result.sum, _exact_sum(inputs, (1, 2, 3, 4, 5), 9))


def test_sparse_graph_n40_k8_t5_with_drops_at_every_stage() -> None:
    # Each closed neighbourhood over the 39 advertisers has 9 members; four more drops
    # leave at least 5 in any of them, so the round must complete whatever the graph.
    inputs = _vectors(40, 12)
    dropouts = {"advertise": [3], "share": [10], "masked_input": [17], "consistency": [25], "unmask": [33]}
    with _recording() as servers:
        result = simulate(inputs, 5, dropouts=dropouts, neighbours=8)
    (server,) = servers
    assert not server.config.is_complete_graph and server.config.degree == 8
    survivors = tuple(node for node in range(1, 41) if node not in (3, 10, 17))
    assert result.survivors == survivors
    np.testing.assert_array_equal(result.sum, _exact_sum(inputs, survivors, 12))


def test_sparse_graph_n40_k8_odd_neighbour_count_rounds_up() -> None:
    inputs = _vectors(40, 4)
    with _recording() as servers:
        result = simulate(inputs, 6, neighbours=7)
    assert servers[0].config.degree == 8
    assert result.survivors == tuple(range(1, 41))
    np.testing.assert_array_equal(result.sum, _exact_sum(inputs, result.survivors, 4))


def test_single_node() -> None:
    vector = np.array([0, 1, MOD - 1, 123456789], dtype=np.uint32)
    result = simulate([vector], 1)
    assert result.survivors == (1,)
    np.testing.assert_array_equal(result.sum, vector)


def test_single_node_that_drops_aborts_at_advertise() -> None:
    with pytest.raises(ProtocolAborted) as info:
        simulate([np.ones(2, dtype=np.uint32)], 1, dropouts={"advertise": [1]})
    assert (info.value.stage, info.value.shortfall) == ("advertise", 1)


def test_inputs_near_2_32_wrap() -> None:
    top = MOD - 1
    inputs = [
        np.array([top, top, 1, 0], dtype=np.uint32),
        np.array([top, 1, top, 0], dtype=np.uint32),
        np.array([top, 0, 0, top], dtype=np.uint32),
    ]
    result = simulate(inputs, 2)
    assert result.sum.dtype == np.uint32
    assert result.sum.tolist() == [(3 * top) % MOD, 0, 0, top]


def test_long_vectors_cross_the_masking_block_boundary() -> None:
    d = 2 * 16_384 + 5
    inputs = _vectors(3, d)
    result = simulate(inputs, 2, dropouts={"masked_input": [2]})
    assert result.survivors == (1, 3)
    np.testing.assert_array_equal(result.sum, _exact_sum(inputs, (1, 3), d))


def test_seed_only_labels_the_run() -> None:
    inputs = _vectors(4, 6)
    first = simulate(inputs, 3, seed=1)
    second = simulate(inputs, 3, seed=b"other")
    np.testing.assert_array_equal(first.sum, second.sum)


# --- bad arguments -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"dropouts": {"unmasking": [1]}}, id="unknown-stage"),
        pytest.param({"dropouts": {"Share": [1]}}, id="stage-name-case"),
        pytest.param({"dropouts": {"share": [0]}}, id="id-zero"),
        pytest.param({"dropouts": {"share": [5]}}, id="id-above-n"),
        pytest.param({"dropouts": {"share": [-1]}}, id="negative-id"),
        pytest.param({"dropouts": {"share": ["1"]}}, id="id-string"),
        pytest.param({"dropouts": {"share": [1.0]}}, id="id-float"),
        pytest.param({"threshold": 0}, id="threshold-zero"),
        pytest.param({"threshold": 5}, id="threshold-above-n"),
        pytest.param({"threshold": 4, "neighbours": 0}, id="neighbours-zero"),
    ],
)
def test_simulate_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"inputs": _vectors(4, 3), "threshold": 3, **kwargs}
    with pytest.raises(InvalidParameter):
        simulate(**args)


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param([], id="no-inputs"),
        pytest.param([np.zeros(3, np.uint32), np.zeros(4, np.uint32)], id="mismatched-lengths"),
        pytest.param([np.zeros(3, np.uint32), np.zeros(3, np.int64)], id="int64"),
        pytest.param([np.zeros(3, np.uint64), np.zeros(3, np.uint64)], id="uint64"),
        pytest.param([np.zeros(3, np.float32), np.zeros(3, np.float32)], id="float32"),
        pytest.param([[1, 2, 3], [4, 5, 6]], id="python-lists"),
        pytest.param([np.zeros((2, 2), np.uint32), np.zeros((2, 2), np.uint32)], id="two-dimensional"),
        pytest.param([np.zeros(0, np.uint32), np.zeros(0, np.uint32)], id="empty-vectors"),
        pytest.param([np.zeros(3, ">u4"), np.zeros(3, ">u4")], id="big-endian"),
    ],
)
def test_simulate_rejects_bad_inputs(inputs: list) -> None:
    with pytest.raises(InvalidParameter):
        simulate(inputs, 1)


def test_bad_threshold_is_refused_for_the_sparse_neighbourhood() -> None:
    # k=4 of 20: neighbourhoods have 5 members, so t=6 can never be met.
    with pytest.raises(InvalidParameter):
        simulate(_vectors(20, 2), 6, neighbours=4)


def test_dropouts_that_are_not_a_mapping_get_a_typed_error() -> None:
    with pytest.raises((InvalidParameter, TypeError)):
        simulate(_vectors(3, 2), 2, dropouts=[2])  # type: ignore[arg-type]
