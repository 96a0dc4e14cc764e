"""Client config files written for the tests, each in its client's documented shape."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from mcp.types import CallToolResult

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.config.load import load_config
from gateway.context import CallContext, Principal
from gateway.events import LoggingSink
from gateway.onboard.clients import ReadWhenChanged
from gateway.onboard.discovery import Discovery, discovery_store
from tests.conftest import ROOT, upstream_writable, write_config

MUTABLE = ROOT / "tests/peers/mutable_server.py"
DESKTOP = ".config/Claude/claude_desktop_config.json"  # not Claude Code's: no managed policy
# a gateway that discovers every 0.2 s (its code tools off: nothing but the discovered server)
DISCOVERING = "[mcp]\ndiscovery_enabled = true\nrecheck_interval_s = 0.2\n[sandbox]\ncode_tools = false\n"
SECRET = "sk-live-0123456789abcdefSECRET"
BEARER = "Bearer ghp_SECRETTOKEN0123456789abcdef"


@dataclass
class Machine:
    home: Path
    project: Path

    @property
    def claude_desktop(self) -> Path:
        return self.home / ".config/Claude/claude_desktop_config.json"


def write_json(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    m = Machine(tmp_path / "home", tmp_path / "project")
    write_json(
        m.claude_desktop,
        {
            "mcpServers": {
                "filesystem": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                },
                "My Notes (work)!": {"command": "uvx", "args": ["notes-mcp"], "env": {"NOTES_TOKEN": SECRET}},
                "a__b": {"command": "node", "args": ["x.js"]},
                "sandbox": {"command": "node", "args": ["shadow.js"]},
            },
            "globalShortcut": "Ctrl+Space",
        },
    )
    write_json(
        m.project / ".mcp.json",
        {
            "mcpServers": {
                "github": {
                    "type": "http",
                    "url": "https://api.example.test/mcp",
                    "headers": {"Authorization": BEARER},
                },
                "filesystem": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-filesystem", "."],
                },
            }
        },
    )
    write_json(
        m.home / ".claude.json",
        {
            "numStartups": 3,
            "mcpServers": {
                "time": {"type": "stdio", "command": "uvx", "args": ["mcp-server-time"], "env": {}}
            },
            "projects": {
                str(m.project): {
                    "mcpServers": {"local-db": {"command": "db-mcp", "cwd": "/srv/db"}},
                    # the user approved the project's .mcp.json servers in Claude Code's prompt
                    "enabledMcpjsonServers": ["github", "filesystem"],
                }
            },
        },
    )
    write_json(
        m.project / ".vscode/mcp.json",
        {
            "inputs": [
                {"type": "promptString", "id": "perplexity-key", "description": "API key", "password": True}
            ],
            "servers": {
                "perplexity": {
                    "type": "stdio",
                    "command": "npx",
                    "args": ["-y", "server-perplexity-ask"],
                    "env": {"PERPLEXITY_API_KEY": "${input:perplexity-key}"},
                },
                "legacy": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
            },
        },
    )
    write_json(
        m.home / ".cursor/mcp.json",
        {"mcpServers": {"remote": {"url": "https://mcp.example.test/sse", "headers": {"X-Api-Key": SECRET}}}},
    )
    return m


def discovery(
    state: Path, home: Path, cwd: Path, registry_dir: Path | None = None, files: ReadWhenChanged | None = None
) -> Discovery:
    """A discovery pass's store as the gateway builds it, over these folders (no environment,
    nothing configured yet)."""
    return Discovery(
        state,
        LoggingSink(),
        home=home,
        cwd=cwd,
        environ={},
        registry_dir=registry_dir,
        configured=frozenset(),
        files=files,
    )


async def until(done: Callable[[], bool], what: str) -> None:
    """Wait for ``done`` (the bound is the wait's, not a timing assertion)."""
    with anyio.move_on_after(60):
        while not done():
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"not {what} within 60 s")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError):  # reaped between the two
        return False
    return "zombie" not in status.lower()  # ended, not yet reaped


def audited(data_of: Path, kind: str) -> list[dict[str, object]]:
    """The details of the audit events of type ``kind``, in order (``data_of``: the folder of
    the config, whose ``data`` folder holds the log)."""
    db = sqlite3.connect(data_of / "data" / "audit.db")
    try:
        rows = db.execute("SELECT details FROM events WHERE type = ? ORDER BY seq", (kind,))
        return [json.loads(d) for (d,) in rows]
    finally:
        db.close()


@dataclass
class Approved:
    """A discovered server ``mut`` a person approved, started by a running gateway."""

    gw: Gateway
    config: Path  # the gateway's symbi.toml
    store: Discovery
    file: Path  # the client config file that holds it
    table: dict[str, object]  # its launch config, as approved
    record: Path  # one JSON line (with its pid) for each call it answered
    pid: int  # its process

    async def echo(self) -> CallToolResult:
        call = CallContext(
            principal=Principal(id="tester", roles=("tester",)),
            kind="tools/call",
            target="mut__echo",
            arguments={"message": "hi"},
        )
        result: CallToolResult = await self.gw.call(call)
        return result


@asynccontextmanager
async def approved_and_running(tmp_path: Path, file: Path) -> AsyncIterator[Approved]:
    """``mut`` (the mutable test server) in the client config ``file``, discovered, approved
    and started by a discovering gateway (config and data under ``tmp_path``): the start is
    asserted (a call answered), so a test of its stop cannot pass on a server that never ran."""
    record = upstream_writable(tmp_path) / "calls.jsonl"
    table: dict[str, object] = {
        "command": sys.executable,
        "args": [str(MUTABLE)],
        "env": {"RECORD_FILE": str(record)},
    }
    write_json(file, {"mcpServers": {"mut": table}})
    cfg = write_config(tmp_path, DISCOVERING)
    store = discovery_store(load_config(cfg, {}))
    store.poll()
    store.approve("mut", by="admin")
    async with make_gateway(load_config(cfg, {})).running() as gw:
        await until(lambda: "mut__echo" in gw.catalog.tools, "started")
        running = Approved(gw, cfg, store, file, table, record, pid=0)
        assert not (await running.echo()).is_error
        running.pid = json.loads(record.read_text().splitlines()[0])["pid"]
        yield running
