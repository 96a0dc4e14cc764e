"""Durability of acknowledged events, checked where it can be checked on this machine.

A power loss cannot be simulated here (no VM, no device we may cut), and a SIGKILL (the crash
test) is survived by WAL even without fsync, because the page cache outlives the process. So
durability is checked at its mechanism: the writer's connection runs ``synchronous=FULL``
(read back), and every acknowledged commit reaches the disk with an fsync/fdatasync, counted
by strace on a real writer process. With ``synchronous=NORMAL`` or ``OFF`` a WAL commit issues
no fsync, and the count falls far below the number of acknowledged events.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.audit.store import open_writer

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
