"""Attacks on the admin's terminal through what ``symbi audit`` prints: a caller's tool name and
a tampered log's columns carry escape sequences (retitle the window, clear it, write a fake
``intact`` over a ``FAILED`` verdict). Printed, they are ``\\uXXXX`` text."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.audit.record import AuditRecord, chain_hash
from gateway.cli.terminal import printable
from gateway.config import load_config
from tests.conftest import ROOT, SYMBI, symbi_env, write_config
from tests.server._clients import stdio_session

MUTABLE = ROOT / "tests/peers/mutable_server.py"
ESCAPES = "\x1b]0;PWNED\x07\x1b[2J\r\x1b[2Kfake\x9b31m\u202e"


def audit(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(SYMBI), "audit", *map(str, args)], capture_output=True, env=symbi_env(), timeout=120, check=False
    )


def test_printable_writes_controls_format_and_line_separators_as_escapes() -> None:
    assert printable("plain text: ok, ünïcode 名前") == "plain text: ok, ünïcode 名前"
    out = printable(ESCAPES + "\u2028\n")
    assert out.isprintable() and "\\u001b" in out and "\\u202e" in out and "\\u009b" in out


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_callers_tool_name_cannot_steer_the_terminal_of_audit_tail_and_query(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        f'[servers.mut]\ncommand = "{sys.executable}"\nargs = ["{MUTABLE}"]\nverification = "warn"\n',
    )
    async with stdio_session(cfg) as s:
        assert (await s.call_tool(ESCAPES, {"x": 1})).is_error  # unknown: recorded with its name
    for sub in (("tail", "-n", "50"), ("query",)):
        r = audit(*sub, "--config", cfg)
        assert r.returncode == 0, r.stderr
        assert b"unknown_tool" in r.stdout and b"\\u001b]0;PWNED" in r.stdout
        assert not any(c in r.stdout.decode() for c in "\x1b\x07\r\x9b\u202e")


def test_a_rewritten_key_id_cannot_print_intact_over_the_failed_verdict(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "")
    conf = load_config(cfg)
    with AuditLog.from_config(conf) as log:
        for i in range(5):
            log.append("test.event", {"i": i})
    fake = f"x\r\x1b[2K{conf.audit_path}: intact: 5 events\x1b[8m"
    conn = sqlite3.connect(conf.audit_path)
    prev = conn.execute("SELECT prev_hash FROM events WHERE seq = 1").fetchone()[0]
    for row in conn.execute("SELECT * FROM events ORDER BY seq").fetchall():  # a consistent chain
        rec = AuditRecord._make(row)._replace(key_id=fake, prev_hash=prev)
        prev = chain_hash(prev, rec.canonical())
        conn.execute(
            "UPDATE events SET key_id = ?, prev_hash = ?, chain_hash = ? WHERE seq = ?",
            (fake, rec.prev_hash, prev, rec.seq),
        )
    conn.commit()
    conn.close()
    r = audit("verify", "--config", cfg)
    assert r.returncode == 1
    out = r.stdout.decode()
    assert "FAILED at seq 1" in out and "\\u001b[2K" in out
    assert "\x1b" not in out and "\r" not in out


def _upstream_config(tmp_path: Path, description: str) -> Path:
    """The mutable upstream, its echo described by ``description`` (TOML escapes via JSON's)."""
    return write_config(
        tmp_path,
        f'[servers.mut]\ncommand = "{sys.executable}"\nargs = ["{MUTABLE}"]\nverification = "tofu"\n'
        f"env = {{ TOOL_DESCRIPTION = {json.dumps(description)} }}\n",
    )


def symbi(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(SYMBI), *map(str, args)], capture_output=True, env=symbi_env(), timeout=120, check=False
    )


def _steers(out: bytes) -> bool:
    return any(c in out.decode() for c in "\x1b\x07\r\x9b\u202e")


@pytest.mark.anyio
@pytest.mark.slow
async def test_an_upstreams_tool_description_cannot_steer_the_terminal_of_tools_and_scan(
    tmp_path: Path,
) -> None:
    """An upstream changes echo's description to escape sequences (OSC retitle, clear screen,
    carriage return, C1 CSI, a bidi override): ``symbi tools diff`` printed it raw, as the
    other commands print what the upstream gave (names, findings, error reasons)."""
    cfg = _upstream_config(tmp_path, "Echo a message.")
    async with stdio_session(cfg) as s:
        await s.list_tools()
    cfg = _upstream_config(tmp_path, "Echo a message. " + ESCAPES)  # the same file, changed
    async with stdio_session(cfg) as s:
        await s.list_tools()  # a drifted definition, recorded
    diff = symbi("tools", "diff", "mut__echo", "--config", cfg)
    assert diff.returncode == 1, diff.stderr
    assert b"\\u001b]0;PWNED" in diff.stdout and not _steers(diff.stdout + diff.stderr)
    for args in (("tools", "list"), ("scan",), ("tools", "list", "--json"), ("scan", "--json")):
        r = symbi(*args, "--config", cfg)
        assert r.returncode in (0, 1), r.stderr
        assert not _steers(r.stdout + r.stderr), args
