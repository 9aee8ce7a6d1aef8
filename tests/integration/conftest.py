"""Fixtures for integration tests: real daemons as separate processes over CURVE ZeroMQ on loopback.

Every federation is laid out by :class:`securefed.localfed.LocalFederation` in
the test's ``tmp_path`` and driven through a :class:`Federation` harness that

* remembers every process it started and, in the fixture finaliser, sends
  SIGTERM, waits, then SIGKILLs whatever is left (a session finaliser then
  checks that no process started by any test is still running);
* only ever waits with a bound: :meth:`Federation.wait_until` polls the
  coordinator's SQLite store (read-only), its ``status.json`` or its log and
  fails with the tail of every log when the time is up, or at once when the
  coordinator dies unexpectedly;
* reads the store read-only while the coordinator runs (WAL mode makes that
  safe), and through :class:`CoordinatorStore` once it has stopped.

Stage deadlines are short, so that a dropout costs seconds, yet derived from
step times measured on this machine in this session (:class:`StepTimes`), so
that an honest node on a busy machine is never mistaken for a dropout: every
stage gets at least its floor (advertise 5 s, every other stage 3 s) and
``DEADLINE_HEADROOM`` times what its work took here. The masked-input stage
also covers local training (a node advertises its keys, reveals and deals its
shares at once, then trains, and only then answers the share relay), with the
nodes of a federation sharing this machine's cores. Test timeouts come from the same figures (:meth:`Federation.time_budget`).
The data is scikit-learn's bundled digits set split over a handful of nodes.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from securefed.crypto.identity import SigningKey
from securefed.federation.task import STAGE_NAMES
from securefed.learning.datasets import BundledDataset, Split, load_bundled, train_test_split_stratified
from securefed.learning.models import DEFAULT_TRAINING, make_adapter
from securefed.learning.partition import partition
from securefed.localfed import LocalFederation
from securefed.secagg import simulate
from securefed.wire.keys import CurveKeyPair

T = TypeVar("T")

#: The shortest stage deadlines: a node that went silent costs a few seconds.
DEADLINE_FLOORS = {"advertise": 3.0, "reveal": 3.0, "share": 3.0, "masked_input": 5.0, "consistency": 3.0, "unmask": 3.0}
#: How many times the measured duration of a stage's work its deadline allows (a busy machine).
DEADLINE_HEADROOM = 6.0
#: Starting the daemons, loading data and connecting, before the first round (test timeouts only).
STARTUP_BUDGET = 30.0

#: Local training slow enough (about half a second of CPU per node and round on
#: this machine) that a signal sent right after a round starts lands while the
#: nodes are still training, i.e. genuinely mid-round.
SLOW_MLP = {
    "model": "mlp",
    "model_options": {"hidden_layer_sizes": [64]},
    "local_epochs": 300,
    "learning_rate": 0.05,
    "batch_size": 8,
}

_STOP_GRACE = 5.0
_ALL_PROCESSES: list[subprocess.Popen] = []


@dataclass(frozen=True)
class Digits:
    dataset: BundledDataset
    split: Split


@pytest.fixture(scope="session")
def digits() -> Digits:
    dataset = load_bundled("digits")
    return Digits(dataset, train_test_split_stratified(dataset.X, dataset.y, 0.25, 0))


class StepTimes:
    """How long the steps of a round take on this machine, measured here (single-threaded, like the daemons).

    ``training(task, samples)`` is one node's local training for a [task] table on that many samples;
    ``secagg(n, length)`` one whole in-memory secure round, every party in one process, which bounds the
    work of any one stage of one node. Each is measured once per session and kept.
    """

    def __init__(self, digits: Digits) -> None:
        self.digits = digits
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._cache: dict[tuple, float] = {}

    def training(self, task: dict, samples: int) -> float:
        options = task.get("model_options", {})
        key = ("train", task["model"], json.dumps(options, sort_keys=True), task["local_epochs"],
               task["learning_rate"], task["batch_size"], samples)  # fmt: skip
        if key not in self._cache:
            dataset, split = self.digits.dataset, self.digits.split
            adapter = make_adapter(task["model"], dataset.n_features, dataset.classes, **options)
            model = adapter.initial_parameters(0)
            X, y = split.X_train[:samples], split.y_train[:samples]

            def train() -> None:
                adapter.fit_local(model, X, y, epochs=task["local_epochs"], learning_rate=task["learning_rate"],
                                  batch_size=task["batch_size"], seed=0)  # fmt: skip

            self._cache[key] = timed(train)
        return self._cache[key]

    def secagg(self, n: int, length: int) -> float:
        key = ("secagg", n, length)
        if key not in self._cache:
            rng = np.random.default_rng(0)
            inputs = [rng.integers(0, 1 << 32, length, dtype=np.uint32) for _ in range(n)]
            self._cache[key] = timed(lambda: simulate(inputs, n, seed=0))
        return self._cache[key]


def timed(work: Callable[[], object], repeats: int = 3) -> float:
    """Seconds ``work`` takes here: the median of a few runs (after one to warm up), with the BLAS pools at one
    thread as in the daemons."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        limits = None
    else:
        limits = threadpool_limits(1)
    try:
        work()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    finally:
        if limits is not None:
            limits.restore_original_limits()
    return sorted(times)[len(times) // 2]


@pytest.fixture(scope="session")
def step_times(digits: Digits) -> StepTimes:
    return StepTimes(digits)


def derive_deadlines(times: StepTimes, task: dict, n_nodes: int, samples: int) -> dict[str, float]:
    """Stage deadlines for this federation on this machine (see the module docstring)."""
    dataset = times.digits.dataset
    length = make_adapter(task["model"], dataset.n_features, dataset.classes, **task.get("model_options", {})).parameter_count + 1
    contention = math.ceil((n_nodes + 1) / times.cpus)  # the nodes and the coordinator share the cores
    stage = times.secagg(max(n_nodes, 2), length) * contention
    training = times.training(task, samples) * contention
    work = {name: stage for name in STAGE_NAMES}
    work["masked_input"] += training
    return {name: round(max(DEADLINE_FLOORS[name], DEADLINE_HEADROOM * work[name]), 2) for name in STAGE_NAMES}


def task_table(name: str, digits: Digits, rounds: int, min_nodes: int, **overrides: Any) -> dict:
    """A coordinator [task] table for the digits data (sgd_logistic unless overridden).

    No threshold: the coordinator picks the smallest one the nodes' default colluder bound accepts
    (2t > N + c for their roster of N, c = max(1, ceil(N/5))); t = 3 for three or four nodes.
    """
    model = overrides.get("model", "sgd_logistic")
    training = DEFAULT_TRAINING[model]
    table = {
        "name": name,
        "model": model,
        "features": digits.dataset.n_features,
        "classes": list(digits.dataset.classes),
        "rounds": rounds,
        "local_epochs": training["epochs"],
        "learning_rate": training["learning_rate"],
        "batch_size": training["batch_size"],
        "min_nodes": min_nodes,
        "clip_norm": 100.0,
    }
    table.update(overrides)
    return table


def _terminate(processes: list[subprocess.Popen]) -> None:
    """SIGTERM everything still running, wait up to a grace period, then SIGKILL and reap."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE
    for process in processes:
        try:
            process.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Federation:
    """A LocalFederation plus the processes a test started for it."""

    def __init__(
        self, federation: LocalFederation, names: list[str], digits: Digits, task: dict, deadlines: dict[str, float],
        training: float,
    ) -> None:  # fmt: skip
        self.fed = federation
        self.names = names
        self.digits = digits
        self.task = task
        #: the coordinator's stage deadlines (seconds)
        self.deadlines = deadlines
        #: measured seconds for every node of this federation to train once, side by side on this machine
        self.training_time = training
        self.processes: dict[str, subprocess.Popen] = {}
        self._retired: list[subprocess.Popen] = []

    def time_budget(self, rounds: int, stalls: int = 1) -> float:
        """A bound on how long ``rounds`` rounds may take here: startup, then every aggregation (two per round
        with federated evaluation) at worst one deadline per stage, plus ``stalls`` aggregations that run out
        every deadline and are retried. A passing test never waits that long; a failing one ends by then."""
        per_round = 2 if self.task.get("evaluate", True) and not self.task.get("dp") else 1
        aggregation = self.training_time + max(self.deadlines.values()) * 2
        stalled = sum(self.deadlines.values()) + 1.0  # plus the coordinator's retry delay
        return STARTUP_BUDGET + rounds * per_round * aggregation + stalls * stalled

    # --- paths and keys -------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.fed.root

    @property
    def endpoint(self) -> str:
        return self.fed.endpoint

    @property
    def coordinator_keys(self) -> CurveKeyPair:
        return CurveKeyPair.load(self.root / "coordinator" / "curve.key")

    def node_keys(self, name: str) -> CurveKeyPair:
        return CurveKeyPair.load(self.root / name / "curve.key")

    # --- processes ------------------------------------------------------------

    def _track(self, name: str, process: subprocess.Popen) -> subprocess.Popen:
        old = self.processes.get(name)
        if old is not None:
            self._retired.append(old)
        self.processes[name] = process
        _ALL_PROCESSES.append(process)
        return process

    def start_coordinator(self) -> subprocess.Popen:
        return self._track("coordinator", self.fed.start_coordinator())

    def start_node(self, name: str) -> subprocess.Popen:
        return self._track(name, self.fed.start_node(name))

    def start_nodes(self, names: list[str] | None = None) -> None:
        for name in names or self.names:
            self.start_node(name)

    def start_nodes_ready(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        """Start nodes and wait until each has loaded its data and opened its socket (it then keeps retrying)."""
        names = names or self.names
        self.start_nodes(names)
        for name in names:
            self.wait_log(name, r"local samples with \d+ features; connecting to", timeout)

    def alive(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def kill(self, name: str, signum: int = signal.SIGKILL) -> int:
        process = self.processes[name]
        process.send_signal(signum)
        return process.wait(timeout=10)

    def stop_all(self) -> None:
        _terminate(list(self.processes.values()) + self._retired)

    def log(self, name: str) -> str:
        return self.fed.log(name)

    def diagnostics(self) -> str:
        parts = [f"--- status.json: {self.status()}"]
        for name in ["coordinator", *self.names]:
            text = self.log(name)
            if text:
                code = self.processes[name].poll() if name in self.processes else "not started"
                parts.append(f"--- {name}.log (exit: {code}), last lines:\n" + "\n".join(text.splitlines()[-25:]))
        return "\n".join(parts)

    # --- waiting ----------------------------------------------------------------

    def wait_until(
        self,
        probe: Callable[[], T],
        timeout: float,
        what: str,
        interval: float = 0.05,
        must_live: tuple[str, ...] = ("coordinator",),
    ) -> T:
        """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds.

        Fails at once if a started process named in ``must_live`` exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            for name in must_live:
                process = self.processes.get(name)
                if process is not None and process.poll() is not None:
                    value = probe()  # it may have finished just now
                    if value:
                        return value
                    pytest.fail(f"{name} exited ({process.returncode}) while waiting for {what}\n{self.diagnostics()}")
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.diagnostics()}")
            time.sleep(interval)

    def wait_coordinator_exit(self, timeout: float) -> int:
        process = self.processes["coordinator"]
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"coordinator did not finish within {timeout:.0f} s\n{self.diagnostics()}")

    def wait_bound(self, timeout: float = 30.0) -> dict:
        """The coordinator writes status.json on its first loop turn, after binding its socket."""
        return self.wait_until(self.status, timeout, "the coordinator's first status.json")

    def wait_log(self, name: str, pattern: str, timeout: float, after: int = 0) -> re.Match:
        compiled = re.compile(pattern)
        return self.wait_until(
            lambda: compiled.search(self.log(name), after),
            timeout,
            f"{pattern!r} in {name}.log",
            interval=0.02,
            must_live=("coordinator", name),
        )

    # --- reading state ------------------------------------------------------------

    def status(self) -> dict | None:
        try:
            return json.loads(self.fed.status_path.read_text())
        except (OSError, ValueError):
            return None

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Read the coordinator's store read-only ([] if it does not exist yet)."""
        if not self.fed.state_path.exists():
            return []
        try:
            db = sqlite3.connect(f"file:{self.fed.state_path}?mode=ro", uri=True, timeout=5)
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()
        except sqlite3.OperationalError:
            return []

    def rounds(self) -> list[dict]:
        rows = self.query(
            "SELECT round, aggregation, participants, survivors, total_weight, accuracy, loss, "
            "eval_participants, completed_at FROM rounds ORDER BY round"
        )
        keys = ("round", "aggregation", "participants", "survivors", "total_weight", "accuracy", "loss",
                "eval_participants", "completed_at")  # fmt: skip
        out = [dict(zip(keys, row)) for row in rows]
        for row in out:
            row["survivors"] = json.loads(row["survivors"])
        return out

    def attempts(self) -> list[dict]:
        rows = self.query("SELECT aggregation, round, phase, status, detail FROM attempts ORDER BY aggregation")
        return [dict(zip(("aggregation", "round", "phase", "status", "detail"), row)) for row in rows]

    def model(self, round_number: int) -> np.ndarray | None:
        rows = self.query("SELECT weights FROM models WHERE round = ?", (round_number,))
        return np.frombuffer(rows[0][0], dtype="<f8").astype(np.float64) if rows else None


@pytest.fixture
def launch(tmp_path: Path, digits: Digits, step_times: StepTimes) -> Iterator[Callable[..., Federation]]:
    """Factory: ``launch(n_nodes, rounds, min_nodes=..., extra_nodes=..., sizes=..., **task)`` -> Federation (not started).

    Stage deadlines are derived from measured step times unless ``deadlines`` is given."""
    made: list[Federation] = []

    def make(
        n_nodes: int = 3,
        rounds: int = 3,
        min_nodes: int | None = None,
        deadlines: dict | None = None,
        extra_nodes: dict[str, tuple[CurveKeyPair, SigningKey]] | None = None,
        policy: dict | None = None,
        seed: int = 0,
        sizes: tuple[int, ...] | None = None,
        **task_overrides: Any,
    ) -> Federation:
        split = digits.split
        names = [f"site-{i + 1}" for i in range(n_nodes)]
        if sizes is None:
            parts = partition("iid", split.X_train, split.y_train, n_nodes, seed)
        else:  # unequal shares of the training data (so FedAvg's weights differ)
            assert len(sizes) == n_nodes and sum(sizes) <= len(split.y_train)
            order = np.random.default_rng(seed).permutation(len(split.y_train))
            cuts = np.cumsum((0, *sizes))
            parts = [order[cuts[i] : cuts[i + 1]] for i in range(n_nodes)]
        node_data = {name: (split.X_train[idx], split.y_train[idx]) for name, idx in zip(names, parts)}
        task = task_table(f"it-{len(made)}", digits, rounds, n_nodes if min_nodes is None else min_nodes, **task_overrides)
        largest = max(len(y) for _, y in node_data.values())
        samples = largest - round(0.2 * largest)  # what a node trains on after its validation split
        training = step_times.training(task, samples) * math.ceil((n_nodes + 1) / step_times.cpus)
        if deadlines is None:
            deadlines = derive_deadlines(step_times, task, n_nodes, samples)
        root = tmp_path / f"federation-{len(made)}"
        local = LocalFederation.create(
            root,
            node_data,
            list(digits.dataset.feature_names),
            task,
            deadlines=dict(deadlines),
            policy=policy,
            extra_nodes=extra_nodes,
        )
        federation = Federation(local, names, digits, task, dict(deadlines), training)
        made.append(federation)
        return federation

    yield make
    for federation in made:
        federation.stop_all()


@pytest.fixture(scope="session", autouse=True)
def _no_stray_processes() -> Iterator[None]:
    """After the session, every daemon any test started must have been stopped and reaped."""
    yield
    stray = [process.args for process in _ALL_PROCESSES if process.poll() is None]
    _terminate(_ALL_PROCESSES)
    assert not stray, f"daemon processes still running after the tests: {stray}"


# --- raw ZeroMQ peers (intruders, floods, fake coordinators) ------------------------


class RawPeer:
    """A bare ZeroMQ socket with a monitor, for playing an intruder or a hostile peer."""

    def __init__(self, context: zmq.Context, kind: int) -> None:
        self.socket = context.socket(kind)
        self.socket.linger = 0
        self.socket.sndhwm = 0  # never drop our own flood on the floor
        self.socket.sndtimeo = 5000  # a send with no live pipe (refused handshake) must not block forever
        self.monitor = self.socket.get_monitor_socket()
        self.events: list[tuple[int, int]] = []

    def try_send(self, frames: list[bytes]) -> bool:
        """Send if there is anyone to send to; a refused peer may have no pipe left (False)."""
        try:
            self.socket.send_multipart(frames)
        except zmq.Again:
            return False
        return True

    def curve_client(self, keys: CurveKeyPair, server_public: bytes) -> RawPeer:
        self.socket.curve_secretkey = keys.secret
        self.socket.curve_publickey = keys.public
        self.socket.curve_serverkey = server_public
        return self

    def curve_server(self, keys: CurveKeyPair) -> RawPeer:
        self.socket.curve_server = True
        self.socket.curve_secretkey = keys.secret
        self.socket.curve_publickey = keys.public
        return self

    def drain_events(self, timeout: float = 0.0) -> list[tuple[int, int]]:
        fresh = []
        wait_ms = int(timeout * 1000)
        while self.monitor.poll(wait_ms):
            event = recv_monitor_message(self.monitor)
            fresh.append((int(event["event"]), int(event["value"])))
            wait_ms = 0
        self.events.extend(fresh)
        return fresh

    def wait_event(self, wanted: set[int], timeout: float) -> tuple[int, int] | None:
        """The first monitor event in ``wanted`` seen from now on, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.drain_events(min(0.1, max(0.0, deadline - time.monotonic()))):
                if event[0] in wanted:
                    return event
        return None

    def receive_all(self, timeout: float) -> list[list[bytes]]:
        """Every multipart message that arrives within ``timeout`` seconds."""
        got = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(left * 1000) + 1, zmq.POLLIN):
                got.append(self.socket.recv_multipart(zmq.NOBLOCK))
        return got

    def close(self) -> None:
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


@pytest.fixture
def zmq_context() -> Iterator[Callable[[int], RawPeer]]:
    """Factory for :class:`RawPeer` sockets in a private context; all closed at teardown."""
    context = zmq.Context()
    peers: list[RawPeer] = []

    def make(kind: int) -> RawPeer:
        peer = RawPeer(context, kind)
        peers.append(peer)
        return peer

    yield make
    for peer in peers:
        peer.close()
    context.term()
