"""A real multi-host deployment: the coordinator and three sites on separate network stacks.

Each party is a Linux network namespace (tests/integration/netns.py) with its own
``eth0`` on a veth bridge, 10.77.0.1 for the coordinator and 10.77.0.11-13 for
the sites; nothing listens or connects on loopback. The deployment is set up the
way docs/deployment.md tells four operators to: each runs ``securefed keygen`` on
its own host, the printed snippets are pasted into the others' configs, every
config is the documented example with the values this federation needs, and
the daemons run as ``ip netns exec HOST <venv python> -m securefed.cli ...``.
The data is scikit-learn's bundled breast_cancer set split into three CSV files,
one per site.

The kill. Nodes advertise, reveal and deal their shares as soon as a round
starts, then train, then send their masked input. Local training here is made
long enough (measured, about a third of a second) that a SIGKILL sent when the
coordinator's log shows the share stage of round 2 closed lands while the
victim trains: it drops out at the masked-input stage. With three sites and
the default colluder bound the threshold is 3 of 3 (2t > N + c with N = 3,
c = 1), so that attempt aborts at the masked-input stage ("masked_input stage:
... threshold is 3 (short by 1)"): the round cannot go on without the victim. The victim is restarted at
once, as a supervisor would; the coordinator retries round 2 with a fresh
aggregation id and all three sites, and the task finishes.

Deadlines and test timeouts come from step times measured here and now
(conftest's StepTimes / derive_deadlines, fed breast_cancer instead of digits);
nothing sleeps for a fixed time. The namespaces, their links and every process
started in them are removed afterwards, also when the test fails.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from securefed.learning.datasets import load_bundled, train_test_split_stratified
from securefed.localfed import toml_value
from tests.integration.conftest import STARTUP_BUDGET, Digits, Federation, StepTimes, derive_deadlines
from tests.integration.netns import IP, Host, NetnsError, Network, established_peers, unavailable_reason

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

SITES = ("hospital-a", "hospital-b", "hospital-c")
PORT = 7700
ROUNDS = 3
KILLED_ROUND = 2
#: Seconds of local training (single-threaded, measured here) that make "after the share stage closed,
#: before the masked input was sent" a wide enough window to land a SIGKILL in.
TRAINING_TARGET = 0.3


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def breast_cancer() -> Digits:
    """The bundled breast_cancer data in the shape conftest's StepTimes expects."""
    dataset = load_bundled("breast_cancer")
    return Digits(dataset, train_test_split_stratified(dataset.X, dataset.y, 0.25, 0))


@pytest.fixture(scope="module")
def breast_cancer_times(breast_cancer: Digits) -> StepTimes:
    return StepTimes(breast_cancer)


def _require_namespaces() -> None:
    """Skip where network namespaces cannot be built (no root, say); in CI, where they can and must, fail instead.

    ``.ci/run`` sets SECUREFED_REQUIRE_MULTIHOST=1: there a missing capability is a broken test setup, and the
    multi-host test must not quietly turn into a skip.
    """
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("SECUREFED_REQUIRE_MULTIHOST") == "1":
        pytest.fail(f"multi-host test required (SECUREFED_REQUIRE_MULTIHOST=1) but unavailable: {reason}")
    pytest.skip(f"multi-host test: {reason}")


@pytest.fixture
def network() -> Iterator[Network]:
    """A bridge and, per test, the hosts plugged into it; all of it removed at teardown."""
    _require_namespaces()
    net = Network()
    try:
        yield net
    finally:
        net.close()  # after the deployment fixture has stopped its daemons (it depends on this one)


@pytest.fixture
def deployment(tmp_path: Path, network: Network, breast_cancer: Digits, breast_cancer_times: StepTimes) -> Iterator[Federation]:
    """Four hosts set up by their operators per docs/deployment.md, wrapped in conftest's Federation harness."""
    site = Deployment(tmp_path, network, breast_cancer, breast_cancer_times)
    federation = Federation(site, list(SITES), breast_cancer, site.task, site.deadlines, site.training_time)
    try:
        yield federation
    finally:
        federation.stop_all()


# --- what the operators do ----------------------------------------------------------


def securefed_command() -> list[str]:
    """The ``securefed`` command the package installs next to this interpreter (``python -m`` if absent)."""
    script = Path(sys.executable).parent / "securefed"
    return [str(script)] if script.exists() else [sys.executable, "-m", "securefed.cli"]


def run_on(host: Host, argv: list[str], timeout: float) -> str:
    """Run a command on ``host`` to completion; its stdout (fails the test with both streams otherwise)."""
    result = subprocess.run(host.command(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        pytest.fail(f"on {host.role}: {' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def snippet(output: str, header: str) -> str:
    """The ``[[nodes]]`` / ``[[roster]]`` block keygen printed, verbatim, up to the next blank line."""
    match = re.search(rf"^{re.escape(header)}\n(?:.+\n?)+", output, re.MULTILINE)
    assert match, f"keygen printed no {header} snippet:\n{output}"
    return match.group(0).rstrip("\n")


class Deployment:
    """Keys, data and configs for a coordinator and three sites, each on its own host, and their daemons.

    The attributes and methods :class:`~tests.integration.conftest.Federation` reads (``root``,
    ``status_path``, ``state_path``, ``start_coordinator``, ``start_node``, ``log``) are LocalFederation's.
    """

    def __init__(self, root: Path, network: Network, data: Digits, times: StepTimes) -> None:
        self.root = root
        self.network = network
        self.coordinator_host = network.add_host("coordinator", 1)
        self.site_hosts = {name: network.add_host(name, 11 + index) for index, name in enumerate(SITES)}
        self.endpoint = f"tcp://{self.coordinator_host.address}:{PORT}"
        self.logs = root / "logs"
        self.logs.mkdir()

        dataset = data.dataset
        order = np.random.default_rng(0).permutation(len(dataset.y))
        parts = dict(zip(SITES, np.array_split(order, len(SITES))))
        largest = max(len(part) for part in parts.values())
        samples = largest - round(0.2 * largest)  # what a site trains on after its validation split

        # Enough local epochs for about TRAINING_TARGET seconds of training, from a measured short run.
        probe = {"model": "sgd_logistic", "local_epochs": 100, "learning_rate": 0.05, "batch_size": 8}
        per_epoch = times.training(probe, samples) / probe["local_epochs"]
        epochs = max(probe["local_epochs"], math.ceil(TRAINING_TARGET / per_epoch))
        training = dict(probe, local_epochs=epochs)
        contention = math.ceil((len(SITES) + 1) / times.cpus)
        self.training_time = times.training(training, samples) * contention
        self.deadlines = derive_deadlines(times, training, len(SITES), samples)
        self.task = {
            "name": "breast-cancer-multihost",
            "model": "sgd_logistic",
            "features": dataset.n_features,
            "classes": list(dataset.classes),
            "rounds": ROUNDS,
            "local_epochs": epochs,
            "learning_rate": training["learning_rate"],
            "batch_size": training["batch_size"],
            "min_nodes": len(SITES),
            "evaluate": True,
        }

        # 1. Keys: every party on its own host.
        keygen = securefed_command() + ["keygen"]
        coordinator_out = run_on(
            self.coordinator_host,
            keygen + ["--role", "coordinator", "--out", str(self._keys("coordinator"))],
            STARTUP_BUDGET,
        )
        line = re.search(r'^coordinator_curve_public_key = ".+"$', coordinator_out, re.MULTILINE)
        assert line, f"keygen --role coordinator printed no coordinator_curve_public_key line:\n{coordinator_out}"
        nodes_snippets, roster_snippets = [], []
        for name, host in self.site_hosts.items():
            out = run_on(host, keygen + ["--name", name, "--out", str(self._keys(name))], STARTUP_BUDGET)
            nodes_snippets.append(snippet(out, "[[nodes]]"))
            roster_snippets.append(snippet(out, "[[roster]]"))
        for party in ("coordinator", *SITES):
            for secret in ("curve.key", "identity.pem") if party != "coordinator" else ("curve.key",):
                mode = (self._keys(party) / secret).stat().st_mode & 0o777
                assert mode == 0o600, f"{party}'s {secret} has mode {oct(mode)}, the docs promise 0600"

        # 2. The coordinator's config, 3. each site's config and its CSV.
        self.coordinator_config = self._etc("coordinator") / "coordinator.toml"
        self.coordinator_config.write_text(self._coordinator_toml(nodes_snippets))
        self.node_configs = {}
        for name, part in parts.items():
            csv_path = self.root / name / "data" / "breast_cancer.csv"
            csv_path.parent.mkdir(parents=True)
            write_csv(csv_path, dataset.feature_names, dataset.X[part], dataset.y[part])
            self.node_configs[name] = self._etc(name) / "node.toml"
            self.node_configs[name].write_text(self._node_toml(name, line.group(0), csv_path, roster_snippets))

    # --- paths ----------------------------------------------------------------------

    def _etc(self, party: str) -> Path:
        return self.root / party / "etc" / "securefed"

    def _keys(self, party: str) -> Path:
        return self._etc(party) / "keys"

    def _state(self, party: str) -> Path:
        return self.root / party / "var" / "lib" / "securefed" / ("coordinator" if party == "coordinator" else "node")

    @property
    def state_path(self) -> Path:
        return self._state("coordinator") / "coordinator.sqlite"

    @property
    def status_path(self) -> Path:
        return self._state("coordinator") / "status.json"

    # --- configs, as docs/deployment.md shows them ---------------------------------------

    def _coordinator_toml(self, nodes_snippets: list[str]) -> str:
        task = self.task
        lines = [
            "[coordinator]",
            f'listen = "tcp://{self.coordinator_host.address}:{PORT}"      # this host\'s address on the LAN',
            f"state_dir = {toml_value(str(self._state('coordinator')))}",
            f"curve_secret_key_file = {toml_value(str(self._keys('coordinator') / 'curve.key'))}",
            "",
            "[task]",
            f"name = {toml_value(task['name'])}",
            f"model = {toml_value(task['model'])}",
            f"features = {task['features']}",
            f"classes = {toml_value(task['classes'])}",
            f"rounds = {task['rounds']}",
            f"local_epochs = {task['local_epochs']}",
            f"learning_rate = {task['learning_rate']}",
            f"batch_size = {task['batch_size']}",
            f"min_nodes = {task['min_nodes']}",
            "max_nodes = 1000",
            "max_colluders = 1                        # the default for 3 nodes; every site says 1 too",
            'neighbours = "complete"',
            "expected_dropout = 0.05",
            "clip_norm = 10.0",
            "weight_cap = 100000",
            'strategy = "fedavg"',
            f"evaluate = {toml_value(task['evaluate'])}",
            "masking = true",
            "",
            "[deadlines]                              # derived from step times measured on this machine",
            *(f"{stage} = {seconds}" for stage, seconds in self.deadlines.items()),
        ]
        for block in nodes_snippets:
            lines += ["", block]
        return "\n".join(lines) + "\n"

    def _node_toml(self, name: str, coordinator_key_line: str, csv_path: Path, roster_snippets: list[str]) -> str:
        task = self.task
        lines = [
            "[node]",
            f"name = {toml_value(name)}",
            f'coordinator = "{self.endpoint}"',
            coordinator_key_line,
            f"curve_secret_key_file = {toml_value(str(self._keys(name) / 'curve.key'))}",
            f"identity_key_file = {toml_value(str(self._keys(name) / 'identity.pem'))}",
            f"state_dir = {toml_value(str(self._state(name)))}",
            "",
            "[task]",
            f"name = {toml_value(task['name'])}",
            f"features = {task['features']}",
            f"classes = {toml_value(task['classes'])}",
            "",
            "[data]",
            f"path = {toml_value(str(csv_path))}",
            'label_column = "label"',
            "validation_fraction = 0.2",
            "",
            "[policy]",
            "max_colluders = 1",
            "allow_sparse_graph = true",
            "min_neighbours = 0",
            "min_cohort = 3",
            "min_threshold = 2",
            "min_threshold_fraction = 0.5",
            'allowed_models = ["sgd_logistic", "mlp"]',
            "max_rounds = 1000",
            "allow_unmasked_benchmark = false",
        ]
        for block in roster_snippets:
            lines += ["", block]
        return "\n".join(lines) + "\n"

    # --- daemons (the interface conftest's Federation drives) ---------------------------

    def _spawn(self, host: Host, args: list[str], log_name: str, debug: bool = False) -> subprocess.Popen:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        if debug:
            env["SECUREFED_LOG_LEVEL"] = "DEBUG"  # the coordinator logs when each stage closes
        with open(self.logs / f"{log_name}.log", "ab") as handle:
            return subprocess.Popen(
                host.command([sys.executable, "-m", "securefed.cli", *args]),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def start_coordinator(self) -> subprocess.Popen:
        return self._spawn(
            self.coordinator_host, ["coordinator", "--config", str(self.coordinator_config)], "coordinator", debug=True
        )

    def start_node(self, name: str) -> subprocess.Popen:
        return self._spawn(self.site_hosts[name], ["node", "--config", str(self.node_configs[name])], name)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def write_csv(path: Path, feature_names: tuple[str, ...], X: np.ndarray, y: np.ndarray) -> None:
    """A CSV with a header row and a ``label`` column, as a site would export it."""
    rows = [",".join((*feature_names, "label"))]
    rows += [",".join([*(repr(float(v)) for v in features), str(int(label))]) for features, label in zip(X, y)]
    path.write_text("\n".join(rows) + "\n")


# --- the test ------------------------------------------------------------------------


def test_coordinator_and_three_sites_on_separate_hosts_survive_a_node_kill_9(deployment: Federation) -> None:
    """End to end over a veth bridge: 3 rounds from 3 CSV sites; a site SIGKILLed while it trains in round 2
    and restarted by its supervisor; the round is retried with all three and the task finishes."""
    federation = deployment
    site: Deployment = federation.fed
    victim = SITES[-1]

    federation.start_coordinator()  # the coordinator host first, as an operator would
    federation.wait_bound(timeout=STARTUP_BUDGET)
    federation.start_nodes_ready(timeout=STARTUP_BUDGET)
    for name in SITES:
        assert f"connecting to {site.endpoint}" in federation.log(name)

    # Round 2 starts with all three sites: round 1 ran end to end over the bridge.
    started = federation.wait_log(
        "coordinator",
        rf"round {KILLED_ROUND}/{ROUNDS} train: aggregation (\d+) with 3 nodes",
        federation.time_budget(KILLED_ROUND),
    )
    killed_aggregation = int(started.group(1))
    first = federation.rounds()
    assert [row["round"] for row in first] == [1] and sorted(first[0]["survivors"]) == sorted(SITES), first
    # The sites' connections arrive at the coordinator's LAN address from their own addresses (no loopback).
    sites_addresses = {host.address for host in site.site_hosts.values()}
    peers = established_peers(federation.processes["coordinator"].pid, PORT)
    assert peers == sites_addresses, f"connections to the coordinator's port come from {peers}"

    # Kill the victim once every site has dealt its shares for round 2, i.e. while they train.
    closed = federation.wait_log(
        "coordinator",
        rf"aggregation {killed_aggregation}: (share closed at|(?:advertise|reveal|share) deadline passed)",
        timeout=federation.time_budget(1),  # past the advertise, reveal and share deadlines of one round
    )
    assert "closed" in closed.group(1), f"not every site dealt its shares in time\n{federation.diagnostics()}"
    assert federation.kill(victim) == -signal.SIGKILL
    assert [row["round"] for row in federation.rounds()] == [1], "the kill did not land inside round 2"
    federation.start_node(victim)  # its supervisor restarts it (Restart=on-failure)

    code = federation.wait_coordinator_exit(timeout=federation.time_budget(ROUNDS - 1, stalls=2))
    assert code == 0, federation.diagnostics()

    attempts = federation.attempts()
    killed = [a for a in attempts if a["aggregation"] == killed_aggregation]
    assert killed and killed[0]["status"] == "aborted", attempts
    assert killed[0]["detail"].startswith("masked_input stage"), (
        f"the kill did not land while {victim} trained: {killed[0]}\n{federation.diagnostics()}"
    )
    rounds = federation.rounds()
    assert [row["round"] for row in rounds] == list(range(1, ROUNDS + 1)), federation.diagnostics()
    for row in rounds:
        assert sorted(row["survivors"]) == sorted(SITES) and row["participants"] == 3, row
        assert row["accuracy"] is not None and row["loss"] is not None and math.isfinite(row["loss"]), row
    assert rounds[KILLED_ROUND - 1]["aggregation"] > killed_aggregation, rounds  # retried, with a fresh id
    completed = [(a["round"], a["phase"]) for a in attempts if a["status"] == "completed"]
    assert sorted(completed) == [(r, p) for r in range(1, ROUNDS + 1) for p in ("evaluate", "train")], attempts
    assert rounds[-1]["accuracy"] > 0.8, rounds[-1]  # breast_cancer, scaled to [0, 1]: a useful model
    status = federation.status()
    assert status["finished"] is True and status["completed_round"] == ROUNDS, status
    for name in SITES:
        assert federation.alive(name), f"{name} died\n{federation.diagnostics()}"

    # The victim's signed audit log survived the SIGKILL.
    audit = run_on(
        site.site_hosts[victim], securefed_command() + ["node", "audit", "--config", str(site.node_configs[victim])],
        STARTUP_BUDGET,
    )  # fmt: skip
    assert f"audit log of {victim}" in audit, audit


def test_network_teardown_leaves_nothing_behind() -> None:
    """The helper removes its namespaces (and with them their links) and whatever ran in them."""
    _require_namespaces()
    net = Network()
    try:
        host = net.add_host("probe", 5)
        names = [net.switch, host.namespace]
        process = subprocess.Popen(
            host.command(["sh", "-c", "echo inside; exec sleep 600"]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert process.stdout.readline() == b"inside\n"  # it runs in the namespace now
        assert net.pids()[host.namespace] == [process.pid]
    except BaseException:
        net.close()
        raise
    with pytest.raises(NetnsError, match="still running"):
        net.close()  # a process left inside is killed, and reported
    assert process.wait(timeout=STARTUP_BUDGET) == -signal.SIGKILL
    process.stdout.close()
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, check=True).stdout.split()
    assert not set(names) & set(listed), listed
