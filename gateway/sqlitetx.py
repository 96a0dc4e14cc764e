"""One SQLite write transaction, shared by the stores that need read-then-write to be atomic
across processes on one data dir (bus, verify state, ended sessions)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (takes the write lock now, waiting up to the connection's timeout),
    then COMMIT, or ROLLBACK on any exception. The connection must be in autocommit mode."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
