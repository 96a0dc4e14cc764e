"""The MCP Inspector CLI (2.12, on node 22 from npm) over HTTP with an API key and with a JWT.

Inspector 0.15 (the one node 20 runs) has no ``--header``; 2.12 lives with node 22 in
``tests/conformance/node`` (`make setup` installs it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.server.http.conftest import Env

NODE_DIR = ROOT / "tests/conformance/node/node_modules"
INSPECTOR = NODE_DIR / ".bin/mcp-inspector"
NODE22_BIN = NODE_DIR / "node/bin"


def inspector(url: str, token: str, *args: str, home: Path) -> tuple[int, dict[str, Any]]:
    if not INSPECTOR.exists():
        pytest.fail("Inspector 2.12 missing: run `make setup` (npm ci --prefix tests/conformance/node)")
    env = {**os.environ, "PATH": f"{NODE22_BIN}:{os.environ['PATH']}", "HOME": str(home)}
    proc = subprocess.run(
        [
            str(INSPECTOR),
            "--cli",
            "-q",
            "--format",
            "json",
            url,
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {token}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout.strip().splitlines()
    try:
        return proc.returncode, json.loads(out[-1]) if out else {"stderr": proc.stderr[-2000:]}
    except json.JSONDecodeError:
        return proc.returncode, {"stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}


@pytest.mark.parametrize("credential", ["api_key", "jwt"])
def test_inspector_lists_and_calls_with_credentials(env: Env, credential: str, tmp_path: Path) -> None:
    token = env.keys.user if credential == "api_key" else env.idp.token("dana")
    rc, listed = inspector(env.run.mcp, token, "--method", "tools/list", home=tmp_path)
    assert rc == 0, listed
    names = {t["name"] for t in listed["result"]["tools"]}
    assert "everything__echo" in names
    rc, called = inspector(
        env.run.mcp,
        token,
        "--method",
        "tools/call",
        "--tool-name",
        "everything__echo",
        "--tool-arg",
        f"message=via-{credential}",
        home=tmp_path,
    )
    assert rc == 0, called
    assert called["result"]["content"][0]["text"] == f"Echo: via-{credential}"


def test_inspector_with_a_bad_key_gets_nothing(env: Env, tmp_path: Path) -> None:
    rc, out = inspector(env.run.mcp, "symbi_000000000000_forged", "--method", "tools/list", home=tmp_path)
    assert rc != 0 and "result" not in out, out
