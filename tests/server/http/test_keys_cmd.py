"""``symbi keys create|list|revoke``: the real CLI in a subprocess, against a real key file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from gateway.apikeys import hash_key
from gateway.server.auth import ApiKeyStore
from tests.conftest import symbi_env, write_config


def symbi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
        check=False,
    )


def test_create_list_revoke(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "")
    out = symbi("keys", "create", "--principal", "alice", "--roles", "admin,developer", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("symbi_") and len(key) > 50
    path = tmp_path / "data" / "api-keys.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert key not in text and hash_key(key) in text  # stored hashed, shown once
    rec = ApiKeyStore(path).lookup(key)
    assert rec is not None and (rec.principal, rec.roles) == ("alice", ("admin", "developer"))

    listed = symbi("keys", "list", "--json", "--config", str(cfg))
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["principal"], r["revoked"]) for r in rows] == [(rec.id, "alice", None)]
    assert "sha256" not in rows[0] and key not in listed.stdout

    assert symbi("keys", "revoke", rec.id, "--config", str(cfg)).returncode == 0
    assert ApiKeyStore(path).lookup(key) is None
    assert symbi("keys", "revoke", rec.id, "--config", str(cfg)).returncode == 1  # already revoked
    assert symbi("keys", "revoke", "ffffffffffff", "--config", str(cfg)).returncode == 1
    assert "revoked" in symbi("keys", "list", "--config", str(cfg)).stdout


def test_bad_role_and_missing_principal_are_usage_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "")
    assert (
        symbi("keys", "create", "--principal", "a", "--roles", "bad role!", "--config", str(cfg)).returncode
        == 2
    )
    assert symbi("keys", "create", "--roles", "admin", "--config", str(cfg)).returncode == 2
    assert not (tmp_path / "data" / "api-keys.json").exists()


def test_api_keys_path_from_config(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "keys.json"
    cfg = write_config(tmp_path, f'[http]\napi_keys_path = "{target}"\n')
    out = symbi("keys", "create", "--principal", "svc", "--kind", "service", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    rec = ApiKeyStore(target).lookup(out.stdout.strip())
    assert rec is not None and rec.kind == "service" and rec.roles == ()
