"""Fixtures for the audit tests: real logs on disk, real Ed25519 keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import AuditLog, exported_public_keys

# the public keys a verification trusts (by key id); a closed log's database with its keys; a log's
# (database, key) paths; the open_log fixture (AuditLog's keyword arguments)
Keys = dict[str, Ed25519PublicKey]
LogKeys = tuple[Path, Keys]
LogPaths = tuple[Path, Path]
OpenLog = Callable[..., AuditLog]


@pytest.fixture
def log_paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "data" / "audit.db", tmp_path / "data" / "audit-key.pem"


@pytest.fixture
def open_log(log_paths: tuple[Path, Path]) -> Iterator[Callable[..., AuditLog]]:
    opened: list[AuditLog] = []

    def make(**kw: object) -> AuditLog:
        log = AuditLog(*log_paths, **kw)  # type: ignore[arg-type]
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


@pytest.fixture
def written_log(open_log: Callable[..., AuditLog], log_paths: tuple[Path, Path]) -> LogKeys:
    """A closed log of 20 events (seq 1..20), each signed, and the public keys exported beside
    its key. Each append is followed by a flush: the writer signs a head record when it is idle
    or flushed (or once per ``checkpoint_every`` events), and back-to-back appends leave most
    records unsigned (vouched for by the next signed one; ``test_writer.py`` covers those)."""
    log = open_log(checkpoint_every=5)
    for i in range(1, 21):
        log.append("tool.call", {"tool": f"t{i}", "n": i}, principal="alice", agent="a1")
        log.flush()
    log.close()
    return log_paths[0], exported_public_keys(log_paths[1])


def execute_sql(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Change a log behind the gateway's back (the tamper tests): each (sql, params) in one
    transaction."""
    conn = sqlite3.connect(db)
    with conn:
        for sql, params in statements:
            conn.execute(sql, params)
    conn.close()
