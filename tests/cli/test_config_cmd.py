"""``symbi config check --print``: the effective config, as a real ``symbi`` process prints it."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from tests.conftest import SYMBI, symbi_env, write_config


def test_print_shows_the_effective_config_without_its_secrets(tmp_path: Path) -> None:
    """The keys the config model keeps out of its repr (the bus secret, the OpenAI key, the state
    URLs with their passwords) and the servers' env and headers (filled from gateway.env_file,
    where secrets go) are shown as set, never their values."""
    secret = base64.b64encode(b"s" * 32).decode()
    env_file = tmp_path / "symbi.env"
    env_file.write_text("UPSTREAM_TOKEN=tok-from-env-file\n")
    env_file.chmod(0o600)
    cfg = write_config(
        tmp_path,
        f"""
        [gateway]
        data_dir = "{tmp_path / "data"}"
        env_file = "{env_file}"
        [bus]
        secret = "{secret}"
        [state]
        redis_url = "redis://:redis-password@127.0.0.1:1/0"
        [servers.up]
        command = "x"
        env = {{ TOKEN = "${{UPSTREAM_TOKEN}}" }}
        """,
    )
    res = subprocess.run(
        [str(SYMBI), "config", "check", "--config", str(cfg), "--print"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=symbi_env(OPENAI_API_KEY="sk-openai-secret"),
    )
    assert res.returncode == 0, res.stderr
    for value in (secret, "redis-password", "sk-openai-secret", "tok-from-env-file"):
        assert value not in res.stdout
    doc = json.loads(res.stdout)
    assert doc["bus"]["secret"] and doc["context"]["openai_api_key"]  # shown as set
    assert doc["servers"]["up"]["env"] == {"TOKEN": doc["bus"]["secret"]}
    assert doc["gateway"]["data_dir"] == str(tmp_path / "data")  # the rest as it is
