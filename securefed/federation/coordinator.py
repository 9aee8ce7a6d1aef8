"""The coordinator: cohorts, round specs, deadlines, decoding, the global model, durability.

Theory of operation. :class:`Coordinator` is a loop around a socket (anything
with ``poll(timeout_ms) -> [(node, Envelope)]`` and ``send(node, Envelope)``)
and one :class:`~securefed.secagg.server.ServerProtocol` per aggregation.
Each training round is one aggregation of weighted model updates followed,
if enabled, by one aggregation of evaluation counts on the new model. Every
aggregation gets a fresh id, stored durably *before* it starts; that id is
the ``round_id`` bound into all of its signatures and keys, so nothing from
an earlier attempt replays into a later one.

The coordinator only relays and sums: it never holds a node's update. When
an aggregation completes, the round's model, history row and strategy state
are committed in one SQLite transaction; after a crash the coordinator
resumes from the last committed round and simply runs the interrupted one
again. A node that breaks the protocol loses its message (logged, counted);
too few nodes abort the attempt, and the round is retried with whoever is
still there.

Liveness. Nodes greet every second (``Hello``); the cohort of a new round is
picked from the nodes greeted within ``PRESENCE_TIMEOUT``. A node trains
inside its loop and does not greet while it does, so missing greetings never
end a node's part in a running aggregation. What does is the transport: a
socket that offers ``connection_events()`` (the ZeroMQ one does: a process
that died closes its connection at once, a vanished host misses its ZMTP
heartbeats for a few seconds) reports a cohort member whose connection
closed, and the coordinator treats it as dropped out of the aggregation at
once (``PeerGone``, as for a refusal), at this stage and every later one,
instead of waiting out the stage deadline.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from securefed.dp.accountant import SkellamRelease, skellam_epsilon
from securefed.dp.dpsgd import dpsgd_delta
from securefed.dp.mechanism import SkellamParameters, plan_record_skellam, plan_skellam
from securefed.dp.settings import DpSettings
from securefed.errors import (
    EncodingError,
    InvalidParameter,
    LocalProtocolError,
    ProtocolAborted,
    RemoteProtocolError,
    StorageError,
)
from securefed.federation.computation import ComputationJob, request_digest
from securefed.federation.messages import Envelope, Hello, Refusal, RoundResult, RoundStart
from securefed.federation.spec import RoundSpec, parse_spec, round_context
from securefed.federation.store import CoordinatorStore
from securefed.federation.task import NodeEntry, TaskDefinition
from securefed.federation.update import EvaluationCodec, TrainingUpdateCodec, choose_fractional_bits
from securefed.learning.models import ModelAdapter, make_adapter
from securefed.learning.strategies import make_strategy
from securefed.logging_setup import PeerWarnings
from securefed.secagg.bounds import minimum_safe_threshold
from securefed.secagg.config import RoundConfig
from securefed.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    Deadline,
    MaskedInput,
    PeerGone,
    RoundAborted,
    SeedReveal,
    Send,
    ServerMessage,
    ShareKeys,
    Stage,
    UnmaskShares,
)
from securefed.secagg.server import AggregateResult, ServerProtocol

__all__ = ["Coordinator", "CoordinatorSocketLike"]

log = logging.getLogger("securefed.coordinator")

_NODE_MESSAGES = (AdvertiseKeys, SeedReveal, ShareKeys, MaskedInput, ConsistencySignature, UnmaskShares)
PRESENCE_TIMEOUT = 5.0  # nodes greet every second; five missed greetings and a node is not picked
RETRY_DELAY = 1.0
WAITING_REMINDER = 60.0  # while no round can start, say so again this often
MAX_RERUN_BACKOFF = 300.0  # a round its nodes refuse to rerun is retried at most this often


def _names(names: list[str], shown: int = 10) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


class CoordinatorSocketLike(Protocol):
    """What the coordinator needs of a socket. It may also offer ``connection_events() ->
    [(node, "connected" | "disconnected", open connections left)]`` and ``connected(node) -> bool``
    (see :class:`securefed.wire.transport.CoordinatorSocket`); then a node whose connection closes is
    dropped from the running aggregation at once."""

    def poll(self, timeout_ms: int) -> list[tuple[str, Envelope]]: ...

    def send(self, node: str, envelope: Envelope) -> bool: ...


class _PlainSum:
    """Benchmark-only aggregation without masking: the same round shape, inputs summed in the clear."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self.stage: Stage | None = Stage.MASKED_INPUT
        self.result: AggregateResult | None = None
        self._total = np.zeros(config.vector_length, dtype=np.uint32)
        self._senders: set[int] = set()
        self._gone: set[int] = set()

    def receive(self, event: object) -> list[Send]:
        if isinstance(event, MaskedInput):
            if event.sender in self._senders or event.vector.shape != self._total.shape or event.vector.dtype != np.uint32:
                raise RemoteProtocolError("bad or duplicate input", reason="malformed")
            np.add(self._total, event.vector, out=self._total)
            self._senders.add(event.sender)
        elif isinstance(event, Deadline):
            return self._finish()
        elif isinstance(event, PeerGone):
            self._gone.add(event.node)
        else:
            raise RemoteProtocolError("plain aggregation accepts only inputs", reason="unexpected-message")
        if len(self._senders | self._gone) == self.config.cohort_size:
            return self._finish()
        return []

    def _finish(self) -> list[Send]:
        if len(self._senders) < self.config.threshold:
            self.stage = None
            raise ProtocolAborted(
                f"masked_input stage: {len(self._senders)} inputs, threshold is {self.config.threshold}",
                stage="masked_input",
                shortfall=self.config.threshold - len(self._senders),
            )
        self.stage = None
        self.result = AggregateResult(self._total, tuple(sorted(self._senders)))
        return []


@dataclass
class _Aggregation:
    id: int
    round: int
    phase: str
    cohort: list[str]
    spec: RoundSpec
    server: ServerProtocol | _PlainSum
    started: float
    stage: Stage | None
    deadline: float
    ids: dict[str, int] = field(default_factory=dict)
    rerun_refusals: set[str] = field(default_factory=set)
    #: cohort members whose connection closed during this aggregation: dropped at every stage from then on
    gone: set[str] = field(default_factory=set)
    #: when the current stage began (the coordinator's clock), and the seconds each closed stage took
    stage_started: float = 0.0
    stage_durations: dict[str, float] = field(default_factory=dict)
    #: the socket's byte counters when this aggregation began (None: the socket does not count)
    bytes_at_start: tuple[int, int] | None = None


class Coordinator:
    """Drives a task's rounds over secure aggregation. The daemon is a thin shell around it."""

    def __init__(
        self,
        task: TaskDefinition,
        nodes: Sequence[NodeEntry],
        socket: CoordinatorSocketLike,
        store: CoordinatorStore,
        clock: Callable[[], float] = time.monotonic,
        evaluation_data: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.task = task
        self.evaluation_data = evaluation_data
        # Federated evaluation releases exact counts, so it is off under DP (nodes would refuse it).
        self.federated_evaluation = task.evaluate and task.dp is None and evaluation_data is None and not task.is_computation
        #: trees and analytics: the computation driven one aggregation at a time (None: SGD training)
        self.job: ComputationJob | None = task.computation_job() if task.is_computation else None
        self._dp_plans: dict[tuple[int, int], SkellamParameters] = {}
        self._dp_refusals: dict[tuple[int, int, int, int], InvalidParameter] = {}
        self.nodes = {node.name: node for node in nodes}
        self.socket = socket
        self.store = store
        self.clock = clock
        #: SGD training: the model's parameter layout (None: a computation, which has no global weights)
        self.adapter: ModelAdapter | None = (
            None if self.job is not None else make_adapter(task.model_kind, task.n_features, task.classes, **task.model_options)
        )
        self.strategy = make_strategy(task.strategy, **task.strategy_options)
        self.presence: dict[str, float] = {}
        self.counters: Counter[str] = Counter()
        self.current: _Aggregation | None = None
        self._not_before = 0.0
        #: nodes left out of cohorts, with why: until the current round completes (they stalled an
        #: attempt) or, for provable misbehaviour, for the rest of this run
        self.excluded_for_round: dict[str, str] = {}
        self.excluded_for_run: dict[str, str] = {}
        self._waiting_logged: str | None = None
        self._waiting_since = 0.0
        self._waiting_reminded = 0.0
        self._rejections = PeerWarnings(log, "rejected messages from {peer}")
        #: unmask requests to send again, by node, after a restart in the middle of unmasking
        self._resend: dict[str, ServerMessage] = {}
        self._rerun_backoff = 0.0
        #: message bytes (received, sent) of the aggregations of the round in progress, by round
        self._round_bytes: dict[int, list[int]] = {}
        store.bind_task(task.name, task.fingerprint())
        latest = store.latest_model()
        if latest is None:
            store.save_initial_model(self.adapter.initial_parameters() if self.adapter is not None else np.zeros(0))
            latest = store.latest_model()
            if latest is None:
                raise StorageError(f"task {task.name}: the initial model just saved cannot be read back")
        self.completed_round, self.model, strategy_state = latest
        if strategy_state:
            self.strategy.load_state_dict(strategy_state)
        self.phase = "train"
        if self.job is not None:
            self.phase = "compute"
            self.model = np.zeros(0)  # a computation has no global weights: requests carry everything
            self._replay_steps(self.job)
        history = {record.round: record for record in store.rounds()}
        last = history.get(self.completed_round)
        if self.federated_evaluation and last is not None and last.accuracy is None:
            self.phase = "evaluate"  # the crash came between a round's commit and its evaluation
        log.info(
            "task %s: resuming after round %d of %d (%s next)",
            task.name,
            self.completed_round,
            task.rounds,
            self.phase,
        )
        self._resume_unmasking()

    # --- running ----------------------------------------------------------

    @property
    def finished(self) -> bool:
        if self.job is not None:
            return self.current is None and (self.job.done or self.completed_round >= self.task.rounds)
        return self.completed_round >= self.task.rounds and self.phase == "train" and self.current is None

    def _sgd_adapter(self) -> ModelAdapter:
        """The model's adapter, for the train and evaluate phases (only SGD tasks have them)."""
        if self.adapter is None:
            raise LocalProtocolError(f"task {self.task.name} is a {self.task.model_kind} computation: it trains no model")
        return self.adapter

    def _computation_job(self) -> ComputationJob:
        """The computation, for the compute phase (only trees and analytics have it)."""
        if self.job is None:
            raise LocalProtocolError(f"task {self.task.name} trains a {self.task.model_kind} model: it runs no computation")
        return self.job

    def _replay_steps(self, job: ComputationJob) -> None:
        """Rebuild ``job`` from the sums of the steps already committed (it is deterministic in them)."""
        steps = self.store.computation_steps()
        if [number for number, *_ in steps] != list(range(1, len(steps) + 1)):
            raise StorageError(
                f"the stored computation steps of task {self.task.name} are not 1..{len(steps)}; the state is damaged"
            )
        try:
            job.replay([(digest, summed, survivors) for _, digest, summed, survivors in steps])
        except (InvalidParameter, EncodingError, LocalProtocolError) as exc:
            raise StorageError(f"task {self.task.name}: cannot resume the computation from its stored steps: {exc}") from None
        self.completed_round = len(steps)
        if steps:
            log.info(
                "task %s: rebuilt the %s computation from %d stored step(s)", self.task.name, self.task.model_kind, len(steps)
            )

    def run(self, stop: threading.Event | None = None, poll_ms: int = 50) -> None:
        """Run until every round is done (or ``stop`` is set)."""
        while not self.finished and not (stop is not None and stop.is_set()):
            self.step(poll_ms)
        log.info("task %s: finished %d %s", self.task.name, self.completed_round, "steps" if self.job is not None else "rounds")

    def step(self, poll_ms: int = 50) -> None:
        for node, envelope in self.socket.poll(poll_ms):
            self._handle(node, envelope)
        self._connection_changes()
        self._tick()
        self._rejections.flush()

    def shutdown(self, why: str = "stopping") -> None:
        """Say what a stop leaves behind (call it once, before the socket closes)."""
        current = self.current
        if current is None:
            log.info("task %s: %s after round %d of %d", self.task.name, why, self.completed_round, self.task.rounds)
        else:
            log.info(
                "task %s: %s during aggregation %d (round %d %s, %s stage); that round is run again after a restart",
                self.task.name,
                why,
                current.id,
                current.round,
                current.phase,
                current.stage.value if current.stage is not None else "finishing",
            )
        self._rejections.flush(force=True)

    def connected_nodes(self) -> list[str]:
        now = self.clock()
        return sorted(name for name, seen in self.presence.items() if now - seen <= PRESENCE_TIMEOUT)

    def byte_counters(self) -> tuple[int, int] | None:
        """(bytes received, bytes sent) by the socket so far, or None if it does not count them."""
        received = getattr(self.socket, "bytes_received", None)
        sent = getattr(self.socket, "bytes_sent", None)
        if not isinstance(received, int) or not isinstance(sent, int):
            return None
        return received, sent

    # --- inbound ----------------------------------------------------------

    def _handle(self, node: str, envelope: Envelope) -> None:
        if node not in self.nodes:
            self._reject(node, "unknown-node", "authenticated key is not in the node list")
            return
        if envelope.task != self.task.name:
            self._reject(node, "wrong-task", f"message for task {envelope.task!r}")
            return
        body = envelope.body
        if isinstance(body, Hello) and body.node != node:
            self._reject(node, "name-mismatch", f"hello claims to be {body.node!r}")
            return
        connected = getattr(self.socket, "connected", None)
        if connected is None or connected(node):  # not for what a closed connection left behind
            self.presence[node] = self.clock()
        if isinstance(body, Hello):
            request = self._resend.pop(node, None)
            if request is not None and self.current is not None:
                self.socket.send(node, Envelope(self.task.name, self.current.id, request))
            return
        current = self.current
        if current is None or envelope.aggregation != current.id or node not in current.ids:
            self.counters["stale"] += 1
            log.debug("ignored %s from %s for aggregation %d", type(body).__name__, node, envelope.aggregation)
            return
        if isinstance(body, Refusal):
            log.warning("node %s refused aggregation %d: %s (%s)", node, current.id, body.reason, body.detail)
            self.store.record_refusal(current.id, node, body.reason, body.detail)
            if body.reason == "rerun":
                current.rerun_refusals.add(node)
            self._feed(current, PeerGone(current.ids[node]))
            return
        if not isinstance(body, _NODE_MESSAGES):
            self._reject(node, "unexpected-message", type(body).__name__)
            return
        if body.sender != current.ids[node]:
            self._reject(node, "impersonation", f"claims id {body.sender}, holds id {current.ids[node]}")
            return
        self._feed(current, body)

    def _reject(self, node: str, reason: str, detail: str) -> None:
        self.counters[reason] += 1
        self._rejections.warn(node, reason, "dropped a message from %s (%s): %s", node, reason, detail)

    # --- connections ----------------------------------------------------------

    def _connection_changes(self) -> None:
        events = getattr(self.socket, "connection_events", None)
        if events is None:
            return
        for node, kind, still_open in events():
            if kind == "connected":
                if still_open > 1:
                    log.info("node %s opened a new connection (it reconnected or restarted)", node)
                else:
                    log.info("node %s connected (%s)", node, self._connected_summary())
            elif kind == "disconnected":
                if still_open:
                    log.info("node %s: an older connection closed (it has reconnected)", node)
                else:
                    self.presence.pop(node, None)
                    log.info("node %s disconnected (%s)", node, self._connected_summary())
                self._lost(node)

    def _connected_summary(self) -> str:
        connected = getattr(self.socket, "connected", None)
        if connected is None:
            return f"{len(self.connected_nodes())} of {len(self.nodes)} nodes greeting"
        return f"{sum(1 for name in self.nodes if connected(name))} of {len(self.nodes)} nodes connected"

    def _lost(self, node: str) -> None:
        """A cohort member's connection closed: it has dropped out of the running aggregation."""
        current = self.current
        if current is None or node not in current.ids or node in current.gone or current.server.stage is None:
            return
        current.gone.add(node)
        stage = current.stage.value if current.stage is not None else "?"
        log.warning(
            "aggregation %d: node %s lost its connection in the %s stage; it has dropped out of this "
            "aggregation (the round goes on without waiting for the %s deadline)",
            current.id,
            node,
            stage,
            stage,
        )
        self._feed(current, PeerGone(current.ids[node]))

    def _feed(self, current: _Aggregation, event: object) -> None:
        """Hand ``event`` to the running aggregation ``current`` (which is ``self.current``) and act on the outcome."""
        server = current.server
        try:
            sends = server.receive(event)
        except RemoteProtocolError as exc:
            self._reject(self._name_of(current, event), exc.reason, str(exc))
            return
        except ProtocolAborted as exc:
            self._exclude_culprits(current, exc)
            self._abort(current, str(exc))
            return
        if isinstance(server, ServerProtocol) and server.stage is Stage.UNMASK and current.stage is not Stage.UNMASK:
            # Nodes are about to release their shares and will never contribute to this round again:
            # keep what finishing it needs, so a restarted coordinator can collect the same shares again.
            # (A plain sum has no unmask stage.)
            try:
                self._save_unmask_state(current, server)
            except (sqlite3.Error, InvalidParameter) as exc:
                log.error(
                    "aggregation %d: could not save the unmasking state durably (%s); aborting before any share is released",
                    current.id,
                    exc,
                )
                self._abort(current, f"could not save the unmasking state: {exc}")
                return
        for send in sends:
            self.socket.send(current.cohort[send.to - 1], Envelope(self.task.name, current.id, send.message))
        if server.stage is not current.stage:
            now = self.clock()
            log.debug(
                "aggregation %d: %s closed at %.3f s",
                current.id,
                current.stage.value if current.stage else "-",
                now - current.started,
            )
            if current.stage is not None:
                current.stage_durations[current.stage.value] = now - current.stage_started
            current.stage_started = now
            current.stage = server.stage
            if current.stage is not None:
                current.deadline = self.clock() + self.task.deadlines[current.stage.value]
                # A node whose connection closed answers no later stage either: do not wait for it.
                # (Should that close this stage too, the inner call handles the next one, and the end.)
                stage = current.stage
                for name in sorted(current.gone):
                    if self.current is not current or current.stage is not stage:
                        return
                    self._feed(current, PeerGone(current.ids[name]))
                if self.current is not current or current.stage is not stage:
                    return
        if server.result is not None:
            self._complete(current, server.result)

    def _save_unmask_state(self, current: _Aggregation, server: ServerProtocol) -> None:
        data, masked_sum = server.unmask_snapshot()
        config = server.config
        state = {
            "server": data,
            "config": {
                "cohort_size": config.cohort_size,
                "threshold": config.threshold,
                "vector_length": config.vector_length,
                "context": config.context.hex(),
                "neighbours": config.neighbours,
            },
            "spec": current.spec.to_json(),
            "cohort": list(current.cohort),
        }
        self.store.save_unmask_state(current.id, current.round, current.phase, state, masked_sum)

    def _resume_unmasking(self) -> None:
        """After a restart: finish the unmasking a crash interrupted, by asking for the same shares again."""
        try:
            pending = self.store.pending_unmask_state()
        except (StorageError, InvalidParameter) as exc:
            log.error("task %s: %s; that round will be run again from scratch", self.task.name, exc)
            self.store.clear_unmask_state()
            return
        if pending is None:
            return
        aggregation, round_number, phase, state, masked_sum = pending
        expected = (
            (self.completed_round + 1, self.phase) if self.phase in ("train", "compute") else (self.completed_round, "evaluate")
        )
        if (round_number, phase) != expected:
            self.store.clear_unmask_state()
            return
        try:
            cohort = [str(name) for name in state["cohort"]]
            ids = {name: i for i, name in enumerate(cohort, start=1)}
            roster = {i: self.nodes[name].identity_public_key for name, i in ids.items()}
            raw = state["config"]
            config = RoundConfig(
                self.task.name,
                aggregation,
                int(raw["cohort_size"]),
                int(raw["threshold"]),
                int(raw["vector_length"]),
                bytes.fromhex(raw["context"]),
                raw["neighbours"],
            )
            server = ServerProtocol.resume_unmasking(config, roster, state["server"], masked_sum)
            spec = parse_spec(state["spec"])
        except (KeyError, TypeError, ValueError, InvalidParameter, RemoteProtocolError) as exc:
            log.error("task %s: cannot resume the unmasking of aggregation %d (%s)", self.task.name, aggregation, exc)
            self.store.finish_attempt(aggregation, "aborted", f"could not resume after a restart: {exc}")
            self.store.clear_unmask_state()
            return
        now = self.clock()
        self.current = _Aggregation(
            id=aggregation,
            round=round_number,
            phase=phase,
            cohort=cohort,
            spec=spec,
            server=server,
            started=now,
            stage=Stage.UNMASK,
            # time for the nodes to reconnect and greet, then the stage's own deadline
            deadline=now + 2 * PRESENCE_TIMEOUT + self.task.deadlines["unmask"],
            ids=ids,
            stage_started=now,
            bytes_at_start=self.byte_counters(),
        )
        self._resend = {cohort[send.to - 1]: send.message for send in server.unmask_requests()}
        log.info(
            "round %d %s: resuming the unmasking of aggregation %d after a restart; asking %d nodes for their shares again",
            round_number,
            phase,
            aggregation,
            len(self._resend),
        )

    def _name_of(self, current: _Aggregation, event: object) -> str:
        sender = getattr(event, "sender", None) or getattr(event, "node", None)
        if isinstance(sender, int) and 1 <= sender <= len(current.cohort):
            return current.cohort[sender - 1]
        return "?"

    # --- timing -------------------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        current = self.current
        if current is not None:
            if current.stage is not None and now >= current.deadline:
                log.info("aggregation %d: %s deadline passed", current.id, current.stage.value)
                self._feed(current, Deadline(current.stage))
            return
        if self.finished or now < self._not_before:
            return
        usable = [name for name in self.connected_nodes() if name in self.nodes and name not in self.excluded_for_run]
        live = [name for name in usable if name not in self.excluded_for_round]
        if len(live) < len(usable) and len(live) < self._smallest_cohort():
            # Leaving out the nodes that stalled the last attempt would leave too few to run at all:
            # try again with them rather than wait forever (a crashed node that came back is one).
            live = usable
        if len(live) >= self.task.min_nodes:
            largest = self.task.max_nodes if self.job is None else min(self.task.max_nodes, self.job.max_nodes())
            self._start(live[:largest])
        else:
            self._log_waiting(self._waiting_for_nodes(live))

    def _smallest_cohort(self) -> int:
        """The fewest nodes a round can run with: min_nodes, and the threshold the colluder bound needs."""
        roster = len(self.nodes)
        return max(self.task.min_nodes, minimum_safe_threshold(roster, self.task.colluders(roster)))

    def _waiting_for_nodes(self, live: list[str]) -> str:
        """Why no round starts for want of nodes: k of min_nodes, who is there and who is not."""
        present = set(self.connected_nodes())
        absent = sorted(name for name in self.nodes if name not in present)
        left_out = sorted(name for name in present if name in self.nodes and name not in live)
        why = f"waiting for nodes: {len(live)} of min_nodes {self.task.min_nodes} connected and usable"
        why += f" ({_names(live)})" if live else ""
        if absent:
            why += f"; not connected: {_names(absent)}"
        if left_out:
            why += f"; left out: {_names(left_out)}"
        return why

    def _log_waiting(self, why: str) -> None:
        """Say why no round is starting: once per distinct reason, and again every WAITING_REMINDER seconds."""
        now = self.clock()
        if why != self._waiting_logged:
            log.info("task %s: %s", self.task.name, why)
            self._waiting_logged = why
            self._waiting_since = self._waiting_reminded = now
        elif now - self._waiting_reminded >= WAITING_REMINDER:
            log.info("task %s: still %s (for %.0f s)", self.task.name, why, now - self._waiting_since)
            self._waiting_reminded = now

    # --- starting and finishing --------------------------------------------

    def _start(self, cohort: list[str]) -> None:
        task = self.task
        n = len(cohort)
        try:
            threshold, neighbours = task.secagg_parameters(n, len(self.nodes))
        except InvalidParameter as exc:
            self._log_waiting(f"cannot run a round with {n} nodes: {exc}")
            return
        pool = n if neighbours is None or neighbours + neighbours % 2 >= n - 1 else neighbours + neighbours % 2 + 1
        if threshold > pool:
            c = task.colluders(len(self.nodes))
            quorum = minimum_safe_threshold(max(n, len(self.nodes)), c)
            self._log_waiting(
                f"waiting for nodes: {n} usable connected, but withstanding {c} colluders among "
                f"{len(self.nodes)} nodes needs {min(threshold, pool + 1) if threshold <= pool + 1 else 'more than ' + str(pool)} "
                f"of every {pool} share holders and {quorum} nodes in the round"
            )
            return
        round_number = self.completed_round if self.phase == "evaluate" else self.completed_round + 1
        computation = self.job.request() if self.job is not None else None
        dp_spec = None
        if task.dp is not None and self.phase == "train":
            try:
                plan = self._dp_plan(task.dp, self._sgd_adapter().parameter_count, n, threshold)
            except InvalidParameter as exc:
                self._log_waiting(f"no round can run within the task's epsilon: {exc}")
                return
            dp_spec = plan.to_spec(task.dp.delta, task.dp.epsilon, task.rounds)
        self._waiting_logged = None  # a round starts: anything we wait for next is news again
        aggregation = self.store.next_aggregation(round_number, self.phase)
        spec = RoundSpec(
            task=task.name,
            round=round_number,
            phase=self.phase,
            model_kind=task.model_kind,
            model_options=dict(task.model_options),
            n_features=task.n_features,
            classes=tuple(task.classes),
            epochs=task.epochs,
            learning_rate=float(task.learning_rate),
            batch_size=task.batch_size,
            clip_norm=float(task.clip_norm),
            fractional_bits=choose_fractional_bits(task.clip_norm, n) if self.job is None else 0,
            weight_cap=task.weight_cap,
            threshold=threshold,
            neighbours=neighbours,
            masking=task.masking,
            dp=dp_spec,
            computation=computation,
            **task.spec_fields(),
        )
        raw_spec = spec.to_json()
        pairs = tuple((i, name) for i, name in enumerate(cohort, start=1))
        if self.phase == "compute":
            length = self._computation_job().vector_length()
        elif self.phase == "train" and dp_spec is not None:
            length = self._sgd_adapter().parameter_count
        elif self.phase == "train":
            length = TrainingUpdateCodec(
                self._sgd_adapter().parameter_count, spec.clip_norm, spec.fractional_bits, spec.weight_cap, n
            ).vector_length
        else:
            length = EvaluationCodec(n).vector_length
        config = RoundConfig(task.name, aggregation, n, threshold, length, round_context(raw_spec, pairs, self.model), neighbours)
        roster = {i: self.nodes[name].identity_public_key for i, name in pairs}
        roster_size = max(n, len(self.nodes))
        quorum = minimum_safe_threshold(roster_size, task.colluders(roster_size))
        server = ServerProtocol(config, roster, quorum=min(quorum, n)) if task.masking else _PlainSum(config)
        now = self.clock()
        first_stage = Stage.ADVERTISE if task.masking else Stage.MASKED_INPUT
        self.current = _Aggregation(
            id=aggregation,
            round=round_number,
            phase=self.phase,
            cohort=list(cohort),
            spec=spec,
            server=server,
            started=now,
            stage=first_stage,
            deadline=now + task.deadlines["advertise"],
            ids={name: i for i, name in pairs},
            stage_started=now,
            bytes_at_start=self.byte_counters(),
        )
        log.info(
            "%s %d/%s %s: aggregation %d with %d nodes, threshold %d, %s",
            "round" if computation is None else "step",
            round_number,
            task.rounds if computation is None else f"<={task.rounds}",
            self.phase
            if computation is None
            else f"{self.phase} {computation['request'].get('computation') or computation['request'].get('kind')}",
            aggregation,
            n,
            threshold,
            "complete graph" if neighbours is None else f"{neighbours} neighbours",
        )
        for i, name in pairs:
            self.socket.send(name, Envelope(task.name, aggregation, RoundStart(i, pairs, raw_spec, self.model)))

    def _complete(self, current: _Aggregation, result: AggregateResult) -> None:
        survivors = [current.cohort[i - 1] for i in result.survivors]
        for node_id, why in sorted(result.excluded.items()):
            name = current.cohort[node_id - 1]
            self.excluded_for_run[name] = why
            log.error(
                "aggregation %d: node %s %s; its shares were not used and it is left out for the rest of this "
                "run (restart the coordinator to admit it again)",
                current.id,
                name,
                why,
            )
        try:
            self._apply(current, result, survivors)
        except EncodingError as exc:
            self._abort(current, f"the unmasked sum was refused: {exc}")

    def _apply(self, current: _Aggregation, result: AggregateResult, survivors: list[str]) -> None:
        duration = self.clock() - current.started
        if current.phase == "compute":
            detail = self._apply_step(self._computation_job(), current, result, survivors, duration)
        elif current.phase == "train":
            detail = self._apply_round(self._sgd_adapter(), current, result, survivors, duration)
        else:
            detail = self._apply_evaluation(current, result, survivors)
        for name in current.cohort:
            self.socket.send(name, Envelope(self.task.name, current.id, RoundResult(True, len(survivors), detail)))
        self.store.clear_unmask_state()
        self._resend.clear()
        self.current = None
        self.excluded_for_round.clear()
        self._rerun_backoff = 0.0

    def _apply_round(
        self, adapter: ModelAdapter, current: _Aggregation, result: AggregateResult, survivors: list[str], duration: float
    ) -> str:
        """A train aggregation completed: decode the mean update, apply it and commit the round."""
        spec = current.spec
        n = len(current.cohort)
        epsilon = None
        release = None
        if spec.dp is not None:
            dp = self.task.dp
            if dp is None:
                raise LocalProtocolError(
                    f"aggregation {current.id} carries DP parameters, but task {self.task.name} has no [task.dp]"
                )
            # Decode with the parameters this round actually used, and compose its cost with
            # every release recorded before it: the task's epsilon comes from records, never a plan.
            params = SkellamParameters.from_spec(spec.dp, adapter.parameter_count, n)
            if params.unit == "record":
                # One DP-SGD step: the noisy sum of clipped per-record gradients over the public expected
                # batch, plus the (public) L2 term; the step itself is post-processing.
                gradient_sum = params.decode_gradient_sum(result.sum, len(survivors))  # range-checked
                mean_delta = dpsgd_delta(adapter, self.model, gradient_sum, params.expected_batch, self.task.learning_rate)
            else:
                mean_delta = params.decode_mean(result.sum, len(survivors))  # range-checked
            total_weight = float(len(survivors))
            made = params.release
            release = (made.variance, made.l2_sensitivity, made.l1_sensitivity, made.sampling_rate)
            epsilon = skellam_epsilon([*self._recorded_releases(), made], dp.delta)
        else:
            codec = TrainingUpdateCodec(adapter.parameter_count, spec.clip_norm, spec.fractional_bits, spec.weight_cap, n)
            mean_delta, total_weight = codec.decode_mean(result.sum, len(survivors))
        new_model = self.strategy.apply(self.model, mean_delta)
        bytes_in, bytes_out = self._close_bytes(current)
        self.store.commit_round(
            current.round,
            new_model,
            self.strategy.state_dict(),
            current.id,
            survivors,
            n,
            total_weight,
            epsilon,
            duration,
            release,
            stage_durations=current.stage_durations,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
        )
        self.model = new_model
        self.completed_round = current.round
        self.phase = "evaluate" if self.federated_evaluation else "train"
        log.info(
            "round %d/%d: model updated from %d of %d nodes in %.2f s%s",
            current.round,
            self.task.rounds,
            len(survivors),
            n,
            duration,
            "" if epsilon is None else f", epsilon spent {epsilon:.3f}",
        )
        if self.evaluation_data is not None:
            X, y = self.evaluation_data
            metrics = adapter.evaluate(new_model, X, y)
            self.store.record_evaluation(current.round, current.id, metrics.accuracy, metrics.mean_loss, metrics.count, 0)
            log.info(
                "round %d/%d: accuracy %.4f on the coordinator's evaluation data",
                current.round,
                self.task.rounds,
                metrics.accuracy,
            )
        return f"round {current.round} aggregated from {len(survivors)} of {n} nodes"

    def _apply_evaluation(self, current: _Aggregation, result: AggregateResult, survivors: list[str]) -> str:
        """An evaluate aggregation completed: record the model's federated accuracy and loss."""
        totals = EvaluationCodec(len(current.cohort)).decode(result.sum, len(survivors))
        bytes_in, bytes_out = self._close_bytes(current)
        self.store.record_evaluation(
            current.round,
            current.id,
            totals.accuracy,
            totals.mean_loss,
            totals.count,
            len(survivors),
            bytes_in=bytes_in,
            bytes_out=bytes_out,
        )
        self.phase = "train"
        log.info(
            "round %d/%d: federated accuracy %.4f, loss %.4f over %d samples from %d nodes",
            current.round,
            self.task.rounds,
            totals.accuracy,
            totals.mean_loss,
            totals.count,
            len(survivors),
        )
        return f"round {current.round} evaluated on {totals.count} samples: accuracy {totals.accuracy:.4f}"

    def _apply_step(
        self, job: ComputationJob, current: _Aggregation, result: AggregateResult, survivors: list[str], duration: float
    ) -> str:
        """A compute aggregation completed: feed its sum to ``job`` and commit the step (and any result)."""
        computation = current.spec.computation
        if computation is None:  # parse_spec and _start pair the compute phase with a computation
            raise LocalProtocolError(f"compute aggregation {current.id} has no computation in its spec")
        digest = request_digest(computation)
        try:
            job.receive(result.sum, len(survivors))
        except (InvalidParameter, LocalProtocolError, EncodingError, ProtocolAborted) as exc:
            # A refused sum leaves a driver unusable: rebuild it from the committed steps, so the
            # retry of this step starts from exactly the state before it.
            self.job = rebuilt = self.task.computation_job()
            self._replay_steps(rebuilt)
            raise EncodingError(str(exc)) from None
        finished = job.done
        model = job.model.to_arrays() if finished and job.model is not None else None
        bytes_in, bytes_out = self._close_bytes(current)
        self.store.commit_step(
            current.round,
            current.id,
            digest,
            result.sum,
            survivors,
            len(current.cohort),
            duration,
            stage_durations=current.stage_durations,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            result=job.result() if finished else None,
            model=model,
        )
        self.completed_round = current.round
        log.info(
            "step %d: %s aggregated from %d of %d nodes in %.2f s%s",
            current.round,
            self.task.model_kind,
            len(survivors),
            len(current.cohort),
            duration,
            f"; the computation finished after {job.aggregations} secure aggregations" if finished else "",
        )
        return f"step {current.round} aggregated from {len(survivors)} of {len(current.cohort)} nodes"

    def _close_bytes(self, current: _Aggregation) -> tuple[int | None, int | None]:
        """Add an ending aggregation's traffic to its round's; the round's totals so far (None: not counted).

        Counted from just before its first message to now, i.e. up to its result's commit: the small
        messages that announce the result afterwards are not in it.
        """
        now = self.byte_counters()
        if now is None or current.bytes_at_start is None:
            return None, None
        for stale in [r for r in self._round_bytes if r < current.round]:
            del self._round_bytes[stale]
        totals = self._round_bytes.setdefault(current.round, [0, 0])
        totals[0] += now[0] - current.bytes_at_start[0]
        totals[1] += now[1] - current.bytes_at_start[1]
        current.bytes_at_start = now  # never counted twice
        return totals[0], totals[1]

    def _recorded_releases(self) -> list[SkellamRelease]:
        return [SkellamRelease(v, l2, l1, q) for _, v, l2, l1, q in self.store.dp_releases()]

    def _dp_plan(self, dp: DpSettings, dimension: int, n: int, threshold: int) -> SkellamParameters:
        """Noise for the remaining rounds, calibrated so that they and every release already recorded
        stay within ``dp``'s epsilon (the task's); sized for t - c honest survivors and a model of
        ``dimension`` parameters. Raises InvalidParameter when the recorded releases leave no room
        (e.g. ``rounds`` was raised after the budget was spent)."""
        key = (n, threshold)
        refusal = self._dp_refusals.get((n, threshold, self.completed_round, self.task.rounds))
        if refusal is not None:
            raise refusal
        if key not in self._dp_plans:
            roster = max(n, len(self.nodes))
            honest = threshold - self.task.colluders(roster)
            spent = self._recorded_releases()
            remaining = self.task.rounds - self.completed_round
            try:
                if dp.unit == "record":
                    if dp.total_records is None or dp.expected_batch is None:  # DpSettings requires both for records
                        raise LocalProtocolError("record-level DP settings without total_records and expected_batch")
                    self._dp_plans[key] = plan_record_skellam(
                        dp.epsilon, dp.delta, remaining, dp.clip_norm, dimension, n, honest,
                        dp.total_records, dp.expected_batch, spent,
                    )  # fmt: skip
                else:
                    self._dp_plans[key] = plan_skellam(dp.epsilon, dp.delta, remaining, dp.clip_norm, dimension, n, honest, spent)
            except InvalidParameter as exc:  # the same answer until something changes: do not recompute it every tick
                self._dp_refusals[(n, threshold, self.completed_round, self.task.rounds)] = exc
                raise
            plan = self._dp_plans[key]
            if plan.unit == "record":
                log.info(
                    "DP plan (record level) for %d nodes (t=%d, noise sized for %d honest survivors): each record "
                    "sampled with probability %.4g (expected batch %g of %d records), noise multiplier %.3f, scale 2^%d; "
                    "%d rounds recorded, %d to go, epsilon <= %g in all at delta %g",
                    n, threshold, honest, plan.sampling_rate, plan.expected_batch, dp.total_records,
                    plan.noise_multiplier, plan.scale_bits, len(spent), remaining, dp.epsilon, dp.delta,
                )  # fmt: skip
                return plan
            log.info(
                "DP plan for %d nodes (t=%d, noise sized for %d honest survivors): Skellam noise multiplier %.3f, "
                "scale 2^%d; %d rounds recorded, %d to go, epsilon <= %g in all at delta %g",
                n, threshold, honest, plan.noise_multiplier, plan.scale_bits, len(spent), remaining,
                dp.epsilon, dp.delta,
            )  # fmt: skip
        return self._dp_plans[key]

    def _exclude_culprits(self, current: _Aggregation, exc: ProtocolAborted) -> None:
        """Leave out of ``current``'s retry every node the abort names (identifiable abort)."""
        for node_id in exc.culprits:
            if not 1 <= node_id <= len(current.cohort):
                continue
            name = current.cohort[node_id - 1]
            if exc.stage == Stage.UNMASK.value:  # seen by this coordinator: a bad sharing it signed, or a lie
                self.excluded_for_run[name] = str(exc)
                log.error("aggregation %d: node %s is left out for the rest of this run: %s", current.id, name, exc)
            else:
                self.excluded_for_round[name] = str(exc)
                log.warning("aggregation %d: node %s is left out of the retries of this round", current.id, name)

    def _abort(self, current: _Aggregation, reason: str) -> None:
        """Give up the running aggregation ``current`` (which is ``self.current``) and schedule the retry."""
        log.warning("aggregation %d (round %d %s) aborted: %s", current.id, current.round, current.phase, reason)
        self.store.finish_attempt(current.id, "aborted", reason)
        self.store.clear_unmask_state()
        self._resend.clear()
        for name in current.cohort:
            self.socket.send(name, Envelope(self.task.name, current.id, RoundAborted("too-few-nodes")))
        self._close_bytes(current)  # an aborted attempt's traffic counts towards its round
        self.current = None
        self._not_before = self.clock() + RETRY_DELAY
        if current.rerun_refusals and current.phase in ("train", "compute"):
            # The same refusals will come back at once: retry rarely, not in a tight loop.
            self._rerun_backoff = min(MAX_RERUN_BACKOFF, max(RETRY_DELAY, 2 * self._rerun_backoff))
            self._not_before = self.clock() + self._rerun_backoff
        if current.rerun_refusals:
            nodes = ", ".join(sorted(current.rerun_refusals))
            if current.phase == "evaluate":
                # An evaluation is optional: never block training on one that can no longer run.
                log.warning(
                    "round %d: evaluation skipped: %s already released an evaluation of this model in an attempt "
                    "that did not complete, and refuse a second one (rerun protection)",
                    current.round,
                    nodes,
                )
                self.phase = "train"
            else:
                log.error(
                    "round %d cannot be retried with %s: they released their update to an earlier attempt of "
                    "this round that did not complete, and refuse to contribute twice (a second sum could be "
                    "subtracted from the first). Only nodes that took no part in that attempt can run it; next "
                    "try in %.0f s. See docs/deployment.md (rerun protection).",
                    current.round,
                    nodes,
                    self._rerun_backoff,
                )
