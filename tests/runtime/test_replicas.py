"""``servers.X.replicas = N``: N real processes, each call to the least busy one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from tests.conftest import ROOT, upstream_writable, write_config
from tests.server._clients import stdio_session
from tests.upstream.test_restart import pids_running

pytestmark = pytest.mark.anyio


async def test_concurrent_calls_spread_over_the_replicas(tmp_path: Path) -> None:
    script = tmp_path / "replica_server.py"
    script.write_text((ROOT / "tests/peers/mutable_server.py").read_text())
    record = (
        upstream_writable(tmp_path) / "record.jsonl"
    )  # the upstream runs as the unprivileged upstream user
    cfg = write_config(
        tmp_path,
        f"""
        [servers.mut]
        command = "{sys.executable}"
        args = ["{script}"]
        env = {{ RECORD_FILE = "{record}" }}
        verification = "warn"
        replicas = 3
        """,
    )
    async with stdio_session(cfg) as s:
        assert len(pids_running(script)) == 3
        tools = [t.name for t in (await s.list_tools()).tools]
        assert tools.count("mut__slow") == 1  # one catalogue entry, three processes behind it
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(s.call_tool, "mut__slow", {"seconds": 1.0})
    pids = {json.loads(x)["pid"] for x in record.read_text().splitlines() if json.loads(x)["tool"] == "slow"}
    assert len(pids) == 3  # each of the three concurrent calls went to an idle replica


def test_replicas_are_for_stdio_servers(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[servers.web]\nurl = "http://127.0.0.1:9/mcp"\nreplicas = 2\n')
    with pytest.raises(ConfigError):
        load_config(cfg, {})
