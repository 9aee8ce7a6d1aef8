"""Hypothesis invariants of the whole secure-aggregation protocol, run through
``securefed.secagg.simulate`` and ``tests.secagg_harness.HonestRound`` (the
real client and server state machines).

For any cohort, threshold, neighbour count and dropout pattern, a round either

* returns ``.sum`` equal to the exact sum mod 2^32 of the inputs of exactly
  ``.survivors``, where ``.survivors`` is exactly the set of nodes whose masked
  input the coordinator kept, and nobody is ``.excluded``; or
* raises :class:`ProtocolAborted` naming the stage that fell short and by how
  much, with no culprits; or
* when a node advertised keys but never revealed its graph randomness, raises
  :class:`ProtocolAborted` at stage ``"reveal"`` naming exactly those nodes in
  ``culprits`` (going on without them would let the coordinator pick a seed).

(``simulate`` uses the threshold as given, DESIGN §6, even t = 1 on a sparse
graph; nodes that enforce a colluder bound refuse that, see
test_simulate_uses_any_threshold_as_given_unless_colluders_are_named.)

Which of these happens, and with which survivors, is predicted by an
independent model of the protocol's rules (:func:`predict`). The model needs
the neighbour graph; it rebuilds it from public data only: the signed
advertisements and the reveals the coordinator relayed (each checked against
its commitment), hashed with ``transcript.graph_seed`` into the seed of a
graph over the *whole* cohort, in which nodes that never advertised are
missing vertices. Every ``ShareKeys`` and ``ShareRelay`` on the wire is checked
against the model's neighbourhoods too. For the complete graph the outcome is
also checked against the closed form.

Seeded runs are reproducible: the same seed gives the same sum, the same
survivors and the same transcript, message for message.

Against misbehaving participants (built on ``HonestRound``):

* a holder that reveals ANY wrong unmask share (any owner, b or s) is caught by
  its dealer's signed commitment: the round gives the exact sum with the holder
  in ``.excluded``, or (too few good shares left) aborts naming exactly it;
* a dealer that deals one holder a share off its polynomial, with matching
  commitments and a valid signature, is named alone (``culprits == (dealer,)``)
  whenever more than t good shares of its revealed secret reach the
  coordinator; a dealer whose share fails its own commitment is recorded by
  the holder, which goes on, never reveals it and reports it with its masked
  input (if that leaves the dealer short of t usable holders, the round stops
  before anything is revealed, naming the dealer); no honest node is ever named.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefed.crypto.aead import NONCE_SIZE, open_sealed, seal
from securefed.crypto.agreement import AgreementKeyPair
from securefed.crypto.shamir import PRIME, SHARE_SIZE, Share
from securefed.errors import InvalidParameter, ProtocolAborted, RemoteProtocolError, SecureFedError
from securefed.secagg import ClientPolicy, NeighbourGraph, RoundConfig, ServerProtocol, simulate
from securefed.secagg.messages import (
    AdvertiseKeys,
    SeedRevealList,
    Send,
    ShareKeys,
    ShareRelay,
    Stage,
    UnmaskRequest,
    UnmaskShares,
)
from securefed.secagg.transcript import (
    commitments_transcript,
    graph_seed,
    seed_commitment,
    share_associated_data_for,
    share_commitment,
    share_key,
)
from tests.secagg_harness import HonestRound, entropy_for, exact_sum, make_config

# ``securefed.secagg.simulate`` the attribute is the function; the module is in sys.modules.
_simulate_module = importlib.import_module("securefed.secagg.simulate")

STAGES = list(Stage)
STAGE_NAMES = [stage.value for stage in STAGES]  # in protocol order
ADVERTISE, REVEAL, SHARE, MASKED_INPUT, CONSISTENCY, UNMASK = range(len(STAGES))
NEVER = len(STAGES)
MOD = 1 << 32

# Thresholds below the colluder bound, on purpose (the sums must be exact for every t);
# this is the policy simulate() itself uses when no ``colluders`` is given.
CURIOUS = ClientPolicy(min_threshold=1, min_cohort=1, min_threshold_fraction=0.0, max_colluders=0, adversary="curious")


def _budget(examples: int) -> int:
    """``examples`` under the ci profile (100 examples), scaled with whatever profile is loaded."""
    return max(1, examples * settings.default.max_examples // 100)


# --- a recording coordinator: the wire transcript, and public data for the model ----


class _RecordingServer(ServerProtocol):
    """The real server; remembers every event it received and every message it sent."""

    log: list[_RecordingServer] | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[object] = []
        self.sent: list[Send] = []
        if _RecordingServer.log is not None:
            _RecordingServer.log.append(self)

    def receive(self, event: object):  # type: ignore[override]
        self.received.append(event)
        sends = super().receive(event)
        self.sent.extend(sends)
        return sends

    @property
    def adverts(self) -> dict[int, AdvertiseKeys]:
        return {m.sender: m for m in self.received if isinstance(m, AdvertiseKeys)}


@contextmanager
def _recording() -> Iterator[list[_RecordingServer]]:
    servers: list[_RecordingServer] = []
    _RecordingServer.log = servers
    try:
        with mock.patch.object(_simulate_module, "ServerProtocol", _RecordingServer):
            yield servers
    finally:
        _RecordingServer.log = None


# --- the model -------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    aborted_at: str | None  # stage name, or None when the round completes
    shortfalls: frozenset[int]  # acceptable shortfall values when aborted for want of nodes
    survivors: tuple[int, ...]  # when completed
    culprits: tuple[int, ...] = ()
    # other acceptable culprits when the coordinator may report any of several equally short owners
    culprit_choices: frozenset[tuple[int, ...]] = frozenset()

    def accepts_culprits(self, culprits: tuple[int, ...]) -> bool:
        return culprits == self.culprits or culprits in self.culprit_choices


@dataclass(frozen=True)
class Model:
    """The predicted outcome and the sets behind it (U1..U5 by stage index, as far as reached)."""

    outcome: Outcome
    talking: Mapping[int, frozenset[int]]
    shared: frozenset[int] = frozenset()
    hood: Mapping[int, frozenset[int]] = dataclasses.field(default_factory=dict)

    def unmask_shortfalls(self, t: int, holders_of: Callable[[int], frozenset[int]]) -> frozenset[int]:
        """Shortfalls of the owners left with fewer than t good shares; ``holders_of(owner)`` are
        the nodes whose share of ``owner`` reaches the coordinator and is used."""
        return frozenset(t - len(holders_of(o)) for o in self.shared if len(holders_of(o)) < t)


def _talking(silent: Mapping[int, int], nodes: set[int] | frozenset[int], stage_index: int) -> frozenset[int]:
    return frozenset(node for node in nodes if silent.get(node, NEVER) > stage_index)


def predict(
    n: int,
    t: int,
    silent: Mapping[int, int],
    hoods_for: Callable[[frozenset[int]], Mapping[int, frozenset[int]]],
    reports: Mapping[int, frozenset[int]] | None = None,
) -> Model:
    """Predict the round from the protocol's rules.

    ``silent`` maps a node to the index of the first stage it is silent at;
    ``hoods_for(U1)`` gives each advertiser's closed neighbourhood among U1;
    ``reports`` maps a holder to the dealers whose shares it could not use (it says so with
    its masked input and never reveals them).
    """
    talking: dict[int, frozenset[int]] = {}
    u1 = talking[ADVERTISE] = _talking(silent, set(range(1, n + 1)), ADVERTISE)
    if len(u1) < t:
        return Model(Outcome("advertise", frozenset({t - len(u1)}), ()), talking)
    revealed = talking[REVEAL] = _talking(silent, u1, REVEAL)
    if revealed != u1:
        # Nobody may go on with a seed some advertiser never opened: name them all.
        return Model(Outcome("reveal", frozenset(), (), tuple(sorted(u1 - revealed))), talking)
    hood = hoods_for(u1)
    # A node with fewer than t live neighbours (itself included) refuses before dealing.
    u2 = talking[SHARE] = frozenset(v for v in _talking(silent, u1, SHARE) if len(hood[v]) >= t)
    if len(u2) < t:
        return Model(Outcome("share", frozenset({t - len(u2)}), ()), talking, hood=hood)
    # A sharer whose neighbourhood has fewer than t sharers cannot be protected.
    shared = set(u2)
    while True:
        weak = {node for node in shared if len(hood[node] & shared) < t}
        if not weak:
            break
        shared -= weak
    if shared != u2:
        event("sharers pruned for thin neighbourhoods")
    shared = frozenset(shared)
    if len(shared) < t:
        return Model(Outcome("share", frozenset({t - len(shared)}), ()), talking, shared, hood)
    u3 = talking[MASKED_INPUT] = _talking(silent, shared, MASKED_INPUT)
    u4 = talking[CONSISTENCY] = _talking(silent, u3, CONSISTENCY)
    # Reports travel with the masked input: only those of U3 reach the coordinator.
    withheld = {h: frozenset(d) for h, d in (reports or {}).items() if h in u3 and d}

    def usable(owner: int, holders: frozenset[int]) -> frozenset[int]:
        return frozenset(h for h in hood[owner] & holders if owner not in withheld.get(h, ()))

    # Every secret dealt in the share stage must keep t holders that can open it among those
    # still talking. If reports are what makes an owner short, the owner (as dealer) is named.
    for index, holders in ((MASKED_INPUT, u3), (CONSISTENCY, u4)):
        counts = {owner: len(usable(owner, holders)) for owner in shared}
        worst = min(counts.values())
        if worst < t:
            choices = frozenset(
                (owner,) if len(hood[owner] & holders) > counts[owner] and len(hood[owner] & holders) >= t else ()
                for owner in shared
                if counts[owner] == worst
            )
            first = min(choices)
            outcome = Outcome(STAGE_NAMES[index], frozenset({t - worst}), (), first, choices - {first})
            return Model(outcome, talking, shared, hood)
    u5 = talking[UNMASK] = _talking(silent, u4, UNMASK)
    model = Model(Outcome(None, frozenset(), tuple(sorted(u3))), talking, shared, hood)
    failing = model.unmask_shortfalls(t, lambda owner: usable(owner, u5))
    if failing:
        # The coordinator names the first owner it finds short; any short owner is a fair report.
        return dataclasses.replace(model, outcome=Outcome("unmask", failing, ()))
    return model


def _complete_graph_outcome(n: int, t: int, silent: Mapping[int, int]) -> Outcome:
    """Closed form for the complete graph: a missing reveal names its nodes; otherwise the
    first stage with fewer than t talking aborts; otherwise the survivors are U3."""
    everyone = set(range(1, n + 1))
    advertised = _talking(silent, everyone, ADVERTISE)
    if len(advertised) < t:
        return Outcome("advertise", frozenset({t - len(advertised)}), ())
    unrevealed = tuple(sorted(node for node in advertised if silent.get(node) == REVEAL))
    if unrevealed:
        return Outcome("reveal", frozenset(), (), unrevealed)
    for index in (SHARE, MASKED_INPUT, CONSISTENCY, UNMASK):
        talking = _talking(silent, everyone, index)
        if len(talking) < t:
            return Outcome(STAGE_NAMES[index], frozenset({t - len(talking)}), ())
    return Outcome(None, frozenset(), tuple(sorted(_talking(silent, everyone, MASKED_INPUT))))


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


def _public_hoods(config: RoundConfig, adverts: Mapping[int, AdvertiseKeys], reveals: SeedRevealList, u1: frozenset[int]):
    """Neighbourhoods from public data: reveals checked against the signed commitments, a seed
    over all of them, a graph over the whole cohort, restricted to the advertisers."""
    ids = tuple(node for node, _ in reveals.reveals)
    assert ids == tuple(sorted(u1)), f"reveals {ids} do not cover exactly the key list {sorted(u1)}"
    for node, value in reveals.reveals:
        assert seed_commitment(config, node, value) == adverts[node].seed_commitment, f"reveal of {node} is not opened"
    graph = NeighbourGraph.build(config.ids, config.degree, graph_seed(config, reveals.reveals))
    assert graph.members == tuple(config.ids), "the graph is built over the whole cohort"
    return {node: graph.neighbours(node) & u1 for node in u1}


# --- strategies --------------------------------------------------------------------

# Shrinks towards "nobody drops"; about one node in three drops somewhere. Silence from the
# reveal stage always aborts the round, so it gets its own, rarer draw below.
_SILENCE = st.sampled_from([NEVER] * 10 + [ADVERTISE, SHARE, MASKED_INPUT, CONSISTENCY, UNMASK])


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
def scenarios(
    draw: st.DrawFn,
    min_n: int = 1,
    max_n: int = 14,
    max_d: int = 40,
    sparse_only: bool = False,
    seeded: bool = False,
) -> Scenario:
    n = draw(st.integers(min_n, max_n), label="n")
    d = draw(st.integers(1, max_d), label="d")
    if sparse_only:
        neighbours: int | None = draw(st.integers(1, max(1, n - 4)), label="neighbours")
    else:
        neighbours = draw(st.one_of(st.none(), st.integers(1, n)), label="neighbours")
    size = _neighbourhood_size(n, neighbours)
    if size < n and not draw(st.sampled_from([False] * 9 + [True]), label="sparse with t = 1"):
        threshold = draw(st.integers(2, size), label="threshold")
    else:
        threshold = draw(st.integers(1, size), label="threshold")
    matrix = draw(hnp.arrays(np.uint32, (n, d)), label="inputs")
    silence = draw(st.lists(_SILENCE, min_size=n, max_size=n), label="silent-from")
    silent = {node: stage for node, stage in enumerate(silence, start=1) if stage < NEVER}
    if draw(st.sampled_from([False] * 4 + [True]), label="someone withholds its reveal"):
        for node in draw(st.sets(st.integers(1, n), min_size=1, max_size=3), label="reveal-silent"):
            silent[node] = min(silent.get(node, NEVER), REVEAL)
    dropouts: dict[str, list[int]] = {}
    for node, stage in sorted(silent.items()):
        dropouts.setdefault(STAGE_NAMES[stage], []).append(node)
        # Listing a node again under a later stage changes nothing: silence starts at the first.
        if stage + 1 < NEVER and draw(st.booleans(), label=f"relist-{node}"):
            later = draw(st.integers(stage + 1, NEVER - 1), label=f"later-{node}")
            dropouts.setdefault(STAGE_NAMES[later], []).append(node)
    seeds = st.one_of(st.integers(0, 2**64), st.binary(max_size=8))
    seed = draw(seeds if seeded else st.one_of(st.none(), seeds), label="seed")
    return Scenario([matrix[i].copy() for i in range(n)], threshold, neighbours, silent, dropouts, seed)


# --- the check shared by the simulate() properties ----------------------------------


@dataclass
class Run:
    result: object | None
    aborted: ProtocolAborted | None
    refused: RemoteProtocolError | None  # a node's policy refused the round before it began
    server: _RecordingServer


def _simulate(scenario: Scenario, **kwargs: object) -> Run:
    result = aborted = refused = None
    with _recording() as servers:
        try:
            result = simulate(
                scenario.inputs,
                scenario.threshold,
                dropouts=scenario.dropouts,
                neighbours=scenario.neighbours,
                seed=scenario.seed,
                **kwargs,
            )
        except ProtocolAborted as exc:
            aborted = exc
        except RemoteProtocolError as exc:
            refused = exc
    (server,) = servers
    return Run(result, aborted, refused, server)


def _refused_by_policy(config: RoundConfig) -> bool:
    """simulate() without ``colluders`` uses any threshold as given: nothing is refused."""
    return False


def _check_wire(server: _RecordingServer, model: Model) -> None:
    """Every dealer addressed exactly its live neighbourhood; every relay carried exactly the
    shares of the recipient's neighbours that kept sharing, with their commitments."""
    for message in server.received:
        if isinstance(message, ShareKeys):
            hood = model.hood[message.sender]
            assert {h for h, _ in message.commitments} == hood, f"node {message.sender} committed outside its hood"
            assert {r for r, _ in message.ciphertexts} == hood - {message.sender}
    for send in server.sent:
        if isinstance(send.message, ShareRelay):
            expected = sorted((model.hood[send.to] & model.shared) - {send.to})
            assert [s for s, _ in send.message.ciphertexts] == expected, f"relay to {send.to}"
            assert [s for s, _ in send.message.commitments] == expected, f"relay to {send.to}"


def _run_and_check(scenario: Scenario) -> Model:
    n, t = scenario.n, scenario.threshold
    d = scenario.inputs[0].shape[0]
    run = _simulate(scenario)
    server = run.server
    config: RoundConfig = server.config
    if _refused_by_policy(config):
        event("refused: sparse graph with t = 1")
        assert run.refused is not None, "a sparse round with t = 1 must be refused"
        assert run.refused.reason == "weaker-than-policy"
        assert server.received == [], "a refused round sends nothing"
        return Model(Outcome("refused", frozenset(), ()), {})
    assert run.refused is None, f"refused unexpectedly: {run.refused}"

    def hoods_for(u1: frozenset[int]) -> Mapping[int, frozenset[int]]:
        assert set(server.adverts) == u1, "the coordinator received advertisements from exactly U1"
        (reveals,) = {send.message for send in server.sent if isinstance(send.message, SeedRevealList)}
        return _public_hoods(config, server.adverts, reveals, u1)

    model = predict(n, t, scenario.silent, hoods_for)
    expected = model.outcome
    if config.is_complete_graph:
        assert expected == _complete_graph_outcome(n, t, scenario.silent)
    if model.hood:
        _check_wire(server, model)
    event(f"graph: {'complete' if config.is_complete_graph else 'sparse'}")
    event(f"outcome: {expected.aborted_at or 'sum'}")

    result, aborted = run.result, run.aborted
    if expected.aborted_at is None:
        assert aborted is None, f"round aborted unexpectedly: {aborted}"
        assert isinstance(result.sum, np.ndarray)
        assert result.sum.dtype == np.uint32 and result.sum.shape == (d,)
        assert tuple(result.survivors) == expected.survivors
        # Survivors are exactly the nodes that sent a masked input (none was silent before it).
        assert all(scenario.silent.get(node, NEVER) > MASKED_INPUT for node in result.survivors)
        assert dict(result.excluded) == {}, "an honest node was excluded"
        np.testing.assert_array_equal(result.sum, _exact_sum(scenario.inputs, expected.survivors, d))
    else:
        assert aborted is not None, f"expected an abort at {expected.aborted_at}, got survivors {result.survivors}"
        assert isinstance(aborted, SecureFedError)
        assert aborted.stage == expected.aborted_at
        assert expected.accepts_culprits(aborted.culprits), aborted.culprits
        message = str(aborted)
        assert expected.aborted_at in message
        if expected.aborted_at == "reveal":
            assert all(str(node) in message for node in expected.culprits)
        else:
            assert aborted.shortfall in expected.shortfalls
            assert aborted.shortfall >= 1
            assert f"short by {aborted.shortfall}" in message
    return model


# --- properties ------------------------------------------------------------------


@given(scenarios())
def test_sum_of_exactly_the_survivors_or_a_named_abort(scenario: Scenario) -> None:
    _run_and_check(scenario)


@settings(max_examples=_budget(25))
@given(scenarios(min_n=12, max_n=24, max_d=8, sparse_only=True))
def test_sparse_graphs_sum_or_abort_as_the_model_predicts(scenario: Scenario) -> None:
    _run_and_check(scenario)


@settings(max_examples=_budget(40))
@given(
    st.integers(1, 10).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(1, n),
            st.lists(
                st.sampled_from([NEVER, NEVER, ADVERTISE, REVEAL, SHARE, MASKED_INPUT, CONSISTENCY]),
                min_size=n,
                max_size=n,
            ),
        )
    )
)
def test_complete_graph_aborts_iff_a_reveal_is_missing_or_fewer_than_t_talk(params: tuple[int, int, list[int]]) -> None:
    n, t, silence = params
    silent = {node: stage for node, stage in enumerate(silence, start=1) if stage < NEVER}
    dropouts: dict[str, list[int]] = {}
    for node, stage in silent.items():
        dropouts.setdefault(STAGE_NAMES[stage], []).append(node)
    inputs = [np.full(3, node, dtype=np.uint32) for node in range(1, n + 1)]
    last_talking = [node for node in range(1, n + 1) if node not in silent]
    unrevealed = tuple(sorted(node for node, stage in silent.items() if stage == REVEAL))
    advertised = n - sum(1 for stage in silent.values() if stage == ADVERTISE)
    try:
        result = simulate(inputs, t, dropouts=dropouts)
    except ProtocolAborted as exc:
        # The talking sets only shrink, so the round fails iff a reveal is missing or fewer
        # than t answer unmasking.
        assert unrevealed or len(last_talking) < t
        expected = _complete_graph_outcome(n, t, silent)
        if advertised >= t and unrevealed:
            assert (exc.stage, exc.culprits) == ("reveal", unrevealed)
        else:
            assert (exc.stage, exc.shortfall, exc.culprits) == (expected.aborted_at, min(expected.shortfalls), ())
    else:
        assert not unrevealed and len(last_talking) >= t
        sent_masked_input = tuple(node for node in range(1, n + 1) if silent.get(node, NEVER) > MASKED_INPUT)
        assert result.survivors == sent_masked_input
        assert result.sum.tolist() == [sum(sent_masked_input)] * 3


@settings(max_examples=_budget(30))
@given(scenarios(max_n=10, max_d=6, seeded=True))
def test_one_seed_gives_one_round_message_for_message(scenario: Scenario) -> None:
    first, second = _simulate(scenario), _simulate(scenario)
    if first.refused is not None:
        assert second.refused is not None and str(first.refused) == str(second.refused)
    elif first.aborted is None:
        assert second.aborted is None and second.refused is None, f"second run: {second.aborted or second.refused}"
        np.testing.assert_array_equal(first.result.sum, second.result.sum)
        assert first.result.survivors == second.result.survivors
        assert dict(first.result.excluded) == dict(second.result.excluded)
    else:
        assert second.aborted is not None, "the first run aborted, the second did not"
        assert (first.aborted.stage, first.aborted.shortfall, first.aborted.culprits, str(first.aborted)) == (
            second.aborted.stage,
            second.aborted.shortfall,
            second.aborted.culprits,
            str(second.aborted),
        )
    _assert_same_transcript(first.server.received, second.server.received, "node -> coordinator")
    _assert_same_transcript(first.server.sent, second.server.sent, "coordinator -> node")
    # ...and the seed is what fixes it: another seed gives other round keys from the first message on.
    other = dataclasses.replace(scenario, seed=(repr(scenario.seed) + "/other").encode())
    third = _simulate(other)
    adverts = [m for m in first.server.received if isinstance(m, AdvertiseKeys)]
    if adverts:
        assert adverts[0] not in third.server.received


def _assert_same_transcript(first: list, second: list, what: str) -> None:
    for index, (a, b) in enumerate(zip(first, second)):
        assert a == b, f"{what}: message {index} differs between two runs with one seed: {a!r} vs {b!r}"
    assert len(first) == len(second), f"{what}: {len(first)} vs {len(second)} messages"


# --- examples --------------------------------------------------------------------


def _vectors(n: int, d: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, MOD, size=d, dtype=np.uint32) for _ in range(n)]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_each_stage_dropout_is_recovered_n8_t5(stage: str) -> None:
    inputs = _vectors(8, 17)
    dropped = [2, 5, 7]
    if stage == "reveal":
        # They advertised, so the graph would need their randomness: the round stops and names them.
        with pytest.raises(ProtocolAborted) as info:
            simulate(inputs, 5, dropouts={stage: dropped})
        assert (info.value.stage, info.value.culprits) == ("reveal", (2, 5, 7))
        return
    result = simulate(inputs, 5, dropouts={stage: dropped})
    if STAGE_NAMES.index(stage) <= MASKED_INPUT:
        survivors = (1, 3, 4, 6, 8)
    else:  # their masked inputs are in; their self-masks are recovered from the others' shares
        survivors = tuple(range(1, 9))
    assert result.survivors == survivors
    assert dict(result.excluded) == {}
    np.testing.assert_array_equal(result.sum, _exact_sum(inputs, survivors, 17))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_each_stage_one_too_many_dropouts_aborts_n8_t5(stage: str) -> None:
    with pytest.raises(ProtocolAborted) as info:
        simulate(_vectors(8, 5), 5, dropouts={stage: [1, 2, 3, 4]})
    assert info.value.stage == stage
    if stage == "reveal":
        assert info.value.culprits == (1, 2, 3, 4)
    else:
        assert info.value.shortfall == 1 and info.value.culprits == ()
        assert stage in str(info.value) and "short by 1" in str(info.value)


@pytest.mark.parametrize("neighbours", [None, 4])
def test_one_missing_reveal_aborts_however_many_remain(neighbours: int | None) -> None:
    # t = 2: the others could easily finish, but only by picking a graph after seeing reveals.
    # Node 9 never advertised (not a culprit); node 3 is listed under advertise and reveal
    # (silent from advertise, not a culprit); node 6 advertised and went quiet.
    dropouts = {"advertise": [9, 3], "reveal": [3, 6]}
    with pytest.raises(ProtocolAborted) as info:
        simulate(_vectors(16, 3), 2, dropouts=dropouts, neighbours=neighbours, seed=5)
    assert (info.value.stage, info.value.culprits) == ("reveal", (6,))


def test_dropouts_spread_over_every_stage_n8_t3() -> None:
    inputs = _vectors(8, 9)
    dropouts = {"advertise": [8], "share": [7], "masked_input": [6], "consistency": [5], "unmask": [4]}
    result = simulate(inputs, 3, dropouts=dropouts)
    assert result.survivors == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(result.sum, _exact_sum(inputs, (1, 2, 3, 4, 5), 9))


def test_sparse_graph_n40_k8_t4_with_drops_at_every_stage() -> None:
    # The graph is over all 40 nodes, so node 3 (never advertised) is a missing vertex: a
    # closed neighbourhood has 9 members, at most 5 of them among the dropped, leaving >= 4.
    inputs = _vectors(40, 12)
    dropouts = {"advertise": [3], "share": [10], "masked_input": [17], "consistency": [25], "unmask": [33]}
    for seed in (None, 0, 1):
        with _recording() as servers:
            result = simulate(inputs, 4, dropouts=dropouts, neighbours=8, seed=seed)
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
    assert (info.value.stage, info.value.shortfall, info.value.culprits) == ("advertise", 1, ())


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


@pytest.mark.parametrize(
    ("n", "t", "neighbours", "silent"),
    [
        pytest.param(5, None, None, {}, id="complete-default-policy"),
        pytest.param(7, None, None, {2: Stage.SHARE, 7: Stage.UNMASK}, id="complete-dropouts"),
        pytest.param(8, None, None, {3: Stage.MASKED_INPUT, 8: Stage.CONSISTENCY}, id="complete-s-shares"),
        pytest.param(12, 3, 4, {4: Stage.ADVERTISE, 9: Stage.CONSISTENCY}, id="sparse-dropouts"),
    ],
)
def test_honest_round_twice_with_one_seed_gives_one_transcript(
    n: int, t: int | None, neighbours: int | None, silent: dict[int, Stage]
) -> None:
    policy = None if t is None else CURIOUS

    def run(seed: int) -> HonestRound:
        r = HonestRound(n, t, neighbours=neighbours, policy=policy, silent=silent, seed=seed)
        r.run()
        return r

    first, second, other = run(11), run(11), run(12)
    np.testing.assert_array_equal(first.server.result.sum, second.server.result.sum)
    assert first.server.result.survivors == second.server.result.survivors
    expected = tuple(v for v in range(1, n + 1) if v not in silent or silent[v].index > MASKED_INPUT)
    assert first.server.result.survivors == expected
    np.testing.assert_array_equal(first.server.result.sum, exact_sum(first.inputs, expected))
    _assert_same_transcript(first.client_log, second.client_log, "node -> coordinator")
    _assert_same_transcript(first.server_log, second.server_log, "coordinator -> node")
    assert first.client_log[0] != other.client_log[0], "another seed must give other round keys"


@pytest.mark.parametrize("colluders", [0, 1, 2, 3])
def test_simulate_enforces_the_colluder_bound_n6(colluders: int) -> None:
    # Complete graph of 6: against c colluders every node wants 2t > 6 + c.
    inputs = _vectors(6, 3)
    for t in range(1, 7):
        if 2 * t > 6 + colluders:
            result = simulate(inputs, t, colluders=colluders, seed=t)
            np.testing.assert_array_equal(result.sum, _exact_sum(inputs, tuple(range(1, 7)), 3))
        else:
            with pytest.raises(RemoteProtocolError) as info:
                simulate(inputs, t, colluders=colluders, seed=t)
            assert info.value.reason == "weaker-than-policy", (t, colluders)


@pytest.mark.parametrize("neighbours", [2, 4])
def test_simulate_uses_any_threshold_as_given_unless_colluders_are_named(neighbours: int) -> None:
    # DESIGN §6: the threshold passed is used as given, even t = 1 on a sparse graph (every node's
    # own share unmasks it there). Naming colluders makes the nodes enforce their bounds: refused.
    vectors = _vectors(12, 2)
    result = simulate(vectors, 1, neighbours=neighbours)
    np.testing.assert_array_equal(result.sum, exact_sum(dict(enumerate(vectors, 1)), result.survivors))
    with pytest.raises(RemoteProtocolError) as info:
        simulate(vectors, 1, neighbours=neighbours, colluders=0)
    assert info.value.reason == "weaker-than-policy"


def test_simulate_with_colluders_refuses_a_thin_sparse_graph() -> None:
    # k = 2, t = 2 with one colluder: a neighbourhood of 3 with one colluder breaks 2t > 3 + X.
    with pytest.raises(RemoteProtocolError) as info:
        simulate(_vectors(20, 2), 2, neighbours=2, colluders=1, seed=0)
    assert info.value.reason == "weaker-than-policy"


# --- misbehaving participants (HonestRound, with one message changed) -----------------


@dataclass(frozen=True)
class Plan:
    n: int
    t: int
    neighbours: int | None
    silent: dict[int, Stage]
    seed: int

    def build(self) -> HonestRound:
        return HonestRound(self.n, self.t, d=3, neighbours=self.neighbours, policy=CURIOUS, silent=self.silent, seed=self.seed)


@st.composite
def plans(draw: st.DrawFn, max_n: int = 8, quiet: int = 6, slack: int = 0) -> Plan:
    """A round that gets past the reveal stage: nodes only drop from the masked-input stage on
    (each with odds 4 : ``quiet``); t is at most the neighbourhood size less ``slack``, if it can be."""
    n = draw(st.integers(3, max_n), label="n")
    neighbours = draw(st.sampled_from([None, None, 2, 4]), label="neighbours")
    config = make_config(n, 1, neighbours=neighbours)
    # A sparse round needs t >= 2 even without colluders (no node may be a component of its own).
    lowest = 1 if config.is_complete_graph else 2
    t = draw(st.integers(lowest, max(lowest, config.neighbourhood_size - slack)), label="threshold")
    later = [None] * quiet + [Stage.MASKED_INPUT, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK]
    stages = draw(st.lists(st.sampled_from(later), min_size=n, max_size=n), label="silent-from")
    silent = {node: stage for node, stage in enumerate(stages, start=1) if stage is not None}
    return Plan(n, t, neighbours, silent, draw(st.integers(0, 2**32), label="seed"))


def _model_of(r: HonestRound, plan: Plan, reports: Mapping[int, frozenset[int]] | None = None) -> Model:
    """The model's prediction for an HonestRound that got past the reveal stage."""

    def hoods_for(u1: frozenset[int]) -> Mapping[int, frozenset[int]]:
        assert frozenset(entry.sender for entry in r.key_list().entries) == u1
        adverts = {entry.sender: entry for entry in r.key_list().entries}
        hoods = _public_hoods(r.config, adverts, r.reveal_list(), u1)
        assert all(hoods[v] == r.live_neighbours(v) for v in u1)
        return hoods

    silent = {node: stage.index for node, stage in plan.silent.items()}
    return predict(plan.n, plan.t, silent, hoods_for, reports)


def _check_outcome(model: Model, aborted: ProtocolAborted | None, result: object, inputs: Mapping[int, np.ndarray]) -> None:
    """The round ended as ``model`` predicts (for rounds where nobody reveals a wrong share)."""
    expected = model.outcome
    if expected.aborted_at is None:
        assert aborted is None, f"unexpected abort: {aborted} (culprits {aborted.culprits})"
        assert result.survivors == expected.survivors
        assert dict(result.excluded) == {}, result.excluded
        np.testing.assert_array_equal(result.sum, exact_sum(inputs, expected.survivors))
        return
    assert aborted is not None, f"expected an abort at {expected.aborted_at}, got survivors {result.survivors}"
    assert aborted.stage == expected.aborted_at, str(aborted)
    assert aborted.shortfall in expected.shortfalls, str(aborted)
    assert expected.accepts_culprits(aborted.culprits), (aborted.culprits, expected)


def _finish(r: HonestRound, outbox: list) -> ProtocolAborted | None:
    """Run the round on from ``outbox`` (node messages); the coordinator's abort, if any."""
    try:
        while r.server.result is None:
            outbox = r.to_clients(r.to_server(outbox))
    except ProtocolAborted as exc:
        return exc
    return None


def _flip(data: st.DataObject, raw: bytes, what: str) -> bytes:
    i = data.draw(st.integers(0, len(raw) - 1), label=f"{what}: byte")
    mask = data.draw(st.integers(1, 255), label=f"{what}: xor")
    return raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]


@settings(max_examples=_budget(100))
@given(plan=plans(), data=st.data())
def test_any_corrupted_unmask_share_excludes_exactly_its_holder(plan: Plan, data: st.DataObject) -> None:
    r = plan.build()
    try:
        sends = r.run_until(UnmaskRequest)
    except ProtocolAborted:
        reject()  # too few talking to reach unmasking: nothing to corrupt
    model = _model_of(r, plan)
    assert model.outcome.aborted_at in (None, "unmask"), f"the model predicted {model.outcome}, the round went on"
    replies = r.to_clients(sends)
    u5 = model.talking[UNMASK]
    assert all(isinstance(m, UnmaskShares) for m in replies) and {m.sender for m in replies} == u5

    targets = {
        kind: [(i, j) for i, message in enumerate(replies) for j in range(len(getattr(message, f"{kind}_shares")))]
        for kind in ("b", "s")
    }
    kinds = [kind for kind in ("b", "s") if targets[kind]]
    if not kinds:
        reject()  # nobody is left to reveal anything
    kind = data.draw(st.sampled_from(kinds), label="kind of share to corrupt")
    i, j = data.draw(st.sampled_from(targets[kind]), label="(message, share) to corrupt")
    original = replies[i]
    holder = original.sender
    pairs = getattr(original, f"{kind}_shares")
    owner, raw = pairs[j]
    how = data.draw(st.sampled_from(["off-polynomial", "off-polynomial", "byte-flip", "other-x"]), label="how")
    share = Share.from_bytes(raw)
    if how == "off-polynomial":  # a well-formed share, just not the one dealt
        delta = data.draw(st.integers(1, PRIME - 1), label="delta")
        forged = Share(share.x, (share.y + delta) % PRIME).to_bytes()
    elif how == "other-x":  # the right y at another x: malformed, the whole message is refused
        x = data.draw(st.integers(1, plan.n).filter(lambda x: x != holder), label="x")
        forged = Share(x, share.y).to_bytes()
    else:
        forged = _flip(data, raw, "share")
    tampered = dataclasses.replace(original, **{f"{kind}_shares": pairs[:j] + ((owner, forged),) + pairs[j + 1 :]})
    outbox = [tampered if k == i else message for k, message in enumerate(replies)]
    aborted = _finish(r, outbox)

    rejected = any(message is tampered for message, _ in r.server_rejections)
    event(f"corrupted {kind}-share ({'own' if owner == holder else 'peer'}), {'rejected' if rejected else 'accepted'}")
    assert not r.errors, f"an honest node aborted: {r.errors}"
    # Either way the holder's shares are gone and it is named: caught (accepted, then excluded) or
    # refused outright (malformed).
    short = model.unmask_shortfalls(plan.t, lambda o: model.hood[o] & (u5 - {holder}))
    expected_sum = exact_sum(r.inputs, model.outcome.survivors) if not short else None
    if short:
        event("too few good shares left: abort")
        assert aborted is not None, "expected an abort: too few good shares remain"
        assert aborted.stage == "unmask" and aborted.shortfall in short
        assert aborted.culprits == (holder,), aborted.culprits  # named, whether refused or caught
    else:
        event("enough good shares left: exact sum")
        assert aborted is None, f"unexpected abort: {aborted} (culprits {aborted.culprits})"
        result = r.server.result
        assert result.survivors == model.outcome.survivors
        np.testing.assert_array_equal(result.sum, expected_sum)
        # A malformed answer is refused outright, a well-formed wrong one caught by its commitment:
        # either way the holder is named and none of its shares is used.
        assert set(result.excluded) == {holder}, result.excluded
        assert isinstance(result.excluded[holder], str) and result.excluded[holder]
    if how == "off-polynomial":
        assert not rejected, "a well-formed share must be judged by its commitment, not dropped"
    if how == "other-x":
        assert rejected, "a share at another x than its holder's must be refused"


def _redeal(
    r: HonestRound,
    plan: Plan,
    message: ShareKeys,
    holder: int,
    deltas: Mapping[str, int],
    recommit: bool,
    nonce: bytes,
) -> ShareKeys:
    """``message`` with ``holder``'s share of each kind in ``deltas`` moved off the dealer's polynomial.

    The dealer is the adversary here, so the test may use its secrets: its c key is replayed
    from its (deterministic, test-only) entropy stream. With ``recommit`` the dealer also
    commits to the new shares and signs the commitments afresh (the holder cannot tell);
    without, the old commitments and signature stay (the holder can tell).
    """
    config, dealer = r.config, message.sender
    c_keys = AgreementKeyPair.from_private_bytes(entropy_for(plan.seed, f"{config.task}/{config.round_id}/node/{dealer}")(32))
    entries = {entry.sender: entry for entry in r.key_list().entries}
    assert c_keys.public_bytes == entries[dealer].c_pk, "the dealer's c key is the first 32 bytes of its entropy"
    key = share_key(config, c_keys, entries[holder].c_pk, dealer, holder)
    associated = share_associated_data_for(config, dealer, holder)
    ciphertexts = dict(message.ciphertexts)
    plaintext = open_sealed(key, ciphertexts[holder], associated)
    shares = {"s": plaintext[:SHARE_SIZE], "b": plaintext[SHARE_SIZE:]}
    for kind, delta in deltas.items():
        # A point off the dealt polynomial f. For t >= 2 it lies on another polynomial of degree
        # < t with the same secret (through (0, f(0)), this point and t - 2 other holders'
        # points); for t = 1 the "polynomial" is the constant secret, so it is another secret.
        share = Share.from_bytes(shares[kind])
        assert share.x == holder and delta % PRIME
        shares[kind] = Share(holder, (share.y + delta) % PRIME).to_bytes()
    ciphertexts[holder] = seal(key, shares["s"] + shares["b"], associated, nonce=nonce)
    new_ciphertexts = tuple(sorted(ciphertexts.items()))
    if not recommit:
        return dataclasses.replace(message, ciphertexts=new_ciphertexts)
    commitment = share_commitment(config, dealer, holder, "s", shares["s"]) + share_commitment(
        config, dealer, holder, "b", shares["b"]
    )
    commitments = tuple((h, commitment if h == holder else c) for h, c in message.commitments)
    signature = r.identities[dealer].sign(
        commitments_transcript(config, r.graph_seed(), dealer, commitments, message.mask_commitment)
    )
    return ShareKeys(dealer, new_ciphertexts, commitments, signature, message.mask_commitment)


def _dealer_case(
    plan: Plan,
    dealer: int,
    holder: int,
    deltas: Mapping[str, int],
    recommit: bool,
    nonce: bytes = b"\x00" * NONCE_SIZE,
) -> str:
    """Run ``plan`` with ``dealer`` re-dealing ``holder``'s shares (see :func:`_redeal`), check
    everything against the model, and say which case it was."""
    r = plan.build()
    sends = r.run_until(SeedRevealList)  # nobody drops before the masked-input stage
    model = _model_of(r, plan)
    replies = r.to_clients(sends)
    by_dealer = {m.sender: m for m in replies if isinstance(m, ShareKeys)}
    assert set(by_dealer) == model.talking[SHARE] == frozenset(r.config.ids)
    assert holder in {h for h, _ in by_dealer[dealer].ciphertexts}
    patched = _redeal(r, plan, by_dealer[dealer], holder, deltas, recommit, nonce)
    aborted = _finish(r, [patched if m is by_dealer[dealer] else m for m in replies])
    result = r.server.result

    # Nobody honest ever aborts, and nobody honest is ever named.
    assert not r.errors, f"a node aborted: {r.errors}"
    if aborted is not None:
        assert set(aborted.culprits) <= {dealer}, f"an honest node was named: {aborted.culprits}"
    if result is not None:
        assert dict(result.excluded) == {}, f"an honest node was excluded: {result.excluded}"
    # The holder notices a share that fails its commitment; it goes on, and never reveals it.
    for node, client in r.clients.items():
        suspicious = {dealer} if (node == holder and not recommit) else set()
        assert client.bad_dealers == suspicious, (node, client.bad_dealers)
    if not recommit:
        assert dealer in r.clients[holder].shared_with, "the holder still masks with the dealer"
        assert dealer not in r.clients[holder].revealed
        for message in r.unmask_outputs.get(holder, []):
            assert dealer not in {o for o, _ in message.b_shares} | {o for o, _ in message.s_shares}

    t, outcome = plan.t, model.outcome
    if not recommit:
        # The holder reports the dealer with its masked input and never reveals its shares: if
        # that leaves the dealer short, the round stops before anything is revealed and names
        # it (the report cannot be checked: only the holder saw the share); otherwise one share
        # fewer, no blame, exact sum.
        reported = _model_of(r, plan, {holder: frozenset({dealer})})
        _check_outcome(reported, aborted, result, r.inputs)
        reported_by = holder in model.talking.get(MASKED_INPUT, frozenset())
        if aborted is not None and aborted.culprits == (dealer,):
            assert reported_by and aborted.stage in ("masked_input", "consistency"), str(aborted)
            return "commitment mismatch: reported dealer named before any reveal"
        return "commitment mismatch: " + ("abort" if aborted is not None else "sum")

    if outcome.aborted_at not in (None, "unmask"):  # the dropouts decide before anything is revealed
        _check_outcome(model, aborted, result, r.inputs)
        assert aborted.culprits == ()
        return "aborted for dropouts before unmasking"
    u5 = model.talking[UNMASK]
    revealed_kind = "b" if dealer in model.talking[MASKED_INPUT] else "s"
    revealers = model.hood[dealer] & u5
    exact = exact_sum(r.inputs, outcome.survivors)

    if outcome.aborted_at == "unmask":  # too few shares of somebody's secret: that comes first
        assert aborted is not None and aborted.stage == "unmask" and aborted.culprits == ()
        assert aborted.shortfall in outcome.shortfalls
        return "unmask shortfall"
    if revealed_kind not in deltas or holder not in revealers:
        assert aborted is None, f"unexpected abort: {aborted}"
        assert result.survivors == outcome.survivors
        np.testing.assert_array_equal(result.sum, exact)
        return "inconsistent share never revealed: exact sum"
    if len(revealers) > t:
        assert aborted is not None, f"the round finished with survivors {result.survivors}"
        assert (aborted.stage, aborted.culprits) == ("unmask", (dealer,))
        assert str(dealer) in str(aborted)
        return f"more than t shares of {revealed_kind}: dealer named"
    # Exactly t shares: no redundancy to see the bad one, but the secret they give does not open
    # the dealer's commitment (its advertised s_pk for a mask key, its signed self-mask commitment
    # for b): the dealer is named either way.
    assert len(revealers) == t
    assert aborted is not None and (aborted.stage, aborted.culprits) == ("unmask", (dealer,)), aborted
    return f"exactly t shares of {revealed_kind}: dealer named"


@settings(max_examples=_budget(100))
@given(plan=plans(quiet=12, slack=1), data=st.data())
def test_a_dealer_of_inconsistent_shares_is_named_and_nobody_else(plan: Plan, data: st.DataObject) -> None:
    # The dealer's own fate decides which of its secrets is rebuilt: b if it survives, s if it
    # drops after dealing (its masked input never arrives).
    dealer = data.draw(st.integers(1, plan.n), label="dealer")
    dealer_silent = data.draw(st.sampled_from([None, Stage.MASKED_INPUT, Stage.UNMASK]), label="dealer silent from")
    silent = {node: stage for node, stage in plan.silent.items() if node != dealer}
    if dealer_silent is not None:
        silent[dealer] = dealer_silent
    plan = dataclasses.replace(plan, silent=silent)
    config = make_config(plan.n, plan.t, neighbours=plan.neighbours)
    if config.is_complete_graph:
        holders = [v for v in config.ids if v != dealer]
    else:  # the holders depend on the graph seed: find them in an honest run with the same seed
        probe = plan.build()
        probe.run_until(SeedRevealList)
        holders = sorted(probe.live_neighbours(dealer) - {dealer})
    holder = data.draw(st.sampled_from(holders), label="holder")
    rebuilt = "s" if dealer_silent is Stage.MASKED_INPUT else "b"  # the secret the others reveal
    other = "b" if rebuilt == "s" else "s"
    kinds = data.draw(st.sampled_from([(rebuilt,), ("s", "b"), (rebuilt,), (other,)]), label="kinds")
    deltas = {kind: data.draw(st.integers(1, PRIME - 1), label=f"delta {kind}") for kind in kinds}
    recommit = data.draw(st.sampled_from([True, True, False]), label="commitments match the new shares")
    nonce = data.draw(st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE), label="nonce")
    event(_dealer_case(plan, dealer, holder, deltas, recommit, nonce))


def test_a_dealer_named_with_exactly_t_shares_of_its_mask_key() -> None:
    # n=5, t=3: dealer 1 drops after dealing, node 5 before unmasking: exactly 3 s-shares of 1.
    plan = Plan(5, 3, None, {1: Stage.MASKED_INPUT, 5: Stage.UNMASK}, seed=3)
    assert _dealer_case(plan, 1, 2, {"s": 1}, recommit=True) == "exactly t shares of s: dealer named"


def test_a_dealer_named_with_more_than_t_shares() -> None:
    plan = Plan(6, 3, None, {1: Stage.MASKED_INPUT}, seed=4)
    assert _dealer_case(plan, 1, 4, {"s": 7}, recommit=True) == "more than t shares of s: dealer named"
    plan = Plan(6, 3, None, {}, seed=4)
    assert _dealer_case(plan, 6, 1, {"b": PRIME - 1}, recommit=True) == "more than t shares of b: dealer named"


def test_a_wrong_self_mask_seed_from_exactly_t_shares_names_the_dealer() -> None:
    # With exactly t b-shares there is no redundancy to locate the bad share, but the seed they
    # give does not open the dealer's signed self-mask commitment. Nobody honest is blamed.
    plan = Plan(5, 3, None, {4: Stage.UNMASK, 5: Stage.UNMASK}, seed=5)
    assert _dealer_case(plan, 1, 2, {"b": 1}, recommit=True) == "exactly t shares of b: dealer named"


def test_a_holder_keeps_going_past_a_share_that_fails_its_commitment() -> None:
    # Changed by design: the holder used to abort; now it records the dealer and never reveals it.
    plan = Plan(6, 3, None, {}, seed=6)
    assert _dealer_case(plan, 2, 5, {"s": 1, "b": 1}, recommit=False) == "commitment mismatch: sum"


def test_a_report_that_leaves_the_dealer_short_names_it_before_any_reveal() -> None:
    # n = t = 4: dealer 1 needs all four holders; holder 2 reports its share as bad with its
    # masked input, so the coordinator stops at once, naming 1 (nothing has been revealed).
    plan = Plan(4, 4, None, {}, seed=7)
    outcome = _dealer_case(plan, 1, 2, {"b": 1}, recommit=False)
    assert outcome == "commitment mismatch: reported dealer named before any reveal"


# --- bad arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"dropouts": {"unmasking": [1]}}, id="unknown-stage"),
        pytest.param({"dropouts": {"Share": [1]}}, id="stage-name-case"),
        pytest.param({"dropouts": {"Reveal": [1]}}, id="reveal-name-case"),
        pytest.param({"dropouts": {"share": [0]}}, id="id-zero"),
        pytest.param({"dropouts": {"share": [5]}}, id="id-above-n"),
        pytest.param({"dropouts": {"reveal": [5]}}, id="reveal-id-above-n"),
        pytest.param({"dropouts": {"share": [-1]}}, id="negative-id"),
        pytest.param({"dropouts": {"share": ["1"]}}, id="id-string"),
        pytest.param({"dropouts": {"share": [1.0]}}, id="id-float"),
        pytest.param({"threshold": 0}, id="threshold-zero"),
        pytest.param({"threshold": 5}, id="threshold-above-n"),
        pytest.param({"threshold": 4, "neighbours": 0}, id="neighbours-zero"),
        pytest.param({"colluders": -1}, id="colluders-negative"),
        pytest.param({"colluders": 0.5}, id="colluders-fraction"),
        pytest.param({"colluders": True}, id="colluders-bool"),
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
