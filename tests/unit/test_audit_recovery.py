"""Audit-log recovery (issue 12, item 2): a failed log is archived, a new signed chain names it, nothing is forgotten.

Two copies of one node on the same ``state_dir`` broke a site's audit log for good (``sequence number 211,
expected 235``), and the advised recovery ("move it away, and start again") did not work. Now
``securefed node audit --config node.toml --recover --reason "..."`` archives the failed log under a
timestamped name and starts a new chain whose first entry is signed and names the archive, its SHA-256, its
head (the last entry up to which it verifies, or "unverifiable" and why) and the reason; it carries the
archive's DP release receipts, so that the node's start-up check and ``node ledger --rebuild`` still count
those releases even when the ledger and the archive are lost later. ``securefed node audit`` verifies across
the boundary. The privacy ledger is never touched by a recovery.

The site is a real one: a DP task run in-process (the real Coordinator and Nodes), see
tests/unit/test_ledger_audit_binding.py, whose helpers this reuses; the node daemon's entry point and the
CLI are called in-process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from securefed import cli
from securefed._fs import StateLock
from securefed.audit.log import (
    GENESIS,
    RECOVERY,
    AuditLog,
    authentic_entries,
    expand_carried,
    recover_log,
    verify_chain,
    verify_log,
)
from securefed.crypto.identity import SigningKey
from securefed.dp.ledger import audited_releases, release_receipts
from securefed.errors import InvalidParameter
from securefed.federation.node import NodeState
from tests.unit.test_ledger_audit_binding import ROUNDS, Site, _dp_site, _rebuild, _rows, _run_node

KEY = SigningKey.generate()
REASON = "two copies of the node ran on one state_dir (systemd plus a manual start)"


def _identity(site: Site) -> SigningKey:
    return SigningKey.load(site.folder / "identity.pem")


def _head(site: Site) -> tuple[int, str] | None:
    state = NodeState(site.folder / "node.sqlite")
    try:
        return state.audit_head()
    finally:
        state.close()


def _set_head(site: Site, head: tuple[int, str]) -> None:
    state = NodeState(site.folder / "node.sqlite")
    try:
        state.set_audit_head(*head)
    finally:
        state.close()


def _archives(site: Site) -> list[Path]:
    return sorted(site.folder.glob("audit.log.failed-*"))


def _audit(site: Site, *extra: str) -> int:
    return cli.main(["node", "audit", "--config", str(site.config), *extra])


def _ledger_rows(site: Site) -> list[tuple]:
    ledger = site.ledger(max_epsilon=100.0)
    try:
        return _rows(ledger)
    finally:
        ledger.close()


def _two_daemons_break_the_log(site: Site) -> int:
    """What two node processes on one state folder do: each appends from its own idea of the head.

    The second one's receipt is a DP release (aggregation 99) that it also charged to the shared ledger,
    as a real second daemon would. Returns the seq of the last entry that still chains.
    """
    identity = _identity(site)
    state = NodeState(site.folder / "node.sqlite")
    try:
        first = AuditLog(site.audit_path, identity, on_append=state.set_audit_head)
        second = AuditLog(site.audit_path, identity, on_append=state.set_audit_head)  # opened at the same head
        report = verify_log(site.audit_path, identity.public_bytes)
        dp_receipt = next(e.receipt for e in report.entries if e.receipt.get("outcome") == "charged")
        first.append({"task": site.task, "aggregation": 98, "outcome": "refused", "detail": "replay: ..."})
        second.append({**dp_receipt, "round": 9, "aggregation": 99})
    finally:
        state.close()
    charged = _dp_receipt_release(dp_receipt)
    ledger = site.ledger(max_epsilon=100.0)
    try:
        ledger.restore([charged])  # the second daemon's charge of aggregation 99, in the one shared ledger
    finally:
        ledger.close()
    return report.last_seq + 1


def _dp_receipt_release(receipt: dict):
    (release,), _ = audited_releases([(1.0, {**receipt, "round": 9, "aggregation": 99})])
    return release


def _recovered_site(tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[Site, int]:
    site = _dp_site(tmp_path)
    last_good = _two_daemons_break_the_log(site)
    assert _audit(site, "--recover", "--reason", REASON) == 0
    capsys.readouterr()
    return site, last_good


# --- the operator's path ------------------------------------------------------------------------------


def test_a_log_broken_by_two_daemons_is_archived_and_a_signed_chain_names_its_head(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    site = _dp_site(tmp_path)
    last_good = _two_daemons_break_the_log(site)
    broken = site.audit_path.read_bytes()
    rows_before = _ledger_rows(site)
    recorded_before = _head(site)

    with pytest.raises(InvalidParameter, match="fails verification") as refused:
        _run_node(site.config)
    assert f"securefed node audit --config {site.config} --recover" in str(refused.value)  # it names the way out
    assert _audit(site) == 1 and "TAMPERING DETECTED" in capsys.readouterr().out

    assert _audit(site, "--recover", "--reason", REASON) == 0
    out = capsys.readouterr().out
    (archive,) = _archives(site)
    assert archive.name in out and f"entry {last_good}" in out and "ledger was not touched" in out, out
    assert archive.read_bytes() == broken  # kept as it was, for the auditor

    identity = _identity(site)
    report = verify_log(site.audit_path, identity.public_bytes, _head(site))
    assert report.ok and [e.seq for e in report.entries] == [1] and report.entries[0].prev == GENESIS
    first = report.entries[0]
    receipt = first.receipt
    assert receipt["kind"] == RECOVERY and receipt["reason"] == REASON and receipt["task"] == site.task
    assert receipt["archive"] == archive.name
    good = verify_log(archive, identity.public_bytes).entries[last_good - 1]
    assert receipt["archive_head"] == {"seq": last_good, "hash": good.hash}
    assert f"from entry 1 to entry {last_good}" in receipt["archive_head_why"]
    assert receipt["recorded_head"] == {"seq": recorded_before[0], "hash": recorded_before[1]}
    assert any("sequence number" in problem for problem in receipt["problems"])
    carried = {(r["task"], r["aggregation"]) for _, r in expand_carried([(first.time, receipt)])}
    assert carried == {(site.task, row[2]) for row in site.rows} | {(site.task, 99)}  # one receipt per release
    assert _head(site) == (1, first.hash)  # the node's recorded head was reset with the new chain

    assert _ledger_rows(site) == rows_before  # never reset, never touched

    assert _audit(site) == 0
    out = capsys.readouterr().out
    assert "recovery boundary" in out and archive.name in out and f"verifies up to its recorded head, entry {last_good}" in out
    assert "verified: 1 entries" in out, out
    assert _run_node(site.config) == 0  # the node starts again, and its chain goes on from entry 1
    AuditLog(site.audit_path, identity, on_append=lambda seq, digest: _set_head(site, (seq, digest))).append(
        {"task": site.task, "aggregation": 100, "outcome": "refused", "detail": "x"}
    )
    assert verify_chain(site.audit_path, identity.public_bytes, _head(site)).ok


def test_the_archived_releases_still_count_when_the_ledger_and_the_archive_are_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Archiving cannot be used to forget releases: the recovery entry carries them."""
    site, _ = _recovered_site(tmp_path, capsys)
    rows = _ledger_rows(site)
    assert len(rows) == ROUNDS + 1
    site.delete_ledger()
    with pytest.raises(InvalidParameter, match=rf"lacks {ROUNDS + 1} DP release\(s\)"):
        _run_node(site.config)
    for archive in _archives(site):
        archive.unlink()  # the archive is gone as well: the carried receipts still count
    with pytest.raises(InvalidParameter, match=rf"lacks {ROUNDS + 1} DP release\(s\)"):
        _run_node(site.config)
    assert _audit(site) == 0
    assert "is not present here" in capsys.readouterr().out

    assert _rebuild(site.config) == 0
    assert f"rebuilt {ROUNDS + 1} ledger row(s)" in capsys.readouterr().out
    assert [row[:4] for row in _ledger_rows(site)] == [row[:4] for row in rows]
    ledger = site.ledger(max_epsilon=100.0)
    try:
        assert ledger.spent(site.task) > site.spent  # the second daemon's release counts too
    finally:
        ledger.close()
    assert _run_node(site.config) == 0


def test_an_archive_changed_after_the_recovery_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site, _ = _recovered_site(tmp_path, capsys)
    (archive,) = _archives(site)
    lines = archive.read_bytes().splitlines(keepends=True)
    archive.write_bytes(b"".join(lines[:1] + lines[2:]))  # an entry below the recorded head removed
    assert _audit(site) == 1
    out = capsys.readouterr().out
    assert "TAMPERING DETECTED" in out and "changed after it was archived" in out, out
    assert "no longer verifies up to its recorded head" in out
    # The current chain is intact, so the node still runs (the auditor has the report); nothing is forgotten.
    assert _run_node(site.config) == 0


def test_a_missing_log_is_recovered_with_an_unverifiable_head(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The issue's second failure: after "move it away", the node said `the log is missing but the node recorded
    N entries` for ever. Recovery starts a new chain that says so."""
    site = _dp_site(tmp_path)
    recorded = _head(site)
    moved = site.folder / "audit.log.moved-away"
    site.audit_path.rename(moved)
    with pytest.raises(InvalidParameter, match="the log is missing but the node recorded"):
        _run_node(site.config)
    assert _audit(site, "--recover") == 0  # no --reason: the verification problem is the reason
    assert "no log file to archive" in capsys.readouterr().out
    report = verify_log(site.audit_path, _identity(site).public_bytes, _head(site))
    (entry,) = report.entries
    receipt = entry.receipt
    assert receipt["archive"] is None and receipt["archive_head"] == "unverifiable"
    assert "missing" in receipt["archive_head_why"] and "missing" in receipt["reason"]
    assert receipt["recorded_head"] == {"seq": recorded[0], "hash": recorded[1]}
    assert _audit(site) == 0 and "no archive" in capsys.readouterr().out
    assert _run_node(site.config) == 0
    assert [e.seq for e in verify_log(moved, _identity(site).public_bytes).entries][-1] == recorded[0]


def test_a_log_that_verifies_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = _dp_site(tmp_path)
    before = site.audit_path.read_bytes()
    assert _audit(site, "--recover", "--reason", "just in case") == 0
    assert "nothing to recover" in capsys.readouterr().out
    assert site.audit_path.read_bytes() == before and _archives(site) == []


def test_a_crash_before_the_head_is_re_recorded_is_not_tampering(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """kill -9 between writing the new chain and recording its head: the old head is still recorded. The
    recovery entry names that head, so verification accepts it and the node re-records the head."""
    site, _ = _recovered_site(tmp_path, capsys)
    identity = _identity(site)
    entry = verify_log(site.audit_path, identity.public_bytes).entries[0]
    old = entry.receipt["recorded_head"]
    _set_head(site, (old["seq"], old["hash"]))
    report = verify_log(site.audit_path, identity.public_bytes, (old["seq"], old["hash"]))
    assert report.ok and report.extends_head
    assert not verify_log(site.audit_path, identity.public_bytes, (old["seq"], "ab" * 32)).ok
    assert _run_node(site.config) == 0
    assert _head(site) == (1, entry.hash)


def test_two_recoveries_chain_their_archives_and_every_release_still_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    site, _ = _recovered_site(tmp_path, capsys)
    rows = _ledger_rows(site)
    _set_head(site, (7, "ab" * 32))  # the new chain is replaced under the node's feet: fails again
    assert _audit(site) == 1
    capsys.readouterr()
    assert _audit(site, "--recover", "--reason", "second failure") == 0
    capsys.readouterr()
    first_archive, second_archive = sorted(_archives(site), key=lambda path: path.stat().st_mtime_ns)
    identity = _identity(site)
    chain = verify_chain(site.audit_path, identity.public_bytes, _head(site))
    assert chain.ok, chain.problems
    assert [check.name for check in chain.archives] == [second_archive.name, first_archive.name]
    assert _audit(site) == 0
    out = capsys.readouterr().out
    assert out.count("recovery boundary: entry 1 of") == 2 and "2 recovery boundary(ies) checked" in out, out
    assert f"entry 1 of {second_archive.name} started a new chain" in out

    site.delete_ledger()
    first_archive.unlink()
    second_archive.unlink()
    assert _rebuild(site.config) == 0
    assert [row[:4] for row in _ledger_rows(site)] == [row[:4] for row in rows]


def test_recovery_refuses_while_the_node_holds_its_state_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = _dp_site(tmp_path)
    _two_daemons_break_the_log(site)
    before = site.audit_path.read_bytes()
    with StateLock.acquire(site.folder, "node"):  # the node daemon is running
        assert _audit(site, "--recover") == 2
    err = capsys.readouterr().err
    assert f"PID {os.getpid()}" in err and "in use" in err, err
    assert site.audit_path.read_bytes() == before and _archives(site) == []


def test_recover_goes_with_audit_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["node", "ledger", "--config", str(tmp_path / "node.toml"), "--recover"]) == 2
    assert "--recover goes with 'securefed node audit'" in capsys.readouterr().err


# --- the library's pieces -----------------------------------------------------------------------------


def _log(path: Path, receipts: list[dict]) -> list[tuple[int, str]]:
    heads: list[tuple[int, str]] = []
    log = AuditLog(path, KEY, on_append=lambda seq, digest: heads.append((seq, digest)))
    for receipt in receipts:
        log.append(receipt)
    return heads


def _release(aggregation: int) -> dict:
    return {
        "task": "t",
        "round": aggregation,
        "aggregation": aggregation,
        "sent_masked_input": True,
        "outcome": "charged",
        "dp": {"release": {"variance": 1e6, "l2_sensitivity": 100.0, "l1_sensitivity": 1000.0}},
    }


def test_authentic_entries_beyond_a_break_are_carried(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, [_release(1), {"task": "t", "aggregation": 2, "outcome": "refused"}, _release(3)])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"garbage\n" + lines[2] + lines[1])  # a bad line, then entries out of order
    assert not verify_log(path, KEY.public_bytes).ok
    assert [e.receipt["aggregation"] for e in authentic_entries(path, KEY.public_bytes)] == [1, 3, 2]
    new_heads: list = []
    result = recover_log(path, KEY, None, "test", carry=release_receipts, on_append=lambda *h: new_heads.append(h))
    assert result.archive_head == {"seq": 1, "hash": verify_log(result.archive, KEY.public_bytes).entries[0].hash}
    assert result.carried == 2 and new_heads == [(1, result.entry.hash)]
    found, problems = audited_releases([(result.entry.time, result.entry.receipt)])
    assert [r.aggregation for r in found] == [1, 3] and problems == []


def test_an_unverifiable_head_says_why(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, [_release(1)])
    path.write_bytes(b"not json\n" + path.read_bytes())
    result = recover_log(path, KEY, None, "test", carry=release_receipts)
    assert result.archive_head == "unverifiable"
    assert "line 1: not a valid entry" in result.entry.receipt["archive_head_why"]
    assert result.carried == 1  # the entry after the bad line is authentic, and counts
    chain = verify_chain(path, KEY.public_bytes, (1, result.entry.hash))
    assert chain.ok and "head unverifiable" in " ".join(chain.archives[0].notes)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"archive": "../elsewhere.log"}, "not a file name"),
        ({"archive_head": {"seq": "one"}}, "readable form"),
    ],
)
def test_a_malformed_recovery_entry_is_a_problem(tmp_path: Path, change: dict, problem: str) -> None:
    path = tmp_path / "audit.log"
    receipt = {"kind": RECOVERY, "archive": "a", "archive_head": "unverifiable", "carried": [], **change}
    _log(path, [receipt])
    chain = verify_chain(path, KEY.public_bytes)
    assert not chain.ok and problem in " ".join(chain.problems)


def test_a_recovery_entry_in_the_middle_of_a_chain_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, [_release(1), {"kind": RECOVERY, "archive": None, "archive_head": "unverifiable", "carried": []}])
    chain = verify_chain(path, KEY.public_bytes)
    assert chain.current.ok and not chain.ok and "middle of a chain" in chain.problems[0]


def test_carried_receipts_expand_recursively() -> None:
    inner = {"kind": RECOVERY, "carried": [{"time": 1.0, "receipt": _release(1)}]}
    outer = {"kind": RECOVERY, "carried": [{"time": 2.0, "receipt": inner}, {"time": 3.0, "receipt": _release(2)}]}
    assert [(at, r["aggregation"]) for at, r in expand_carried([(9.0, outer), (10.0, _release(3))])] == [
        (1.0, 1),
        (3.0, 2),
        (10.0, 3),
    ]
    assert expand_carried([(1.0, {"kind": RECOVERY, "carried": "junk"})]) == []


def test_the_recovery_entry_is_one_json_line_signed_like_any_other(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, [_release(1)])
    path.write_bytes(path.read_bytes() + b"{broken\n")
    result = recover_log(path, KEY, (1, "00" * 32), "why", carry=release_receipts, extra={"task": "t"})
    raw = path.read_bytes()
    assert raw.count(b"\n") == 1 and json.loads(raw)["receipt"]["task"] == "t"
    assert not verify_log(path, SigningKey.generate().public_bytes).ok  # signed by the node's key only
    assert result.archive is not None and result.archive.name.startswith("audit.log.failed-")
