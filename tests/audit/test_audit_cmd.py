"""``symbi audit ...`` run as a real subprocess against real logs."""

from __future__ import annotations

import json
import select
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditLog, AuditRecord, exported_public_keys, verify_record
from gateway.audit.keys import write_public_key
from gateway.cli import main

ROOT = Path(__file__).parents[2]


def symbi(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    db = tmp_path / "data" / "audit.db"
    log = AuditLog(db, tmp_path / "data" / "audit-key.pem")
    log.append("gateway.start", {"version": "0.1"}, principal="system")
    log.append(
        "tool.call",
        {
            "tool": "fs__read",
            "outcome": "ok",
            "arguments": {"path": "[REDACTED]"},
            "arguments_redacted": "policy",
            "decision": {"allow": True, "reasons": [], "conditions": {}},
        },
        principal="alice",
    )
    log.append(
        "tool.call",
        {
            "tool": "fs__write",
            "outcome": "denied",
            "decision": {"allow": False, "reasons": ["writes need approval"], "conditions": {}},
        },
        principal="<script>bob</script>",
    )
    log.append("policy.reload", {"path": "policies.rego"}, principal="system")
    log.append("pin.approved", {"tool": "fs__read", "fingerprint": "sha256:ab"}, principal="admin")
    log.close()
    return db


def test_verify_intact_and_tampered(log_file: Path) -> None:
    ok = symbi("verify", "--log", log_file, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["last_seq"] == 5
    conn = sqlite3.connect(log_file)
    conn.execute("UPDATE events SET principal = 'mallory' WHERE seq = 3")
    conn.commit()
    conn.close()
    for extra in ((), ("--fast",)):
        bad = symbi("verify", "--log", log_file, "--json", *extra)
        assert bad.returncode == 1
        assert json.loads(bad.stdout)["problem"]["seq"] == 3
        assert json.loads(bad.stdout)["problem"]["kind"] == "changed"
    text = symbi("verify", "--log", log_file)
    assert text.returncode == 1 and "seq 3" in text.stdout


def test_verify_with_an_untrusted_public_key_fails(log_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pub.pem"
    write_public_key(other, Ed25519PrivateKey.generate().public_key())
    res = symbi("verify", "--log", log_file, "--public-key", other, "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["problem"]["kind"] == "inserted"
    good = symbi("verify", "--log", log_file, "--public-key", log_file.parent / "audit-key.pub.pem")
    assert good.returncode == 0


def test_verify_without_any_public_key_is_a_usage_error(log_file: Path, tmp_path: Path) -> None:
    res = symbi("verify", "--log", log_file, "--config", _config(tmp_path, tmp_path / "elsewhere"))
    assert res.returncode == 2


def _config(tmp_path: Path, data_dir: Path) -> Path:
    cfg = tmp_path / "symbi.toml"
    cfg.write_text(
        f'[gateway]\ndata_dir = "{data_dir}"\n[audit]\npath = "{tmp_path / "data" / "audit.db"}"\n'
    )
    return cfg


def test_config_file_locates_log_and_keys(log_file: Path, tmp_path: Path) -> None:
    res = symbi("verify", "--config", _config(tmp_path, tmp_path / "data"))
    assert res.returncode == 0, res.stdout + res.stderr


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _query(capsys: pytest.CaptureFixture[str], *args: str | Path) -> list[int]:
    # in-process through the real CLI entry point (a subprocess per filter would cost seconds)
    assert main(["audit", "query", "--json", *map(str, args)]) == 0
    return [r["seq"] for r in _json_lines(capsys.readouterr().out)]


def test_query_filters(log_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = symbi("query", "--log", log_file, "--decision", "deny", "--json")
    assert res.returncode == 0 and [r["seq"] for r in _json_lines(res.stdout)] == [3]
    assert _query(capsys, "--log", log_file, "--decision", "allow") == [2]
    assert _query(capsys, "--log", log_file, "--principal", "system") == [1, 4]
    assert _query(capsys, "--log", log_file, "--tool", "fs__read") == [2, 5]
    assert _query(capsys, "--log", log_file, "--type", "policy.*", "--type", "pin.*") == [4, 5]
    assert _query(capsys, "--log", log_file, "--since", "2999-01-01") == []
    assert _query(capsys, "--log", log_file, "--since", "1h", "--until", "2999-01-01T00:00:00Z") == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert main(["audit", "query", "--log", str(log_file), "--since", "yesterday-ish"]) == 2


def test_tail_last_n_and_follow(log_file: Path) -> None:
    assert [r["seq"] for r in _json_lines(symbi("tail", "--log", log_file, "-n", "2", "--json").stdout)] == [
        4,
        5,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "audit", "tail", "-f", "-n", "1", "--json", "--log", str(log_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert json.loads(_readline(proc, 30))["seq"] == 5  # tail is up and following
        log = AuditLog(log_file, log_file.parent / "audit-key.pem")
        log.append("upstream.crash", {"upstream": "fs"})
        log.close()
        assert json.loads(_readline(proc, 30))["type"] == "upstream.crash"
    finally:
        proc.kill()
        proc.wait()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from symbi audit tail -f"
    return proc.stdout.readline()


def test_signed_export_lines_verify_independently(log_file: Path, tmp_path: Path) -> None:
    """A line carrying a signature verifies on its own; an unsigned one (back-to-back appends:
    the writer signs a head when idle, flushed or closed) only with the signed lines after it."""
    out = tmp_path / "export.jsonl"
    assert symbi("export", "--log", log_file, "--format", "jsonl", "--out", out).returncode == 0
    [pub] = exported_public_keys(log_file.parent / "audit-key.pem").values()
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    docs = [json.loads(line) for line in lines]
    assert docs[-1]["signature"]  # the head, signed at close
    for d in docs:
        assert verify_record(AuditRecord.from_dict(d), pub) is bool(d["signature"])
    doc = json.loads(lines[4])
    doc["principal"] = "someone-else"
    assert not verify_record(AuditRecord.from_dict(doc), pub)
    assert (
        symbi("verify", "--log", out, "--public-key", log_file.parent / "audit-key.pub.pem").returncode == 0
    )
    lines[1], lines[2] = lines[2], lines[1]
    out.write_text("\n".join(lines) + "\n")
    res = symbi("verify", "--log", out, "--public-key", log_file.parent / "audit-key.pub.pem", "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["problem"]["seq"] == 2


@pytest.mark.parametrize("framework", ["hipaa", "gdpr", "sox"])
def test_report_json(log_file: Path, tmp_path: Path, framework: str) -> None:
    out = tmp_path / "report.json"
    res = symbi("report", "--log", log_file, "--framework", framework, "--since", "1d", "--out", out)
    assert res.returncode == 0, res.stderr
    rep = json.loads(out.read_text())
    assert rep["framework"] == framework and rep["integrity"]["ok"] is True
    assert [d["seq"] for d in rep["denied"]] == [3]
    assert [c["type"] for c in rep["changes"]] == ["policy.reload", "pin.approved"]
    assert {(a["principal"], a["target"]) for a in rep["access"]} == {
        ("alice", "fs__read"),
        ("<script>bob</script>", "fs__write"),
    }
    assert rep["requirements"] and all(r["status"] in ("met", "attention") for r in rep["requirements"])


def test_report_html_escapes_and_flags_a_broken_log(log_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert symbi("report", "--log", log_file, "--framework", "hipaa", "--out", out).returncode == 0
    page = out.read_text()
    assert "<script>bob" not in page and "&lt;script&gt;bob" in page
    conn = sqlite3.connect(log_file)
    conn.execute("DELETE FROM events WHERE seq = 2")
    conn.commit()
    conn.close()
    json_out = tmp_path / "report.json"
    assert symbi("report", "--log", log_file, "--framework", "sox", "--out", json_out).returncode == 1
    rep = json.loads(json_out.read_text())
    assert rep["integrity"]["ok"] is False and rep["integrity"]["problem"]["seq"] == 2
    assert all(r["status"] == "attention" for r in rep["requirements"])


def test_rotate_key_refused_while_the_log_is_open_then_works(log_file: Path) -> None:
    key = log_file.parent / "audit-key.pem"
    log = AuditLog(log_file, key)
    try:
        assert symbi("rotate-key", "--log", log_file).returncode == 1
    finally:
        log.close()
    res = symbi("rotate-key", "--log", log_file)
    assert res.returncode == 0, res.stderr
    assert len(exported_public_keys(key)) == 2
    assert symbi("verify", "--log", log_file).returncode == 0


def test_rotate_and_verify_every_chain_of_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = data / "audit-key.pem"
    for name in ("audit.db", "audit-2.db"):
        with AuditLog(data / name, key) as log:
            log.append("gateway.start", {"chain": name})
    cfg = _config(tmp_path, data)
    res = symbi("rotate-key", "--config", cfg)
    assert res.returncode == 0, res.stderr
    ver = symbi("verify", "--config", cfg, "--json")
    assert ver.returncode == 0, ver.stdout
    results = _json_lines(ver.stdout)
    assert [Path(r["log"]).name for r in results] == ["audit.db", "audit-2.db"]
    assert all(r["last_seq"] == 2 for r in results)  # start + rotation in each chain
    conn = sqlite3.connect(data / "audit-2.db")
    conn.execute("DELETE FROM events WHERE seq = 2")
    conn.commit()
    conn.close()
    bad = symbi("verify", "--config", cfg, "--json")
    assert bad.returncode == 1
    assert [r["ok"] for r in _json_lines(bad.stdout)] == [True, False]


def test_rotate_key_refuses_a_log_replaced_behind_its_exported_checkpoint(tmp_path: Path) -> None:
    """``symbi audit rotate-key`` opens the log as the gateway does (``[audit] checkpoint_export``,
    pins): a log replaced while the gateway was down is refused, not handed a new key."""
    data, export = tmp_path / "data", tmp_path / "witness" / "cp.jsonl"
    cfg = tmp_path / "symbi.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{data}"\n[audit]\ncheckpoint_export = "{export}"\n')
    with AuditLog(data / "audit.db", data / "audit-key.pem", checkpoint_export=export) as log:
        for i in range(5):
            log.append("tool.call", {"tool": f"t{i}"}, principal="alice")
    assert export.read_text().strip()  # close exported the head's checkpoint
    for p in data.glob("audit.db*"):  # a fresh log with the same key in its place
        p.unlink()
    with AuditLog(data / "audit.db", data / "audit-key.pem") as fresh:
        fresh.append("tool.call", {"tool": "x"}, principal="mallory")
    res = symbi("rotate-key", "--config", cfg)
    assert res.returncode == 1, res.stdout + res.stderr  # AuditError, as the gateway's start
    assert len(exported_public_keys(data / "audit-key.pem")) == 1  # no rotation
