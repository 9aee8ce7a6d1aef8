"""The site audit log over real daemons: what each node sent and revealed, verifiable and tamper-evident."""

from __future__ import annotations

import subprocess
import sys

import pytest

from securefed.audit.log import verify_log
from securefed.crypto.identity import SigningKey
from securefed.federation.node import NodeState
from tests.privacy_audit.checks_secagg import AuditFederation


@pytest.fixture(scope="module")
def finished_federation(tmp_path_factory):
    federation = AuditFederation(tmp_path_factory.mktemp("site-audit"), n_nodes=3, rounds=2)
    try:
        federation.start_coordinator()
        federation.start_nodes()
        assert federation.wait_coordinator_exit(120) == 0
    finally:
        federation.stop()
    return federation


def _log_of(federation, name: str):
    folder = federation.fed.root / name
    state = NodeState(folder / "state" / "node.sqlite")
    head = state.audit_head()
    state.close()
    key = SigningKey.load(folder / "identity.pem")
    return folder / "state" / "audit.log", key, head


@pytest.mark.integration
def test_every_node_keeps_a_verifiable_receipt_per_aggregation(finished_federation, audit) -> None:
    """Promise: each site holds a signed, hash-chained receipt of every aggregation it took part in."""
    problems = []
    for name in finished_federation.names:
        path, key, head = _log_of(finished_federation, name)
        report = verify_log(path, key.public_bytes, head)
        receipts = [entry.receipt for entry in report.entries]
        if not report.ok:
            problems.append(f"{name}: {report.problems}")
        if [r["aggregation"] for r in receipts] != [1, 2, 3, 4]:  # 2 rounds x (train + evaluate)
            problems.append(f"{name}: receipts for aggregations {[r['aggregation'] for r in receipts]}")
        for receipt in receipts:
            survivors = set(receipt["signed_survivors"] or [])
            b, s = set(receipt["revealed_b_shares_of"]), set(receipt["revealed_s_shares_of"])
            if b & s or not b <= survivors or s & survivors or receipt["outcome"] != "completed":
                problems.append(f"{name}: inconsistent receipt {receipt}")
    audit.check(
        "site-audit-log-complete",
        "each site keeps a verifiable receipt of what it signed and revealed in every aggregation",
        not problems,
        "; ".join(problems) or f"{len(finished_federation.names)} logs verified",
    )
    assert not problems


@pytest.mark.integration
def test_tampering_with_a_receipt_is_detected_by_the_cli(finished_federation, audit) -> None:
    """Promise: `securefed node audit` detects any edit of a site's receipts."""
    name = finished_federation.names[0]
    path, _, _ = _log_of(finished_federation, name)
    config = finished_federation.fed.node_configs[name]
    command = [sys.executable, "-m", "securefed.cli", "node", "audit", "--config", str(config)]
    clean = subprocess.run(command, capture_output=True, text=True, timeout=60)
    original = path.read_bytes()
    try:
        path.write_bytes(original.replace(b'"outcome":"completed"', b'"outcome":"refused"', 1))
        tampered = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        path.write_bytes(original)
    passed = (
        clean.returncode == 0
        and "verified: 4 entries" in clean.stdout
        and tampered.returncode == 1
        and "TAMPERING DETECTED" in tampered.stdout
    )
    audit.check(
        "site-audit-log-tamper-evident",
        "editing any receipt in a site's audit log is detected",
        passed,
        f"clean exit {clean.returncode}, tampered exit {tampered.returncode}",
    )
    assert passed, (clean.stdout, clean.stderr, tampered.stdout)
