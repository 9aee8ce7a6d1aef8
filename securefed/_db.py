"""Durable SQLite files: WAL journal, ``synchronous=FULL``, schema applied, integrity checked.

Every piece of state that must survive a kill -9 (the coordinator's store, a node's state, its
privacy ledger) opens its file here, so they all get the same guarantees and the same plain error
when a file is damaged.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from securefed.errors import InvalidParameter

__all__ = ["open_durable"]


def open_durable(path: Path, schema: str, what: str, advice: str) -> sqlite3.Connection:
    """Open (creating if needed) ``path`` in autocommit mode; ``InvalidParameter`` if it is damaged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(schema)
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
    except sqlite3.DatabaseError as exc:
        raise InvalidParameter(f"{what} {path} is unreadable ({exc}); {advice}") from None
    return db
