"""Process shell for a node: load config, keys and local data, connect, run, stop on signals."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from node.config import load_node_config
from securefed.crypto.identity import SigningKey
from securefed.dp.ledger import PrivacyLedger
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
    ledger = PrivacyLedger(config.ledger_path, config.policy.budget())
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
            ledger=ledger,
        )
        if config.policy.requires_dp:
            log.info(
                "privacy budget for %s: spent %.3f of %s (site total %.3f of %s), delta %g",
                config.task,
                ledger.spent(config.task),
                config.policy.max_epsilon,
                ledger.spent_total(),
                config.policy.max_epsilon_total,
                config.policy.delta,
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
        ledger.close()
    return 0


def print_ledger(config_path: str | Path) -> int:
    """``securefed node ledger``: every DP release this site took part in, and what is left."""
    config = load_node_config(config_path)
    if not config.ledger_path.exists():
        print(f"no privacy ledger yet at {config.ledger_path}: this node has not taken part in a DP round")
        return 0
    ledger = PrivacyLedger(config.ledger_path, config.policy.budget())
    try:
        entries = ledger.entries()
        print(f"privacy ledger of {config.name} ({config.ledger_path}), delta {config.policy.delta:g}")
        print("task                      round  aggregation  noise mult.  epsilon (task)  epsilon (site)  when")
        import time as _time

        for entry in entries:
            mechanism = entry.mechanism
            when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(entry.at))
            z = mechanism.get("noise_multiplier")
            print(
                f"{entry.task[:24]:<24}  {entry.round:>5}  {entry.aggregation:>11}  {z if z is not None else '-':>11}  "
                f"{entry.epsilon_task:>14.3f}  {entry.epsilon_total:>14.3f}  {when}"
            )
        spent = ledger.spent(config.task)
        limit = config.policy.max_epsilon
        print(
            f"\n{config.task}: spent {spent:.3f}"
            + (f" of {limit:g} (remaining {max(0.0, limit - spent):.3f})" if limit is not None else " (no limit set)")
        )
        print(f"site total: {ledger.spent_total():.3f}" + (f" of {config.policy.max_epsilon_total:g}" if config.policy.max_epsilon_total else ""))
    finally:
        ledger.close()
    return 0
