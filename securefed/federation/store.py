"""The coordinator's durable state: global model, round history, aggregation ids, refusals.

SQLite in WAL mode with ``synchronous=FULL``: a round is committed in one
transaction (history row, model, strategy state), so after a kill -9 at any
moment the coordinator reopens either before or after that round, never in
between. Model arrays are stored as raw little-endian float64 bytes with
their SHA-256, checked when read; strategy state as ``.npz`` bytes read
with ``allow_pickle=False``. Nothing here can execute stored data.

All of the coordinator's SQL lives here. Every statement runs under a
:class:`~securefed._db.StorageGuard`: a damaged, locked or unwritable file
raises :class:`~securefed.errors.StorageError` saying what to do, never a raw
``sqlite3`` error. ``CoordinatorStore(path, read_only=True)`` opens the file
for reading only (``securefed status`` uses it while the daemon writes), and
numpy is imported only by the methods that handle model arrays, so reading
the history stays fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from securefed._db import StorageGuard, open_durable, open_readonly
from securefed.errors import InvalidParameter, StorageError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Attempt", "CoordinatorStore", "Refusal", "RoundRecord"]

_WHAT = "coordinator state"
_ADVICE = "restore it from a backup or move it away"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    round INTEGER PRIMARY KEY, weights BLOB NOT NULL, sha256 TEXT NOT NULL, strategy_state BLOB
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    aggregation INTEGER NOT NULL,
    participants INTEGER NOT NULL,
    survivors TEXT NOT NULL,
    total_weight REAL,
    accuracy REAL,
    loss REAL,
    eval_samples INTEGER,
    eval_participants INTEGER,
    epsilon REAL,
    duration REAL NOT NULL,
    completed_at REAL NOT NULL,
    stage_durations TEXT NOT NULL DEFAULT '{}',
    bytes_in INTEGER,
    bytes_out INTEGER,
    refusals INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    aggregation INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dp_releases (
    round INTEGER PRIMARY KEY,
    aggregation INTEGER NOT NULL,
    variance REAL NOT NULL,
    l2_sensitivity REAL NOT NULL,
    l1_sensitivity REAL NOT NULL,
    sampling_rate REAL NOT NULL DEFAULT 1.0
);
CREATE TABLE IF NOT EXISTS unmask_state (
    aggregation INTEGER PRIMARY KEY,
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,
    state TEXT NOT NULL,
    masked_sum BLOB NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS computation_steps (
    round INTEGER PRIMARY KEY,
    aggregation INTEGER NOT NULL,
    request_sha256 TEXT NOT NULL,
    summed BLOB NOT NULL,
    survivors INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS computation_result (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    result TEXT NOT NULL,
    model BLOB,
    model_sha256 TEXT,
    completed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refusals (
    aggregation INTEGER NOT NULL,
    node TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL
);
"""


#: What a round's ``refusals`` and ``attempts`` count, from the tables that record them (SQL for ``rounds.round``).
_REFUSALS_OF_ROUND = (
    "(SELECT COUNT(*) FROM refusals f JOIN attempts a ON a.aggregation = f.aggregation WHERE a.round = rounds.round)"
)
_ATTEMPTS_OF_ROUND = "(SELECT COUNT(*) FROM attempts a WHERE a.round = rounds.round)"

#: Columns added to ``rounds`` after the first release: (name, declaration, value for the rows that
#: predate them). A store written before is altered in place when opened for writing; opened
#: read-only, the same values are computed in the query instead.
_ADDED_ROUND_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("stage_durations", "TEXT NOT NULL DEFAULT '{}'", "'{}'"),
    ("bytes_in", "INTEGER", "NULL"),
    ("bytes_out", "INTEGER", "NULL"),
    ("refusals", "INTEGER NOT NULL DEFAULT 0", _REFUSALS_OF_ROUND),
    ("attempts", "INTEGER NOT NULL DEFAULT 0", _ATTEMPTS_OF_ROUND),
)


@dataclass(frozen=True)
class RoundRecord:
    """One completed round, as ``securefed status --history`` and the HTML report show it.

    ``stage_durations`` holds the seconds each secure-aggregation stage of the round's training
    aggregation took (``{}`` when unknown: rounds stored before it was recorded). ``bytes_in`` and
    ``bytes_out`` are the message bytes the coordinator received from and sent to nodes during the
    round's aggregations (every attempt, training and evaluation, run by the coordinator process that
    completed it; ``None`` when its socket does not count bytes). ``refusals`` and ``attempts`` count
    the refusals recorded for, and the aggregation attempts made in, that round (both phases).
    """

    round: int
    aggregation: int
    participants: int
    survivors: tuple[str, ...]
    accuracy: float | None
    loss: float | None
    epsilon: float | None
    duration: float
    stage_durations: dict[str, float] = field(default_factory=dict)
    bytes_in: int | None = None
    bytes_out: int | None = None
    completed_at: float = 0.0
    refusals: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class Attempt:
    """One aggregation attempt: ``status`` is running, completed or aborted (with ``detail``)."""

    aggregation: int
    round: int
    phase: str
    status: str
    detail: str
    started_at: float


@dataclass(frozen=True)
class Refusal:
    aggregation: int
    node: str
    reason: str
    detail: str
    at: float


#: what an attempt a restart interrupted is marked with
INTERRUPTED = "interrupted: the coordinator stopped before this attempt ended; the round is run again"


class CoordinatorStore:
    """One SQLite file per task under the coordinator's state folder.

    ``read_only=True`` opens an existing file for reading only (the schema is not applied and
    writes raise :class:`StorageError`), e.g. for ``securefed status`` while the daemon runs.
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._guard = StorageGuard(self.path, _WHAT, _ADVICE)
        if read_only:
            self._db = open_readonly(self.path, _WHAT)
        else:
            self._db = open_durable(self.path, _SCHEMA, _WHAT, _ADVICE)
            try:
                self._migrate()
            except BaseException:
                self._db.close()
                raise
        self._round_columns = self._round_select()

    @classmethod
    def open_readonly(cls, path: str | Path) -> sqlite3.Connection:
        """A raw read-only connection, for tests that inspect the tables.

        Library code reads through ``CoordinatorStore(path, read_only=True)`` instead, whose
        methods raise :class:`StorageError` rather than ``sqlite3`` errors.
        """
        return open_readonly(Path(path), _WHAT)

    def close(self) -> None:
        self._db.close()

    def _all(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._guard:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        with self._guard:
            return self._db.execute(sql, args).fetchone()

    def _write(self, sql: str, args: tuple = ()) -> None:
        if self.read_only:
            raise StorageError(f"{_WHAT} {self.path} is open read-only")
        with self._guard:
            self._db.execute(sql, args)

    # --- schema changes -------------------------------------------------------

    def _columns(self, table: str) -> set[str]:
        return {str(row[1]) for row in self._all(f"PRAGMA table_info({table})")}

    def _migrate(self) -> None:
        """Add the ``rounds`` columns a store written by an older version lacks (idempotent).

        The counts that can be told from the other tables (attempts, refusals) are filled in for the
        rounds already there; what was never measured (stage durations, bytes) stays unknown.
        """
        if "sampling_rate" not in self._columns("dp_releases"):
            with self._transaction():  # a record-level release's sampling rate; 1 is every earlier (site-level) one
                self._db.execute("ALTER TABLE dp_releases ADD COLUMN sampling_rate REAL NOT NULL DEFAULT 1.0")
        if {name for name, _, _ in _ADDED_ROUND_COLUMNS} <= self._columns("rounds"):
            return
        with self._transaction():
            present = {str(row[1]) for row in self._db.execute("PRAGMA table_info(rounds)").fetchall()}
            for name, declaration, backfill in _ADDED_ROUND_COLUMNS:
                if name in present:
                    continue
                self._db.execute(f"ALTER TABLE rounds ADD COLUMN {name} {declaration}")
                if backfill not in ("NULL", "'{}'"):
                    self._db.execute(f"UPDATE rounds SET {name} = {backfill}")

    def _round_select(self) -> str:
        """The column list that reads a ``RoundRecord``: in a read-only store written by an older
        version, the columns it lacks are computed (or defaulted) instead."""
        present = self._columns("rounds")
        added = [name if name in present else f"{backfill} AS {name}" for name, _, backfill in _ADDED_ROUND_COLUMNS]
        return ", ".join(
            [
                "round",
                "aggregation",
                "participants",
                "survivors",
                "accuracy",
                "loss",
                "epsilon",
                "duration",
                "completed_at",
                *added,
            ]
        )

    # --- meta ------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def bind_task(self, task: str, fingerprint: str) -> None:
        """Refuse to resume a state folder that belongs to another task definition."""
        stored = self.get_meta("task")
        if stored is None:
            with self._transaction():
                self.set_meta("task", task)
                self.set_meta("task_fingerprint", fingerprint)
            return
        if stored != task or self.get_meta("task_fingerprint") != fingerprint:
            raise InvalidParameter(
                f"state {self.path} belongs to task {stored!r} with a different definition; "
                "use a new state_dir for a changed task"
            )

    # --- aggregation ids ----------------------------------------------------

    def next_aggregation(self, round_number: int, phase: str) -> int:
        """A fresh aggregation id, durably recorded before it is used (never reused after a crash)."""
        with self._transaction():
            row = self._db.execute("SELECT COALESCE(MAX(aggregation), 0) FROM attempts").fetchone()
            aggregation = int(row[0]) + 1
            self._db.execute(
                "INSERT INTO attempts (aggregation, round, phase, status, started_at) VALUES (?, ?, ?, 'running', ?)",
                (aggregation, round_number, phase, time.time()),
            )
        return aggregation

    def finish_attempt(self, aggregation: int, status: str, detail: str = "") -> None:
        self._write("UPDATE attempts SET status = ?, detail = ? WHERE aggregation = ?", (status, detail, aggregation))

    def abort_interrupted(self, keep: int | None = None) -> list[int]:
        """At start-up: mark every attempt still ``running`` as aborted, except ``keep``; return their ids.

        A running attempt in a store nobody has open was interrupted by a crash or a stop: its round
        is run again under a fresh aggregation id. ``keep`` is the attempt whose unmasking the
        restarted coordinator resumes (see :meth:`pending_unmask_state`): it stays running.
        """
        with self._transaction():
            rows = self._db.execute(
                "SELECT aggregation FROM attempts WHERE status = 'running' AND aggregation IS NOT ? ORDER BY aggregation",
                (keep,),
            ).fetchall()
            self._db.execute(
                "UPDATE attempts SET status = 'aborted', detail = ? WHERE status = 'running' AND aggregation IS NOT ?",
                (INTERRUPTED, keep),
            )
        return [int(row[0]) for row in rows]

    def record_refusal(self, aggregation: int, node: str, reason: str, detail: str) -> None:
        self._write(
            "INSERT INTO refusals (aggregation, node, reason, detail, at) VALUES (?, ?, ?, ?, ?)",
            (aggregation, node, reason, detail[:2000], time.time()),
        )

    # --- unmasking that must survive a restart -------------------------------

    def save_unmask_state(self, aggregation: int, round_number: int, phase: str, state: dict, masked_sum: bytes) -> None:
        """Durably keep what finishing ``aggregation``'s unmasking needs, before any node releases a share."""
        text = json.dumps(state, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(text.encode() + masked_sum).hexdigest()
        with self._transaction():
            self._db.execute("DELETE FROM unmask_state")
            self._db.execute(
                "INSERT INTO unmask_state (aggregation, round, phase, state, masked_sum, sha256) VALUES (?, ?, ?, ?, ?, ?)",
                (aggregation, round_number, phase, text, masked_sum, digest),
            )

    def pending_unmask_state(self) -> tuple[int, int, str, dict, bytes] | None:
        """(aggregation, round, phase, state, masked sum) of an unmasking a crash interrupted, if any.

        A saved state that fails its checksum raises :class:`StorageError` (the coordinator then runs
        the round again from scratch).
        """
        row = self._one(
            "SELECT u.aggregation, u.round, u.phase, u.state, u.masked_sum, u.sha256 FROM unmask_state u "
            "JOIN attempts a ON a.aggregation = u.aggregation WHERE a.status = 'running'"
        )
        if row is None:
            return None
        aggregation, round_number, phase, text, blob, digest = row
        if hashlib.sha256(text.encode() + bytes(blob)).hexdigest() != digest:
            # Coordinator._resume_unmasking catches this and runs the round again from scratch.
            raise StorageError(f"{_WHAT} {self.path}: the saved unmasking state of aggregation {aggregation} fails its checksum")
        return int(aggregation), int(round_number), str(phase), json.loads(text), bytes(blob)

    def clear_unmask_state(self) -> None:
        self._write("DELETE FROM unmask_state")

    # --- model and rounds ---------------------------------------------------

    def save_initial_model(self, weights: np.ndarray) -> None:
        with self._transaction():
            if self._db.execute("SELECT 1 FROM models WHERE round = 0").fetchone() is None:
                self._insert_model(0, weights, None)

    def commit_round(
        self,
        round_number: int,
        weights: np.ndarray,
        strategy_state: Mapping[str, np.ndarray] | None,
        aggregation: int,
        survivors: list[str],
        participants: int,
        total_weight: float,
        epsilon: float | None,
        duration: float,
        release: tuple[float, float, float] | tuple[float, float, float, float] | None = None,
        stage_durations: Mapping[str, float] | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
    ) -> None:
        """Everything a completed round changes, in one transaction.

        ``release`` is the round's DP release as accounted (total noise variance for the honest
        survivors it was sized for, L2 and L1 sensitivity, integer domain; then the sampling rate of a
        record-level release, 1 when left out): the task's epsilon is always composed from these
        records, never from a plan. ``stage_durations`` (seconds per stage of the training
        aggregation) and ``bytes_in``/``bytes_out`` (message bytes of the round's aggregations so far)
        are history for operators; the round's attempts and refusals are counted from their own
        tables here.
        """
        with self._transaction():
            self._insert_model(round_number, weights, strategy_state)
            if release is not None:
                variance, l2, l1, *rate = release
                self._db.execute(
                    "INSERT OR REPLACE INTO dp_releases (round, aggregation, variance, l2_sensitivity, l1_sensitivity, "
                    "sampling_rate) VALUES (?, ?, ?, ?, ?, ?)",
                    (round_number, aggregation, variance, l2, l1, rate[0] if rate else 1.0),
                )
            self._history_row(
                round_number,
                aggregation,
                survivors,
                participants,
                total_weight,
                epsilon,
                duration,
                stage_durations,
                bytes_in,
                bytes_out,
            )
            # Keep the newest few models; history rows stay forever.
            self._db.execute("DELETE FROM models WHERE round > 0 AND round < ?", (round_number - 4,))

    def _history_row(
        self,
        round_number: int,
        aggregation: int,
        survivors: list[str],
        participants: int,
        total_weight: float,
        epsilon: float | None,
        duration: float,
        stage_durations: Mapping[str, float] | None,
        bytes_in: int | None,
        bytes_out: int | None,
    ) -> None:
        """Inside a transaction: a completed round's (or step's) history row, its attempt marked completed."""
        self._db.execute(
            "INSERT OR REPLACE INTO rounds (round, aggregation, participants, survivors, total_weight, "
            "epsilon, duration, completed_at, stage_durations, bytes_in, bytes_out) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                round_number,
                aggregation,
                participants,
                json.dumps(survivors),
                total_weight,
                epsilon,
                duration,
                time.time(),
                _stage_json(stage_durations),
                _byte_count(bytes_in),
                _byte_count(bytes_out),
            ),
        )
        self._db.execute("UPDATE attempts SET status = 'completed' WHERE aggregation = ?", (aggregation,))
        self._count_attempts(round_number)

    def commit_step(
        self,
        round_number: int,
        aggregation: int,
        request_sha256: str,
        summed: np.ndarray,
        survivors: list[str],
        participants: int,
        duration: float,
        stage_durations: Mapping[str, float] | None = None,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
        result: Mapping[str, object] | None = None,
        model: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """One completed compute aggregation (trees, analytics), in one transaction.

        The step's unmasked sum is kept with the digest of the request it answered: the computation
        is rebuilt from these after a restart (:meth:`computation_steps`). The history row is the
        same as a training round's, so status and the report show every kind alike. The last step
        also stores the ``result`` (JSON) and, for tree tasks, the ``model`` as plain arrays (.npz).
        """
        import numpy as np

        blob = np.ascontiguousarray(summed, dtype="<u4").tobytes()
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO computation_steps (round, aggregation, request_sha256, summed, survivors, sha256) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (round_number, aggregation, request_sha256, blob, len(survivors), hashlib.sha256(blob).hexdigest()),
            )
            self._history_row(
                round_number,
                aggregation,
                survivors,
                participants,
                float(len(survivors)),
                None,
                duration,
                stage_durations,
                bytes_in,
                bytes_out,
            )
            if result is not None:
                model_blob = None if model is None else _npz(model)
                self._db.execute(
                    "INSERT OR REPLACE INTO computation_result (id, result, model, model_sha256, completed_at) "
                    "VALUES (1, ?, ?, ?, ?)",
                    (
                        json.dumps(result, sort_keys=True, allow_nan=False),
                        model_blob,
                        None if model_blob is None else hashlib.sha256(model_blob).hexdigest(),
                        time.time(),
                    ),
                )

    def computation_steps(self) -> list[tuple[int, str, np.ndarray, int]]:
        """Every completed compute step, oldest first: (round, request digest, unmasked sum, survivors)."""
        import numpy as np

        out = []
        for round_number, digest, blob, survivors, checksum in self._all(
            "SELECT round, request_sha256, summed, survivors, sha256 FROM computation_steps ORDER BY round"
        ):
            if hashlib.sha256(blob).hexdigest() != checksum:
                raise StorageError(
                    f"{_WHAT} {self.path}: the stored sum of step {round_number} fails its checksum (the file is "
                    f"damaged); {_ADVICE}"
                )
            out.append((int(round_number), str(digest), np.frombuffer(blob, dtype="<u4").astype(np.uint32), int(survivors)))
        return out

    def computation_result(self) -> dict | None:
        """The finished computation's JSON result (None before it finishes, or for training tasks)."""
        if "computation_result" not in self._tables():
            return None
        row = self._one("SELECT result FROM computation_result WHERE id = 1")
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError as exc:
            raise StorageError(f"{_WHAT} {self.path}: the stored result is unreadable ({exc}); {_ADVICE}") from None

    def computation_model(self) -> dict[str, np.ndarray] | None:
        """A finished tree task's model as plain arrays (checksum-checked, no pickle); None if there is none."""
        import numpy as np

        if "computation_result" not in self._tables():
            return None
        row = self._one("SELECT model, model_sha256 FROM computation_result WHERE id = 1")
        if row is None or row[0] is None:
            return None
        blob, checksum = row
        if hashlib.sha256(blob).hexdigest() != checksum:
            raise StorageError(f"{_WHAT} {self.path}: the stored tree model fails its checksum (the file is damaged); {_ADVICE}")
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError) as exc:
            raise StorageError(f"{_WHAT} {self.path}: the stored tree model is unreadable ({exc}); {_ADVICE}") from None

    def _tables(self) -> set[str]:
        return {str(r[0]) for r in self._all("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def record_evaluation(
        self,
        round_number: int,
        aggregation: int,
        accuracy: float,
        loss: float,
        samples: int,
        participants: int,
        bytes_in: int | None = None,
        bytes_out: int | None = None,
    ) -> None:
        """A round's evaluation; ``bytes_in``/``bytes_out``, when given, are the round's new totals
        (its training and evaluation aggregations)."""
        with self._transaction():
            self._db.execute(
                "UPDATE rounds SET accuracy = ?, loss = ?, eval_samples = ?, eval_participants = ? WHERE round = ?",
                (accuracy, loss, samples, participants, round_number),
            )
            if bytes_in is not None or bytes_out is not None:
                self._db.execute(
                    "UPDATE rounds SET bytes_in = COALESCE(?, bytes_in), bytes_out = COALESCE(?, bytes_out) WHERE round = ?",
                    (_byte_count(bytes_in), _byte_count(bytes_out), round_number),
                )
            self._db.execute("UPDATE attempts SET status = 'completed' WHERE aggregation = ?", (aggregation,))
            self._count_attempts(round_number)

    def _count_attempts(self, round_number: int) -> None:
        """Inside a transaction: a round's attempts and refusals, counted from the tables that hold them."""
        self._db.execute(
            f"UPDATE rounds SET attempts = {_ATTEMPTS_OF_ROUND}, refusals = {_REFUSALS_OF_ROUND} WHERE round = ?",
            (round_number,),
        )

    def latest_model(self) -> tuple[int, np.ndarray, dict[str, np.ndarray] | None] | None:
        import numpy as np

        row = self._one("SELECT round, weights, sha256, strategy_state FROM models ORDER BY round DESC LIMIT 1")
        if row is None:
            return None
        round_number, blob, digest, state_blob = row
        if hashlib.sha256(blob).hexdigest() != digest:
            raise StorageError(
                f"{_WHAT} {self.path}: the stored model of round {round_number} fails its checksum (the file is "
                f"damaged); {_ADVICE}"
            )
        weights = np.frombuffer(blob, dtype="<f8").astype(np.float64)
        state = None
        if state_blob is not None:
            try:
                with np.load(io.BytesIO(state_blob), allow_pickle=False) as archive:
                    state = {name: archive[name] for name in archive.files}
            except (OSError, ValueError, EOFError) as exc:
                raise StorageError(
                    f"{_WHAT} {self.path}: the strategy state of round {round_number} is unreadable ({exc}); {_ADVICE}"
                ) from None
        return int(round_number), weights, state

    def model_rounds(self) -> list[int]:
        """Rounds whose model is still stored (0, the initial model, and the newest few), ascending."""
        return [int(r[0]) for r in self._all("SELECT round FROM models ORDER BY round")]

    def model_at(self, round_number: int) -> np.ndarray | None:
        """That round's global model, checksum-checked like :meth:`latest_model`; None once it is pruned."""
        import numpy as np

        row = self._one("SELECT weights, sha256 FROM models WHERE round = ?", (round_number,))
        if row is None:
            return None
        blob, digest = row
        if hashlib.sha256(blob).hexdigest() != digest:
            raise StorageError(
                f"{_WHAT} {self.path}: the stored model of round {round_number} fails its checksum (the file is "
                f"damaged); {_ADVICE}"
            )
        return np.frombuffer(blob, dtype="<f8").astype(np.float64)

    def dp_releases(self) -> list[tuple[int, float, float, float, float]]:
        """(round, variance, L2 sensitivity, L1 sensitivity, sampling rate) of every DP release made, in round
        order; the sampling rate is 1 for site-level releases (and in stores from before record-level DP)."""
        rate = "sampling_rate" if "sampling_rate" in self._columns("dp_releases") else "1.0"
        rows = self._all(f"SELECT round, variance, l2_sensitivity, l1_sensitivity, {rate} FROM dp_releases ORDER BY round")
        return [(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows]

    def rounds(self) -> list[RoundRecord]:
        """Every completed round, oldest first (the history ``securefed status --history`` prints)."""
        return self._records(self._all(f"SELECT {self._round_columns} FROM rounds ORDER BY round"))

    def latest_round(self) -> RoundRecord | None:
        """The newest completed round, if any (cheap: the metrics endpoint reads it every second)."""
        records = self._records(self._all(f"SELECT {self._round_columns} FROM rounds ORDER BY round DESC LIMIT 1"))
        return records[0] if records else None

    def _records(self, rows: list[tuple]) -> list[RoundRecord]:
        try:
            return [_round_record(row) for row in rows]
        except (TypeError, ValueError) as exc:
            raise StorageError(f"{_WHAT} {self.path}: the round history is unreadable ({exc}); {_ADVICE}") from None

    def refusals(self) -> list[tuple[int, str, str, str]]:
        return self._all("SELECT aggregation, node, reason, detail FROM refusals ORDER BY rowid")

    def refusal_counts(self) -> dict[str, int]:
        """How many refusals were recorded, by reason."""
        return {str(reason): int(count) for reason, count in self._all("SELECT reason, COUNT(*) FROM refusals GROUP BY reason")}

    def recent_refusals(self, limit: int = 5) -> list[Refusal]:
        """The newest ``limit`` refusals, newest first."""
        rows = self._all("SELECT aggregation, node, reason, detail, at FROM refusals ORDER BY rowid DESC LIMIT ?", (limit,))
        return [Refusal(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4])) for r in rows]

    def attempts(self, status: str | None = None) -> list[Attempt]:
        """Every aggregation attempt (or those with ``status``), oldest first."""
        query = "SELECT aggregation, round, phase, status, detail, started_at FROM attempts"
        rows = self._all(query + (" WHERE status = ?" if status else "") + " ORDER BY aggregation", (status,) if status else ())
        return [Attempt(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), float(r[5])) for r in rows]

    def attempt_counts(self) -> dict[str, int]:
        """How many attempts are running, completed and aborted."""
        return {str(status): int(count) for status, count in self._all("SELECT status, COUNT(*) FROM attempts GROUP BY status")}

    # --- helpers ------------------------------------------------------------

    def _insert_model(self, round_number: int, weights: np.ndarray, state: Mapping[str, np.ndarray] | None) -> None:
        import numpy as np

        blob = np.ascontiguousarray(weights, dtype="<f8").tobytes()
        state_blob = _npz(state) if state else None
        self._db.execute(
            "INSERT OR REPLACE INTO models (round, weights, sha256, strategy_state) VALUES (?, ?, ?, ?)",
            (round_number, blob, hashlib.sha256(blob).hexdigest(), state_blob),
        )

    def _transaction(self) -> _Transaction:
        if self.read_only:
            raise StorageError(f"{_WHAT} {self.path} is open read-only")
        return _Transaction(self._db, self._guard)


def _stage_json(stages: Mapping[str, float] | None) -> str:
    if not stages:
        return "{}"
    return json.dumps({str(name): float(seconds) for name, seconds in stages.items()})  # in stage order


def _byte_count(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameter(f"a byte count must be a non-negative integer or None, got {value!r}")
    return value


def _round_record(row: tuple) -> RoundRecord:
    """A ``rounds`` row, read with :meth:`CoordinatorStore._round_select`'s columns."""
    stages = json.loads(row[9]) if row[9] else {}
    if not isinstance(stages, dict):
        raise ValueError("stage_durations is not a JSON object")
    return RoundRecord(
        round=int(row[0]),
        aggregation=int(row[1]),
        participants=int(row[2]),
        survivors=tuple(str(name) for name in json.loads(row[3])),
        accuracy=None if row[4] is None else float(row[4]),
        loss=None if row[5] is None else float(row[5]),
        epsilon=None if row[6] is None else float(row[6]),
        duration=float(row[7]),
        stage_durations={str(name): float(seconds) for name, seconds in stages.items()},
        bytes_in=None if row[10] is None else int(row[10]),
        bytes_out=None if row[11] is None else int(row[11]),
        completed_at=float(row[8]),
        refusals=int(row[12] or 0),
        attempts=int(row[13] or 0),
    )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error); SQLite errors become StorageError."""

    def __init__(self, db: sqlite3.Connection, guard: StorageGuard) -> None:
        self._db = db
        self._guard = guard

    def __enter__(self) -> None:
        with self._guard:
            self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc_type is None:
            try:
                with self._guard:
                    self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return False
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise self._guard_error(exc) from exc
        return False

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the transaction is gone already (SQLite rolls back on some errors itself)

    def _guard_error(self, exc: sqlite3.Error) -> StorageError:
        from securefed._db import storage_error

        return storage_error(exc, self._guard.path, self._guard.what, self._guard.advice)


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Named arrays as ``.npz`` bytes (read back with ``allow_pickle=False``)."""
    import numpy as np

    buffer = io.BytesIO()
    # numpy's stub gives **kwds and the allow_pickle flag one namespace; every key here names an array
    np.savez(buffer, **{name: np.asarray(value) for name, value in arrays.items()})  # type: ignore[arg-type]
    return buffer.getvalue()
