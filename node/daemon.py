"""Process shell for a node: load config, keys and local data, connect, run, stop on signals.

The daemon holds an exclusive lock on its ``state_dir`` for its whole life (a second copy on the
same folder fails at once, naming the first one's PID), and so do the commands that change the
state folder (``ledger --rebuild``, ``audit --recover``). With a ``[metrics]`` section it also
serves Prometheus metrics (docs/monitoring.md), refreshed from its loop at most once a second.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from node.config import NodeConfig, load_node_config
from securefed._fs import StateLock
from securefed.audit.log import RECOVERY, AuditEntry, AuditLog, ChainReport, recover_log, verify_chain, verify_log
from securefed.crypto.identity import SigningKey
from securefed.dp.ledger import PrivacyLedger, audited_releases, release_receipts
from securefed.errors import InvalidParameter
from securefed.federation.node import Node, NodeState
from securefed.learning.data import load_local_dataset
from securefed.logging_setup import configure_logging
from securefed.metrics import NODE_METRICS, MetricsEndpoint, NodeActivity, NodeMetrics, Throttle
from securefed.wire.keys import CurveKeyPair
from securefed.wire.transport import NodeSocket

__all__ = ["print_audit", "print_ledger", "rebuild_ledger", "recover_audit", "run_node"]

log = logging.getLogger("securefed.node")


def _recovery_advice(config_path: str | Path) -> str:
    return (
        "keep it for your auditor, then archive it and start a new chain with: "
        f'securefed node audit --config {config_path} --recover --reason "..." (see docs/deployment.md)'
    )


def _log_archive_notes(chain: ChainReport) -> None:
    for problem in chain.problems:
        log.warning("audit log: %s; `securefed node audit` reports it", problem)


def run_node(config_path: str | Path, stop: threading.Event | None = None) -> int:
    configure_logging("node")
    config = load_node_config(config_path)
    keys = CurveKeyPair.load(config.curve_secret_key_file)
    identity = SigningKey.load(config.identity_key_file)
    lock = StateLock.acquire(config.state_dir, "node")
    try:
        return _run_locked(config_path, config, keys, identity, stop)
    finally:
        lock.release()


def _run_locked(
    config_path: str | Path, config: NodeConfig, keys: CurveKeyPair, identity: SigningKey, stop: threading.Event | None
) -> int:
    dataset = load_local_dataset(
        config.data_path, label_column=config.label_column, features=config.features, classes=config.classes
    )
    with ExitStack() as cleanup:
        state = NodeState(config.state_path)
        cleanup.callback(state.close)
        ledger = PrivacyLedger(config.ledger_path, config.policy.budget())
        cleanup.callback(ledger.close)
        chain = verify_chain(config.audit_path, identity.public_bytes, state.audit_head())
        report = chain.current
        if not report.ok:
            raise InvalidParameter(
                f"the audit log {config.audit_path} fails verification ({report.problems[0]}); {_recovery_advice(config_path)}"
            )
        if report.extends_head:  # a crash between appending a receipt (or a recovery) and checkpointing the head
            state.set_audit_head(report.last_seq, report.last_hash)
        _log_archive_notes(chain)
        # The releases of archived logs count too (a recovery carries them): archiving forgets nothing.
        audited, _ = audited_releases(chain.receipts())
        lacking = ledger.missing(audited)
        if lacking:
            first = lacking[0]
            raise InvalidParameter(
                f"the privacy ledger {config.ledger_path} lacks {len(lacking)} DP release(s) that this site's signed "
                f"audit log records (first: task {first.task!r}, round {first.round}, aggregation {first.aggregation}): "
                "it was deleted or replaced, and the budget it shows is too low. Restore ledger.sqlite from a backup, "
                f"or rebuild the missing rows from the audit log with: securefed node ledger --config {config_path} --rebuild"
            )
        audit_log = AuditLog(config.audit_path, identity, on_append=state.set_audit_head)
        endpoint = None
        if config.metrics is not None:
            endpoint = MetricsEndpoint(config.metrics, NODE_METRICS, source=config.source).start()
            cleanup.callback(endpoint.close)
        socket = NodeSocket(config.coordinator, keys, config.coordinator_curve_public_key)
        cleanup.callback(socket.close)
        activity = NodeActivity(socket)
        stop = stop or threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        node = Node(
            config.name,
            config.task,
            activity,
            identity,
            config.roster,
            dataset,
            state,
            config.policy,
            config.validation_fraction,
            declared_classes=config.classes,
            numeric_target=config.classes is None,
            ledger=ledger,
            audit_log=audit_log,
            preprocessing=config.preprocessing,
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
        metrics, beat = NodeMetrics(), Throttle()
        while not stop.is_set():
            node.step()
            if endpoint is not None and beat.due():
                endpoint.update(metrics.samples(node, activity, ledger))
    return 0


def rebuild_ledger(config_path: str | Path) -> int:
    """``securefed node ledger --rebuild``: put back the ledger rows the signed audit log proves.

    For a ledger that was deleted or replaced: every DP release the site's verified audit log
    records and the ledger lacks is added back, so the budget it shows is true again.
    """
    config = load_node_config(config_path)
    identity = SigningKey.load(config.identity_key_file)
    with StateLock.acquire(config.state_dir, "node"):
        state = NodeState(config.state_path)
        try:
            chain = verify_chain(config.audit_path, identity.public_bytes, state.audit_head())
        finally:
            state.close()
        report = chain.current
        if not report.ok:
            print(f"error: the audit log {config.audit_path} fails verification ({report.problems[0]}); it cannot be "
                  "used to rebuild the ledger: restore the ledger from a backup", file=sys.stderr)  # fmt: skip
            return 1
        for problem in chain.problems:
            print(f"warning: {problem}", file=sys.stderr)
        # Archived logs count as well (their releases are carried by the recovery entry, and read
        # from the archive when it is still here).
        receipts = chain.receipts()
        audited, problems = audited_releases(receipts)
        ledger = PrivacyLedger(config.ledger_path, config.policy.budget())
        try:
            lacking = ledger.missing(audited)
            added = ledger.restore(lacking)
            print(f"rebuilt {added} ledger row(s) from {len(receipts)} audit receipts; "
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
        print(
            f"site total: {ledger.spent_total():.3f}"
            + (f" of {config.policy.max_epsilon_total:g}" if config.policy.max_epsilon_total else "")
        )
    finally:
        ledger.close()
    return 0


def _print_entries(entries: Sequence[AuditEntry]) -> None:
    import time as _time

    print("seq  time                 task / round / aggregation        outcome                 signed U3  revealed b/s  epsilon")
    for entry in entries:
        receipt = entry.receipt
        when = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(entry.time))
        if receipt.get("kind") == RECOVERY:
            where = "recovery (see below)"
        else:
            where = f"{receipt.get('task', '?')} / {receipt.get('round', '-')} / {receipt.get('aggregation', '-')}"
        survivors = receipt.get("signed_survivors")
        revealed = f"{len(receipt.get('revealed_b_shares_of', []))}/{len(receipt.get('revealed_s_shares_of', []))}"
        epsilon = receipt.get("epsilon_task_after")
        print(
            f"{entry.seq:>3}  {when}  {where[:32]:<32}  {str(receipt.get('outcome', '?'))[:22]:<22}  "
            f"{len(survivors) if survivors is not None else '-':>9}  {revealed:>12}  {epsilon if epsilon is not None else '-'}"
        )


def _describe_head(head: object) -> str:
    if isinstance(head, dict):
        return f"entry {head.get('seq')} (hash {str(head.get('hash'))[:16]}…)"
    return "unverifiable"


def print_audit(config_path: str | Path) -> int:
    """``securefed node audit``: verify the site's audit log, across any recovery, and summarise it.

    Exit 1 if the current chain or an archive behind a recovery boundary shows tampering.
    """
    config = load_node_config(config_path)
    identity = SigningKey.load(config.identity_key_file)
    head = None
    if config.state_path.exists():
        state = NodeState(config.state_path)
        try:
            head = state.audit_head()
        finally:
            state.close()
    chain = verify_chain(config.audit_path, identity.public_bytes, head)
    report = chain.current
    print(f"audit log of {config.name}: {config.audit_path}")
    _print_entries(report.entries)
    where = config.audit_path.name
    for boundary in chain.archives:
        receipt = boundary.recovery.receipt
        print(f"\nrecovery boundary: entry {boundary.recovery.seq} of {where} started a new chain"
              f" ({receipt.get('reason', 'no reason given')!s:.200})")  # fmt: skip
        where = boundary.name or "?"
        print(f"  archived log: {boundary.name or 'none (the log was missing)'}; its head: {_describe_head(boundary.head)}"
              f" - {str(receipt.get('archive_head_why', ''))[:200]}")  # fmt: skip
        print(f"  carried: {len(receipt.get('carried', []) or [])} DP release receipt(s) from the archive")
        for note in boundary.notes:
            print(f"  {note}")
        for problem in boundary.problems:
            print(f"  PROBLEM: {problem}")
    if chain.ok:
        print(f"\nverified: {len(report.entries)} entries, hash chain intact, every signature by this node's identity key"
              + (", end matches the node's recorded head" if head is not None else "")
              + (f"; {len(chain.archives)} recovery boundary(ies) checked" if chain.archives else ""))  # fmt: skip
        return 0
    print("\nTAMPERING DETECTED:")
    for problem in [*report.problems, *chain.problems]:
        print(f"  - {problem}")
    if not report.ok:
        print(f"\nTo go on: {_recovery_advice(config_path)}")
    return 1


def recover_audit(config_path: str | Path, reason: str | None) -> int:
    """``securefed node audit --recover``: archive a log that fails verification and start a new chain.

    The new chain's first entry is signed and names the archive, its head and ``reason``; it carries
    every DP release receipt of the archive, so the site's releases keep counting. The privacy
    ledger is not touched. Refuses while the node daemon runs (it holds the state folder).
    """
    config = load_node_config(config_path)
    identity = SigningKey.load(config.identity_key_file)
    with StateLock.acquire(config.state_dir, "node"):
        state = NodeState(config.state_path)
        try:
            head = state.audit_head()
            report = verify_log(config.audit_path, identity.public_bytes, head)
            if report.ok:
                if report.extends_head:
                    state.set_audit_head(report.last_seq, report.last_hash)
                print(f"nothing to recover: the audit log {config.audit_path} verifies ({len(report.entries)} entries); "
                      "it was left as it is")  # fmt: skip
                return 0
            why = reason or f"the log failed verification: {report.problems[0]}"
            result = recover_log(
                config.audit_path,
                identity,
                head,
                why,
                carry=release_receipts,
                on_append=state.set_audit_head,
                extra={"task": config.task},
            )
        finally:
            state.close()
    archived = f"archived the failed log as {result.archive}" if result.archive else "no log file to archive (it was missing)"
    print(f"{archived}; its head: {_describe_head(result.archive_head)}")
    print(f"started a new chain at {config.audit_path}: entry 1 names the archive and the reason ({why[:200]}), "
          f"and carries {result.carried} DP release receipt(s), so they keep counting")  # fmt: skip
    print("the privacy ledger was not touched; check the result with: "
          f"securefed node audit --config {config_path}")  # fmt: skip
    return 0
