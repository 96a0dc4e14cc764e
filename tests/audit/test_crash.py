"""Crash test: a writer under load is SIGKILLed; every acknowledged event survives, the log
verifies, and a new writer continues the chain."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.audit import AuditLog, exported_public_keys, verify_log
from tests.audit.conftest import LogPaths

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.mark.slow
def test_sigkill_under_load_keeps_every_acknowledged_event(log_paths: LogPaths) -> None:
    db, key = log_paths
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_writer.py"), str(db), str(key)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while len(acked) < 3000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seq, marker = line.split()
            acked[int(seq)] = marker
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: batches are being signed and committed
        for line in proc.stdout:  # acks already written before the kill count too
            if line.strip():
                seq, marker = line.split()
                acked[int(seq)] = marker
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= 100, "the writer must have acknowledged events before the kill"

    keys = exported_public_keys(key)
    res = verify_log(db, keys).check()
    conn = sqlite3.connect(db)
    stored = {seq: json.loads(d)["marker"] for seq, d in conn.execute("SELECT seq, details FROM events")}
    conn.close()
    missing = {s: m for s, m in acked.items() if stored.get(s) != m}
    assert not missing, f"acknowledged but lost: {list(missing)[:5]}"
    assert res.last_seq >= max(acked)

    log = AuditLog(db, key)  # the lock died with the process; the chain continues
    try:
        assert log.append("gateway.start", {"after": "crash"}) == res.last_seq + 1
    finally:
        log.close()
    assert verify_log(db, keys).check().last_seq == res.last_seq + 1
