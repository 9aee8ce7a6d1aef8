"""The node's privacy ledger: a durable record of every DP release it took part in.

One SQLite row per round, written (fsync'd, ``synchronous=FULL``) *before*
the node's masked input leaves it: a crash after the row commits overstates
what was spent, never understates it. The epsilon a task has cost is
recomputed from the rows (Renyi DP adds up over rounds, whatever their
parameters) at the site's own delta, never taken from the coordinator; the
site's total composes every release of every task at that same delta.

A damaged, locked or unwritable ledger raises :class:`StorageError` (never a
raw ``sqlite3`` error). Charging one (task, aggregation) a second time raises
:class:`PrivacyBudgetExhausted`: a second release for one aggregation would go
unaccounted, so the node refuses it as it refuses one beyond its budget.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from securefed._db import StorageGuard, open_durable
from securefed.audit.log import expand_carried
from securefed.dp.accountant import SkellamRelease, skellam_epsilon
from securefed.errors import InvalidParameter, PrivacyBudgetExhausted, StorageError

__all__ = ["AuditedRelease", "Budget", "LedgerEntry", "PrivacyLedger", "audited_releases", "release_receipts"]

_WHAT = "privacy ledger"
_ADVICE = "do not delete it: restore it from a backup"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    round INTEGER NOT NULL,
    aggregation INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    variance REAL NOT NULL,
    l2_sensitivity REAL NOT NULL,
    l1_sensitivity REAL NOT NULL,
    sampling_rate REAL NOT NULL DEFAULT 1.0,
    unit TEXT NOT NULL DEFAULT 'site',
    epsilon_task REAL NOT NULL,
    epsilon_total REAL NOT NULL,
    delta REAL NOT NULL,
    model_hash TEXT NOT NULL,
    at REAL NOT NULL,
    UNIQUE (task, aggregation)
);
"""


@dataclass(frozen=True)
class Budget:
    """The site's limits: epsilon per task and over all tasks, at the site's delta."""

    max_epsilon: float
    max_epsilon_total: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (self.max_epsilon > 0 and self.max_epsilon_total > 0 and 0 < self.delta < 1):
            raise InvalidParameter("privacy budget needs positive epsilons and 0 < delta < 1")


@dataclass(frozen=True)
class LedgerEntry:
    task: str
    round: int
    aggregation: int
    mechanism: dict
    epsilon_task: float
    epsilon_total: float
    model_hash: str
    at: float


class PrivacyLedger:
    """Append-only record of charges; refuses any charge that would cross the budget."""

    def __init__(self, path: str | Path, budget: Budget) -> None:
        self.path = Path(path)
        self.budget = budget
        self._guard = StorageGuard(self.path, _WHAT, _ADVICE)
        self._db = open_durable(self.path, _SCHEMA, _WHAT, _ADVICE)
        self._add_unit_columns()

    def _add_unit_columns(self) -> None:
        """A ledger written before record-level DP lacks the sampling rate and unit: every row it has is a
        site-level release (sampling rate 1), which is what the defaults say."""
        present = {str(row[1]) for row in self._all("PRAGMA table_info(charges)")}
        added = [
            (name, declaration)
            for name, declaration in (("sampling_rate", "REAL NOT NULL DEFAULT 1.0"), ("unit", "TEXT NOT NULL DEFAULT 'site'"))
            if name not in present
        ]
        if not added:
            return
        self._begin()
        try:
            for name, declaration in added:
                with self._guard:
                    self._db.execute(f"ALTER TABLE charges ADD COLUMN {name} {declaration}")
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def close(self) -> None:
        self._db.close()

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._guard:
            return self._db.execute(sql, args).fetchall()

    def _begin(self) -> None:
        with self._guard:
            self._db.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        with self._guard:
            self._db.execute("COMMIT")

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # already rolled back by SQLite itself

    def _releases(self, task: str | None) -> dict[str, list[SkellamRelease]]:
        query = "SELECT task, variance, l2_sensitivity, l1_sensitivity, sampling_rate FROM charges"
        rows = self._all(query + (" WHERE task = ?" if task else ""), (task,) if task else ())
        grouped: dict[str, list[SkellamRelease]] = {}
        for name, variance, l2, l1, rate in rows:
            grouped.setdefault(name, []).append(SkellamRelease(variance, l2, l1, rate))
        return grouped

    def spent(self, task: str) -> float:
        """epsilon this task has cost so far, at the site's delta."""
        return skellam_epsilon(self._releases(task).get(task, []), self.budget.delta)

    def spent_total(self) -> float:
        """Over all tasks: every release of every task composed together, at the site's one delta.

        (Adding per-task epsilons would hold only at k x delta for k tasks, and is looser besides.)
        """
        return skellam_epsilon([release for releases in self._releases(None).values() for release in releases], self.budget.delta)

    def preview(self, task: str, release: SkellamRelease) -> tuple[float, float]:
        """(task epsilon, site total epsilon) if ``release`` were charged now."""
        grouped = self._releases(None)
        own = grouped.get(task, [])
        everything = [r for releases in grouped.values() for r in releases]
        task_epsilon = skellam_epsilon([*own, release], self.budget.delta)
        total = skellam_epsilon([*everything, release], self.budget.delta)
        return task_epsilon, total

    def check(self, task: str, release: SkellamRelease) -> tuple[float, float]:
        """Raise :class:`PrivacyBudgetExhausted` if charging ``release`` would cross a limit."""
        task_epsilon, total = self.preview(task, release)
        if task_epsilon > self.budget.max_epsilon:
            raise PrivacyBudgetExhausted(
                f"taking part would raise this task's epsilon to {task_epsilon:.3f}, above the site's limit of "
                f"{self.budget.max_epsilon:g} (spent so far: {self.spent(task):.3f})"
            )
        if total > self.budget.max_epsilon_total:
            raise PrivacyBudgetExhausted(
                f"taking part would raise the site's total epsilon to {total:.3f}, above its limit of "
                f"{self.budget.max_epsilon_total:g}"
            )
        return task_epsilon, total

    def charge(
        self, task: str, round_number: int, aggregation: int, release: SkellamRelease, mechanism: dict, model_hash: str
    ) -> float:
        """Durably record a release before it happens; returns the task's epsilon including it.

        Raises :class:`PrivacyBudgetExhausted` (nothing written) when the release would cross a limit,
        or when this (task, aggregation) is charged already: a second release for one aggregation
        would not be accounted for. :class:`StorageError` if the ledger cannot be written.
        """
        self._begin()
        try:
            earlier = self._all("SELECT round, at FROM charges WHERE task = ? AND aggregation = ?", (task, aggregation))
            if earlier:
                raise PrivacyBudgetExhausted(
                    f"the privacy ledger {self.path} already records a release for task {task!r} aggregation "
                    f"{aggregation} (round {earlier[0][0]}); a second release for the same aggregation would go "
                    "unaccounted, so it is refused"
                )
            task_epsilon, total = self.check(task, release)
            self._write(
                "INSERT INTO charges (task, round, aggregation, mechanism, variance, l2_sensitivity, l1_sensitivity, "
                "sampling_rate, unit, epsilon_task, epsilon_total, delta, model_hash, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    task,
                    round_number,
                    aggregation,
                    json.dumps(mechanism, sort_keys=True),
                    release.variance,
                    release.l2_sensitivity,
                    release.l1_sensitivity,
                    release.sampling_rate,
                    str(mechanism.get("unit", "site")),
                    task_epsilon,
                    total,
                    self.budget.delta,
                    model_hash,
                    time.time(),
                ),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return task_epsilon

    def _write(self, sql: str, args: tuple) -> None:
        try:
            with self._guard:
                self._db.execute(sql, args)
        except StorageError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):  # another process charged it in between
                raise PrivacyBudgetExhausted(
                    f"the privacy ledger {self.path} already records this release ({exc.__cause__}); "
                    "a second release for the same aggregation is refused"
                ) from None
            raise

    def recorded(self) -> set[tuple[str, int]]:
        """(task, aggregation) of every row."""
        return {(task, int(aggregation)) for task, aggregation in self._all("SELECT task, aggregation FROM charges")}

    def missing(self, audited: list[AuditedRelease]) -> list[AuditedRelease]:
        """The releases the site's audit log records that this ledger lacks (it was deleted or replaced)."""
        have = self.recorded()
        return [release for release in audited if (release.task, release.aggregation) not in have]

    def restore(self, releases: list[AuditedRelease]) -> int:
        """Put back rows for releases the audit log proves happened (no budget check: they did happen)."""
        added = 0
        self._begin()
        try:
            for item in releases:
                if (item.task, item.aggregation) in self.recorded():
                    continue
                previous = self._releases(None)
                own = previous.get(item.task, [])
                everything = [r for group in previous.values() for r in group]
                task_epsilon = skellam_epsilon([*own, item.release], self.budget.delta)
                total = skellam_epsilon([*everything, item.release], self.budget.delta)
                self._write(
                    "INSERT INTO charges (task, round, aggregation, mechanism, variance, l2_sensitivity, l1_sensitivity, "
                    "sampling_rate, unit, epsilon_task, epsilon_total, delta, model_hash, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.task, item.round, item.aggregation, json.dumps(item.mechanism, sort_keys=True),
                        item.release.variance, item.release.l2_sensitivity, item.release.l1_sensitivity,
                        item.release.sampling_rate, str(item.mechanism.get("unit", "site")),
                        task_epsilon, total, self.budget.delta, item.model_hash, item.at,
                    ),
                )  # fmt: skip
                added += 1
            self._commit()
        except BaseException:
            self._rollback()
            raise
        return added

    def entries(self, task: str | None = None) -> list[LedgerEntry]:
        query = (
            "SELECT task, round, aggregation, mechanism, epsilon_task, epsilon_total, model_hash, at FROM charges"
            + (" WHERE task = ?" if task else "")
            + " ORDER BY id"
        )
        rows = self._all(query, (task,) if task else ())
        try:
            return [LedgerEntry(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7]) for r in rows]
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{_WHAT} {self.path} is unreadable ({exc}); {_ADVICE}") from None


@dataclass(frozen=True)
class AuditedRelease:
    """A DP release as the site's signed audit log records it."""

    task: str
    round: int
    aggregation: int
    release: SkellamRelease
    mechanism: dict
    model_hash: str
    at: float


def release_receipts(receipts: list[tuple[float, dict]]) -> list[tuple[float, dict]]:
    """The receipts ``(time, receipt)`` that record a DP release, one per (task, aggregation).

    What an audit-log recovery carries from the archived log into the new chain (see
    :func:`securefed.audit.log.recover_log`), so that archiving never makes the site forget a release.
    """
    kept: list[tuple[float, dict]] = []
    seen: set[tuple[object, object]] = set()
    for at, receipt in expand_carried(receipts):
        if not receipt.get("dp") or not receipt.get("sent_masked_input"):
            continue
        key = (receipt.get("task"), receipt.get("aggregation"))
        if key in seen:  # the "charged" receipt and the round's closing receipt name one release
            continue
        seen.add(key)
        kept.append((at, receipt))
    return kept


def audited_releases(receipts: list[tuple[float, dict]]) -> tuple[list[AuditedRelease], list[str]]:
    """The DP releases in audit receipts ``(time, receipt)``, and the problems that stop rebuilding any.

    A receipt counts when the node sent (or was about to send: the receipt written right after the
    ledger charge) its noised masked input under DP; one release per (task, aggregation). Its ``dp`` field
    carries the release's variance and sensitivities (receipts written before they were recorded
    there cannot be rebuilt from, and are reported). The receipts a recovery entry carries from an
    archived log count like the others.
    """
    found: list[AuditedRelease] = []
    problems: list[str] = []
    for at, receipt in release_receipts(receipts):
        mechanism = receipt["dp"]
        where = f"task {receipt.get('task')!r} aggregation {receipt.get('aggregation')}"
        numbers = mechanism.get("release") if isinstance(mechanism, dict) else None
        missing = f"{where}: the receipt does not carry the release's noise and sensitivity"
        if not isinstance(numbers, dict):
            problems.append(missing)
            continue
        try:
            release = SkellamRelease(
                float(numbers["variance"]),
                float(numbers["l2_sensitivity"]),
                float(numbers["l1_sensitivity"]),
                float(numbers.get("sampling_rate", 1.0)),  # absent: a site-level release
            )
            found.append(
                AuditedRelease(
                    str(receipt["task"]), int(receipt["round"]), int(receipt["aggregation"]), release,
                    dict(mechanism), str(receipt.get("model_hash", "")), float(at),
                )
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, InvalidParameter):
            problems.append(missing)
    return found, problems
