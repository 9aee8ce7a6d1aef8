"""The site's DP policy, enforced by the node: a round weaker than the policy is refused before training.

Every round here meets the default colluder bound of the node's own roster (2t > N + c with c = max(1,
ceil(N/5))): a single site sees a roster of 4 (c = 1), so a cohort of 3 needs t = 3; the in-process
federations below have rosters of 3 or 4 (t = 3 either way), and the coordinator picks that threshold itself
(TaskDefinition.threshold unset). So a refusal below is about DP, not about the threshold. The noise is sized
for t - c honest survivors (here 3 - 1 = 2), as the coordinator plans it.

A :class:`securefed.federation.node.Node` is driven in-process through a fake
socket (``poll`` / ``send``); ``RoundStart`` envelopes are built by hand. The
adapter's ``fit_local`` is replaced by a spy so a test can tell whether the
node trained before it refused. The last test runs a whole DP task in-process
(the real coordinator and four real nodes over an in-memory hub) and shows a
site whose policy allows epsilon = 1 stop taking part once its ledger gets
there, and say so.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from securefed.crypto.identity import SigningKey
from securefed.dp.accountant import SkellamRelease, skellam_epsilon
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.dp.mechanism import SkellamParameters, plan_skellam
from securefed.errors import StorageError
from securefed.federation.coordinator import Coordinator
from securefed.federation.messages import Envelope, Hello, Refusal, RoundStart
from securefed.federation.node import Node, NodePolicy, NodeState
from securefed.federation.spec import RoundSpec
from securefed.federation.store import CoordinatorStore
from securefed.federation.task import STAGE_NAMES, NodeEntry, TaskDefinition
from securefed.learning.data import LocalDataset
from securefed.learning.models import ModelAdapter, make_adapter
from securefed.secagg.messages import AdvertiseKeys, MaskedInput
from tests.fakes import FakeNodeSocket
from tests.inprocess import Hub

TASK = "dp-policy-task"
DELTA = 1e-5
N_FEATURES, CLASSES = 4, (0, 1)
NAMES = ["site-1", "site-2", "site-3", "site-4"]


class FakeSocket(FakeNodeSocket):
    """What a Node needs of its socket; records every send."""

    def bodies(self, kind: type) -> list:
        return [e.body for e in self.sent if isinstance(e.body, kind)]


class TrainingSpy:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, adapter: ModelAdapter, params: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        self.calls += 1
        return np.asarray(params, dtype=np.float64) + 0.01


@pytest.fixture
def training(monkeypatch: pytest.MonkeyPatch) -> TrainingSpy:
    spy = TrainingSpy()
    monkeypatch.setattr(ModelAdapter, "fit_local", lambda self, params, *a, **k: spy(self, params, *a, **k))
    return spy


def _dataset(seed: int = 0, n: int = 60) -> LocalDataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    y = (X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return LocalDataset(X, y, None)


def _adapter():
    return make_adapter("sgd_logistic", N_FEATURES, CLASSES)


class Site:
    """One node under test plus its fake socket, state and ledger."""

    def __init__(self, tmp_path: Path, policy: NodePolicy, ledger: bool = True, name: str = "site-1") -> None:
        self.keys = {n: SigningKey.generate() for n in NAMES}
        roster = {n: k.public_bytes for n, k in self.keys.items()}
        self.socket = FakeSocket()
        self.ledger = PrivacyLedger(tmp_path / "ledger.sqlite", policy.budget()) if ledger else None
        self.state = NodeState(tmp_path / "node.sqlite")
        self.node = Node(name, TASK, self.socket, self.keys[name], roster, _dataset(), self.state, policy, ledger=self.ledger)

    def start(self, aggregation: int, spec: dict, cohort: int = 3, node_id: int = 1) -> None:
        pairs = tuple((i, NAMES[i - 1]) for i in range(1, cohort + 1))
        model = _adapter().initial_parameters()
        self.socket.inbox.append(Envelope(TASK, aggregation, RoundStart(node_id, pairs, spec, model)))
        self.node.step(0)

    def refusals(self) -> list[Refusal]:
        return self.socket.bodies(Refusal)

    def close(self) -> None:
        self.state.close()
        if self.ledger is not None:
            self.ledger.close()


#: the smallest threshold a default policy with a roster of 4 (NAMES) accepts: 2t > 4 + 1
SAFE_T = 3


#: the default colluder bound of that roster: max(1, ceil(4 / 5))
SAFE_C = 1


def _spec(dp: dict | None, threshold: int = SAFE_T, phase: str = "train", round_number: int = 1, masking: bool = True) -> dict:
    return RoundSpec(
        task=TASK,
        round=round_number,
        phase=phase,
        model_kind="sgd_logistic",
        model_options={},
        n_features=N_FEATURES,
        classes=CLASSES,
        epochs=1,
        learning_rate=0.1,
        batch_size=8,
        clip_norm=10.0,
        fractional_bits=16,
        weight_cap=100,
        threshold=threshold,
        neighbours=None,
        masking=masking,
        dp=dp,
    ).to_json()


def _dp(
    target: float = 4.0, rounds: int = 3, cohort: int = 3, threshold: int = SAFE_T, colluders: int = SAFE_C
) -> tuple[dict, SkellamParameters]:
    """The coordinator's plan: noise sized for t - c honest survivors."""
    plan = plan_skellam(target, DELTA, rounds, 0.5, _adapter().parameter_count, cohort, threshold - colluders)
    return plan.to_spec(DELTA, target, rounds), plan


# --- the positive control: a round within the policy is joined ---------------------------------


def test_a_dp_round_within_the_policy_is_trained_on_and_joined(tmp_path: Path, training: TrainingSpy) -> None:
    dp, plan = _dp()
    site = Site(tmp_path, NodePolicy(max_epsilon=4.0, min_noise_multiplier=1.0))
    assert plan.noise_multiplier > 1.0
    site.start(7, _spec(dp))
    assert site.refusals() == []
    assert training.calls == 0  # it trains once its shares are dealt, after the key exchange
    assert len(site.socket.bodies(AdvertiseKeys)) == 1
    assert site.ledger.entries() == []  # charged only when the masked input is about to leave
    site.close()


# --- refusals before training -----------------------------------------------------------------


def _refused(site: Site, training: TrainingSpy, reason: str) -> Refusal:
    refusals = site.refusals()
    assert [r.reason for r in refusals] == [reason], refusals
    assert training.calls == 0, "the node trained before refusing"
    assert site.socket.bodies(AdvertiseKeys) == []
    assert site.node.refused == 1 and site.node.current is None
    return refusals[0]


def test_dp_policy_refuses_a_round_without_dp(tmp_path: Path, training: TrainingSpy) -> None:
    site = Site(tmp_path, NodePolicy(max_epsilon=1.0))
    site.start(1, _spec(None))
    refusal = _refused(site, training, "dp-required")
    assert "differential privacy" in refusal.detail and "1.0" in refusal.detail
    site.close()


def test_total_only_dp_policy_also_refuses_a_round_without_dp(tmp_path: Path, training: TrainingSpy) -> None:
    site = Site(tmp_path, NodePolicy(max_epsilon_total=3.0))
    site.start(1, _spec(None))
    _refused(site, training, "dp-required")
    site.close()


def test_noise_below_the_sites_minimum_multiplier_is_refused(tmp_path: Path, training: TrainingSpy) -> None:
    dp, plan = _dp(target=4.0, rounds=3)
    site = Site(tmp_path, NodePolicy(max_epsilon=100.0, min_noise_multiplier=plan.noise_multiplier * 1.05))
    site.start(1, _spec(dp))
    refusal = _refused(site, training, "weaker-than-policy")
    assert f"{plan.noise_multiplier:.3f}" in refusal.detail and "minimum" in refusal.detail
    site.close()


def test_noise_sized_for_more_honest_survivors_than_t_minus_c_is_refused(tmp_path: Path, training: TrainingSpy) -> None:
    """Noise for 3 survivors in a round with threshold 3, at a site whose bound is one colluder: exactly t
    survivors, one of whom colludes and adds nothing, would carry 2/3 of the noise charged for."""
    dp, plan = _dp(cohort=3, threshold=SAFE_T, colluders=0)
    assert plan.assumed_survivors == 3
    site = Site(tmp_path, NodePolicy(max_epsilon=100.0))
    site.start(1, _spec(dp, threshold=SAFE_T))
    refusal = _refused(site, training, "weaker-than-policy")
    assert "sized for 3 honest survivors" in refusal.detail and "threshold 3 and 1 colluders" in refusal.detail
    assert "only 2 are certain" in refusal.detail
    site.close()


@pytest.mark.parametrize(
    ("site_colluders", "sized_for", "joins"),
    [
        (1, 2, True),  # t - c exactly: the plan the coordinator makes
        (1, 1, True),  # more noise per node than needed is never refused (the old "must equal t" rule is gone)
        (0, 3, True),  # a site that assumes no colluders accepts noise sized for all t survivors
        (1, 3, False),  # noise for all t survivors at a site that fears one colluder: too weak
    ],
)
def test_noise_sizing_is_checked_against_the_sites_own_colluder_bound(
    tmp_path: Path, training: TrainingSpy, site_colluders: int, sized_for: int, joins: bool
) -> None:
    dp, plan = _dp(cohort=3, threshold=SAFE_T, colluders=SAFE_T - sized_for)
    assert plan.assumed_survivors == sized_for
    site = Site(tmp_path, NodePolicy(max_epsilon=100.0, max_colluders=site_colluders))
    site.start(1, _spec(dp, threshold=SAFE_T))
    if joins:
        assert site.refusals() == [] and len(site.socket.bodies(AdvertiseKeys)) == 1
    else:
        assert [r.reason for r in site.refusals()] == ["weaker-than-policy"] and training.calls == 0
        assert "honest survivors" in site.refusals()[0].detail
    site.close()


@pytest.mark.parametrize("colluders", [SAFE_C, 0], ids=["sized-for-t-minus-c", "sized-for-t"])
def test_dp_round_with_masking_off_is_refused(tmp_path: Path, training: TrainingSpy, colluders: int) -> None:
    """Issue 10, finding 3: unmasked, a node's own vector carries only its share of the noise (V/(t - c)), but
    the ledger would charge for the whole V; the node refuses rather than undercharge, even at a site that
    allows unmasked benchmark rounds, and whatever the noise is sized for (this check comes first)."""
    dp, _ = _dp(colluders=colluders)
    site = Site(tmp_path, NodePolicy(max_epsilon=100.0, allow_unmasked_benchmark=True))
    site.start(1, _spec(dp, masking=False))
    refusal = _refused(site, training, "dp-requires-masking")
    assert "secure aggregation" in refusal.detail
    assert site.ledger.entries() == []
    site.close()
    # the same site joins a DP round with masking on, and an unmasked round without DP
    other = Site(tmp_path / "again", NodePolicy(max_epsilon=100.0, allow_unmasked_benchmark=True))
    other.start(1, _spec(_dp()[0], masking=True))
    assert other.refusals() == []
    other.close()
    plain = Site(tmp_path / "plain", NodePolicy(allow_unmasked_benchmark=True))
    plain.start(1, _spec(None, masking=False))
    assert plain.refusals() == []
    plain.close()


@pytest.mark.parametrize(
    "change",
    [{"mechanism": "laplace"}, {"node_variance": -1.0}, {"scale_bits": "24"}, {"clip_norm": None}, {"node_variance": 1e30}],
)
def test_malformed_dp_parameters_are_refused(tmp_path: Path, training: TrainingSpy, change: dict) -> None:
    dp, _ = _dp()
    site = Site(tmp_path, NodePolicy(max_epsilon=100.0))
    site.start(1, _spec({**dp, **change}))
    _refused(site, training, "dp-mismatch")
    site.close()


def test_dp_on_an_evaluation_round_is_refused(tmp_path: Path, training: TrainingSpy) -> None:
    dp, _ = _dp()
    site = Site(tmp_path, NodePolicy(max_epsilon=100.0))
    site.start(1, _spec(dp, phase="evaluate"))
    _refused(site, training, "dp-mismatch")
    site.close()


def test_a_node_without_a_ledger_refuses_dp_rounds(tmp_path: Path, training: TrainingSpy) -> None:
    dp, _ = _dp()
    site = Site(tmp_path, NodePolicy(), ledger=False)
    site.start(1, _spec(dp))
    _refused(site, training, "dp-unsupported")
    site.close()


def test_a_round_costing_more_than_the_budget_is_refused(tmp_path: Path, training: TrainingSpy) -> None:
    dp, plan = _dp(target=4.0, rounds=3)
    one_round = plan.epsilon(1, DELTA)
    site = Site(tmp_path, NodePolicy(max_epsilon=one_round * 0.9))
    site.start(1, _spec(dp))
    refusal = _refused(site, training, "budget-exhausted")
    assert f"limit of {one_round * 0.9:g}" in refusal.detail, refusal.detail
    assert site.ledger.entries() == []
    site.close()


def test_a_spent_ledger_refuses_the_next_round(tmp_path: Path, training: TrainingSpy) -> None:
    dp, plan = _dp(target=4.0, rounds=3)
    site = Site(tmp_path, NodePolicy(max_epsilon=plan.epsilon(2, DELTA) * 1.001))
    for k in (1, 2):  # two earlier rounds of this task, already on the books
        site.ledger.charge(TASK, k, k, plan.release, dp, "h")
    site.start(3, _spec(dp, round_number=3))
    refusal = _refused(site, training, "budget-exhausted")
    assert f"{plan.epsilon(3, DELTA):.3f}" in refusal.detail and "spent so far" in refusal.detail
    assert len(site.ledger.entries()) == 2
    site.close()


@pytest.mark.parametrize("weak", ["threshold", "cohort"])
def test_threshold_or_cohort_below_policy_is_refused_before_training(tmp_path: Path, training: TrainingSpy, weak: str) -> None:
    # t = 3 of 3 meets the colluder bound (2 * 3 > 4 + 1), so the site's own minimum is the only shortfall.
    if weak == "threshold":
        policy, says = NodePolicy(max_epsilon=100.0, min_threshold=4), "threshold 3 is below this site's minimum of 4"
    else:
        policy, says = NodePolicy(max_epsilon=100.0, min_cohort=4), "cohort of 3 is below this site's minimum of 4"
    dp, _ = _dp(cohort=3, threshold=SAFE_T)
    site = Site(tmp_path, policy)
    site.start(1, _spec(dp, threshold=SAFE_T))
    assert [r.reason for r in site.refusals()] == ["weaker-than-policy"]
    detail = site.refusals()[0].detail
    assert says in detail and "colluding" not in detail, detail
    assert training.calls == 0, "the node trained on a round its policy refuses"
    site.close()


def test_a_damaged_ledger_makes_the_node_refuse_not_crash(tmp_path: Path, training: TrainingSpy) -> None:
    """Data pages of the ledger damaged: the node either will not start (saying why) or refuses DP rounds;
    it never trains on, or crashes in, a round it cannot account for."""
    dp, plan = _dp()
    path = tmp_path / "ledger.sqlite"
    ledger = PrivacyLedger(path, Budget(1e9, 1e9))
    for k in range(1, 30):
        ledger.charge("other-task", k, k, plan.release, {"padding": "x" * 2000}, "h")
    ledger.close()
    data = bytearray(path.read_bytes())
    data[3 * 4096 : 6 * 4096] = bytes((i * 37 + 11) % 256 for i in range(3 * 4096))
    path.write_bytes(bytes(data))
    try:
        site = Site(tmp_path, NodePolicy(max_epsilon=100.0))
    except StorageError as refused:  # also right: the node will not start on a damaged ledger, and says why
        assert "ledger" in str(refused)
        return
    try:
        site.start(1, _spec(dp))
        assert len(site.refusals()) == 1 and training.calls == 0
    finally:
        site.close()


# --- acceptance: a site with epsilon 1 stops once its ledger gets there, and says so --------------


class InProcessFederation:
    """The real Coordinator and real Nodes (one per name, each with its own ledger), stepped in one thread."""

    def __init__(self, tmp_path: Path, rounds: int, target: float, policies: dict[str, NodePolicy]) -> None:
        self.tmp_path, self.names = tmp_path, list(policies)
        keys = {name: SigningKey.generate() for name in self.names}
        roster = {name: key.public_bytes for name, key in keys.items()}
        self.task = TaskDefinition(
            name=TASK,
            model_kind="sgd_logistic",
            n_features=N_FEATURES,
            classes=CLASSES,
            rounds=rounds,
            epochs=1,
            learning_rate=0.1,
            batch_size=8,
            min_nodes=len(self.names),
            evaluate=False,  # threshold unset: the smallest the nodes' colluder bound accepts (t = 3 here)
            deadlines=dict.fromkeys(STAGE_NAMES, 10.0),
            dp={"epsilon": target, "delta": DELTA, "clip_norm": 0.5},
        )
        self.hub = Hub()
        self.store = CoordinatorStore(tmp_path / "coordinator.sqlite")
        entries = [NodeEntry(n, b"k" * 32, roster[n]) for n in self.names]
        self.coordinator = Coordinator(self.task, entries, self.hub.coordinator_socket(), self.store)
        self.nodes, self.ledgers, self._states = {}, {}, []
        for i, name in enumerate(self.names):
            self.ledgers[name] = PrivacyLedger(tmp_path / name / "ledger.sqlite", policies[name].budget())
            self._states.append(NodeState(tmp_path / name / "node.sqlite"))
            self.nodes[name] = Node(
                name, TASK, self.hub.node_socket(name), keys[name], roster, _dataset(i), self._states[-1],
                policies[name], ledger=self.ledgers[name],
            )  # fmt: skip

    def run(self, hook=None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.coordinator.finished:
            assert time.monotonic() < deadline, f"task did not finish: {list(self.store.rounds())}"
            self.coordinator.step(0)
            for node in self.nodes.values():
                node.step(0)
            if hook is not None:
                hook(self)

    def refusals(self) -> list[tuple]:
        reader = CoordinatorStore.open_readonly(self.tmp_path / "coordinator.sqlite")
        try:
            return reader.execute("SELECT aggregation, node, reason, detail FROM refusals ORDER BY aggregation").fetchall()
        finally:
            reader.close()

    def said(self, name: str, kind: type) -> list:
        return [(e.aggregation, e.body) for e in self.hub.from_node[name] if isinstance(e.body, kind)]

    def close(self) -> None:
        self.store.close()
        for ledger in self.ledgers.values():
            ledger.close()
        for state in self._states:
            state.close()


def test_site_with_epsilon_one_stops_once_its_ledger_reaches_it_and_says_so(tmp_path: Path) -> None:
    rounds, target = 4, 2.0
    plan = plan_skellam(target, DELTA, rounds, 0.5, _adapter().parameter_count, 4, SAFE_T - SAFE_C)
    assert plan.epsilon(1, DELTA) <= 1.0 < plan.epsilon(2, DELTA)  # one round fits under 1, two do not
    policies = {name: NodePolicy(max_epsilon=1.0 if name == "site-4" else target, delta=DELTA) for name in NAMES}
    federation = InProcessFederation(tmp_path, rounds, target, policies)
    try:
        federation.run()
        history = list(federation.store.rounds())
        refusals = federation.refusals()
        entries = {name: federation.ledgers[name].entries(TASK) for name in NAMES}
        spent = {name: federation.ledgers[name].spent(TASK) for name in NAMES}
    finally:
        federation.close()

    assert [r.round for r in history] == list(range(1, rounds + 1))
    assert sorted(history[0].survivors) == NAMES  # round 1: everyone, site-4 included
    for record in history[1:]:
        assert sorted(record.survivors) == NAMES[:3], record  # then site-4 sits out
    epsilons = [r.epsilon for r in history]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:])) and epsilons[-1] <= target
    # site-4's ledger: exactly the one round it took part in, within its limit of 1.
    assert [(e.round, e.aggregation) for e in entries["site-4"]] == [(1, history[0].aggregation)]
    assert spent["site-4"] == pytest.approx(plan.epsilon(1, DELTA)) and spent["site-4"] <= 1.0
    # ... and it said so, every time, to the coordinator, which recorded it.
    said = [body for _, body in federation.said("site-4", Refusal)]
    assert len(said) == rounds - 1
    for refusal in said:
        assert refusal.reason == "budget-exhausted"
        assert "limit of 1" in refusal.detail and f"spent so far: {plan.epsilon(1, DELTA):.3f}" in refusal.detail
    assert [(node, reason) for _, node, reason, _ in refusals] == [("site-4", "budget-exhausted")] * (rounds - 1)
    assert len(federation.said("site-4", Hello)) >= 1  # still connected: it refuses, it does not vanish
    # The others spent exactly what the coordinator's history says, recomputed from their own rows.
    for name in NAMES[:3]:
        assert len(entries[name]) == rounds
        assert spent[name] == pytest.approx(epsilons[-1], rel=1e-9)
        assert spent[name] == pytest.approx(skellam_epsilon([plan.release] * rounds, DELTA))


def test_budget_spent_elsewhere_mid_round_stops_the_masked_input(tmp_path: Path) -> None:
    """The check before training passed, but by the time the masked input is due the site's total budget was
    spent on another task (another node process on the same ledger): the charge refuses, and no input leaves.

    Four sites, t = 3 (2t > 4 + 1): the round completes from the other three."""
    rounds, target = 1, 2.0
    names, spender = NAMES, "site-4"
    plan = plan_skellam(target, DELTA, rounds, 0.5, _adapter().parameter_count, 4, SAFE_T - SAFE_C)
    other = SkellamRelease((2.0 * 1000.0) ** 2, 1000.0, 30_000.0)
    other_epsilon = skellam_epsilon([other], DELTA)
    both = skellam_epsilon([other, plan.release], DELTA)  # the site's total: both releases composed at its delta
    total = (other_epsilon + both) / 2  # the other task fits; the other task plus this round does not
    policies = {name: NodePolicy(max_epsilon=10.0, max_epsilon_total=total if name == spender else None) for name in names}
    federation = InProcessFederation(tmp_path, rounds, target, policies)
    spent_elsewhere = []

    def spend_after_advertising(fed: InProcessFederation) -> None:
        if not spent_elsewhere and fed.said(spender, AdvertiseKeys):
            fed.ledgers[spender].charge("another-task", 1, 1, other, {"mechanism": "skellam"}, "h")
            spent_elsewhere.append(True)

    try:
        federation.run(hook=spend_after_advertising)
        history = list(federation.store.rounds())
        refusals = federation.refusals()
        spender_rows = federation.ledgers[spender].entries()
    finally:
        federation.close()

    assert spent_elsewhere
    assert [r.round for r in history] == [1] and sorted(history[0].survivors) == ["site-1", "site-2", "site-3"]
    assert [(e.task, e.aggregation) for e in spender_rows] == [("another-task", 1)]  # nothing charged for this task
    assert federation.said(spender, MaskedInput) == []  # and nothing released
    reasons = [body for _, body in federation.said(spender, Refusal)]
    assert [r.reason for r in reasons] == ["budget-exhausted"] and "site's total epsilon" in reasons[0].detail
    assert [(node, reason) for _, node, reason, _ in refusals] == [(spender, "budget-exhausted")]


def test_the_charge_is_committed_before_the_masked_input_is_sent(tmp_path: Path) -> None:
    """At the very moment each node hands its masked input to the socket, its ledger row for that aggregation
    is already committed (visible to another connection, as it would be after a crash)."""
    rounds, target = 2, 4.0
    names = NAMES[:3]
    federation = InProcessFederation(tmp_path, rounds, target, {name: NodePolicy(max_epsilon=target) for name in names})
    seen: list[tuple[str, int, list]] = []

    class Watching:
        def __init__(self, name: str, inner: object) -> None:
            self.name, self.inner = name, inner

        def poll(self, timeout_ms: int) -> list[Envelope]:
            return self.inner.poll(timeout_ms)

        def send(self, envelope: Envelope) -> bool:
            if isinstance(envelope.body, MaskedInput):
                reader = sqlite3.connect(f"file:{tmp_path / self.name / 'ledger.sqlite'}?mode=ro", uri=True)
                try:
                    rows = reader.execute("SELECT task, aggregation FROM charges").fetchall()
                finally:
                    reader.close()
                seen.append((self.name, envelope.aggregation, rows))
            return self.inner.send(envelope)

    for name, node in federation.nodes.items():
        node.socket = Watching(name, node.socket)
    try:
        federation.run()
        history = list(federation.store.rounds())
    finally:
        federation.close()
    assert len(seen) == rounds * len(names)
    for name, aggregation, rows in seen:
        assert (TASK, aggregation) in rows, f"{name} sent its masked input for {aggregation} before charging: {rows}"
    for record in history:
        assert sorted(record.survivors) == names
