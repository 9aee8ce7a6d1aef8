"""Process shell for the coordinator: load config and keys, bind, run, write status, stop on signals.

It holds an exclusive lock on its ``state_dir`` for its whole life (a second coordinator on the
same folder fails at once, naming the first one's PID). On start it marks the attempts a crash or
stop interrupted as aborted, except one whose unmasking it resumes. ``status.json`` is rewritten
every second with the daemon's PID; ``securefed status`` checks the lock to tell whether it runs.
With a ``[metrics]`` section it also serves Prometheus metrics (docs/monitoring.md), refreshed on the
same one-second beat.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from coordinator.config import CoordinatorConfig, load_coordinator_config
from securefed._fs import StateLock, atomic_write
from securefed.federation.coordinator import Coordinator
from securefed.federation.store import CoordinatorStore
from securefed.learning.data import load_local_dataset
from securefed.logging_setup import configure_logging
from securefed.metrics import COORDINATOR_METRICS, CoordinatorMetrics, MetricsEndpoint
from securefed.status import STATUS_FILE
from securefed.wire.keys import CurveKeyPair
from securefed.wire.transcript import TranscriptWriter
from securefed.wire.transport import CoordinatorSocket

__all__ = ["STATUS_FILE", "run_coordinator"]

log = logging.getLogger("securefed.coordinator")

_STATUS_INTERVAL = 1.0


def _write_status(config: CoordinatorConfig, coordinator: Coordinator, socket: CoordinatorSocket) -> None:
    current = coordinator.current
    status = {
        "pid": os.getpid(),
        "task": config.task.name,
        "listen": socket.endpoint,
        "rounds": config.task.rounds,
        "completed_round": coordinator.completed_round,
        "finished": coordinator.finished,
        "connected_nodes": coordinator.connected_nodes(),
        "current": None
        if current is None
        else {
            "aggregation": current.id,
            "round": current.round,
            "phase": current.phase,
            "stage": current.stage.value if current.stage else None,
            "cohort": current.cohort,
        },
        "excluded_nodes": {
            **{name: f"this round: {why}" for name, why in coordinator.excluded_for_round.items()},
            **{name: f"until restart: {why}" for name, why in coordinator.excluded_for_run.items()},
        },
        "dropped_messages": dict(socket.dropped) | dict(coordinator.counters),
        "refused_connections": socket.allow_list.refused,
        "updated_at": time.time(),
    }
    atomic_write(config.state_dir / STATUS_FILE, json.dumps(status, indent=2).encode())


def run_coordinator(config_path: str | Path, stop: threading.Event | None = None) -> int:
    configure_logging("coordinator")
    config = load_coordinator_config(config_path)
    keys = CurveKeyPair.load(config.curve_secret_key_file)
    lock = StateLock.acquire(config.state_dir, "coordinator")
    try:
        return _run_locked(config, keys, stop)
    finally:
        lock.release()


def _run_locked(config: CoordinatorConfig, keys: CurveKeyPair, stop: threading.Event | None) -> int:
    store = CoordinatorStore(config.store_path)
    allowed = {node.curve_public_key: node.name for node in config.nodes}
    try:
        transcript = TranscriptWriter(config.transcript_file) if config.transcript_file is not None else None
        socket = CoordinatorSocket(config.listen, keys, allowed, transcript=transcript)
    except BaseException:
        store.close()
        raise
    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    endpoint = None
    try:
        if config.metrics is not None:
            endpoint = MetricsEndpoint(config.metrics, COORDINATOR_METRICS, source=config.source).start()
        evaluation = None
        if config.evaluation_data is not None:
            data = load_local_dataset(
                config.evaluation_data,
                label_column=config.evaluation_label_column,
                features=config.task.feature_names or config.task.n_features,
                classes=config.task.classes,
            )
            # the coordinator's held-out data is scaled as the task says, like every node's
            X = data.X if config.task.preprocessing is None else config.task.preprocessing.transform(data.X)
            evaluation = (X, data.y)
        coordinator = Coordinator(config.task, config.nodes, socket, store, evaluation_data=evaluation)
        # Attempts left "running" by a crash or a stop are over; the one whose unmasking the
        # coordinator just resumed (Coordinator._resume_unmasking) is not.
        resumed = coordinator.current.id if coordinator.current is not None else None
        interrupted = store.abort_interrupted(keep=resumed)
        if interrupted:
            log.info("marked %d interrupted attempt(s) aborted: %s", len(interrupted), ", ".join(map(str, interrupted)))
        log.info("listening on %s for %d known nodes", socket.endpoint, len(config.nodes))
        metrics = CoordinatorMetrics()

        def report() -> None:
            _write_status(config, coordinator, socket)
            if endpoint is not None:
                endpoint.update(metrics.samples(coordinator, socket, store))

        last_status = 0.0
        while not stop.is_set():
            coordinator.step(50)
            now = time.monotonic()
            if now - last_status >= _STATUS_INTERVAL:
                report()
                last_status = now
            if coordinator.finished:
                report()
                if coordinator.job is not None:
                    log.info(
                        "the %s computation finished after %d steps; stopping",
                        config.task.model_kind,
                        coordinator.completed_round,
                    )
                else:
                    log.info("all %d rounds done; stopping", config.task.rounds)
                break
        else:
            coordinator.shutdown("stopping on a signal")
            report()
    finally:
        if endpoint is not None:
            endpoint.close()
        socket.close()
        store.close()
    return 0
