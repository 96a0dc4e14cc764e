"""One SQLite write transaction, shared by the stores that need read-then-write to be atomic
across processes on one data dir (bus, verify state, ended sessions)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from gateway.custody import PRIVATE_DIR


def open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """A data dir's SQLite file of operators' decisions (suspended principals, terminated
    sessions): its folder private, autocommit (``write_transaction``), every commit on disk
    before it is answered, ``schema`` created if missing. Shared between threads (callers lock)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous = FULL")  # an operator's decision: on disk when answered
    db.execute(schema)
    return db


def open_readonly(
    path: Path,
    *,
    isolation_level: Literal["DEFERRED", "EXCLUSIVE", "IMMEDIATE"] | None = "DEFERRED",
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A read-only connection to ``path`` that never creates it (the bus's and the audit log's
    readers). The path is quoted: a "?" or "#" in a data dir's name is part of the file's
    name, not the URI's (unquoted, "#" cut it: another file, not found)."""
    uri = f"file:{quote(str(path))}?mode=ro"
    return sqlite3.connect(
        uri, uri=True, isolation_level=isolation_level, check_same_thread=check_same_thread
    )


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
