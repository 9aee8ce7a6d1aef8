"""The node: local data, local training, site policy, and the client side of every aggregation.

Theory of operation. :class:`Node` is a loop around a socket (``poll`` and
``send``) that greets the coordinator every second and answers its
``RoundStart`` messages. Before it trains on anything it checks the request
against the site's own rules (task, model kind, feature and class layout,
cohort and threshold minimums, the colluder bound computed from its own
roster, replay, rerun) and refuses with a :class:`Refusal` that says why.
Then it runs one :class:`~securefed.secagg.client.ClientProtocol` for the
aggregation: it advertises its round keys, reveals its graph randomness and
deals its shares at once, and only then trains from the global model it was
sent and encodes the weighted, clipped update (the shares do not depend on
it, and a slow trainer then merely misses the masked-input deadline). The
client's checks (signatures against the node's *own* roster, consistency,
never both shares of a peer) decide whether it goes on.

The last aggregation id a node has joined is stored durably before the node
answers, so a replayed ``RoundStart`` (same or older id) is refused even
after a restart; every round and model it released a contribution for is
stored before the release leaves, so it never contributes to them again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from securefed._db import open_durable
from securefed.audit.log import AuditLog
from securefed.crypto.identity import SigningKey
from securefed.dp import dpsgd
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.dp.mechanism import SkellamParameters
from securefed.dp.noise import NoiseSource
from securefed.errors import (
    InvalidParameter,
    InvalidShare,
    LocalProtocolError,
    PrivacyBudgetExhausted,
    ProtocolAborted,
    RemoteProtocolError,
    SecureFedError,
    StorageError,
)
from securefed.federation.computation import request_digest
from securefed.federation.compute_node import ComputeRefusal, ComputeResponder
from securefed.federation.messages import Envelope, FederationMessage, Hello, Refusal, RoundResult, RoundStart
from securefed.federation.spec import RoundSpec, parse_spec, round_context
from securefed.federation.update import EvaluationCodec, TrainingUpdateCodec
from securefed.learning.data import LocalDataset
from securefed.learning.models import ModelAdapter, make_adapter
from securefed.preprocessing import Preprocessing
from securefed.secagg.client import ClientProtocol
from securefed.secagg.config import ClientPolicy, RoundConfig
from securefed.secagg.messages import (
    ClientMessage,
    ConsistencyRequest,
    KeyList,
    MaskedInput,
    RoundAborted,
    SeedRevealList,
    ServerMessage,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskShares,
)

if TYPE_CHECKING:
    from securefed.analytics import AnalyticsPolicy

__all__ = ["Node", "NodePolicy", "NodeState"]

log = logging.getLogger("securefed.node")

_SERVER_MESSAGES = (KeyList, SeedRevealList, ShareRelay, ConsistencyRequest, UnmaskRequest, RoundAborted)
HELLO_INTERVAL = 1.0


class NodeSocketLike(Protocol):
    def poll(self, timeout_ms: int) -> list[Envelope]: ...

    def send(self, envelope: Envelope) -> bool: ...


@dataclass(frozen=True)
class NodePolicy:
    """The site's rules for every round it takes part in; the coordinator cannot override them.

    ``max_colluders`` states the adversary: how many federation members may work
    with a malicious coordinator (a count, a fraction of the roster, or None
    for max(1, ceil(N/5)) of this site's roster of N). The node refuses any
    round whose threshold does not withstand them (see
    :class:`~securefed.secagg.config.ClientPolicy`).

    ``min_cohort`` bounds the *invited* cohort (the nodes a round starts
    with); ``min_participants`` bounds the *survivors* the node signs for at
    the consistency stage (the nodes whose inputs the sum will contain): with
    fewer, it refuses to sign, so it never reveals anything for a sum of
    fewer than that many sites (0: no floor beyond the threshold).

    ``privacy_unit`` ("site" or "record"; None accepts either) is the unit of
    differential privacy the site requires of DP rounds: "record" protects each
    of its records (DP-SGD across the sites), "site" its whole update.
    """

    min_threshold: int = 2
    min_cohort: int = 3
    min_participants: int = 0
    min_threshold_fraction: float = 0.5
    allowed_models: tuple[str, ...] = ("sgd_logistic", "mlp")
    max_rounds: int = 1000
    max_parameters: int = 50_000_000
    allow_unmasked_benchmark: bool = False
    max_epsilon: float | None = None
    max_epsilon_total: float | None = None
    delta: float = 1e-5
    min_noise_multiplier: float = 0.0
    privacy_unit: str | None = None
    max_colluders: int | float | None = None
    allow_sparse_graph: bool = True
    min_neighbours: int = 0
    #: analytics kinds this site runs (securefed.analytics.REGISTRY names; none unless listed)
    allowed_computations: tuple[str, ...] = ()
    #: analytics: every released aggregate holding any of this site's records holds at least this many
    min_records: int = 1
    #: analytics: no histogram bin or quantile cell narrower than this (in the data's units)
    min_bin_width: float = 0.0
    #: analytics: at most this many aggregations released per task (the query budget)
    max_queries: int = 100

    @property
    def requires_dp(self) -> bool:
        """A site with an epsilon limit takes part only in rounds that add DP noise."""
        return self.max_epsilon is not None or self.max_epsilon_total is not None

    def budget(self) -> Budget:
        return Budget(
            max_epsilon=self.max_epsilon if self.max_epsilon is not None else math.inf,
            max_epsilon_total=self.max_epsilon_total if self.max_epsilon_total is not None else math.inf,
            delta=self.delta,
        )

    def analytics_policy(self) -> AnalyticsPolicy:
        """The :class:`~securefed.analytics.AnalyticsPolicy` this site applies to analytics requests."""
        from securefed.analytics import AnalyticsPolicy

        return AnalyticsPolicy(frozenset(self.allowed_computations), self.min_records, self.min_bin_width)

    def client_policy(self) -> ClientPolicy:
        return ClientPolicy(
            min_threshold=self.min_threshold,
            min_cohort=self.min_cohort,
            min_participants=self.min_participants,
            min_threshold_fraction=self.min_threshold_fraction,
            max_vector_length=self.max_parameters + 1,
            max_colluders=self.max_colluders,
            allow_sparse_graph=self.allow_sparse_graph,
            min_neighbours=self.min_neighbours,
        )


_NODE_SCHEMA = """
CREATE TABLE IF NOT EXISTS joined (task TEXT PRIMARY KEY, aggregation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER, hash TEXT);
CREATE TABLE IF NOT EXISTS released_rounds (
    task TEXT NOT NULL, phase TEXT NOT NULL, round INTEGER NOT NULL, aggregation INTEGER NOT NULL,
    PRIMARY KEY (task, phase, round));
CREATE TABLE IF NOT EXISTS released_models (
    task TEXT NOT NULL, phase TEXT NOT NULL, model_hash TEXT NOT NULL, aggregation INTEGER NOT NULL,
    PRIMARY KEY (task, phase, model_hash));
CREATE TABLE IF NOT EXISTS released_shares (
    task TEXT NOT NULL, aggregation INTEGER NOT NULL, request TEXT NOT NULL, shares TEXT NOT NULL,
    PRIMARY KEY (task, aggregation));
"""

_KEPT_RELEASES = 8  # unmasking shares kept per task, to answer a restarted coordinator again


class NodeState:
    """The node's small durable state (SQLite).

    It holds the newest aggregation joined per task (replays are refused) and
    every (task, phase, round) and (task, phase, model hash) for which this
    node has *released* a contribution, i.e. sent its unmasking shares (or,
    in an unmasked benchmark round, its input). A second release for either
    would let a coordinator rerun the aggregation without a victim and
    subtract the two sums, so the node refuses it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = open_durable(self.path, _NODE_SCHEMA, "node state", "move it away to start afresh")

    def last_aggregation(self, task: str) -> int:
        row = self._db.execute("SELECT aggregation FROM joined WHERE task = ?", (task,)).fetchone()
        return 0 if row is None else int(row[0])

    def claim(self, task: str, aggregation: int) -> bool:
        """Durably record ``aggregation`` as joined; False if it is not newer than the last one."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if aggregation <= self.last_aggregation(task):
                self._db.execute("ROLLBACK")
                return False
            self._db.execute("INSERT OR REPLACE INTO joined (task, aggregation) VALUES (?, ?)", (task, aggregation))
            self._db.execute("COMMIT")
            return True
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def released(self, task: str, phase: str, round_number: int, model_hash: str) -> str | None:
        """Why a contribution to this round or model would be a second release, or None."""
        row = self._db.execute(
            "SELECT round, aggregation FROM released_rounds WHERE task = ? AND phase = ? AND round >= ? "
            "ORDER BY round DESC LIMIT 1",
            (task, phase, round_number),
        ).fetchone()
        if row is not None:
            # Rounds only move forward: a round at or below one already released is a rerun.
            return (
                f"this node already released its {phase} contribution to round {row[0]} (aggregation {row[1]}), "
                f"so it takes no {phase} part in round {round_number} or any earlier one"
            )
        row = self._db.execute(
            "SELECT aggregation FROM released_models WHERE task = ? AND phase = ? AND model_hash = ?",
            (task, phase, model_hash),
        ).fetchone()
        if row is not None:
            return f"this node already released a {phase} contribution computed from this exact model (aggregation {row[0]})"
        return None

    def release_count(self, task: str, phase: str) -> int:
        """How many contributions this node has released to ``phase`` aggregations of ``task``."""
        row = self._db.execute("SELECT COUNT(*) FROM released_rounds WHERE task = ? AND phase = ?", (task, phase)).fetchone()
        return int(row[0])

    def record_release(
        self,
        task: str,
        phase: str,
        round_number: int,
        model_hash: str,
        aggregation: int,
        request: UnmaskRequest | None = None,
        shares: UnmaskShares | None = None,
    ) -> None:
        """Durably mark the round and the model as released, before anything leaves the node.

        With ``request`` and ``shares``, also keep the unmasking shares sent in answer to that
        request: a coordinator that crashed while collecting them may ask for them again, and
        sending the very same shares again reveals nothing new.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if request is not None and shares is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO released_shares (task, aggregation, request, shares) VALUES (?, ?, ?, ?)",
                    (task, aggregation, _request_key(request), _encode_shares(shares)),
                )
                self._db.execute(
                    "DELETE FROM released_shares WHERE task = ? AND aggregation NOT IN "
                    "(SELECT aggregation FROM released_shares WHERE task = ? ORDER BY aggregation DESC LIMIT ?)",
                    (task, task, _KEPT_RELEASES),
                )
            self._db.execute(
                "INSERT OR IGNORE INTO released_rounds (task, phase, round, aggregation) VALUES (?, ?, ?, ?)",
                (task, phase, round_number, aggregation),
            )
            self._db.execute(
                "INSERT OR IGNORE INTO released_models (task, phase, model_hash, aggregation) VALUES (?, ?, ?, ?)",
                (task, phase, model_hash, aggregation),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def released_shares(self, task: str, aggregation: int, request: UnmaskRequest) -> UnmaskShares | None:
        """The shares this node sent for ``aggregation`` in answer to this very request, if it kept them."""
        row = self._db.execute(
            "SELECT request, shares FROM released_shares WHERE task = ? AND aggregation = ?", (task, aggregation)
        ).fetchone()
        if row is None or row[0] != _request_key(request):
            return None
        return _decode_shares(row[1])

    def audit_head(self) -> tuple[int, str] | None:
        row = self._db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def set_audit_head(self, seq: int, digest: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO audit_head (id, seq, hash) VALUES (1, ?, ?)", (seq, digest))

    def close(self) -> None:
        self._db.close()


def _request_key(request: UnmaskRequest) -> str:
    """What identifies an unmask request: the survivors and the dropped (signatures may come in any subset)."""
    return json.dumps([list(request.survivors), list(request.dropped)], separators=(",", ":"))


def _encode_shares(shares: UnmaskShares) -> str:
    return json.dumps(
        {
            "sender": shares.sender,
            "b": [[owner, base64.b64encode(raw).decode()] for owner, raw in shares.b_shares],
            "s": [[owner, base64.b64encode(raw).decode()] for owner, raw in shares.s_shares],
        }
    )


def _decode_shares(text: str) -> UnmaskShares:
    data = json.loads(text)
    return UnmaskShares(
        int(data["sender"]),
        tuple((int(owner), base64.b64decode(raw, validate=True)) for owner, raw in data["b"]),
        tuple((int(owner), base64.b64decode(raw, validate=True)) for owner, raw in data["s"]),
    )


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Charge:
    """A DP round's cost, checked against ``ledger``, which it is charged to before the masked input leaves."""

    ledger: PrivacyLedger
    parameters: SkellamParameters
    round: int
    aggregation: int
    model_hash: str
    mechanism: dict


@dataclass
class _Participation:
    aggregation: int
    client: ClientProtocol | None
    spec: RoundSpec
    charge: _Charge | None = None
    context: str = ""
    cohort_size: int = 0
    sent_input: bool = False
    epsilon: float | None = None
    model_hash: str = ""
    pending_input: Callable[[], np.ndarray] | None = None
    started: float = field(default_factory=time.monotonic)


class Node:
    """One site's participation in a task. The daemon is a thin shell around it."""

    def __init__(
        self,
        name: str,
        task: str,
        socket: NodeSocketLike,
        identity: SigningKey,
        roster: Mapping[str, bytes],
        dataset: LocalDataset,
        state: NodeState,
        policy: NodePolicy | None = None,
        validation_fraction: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        declared_classes: tuple[int, ...] | None = None,
        ledger: PrivacyLedger | None = None,
        audit_log: AuditLog | None = None,
        preprocessing: Preprocessing | None = None,
        numeric_target: bool = False,
    ) -> None:
        if name not in roster:
            raise InvalidParameter(f"this node ({name}) is missing from its own roster")
        if roster[name] != identity.public_bytes:
            raise InvalidParameter(f"the roster's identity key for {name} does not match this node's identity key")
        if not 0 <= validation_fraction < 1:
            raise InvalidParameter("validation_fraction must be in [0, 1)")
        self.name = name
        self.task = task
        self.socket = socket
        self.identity = identity
        self.roster = dict(roster)
        self.state = state
        self.policy = policy or NodePolicy()
        self.clock = clock
        self.dataset = dataset
        #: wall time of this node's last local training (None before the first), for logs and metrics
        self.last_training_seconds: float | None = None
        self.declared_classes = None if declared_classes is None else tuple(declared_classes)
        #: the site's label column holds numbers, not classes: it joins analytics tasks without classes only
        self.numeric_target = numeric_target
        if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
            raise InvalidParameter("preprocessing must be a securefed.preprocessing.Preprocessing or None")
        #: the preprocessing this site agreed to: applied to its data, and rounds with any other are refused
        self.preprocessing = preprocessing
        # What the node trains and evaluates on: its data, scaled as the task says (once, up front).
        self._features = dataset.X if preprocessing is None else preprocessing.transform(dataset.X)
        self.ledger = ledger
        self.audit_log = audit_log
        self._train_idx, self._val_idx = _split(len(dataset.y), validation_fraction, name)
        #: trees and analytics: answers compute requests from the site's raw features (bins and
        #: analytics bounds are declared in the data's own units)
        self._compute = ComputeResponder(dataset.X, dataset.y, self.policy.analytics_policy())
        self.current: _Participation | None = None
        self._last_hello = float("-inf")
        self.completed = 0
        self.refused = 0

    # --- running ----------------------------------------------------------

    def run(self, stop: threading.Event | None = None, poll_ms: int = 100) -> None:
        while not (stop is not None and stop.is_set()):
            self.step(poll_ms)

    def step(self, poll_ms: int = 100) -> None:
        now = self.clock()
        if now - self._last_hello >= HELLO_INTERVAL:
            self._send(0, Hello(self.name, busy=self.current is not None))
            self._last_hello = now
        for envelope in self.socket.poll(poll_ms):
            self._handle(envelope)

    # --- inbound ----------------------------------------------------------

    def _handle(self, envelope: Envelope) -> None:
        if envelope.task != self.task:
            log.warning("ignored a message for task %r (this node serves %r)", envelope.task, self.task)
            return
        body = envelope.body
        if isinstance(body, RoundStart):
            self._on_round_start(envelope.aggregation, body)
        elif isinstance(body, _SERVER_MESSAGES):
            self._on_protocol_message(envelope.aggregation, body)
        elif isinstance(body, RoundResult):
            log.info("aggregation %d: %s", envelope.aggregation, body.detail)
            self.completed += 1
            if self.current is not None and self.current.aggregation == envelope.aggregation:
                self._finish("completed", body.detail)
        else:
            log.warning("ignored an unexpected %s from the coordinator", type(body).__name__)

    def _on_round_start(self, aggregation: int, start: RoundStart) -> None:
        try:
            spec = self._check_round(aggregation, start)
            if not self.state.claim(self.task, aggregation):
                raise _Refused("replay", f"aggregation {aggregation} is not newer than one already joined")
            # Only a start this node accepts ends the round it is in (a refused one must not).
            if self.current is not None:
                self._finish("abandoned", "a new round started before this one ended")
            self._participate(aggregation, start, spec)
        except _Refused as refusal:
            self._refuse(aggregation, refusal.reason, refusal.detail)
        except (LocalProtocolError, StorageError) as exc:
            # This node's own fault (a bug, or its state file): it cannot take part, and it says so
            # as its own problem, not as something the coordinator asked wrongly.
            reason = "local-error" if isinstance(exc, LocalProtocolError) else "storage-failure"
            log.error("aggregation %d: this node cannot take part (%s): %s", aggregation, reason, exc)
            self._refuse(aggregation, reason, f"this node's own failure: {exc}")
        except SecureFedError as exc:  # the round's request is unusable here (parameters, encoding, budget)
            self._refuse(aggregation, str(getattr(exc, "reason", type(exc).__name__)), str(exc))

    def _refuse(self, aggregation: int, reason: str, detail: str) -> None:
        self.refused += 1
        log.warning("refused aggregation %d: %s (%s)", aggregation, reason, detail)
        self._send(aggregation, Refusal(reason, detail))
        if self.current is not None and self.current.aggregation == aggregation:
            self._finish("refused", f"{reason}: {detail}")
        else:
            self._record(
                {"task": self.task, "aggregation": aggregation, "outcome": "refused", "detail": f"{reason}: {detail}"[:500]}
            )

    def _check_round(self, aggregation: int, start: RoundStart) -> RoundSpec:
        spec = parse_spec(start.spec)
        policy = self.policy
        if spec.task != self.task:
            raise _Refused("wrong-task", f"round is for task {spec.task!r}, this site agreed to {self.task!r}")
        if spec.model_kind == "analytics":
            if not policy.allowed_computations:
                raise _Refused(
                    "computation-not-allowed", "this site runs no analytics (its policy lists no allowed_computations)"
                )
        elif spec.model_kind not in policy.allowed_models:
            raise _Refused("model-not-allowed", f"model kind {spec.model_kind!r} is not in this site's allowed list")
        if spec.round > policy.max_rounds:
            raise _Refused("too-many-rounds", f"round {spec.round} exceeds this site's maximum of {policy.max_rounds}")
        if not spec.masking and not policy.allow_unmasked_benchmark:
            raise _Refused("masking-required", "the coordinator asked for an unmasked round; this site requires masking")
        if spec.n_features != self.dataset.X.shape[1]:
            raise _Refused(
                "feature-mismatch",
                f"task declares {spec.n_features} features, local data has {self.dataset.X.shape[1]}",
            )
        local_names = self.dataset.feature_names
        if spec.feature_names is not None and local_names is not None and tuple(spec.feature_names) != tuple(local_names):
            at = next(i for i, (a, b) in enumerate(zip(spec.feature_names, local_names)) if a != b)
            raise _Refused(
                "feature-mismatch",
                f"round's feature #{at + 1} is {spec.feature_names[at]!r}, this site's is {local_names[at]!r} "
                "(the task's feature lists must be identical, in the same order)",
            )
        agreed = None if self.preprocessing is None else self.preprocessing.to_json()
        if spec.preprocessing != agreed:
            raise _Refused("preprocessing-mismatch", _preprocessing_difference(spec.preprocessing, agreed))
        if self.numeric_target:
            if spec.model_kind != "analytics" or spec.classes:
                raise _Refused(
                    "target-mismatch",
                    'this site\'s target is numeric (target = "numeric"); it takes part only in analytics tasks that '
                    "declare no classes",
                )
        elif not spec.classes:
            raise _Refused("target-mismatch", "the round declares no classes (a numeric target); this site's labels are classes")
        elif self.declared_classes is not None and tuple(spec.classes) != self.declared_classes:
            raise _Refused(
                "class-mismatch",
                f"round declares classes {list(spec.classes)[:20]}, this site agreed to {list(self.declared_classes)[:20]}",
            )
        unknown = [] if self.numeric_target else sorted(set(np.unique(self.dataset.y).tolist()) - set(spec.classes))
        if unknown:
            raise _Refused("class-mismatch", f"local labels {unknown[:10]} are not among the task's classes")
        cohort = start.cohort
        names = [name for _, name in cohort]
        if [i for i, _ in cohort] != list(range(1, len(cohort) + 1)) or len(set(names)) != len(names):
            raise _Refused("bad-cohort", "cohort ids must be 1..n with distinct names")
        if not 1 <= start.node_id <= len(cohort) or cohort[start.node_id - 1][1] != self.name:
            raise _Refused("bad-cohort", "this node is not in the cohort under the id it was given")
        strangers = [name for name in names if name not in self.roster]
        if strangers:
            raise _Refused("unknown-peer", f"cohort includes nodes not in this site's roster: {strangers[:5]}")
        # The site's secure-aggregation minimums, checked before any training (the client protocol
        # checks them again before it advertises a key).
        try:
            proposed = RoundConfig(self.task, aggregation, len(cohort), spec.threshold, 1, bytes(32), spec.neighbours)
        except InvalidParameter as exc:
            raise _Refused("bad-parameters", str(exc)) from None
        try:
            self.policy.client_policy().check(proposed, roster_size=max(len(self.roster), len(cohort)))
        except RemoteProtocolError as exc:
            raise _Refused(exc.reason, str(exc)) from None
        if spec.dp is None and policy.requires_dp:
            raise _Refused(
                "dp-required",
                f"this site takes part only with differential privacy (its epsilon limit is {policy.max_epsilon})",
            )
        if spec.dp is not None and spec.phase != "train":
            raise _Refused("dp-mismatch", "differential privacy applies to training rounds only")
        return spec

    def _participate(self, aggregation: int, start: RoundStart, spec: RoundSpec) -> None:
        if spec.computation is not None:  # parse_spec: the compute phase, and only it, carries one
            self._participate_in_computation(aggregation, start, spec, spec.computation)
            return
        n = len(start.cohort)
        adapter = make_adapter(spec.model_kind, spec.n_features, spec.classes, **spec.model_options)
        model = np.asarray(start.model, dtype=np.float64)
        if model.shape != (adapter.parameter_count,):
            raise _Refused(
                "model-mismatch", f"model has {model.shape[0]} parameters, {spec.model_kind} needs {adapter.parameter_count}"
            )
        if not np.all(np.isfinite(model)):
            raise _Refused("model-mismatch", "the global model contains NaN or infinity")
        # + 0.0 turns -0.0 into 0.0: the same model must have one hash, whatever its zeros' signs.
        model_hash = hashlib.sha256(np.ascontiguousarray(model + 0.0, dtype="<f8").tobytes()).hexdigest()
        earlier = self.state.released(self.task, spec.phase, spec.round, model_hash)
        if earlier is not None:
            # Rerun and subtract: the same round (or the same model) aggregated again without a
            # victim would give the victim's update as the difference of the two sums.
            raise _Refused("rerun", f"{earlier}; a second contribution could be subtracted from the first")
        context = round_context(start.spec, start.cohort, model)
        charge = None
        if spec.dp is not None:
            charge = self._check_dp(spec, spec.dp, adapter.parameter_count, n, aggregation, context)
        codec = None
        if spec.phase == "evaluate":
            length = EvaluationCodec(n).vector_length
        elif charge is not None:
            length = adapter.parameter_count
        else:  # refuses overflow-unsafe encodings before anything is sent
            codec = TrainingUpdateCodec(adapter.parameter_count, spec.clip_norm, spec.fractional_bits, spec.weight_cap, n)
            length = codec.vector_length
        client = None
        if spec.masking:
            # Set up the round's keys and shares first (they do not depend on the input) and train
            # once the shares are dealt: the whole key exchange happens before training, and a node
            # that trains slowly only misses the masked-input deadline, where it is a dropout.
            client = self._client_for(aggregation, start, spec, length, context)
            current = self.current = _Participation(aggregation, client, spec, charge, context.hex(), n, model_hash=model_hash)
            try:
                outgoing = client.start()
            except RemoteProtocolError as exc:
                raise _Refused(exc.reason, str(exc)) from None
            current.pending_input = lambda: self._local_input(adapter, model, spec, charge, codec, n)
            for message in outgoing:
                self._send(aggregation, message)
        else:
            self.current = _Participation(aggregation, None, spec, charge, context.hex(), n, model_hash=model_hash)
            vector = self._local_input(adapter, model, spec, charge, codec, n)
            self._charge_and_send(MaskedInput(start.node_id, vector))

    def _participate_in_computation(self, aggregation: int, start: RoundStart, spec: RoundSpec, computation: dict) -> None:
        """A trees or analytics aggregation: check the request, compute the vector, then join the sum.

        The vector is computed before anything is sent, so a request outside the site's policy is
        refused before the node advertises a key. A request is released at most once (its digest
        and its step number are recorded before the unmasking shares leave), and an analytics task
        gets at most ``max_queries`` releases from this site.
        """
        n = len(start.cohort)
        model = np.asarray(start.model)
        if model.size != 0:
            raise _Refused("model-mismatch", "a compute round carries no model weights")
        digest = request_digest(computation)
        earlier = self.state.released(self.task, spec.phase, spec.round, digest)
        if earlier is not None:
            raise _Refused("rerun", f"{earlier}; a second contribution could be subtracted from the first")
        if spec.model_kind == "analytics":
            used = self.state.release_count(self.task, spec.phase)
            if used >= self.policy.max_queries:
                raise _Refused(
                    "query-budget-exhausted",
                    f"this site has released {used} analytics aggregations for task {self.task!r}; its policy allows "
                    f"max_queries = {self.policy.max_queries}",
                )
        try:
            vector = self._compute.vector(spec, n)
        except ComputeRefusal as refusal:
            raise _Refused(refusal.reason, refusal.detail) from None
        context = round_context(start.spec, start.cohort, model)
        log.info(
            "step %d: computed this site's %s contribution (%d coordinates)",
            spec.round,
            computation["request"].get("computation") or computation["request"].get("kind"),
            vector.size,
        )
        client = None
        if spec.masking:
            client = self._client_for(aggregation, start, spec, int(vector.size), context)
        current = self.current = _Participation(aggregation, client, spec, None, context.hex(), n, model_hash=digest)
        if client is None:
            self._charge_and_send(MaskedInput(start.node_id, vector))
            return
        try:
            outgoing = client.start()
        except RemoteProtocolError as exc:
            raise _Refused(exc.reason, str(exc)) from None
        current.pending_input = lambda: vector
        for message in outgoing:
            self._send(aggregation, message)

    def _client_for(self, aggregation: int, start: RoundStart, spec: RoundSpec, length: int, context: bytes) -> ClientProtocol:
        """This node's side of the aggregation's secure sum, under its own roster and policy."""
        n = len(start.cohort)
        config = RoundConfig(self.task, aggregation, n, spec.threshold, length, context, spec.neighbours)
        roster = {i: self.roster[name] for i, name in start.cohort}
        return ClientProtocol(
            config,
            start.node_id,
            self.identity,
            roster,
            None,
            self.policy.client_policy(),
            roster_size=max(len(self.roster), n),
        )

    def _local_input(
        self,
        adapter: ModelAdapter,
        model: np.ndarray,
        spec: RoundSpec,
        charge: _Charge | None,
        codec: TrainingUpdateCodec | None,
        n: int,
    ) -> np.ndarray:
        """Train (or evaluate) on local data and encode the result: this node's input to the sum."""
        if spec.phase == "train":
            X, y = self._features[self._train_idx], self.dataset.y[self._train_idx]
            if charge is not None and charge.parameters.unit == "record":
                return self._record_level_input(adapter, model, spec, charge.parameters, X, y)
            began = time.monotonic()
            trained = adapter.fit_local(
                model, X, y, epochs=spec.epochs, learning_rate=spec.learning_rate, batch_size=spec.batch_size, seed=None
            )
            # Operators size the masked_input deadline from this (docs/deployment.md, "Deadlines").
            self.last_training_seconds = time.monotonic() - began
            log.info(
                "round %d: trained on %d records, %d epoch(s), in %.2f s",
                spec.round,
                len(y),
                spec.epochs,
                self.last_training_seconds,
            )
            if charge is not None:
                return charge.parameters.encode(trained - model)
            if codec is None:
                raise LocalProtocolError("a training round without DP needs the update codec _participate makes for it")
            return codec.encode(trained - model, len(y))
        X, y = self._features[self._val_idx], self.dataset.y[self._val_idx]
        metrics = adapter.evaluate(model, X, y)
        return EvaluationCodec(n).encode(metrics.correct, metrics.count, metrics.loss_sum)

    def _record_level_input(
        self,
        adapter: ModelAdapter,
        model: np.ndarray,
        spec: RoundSpec,
        parameters: SkellamParameters,
        X: np.ndarray,
        y: np.ndarray,
    ) -> np.ndarray:
        """This site's part of one DP-SGD step: its Poisson-sampled records' clipped gradients, summed, noised.

        Each record joins with probability q, decided here from the cryptographic generator that also
        draws the rounding and the noise: which records (and how many) took part never leaves the node,
        which is what the subsampling amplification the ledger charges for relies on. Each gradient is
        clipped to C; the sum is scaled, rounded once and gets this node's noise share
        (:meth:`SkellamParameters.encode_gradient_sum`). Nothing else is sent: not the sample's size.
        """
        noise = NoiseSource()
        began = time.monotonic()
        total = dpsgd.sampled_clipped_gradient_sum(adapter, model, X, y, parameters.clip_norm, parameters.sampling_rate, noise)
        encoded = parameters.encode_gradient_sum(total, noise)
        self.last_training_seconds = time.monotonic() - began
        log.info(
            "round %d: DP-SGD gradient step over this site's records (each sampled with probability %.4g), in %.2f s",
            spec.round,
            parameters.sampling_rate,
            self.last_training_seconds,
        )
        return encoded

    def _provide_input(self, aggregation: int, client: ClientProtocol, compute: Callable[[], np.ndarray]) -> bool:
        """Compute the input once the shares are dealt; False (and the round given up) if that failed."""
        try:
            client.provide_input(compute())
        except SecureFedError as exc:
            reason = str(getattr(exc, "reason", "") or type(exc).__name__)
            self._refuse(aggregation, reason, f"could not compute this node's input: {exc}")
            return False
        return True

    def _on_protocol_message(self, aggregation: int, message: ServerMessage) -> None:
        current = self.current
        client = current.client if current is not None and current.aggregation == aggregation else None
        if current is None or client is None:
            if isinstance(message, UnmaskRequest) and self._answer_again(aggregation, message):
                return
            log.debug("ignored %s for aggregation %d", type(message).__name__, aggregation)
            return
        try:
            outgoing = client.receive(message)
        except (RemoteProtocolError, ProtocolAborted) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "stage", None) or type(exc).__name__
            log.warning("aggregation %d: stopped taking part (%s): %s", aggregation, reason, exc)
            self._send(aggregation, Refusal(str(reason), str(exc)))
            self._finish("aborted", f"{reason}: {exc}")
            return
        except InvalidShare as exc:  # a signature or ciphertext failed to verify
            log.warning("aggregation %d: stopped taking part (authentication failure): %s", aggregation, exc)
            self._send(aggregation, Refusal("authentication-failure", "a signature or share did not verify"))
            self._finish("aborted", "authentication-failure: a signature or share did not verify")
            return
        except LocalProtocolError as exc:  # securefed misused itself: a bug here, not the coordinator's doing
            log.error("aggregation %d: stopped taking part after an internal error (a bug in securefed): %s", aggregation, exc)
            self._send(aggregation, Refusal("local-error", "this node stopped on an internal error"))
            self._finish("aborted", f"local-error: {exc}")
            return
        except SecureFedError as exc:  # anything else the client raised on the coordinator's message
            reason = str(getattr(exc, "reason", "") or type(exc).__name__)
            log.warning("aggregation %d: stopped taking part (%s): %s", aggregation, reason, exc)
            self._send(aggregation, Refusal(reason, str(exc)))
            self._finish("aborted", f"{reason}: {exc}")
            return
        if isinstance(message, RoundAborted):
            log.info("aggregation %d aborted by the coordinator (%s)", aggregation, message.reason)
            self._finish("aborted-by-coordinator", message.reason)
            return
        for reply in outgoing:
            if isinstance(reply, ShareKeys):
                self._send(aggregation, reply)
                compute, current.pending_input = current.pending_input, None
                if compute is not None and not self._provide_input(aggregation, client, compute):
                    return
            elif isinstance(reply, MaskedInput):
                self._charge_and_send(reply)
                if self.current is None:  # the ledger refused at the last moment
                    return
            elif isinstance(reply, UnmaskShares):
                if not isinstance(message, UnmaskRequest):
                    raise LocalProtocolError(f"the client protocol answered a {type(message).__name__} with unmasking shares")
                if not self._record_release(current, message, reply):
                    return
                self._send(aggregation, reply)
            else:
                self._send(aggregation, reply)
        if client.state.value == "done":
            self._finish("completed", "unmasking shares sent")

    def _check_dp(self, spec: RoundSpec, dp: dict, dimension: int, cohort_size: int, aggregation: int, context: bytes) -> _Charge:
        """Refuse DP rounds weaker than the site's policy or beyond its budget, before any training (``dp``: ``spec.dp``)."""
        try:
            parameters = SkellamParameters.from_spec(dp, dimension, cohort_size)
        except InvalidParameter as exc:
            raise _Refused("dp-mismatch", str(exc)) from None
        if not spec.masking:
            # Unmasked, this node's own vector would carry only its share of the noise, which is
            # not what the ledger could charge for: refuse rather than undercharge.
            raise _Refused("dp-requires-masking", "differential privacy rounds must use secure aggregation")
        wanted = self.policy.privacy_unit
        if wanted is not None and parameters.unit != wanted:
            raise _Refused(
                "weaker-than-policy" if wanted == "record" else "dp-unit-mismatch",
                f"the round protects each {parameters.unit} ({parameters.unit}-level DP), but this site's policy "
                f"requires privacy_unit = {wanted!r}",
            )
        colluders = self.policy.client_policy().colluders(max(len(self.roster), cohort_size))
        honest = spec.threshold - colluders
        if parameters.assumed_survivors > honest:
            raise _Refused(
                "weaker-than-policy",
                f"noise is sized for {parameters.assumed_survivors} honest survivors, but with threshold "
                f"{spec.threshold} and {colluders} colluders (this site's bound) only {honest} are certain",
            )
        if parameters.noise_multiplier < self.policy.min_noise_multiplier:
            raise _Refused(
                "weaker-than-policy",
                f"noise multiplier {parameters.noise_multiplier:.3f} is below this site's minimum of "
                f"{self.policy.min_noise_multiplier:g}",
            )
        ledger = self.ledger
        if ledger is None:
            raise _Refused("dp-unsupported", "this node has no privacy ledger configured")
        try:
            ledger.check(self.task, parameters.release)
        except PrivacyBudgetExhausted as exc:
            raise _Refused("budget-exhausted", str(exc)) from None
        mechanism = {
            **dp,
            "noise_multiplier": round(parameters.noise_multiplier, 4),
            "dimension": dimension,
            "unit": parameters.unit,
            "release": {
                "variance": parameters.release.variance,
                "l2_sensitivity": parameters.release.l2_sensitivity,
                "l1_sensitivity": parameters.release.l1_sensitivity,
                "sampling_rate": parameters.release.sampling_rate,
            },
        }
        return _Charge(ledger, parameters, spec.round, aggregation, context.hex(), mechanism)

    def _charge_and_send(self, message: MaskedInput) -> None:
        """Record the privacy cost durably, then release the (masked, noised) input."""
        current = self.current
        if current is None:
            raise LocalProtocolError("a masked input can only be sent during an aggregation")
        charge = current.charge
        if charge is not None:
            try:
                epsilon = charge.ledger.charge(
                    self.task, charge.round, charge.aggregation, charge.parameters.release, charge.mechanism, charge.model_hash
                )
            except PrivacyBudgetExhausted as exc:
                log.warning("aggregation %d: not sending the masked input: %s", charge.aggregation, exc)
                self._send(charge.aggregation, Refusal("budget-exhausted", str(exc)))
                self._finish("refused", f"budget-exhausted: {exc}")
                return
            current.epsilon = epsilon
            log.info(
                "aggregation %d: charged the privacy ledger; epsilon spent on %s is now %.3f",
                charge.aggregation,
                self.task,
                epsilon,
            )
            # The signed audit log learns of the release before it leaves, not only when the round
            # ends: a ledger lost after a crash mid-round can still be rebuilt from it.
            self._record(
                {
                    "task": self.task,
                    "round": charge.round,
                    "phase": current.spec.phase,
                    "aggregation": charge.aggregation,
                    "model_hash": charge.model_hash,
                    "outcome": "charged",
                    "sent_masked_input": True,
                    "dp": charge.mechanism,
                    "epsilon_task_after": epsilon,
                }
            )
        if current.client is None and not self._record_release(current):  # unmasked: the input itself is the release
            return
        current.sent_input = True
        self._send(current.aggregation, message)

    def _answer_again(self, aggregation: int, request: UnmaskRequest) -> bool:
        """A restarted coordinator asks for unmasking shares this node already sent: send the same ones."""
        try:
            shares = self.state.released_shares(self.task, aggregation, request)
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            log.warning("aggregation %d: could not read the shares released earlier (%s)", aggregation, exc)
            return False
        if shares is None:
            return False
        log.info("aggregation %d: sent the same unmasking shares again (the coordinator restarted)", aggregation)
        self._send(aggregation, shares)
        return True

    def _record_release(
        self, current: _Participation, request: UnmaskRequest | None = None, shares: UnmaskShares | None = None
    ) -> bool:
        """Durably mark this round and model as released before the release leaves; False if that failed."""
        try:
            self.state.record_release(
                self.task, current.spec.phase, current.spec.round, current.model_hash, current.aggregation, request, shares
            )
        except sqlite3.Error as exc:
            log.error("aggregation %d: could not record the release durably (%s); not sending it", current.aggregation, exc)
            self._send(current.aggregation, Refusal("storage-failure", "the node could not record its release durably"))
            self._finish("refused", f"storage-failure: {exc}")
            return False
        return True

    def _finish(self, outcome: str, detail: str) -> None:
        """End the current participation and write its receipt to the site's audit log."""
        current, self.current = self.current, None
        if current is None:
            return
        client = current.client
        revealed = client.revealed if client is not None else {}
        survivors = client.signed_survivors if client is not None else None
        self._record(
            {
                "task": self.task,
                "round": current.spec.round,
                "phase": current.spec.phase,
                "aggregation": current.aggregation,
                "model_hash": current.context,
                "global_model_sha256": current.model_hash,
                "cohort_size": current.cohort_size,
                "threshold": current.spec.threshold,
                "neighbours": current.spec.neighbours,
                "masking": current.spec.masking,
                "sent_masked_input": current.sent_input,
                "signed_survivors": list(survivors) if survivors is not None else None,
                "revealed_b_shares_of": sorted(peer for peer, kind in revealed.items() if kind == "b"),
                "revealed_s_shares_of": sorted(peer for peer, kind in revealed.items() if kind == "s"),
                "bad_dealers": sorted(client.bad_dealers) if client is not None else [],
                "dp": current.charge.mechanism if current.charge is not None else None,
                **_computation_receipt(current.spec),
                "epsilon_task_after": current.epsilon,
                "outcome": outcome,
                "detail": detail[:500],
            }
        )

    def _record(self, receipt: dict) -> None:
        if self.audit_log is not None:
            self.audit_log.append(receipt)

    def _send(self, aggregation: int, body: FederationMessage | ClientMessage) -> None:
        if isinstance(body, Refusal):  # keep refusals within what the wire accepts
            reason = "".join(c if c.isprintable() else "?" for c in body.reason)[:64] or "refused"
            body = Refusal(reason, body.detail[:1000])
        self.socket.send(Envelope(self.task, aggregation, body))


def _computation_receipt(spec: RoundSpec) -> dict:
    """What a compute aggregation asked for, for the audit log: kind, computation and the request's digest."""
    if spec.computation is None:
        return {}
    request = spec.computation["request"]
    return {
        "computation": {
            "name": spec.computation["name"],
            "kind": str(request.get("computation") or request.get("kind")),
            "request_sha256": request_digest(spec.computation),
        }
    }


def _preprocessing_difference(proposed: dict | None, agreed: dict | None) -> str:
    """Say how a round's preprocessing differs from the one this site agreed to (no data, only parameters)."""
    if proposed is not None and agreed is None:
        return f"the round scales features with {proposed['scaler']}; this site agreed to no preprocessing"
    if proposed is None and agreed is not None:
        return f"the round has no preprocessing; this site agreed to {agreed['scaler']} scaling"
    if proposed is None or agreed is None:  # neither: not a difference (the caller compares first)
        return "the round's preprocessing differs from what this site agreed to"
    if proposed["scaler"] != agreed["scaler"]:
        return f"the round scales features with {proposed['scaler']}; this site agreed to {agreed['scaler']}"
    for key in agreed:
        if proposed.get(key) != agreed[key]:
            if isinstance(agreed[key], list) and isinstance(proposed.get(key), list) and len(agreed[key]) == len(proposed[key]):
                at = next(i for i, (a, b) in enumerate(zip(proposed[key], agreed[key])) if a != b)
                return (
                    f"the round's {agreed['scaler']} {key} for feature #{at + 1} is {proposed[key][at]!r}, "
                    f"this site agreed to {agreed[key][at]!r}"
                )
            return f"the round's {agreed['scaler']} {key} differs from what this site agreed to"
    return "the round's preprocessing differs from what this site agreed to"


def _split(count: int, validation_fraction: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A fixed train/validation split per node (seeded by the node's name: reproducible, not secret)."""
    order = np.argsort([hashlib.sha256(f"{name}/{i}".encode()).digest() for i in range(count)], kind="stable")
    validation = round(validation_fraction * count)
    if count - validation < 1:
        raise InvalidParameter("too little local data to train on after the validation split")
    return np.sort(order[validation:]), np.sort(order[:validation])
