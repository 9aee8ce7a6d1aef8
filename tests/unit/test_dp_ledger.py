"""The node's privacy ledger: it refuses the round that would cross the budget, and never forgets a charge.

The site's total composes every release of every task at the site's one delta (adding per-task epsilons
would hold only at k x delta for k tasks).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from securefed.dp.accountant import SkellamRelease, skellam_epsilon
from securefed.dp.ledger import Budget, LedgerEntry, PrivacyLedger
from securefed.dp.mechanism import plan_skellam
from securefed.errors import InvalidParameter, PrivacyBudgetExhausted, SecureFedError, StorageError

DELTA = 1e-5
# One release of noise multiplier 3 (sd / D2): about 1.6 epsilon alone at delta 1e-5.
RELEASE = SkellamRelease(variance=(3.0 * 1000.0) ** 2, l2_sensitivity=1000.0, l1_sensitivity=30_000.0)
MECHANISM = {"mechanism": "skellam", "noise_multiplier": 3.0}


def _epsilon(k: int, release: SkellamRelease = RELEASE) -> float:
    return skellam_epsilon([release] * k, DELTA)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite"


def _rows(path: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT task, round, aggregation FROM charges ORDER BY id").fetchall()
    finally:
        db.close()


def test_refuses_the_round_that_would_cross_the_budget_and_writes_nothing(path: Path) -> None:
    limit = (_epsilon(3) + _epsilon(4)) / 2  # three rounds fit, a fourth would not
    ledger = PrivacyLedger(path, Budget(max_epsilon=limit, max_epsilon_total=100.0))
    spent = [ledger.charge("task-a", k, 10 + k, RELEASE, MECHANISM, f"hash{k}") for k in (1, 2, 3)]
    assert spent == pytest.approx([_epsilon(1), _epsilon(2), _epsilon(3)], rel=1e-12)
    assert spent[-1] <= limit
    with pytest.raises(PrivacyBudgetExhausted) as refused:
        ledger.charge("task-a", 4, 14, RELEASE, MECHANISM, "hash4")
    assert isinstance(refused.value, SecureFedError)
    message = str(refused.value)
    assert f"{_epsilon(4):.3f}" in message and f"limit of {limit:g}" in message, message
    assert len(ledger.entries()) == 3 and len(_rows(path)) == 3  # no row for the refused round
    assert ledger.spent("task-a") == pytest.approx(_epsilon(3), rel=1e-12)
    with pytest.raises(PrivacyBudgetExhausted):
        ledger.check("task-a", RELEASE)
    # a smaller release may still fit, and the refusal left the ledger usable
    small = SkellamRelease(RELEASE.variance * 1e4, RELEASE.l2_sensitivity, RELEASE.l1_sensitivity)
    assert ledger.charge("task-a", 4, 15, small, MECHANISM, "hash4b") <= limit
    ledger.close()


def test_spent_is_recomputed_from_the_rows(path: Path) -> None:
    ledger = PrivacyLedger(path, Budget(50.0, 50.0))
    releases = [RELEASE, SkellamRelease(4e6, 500.0, 5000.0), SkellamRelease(1e5, 100.0, 300.0)]
    for k, release in enumerate(releases, start=1):
        ledger.charge("t", k, k, release, MECHANISM, "h")
    assert ledger.spent("t") == pytest.approx(skellam_epsilon(releases, DELTA), rel=1e-12)
    assert ledger.entries()[-1].epsilon_task == pytest.approx(skellam_epsilon(releases, DELTA), rel=1e-12)
    ledger.close()
    # Another site's delta gives another epsilon from the same rows: the ledger never stores "the" epsilon only.
    reopened = PrivacyLedger(path, Budget(50.0, 50.0, delta=1e-7))
    assert reopened.spent("t") == pytest.approx(skellam_epsilon(releases, 1e-7), rel=1e-12)
    reopened.close()


def test_per_task_and_total_limits(path: Path) -> None:
    one, two, three, four = _epsilon(1), _epsilon(2), _epsilon(3), _epsilon(4)
    # The site's total composes all releases of all tasks: three releases cost ``three`` whatever their tasks.
    budget = Budget(max_epsilon=two * 1.01, max_epsilon_total=(three + four) / 2)
    ledger = PrivacyLedger(path, budget)
    ledger.charge("a", 1, 1, RELEASE, MECHANISM, "h")
    ledger.charge("a", 2, 2, RELEASE, MECHANISM, "h")
    with pytest.raises(PrivacyBudgetExhausted, match="this task's epsilon"):
        ledger.charge("a", 3, 3, RELEASE, MECHANISM, "h")
    # Task b is fresh, so its own epsilon is small; the site's total (all releases composed) is the limit.
    assert ledger.charge("b", 1, 1, RELEASE, MECHANISM, "h") == pytest.approx(one)
    assert ledger.spent_total() == pytest.approx(three, rel=1e-12)
    assert three < two + one  # tighter than adding the tasks' epsilons (which would hold only at 2 delta)
    with pytest.raises(PrivacyBudgetExhausted, match="site's total epsilon") as refused:
        ledger.charge("b", 2, 2, RELEASE, MECHANISM, "h")
    assert f"{budget.max_epsilon_total:g}" in str(refused.value) and f"{four:.3f}" in str(refused.value)
    assert ledger.spent("b") == pytest.approx(one)
    assert ledger.preview("b", RELEASE) == pytest.approx((two, four), rel=1e-12)
    assert [e.epsilon_total for e in ledger.entries()] == pytest.approx([one, two, three], rel=1e-12)
    ledger.close()


def test_site_total_composes_every_release_of_every_task_at_the_sites_delta(path: Path) -> None:
    """Issue 10, finding 4: three tasks of ten rounds each, every one at the demo's plan (epsilon 8 over 10
    rounds). The old total added the per-task epsilons (3 x 7.997 = 23.99), which holds only at 3 delta; the
    total at the site's delta composes all 30 releases: 15.85. The site's max_epsilon_total is checked
    against that figure."""
    release = plan_skellam(8.0, DELTA, 10, 0.5, 650, 5, 3).release
    per_task = skellam_epsilon([release] * 10, DELTA)
    composed = skellam_epsilon([release] * 30, DELTA)
    assert per_task == pytest.approx(7.9966, abs=1e-3)
    assert composed == pytest.approx(15.85, abs=0.01)
    assert 3 * per_task == pytest.approx(23.99, abs=0.01)
    # A site total of 16 admits all thirty releases (the old sum crossed it in the third task).
    ledger = PrivacyLedger(path, Budget(max_epsilon=8.0, max_epsilon_total=16.0))
    aggregation = 0
    for task in ("a", "b", "c"):
        for k in range(1, 11):
            aggregation += 1
            ledger.charge(task, k, aggregation, release, MECHANISM, "h")
    assert len(ledger.entries()) == 30
    assert {task: ledger.spent(task) for task in "abc"} == pytest.approx(dict.fromkeys("abc", per_task), rel=1e-12)
    assert ledger.spent_total() == pytest.approx(composed, rel=1e-12)
    assert ledger.entries()[-1].epsilon_total == pytest.approx(composed, rel=1e-12)
    assert ledger.spent_total() < 16.0 < 3 * per_task
    # the preview and the check use the same composition
    assert ledger.preview("d", release) == pytest.approx(
        (skellam_epsilon([release], DELTA), skellam_epsilon([release] * 31, DELTA)), rel=1e-12
    )
    ledger.close()
    # Another delta composes the same rows again, at that delta.
    other = PrivacyLedger(path, Budget(8.0, 100.0, delta=1e-7))
    assert other.spent_total() == pytest.approx(skellam_epsilon([release] * 30, 1e-7), rel=1e-12)
    other.close()


def test_entries_order_and_content(path: Path) -> None:
    ledger = PrivacyLedger(path, Budget(100.0, 100.0))
    ledger.charge("a", 1, 3, RELEASE, {"mechanism": "skellam", "note": "first"}, "aa" * 32)
    ledger.charge("b", 1, 1, RELEASE, MECHANISM, "bb" * 32)
    ledger.charge("a", 2, 5, RELEASE, MECHANISM, "cc" * 32)
    entries = ledger.entries()
    assert [(e.task, e.round, e.aggregation) for e in entries] == [("a", 1, 3), ("b", 1, 1), ("a", 2, 5)]
    first = entries[0]
    assert isinstance(first, LedgerEntry)
    assert first.mechanism == {"mechanism": "skellam", "note": "first"}
    assert first.model_hash == "aa" * 32
    assert first.epsilon_task == pytest.approx(_epsilon(1)) and first.epsilon_total == pytest.approx(_epsilon(1))
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    assert [(e.round, e.aggregation) for e in ledger.entries("a")] == [(1, 3), (2, 5)]
    assert [e.task for e in ledger.entries("b")] == ["b"]
    assert ledger.entries("nobody") == []
    assert ledger.spent("nobody") == 0.0
    ledger.close()


def test_reopen_keeps_everything_and_applies_the_new_budget(path: Path) -> None:
    ledger = PrivacyLedger(path, Budget(100.0, 100.0))
    for k in (1, 2):
        ledger.charge("a", k, k, RELEASE, MECHANISM, "h")
    before = ledger.entries()
    ledger.close()
    reopened = PrivacyLedger(path, Budget(max_epsilon=_epsilon(2) * 1.01, max_epsilon_total=100.0))
    assert reopened.entries() == before
    assert reopened.spent("a") == pytest.approx(_epsilon(2))
    with pytest.raises(PrivacyBudgetExhausted):  # the lowered limit counts what was spent before
        reopened.charge("a", 3, 3, RELEASE, MECHANISM, "h")
    reopened.close()


def test_same_aggregation_cannot_be_charged_twice(path: Path) -> None:
    """A second release for one (task, aggregation) would go unaccounted: refused like one beyond the budget,
    with a message that says so (it used to escape as a raw sqlite3.IntegrityError)."""
    ledger = PrivacyLedger(path, Budget(100.0, 100.0))
    ledger.charge("a", 1, 7, RELEASE, MECHANISM, "h")
    with pytest.raises(PrivacyBudgetExhausted, match="already records a release for task 'a' aggregation 7") as refused:
        ledger.charge("a", 1, 7, RELEASE, MECHANISM, "h")
    assert not isinstance(refused.value, sqlite3.Error) and "second release" in str(refused.value)
    assert len(ledger.entries()) == 1
    ledger.charge("a", 2, 8, RELEASE, MECHANISM, "h")  # rolled back cleanly: still usable
    assert len(ledger.entries()) == 2
    ledger.close()


def test_garbage_file_is_refused_with_a_message(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, " * 200)
    with pytest.raises(StorageError, match="unreadable") as refused:  # a run-time failure, not a bad parameter
        PrivacyLedger(path, Budget(1.0, 1.0))
    assert str(path) in str(refused.value) and "do not delete" in str(refused.value)
    assert path.read_bytes().startswith(b"this is not a database")  # left alone for the operator


def test_damaged_data_pages_are_refused_with_a_message(path: Path) -> None:
    ledger = PrivacyLedger(path, Budget(1e9, 1e9))
    for k in range(1, 30):
        ledger.charge("a", k, k, RELEASE, {"mechanism": "skellam", "padding": "x" * 2000}, "h" * 64)
    ledger.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[3 * page : 6 * page] = bytes((i * 37 + 11) % 256 for i in range(3 * page))
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="unreadable"):
        damaged = PrivacyLedger(path, Budget(1e9, 1e9))
        damaged.spent("a")


def test_charge_is_durable_before_it_returns(path: Path) -> None:
    """A process that charges and dies at once (no close, no cleanup) leaves the row behind."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from securefed.dp.accountant import SkellamRelease
        from securefed.dp.ledger import Budget, PrivacyLedger
        ledger = PrivacyLedger({str(path)!r}, Budget(100.0, 100.0))
        release = SkellamRelease({RELEASE.variance!r}, {RELEASE.l2_sensitivity!r}, {RELEASE.l1_sensitivity!r})
        for k in (1, 2):
            ledger.charge("crash-task", k, 40 + k, release, {{"mechanism": "skellam"}}, "h")
        os._exit(9)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr
    assert _rows(path) == [("crash-task", 1, 41), ("crash-task", 2, 42)]
    ledger = PrivacyLedger(path, Budget(100.0, 100.0))
    assert ledger.spent("crash-task") == pytest.approx(_epsilon(2))
    ledger.close()


def test_connection_is_synchronous_full_in_wal_mode(path: Path) -> None:
    """What makes the commit durable against power loss, not just a process crash."""
    ledger = PrivacyLedger(path, Budget(1.0, 1.0))
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ledger.close()


@pytest.mark.parametrize(
    ("max_epsilon", "max_total", "delta"),
    [(0.0, 1.0, DELTA), (1.0, -1.0, DELTA), (float("nan"), 1.0, DELTA), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0)],
)
def test_bad_budgets_are_refused(max_epsilon: float, max_total: float, delta: float) -> None:
    with pytest.raises(InvalidParameter):
        Budget(max_epsilon, max_total, delta)


def test_unlimited_budget_still_records(path: Path) -> None:
    ledger = PrivacyLedger(path, Budget(float("inf"), float("inf")))
    for k in range(1, 6):
        ledger.charge("a", k, k, RELEASE, MECHANISM, "h")
    assert len(ledger.entries()) == 5 and ledger.spent("a") == pytest.approx(_epsilon(5))
    ledger.close()
    assert os.path.exists(path)
