"""Durable SQLite files: WAL journal, ``synchronous=FULL``, schema applied, integrity checked.

Every piece of state that must survive a kill -9 (the coordinator's store, a node's state, its
privacy ledger) opens its file here, so they all get the same guarantees and the same plain error
when a file is damaged, locked or cannot be written: :class:`~securefed.errors.StorageError`,
whose message names the file and says what to do. Store objects run every statement inside a
:class:`StorageGuard`, so no raw ``sqlite3`` exception leaves them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Literal

from securefed.errors import StorageError

__all__ = ["StorageGuard", "open_durable", "open_readonly", "storage_error"]


def storage_error(exc: sqlite3.Error, path: Path, what: str, advice: str) -> StorageError:
    """The :class:`StorageError` for ``exc``, raised by SQLite on ``what`` at ``path``, saying what to do."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)):
        return StorageError(f"{what} {path} was used wrongly ({text}); that is a bug in securefed, not a damaged file")
    if "locked" in lowered or "busy" in lowered:
        return StorageError(
            f"{what} {path} is locked by another process ({text}); make sure only one daemon uses this state "
            "folder, then try again"
        )
    if isinstance(exc, sqlite3.IntegrityError):
        return StorageError(f"{what} {path} refused a write that would break its integrity ({text})")
    if any(word in lowered for word in ("readonly", "read-only", "disk i/o", "full", "unable to open", "permission")):
        return StorageError(
            f"{what} {path} could not be read or written ({text}); check the disk's free space, the file's "
            "permissions and the file system"
        )
    return StorageError(f"{what} {path} is unreadable ({text}); {advice}")


class StorageGuard:
    """``with guard:`` turns any ``sqlite3.Error`` raised inside into a :class:`StorageError`.

    Holds no per-use state, so one instance serves every statement of a store.
    """

    __slots__ = ("advice", "path", "what")

    def __init__(self, path: Path, what: str, advice: str) -> None:
        self.path, self.what, self.advice = path, what, advice

    def __enter__(self) -> StorageGuard:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if isinstance(exc, sqlite3.Error):
            raise storage_error(exc, self.path, self.what, self.advice) from exc
        return False


def open_durable(path: Path, schema: str, what: str, advice: str) -> sqlite3.Connection:
    """Open (creating if needed) ``path`` in autocommit mode; :class:`StorageError` if it is damaged or locked."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the folder of {what} {path}: {exc.strerror}") from None
    db = None
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise storage_error(exc, path, what, advice) from None
    return db


def open_readonly(path: Path, what: str, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to an existing file (a running daemon may be writing it: WAL makes that safe)."""
    if not Path(path).exists():
        raise StorageError(f"{what} {path} does not exist")
    try:
        return sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise storage_error(exc, Path(path), what, "check that the path is right") from None
