"""Prometheus metrics for the daemons: an opt-in HTTP endpoint over a private registry.

Theory of operation. A daemon with a ``[metrics]`` section starts one
:class:`MetricsEndpoint`: prometheus-client's HTTP server on the configured
address, serving a :class:`prometheus_client.CollectorRegistry` of its own (no
process-global registry, so two endpoints in one process, as in tests, never
mix). The daemon's loop builds a snapshot of its numbers at most once a second
(:class:`CoordinatorMetrics`, :class:`NodeMetrics`) and hands it to
:meth:`MetricsEndpoint.update`; the server's thread only ever reads the newest
snapshot. A scrape therefore never touches the coordinator's objects or an
SQLite connection from another thread, and costs the daemon nothing between
updates.

What is exported is counts, timings, model quality and epsilon: nothing secret
(no keys, shares, model weights, data or node addresses). The endpoint is plain
HTTP without authentication: bind it to loopback or a management network.
Every metric is listed, with its labels, in :data:`COORDINATOR_METRICS` and
:data:`NODE_METRICS` (and in docs/monitoring.md).

prometheus-client is imported only when an endpoint starts: the config loaders
import :func:`parse_listen` from here.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from securefed.errors import ConfigError, InvalidParameter

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "COORDINATOR_METRICS",
    "MAX_LABEL_VALUES",
    "NODE_METRICS",
    "UPDATE_INTERVAL",
    "CoordinatorMetrics",
    "Family",
    "MetricsEndpoint",
    "MetricsListen",
    "NodeActivity",
    "NodeMetrics",
    "Throttle",
    "parse_listen",
]

log = logging.getLogger("securefed.metrics")

#: the daemons refresh the snapshot at most this often (seconds)
UPDATE_INTERVAL = 1.0
#: a family with a free-text label (a refusal's reason) keeps at most this many values; the rest are "other"
MAX_LABEL_VALUES = 32

# --- where to listen ----------------------------------------------------------------

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True)
class MetricsListen:
    """The address ``[metrics] listen`` names: a host (an IP address or a name) and a TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}/metrics"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_listen(text: object) -> MetricsListen:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"`` or ``"host.example:9464"``; InvalidParameter saying what is wrong."""
    if not isinstance(text, str):
        raise InvalidParameter(f'must be "host:port" (a string), e.g. "127.0.0.1:9464", got {text!r}')
    if "://" in text:
        raise InvalidParameter(f'must be "host:port" without a scheme (it is always HTTP), e.g. "127.0.0.1:9464", got {text!r}')
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise InvalidParameter(f'must be "[IPv6 address]:port", e.g. "[::1]:9464", got {text!r}')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidParameter(f"{host!r} in {text!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise InvalidParameter(f'must be "host:port", e.g. "127.0.0.1:9464", got {text!r}')
        if ":" in host:
            raise InvalidParameter(f'an IPv6 address goes in brackets, e.g. "[::1]:9464", got {text!r}')
        if not _HOSTNAME.match(host):
            raise InvalidParameter(f"{host!r} in {text!r} is neither an IP address nor a host name")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidParameter(f"the port in {text!r} must be a number from 1 to 65535")
    return MetricsListen(host, int(port))


# --- the catalogue -----------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One exported metric: a gauge or a counter (whose name ends in ``_total``), its help and labels."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()


def _catalogue(*families: Family) -> dict[str, Family]:
    return {family.name: family for family in families}


COORDINATOR_METRICS: dict[str, Family] = _catalogue(
    Family(
        "securefed_coordinator_info", "gauge", "Always 1; labels name the task and the securefed version", ("task", "version")
    ),
    Family("securefed_coordinator_rounds_planned", "gauge", "Training rounds the task runs in all ([task] rounds)"),
    Family("securefed_coordinator_completed_round", "gauge", "The newest round whose model is committed (0 before the first)"),
    Family("securefed_coordinator_finished", "gauge", "1 once every round is done, else 0"),
    Family("securefed_coordinator_current_round", "gauge", "The round of the aggregation running now (absent when idle)"),
    Family(
        "securefed_coordinator_stage",
        "gauge",
        "1 for the stage the running aggregation is in (idle when none runs), 0 for the others",
        ("stage",),
    ),
    Family(
        "securefed_coordinator_phase",
        "gauge",
        "1 for the phase of the running aggregation (train, evaluate or compute; idle when none runs), 0 for the others",
        ("phase",),
    ),
    Family("securefed_coordinator_stage_seconds", "gauge", "Seconds the running aggregation has spent in its current stage"),
    Family("securefed_coordinator_connected_nodes", "gauge", "Nodes that greeted within the presence timeout (5 s)"),
    Family("securefed_coordinator_known_nodes", "gauge", "Nodes in the config's [[nodes]] list"),
    Family("securefed_coordinator_excluded_nodes", "gauge", "Nodes left out of cohorts now (this round or until restart)"),
    Family(
        "securefed_coordinator_aggregation_attempts",
        "gauge",
        "Aggregation attempts of this task by status (running, completed, aborted), from the store",
        ("status",),
    ),
    Family(
        "securefed_coordinator_refusals_total", "counter", "Refusals nodes sent for this task, by their reason code", ("reason",)
    ),
    Family(
        "securefed_coordinator_dropped_messages_total",
        "counter",
        "Messages dropped by this process (malformed, unknown node, stale, ...), by reason code",
        ("reason",),
    ),
    Family(
        "securefed_coordinator_refused_connections_total", "counter", "Connections refused by this process: unknown CURVE keys"
    ),
    Family("securefed_coordinator_received_bytes_total", "counter", "Message bytes this process received from nodes"),
    Family("securefed_coordinator_sent_bytes_total", "counter", "Message bytes this process sent to nodes"),
    Family(
        "securefed_coordinator_last_round", "gauge", "Number of the newest completed round (same as completed_round once one is)"
    ),
    Family("securefed_coordinator_last_round_accuracy", "gauge", "Accuracy of the newest evaluated round (0..1)"),
    Family("securefed_coordinator_last_round_loss", "gauge", "Mean loss of the newest evaluated round"),
    Family("securefed_coordinator_last_round_duration_seconds", "gauge", "Wall time of the newest round's training aggregation"),
    Family("securefed_coordinator_last_round_participants", "gauge", "Nodes invited to the newest round's training aggregation"),
    Family("securefed_coordinator_last_round_survivors", "gauge", "Nodes whose updates are in the newest round's sum"),
    Family("securefed_coordinator_last_round_attempts", "gauge", "Aggregation attempts the newest round took (both phases)"),
    Family(
        "securefed_coordinator_last_round_stage_seconds",
        "gauge",
        "Seconds each secure-aggregation stage of the newest round's training aggregation took",
        ("stage",),
    ),
    Family("securefed_coordinator_last_round_completed_timestamp_seconds", "gauge", "Unix time the newest round was committed"),
    Family(
        "securefed_coordinator_epsilon_spent",
        "gauge",
        "Epsilon the task has spent so far (DP tasks only), composed from recorded releases",
    ),
    Family("securefed_coordinator_epsilon_budget", "gauge", "The task's epsilon budget ([task.dp] epsilon; DP tasks only)"),
)

NODE_METRICS: dict[str, Family] = _catalogue(
    Family(
        "securefed_node_info",
        "gauge",
        "Always 1; labels name the node, its task and the securefed version",
        ("node", "task", "version"),
    ),
    Family("securefed_node_connected", "gauge", "1 while the CURVE connection to the coordinator is up, else 0"),
    Family(
        "securefed_node_rounds_contributed_total", "counter", "Training aggregations that completed with this node's input sent"
    ),
    Family(
        "securefed_node_evaluations_contributed_total",
        "counter",
        "Evaluation aggregations that completed with this node's input sent",
    ),
    Family("securefed_node_refusals_total", "counter", "Refusals this node sent to the coordinator, by reason code", ("reason",)),
    Family(
        "securefed_node_last_training_seconds", "gauge", "Seconds this node's local training took in its newest training round"
    ),
    Family("securefed_node_epsilon_spent", "gauge", "Epsilon spent per task, from this site's privacy ledger", ("task",)),
    Family("securefed_node_epsilon_spent_site", "gauge", "Epsilon spent over every task, composed at the site's delta"),
    Family(
        "securefed_node_epsilon_limit",
        "gauge",
        "This site's epsilon limit for its task ([policy] max_epsilon; absent when unset)",
    ),
    Family(
        "securefed_node_epsilon_limit_site",
        "gauge",
        "This site's epsilon limit over all tasks ([policy] max_epsilon_total; absent when unset)",
    ),
    Family(
        "securefed_node_dropped_messages_total",
        "counter",
        "Messages from the coordinator this process dropped, by reason code",
        ("reason",),
    ),
    Family("securefed_node_reconnects_total", "counter", "Times this process restarted its connection to the coordinator"),
    Family("securefed_node_received_bytes_total", "counter", "Message bytes this process received from the coordinator"),
    Family("securefed_node_sent_bytes_total", "counter", "Message bytes this process sent to the coordinator"),
)

#: family name -> [(label values, value)]: one snapshot of a daemon's numbers
Samples = dict[str, list[tuple[tuple[str, ...], float]]]


def _capped(counts: Mapping[str, int | float]) -> list[tuple[tuple[str, ...], float]]:
    """Samples for a reason-labelled family: at most MAX_LABEL_VALUES label values, the smallest lumped as "other"."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if len(ordered) > MAX_LABEL_VALUES:
        kept, rest = ordered[: MAX_LABEL_VALUES - 1], ordered[MAX_LABEL_VALUES - 1 :]
        ordered = [*kept, ("other", sum(count for _, count in rest))]
    return [((str(reason),), float(count)) for reason, count in ordered]


def _one(value: float | int | bool | None) -> list[tuple[tuple[str, ...], float]]:
    return [] if value is None else [((), float(value))]


def _enum(state: str, states: tuple[str, ...]) -> list[tuple[tuple[str, ...], float]]:
    """One sample per state, 1 for ``state`` and 0 for the others (Prometheus' way to show a state)."""
    return [((name,), 1.0 if name == state else 0.0) for name in (*states, *(() if state in states else (state,)))]


# --- the endpoint ------------------------------------------------------------------------


class MetricsEndpoint:
    """prometheus-client's HTTP server on one address, serving the newest snapshot of one family catalogue.

    ``key`` and ``source`` name the config setting and file an error at start should point to.
    """

    def __init__(
        self, listen: MetricsListen, families: Mapping[str, Family], key: str = "[metrics] listen", source: object = None
    ) -> None:
        self.listen = listen
        self.families = dict(families)
        self._key = key
        self._source = source
        self._lock = threading.Lock()
        self._samples: Samples = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually bound (differs from the configured one only for port 0, in tests)."""
        if self._server is None:
            return self.listen.port
        return int(self._server.server_address[1])

    def start(self) -> MetricsEndpoint:
        """Bind and serve in a daemon thread; a clear :class:`ConfigError` if the address cannot be used."""
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        where = f"{self._source}: " if self._source is not None else ""
        try:
            self._server, self._thread = start_http_server(self.listen.port, self.listen.host, registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "the port is already in use (another daemon's metrics endpoint, or another program)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "that address is not one of this machine's"
            elif exc.errno == errno.EACCES:
                why = "permission denied (ports below 1024 need privileges)"
            else:
                why = exc.strerror or str(exc)
            raise ConfigError(
                f"{where}{self._key} = {str(self.listen)!r}: cannot serve metrics there: {why}; change {self._key} "
                "to a free port (or remove the [metrics] section to run without an endpoint)",
                self._source,
                self._key.replace("[", "").replace("] ", "."),
            ) from None
        plain = "" if self.listen.loopback else " (plain HTTP without authentication: keep it on a management network)"
        log.info("serving metrics on http://%s/metrics%s", _shown(self.listen.host, self.port), plain)
        return self

    def update(self, samples: Samples) -> None:
        """Replace the snapshot a scrape returns (called by the daemon's loop)."""
        unknown = set(samples) - set(self.families)
        if unknown:
            raise InvalidParameter(f"no such metric: {sorted(unknown)[0]}")
        with self._lock:
            self._samples = {name: list(values) for name, values in samples.items()}

    def collect(self) -> Iterable[Any]:
        """The registry's hook: the newest snapshot as metric families (runs in the server's thread)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            samples = self._samples
        for name, family in self.families.items():
            kind = CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily
            metric = kind(name, family.help, labels=list(family.labels))
            for labels, value in samples.get(name, ()):
                metric.add_metric(list(labels), value)
            yield metric

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the coordinator's numbers ----------------------------------------------------------------


class CoordinatorMetrics:
    """Builds the coordinator's snapshot from the Coordinator, its socket and its store.

    The store is read for attempt and refusal counts on every call (two small GROUP BY queries) and
    for the newest round only when a round has been committed or evaluated since the last call.
    """

    def __init__(self) -> None:
        self._seen: tuple[int, str] | None = None
        self._latest = None  # RoundRecord of the newest round
        self._evaluated = None  # RoundRecord of the newest round with an accuracy

    def samples(self, coordinator: Any, socket: Any, store: Any) -> Samples:
        from securefed import __version__
        from securefed.secagg.messages import Stage

        task = coordinator.task
        out: Samples = {
            "securefed_coordinator_info": [((str(task.name), __version__), 1.0)],
            "securefed_coordinator_rounds_planned": _one(task.rounds),
            "securefed_coordinator_completed_round": _one(coordinator.completed_round),
            "securefed_coordinator_finished": _one(coordinator.finished),
            "securefed_coordinator_connected_nodes": _one(len(coordinator.connected_nodes())),
            "securefed_coordinator_known_nodes": _one(len(coordinator.nodes)),
            "securefed_coordinator_excluded_nodes": _one(
                len(set(coordinator.excluded_for_round) | set(coordinator.excluded_for_run))
            ),
        }
        current = coordinator.current
        now_stage = "idle" if current is None or current.stage is None else current.stage.value
        now_phase = "idle" if current is None else str(current.phase)
        out["securefed_coordinator_stage"] = _enum(now_stage, ("idle", *(s.value for s in Stage)))
        out["securefed_coordinator_phase"] = _enum(now_phase, ("idle", "train", "evaluate", "compute"))
        if current is not None:
            out["securefed_coordinator_current_round"] = _one(current.round)
            started = getattr(current, "stage_started", None)
            if started is not None and current.stage is not None:
                out["securefed_coordinator_stage_seconds"] = _one(max(0.0, coordinator.clock() - started))
        out["securefed_coordinator_aggregation_attempts"] = [
            ((status,), float(store_counts)) for status, store_counts in sorted(store.attempt_counts().items())
        ]
        out["securefed_coordinator_refusals_total"] = _capped(store.refusal_counts())
        dropped = Counter(getattr(socket, "dropped", {}) or {})
        dropped.update(coordinator.counters)
        out["securefed_coordinator_dropped_messages_total"] = _capped(dropped)
        allow_list = getattr(socket, "allow_list", None)
        out["securefed_coordinator_refused_connections_total"] = _one(getattr(allow_list, "refused", None))
        counters = coordinator.byte_counters()
        if counters is not None:
            out["securefed_coordinator_received_bytes_total"] = _one(counters[0])
            out["securefed_coordinator_sent_bytes_total"] = _one(counters[1])
        self._read_rounds(coordinator, store)
        latest, evaluated = self._latest, self._evaluated
        if latest is not None:
            out["securefed_coordinator_last_round"] = _one(latest.round)
            out["securefed_coordinator_last_round_duration_seconds"] = _one(latest.duration)
            out["securefed_coordinator_last_round_participants"] = _one(latest.participants)
            out["securefed_coordinator_last_round_survivors"] = _one(len(latest.survivors))
            out["securefed_coordinator_last_round_attempts"] = _one(latest.attempts)
            out["securefed_coordinator_last_round_stage_seconds"] = [
                ((stage,), float(seconds)) for stage, seconds in latest.stage_durations.items()
            ]
            out["securefed_coordinator_last_round_completed_timestamp_seconds"] = _one(latest.completed_at)
            out["securefed_coordinator_epsilon_spent"] = _one(latest.epsilon)
        if evaluated is not None:
            out["securefed_coordinator_last_round_accuracy"] = _one(evaluated.accuracy)
            out["securefed_coordinator_last_round_loss"] = _one(evaluated.loss)
        if task.dp is not None:
            out["securefed_coordinator_epsilon_budget"] = _one(task.dp["epsilon"])
        return out

    def _read_rounds(self, coordinator: Any, store: Any) -> None:
        seen = (coordinator.completed_round, coordinator.phase)
        if seen == self._seen:
            return
        if self._seen is None:  # the first call: the newest evaluated round may be any
            history = store.rounds()
            self._latest = history[-1] if history else None
            self._evaluated = next((r for r in reversed(history) if r.accuracy is not None), None)
        else:
            self._latest = store.latest_round()
            if self._latest is not None and self._latest.accuracy is not None:
                self._evaluated = self._latest
        self._seen = seen


# --- the node's numbers -----------------------------------------------------------------------


class NodeActivity:
    """A node's socket, watched: what the node sends and hears that its metrics count.

    It passes every call through to the socket it wraps. It counts the refusals the node sends
    (by reason code) and the aggregations that completed after the node sent its input (by
    phase); nothing is changed on the way.
    """

    def __init__(self, socket: Any) -> None:
        from securefed.federation.messages import Refusal, RoundResult, RoundStart
        from securefed.secagg.messages import MaskedInput

        self._socket = socket
        self._types = (Refusal, RoundResult, RoundStart, MaskedInput)
        self.refusals: Counter[str] = Counter()
        self.contributed: Counter[str] = Counter()
        self._phase: dict[int, str] = {}  # aggregation -> phase of its RoundStart
        self._sent_input: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)

    def poll(self, timeout_ms: int) -> list:
        received = self._socket.poll(timeout_ms)
        _, RoundResult, RoundStart, _ = self._types
        for envelope in received:
            body = envelope.body
            if isinstance(body, RoundStart) and isinstance(body.spec, dict):
                self._phase[envelope.aggregation] = str(body.spec.get("phase", "train"))
                for old in [a for a in self._phase if a < envelope.aggregation - 16]:
                    self._phase.pop(old, None)
                    self._sent_input.discard(old)
            elif isinstance(body, RoundResult) and body.completed and envelope.aggregation in self._sent_input:
                self._sent_input.discard(envelope.aggregation)
                self.contributed[self._phase.get(envelope.aggregation, "train")] += 1
        return received

    def send(self, envelope: Any) -> bool:
        sent = self._socket.send(envelope)
        Refusal, _, _, MaskedInput = self._types
        if sent and isinstance(envelope.body, Refusal):
            self.refusals[str(envelope.body.reason)] += 1
        elif sent and isinstance(envelope.body, MaskedInput):
            self._sent_input.add(envelope.aggregation)
        return sent


class NodeMetrics:
    """Builds a node's snapshot from its Node, its watched socket, its ledger and its policy.

    Epsilon is composed from the ledger's rows again only when the ledger has new rows.
    """

    def __init__(self) -> None:
        self._ledger_rows = -1
        self._epsilon: tuple[dict[str, float], float] = ({}, 0.0)

    def samples(self, node: Any, activity: NodeActivity, ledger: Any = None) -> Samples:
        from securefed import __version__

        socket = activity
        policy = node.policy
        out: Samples = {
            "securefed_node_info": [((str(node.name), str(node.task), __version__), 1.0)],
            "securefed_node_connected": _one(bool(getattr(socket, "connected", False))),
            "securefed_node_rounds_contributed_total": _one(activity.contributed["train"]),
            "securefed_node_evaluations_contributed_total": _one(activity.contributed["evaluate"]),
            "securefed_node_refusals_total": _capped(activity.refusals),
            "securefed_node_last_training_seconds": _one(getattr(node, "last_training_seconds", None)),
            "securefed_node_dropped_messages_total": _capped(getattr(socket, "dropped", {}) or {}),
            "securefed_node_reconnects_total": _one(getattr(socket, "reconnects", None)),
            "securefed_node_received_bytes_total": _one(getattr(socket, "bytes_received", None)),
            "securefed_node_sent_bytes_total": _one(getattr(socket, "bytes_sent", None)),
            "securefed_node_epsilon_limit": _one(getattr(policy, "max_epsilon", None)),
            "securefed_node_epsilon_limit_site": _one(getattr(policy, "max_epsilon_total", None)),
        }
        if ledger is not None:
            per_task, total = self._spent(ledger, node.task)
            out["securefed_node_epsilon_spent"] = [((task,), value) for task, value in sorted(per_task.items())]
            out["securefed_node_epsilon_spent_site"] = _one(total)
        return out

    def _spent(self, ledger: Any, own_task: str) -> tuple[dict[str, float], float]:
        recorded = ledger.recorded()
        if len(recorded) != self._ledger_rows:
            tasks = {task for task, _ in recorded} | {own_task}
            self._epsilon = ({task: float(ledger.spent(task)) for task in tasks}, float(ledger.spent_total()))
            self._ledger_rows = len(recorded)
        return self._epsilon


class Throttle:
    """True at most once per ``interval`` seconds (the daemons' "update the metrics now?")."""

    def __init__(self, interval: float = UPDATE_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last = float("-inf")

    def due(self) -> bool:
        now = self.clock()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True
