"""Durability of acknowledged events, checked where it can be checked on this machine.

A power loss cannot be simulated here (no VM, no device we may cut), and a SIGKILL (the crash
test) is survived by WAL even without fsync, because the page cache outlives the process. So
durability is checked at its mechanism: the writer's connection runs ``synchronous=FULL``
(read back), and every acknowledged commit reaches the disk with an fsync/fdatasync, counted
by strace on a real writer process. With ``synchronous=NORMAL`` or ``OFF`` a WAL commit issues
no fsync, and the count falls far below the number of acknowledged events.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.audit import AuditLog, exported_public_keys
from gateway.audit.store import open_writer
from gateway.audit.verify import verify_log
from gateway.audit.writer import WAL_CHECKPOINT_PAGES

ROOT = Path(__file__).resolve().parents[2]


def test_writer_connection_is_synchronous_full(tmp_path: Path) -> None:
    conn = open_writer(tmp_path / "audit.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        conn.close()


def test_every_acknowledged_event_is_fsynced(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.fail("strace is missing: `make test` installs it (scripts/setup-sandbox.sh)")
    events = 30
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from gateway.audit import AuditLog

        async def main() -> None:
            log = AuditLog(Path(sys.argv[1]), Path(sys.argv[2]), checkpoint_every=1000, batch_max=64)
            for i in range({events}):
                await log.record("tool.call", {{"n": i}}, principal="p")  # one acknowledged event at a time
            log.close()

        asyncio.run(main())
    """)
    )
    trace = tmp_path / "strace.txt"
    subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync",
            "-o",
            str(trace),
            sys.executable,
            str(script),
            str(tmp_path / "audit.db"),
            str(tmp_path / "key.pem"),
        ],
        check=True,
        cwd=ROOT,
        timeout=120,
        capture_output=True,
    )
    syncs = [line for line in trace.read_text().splitlines() if "fsync(" in line or "fdatasync(" in line]
    # one commit per acknowledged event (they are awaited one by one), each synced
    assert len(syncs) >= events, len(syncs)


# --- the WAL: checkpointed by the writer after the acknowledgement, rewritten in place

FRAME = 4096 + 24  # a WAL frame: one page and its header


def _frames_in_wal(db: Path) -> int:
    """Frames the WAL holds now (what a PASSIVE checkpoint reports as its ``log`` column)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        conn.close()


def test_the_writer_checkpoints_the_wal_and_rewrites_it_from_its_start(tmp_path: Path) -> None:
    """80 commits of one event each (about 3 pages apiece): with a checkpoint every ~12 pages the
    WAL file never grows past a few checkpoints' worth. SQLite's own autocheckpoint (off on
    the writer: it would run inside a COMMIT) or no checkpoint at all would leave 240+ frames."""
    db = tmp_path / "audit.db"
    log = AuditLog(db, tmp_path / "key.pem", wal_checkpoint_pages=12)
    try:
        for i in range(80):
            log.append("tool.call", {"n": i}, principal="p")
        assert os.path.getsize(f"{db}-wal") <= 40 * FRAME + 32
    finally:
        log.close()
    assert verify_log(db, exported_public_keys(tmp_path / "key.pem")).check().events == 80


def test_with_the_default_threshold_the_wal_stays_bounded(tmp_path: Path) -> None:
    """The shipped threshold (``WAL_CHECKPOINT_PAGES``, counted from the rows' size, which
    underestimates the frames): ~5,000 pages of events in group commits leave a WAL of at most
    twice the threshold, not everything written since the start (5,000+ frames)."""
    db = tmp_path / "audit.db"
    log = AuditLog(db, tmp_path / "key.pem")
    text = "x" * 3000  # about one page per event
    try:
        for i in range(5000):
            log.emit("tool.call", {"n": i, "text": text}, principal="p")
        log.flush(timeout=60)
        assert os.path.getsize(f"{db}-wal") <= 2 * WAL_CHECKPOINT_PAGES * FRAME + 32
    finally:
        log.close()


def test_a_reader_holding_a_snapshot_never_blocks_a_commit(tmp_path: Path) -> None:
    """The writer's checkpoint is PASSIVE: a reader in the middle of a read transaction only keeps
    the WAL from restarting; every event is still acknowledged, and once the reader is gone the
    next checkpoints empty the WAL again."""
    db = tmp_path / "audit.db"
    log = AuditLog(db, tmp_path / "key.pem", wal_checkpoint_pages=12)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        log.append("tool.call", {"n": 0}, principal="p")
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 1  # the snapshot is held
        seqs = [log.append("tool.call", {"n": i}, principal="p", timeout=20) for i in range(1, 60)]
        assert seqs == list(range(2, 61))
        assert _frames_in_wal(db) > 100  # nothing could restart the WAL under the reader
        reader.execute("COMMIT")
        for i in range(60, 100):
            log.append("tool.call", {"n": i}, principal="p", timeout=20)
        assert _frames_in_wal(db) <= 30
    finally:
        reader.close()
        log.close()
    assert verify_log(db, exported_public_keys(tmp_path / "key.pem")).check().events == 100
