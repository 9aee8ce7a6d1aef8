"""The real Coordinator and real Nodes in one thread, over an in-memory hub, on a fake clock.

What ZeroMQ and the daemons do, without processes: every message goes through the same
``Coordinator.step`` and ``Node.step`` calls, so coordinator-level behaviour (exclusions,
retries, resuming after a restart) can be tested quickly and deterministically. A test can
drop or hold messages in flight (``Hub.drop``), replace the coordinator with a fresh one
on the same store, as a restart after kill -9 would, and kill a node (``InProcessFederation.kill``):
it stops, and the hub reports its connection closed, as the ZeroMQ socket's monitor does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from securefed.audit.log import AuditLog
from securefed.crypto.identity import SigningKey
from securefed.federation.coordinator import Coordinator
from securefed.federation.messages import Envelope
from securefed.federation.node import Node, NodePolicy, NodeState
from securefed.federation.store import CoordinatorStore
from securefed.federation.task import STAGE_NAMES, NodeEntry, TaskDefinition
from securefed.learning.data import LocalDataset

__all__ = ["Clock", "Hub", "InProcessFederation"]

TASK = "in-process-task"
N_FEATURES, CLASSES = 4, (0, 1)


class Clock:
    """A monotonic clock the test moves forward (each step of the federation advances it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hub:
    """In-memory transport between one Coordinator and several Nodes.

    ``drop`` is a predicate over (direction, node name, envelope); messages it accepts vanish, as
    they would when a process dies or the network cuts them.
    """

    def __init__(self) -> None:
        self.to_coordinator: list[tuple[str, Envelope]] = []
        self.to_node: dict[str, list[Envelope]] = {}
        self.from_node: dict[str, list[Envelope]] = {}
        #: everything the coordinator got through to each node, in order
        self.delivered: dict[str, list[Envelope]] = {}
        self.drop: Callable[[str, str, Envelope], bool] = lambda direction, node, envelope: False
        #: whether the coordinator's socket reports connections (``connection_events``, ``connected``)
        self.reports_connections = True
        self.disconnected: set[str] = set()
        self._events: list[tuple[str, str, int]] = []

    def disconnect(self, name: str) -> None:
        """The node's connection closes (its process died): the coordinator's socket reports it."""
        self.disconnected.add(name)
        self._events.append((name, "disconnected", 0))

    def coordinator_socket(self) -> object:
        hub = self

        class _Socket:
            def poll(self, timeout_ms: int) -> list[tuple[str, Envelope]]:
                out, hub.to_coordinator = hub.to_coordinator, []
                return out

            def send(self, node: str, envelope: Envelope) -> bool:
                if node in hub.disconnected:
                    return False
                if not hub.drop("down", node, envelope):
                    hub.to_node.setdefault(node, []).append(envelope)
                    hub.delivered.setdefault(node, []).append(envelope)
                return True

        class _ReportingSocket(_Socket):
            def connection_events(self) -> list[tuple[str, str, int]]:
                out, hub._events = hub._events, []
                return out

            def connected(self, node: str) -> bool:
                return node not in hub.disconnected

        return _ReportingSocket() if hub.reports_connections else _Socket()

    def node_socket(self, name: str) -> object:
        hub = self
        hub.to_node.setdefault(name, [])
        hub.from_node.setdefault(name, [])

        class _Socket:
            def poll(self, timeout_ms: int) -> list[Envelope]:
                out, hub.to_node[name] = hub.to_node[name], []
                return out

            def send(self, envelope: Envelope) -> bool:
                hub.from_node[name].append(envelope)
                if not hub.drop("up", name, envelope):
                    hub.to_coordinator.append((name, envelope))
                return True

        return _Socket()


def _dataset(seed: int, n: int = 60) -> LocalDataset:
    rng = np.random.default_rng(seed)  # test data only
    X = rng.normal(size=(n, N_FEATURES))
    y = (X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return LocalDataset(X, y, None)


class InProcessFederation:
    """A task over ``names`` with real Nodes (own SQLite state each) and a real Coordinator."""

    def __init__(
        self,
        tmp_path: Path,
        names: list[str],
        rounds: int = 2,
        *,
        min_nodes: int | None = None,
        evaluate: bool = False,
        policy: NodePolicy | None = None,
        deadline: float = 5.0,
        reports_connections: bool = True,
        task: TaskDefinition | None = None,
        datasets: list[LocalDataset] | None = None,
        audit: bool = False,
    ) -> None:
        self.tmp_path, self.names = tmp_path, list(names)
        self.clock = Clock()
        keys = {name: SigningKey.generate() for name in self.names}
        self.roster = {name: key.public_bytes for name, key in keys.items()}
        self.task = task or TaskDefinition(
            name=TASK,
            model_kind="sgd_logistic",
            n_features=N_FEATURES,
            classes=CLASSES,
            rounds=rounds,
            epochs=1,
            learning_rate=0.1,
            batch_size=8,
            min_nodes=len(self.names) if min_nodes is None else min_nodes,
            evaluate=evaluate,
            deadlines=dict.fromkeys(STAGE_NAMES, deadline),
        )
        self.entries = [NodeEntry(n, b"k" * 32, self.roster[n]) for n in self.names]
        self.hub = Hub()
        self.hub.reports_connections = reports_connections
        self.killed: set[str] = set()
        self.store_path = tmp_path / "coordinator.sqlite"
        self.store = CoordinatorStore(self.store_path)
        self.coordinator = self._new_coordinator()
        self.states = {name: NodeState(tmp_path / name / "node.sqlite") for name in self.names}
        #: with ``audit``: each node's signed audit log (tmp_path/<name>/audit.log); ``identity_keys`` verify them
        self.audit_logs = {name: AuditLog(tmp_path / name / "audit.log", keys[name]) for name in self.names} if audit else {}
        self.identity_keys = {name: key.public_bytes for name, key in keys.items()}
        self.nodes = {
            name: Node(
                name,
                self.task.name,
                self.hub.node_socket(name),
                keys[name],
                self.roster,
                datasets[i] if datasets is not None else _dataset(i),
                self.states[name],
                policy or NodePolicy(),
                clock=self.clock,
                preprocessing=self.task.preprocessing,
                audit_log=self.audit_logs.get(name),
            )
            for i, name in enumerate(self.names)
        }

    def _new_coordinator(self) -> Coordinator:
        return Coordinator(self.task, self.entries, self.hub.coordinator_socket(), self.store, clock=self.clock)

    def restart_coordinator(self) -> None:
        """What kill -9 and a restart do: the coordinator's memory and everything in flight to it are gone."""
        self.store.close()
        self.hub.to_coordinator.clear()
        for queue in self.hub.to_node.values():
            queue.clear()
        self.store = CoordinatorStore(self.store_path)
        self.coordinator = self._new_coordinator()

    def kill(self, name: str) -> None:
        """SIGKILL: the node stops for good, whatever it had in flight to it is lost, its connection closes."""
        self.killed.add(name)
        self.hub.to_node[name] = []
        self.hub.disconnect(name)

    def step(self, seconds: float = 0.25) -> None:
        self.coordinator.step(0)
        for name, node in self.nodes.items():
            if name not in self.killed:
                node.step(0)
        self.clock.now += seconds

    def run_until(self, condition: Callable[[InProcessFederation], bool], max_steps: int = 4000) -> None:
        for _ in range(max_steps):
            if condition(self):
                return
            self.step()
        raise AssertionError(f"condition not reached; rounds {[r.round for r in self.store.rounds()]}")

    def said(self, name: str, kind: type) -> list[tuple[int, object]]:
        return [(e.aggregation, e.body) for e in self.hub.from_node[name] if isinstance(e.body, kind)]

    def close(self) -> None:
        self.store.close()
        for state in self.states.values():
            state.close()
