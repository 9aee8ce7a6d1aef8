"""The node's release guard and colluder bound, against a coordinator that plays its own game.

Adversary: the coordinator itself. It drives real
:class:`securefed.federation.node.Node` objects in-process (each on a fake
socket, with its own SQLite :class:`NodeState` and signed audit log) through a
real :class:`~securefed.secagg.server.ServerProtocol`, exactly as
:class:`securefed.federation.coordinator.Coordinator` does, but it chooses the
aggregation ids, round numbers, cohorts, thresholds and models itself.

* Rerun and subtract: after round r has been unmasked, a fresh aggregation of
  the same round without a victim would give the victim's update as the
  difference of the two sums. Every honest node refuses it (Refusal reason
  ``rerun``) before training, says so in its audit log, and does the same for
  the same model relabelled as another round, and after a restart.
* An attempt aborted before any unmasking share left released nothing (masked
  inputs are one-time padded), so its retry is joined.
* The colluder bound 2t > N + c is computed from the node's own roster of N,
  never from the cohort the coordinator lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from securefed.audit.log import AuditLog, verify_log
from securefed.crypto.identity import SigningKey
from securefed.errors import ProtocolAborted, RemoteProtocolError
from securefed.federation.messages import Envelope, Hello, Refusal, RoundResult, RoundStart
from securefed.federation.node import Node, NodePolicy, NodeState
from securefed.federation.spec import RoundSpec, round_context
from securefed.federation.update import TrainingUpdateCodec, choose_fractional_bits
from securefed.learning.data import LocalDataset
from securefed.learning.models import ModelAdapter, make_adapter
from securefed.secagg.bounds import default_colluders, minimum_safe_threshold
from securefed.secagg.config import RoundConfig
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    Deadline,
    MaskedInput,
    PeerGone,
    RoundAborted,
    SeedReveal,
    ShareKeys,
    Stage,
    UnmaskShares,
)
from securefed.secagg.server import AggregateResult, ServerProtocol
from tests.fakes import FakeNodeSocket

TASK = "release-guard-task"
N_FEATURES, CLASSES = 4, (0, 1)
CLIP_NORM, WEIGHT_CAP = 10.0, 100
STEP = 0.01  # every node's (spied) local update: + STEP on every parameter
_NODE_MESSAGES = (AdvertiseKeys, SeedReveal, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)


# --- a spy in place of local training ------------------------------------------------------------


class TrainingSpy:
    """Counts local trainings; each returns the global model plus ``STEP`` (a known update)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, params: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.asarray(params, dtype=np.float64) + STEP


@pytest.fixture
def training(monkeypatch: pytest.MonkeyPatch) -> TrainingSpy:
    spy = TrainingSpy()
    monkeypatch.setattr(ModelAdapter, "fit_local", lambda self, params, *a, **k: spy(params))
    return spy


def _adapter() -> ModelAdapter:
    return make_adapter("sgd_logistic", N_FEATURES, CLASSES)


def _model(shift: float = 0.0) -> np.ndarray:
    return _adapter().initial_parameters() + shift


def _model_hash(model: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(model + 0.0, dtype="<f8").tobytes()).hexdigest()


# --- sites: one real Node each, with durable state and an audit log --------------------------------


class Site:
    """One real Node on a fake socket, with its own NodeState (SQLite) and signed audit log on disk."""

    def __init__(
        self, folder: Path, name: str, identity: SigningKey, roster: dict[str, bytes], policy: NodePolicy, seed: int
    ) -> None:
        self.folder, self.name, self.identity, self.roster, self.policy = folder, name, identity, roster, policy
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(40, N_FEATURES))
        self.dataset = LocalDataset(X, (X[:, 0] > 0).astype(np.int64), None)
        folder.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self.socket = FakeNodeSocket()
        self.state = NodeState(self.folder / "node.sqlite")
        self.audit = AuditLog(self.folder / "audit.log", self.identity, on_append=self.state.set_audit_head)
        self.node = Node(
            self.name, TASK, self.socket, self.identity, self.roster, self.dataset, self.state, self.policy,
            audit_log=self.audit,
        )  # fmt: skip
        self._read = 0

    def restart(self) -> None:
        """What a node process restart does: everything in memory is gone, the files stay."""
        self.state.close()
        self._open()

    def new_messages(self) -> list[Envelope]:
        fresh = self.socket.sent[self._read :]
        self._read = len(self.socket.sent)
        return fresh

    def said(self, aggregation: int, kind: type) -> list:
        return [e.body for e in self.socket.sent if e.aggregation == aggregation and isinstance(e.body, kind)]

    def receipts(self) -> list[dict]:
        report = verify_log(self.folder / "audit.log", self.identity.public_bytes, self.state.audit_head())
        assert report.ok, report.problems
        return [entry.receipt for entry in report.entries]

    def close(self) -> None:
        self.state.close()


def make_sites(
    tmp_path: Path, roster_size: int, members: int, policy: NodePolicy | None = None
) -> tuple[dict[str, Site], dict[str, bytes]]:
    """A federation roster of ``roster_size`` names; real nodes for the first ``members`` of them."""
    names = [f"site-{i:02d}" for i in range(1, roster_size + 1)]
    keys = {name: SigningKey.generate() for name in names}
    roster = {name: key.public_bytes for name, key in keys.items()}
    sites = {
        name: Site(tmp_path / name, name, keys[name], roster, policy or NodePolicy(), seed)
        for seed, name in enumerate(names[:members])
    }
    return sites, roster


# --- the coordinator: a real ServerProtocol, driven the way Coordinator drives it ------------------


@dataclass
class Attempt:
    aggregation: int
    round: int
    cohort: list[str]
    model: np.ndarray
    server: ServerProtocol
    codec: TrainingUpdateCodec
    result: AggregateResult | None = None
    aborted: ProtocolAborted | None = None
    refusals: dict[str, Refusal] = field(default_factory=dict)
    held: list = field(default_factory=list)  # sends withheld when the coordinator stopped early

    @property
    def ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.cohort, start=1)}


class PlayingCoordinator:
    """Builds RoundStart messages and runs the real server state machine; chooses everything itself."""

    def __init__(self, sites: dict[str, Site], roster: dict[str, bytes]) -> None:
        self.sites, self.roster = sites, roster

    def start(self, aggregation: int, round_number: int, cohort: list[str], model: np.ndarray, threshold: int) -> Attempt:
        n = len(cohort)
        fractional_bits = choose_fractional_bits(CLIP_NORM, n)
        adapter = _adapter()
        spec = RoundSpec(
            task=TASK, round=round_number, phase="train", model_kind="sgd_logistic", model_options={},
            n_features=N_FEATURES, classes=CLASSES, epochs=1, learning_rate=0.1, batch_size=8, clip_norm=CLIP_NORM,
            fractional_bits=fractional_bits, weight_cap=WEIGHT_CAP, threshold=threshold, neighbours=None,
            masking=True, dp=None,
        ).to_json()  # fmt: skip
        pairs = tuple((i, name) for i, name in enumerate(cohort, start=1))
        codec = TrainingUpdateCodec(adapter.parameter_count, CLIP_NORM, fractional_bits, WEIGHT_CAP, n)
        config = RoundConfig(TASK, aggregation, n, threshold, codec.vector_length, round_context(spec, pairs, model))
        server = ServerProtocol(config, {i: self.roster[name] for i, name in pairs})
        for i, name in pairs:
            self.sites[name].socket.inbox.append(Envelope(TASK, aggregation, RoundStart(i, pairs, spec, model)))
        return Attempt(aggregation, round_number, list(cohort), model, server, codec)

    def run(self, attempt: Attempt, stop_at: Stage | None = None, max_turns: int = 100) -> Attempt:
        """Relay until the aggregation completes or aborts, or (``stop_at``) until the stage before it has
        closed: then what the server would send next is withheld, and the coordinator does what the test says."""
        ids = attempt.ids
        for _ in range(max_turns):
            progress = False
            for name in attempt.cohort:
                site = self.sites[name]
                site.node.step(0)
                for envelope in site.new_messages():
                    if envelope.aggregation != attempt.aggregation or isinstance(envelope.body, Hello):
                        continue
                    progress = True
                    body = envelope.body
                    if isinstance(body, Refusal):
                        attempt.refusals[name] = body
                        event = PeerGone(ids[name])
                    else:
                        assert isinstance(body, _NODE_MESSAGES) and body.sender == ids[name], body
                        event = body
                    if self._feed(attempt, event, stop_at):
                        return attempt
            if not progress:  # everyone still in the round is silent: the stage's deadline passes
                if self._feed(attempt, Deadline(attempt.server.stage), stop_at):
                    return attempt
        pytest.fail(f"aggregation {attempt.aggregation} did not end in {max_turns} turns (stage {attempt.server.stage})")

    def _feed(self, attempt: Attempt, event: object, stop_at: Stage | None) -> bool:
        server = attempt.server
        try:
            sends = server.receive(event)
        except ProtocolAborted as exc:
            attempt.aborted = exc
            self.abort(attempt, "too-few-nodes")
            return True
        except RemoteProtocolError as exc:  # pragma: no cover - honest nodes never trigger it
            pytest.fail(f"the server rejected an honest node's message: {exc}")
        if stop_at is not None and server.stage is stop_at:
            attempt.held = sends
            return True
        for send in sends:
            self._send(attempt, attempt.cohort[send.to - 1], send.message)
        if server.result is not None:
            attempt.result = server.result
            return True
        return False

    def _send(self, attempt: Attempt, name: str, body: object) -> None:
        self.sites[name].socket.inbox.append(Envelope(TASK, attempt.aggregation, body))

    def finish(self, attempt: Attempt) -> None:
        """Tell the cohort the aggregation completed, as Coordinator._apply does."""
        for name in attempt.cohort:
            self._send(attempt, name, RoundResult(True, len(attempt.result.survivors), "done"))
        self.deliver(attempt)

    def abort(self, attempt: Attempt, reason: str) -> None:
        for name in attempt.cohort:
            self._send(attempt, name, RoundAborted(reason))
        self.deliver(attempt)

    def deliver(self, attempt: Attempt) -> None:
        for name in attempt.cohort:
            self.sites[name].node.step(0)
            self.sites[name].new_messages()


def _complete(coordinator: PlayingCoordinator, attempt: Attempt) -> AggregateResult:
    coordinator.run(attempt)
    assert attempt.aborted is None and attempt.refusals == {}, (attempt.aborted, attempt.refusals)
    assert attempt.result is not None
    assert attempt.result.survivors == tuple(range(1, len(attempt.cohort) + 1))
    mean, _ = attempt.codec.decode_mean(attempt.result.sum, len(attempt.result.survivors))
    assert np.allclose(mean, STEP, atol=1e-3), mean  # the real sum of the cohort's updates, unmasked
    return attempt.result


def _assert_refused_before_training(
    site: Site, attempt: Attempt, reason: str, trained_before: int, training: TrainingSpy, says: str
) -> None:
    refusal = attempt.refusals.get(site.name)
    assert refusal is not None and refusal.reason == reason, (site.name, attempt.refusals)
    assert says in refusal.detail, refusal.detail
    assert site.said(attempt.aggregation, AdvertiseKeys) == [], "the node advertised keys for a round it refuses"
    assert training.calls == trained_before, "a node trained before refusing"
    last = site.receipts()[-1]  # and the site's own signed audit log says so
    assert last["aggregation"] == attempt.aggregation and last["outcome"] == "refused", last
    assert last["detail"].startswith(f"{reason}: ") and says in last["detail"], last


# --- (a) rerun and subtract ------------------------------------------------------------------------

ROSTER = 5  # default policy: c = max(1, ceil(5/5)) = 1, so 2t > 5 + 1 needs t >= 4
T = 4


def test_the_parameters_used_here_pass_the_default_colluder_bound() -> None:
    assert default_colluders(ROSTER) == 1 and minimum_safe_threshold(ROSTER, 1) == T
    # The rerun below lists 4 of the 5 with t = 4 (2 * 4 > 5 + 1): only the release guard can stop it.
    assert 2 * T > ROSTER + default_colluders(ROSTER)


@pytest.mark.parametrize("ending", ["completed", "abort-claimed-after-unmasking"])
def test_rerun_of_an_unmasked_round_without_the_victim_is_refused_by_every_honest_node(
    tmp_path: Path, training: TrainingSpy, ending: str
) -> None:
    sites, roster = make_sites(tmp_path, ROSTER, ROSTER)
    names = list(sites)
    victim, honest = names[-1], names[:-1]
    coordinator = PlayingCoordinator(sites, roster)
    model = _model()

    first = coordinator.start(1, 1, names, model, T)
    _complete(coordinator, first)
    if ending == "completed":
        coordinator.finish(first)
    else:  # a coordinator that claims failure after it has every unmasking share: it still got the sum
        coordinator.abort(first, "too-few-nodes")
    for site in sites.values():
        assert len(site.said(1, UnmaskShares)) == 1  # released
        assert site.receipts()[-1]["outcome"] == "completed"
    assert training.calls == ROSTER

    # Same round, same model, a fresh aggregation id, the victim left out. It passes every other check.
    rerun = coordinator.run(coordinator.start(2, 1, honest, model, T))
    for name in honest:
        _assert_refused_before_training(
            sites[name], rerun, "rerun", ROSTER, training, "already released its train contribution to round 1 (aggregation 1)"
        )
    assert rerun.result is None and rerun.aborted is not None and rerun.aborted.stage == "advertise"

    # The same model relabelled as the next round: refused by its hash.
    relabelled = coordinator.run(coordinator.start(3, 2, honest, model, T))
    for name in honest:
        _assert_refused_before_training(
            sites[name], relabelled, "rerun", ROSTER, training, "computed from this exact model (aggregation 1)"
        )
    assert relabelled.result is None
    # The victim really was left out of both: its audit log has the first aggregation only.
    assert [receipt["aggregation"] for receipt in sites[victim].receipts()] == [first.aggregation]

    # Control: the genuine next round (a new model) is joined by everyone, victim included.
    control = coordinator.start(4, 2, names, _model(0.5), T)
    _complete(coordinator, control)
    assert training.calls == 2 * ROSTER
    last = sites[victim].receipts()[-1]
    assert last["aggregation"] == control.aggregation and last["outcome"] == "completed", last
    for site in sites.values():
        site.close()


def test_a_signed_zero_twin_of_a_released_model_or_an_earlier_round_number_is_refused(
    tmp_path: Path, training: TrainingSpy
) -> None:
    """The same model with a zero written as -0.0 is the same model (it evaluates and trains the same):
    it must not get past the guard under a new round number. Nor may a round number go backwards."""
    sites, roster = make_sites(tmp_path, ROSTER, ROSTER)
    names = list(sites)
    honest = names[:-1]
    coordinator = PlayingCoordinator(sites, roster)
    model = _model()
    model[0] = 0.0
    _complete(coordinator, coordinator.start(1, 2, names, model, T))  # round 2 released
    twin = model.copy()
    twin[0] = -0.0
    assert twin.tobytes() != model.tobytes() and np.array_equal(twin, model)
    renumbered = coordinator.run(coordinator.start(2, 5, honest, twin, T))
    for name in honest:
        _assert_refused_before_training(sites[name], renumbered, "rerun", ROSTER, training, "computed from this exact model")
    earlier = coordinator.run(coordinator.start(3, 1, honest, _model(0.25), T))
    for name in honest:
        _assert_refused_before_training(sites[name], earlier, "rerun", ROSTER, training, "round 1 or any earlier one")
    _complete(coordinator, coordinator.start(4, 3, names, _model(0.5), T))  # the next round is joined
    for site in sites.values():
        site.close()


# --- (b) an abort before unmasking released nothing: the retry is joined -----------------------------


@pytest.mark.parametrize(
    ("stop_at", "sent_masked_input"),
    [
        (Stage.REVEAL, False),  # keys advertised, key list never sent
        (Stage.CONSISTENCY, True),  # every masked input collected, consistency request never sent
        (Stage.UNMASK, True),  # every consistency signature collected, unmask request never sent
    ],
    ids=["after-advertise", "after-masked-input", "after-consistency"],
)
def test_a_retry_after_an_abort_before_unmasking_is_joined(
    tmp_path: Path, training: TrainingSpy, stop_at: Stage, sent_masked_input: bool
) -> None:
    sites, roster = make_sites(tmp_path, ROSTER, ROSTER)
    names = list(sites)
    coordinator = PlayingCoordinator(sites, roster)
    model = _model()

    first = coordinator.run(coordinator.start(1, 1, names, model, T), stop_at=stop_at)
    assert first.result is None and first.aborted is None and first.held  # stopped by the coordinator
    coordinator.abort(first, "too-few-nodes")
    for site in sites.values():
        assert len(site.said(1, MaskedInput)) == int(sent_masked_input)
        assert site.said(1, UnmaskShares) == []
        receipt = site.receipts()[-1]
        assert receipt["aggregation"] == 1 and receipt["outcome"] == "aborted-by-coordinator", receipt
        assert receipt["sent_masked_input"] is sent_masked_input
        assert receipt["revealed_b_shares_of"] == [] and receipt["revealed_s_shares_of"] == []
        assert site.state.released(TASK, "train", 1, _model_hash(model)) is None

    # The retry: same round, same model, a fresh aggregation id. Everyone trains again and it completes.
    retry = coordinator.start(2, 1, names, model, T)
    _complete(coordinator, retry)
    coordinator.finish(retry)
    # Nodes train once their shares are dealt: an attempt stopped right after advertising trained nobody.
    assert training.calls == (2 if sent_masked_input else 1) * ROSTER
    for site in sites.values():
        assert site.receipts()[-1]["aggregation"] == 2 and site.receipts()[-1]["outcome"] == "completed"
        assert site.state.released(TASK, "train", 1, _model_hash(model)) is not None  # from now on it is
    for site in sites.values():
        site.close()


# --- (c) the guard is durable ------------------------------------------------------------------------


def test_the_release_guard_survives_a_restart(tmp_path: Path, training: TrainingSpy) -> None:
    sites, roster = make_sites(tmp_path, ROSTER, ROSTER)
    names = list(sites)
    coordinator = PlayingCoordinator(sites, roster)
    model = _model()
    first = coordinator.start(1, 1, names, model, T)
    _complete(coordinator, first)
    coordinator.finish(first)

    for site in sites.values():  # every node process restarts: new NodeState on the same SQLite file
        site.restart()
        assert site.node.current is None and site.node.refused == 0
    rerun = coordinator.run(coordinator.start(2, 1, names[:-1], model, T))
    for name in names[:-1]:
        _assert_refused_before_training(sites[name], rerun, "rerun", ROSTER, training, "round 1 (aggregation 1)")
    relabelled = coordinator.run(coordinator.start(3, 7, names[:-1], model, T))
    for name in names[:-1]:
        _assert_refused_before_training(sites[name], relabelled, "rerun", ROSTER, training, "exact model")

    # A second, independent connection to the file sees the same (what a fresh process reads first).
    for site in sites.values():
        site.close()
        reopened = NodeState(site.folder / "node.sqlite")
        try:
            assert reopened.released(TASK, "train", 1, "another-model") is not None
            assert reopened.released(TASK, "train", 9, _model_hash(model)) is not None
            assert reopened.released(TASK, "train", 2, "another-model") is None
            assert reopened.released(TASK, "evaluate", 1, _model_hash(model)) is None  # phases are separate
        finally:
            reopened.close()


# --- (d) the colluder bound, from the node's own roster ---------------------------------------------------


def test_default_policy_refuses_a_threshold_that_fails_the_bound_for_its_own_roster(
    tmp_path: Path, training: TrainingSpy
) -> None:
    """Roster of 10 (c = 2 by default); the coordinator lists a cohort of 6 with t = 5: 2 * 5 = 10 <= 10 + 2.
    Judged by the cohort it lists (N = 6, c = 2: 10 > 8) the round would pass: only the roster catches it."""
    sites, roster = make_sites(tmp_path, 10, 6)
    assert default_colluders(10) == 2 and 2 * 5 > 6 + default_colluders(6)
    coordinator = PlayingCoordinator(sites, roster)
    attempt = coordinator.run(coordinator.start(1, 1, list(sites), _model(), 5))
    for site in sites.values():
        _assert_refused_before_training(site, attempt, "weaker-than-policy", 0, training, "roster of 10")
        assert "2t > N + c = 10 + 2" in attempt.refusals[site.name].detail
    assert attempt.result is None and attempt.aborted is not None


@pytest.mark.parametrize(
    ("max_colluders", "threshold", "joined"),
    [
        (None, 6, False),  # default c = 2: 2 * 6 = 12 <= 12; no threshold for 6 of 10 passes (needs 7)
        (0, 5, False),  # c = 0: 2 * 5 = 10 is not > 10
        (0, 6, True),  # c = 0, knowingly: 2 * 6 = 12 > 10
        (1, 6, True),  # c = 1: 12 > 11
        (0.2, 6, False),  # a fraction of the roster: ceil(0.2 * 10) = 2, as the default
    ],
)
def test_a_site_that_states_fewer_colluders_accepts_what_the_bound_then_allows(
    tmp_path: Path, training: TrainingSpy, max_colluders: int | float | None, threshold: int, joined: bool
) -> None:
    sites, roster = make_sites(tmp_path, 10, 6, NodePolicy(max_colluders=max_colluders))
    coordinator = PlayingCoordinator(sites, roster)
    attempt = coordinator.start(1, 1, list(sites), _model(), threshold)
    if joined:
        _complete(coordinator, attempt)
        assert training.calls == 6
        return
    coordinator.run(attempt)
    for site in sites.values():
        _assert_refused_before_training(site, attempt, "weaker-than-policy", 0, training, "roster of 10")
