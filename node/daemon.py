"""Process shell for a node: load config, keys and local data, connect, run, stop on signals."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from node.config import load_node_config
from securefed.crypto.identity import SigningKey
from securefed.audit.log import AuditLog, verify_log
from securefed.dp.ledger import PrivacyLedger, audited_releases
from securefed.errors import InvalidParameter
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
    report = verify_log(config.audit_path, identity.public_bytes, state.audit_head())
    if not report.ok:
        state.close()
        ledger.close()
        raise InvalidParameter(
            f"the audit log {config.audit_path} fails verification ({report.problems[0]}); "
            "keep it for your auditor, move it away, and start again"
        )
    if report.extends_head:  # a crash between appending a receipt and checkpointing the head
        state.set_audit_head(report.last_seq, report.last_hash)
    audited, _ = audited_releases([(entry.time, entry.receipt) for entry in report.entries])
    lacking = ledger.missing(audited)
    if lacking:
        state.close()
        ledger.close()
        first = lacking[0]
        raise InvalidParameter(
            f"the privacy ledger {config.ledger_path} lacks {len(lacking)} DP release(s) that this site's signed "
            f"audit log records (first: task {first.task!r}, round {first.round}, aggregation {first.aggregation}): "
            "it was deleted or replaced, and the budget it shows is too low. Restore ledger.sqlite from a backup, "
            f"or rebuild the missing rows from the audit log with: securefed node ledger --config {config_path} --rebuild"
        )
    audit_log = AuditLog(config.audit_path, identity, on_append=state.set_audit_head)
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
            audit_log=audit_log,
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


def rebuild_ledger(config_path: str | Path) -> int:
    """``securefed node ledger --rebuild``: put back the ledger rows the signed audit log proves.

    For a ledger that was deleted or replaced: every DP release the site's verified audit log
    records and the ledger lacks is added back, so the budget it shows is true again.
    """
    config = load_node_config(config_path)
    identity = SigningKey.load(config.identity_key_file)
    state = NodeState(config.state_path)
    try:
        report = verify_log(config.audit_path, identity.public_bytes, state.audit_head())
    finally:
        state.close()
    if not report.ok:
        print(f"error: the audit log {config.audit_path} fails verification ({report.problems[0]}); it cannot be "
              "used to rebuild the ledger: restore the ledger from a backup", file=sys.stderr)  # fmt: skip
        return 1
    audited, problems = audited_releases([(entry.time, entry.receipt) for entry in report.entries])
    ledger = PrivacyLedger(config.ledger_path, config.policy.budget())
    try:
        lacking = ledger.missing(audited)
        added = ledger.restore(lacking)
        print(f"rebuilt {added} ledger row(s) from {len(report.entries)} audit receipts; "
              f"{config.task}: spent {ledger.spent(config.task):.3f}, site total {ledger.spent_total():.3f}")  # fmt: skip
    finally:
        ledger.close()
    for problem in problems:
        print(f"warning: {problem}; restore the ledger from a backup to account for it", file=sys.stderr)
    return 1 if problems else 0


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


def print_audit(config_path: str | Path) -> int:
    """``securefed node audit``: verify the site's audit log and summarise it. Exit 1 if tampered."""
    import time as _time

    config = load_node_config(config_path)
    identity = SigningKey.load(config.identity_key_file)
    head = None
    if config.state_path.exists():
        state = NodeState(config.state_path)
        try:
            head = state.audit_head()
        finally:
            state.close()
    report = verify_log(config.audit_path, identity.public_bytes, head)
    print(f"audit log of {config.name}: {config.audit_path}")
    print("seq  time                 task / round / aggregation        outcome                 signed U3  revealed b/s  epsilon")
    for entry in report.entries:
        receipt = entry.receipt
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(entry.time))
        where = f"{receipt.get('task', '?')} / {receipt.get('round', '-')} / {receipt.get('aggregation', '-')}"
        survivors = receipt.get("signed_survivors")
        revealed = f"{len(receipt.get('revealed_b_shares_of', []))}/{len(receipt.get('revealed_s_shares_of', []))}"
        epsilon = receipt.get("epsilon_task_after")
        print(
            f"{entry.seq:>3}  {when}  {where[:32]:<32}  {receipt.get('outcome', '?')[:22]:<22}  "
            f"{len(survivors) if survivors is not None else '-':>9}  {revealed:>12}  {epsilon if epsilon is not None else '-'}"
        )
    if report.ok:
        print(f"\nverified: {len(report.entries)} entries, hash chain intact, every signature by this node's identity key"
              + (", end matches the node's recorded head" if head is not None else ""))
        return 0
    print("\nTAMPERING DETECTED:")
    for problem in report.problems:
        print(f"  - {problem}")
    return 1
