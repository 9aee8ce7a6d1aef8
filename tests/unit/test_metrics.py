"""The Prometheus endpoint (issue 12): ``[metrics] listen`` in both configs, the exporter, and the numbers.

The endpoint is started on 127.0.0.1 (port 0 where the test needs no fixed port) and scraped with
urllib as Prometheus would; the text is read back with prometheus-client's own parser. The
coordinator's and the nodes' numbers come from the real Coordinator and Nodes run in-process.
"""

from __future__ import annotations

import copy
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from coordinator.config import load_coordinator_config
from node.config import load_node_config
from securefed.errors import ConfigError, InvalidParameter
from securefed.federation.node import Node, NodePolicy
from securefed.metrics import (
    COORDINATOR_METRICS,
    MAX_LABEL_VALUES,
    NODE_METRICS,
    CoordinatorMetrics,
    MetricsEndpoint,
    MetricsListen,
    NodeActivity,
    NodeMetrics,
    Throttle,
    _capped,
    parse_listen,
)
from securefed.secagg.messages import Stage
from tests.inprocess import TASK, InProcessFederation
from tests.unit.test_config_coordinator import full_coordinator_config
from tests.unit.test_config_node import full_node_config, write_toml

ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the endpoint."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def endpoint():
    started: list[MetricsEndpoint] = []

    def start(families=COORDINATOR_METRICS, listen: MetricsListen | None = None) -> MetricsEndpoint:
        made = MetricsEndpoint(listen or MetricsListen("127.0.0.1", 0), families).start()
        started.append(made)
        return made

    yield start
    for made in started:
        made.close()


# --- [metrics] listen --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:9464", "127.0.0.1", 9464), ("[::1]:9464", "::1", 9464), ("localhost:1", "localhost", 1),
     ("metrics.example.org:65535", "metrics.example.org", 65535), ("0.0.0.0:9464", "0.0.0.0", 9464)],
)  # fmt: skip
def test_listen_addresses_that_parse(text: str, host: str, port: int) -> None:
    listen = parse_listen(text)
    assert (listen.host, listen.port, str(listen)) == (host, port, text)
    assert listen.url == f"http://{text}/metrics"


@pytest.mark.parametrize(
    ("text", "says"),
    [("9464", "host:port"), (":9464", "host:port"), ("127.0.0.1", "host:port"), ("127.0.0.1:0", "1 to 65535"),
     ("127.0.0.1:65536", "1 to 65535"), ("127.0.0.1:http", "1 to 65535"), ("::1:9464", "in brackets"),
     ("[::1]9464", "IPv6"), ("[nope]:9464", "not an IPv6 address"), ("bad host:9464", "neither an IP"),
     ("tcp://127.0.0.1:9464", "without a scheme"), ("", "host:port"), (9464, "a string")],
)  # fmt: skip
def test_listen_addresses_that_do_not(text: object, says: str) -> None:
    with pytest.raises(InvalidParameter, match=says):
        parse_listen(text)


@given(st.text(max_size=40))
def test_any_listen_text_parses_or_is_refused_plainly(text: str) -> None:
    try:
        listen = parse_listen(text)
    except InvalidParameter:
        return
    assert 1 <= listen.port <= 65535 and parse_listen(str(listen)) == listen


def test_loopback_is_told_apart() -> None:
    assert parse_listen("127.0.0.1:1").loopback and parse_listen("[::1]:1").loopback and parse_listen("localhost:1").loopback
    assert not parse_listen("10.0.0.5:1").loopback and not parse_listen("0.0.0.0:1").loopback


# --- in both configs, with the strict schema -------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict:
    from securefed.crypto.identity import SigningKey
    from securefed.wire.keys import CurveKeyPair

    return {"coordinator": CurveKeyPair.generate(), **{name: SigningKey.generate() for name in ("site-a", "site-b", "site-c")}}


@pytest.fixture(scope="module")
def members() -> dict:
    from securefed.crypto.identity import SigningKey
    from securefed.wire.keys import CurveKeyPair

    return {name: (CurveKeyPair.generate(), SigningKey.generate()) for name in ("h-a", "h-b", "h-c", "h-d")}


def _configs(keys: dict, members: dict) -> list[tuple[str, dict, object]]:
    node = full_node_config(keys)
    coordinator = full_coordinator_config(members)
    return [("node", node, load_node_config), ("coordinator", coordinator, load_coordinator_config)]


def test_no_metrics_section_means_no_endpoint(tmp_path: Path, keys: dict, members: dict) -> None:
    for kind, config, load in _configs(keys, members):
        config.pop("metrics", None)
        assert load(write_toml(tmp_path / f"{kind}.toml", config)).metrics is None


def test_a_metrics_section_is_read(tmp_path: Path, keys: dict, members: dict) -> None:
    for kind, config, load in _configs(keys, members):
        config["metrics"] = {"listen": "[::1]:9470"}
        assert load(write_toml(tmp_path / f"{kind}.toml", config)).metrics == MetricsListen("::1", 9470)


@pytest.mark.parametrize(
    ("metrics", "says"),
    [({"listen": "9464"}, r"\[metrics\] listen must be \"host:port\""),
     ({"listen": "127.0.0.1:0"}, r"\[metrics\] listen the port in '127.0.0.1:0' must be a number from 1 to 65535"),
     ({"listen": 9464}, r"\[metrics\] listen must be a string, got 9464"),
     ({"lisen": "127.0.0.1:9464"}, r"unknown key 'lisen'; did you mean `listen`\?"),
     ({"listen": "127.0.0.1:9464", "port": 9464}, r"unknown key 'port'; valid here: listen"),
     ({}, r"\[metrics\] lacks the required key 'listen'")],
)  # fmt: skip
def test_a_bad_metrics_section_is_a_config_error_naming_file_and_key(
    tmp_path: Path, keys: dict, members: dict, metrics: dict, says: str
) -> None:
    for kind, config, load in _configs(keys, members):
        config["metrics"] = copy.deepcopy(metrics)
        file = write_toml(tmp_path / f"{kind}.toml", config)
        with pytest.raises(ConfigError, match=says) as caught:
            load(file)
        assert str(file) in str(caught.value) and caught.value.file == file


def test_a_misspelt_metrics_section_names_the_right_one(tmp_path: Path, keys: dict, members: dict) -> None:
    for kind, config, load in _configs(keys, members):
        config.pop("metrics", None)
        config["metric"] = {"listen": "127.0.0.1:9464"}
        with pytest.raises(ConfigError, match=r"unknown section 'metric'; did you mean \[metrics\]\?"):
            load(write_toml(tmp_path / f"{kind}.toml", config))


def test_the_metrics_port_may_not_be_the_coordinators_own(tmp_path: Path, members: dict) -> None:
    config = full_coordinator_config(members)
    config["metrics"] = {"listen": "127.0.0.1:7700"}  # [coordinator] listen is tcp://127.0.0.1:7700
    with pytest.raises(ConfigError, match=r"takes the port of \[coordinator\] listen"):
        load_coordinator_config(write_toml(tmp_path / "c.toml", config))
    config["metrics"] = {"listen": "127.0.0.1:7701"}
    assert load_coordinator_config(write_toml(tmp_path / "c.toml", config)).metrics.port == 7701


# --- the endpoint ------------------------------------------------------------------------------------------


def test_the_endpoint_serves_the_newest_snapshot(endpoint) -> None:
    served = endpoint()
    assert served.port > 0
    served.update({
        "securefed_coordinator_completed_round": [((), 3.0)],
        "securefed_coordinator_refusals_total": [(("too-many-rounds",), 2.0), (("rerun",), 1.0)],
        "securefed_coordinator_stage": [(("idle",), 0.0), (("share",), 1.0)],
    })  # fmt: skip
    got = scrape(served.port)
    assert got["securefed_coordinator_completed_round"] == {(): 3.0}
    assert got["securefed_coordinator_refusals_total"] == {(("reason", "too-many-rounds"),): 2.0, (("reason", "rerun"),): 1.0}
    assert got["securefed_coordinator_stage"][(("stage", "share"),)] == 1.0
    served.update({"securefed_coordinator_completed_round": [((), 4.0)]})
    got = scrape(served.port)
    assert got["securefed_coordinator_completed_round"] == {(): 4.0} and "securefed_coordinator_refusals_total" not in got
    with pytest.raises(InvalidParameter, match="no such metric"):
        served.update({"securefed_node_connected": [((), 1.0)]})


def test_two_endpoints_in_one_process_do_not_mix(endpoint) -> None:
    """No process-global registry: each serves its own catalogue and numbers."""
    coordinator, node = endpoint(COORDINATOR_METRICS), endpoint(NODE_METRICS)
    coordinator.update({"securefed_coordinator_completed_round": [((), 1.0)]})
    node.update({"securefed_node_connected": [((), 1.0)]})
    from_coordinator, from_node = scrape(coordinator.port), scrape(node.port)
    assert "securefed_coordinator_completed_round" in from_coordinator and "securefed_node_connected" not in from_coordinator
    assert "securefed_node_connected" in from_node and "securefed_coordinator_completed_round" not in from_node
    assert not any(name.startswith(("python_", "process_")) for name in from_coordinator)


def test_a_port_in_use_is_a_clear_error_naming_the_key(endpoint, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        source = tmp_path / "coordinator.toml"
        with pytest.raises(ConfigError) as caught:
            MetricsEndpoint(MetricsListen("127.0.0.1", port), COORDINATOR_METRICS, source=source).start()
    message = str(caught.value)
    assert message.startswith(f"{source}: [metrics] listen = '127.0.0.1:{port}': cannot serve metrics there"), message
    assert "already in use" in message and "change [metrics] listen" in message
    assert caught.value.key == "metrics.listen" and caught.value.file == source


def test_it_binds_only_the_configured_address(endpoint) -> None:
    served = endpoint()
    served.update({"securefed_coordinator_completed_round": [((), 1.0)]})
    assert scrape(served.port)
    with pytest.raises(urllib.error.URLError):  # another loopback address of this machine: nothing listens there
        scrape(served.port, host="127.0.0.2")


def test_closing_frees_the_port(endpoint) -> None:
    served = endpoint()
    port = served.port
    served.close()
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    again = endpoint(listen=MetricsListen("127.0.0.1", port))
    assert again.port == port and scrape(port) is not None


def test_a_free_text_label_keeps_a_bounded_number_of_values() -> None:
    counts = {f"reason-{i:03d}": i + 1 for i in range(100)}
    samples = _capped(counts)
    assert len(samples) == MAX_LABEL_VALUES
    assert samples[0] == (("reason-099",), 100.0)  # the largest are kept by name
    assert samples[-1][0] == ("other",) and sum(v for _, v in samples) == sum(counts.values())
    assert _capped({"a": 1}) == [(("a",), 1.0)]


def test_the_throttle_says_due_at_most_once_an_interval() -> None:
    now = [100.0]
    throttle = Throttle(1.0, clock=lambda: now[0])
    assert throttle.due() and not throttle.due()
    now[0] += 0.99
    assert not throttle.due()
    now[0] += 0.02
    assert throttle.due()


# --- the numbers, from a real Coordinator and real Nodes --------------------------------------------------


class _MeteredFederation(InProcessFederation):
    """Nodes as the node daemon runs them: timed, their sockets watched."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activity = {}
        for name, node in list(self.nodes.items()):
            self.activity[name] = NodeActivity(self.hub.node_socket(name))
            self.nodes[name] = Node(
                name, TASK, self.activity[name], node.identity, self.roster, node.dataset, self.states[name],
                node.policy, clock=self.clock,
            )  # fmt: skip


def _flat(samples: dict) -> dict[str, dict[tuple, float]]:
    return {name: dict(values) for name, values in samples.items()}


def test_coordinator_and_node_numbers_after_a_round_and_refusals(tmp_path: Path) -> None:
    """Round 1 completes (trained and evaluated); every node refuses round 2 (its policy allows one round)."""
    federation = _MeteredFederation(
        tmp_path, ["site-1", "site-2", "site-3"], rounds=2, evaluate=True, policy=NodePolicy(max_rounds=1)
    )
    coordinator_metrics, node_metrics = CoordinatorMetrics(), NodeMetrics()
    try:
        early = _flat(coordinator_metrics.samples(federation.coordinator, None, federation.store))
        federation.run_until(lambda f: f.coordinator.current is not None and f.coordinator.current.stage is Stage.SHARE)
        during = _flat(coordinator_metrics.samples(federation.coordinator, None, federation.store))
        federation.run_until(lambda f: f.store.refusal_counts().get("too-many-rounds", 0) >= 3)
        after = _flat(coordinator_metrics.samples(federation.coordinator, None, federation.store))
        (record,) = federation.store.rounds()
        node = federation.nodes["site-1"]
        from_node = _flat(node_metrics.samples(node, federation.activity["site-1"]))
    finally:
        federation.close()

    assert early["securefed_coordinator_completed_round"] == {(): 0.0}
    assert early["securefed_coordinator_stage"][("idle",)] == 1.0 and "securefed_coordinator_last_round" not in early
    assert early["securefed_coordinator_info"] == {(TASK, __import__("securefed").__version__): 1.0}

    assert during["securefed_coordinator_stage"] == {(s,): float(s == "share") for s in ("idle", *(x.value for x in Stage))}
    assert during["securefed_coordinator_phase"][("train",)] == 1.0
    assert during["securefed_coordinator_current_round"] == {(): 1.0}
    assert during["securefed_coordinator_stage_seconds"][()] >= 0
    assert during["securefed_coordinator_aggregation_attempts"] == {("running",): 1.0}

    assert after["securefed_coordinator_completed_round"] == {(): 1.0}
    assert after["securefed_coordinator_rounds_planned"] == {(): 2.0} and after["securefed_coordinator_finished"] == {(): 0.0}
    assert after["securefed_coordinator_known_nodes"] == {(): 3.0} and after["securefed_coordinator_connected_nodes"] == {(): 3.0}
    assert after["securefed_coordinator_refusals_total"][("too-many-rounds",)] >= 3
    assert after["securefed_coordinator_aggregation_attempts"][("completed",)] == 2.0  # round 1: train and evaluate
    assert after["securefed_coordinator_last_round"] == {(): 1.0}
    assert after["securefed_coordinator_last_round_accuracy"] == {(): record.accuracy}
    assert after["securefed_coordinator_last_round_loss"] == {(): record.loss}
    assert after["securefed_coordinator_last_round_duration_seconds"] == {(): record.duration}
    assert after["securefed_coordinator_last_round_participants"] == {(): 3.0}
    assert after["securefed_coordinator_last_round_survivors"] == {(): 3.0}
    assert after["securefed_coordinator_last_round_attempts"] == {(): 2.0}
    assert after["securefed_coordinator_last_round_stage_seconds"] == {(s,): v for s, v in record.stage_durations.items()}
    assert not after.get("securefed_coordinator_epsilon_spent") and not after.get("securefed_coordinator_received_bytes_total")

    assert from_node["securefed_node_info"] == {("site-1", TASK, __import__("securefed").__version__): 1.0}
    assert from_node["securefed_node_rounds_contributed_total"] == {(): 1.0}
    assert from_node["securefed_node_evaluations_contributed_total"] == {(): 1.0}
    assert from_node["securefed_node_refusals_total"][("too-many-rounds",)] >= 1
    assert from_node["securefed_node_last_training_seconds"][()] > 0
    assert from_node["securefed_node_connected"] == {(): 0.0}  # an in-memory socket has no connection to report
    assert not from_node.get("securefed_node_epsilon_spent")  # no ledger handed over


def test_the_coordinators_numbers_survive_a_restart(tmp_path: Path) -> None:
    """A fresh CoordinatorMetrics (a restarted daemon) finds the newest evaluated round in the store."""
    federation = InProcessFederation(tmp_path, ["site-1", "site-2", "site-3"], rounds=2, evaluate=True)
    try:
        federation.run_until(lambda f: f.coordinator.finished)
        federation.restart_coordinator()
        fresh = _flat(CoordinatorMetrics().samples(federation.coordinator, None, federation.store))
        last = federation.store.rounds()[-1]
    finally:
        federation.close()
    assert fresh["securefed_coordinator_last_round"] == {(): 2.0} and fresh["securefed_coordinator_finished"] == {(): 1.0}
    assert fresh["securefed_coordinator_last_round_accuracy"] == {(): last.accuracy}


class _Ledger:
    """What NodeMetrics reads of a PrivacyLedger; counts how often epsilon is composed."""

    def __init__(self) -> None:
        self.rows: set[tuple[str, int]] = set()
        self.composed = 0

    def recorded(self) -> set[tuple[str, int]]:
        return set(self.rows)

    def spent(self, task: str) -> float:
        self.composed += 1
        return 0.5 * sum(1 for t, _ in self.rows if t == task)

    def spent_total(self) -> float:
        return 0.4 * len(self.rows)


class _Node:
    name, task, policy = "site-1", "task-a", NodePolicy(max_epsilon=3.0, max_epsilon_total=10.0)
    last_training_seconds = 0.25


def test_node_epsilon_comes_from_the_ledger_and_is_composed_only_when_it_grows() -> None:
    ledger, metrics, activity = _Ledger(), NodeMetrics(), NodeActivity(object())
    first = _flat(metrics.samples(_Node(), activity, ledger))
    assert first["securefed_node_epsilon_spent"] == {("task-a",): 0.0} and first["securefed_node_epsilon_spent_site"] == {(): 0.0}
    assert first["securefed_node_epsilon_limit"] == {(): 3.0} and first["securefed_node_epsilon_limit_site"] == {(): 10.0}
    assert first["securefed_node_last_training_seconds"] == {(): 0.25}
    metrics.samples(_Node(), activity, ledger)
    assert ledger.composed == 1  # nothing new in the ledger: not composed again
    ledger.rows |= {("task-a", 1), ("task-a", 3), ("task-b", 2)}
    grown = _flat(metrics.samples(_Node(), activity, ledger))
    assert grown["securefed_node_epsilon_spent"] == {("task-a",): 1.0, ("task-b",): 0.5}
    assert grown["securefed_node_epsilon_spent_site"] == {(): pytest.approx(1.2)}


def test_every_family_is_documented() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    for family in [*COORDINATOR_METRICS.values(), *NODE_METRICS.values()]:
        assert f"`{family.name}`" in text, family.name
        for label in family.labels:
            assert f"`{label}`" in text, (family.name, label)
    assert "[metrics]" in text and "securefed status --history" in text


def test_daemons_refuse_to_start_on_a_metrics_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Both daemons, started as an operator would, end at start with one line naming the file and the key."""
    import signal

    import numpy as np

    from securefed import cli
    from securefed.localfed import LocalFederation

    rng = np.random.default_rng(1)
    data = {name: (rng.uniform(size=(30, 4)), rng.integers(0, 2, 30)) for name in ("site-1", "site-2", "site-3")}
    task = {"name": "port-task", "model": "sgd_logistic", "features": 4, "classes": [0, 1], "rounds": 1, "min_nodes": 3}
    federation = LocalFederation.create(tmp_path, data, ["a", "b", "c", "d"], task)
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command, config in (("coordinator", federation.coordinator_config), ("node", federation.node_configs["site-1"])):
            config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
            try:
                assert cli.main([command, "--config", str(config)]) == 2
            finally:
                for signum, handler in saved.items():
                    signal.signal(signum, handler)
            err = capsys.readouterr().err
            assert err.startswith(f"error: {config}: [metrics] listen = '127.0.0.1:{port}': cannot serve metrics there"), err
            assert "already in use" in err and "change [metrics] listen" in err and "Traceback" not in err
    # nothing was left holding the state folders: both start again once the port is free
    from securefed._fs import lock_holder

    assert lock_holder(federation.coordinator_config.parent / "state") is None
    assert lock_holder(federation.node_configs["site-1"].parent / "state") is None
