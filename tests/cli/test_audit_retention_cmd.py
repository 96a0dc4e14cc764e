"""``symbi audit archive / verify --archives / --segment / query|export|report --archived``, run
as real subprocesses, and retention applied by a running gateway (``symbi mcp``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from gateway.assemble import open_audit
from gateway.audit import AuditLog
from gateway.config import load_config
from tests.cli._audit import symbi
from tests.conftest import ROOT, write_config
from tests.server._clients import stdio_session

MUTABLE = ROOT / "tests/peers/mutable_server.py"


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A config whose retention makes every event older than ~1 s due, and a log of 30 events."""
    path = tmp_path / "symbi.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n[audit]\nretention_days = 0.00001\n')
    with AuditLog(tmp_path / "data" / "audit.db", tmp_path / "data" / "audit-key.pem") as log:
        for i in range(30):
            log.append("tool.call", {"tool": f"t{i}", "decision": {"allow": i % 3 != 0}}, principal="alice")
    time.sleep(1.2)
    return path


def test_archive_then_verify_query_export_and_report(cfg: Path, tmp_path: Path) -> None:
    res = symbi("archive", "--config", cfg)
    assert res.returncode == 0, res.stderr
    res = symbi("verify", "--config", cfg, "--archives", "--json")
    live, archived = (json.loads(line) for line in res.stdout.splitlines())
    assert res.returncode == 0 and live["ok"] and archived["ok"] and archived["last_seq"] == 29
    [segment] = (tmp_path / "data" / "audit-archive").glob("*.jsonl")
    assert symbi("verify", "--config", cfg, "--segment", segment).returncode == 0

    q = symbi("query", "--config", cfg, "--archived", "--principal", "alice", "--json")
    assert [json.loads(line)["seq"] for line in q.stdout.splitlines()] == list(range(1, 31))
    assert symbi("query", "--config", cfg, "--principal", "alice", "--json").stdout.strip().count("\n") == 0

    out = tmp_path / "all.jsonl"
    assert symbi("export", "--config", cfg, "--archived", "--out", out).returncode == 0
    whole = symbi("verify", "--log", out, "--public-key", tmp_path / "data" / "audit-key.pub.pem")
    assert whole.returncode == 0, whole.stdout  # archive + live = one chain from seq 1

    live_only = json.loads(symbi("report", "--config", cfg, "--framework", "sox").stdout)
    assert live_only["period"]["not_covered"]["until_seq"] == 29
    assert all(r["status"] == "attention" for r in live_only["requirements"])
    full = json.loads(symbi("report", "--config", cfg, "--framework", "sox", "--archived").stdout)
    assert full["period"]["not_covered"] is None and full["log"]["first_seq"] == 1

    segment.write_text(segment.read_text().replace('"t7"', '"t8"'))
    bad = symbi("verify", "--config", cfg, "--archives", "--json")
    assert bad.returncode == 1
    assert json.loads(bad.stdout.splitlines()[1])["problem"]["seq"] == 8


def test_archive_with_no_limit_set_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "symbi.toml"
    path.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n')
    assert symbi("archive", "--config", path).returncode == 2


# a gateway's log of 15 events, a checkpoint exported every 10 (seq 10), then the process dies
# without close (which would export one at the head)
_CRASH = textwrap.dedent(
    """
    import os, sys
    from gateway.assemble import open_audit
    from gateway.config import load_config
    log = open_audit(load_config(__import__("pathlib").Path(sys.argv[1])))
    for i in range(15):
        log.append("tool.call", {"tool": f"t{i}"}, principal="alice")
    log.flush()
    os._exit(0)
    """
)


def test_archive_exports_its_checkpoint_so_the_gateway_starts_after_it(tmp_path: Path) -> None:
    """``symbi audit archive`` opens the log as the gateway does (``[audit] checkpoint_export``,
    pins, archive folder): the hand-off's checkpoint reaches the export, so the gateway's next
    start finds the live log holding it (deleted events cannot prove the old one)."""
    export = tmp_path / "witness" / "cp.jsonl"
    cfg = write_config(
        tmp_path,
        f'''
        [audit]
        checkpoint_every = 10
        checkpoint_export = "{export}"
        retention_days = 0.00001
        retention_mode = "delete"
        ''',
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", _CRASH, str(cfg)], env=env, check=True, timeout=120)
    assert [json.loads(line)["seq"] for line in export.read_text().splitlines()] == [10]
    time.sleep(1.2)
    res = symbi("archive", "--config", cfg)
    assert res.returncode == 0, res.stderr
    with open_audit(load_config(cfg)) as log:  # symbi serve / symbi mcp: refused before (AuditError)
        assert log.last_seq > 15


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_running_gateway_applies_retention(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        f"""
        [audit]
        retention_days = 0.00002
        retention_check_s = 0.5

        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        """,
    )
    archive = tmp_path / "data" / "audit-archive"
    async with stdio_session(cfg) as s:
        for i in range(5):
            assert not (await s.call_tool("mut__echo", {"message": f"m{i}"})).is_error
        with anyio.fail_after(60):
            while not list(archive.glob("*.jsonl")):
                await anyio.sleep(0.3)
        assert not (await s.call_tool("mut__echo", {"message": "after"})).is_error
    res = symbi("verify", "--config", cfg, "--archives")
    assert res.returncode == 0, res.stdout + res.stderr


def test_verify_log_archives_reads_the_archive_dir_of_the_env_config(tmp_path: Path) -> None:
    """``verify --log LOG --archives`` under ``$SYMBI_CONFIG_PATH``: the keys, pins and export
    come from that config, and so does ``[audit] archive_dir`` (it was looked for beside the log)."""
    elsewhere = tmp_path / "archive-elsewhere"
    cfg = tmp_path / "symbi.toml"
    cfg.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[audit]\nretention_days = 0.00001\narchive_dir = "{elsewhere}"\n'
    )
    with AuditLog(tmp_path / "data" / "audit.db", tmp_path / "data" / "audit-key.pem") as log:
        for i in range(10):
            log.append("tool.call", {"tool": f"t{i}"}, principal="alice")
    time.sleep(1.2)
    assert symbi("archive", "--config", cfg).returncode == 0
    assert list(elsewhere.glob("*.jsonl"))
    res = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", "--log", str(tmp_path / "data" / "audit.db")]
        + ["--archives", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYMBI_CONFIG_PATH": str(cfg)},
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_verify_segment_trusts_only_the_pinned_key(cfg: Path, tmp_path: Path) -> None:
    """A data-dir writer's own segment (their key, a segment file named like ours) and their
    public key put beside the log: ``verify --segment`` said intact although the config pins
    another key."""
    from gateway.audit.retention import RetentionPolicy, archive

    data = tmp_path / "data"
    with AuditLog(data / "audit.db", data / "audit-key.pem") as log:
        pin = log.key_id
    cfg.write_text(cfg.read_text() + f'pinned_keys = ["{pin}"]\n')
    evil = tmp_path / "evil"
    with AuditLog(evil / "audit.db", evil / "audit-key.pem") as log:
        for i in range(10):
            log.append("tool.call", {"tool": "nothing__to_see", "i": i})
        assert archive(log, RetentionPolicy(None, 1, "archive", evil / "archive")) is not None
    [forged] = (evil / "archive").glob("*.jsonl")
    own = tmp_path / "admin.pub.pem"  # the admin's copy of the real public key
    own.write_bytes((data / "audit-key.pub.pem").read_bytes())
    (data / "audit-key.pub.pem").write_bytes((evil / "audit-key.pub.pem").read_bytes())
    res = symbi("verify", "--config", cfg, "--segment", forged)
    assert res.returncode != 0 and "intact" not in res.stdout
    # with the pinned key at hand, the forged segment fails
    res = symbi("verify", "--config", cfg, "--segment", forged, "--public-key", own)
    assert res.returncode == 1 and "FAILED" in res.stdout
