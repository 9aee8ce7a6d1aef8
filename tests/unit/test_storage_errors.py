"""Storage behind store objects (issue 12): a store raises StorageError, saying what to do, never a raw sqlite3 error.

Damaged files, a database locked by another process, writes through a read-only store and a second charge
for one (task, aggregation) (which used to escape as a raw ``sqlite3.IntegrityError``) each give one of our
errors. Damaged state used to raise ``InvalidParameter``; it is a run-time failure, not a bad parameter, so it
is a :class:`StorageError` now.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from securefed.dp.accountant import SkellamRelease
from securefed.dp.ledger import Budget, PrivacyLedger
from securefed.errors import InvalidParameter, PrivacyBudgetExhausted, SecureFedError, StorageError
from securefed.federation.node import NodeState
from securefed.federation.store import CoordinatorStore

RELEASE = SkellamRelease(variance=9e6, l2_sensitivity=1000.0, l1_sensitivity=30_000.0)


def _garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database, " * 200)
    return path


def _damage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[3 * 4096 : 6 * 4096] = bytes((i * 37 + 11) % 256 for i in range(3 * 4096))
    path.write_bytes(bytes(data))


def _full_store(path: Path) -> None:
    store = CoordinatorStore(path)
    try:
        store.save_initial_model(np.zeros(2000))
        for round_number in range(1, 8):
            aggregation = store.next_aggregation(round_number, "train")
            store.record_refusal(aggregation, "site-1", "policy", "x" * 3000)
            store.commit_round(round_number, np.full(2000, round_number, float), None, aggregation, ["a"], 1, 1.0, None, 1.0)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("opener", "name", "advice"),
    [
        (lambda path: CoordinatorStore(path), "coordinator state", "restore it from a backup or move it away"),
        (lambda path: PrivacyLedger(path, Budget(1.0, 1.0)), "privacy ledger", "do not delete it"),
        (lambda path: NodeState(path), "node state", "move it away"),
    ],
)
def test_a_file_that_is_not_a_database_is_a_storage_error_naming_it_and_what_to_do(
    tmp_path: Path, opener: Callable, name: str, advice: str
) -> None:
    path = _garbage(tmp_path / "state" / "file.sqlite")
    with pytest.raises(StorageError) as refused:
        opener(path)
    message = str(refused.value)
    assert name in message and str(path) in message and advice in message, message
    assert not isinstance(refused.value, (sqlite3.Error, InvalidParameter))  # a run-time failure, not a parameter
    assert path.read_bytes().startswith(b"this is not a database")  # left alone for the operator


def _store_calls(store: CoordinatorStore) -> list[Callable[[], object]]:
    return [
        store.rounds,
        store.latest_model,
        store.refusals,
        lambda: store.recent_refusals(3),
        store.attempts,
        store.attempt_counts,
        store.dp_releases,
        store.pending_unmask_state,
        lambda: store.next_aggregation(9, "train"),
        lambda: store.record_refusal(1, "n", "r", "d"),
        lambda: store.abort_interrupted(),
        lambda: store.commit_round(9, np.zeros(2000), None, 99, ["a"], 1, 1.0, None, 1.0),
    ]


def _no_raw_sqlite_error(calls: list[Callable[[], object]]) -> list[str]:
    raised = []
    for call in calls:
        try:
            call()
        except StorageError as exc:
            raised.append(str(exc))
        except sqlite3.Error as exc:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"raw sqlite3 error escaped: {exc!r}")
    return raised


def test_damaged_pages_of_the_coordinator_store_never_raise_a_raw_sqlite_error(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    _full_store(path)
    _damage_pages(path)
    with pytest.raises(StorageError, match=r"unreadable .*restore it from a backup"):
        CoordinatorStore(path)  # found at open (quick_check)
    reader = CoordinatorStore(path, read_only=True)  # what `securefed status` opens: no check at open
    try:
        raised = _no_raw_sqlite_error(_store_calls(reader))
        assert raised and all(str(path) in message for message in raised), raised  # reads of intact pages may work
    finally:
        reader.close()


def test_pages_damaged_under_an_open_store_never_raise_a_raw_sqlite_error(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    _full_store(path)
    store = CoordinatorStore(path)
    try:
        _damage_pages(path)  # a disk fault while the daemon runs
        _no_raw_sqlite_error(_store_calls(store))
    finally:
        store.close()


def test_a_damaged_ledger_raises_storage_error_from_every_call(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = PrivacyLedger(path, Budget(1e9, 1e9))
    for k in range(1, 30):
        ledger.charge("a", k, k, RELEASE, {"padding": "x" * 2000}, "h")
    ledger.close()
    _damage_pages(path)
    try:
        damaged = PrivacyLedger(path, Budget(1e9, 1e9))
    except StorageError as refused:
        assert "unreadable" in str(refused) and "restore it from a backup" in str(refused)
        return
    try:
        for call in (
            lambda: damaged.spent("a"),
            damaged.spent_total,
            damaged.entries,
            damaged.recorded,
            lambda: damaged.charge("a", 99, 99, RELEASE, {}, "h"),
        ):
            with pytest.raises(StorageError):
                call()
    finally:
        damaged.close()


def test_a_locked_store_says_so(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    store = CoordinatorStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        store._db.execute("PRAGMA busy_timeout = 50")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match="is locked by another process") as refused:
            store.next_aggregation(1, "train")
        assert "only one daemon" in str(refused.value)
        other.execute("ROLLBACK")
        assert store.next_aggregation(1, "train") == 1  # nothing was left half-done
    finally:
        other.close()
        store.close()


def test_a_locked_ledger_refuses_the_charge_and_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = PrivacyLedger(path, Budget(100.0, 100.0))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        ledger._db.execute("PRAGMA busy_timeout = 50")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageError, match="locked"):
            ledger.charge("a", 1, 1, RELEASE, {}, "h")
        other.execute("ROLLBACK")
        ledger.charge("a", 1, 1, RELEASE, {}, "h")
        assert len(ledger.entries()) == 1
    finally:
        other.close()
        ledger.close()


def test_charging_one_aggregation_twice_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """It used to raise a raw sqlite3.IntegrityError. A second release for one (task, aggregation) would go
    unaccounted: it is refused as PrivacyBudgetExhausted (the node turns that into a refusal of the round)."""
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", Budget(100.0, 100.0))
    try:
        ledger.charge("task", 1, 5, RELEASE, {}, "h")
        with pytest.raises(PrivacyBudgetExhausted) as refused:
            ledger.charge("task", 1, 5, RELEASE, {}, "h")
        assert "already records a release for task 'task' aggregation 5" in str(refused.value)
        assert isinstance(refused.value, SecureFedError) and not isinstance(refused.value, sqlite3.Error)
        # another process charging it between our check and our insert: the same answer
        other = PrivacyLedger(tmp_path / "ledger.sqlite", Budget(100.0, 100.0))
        try:
            other._all = lambda sql, args=(): [] if "aggregation = ?" in sql else PrivacyLedger._all(other, sql, args)
            with pytest.raises(PrivacyBudgetExhausted, match="already records this release"):
                other.charge("task", 1, 5, RELEASE, {}, "h")
        finally:
            other.close()
        assert len(ledger.entries()) == 1 and ledger.charge("task", 2, 6, RELEASE, {}, "h") > 0
    finally:
        ledger.close()


def test_a_read_only_store_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    _full_store(path)
    reader = CoordinatorStore(path, read_only=True)
    try:
        assert [r.round for r in reader.rounds()] == list(range(1, 8))
        assert reader.latest_model()[0] == 7
        assert [r.aggregation for r in reader.recent_refusals(2)] == [7, 6]
        for write in (lambda: reader.next_aggregation(9, "train"), lambda: reader.record_refusal(1, "n", "r", "d")):
            with pytest.raises(StorageError, match="read-only"):
                write()
    finally:
        reader.close()
    with pytest.raises(StorageError, match="does not exist"):
        CoordinatorStore(tmp_path / "missing.sqlite", read_only=True)


def test_a_model_that_fails_its_checksum_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    _full_store(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE models SET sha256 = 'x' WHERE round = 7")
    db.commit()
    db.close()
    store = CoordinatorStore(path)
    try:
        with pytest.raises(StorageError, match="round 7 fails its checksum"):
            store.latest_model()
    finally:
        store.close()


def test_a_closed_store_is_a_storage_error_that_does_not_blame_the_file(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "coordinator.sqlite")
    store.close()
    with pytest.raises(StorageError, match="bug in securefed, not a damaged file"):
        store.rounds()
