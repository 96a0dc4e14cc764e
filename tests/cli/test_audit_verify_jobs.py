"""``symbi audit verify --jobs N``: a SQLite log verified in N processes, bad values refused."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from tests.cli._audit import symbi

ROOT = Path(__file__).parents[2]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    db = tmp_path / "data" / "audit.db"
    log = AuditLog(db, tmp_path / "data" / "audit-key.pem", batch_max=4)
    for i in range(30):
        log.emit("tool.call", {"tool": "fs__read", "n": i}, principal="alice")
    log.close()
    return db


def test_jobs_verify_in_that_many_processes_and_find_the_same_problem(log_file: Path) -> None:
    one = symbi("verify", "--log", log_file, "--json", "--jobs", 1)
    two = symbi("verify", "--log", log_file, "--json", "--jobs", 2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert json.loads(one.stdout)["worker_pids"] == []
    assert len(set(json.loads(two.stdout)["worker_pids"])) == 2
    conn = sqlite3.connect(log_file)
    with conn:
        conn.execute("UPDATE events SET principal = 'mallory' WHERE seq = 16")  # range 2's first
    conn.close()
    bad = [json.loads(symbi("verify", "--log", log_file, "--json", "--jobs", n).stdout) for n in (1, 2)]
    assert bad[0]["problem"] == bad[1]["problem"] and bad[0]["problem"]["seq"] == 16
    assert bad[0]["problem"]["kind"] == "changed" and len(set(bad[1]["worker_pids"])) == 2


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_jobs_value_is_a_usage_error(log_file: Path, value: str) -> None:
    res = symbi("verify", "--log", log_file, "--jobs", value)
    assert res.returncode == 2 and "--jobs" in res.stderr


def test_jobs_with_what_verifies_in_one_process_is_a_usage_error(log_file: Path, tmp_path: Path) -> None:
    export = log_file.parent / "export.jsonl"
    assert symbi("export", "--log", log_file, "--out", export).returncode == 0
    assert symbi("verify", "--log", export, "--jobs", 1).returncode == 0
    assert symbi("verify", "--log", export, "--jobs", 2).returncode == 2
    assert symbi("verify", "--log", export).returncode == 0
    assert symbi("verify", "--log", log_file, "--segment", export, "--jobs", 2).returncode == 2
