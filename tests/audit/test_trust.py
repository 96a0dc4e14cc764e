"""Attacks on the audit log by someone who can write the data dir (not read the config or the
exported checkpoints): re-signing with their own key, emptying the log, truncating it.

Verification is anchored in the key id pinned in the config (``symbi audit init`` prints it)
and in checkpoints exported outside the data dir (``[audit] checkpoint_export``).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog
from gateway.config import load_config
from gateway.errors import AuditError
from tests.conftest import SYMBI, symbi_env, write_config


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYMBI), "audit", *map(str, args)],
        capture_output=True,
        text=True,
        env=symbi_env(),
        timeout=120,
        check=False,
    )


def pinned_setup(tmp_path: Path, events: int = 20) -> tuple[Path, Path]:
    """A config whose key is pinned (from `symbi audit init`) with checkpoints exported; a log."""
    witness = tmp_path / "witness" / "checkpoints.jsonl"
    cfg = write_config(tmp_path, "[audit]\ncheckpoint_every = 5\n")
    init = cli("init", "--config", cfg)
    assert init.returncode == 0, init.stderr
    kid = re.search(r'pinned_keys = \["(ed25519:[0-9a-f]{32})"\]', init.stdout)
    assert kid is not None, init.stdout
    cfg.write_text(
        cfg.read_text().replace(
            "[audit]\n", f'[audit]\npinned_keys = ["{kid.group(1)}"]\ncheckpoint_export = "{witness}"\n'
        )
    )
    with AuditLog.from_config(load_config(cfg)) as log:
        for i in range(events):
            log.append("test.event", {"i": i})
    assert witness.exists()
    return cfg, witness


def verify(cfg: Path, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    r = cli("verify", "--config", cfg, "--json", *extra)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r.returncode, (lines[0] if lines else {})


def test_intact_pinned_log_verifies_and_is_anchored(tmp_path: Path) -> None:
    cfg, _ = pinned_setup(tmp_path)
    code, res = verify(cfg)
    assert code == 0 and res["ok"] and res["anchored"] and res["events"] == 20
    assert res["anchors_checked"] >= 3  # db anchor, checkpoint file, exported checkpoints


def test_resigning_with_an_attacker_key_fails(tmp_path: Path) -> None:
    cfg, _ = pinned_setup(tmp_path)
    conf = load_config(cfg)
    original_pub = tmp_path / "admin-copy.pub.pem"
    original_pub.write_bytes((conf.data_dir / "audit-key.pub.pem").read_bytes())
    # the attacker replaces the log, the key and every public key in the data dir with their own
    for p in conf.data_dir.glob("audit*"):
        p.unlink()
    with AuditLog(conf.audit_path, conf.audit_key_path) as forged:  # no pins: as an attacker would
        for i in range(25):
            forged.append("test.event", {"i": i, "forged": True})
    code, res = verify(cfg)
    assert code != 0 and not res.get("ok", False)  # the pinned key is nowhere: usage error (2)
    code, res = verify(cfg, "--public-key", original_pub)
    assert code == 1 and res["problem"]["kind"] == "inserted" and res["problem"]["seq"] == 1
    # unpinned, the same forged log "verifies", but is reported as not anchored
    (tmp_path / "unpinned").mkdir()
    unpinned = write_config(tmp_path / "unpinned", f'[gateway]\ndata_dir = "{conf.data_dir}"\n')
    code, res = verify(unpinned)
    assert code == 0 and res["anchored"] is False


def test_a_gateway_refuses_an_unpinned_key(tmp_path: Path) -> None:
    cfg, _ = pinned_setup(tmp_path)
    conf = load_config(cfg)
    for p in conf.data_dir.glob("audit*"):
        p.unlink()  # log and key gone: a fresh key would be generated, but it is not the pinned one
    with pytest.raises(AuditError):
        AuditLog.from_config(conf)


def test_an_emptied_log_does_not_verify(tmp_path: Path) -> None:
    cfg, witness = pinned_setup(tmp_path)
    conf = load_config(cfg)
    witness.unlink()  # even without the exported copy: the pinned key says there were events
    with sqlite3.connect(conf.audit_path) as db:
        db.execute("DELETE FROM events")
        db.execute("DELETE FROM anchor")
    for p in conf.data_dir.glob("*.anchor.json"):
        p.unlink()
    code, res = verify(cfg)
    assert code == 1 and res["problem"]["kind"] == "truncated" and res["events"] == 0


def test_a_truncated_log_fails_against_the_exported_checkpoints(tmp_path: Path) -> None:
    cfg, witness = pinned_setup(tmp_path)
    conf = load_config(cfg)
    admin_copy = tmp_path / "admin-copy.jsonl"
    admin_copy.write_text(witness.read_text())
    with sqlite3.connect(conf.audit_path) as db:  # cut the tail and every anchor in the data dir
        db.execute("DELETE FROM events WHERE seq > 7")
        db.execute("DELETE FROM anchor")
    for p in conf.data_dir.glob("*.anchor.json"):
        p.unlink()
    code, res = verify(cfg)
    assert code == 1 and res["problem"]["kind"] == "truncated"
    # the admin's own copy, without the config's export, catches it as well
    witness.unlink()
    code, res = verify(cfg, "--anchor", admin_copy)
    assert code == 1 and res["problem"]["kind"] == "truncated"
    # and the gateway refuses to append to a log that is behind its exported checkpoints
    witness.write_text(admin_copy.read_text())
    with pytest.raises(AuditError):
        AuditLog.from_config(conf)


def test_exported_checkpoints_are_private_and_name_their_chain(tmp_path: Path) -> None:
    _, witness = pinned_setup(tmp_path)
    assert witness.stat().st_mode & 0o077 == 0
    lines = [json.loads(line) for line in witness.read_text().splitlines()]
    assert lines and all(line["log"] == "audit.db" and line["signature"] for line in lines)
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)


def test_the_running_log_verifies_against_its_pins_and_exports(tmp_path: Path) -> None:
    """What the admin API's /api/audit/verify reports (AuditLog.verify)."""
    cfg, witness = pinned_setup(tmp_path)
    conf = load_config(cfg)
    with AuditLog.from_config(conf) as log:
        log.append("test.event", {"i": "more"})
        res = log.verify()
        assert res.ok and res.anchored and res.anchors_checked >= 3
    # the exported copy says more than this log holds: the running log's check fails too
    lines = witness.read_text().splitlines()
    last = json.loads(lines[-1])
    witness.write_text(witness.read_text() + json.dumps({**last, "seq": last["seq"] + 1000}) + "\n")
    conf2 = load_config(cfg)
    with pytest.raises(AuditError):
        AuditLog.from_config(conf2)  # refuses: the log is behind its exported checkpoints


def test_the_log_its_wal_and_anchors_are_private(tmp_path: Path) -> None:
    """They hold every principal's (redacted) arguments: 0600, in a 0700 folder."""
    data = tmp_path / "data"
    with AuditLog(data / "audit.db", data / "audit-key.pem", checkpoint_every=1) as log:
        log.append("test.event", {"i": 1})
        log.flush()  # the checkpoint file is written after the commit is acknowledged
        names = {p.name: p for p in data.iterdir()}
        assert {"audit.db", "audit.db-wal", "audit.db.anchor.json", "audit-key.pem"} <= set(names)
        for name, p in names.items():
            if ".pub." not in name:
                assert p.stat().st_mode & 0o077 == 0, name
    assert data.stat().st_mode & 0o777 == 0o700


def test_the_admins_own_checkpoint_copy_catches_a_rollback(tmp_path: Path) -> None:
    """Restoring an older, consistent copy of the log (its own signed anchors included) is the
    rollback only a checkpoint kept elsewhere can reveal."""
    import shutil

    cfg = write_config(tmp_path, "")
    conf = load_config(cfg)
    old = tmp_path / "old-copy"
    with AuditLog.from_config(conf) as log:
        for i in range(4):
            log.append("test.event", {"i": i})
    shutil.copytree(conf.data_dir, old)  # what the attacker keeps
    with AuditLog.from_config(conf) as log:
        for i in range(6):
            log.append("test.event", {"i": i, "later": True})
    copy = tmp_path / "admin" / "checkpoints.jsonl"
    r = cli("checkpoint", "--config", cfg, "--out", copy)
    assert r.returncode == 0, r.stderr
    head = json.loads(copy.read_text().splitlines()[-1])
    assert head["log"] == "audit.db" and head["seq"] > 4
    pub = tmp_path / "admin" / "audit.pub.pem"
    pub.write_bytes((conf.data_dir / "audit-key.pub.pem").read_bytes())
    shutil.rmtree(conf.data_dir)
    shutil.copytree(old, conf.data_dir)  # the rollback
    code, res = verify(cfg)
    assert code == 0 and res["last_seq"] < head["seq"]  # without the copy it looks intact...
    code, res = verify(cfg, "--anchor", copy, "--public-key", pub)
    assert code == 1 and res["problem"]["kind"] == "truncated" and res["anchored"]  # ...not with it


def test_a_sibling_chain_removed_whole_fails_against_the_exported_checkpoints(tmp_path: Path) -> None:
    """A second gateway process's chain (``audit-2.db``) deleted with its files: ``verify``
    checked only the chains it found, and said the data dir was intact."""
    cfg, witness = pinned_setup(tmp_path, events=6)
    conf = load_config(cfg)
    with AuditLog.from_config(conf, conf.audit_path.with_name("audit-2.db")) as log:
        for i in range(6):
            log.append("test.event", {"i": i, "chain": 2})
    assert "audit-2.db" in witness.read_text()
    r = cli("verify", "--config", cfg, "--json")
    assert r.returncode == 0, r.stdout
    for f in conf.data_dir.glob("audit-2.db*"):
        f.unlink()
    r = cli("verify", "--config", cfg, "--json")
    results = {Path(d["log"]).name: d for d in map(json.loads, r.stdout.splitlines())}
    assert r.returncode == 1
    assert results["audit.db"]["ok"]
    assert results["audit-2.db"]["problem"]["kind"] == "truncated"
