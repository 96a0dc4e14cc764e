"""Discovery approvals follow Claude Code's managed MCP policy, as ``symbi import claude-code``
does (gateway/onboard/discovery.py, gateway/onboard/claude_managed.py): a server found in a
Claude Code config that the administrator blocks cannot be approved (CLI, admin API), and one
approved before the policy said so is not started.

The managed folder is a system path (``/etc/claude-code``) a test cannot own: the tests hand
discovery a folder of their own (``Discovery(claude_managed=...)``), or point the system's at
it for a whole CLI or gateway (``managed_dir``); the reading and the matching are the real ones."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway.cli import main
from gateway.config.load import load_config
from gateway.errors import ApprovalError, UnknownTool
from gateway.events import LoggingSink
from gateway.onboard import claude_managed
from gateway.onboard.discovery import Discovery, discovery_store
from tests.conftest import write_config
from tests.onboard.conftest import MUTABLE, alive, approved_and_running, audited, until, write_json
from tests.server.http.conftest import bearer, make_keys, run_server

EXFIL = {"command": "npx", "args": ["-y", "unapproved-package"]}
GITHUB = {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"]}
PASTE = {"type": "http", "url": "https://paste.evil.example/mcp"}


def _discovery(tmp_path: Path, managed: Path) -> Discovery:
    return Discovery(
        tmp_path / "discovered.json",
        LoggingSink(),
        home=tmp_path / "home",
        cwd=tmp_path / "project",
        environ={},
        registry_dir=None,
        configured=frozenset(),
        claude_managed=managed,
    )


def test_a_server_the_organisation_denies_cannot_be_approved(tmp_path: Path) -> None:
    """Attack: the administrator blocked a package by its command and a host by URL; the user's
    ``~/.claude.json`` still names them, discovery quarantined them, and one ``symbi tools
    approve`` had the gateway run what the organisation blocked. Now refused, with the reason;
    the same command in Claude Desktop's config is not Claude Code's to rule."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(home / ".claude.json", {"mcpServers": {"exfil": EXFIL, "github": GITHUB, "paste": PASTE}})
    write_json(home / ".config/Claude/claude_desktop_config.json", {"mcpServers": {"desk": EXFIL}})
    write_json(
        managed / "managed-settings.json",
        {
            "deniedMcpServers": [
                {"serverCommand": ["npx", "-y", "unapproved-package"]},
                {"serverUrl": "https://*.evil.example/*"},
            ]
        },
    )
    d = _discovery(tmp_path, managed)
    added, _ = d.poll()
    assert {x.name for x in added} == {"exfil", "github", "paste", "desk"}
    for name in ("exfil", "paste"):
        with pytest.raises(ApprovalError) as refused:
            d.approve(name, by="admin")
        # refused with the reason: the policy file that says so
        assert refused.value.status == 409 and str(managed / "managed-settings.json") in refused.value.message
        assert d.entries()[name].status == "quarantined"
    assert d.approve("github", by="admin").status == "approved"
    assert d.approve("desk", by="admin").status == "approved"


def test_an_allowlist_and_an_exclusive_server_list_refuse_what_they_leave_out(tmp_path: Path) -> None:
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(home / ".claude.json", {"mcpServers": {"exfil": EXFIL, "github": GITHUB}})
    write_json(managed / "managed-settings.json", {"allowedMcpServers": [{"serverName": "github"}]})
    d = _discovery(tmp_path, managed)
    d.poll()
    with pytest.raises(ApprovalError):
        d.approve("exfil")
    write_json(managed / "managed-mcp.json", {"mcpServers": {}})  # Claude Code runs only these
    with pytest.raises(ApprovalError):
        d.approve("github")
    assert {x.status for x in d.entries().values()} == {"quarantined"}


def test_a_policy_that_cannot_be_read_refuses(tmp_path: Path) -> None:
    """Fail closed: its denials would be lost."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(home / ".claude.json", {"mcpServers": {"github": GITHUB}})
    managed.mkdir()
    (managed / "managed-settings.json").write_text('{"deniedMcpServers": [')
    d = _discovery(tmp_path, managed)
    d.poll()
    with pytest.raises(ApprovalError):
        d.approve("github")
    assert d.entries()["github"].status == "quarantined"


def test_an_approval_under_another_home_follows_the_policy(tmp_path: Path) -> None:
    """Attack (redteam-28): the gateway found a server in alice's ``~/.claude.json``; an
    approval run under another ``HOME`` (``sudo symbi tools approve``, a service account) looked
    for Claude Code's files in that home, did not see the source as Claude Code's, and approved
    what the managed policy denies. The client and home are recorded when the server is found:
    refused under any ``HOME``, and so are the user's own denials in alice's settings."""
    home, other, managed = tmp_path / "home", tmp_path / "other", tmp_path / "managed"
    other.mkdir()
    write_json(home / ".claude.json", {"mcpServers": {"exfil": EXFIL, "github": GITHUB, "paste": PASTE}})
    write_json(managed / "managed-settings.json", {"deniedMcpServers": [{"serverName": "exfil"}]})
    write_json(home / ".claude/settings.json", {"deniedMcpServers": [{"serverName": "paste"}]})
    _discovery(tmp_path, managed).poll()
    elsewhere = Discovery(
        tmp_path / "discovered.json",
        LoggingSink(),
        home=other,
        cwd=tmp_path / "project",
        environ={},
        registry_dir=None,
        configured=frozenset(),
        claude_managed=managed,
    )
    for name in ("exfil", "paste"):
        with pytest.raises(ApprovalError) as refused:
            elsewhere.approve(name, by="root")
        assert refused.value.status == 409
    assert elsewhere.approve("github", by="root").status == "approved"
    assert {n: d.status for n, d in elsewhere.entries().items()} == {
        "exfil": "quarantined",
        "paste": "quarantined",
        "github": "approved",
    }


def test_an_entry_recorded_before_its_client_was_is_told_by_its_file(tmp_path: Path) -> None:
    """State written by an earlier gateway has no ``client``: a ``.claude.json`` or ``.mcp.json``
    source is Claude Code's (under any home), another file is not."""
    managed = tmp_path / "managed"
    write_json(managed / "managed-settings.json", {"deniedMcpServers": [{"serverName": "x"}]})
    old = {"original_name": "x", "table": EXFIL, "status": "quarantined", "first_seen": 1.0}
    write_json(
        tmp_path / "discovered.json",
        {
            "servers": {
                "x": {**old, "name": "x", "source": "/home/alice/.claude.json"},
                "x-2": {
                    **old,
                    "name": "x-2",
                    "source": "/home/alice/.config/Claude/claude_desktop_config.json",
                },
            }
        },
    )
    d = _discovery(tmp_path, managed)
    with pytest.raises(ApprovalError):
        d.approve("x")
    assert d.approve("x-2").status == "approved"


def test_symbi_tools_approve_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI approval, a real ``symbi tools approve`` (in this process: its managed folder is
    the test's)."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(claude_managed, "managed_dir", lambda platform=sys.platform: managed)
    write_json(home / ".claude.json", {"mcpServers": {"exfil": EXFIL, "github": GITHUB}})
    write_json(managed / "managed-settings.json", {"deniedMcpServers": [{"serverName": "exfil"}]})
    cfg = write_config(tmp_path, "[mcp]\ndiscovery_enabled = true\n")
    discovery_store(load_config(cfg, {})).poll()
    capsys.readouterr()
    assert main(["tools", "approve", "exfil", "--config", str(cfg)]) == 1
    assert str(managed / "managed-settings.json") in capsys.readouterr().err  # the reason
    assert main(["tools", "approve", "no-such", "--config", str(cfg)]) == 2  # a usage error
    assert main(["tools", "approve", "github", "--config", str(cfg)]) == 0
    assert {n: x.status for n, x in discovery_store(load_config(cfg, {})).entries().items()} == {
        "exfil": "quarantined",
        "github": "approved",
    }


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_admin_api_refuses_it_and_the_gateway_does_not_start_one_approved_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a running gateway (its admin API, its discovery loop): a blocked server's
    approval is a 409 with the reason, and so is one whose config is in error (not a 404); one a person approved before the administrator blocked
    it stays stopped, said once in the log."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(claude_managed, "managed_dir", lambda platform=sys.platform: managed)
    mut = {"command": sys.executable, "args": [str(MUTABLE)]}
    user = home / ".claude.json"
    plain = {"type": "http", "url": "http://mcp.example.com/mcp"}  # a config the gateway refuses
    write_json(user, {"mcpServers": {"early": mut, "late": mut, "plain": plain}})
    cfg = write_config(
        tmp_path, "[mcp]\ndiscovery_enabled = true\nrecheck_interval_s = 0.2\n[sandbox]\ncode_tools = false\n"
    )
    store = discovery_store(load_config(cfg, {}))
    store.poll()
    store.approve("early", by="admin")  # no policy yet
    write_json(
        managed / "managed-settings.json",
        {"deniedMcpServers": [{"serverName": "early"}, {"serverName": "late"}]},
    )
    keys = make_keys(cfg)
    records = Records()
    logging.getLogger("symbi").addHandler(records)
    try:
        with run_server(cfg) as run:
            r = httpx.post(run.base + "/api/discovered/late/approve", headers=bearer(keys.admin), timeout=30)
            assert r.status_code == 409 and r.json()["code"] == "approval_refused"
            assert str(managed / "managed-settings.json") in r.json()["reason"]
            # a server whose config is in error exists: a conflict with its reason (it was a 404)
            r = httpx.post(run.base + "/api/discovered/plain/approve", headers=bearer(keys.admin), timeout=30)
            assert r.status_code == 409 and r.json()["code"] == "approval_refused"
            r = httpx.post(run.base + "/api/discovered/nope/approve", headers=bearer(keys.admin), timeout=30)
            assert r.status_code == 404
            # two later passes seen (each begins with the poll that finds a new server, and
            # the one before it has tried to start the approved ones by then)
            for probe in ("probe1", "probe2"):
                write_json(user, {"mcpServers": {"early": mut, "late": mut, "plain": plain, probe: mut}})
                deadline = time.monotonic() + 60  # the bound of the wait, not a timing assertion
                while probe not in store.entries():
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            gw = run.state.gateway
            assert gw is not None and "early" not in gw.upstreams
            assert sum("approved server early not started" in line for line in records.lines) == 1
    finally:
        logging.getLogger("symbi").removeHandler(records)
    assert store.entries()["late"].status == "quarantined"


@pytest.mark.anyio
async def test_a_running_approved_server_is_stopped_when_a_policy_blocks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (redteam-28): a discovered server approved and running before the administrator
    deployed a managed policy that blocks it kept running, its tools callable, for the
    gateway's life (the policy was checked only before a start). Now the next pass stops it:
    its process ends, its tools leave the catalogue, a call is refused as an unknown tool, and
    ``server.blocked`` names the policy file."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(claude_managed, "managed_dir", lambda platform=sys.platform: managed)
    async with approved_and_running(tmp_path, home / ".claude.json") as mut:
        gw = mut.gw
        policy = write_json(managed / "managed-settings.json", {"deniedMcpServers": [{"serverName": "mut"}]})
        # out of the upstreams first (no call reaches it), then the catalogue is rebuilt
        await until(lambda: "mut" not in gw.upstreams and "mut__echo" not in gw.catalog.tools, "stopped")
        with pytest.raises(UnknownTool):
            await mut.echo()
        await until(lambda: not alive(mut.pid), "its process ended")
        assert len(mut.record.read_text().splitlines()) == 1  # the refused call never reached it
    rows = audited(tmp_path, "server.blocked")
    assert [(r["server"], r["stopped"]) for r in rows] == [("mut", True)]
    assert str(policy) in str(rows[0]["reason"])
    assert mut.store.entries()["mut"].status == "approved"  # the person's approval stands; the policy rules


@pytest.mark.anyio
async def test_a_blocked_server_is_stopped_with_the_audit_log_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, the audit log broken (``on_failure = "deny"``; closed here): the stop's record
    raised ``AuditError`` out of the discovery task and ended the gateway with the server still
    in it. The stop is the safe side: done, its record refused and logged."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(claude_managed, "managed_dir", lambda platform=sys.platform: managed)
    async with approved_and_running(tmp_path, home / ".claude.json") as mut:
        gw = mut.gw
        assert gw.audit is not None
        gw.audit.close()  # every record refused from now on
        write_json(managed / "managed-settings.json", {"deniedMcpServers": [{"serverName": "mut"}]})
        await until(lambda: "mut" not in gw.upstreams and "mut__echo" not in gw.catalog.tools, "stopped")
        await until(lambda: not alive(mut.pid), "its process ended")
