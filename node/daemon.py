"""Process shell for a node: load config, keys and local data, connect, run, stop on signals."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from node.config import load_node_config
from securefed.crypto.identity import SigningKey
from securefed.federation.node import Node, NodeState
from securefed.learning.data import load_local_dataset
from securefed.logging_setup import configure_logging
from securefed.wire.keys import CurveKeyPair
from securefed.wire.transport import NodeSocket

__all__ = ["run_node"]

log = logging.getLogger("securefed.node")


def run_node(config_path: str | Path, stop: threading.Event | None = None) -> int:
    configure_logging("node")
    config = load_node_config(config_path)
    keys = CurveKeyPair.load(config.curve_secret_key_file)
    identity = SigningKey.load(config.identity_key_file)
    dataset = load_local_dataset(
        config.data_path, label_column=config.label_column, features=config.features, classes=config.classes
    )
    state = NodeState(config.state_path)
    socket = NodeSocket(config.coordinator, keys, config.coordinator_curve_public_key)
    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        node = Node(
            config.name,
            config.task,
            socket,
            identity,
            config.roster,
            dataset,
            state,
            config.policy,
            config.validation_fraction,
            declared_classes=config.classes,
        )
        log.info(
            "node %s: %d local samples with %d features; connecting to %s",
            config.name,
            dataset.X.shape[0],
            dataset.X.shape[1],
            config.coordinator,
        )
        node.run(stop)
    finally:
        socket.close()
        state.close()
    return 0
