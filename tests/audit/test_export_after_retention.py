"""A gateway must restart after its own retention run archived past its last exported
checkpoint (``[audit] checkpoint_export``); a log emptied or replaced behind that checkpoint
must still be refused.

The stop is a real process exit without ``close`` (os._exit: close would write a checkpoint at
the live head). A retention run exports a checkpoint at its hand-off event; a crash between its
commit and that export is simulated by dropping the export line it wrote (``lose_export``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.assemble import open_audit
from gateway.audit import AuditLog
from gateway.audit.retention import segments
from gateway.config import load_config
from gateway.errors import AuditError
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]

# 15 events with a checkpoint exported every 10 (at seq 10), everything but the head archived
# (seq 1..14, so the exported seq 10 leaves the live log), then the process dies
_RUN = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from gateway.audit import AuditLog
    from gateway.audit.retention import RetentionPolicy, archive
    db, key, export, folder, mode, lose = (Path(a) for a in sys.argv[1:7])
    log = AuditLog(db, key, checkpoint_every=10, checkpoint_export=export)
    for i in range(15):
        log.append("tool.call", {"tool": f"t{i}"}, principal="alice")
    log.flush()
    h = archive(log, RetentionPolicy(0.0, None, str(mode), folder), now_ns=2**62)
    assert h is not None and h.seq == 14, h
    log.flush()
    if str(lose) == "1":
        export.write_text(export.read_text().splitlines(keepends=True)[0])
    os._exit(0)
    """
)


def _crash_after_archive(
    tmp: Path, mode: str = "archive", *, lose_export: bool = True, folder: Path | None = None
) -> tuple[Path, Path, Path]:
    db, key, export = tmp / "data" / "audit.db", tmp / "data" / "audit-key.pem", tmp / "witness" / "cp.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [db, key, export, folder or db.parent / "audit-archive", mode, int(lose_export)]
    subprocess.run([sys.executable, "-c", _RUN, *map(str, args)], env=env, check=True, timeout=120)
    exported = [json.loads(line)["seq"] for line in export.read_text().splitlines()]
    assert exported == ([10] if lose_export else [10, 16])  # 16: the run's audit.archived event
    return db, key, export


def test_restarts_after_retention_archived_its_last_exported_checkpoint(tmp_path: Path) -> None:
    db, key, export = _crash_after_archive(tmp_path)
    with AuditLog(db, key, checkpoint_every=10, checkpoint_export=export) as log:
        assert log.last_seq == 16  # 15 events and the audit.archived event
        log.append("tool.call", {"tool": "after"}, principal="alice")
    assert log.verify().ok


def test_the_served_gateway_finds_the_configured_archive_dir(tmp_path: Path) -> None:
    """``[audit] archive_dir`` elsewhere than the data dir: the log ``symbi serve`` and
    ``symbi mcp`` open (``open_audit``) must look for the archive there, as the CLI does."""
    elsewhere = tmp_path / "archive-elsewhere"
    _, _, export = _crash_after_archive(tmp_path, folder=elsewhere)
    cfg = write_config(
        tmp_path,
        f'[audit]\ncheckpoint_every = 10\ncheckpoint_export = "{export}"\narchive_dir = "{elsewhere}"\n',
    )
    with open_audit(load_config(cfg)) as log:
        assert log.last_seq == 16
        assert log.archive_dir == elsewhere


@pytest.mark.parametrize("mode", ["archive", "delete"])
def test_a_retention_run_exports_a_checkpoint_the_live_log_holds(tmp_path: Path, mode: str) -> None:
    db, key, export = _crash_after_archive(tmp_path, mode, lose_export=False)
    with AuditLog(db, key, checkpoint_every=10, checkpoint_export=export) as log:
        assert log.last_seq == 16


def test_a_tampered_archive_does_not_prove_the_checkpoint(tmp_path: Path) -> None:
    db, key, export = _crash_after_archive(tmp_path)
    [(_, segment)] = segments(db.parent / "audit-archive", db.name)
    segment.write_text(segment.read_text().replace('"t3"', '"t4"'))
    with pytest.raises(AuditError):
        AuditLog(db, key, checkpoint_every=10, checkpoint_export=export)


def test_a_forged_handoff_does_not_prove_the_checkpoint(tmp_path: Path) -> None:
    """The hand-off names the exported seq and hash but is not signed by the checkpoint's key."""
    db, key, export = _crash_after_archive(tmp_path)
    for p in (db.parent / "audit-archive").iterdir():
        p.unlink()
    anchor = json.loads(export.read_text())
    with sqlite3.connect(db) as conn:
        doc = json.loads(conn.execute("SELECT doc FROM handoff").fetchone()[0])
        doc.update(seq=anchor["seq"], chain_hash=anchor["chain_hash"])
        conn.execute("UPDATE handoff SET doc = ?", (json.dumps(doc),))
    with pytest.raises(AuditError):
        AuditLog(db, key, checkpoint_every=10, checkpoint_export=export)


@pytest.mark.parametrize("attack", ["emptied", "replaced"])
def test_an_emptied_or_replaced_log_is_still_refused(tmp_path: Path, attack: str) -> None:
    db, key, export = _crash_after_archive(tmp_path)
    if attack == "emptied":
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM events")
            conn.execute("DELETE FROM handoff")
    else:  # a fresh log (its own key) in place of the old one; the genuine segments stay
        for p in db.parent.glob("audit.db*"):
            p.unlink()
        key.unlink()
        with AuditLog(db, key) as fresh:
            for i in range(20):
                fresh.append("tool.call", {"tool": f"x{i}"}, principal="mallory")
    with pytest.raises(AuditError):
        AuditLog(db, key, checkpoint_every=10, checkpoint_export=export)
