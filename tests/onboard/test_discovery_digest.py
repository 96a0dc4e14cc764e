"""What a person approves is what they saw (gateway/onboard/discovery.py): an approval names
the digest of the config listed; a name in both scopes of ``~/.claude.json`` is one server;
an unresolved reference is listed by the variable it names, never its default."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config.load import load_config
from gateway.errors import DefinitionChanged, ReviewedHashRequired
from gateway.events import Event
from gateway.onboard.discovery import Discovery, discovery_store
from tests.conftest import RecordingSink, write_config
from tests.onboard.conftest import write_json

CONFIG = "[mcp]\ndiscovery_enabled = true\n"
GH = {"command": "npx", "args": ["-y", "gh-mcp"]}
EVIL = {**GH, "env": {"NODE_OPTIONS": "--require ./evil.js"}}


def test_a_config_rewritten_after_the_listing_is_not_approved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack (redteam-28 review): the approver listed ``npx -y gh-mcp``; the repository's
    ``.mcp.json`` was then rewritten to add ``NODE_OPTIONS=--require ./evil.js``; after one
    pass ``approve("gh")`` stored (and the gateway ran) the new config. Now the approval names
    the digest the listing showed: another config is refused, nothing approved."""
    project = tmp_path / "project"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    mcp = write_json(project / ".mcp.json", {"mcpServers": {"gh": GH}})
    cfg = write_config(project, CONFIG)
    store = discovery_store(load_config(cfg, {}))
    store.poll()
    assert main(["discover", "list", "--json", "--config", str(cfg)]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    seen = listed["digest"]
    assert "salt" not in listed and seen == store.entries()["gh"].public()["digest"]
    write_json(mcp, {"mcpServers": {"gh": EVIL}})
    store.poll()
    with pytest.raises(DefinitionChanged):
        store.approve("gh", by="admin", expect=seen)
    for bad in ("", "abc", "z" * 64):  # none, too short to bind a config, not a digest
        with pytest.raises(ReviewedHashRequired):
            store.approve("gh", by="admin", expect=bad)
    assert main(["tools", "approve", "gh", "--expect", seen, "--config", str(cfg)]) == 1
    assert seen[:16] in capsys.readouterr().err
    assert store.entries()["gh"].status == "quarantined"
    # the digest of what is listed now approves it; a prefix of 32 digits is enough
    now = store.entries()["gh"].digest()
    assert main(["tools", "approve", "gh", "--expect", now[:32], "--config", str(cfg)]) == 0
    assert store.entries()["gh"].table == EVIL and store.entries()["gh"].status == "approved"


def test_without_expect_the_cli_approves_what_it_prints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``symbi tools approve SERVER`` without ``--expect`` prints the launch line and digest
    it approves; the digests of two entries of one config differ (each keyed with its own salt:
    a listing's digest is no test of a guessed secret)."""
    project = tmp_path / "project"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_json(project / ".mcp.json", {"mcpServers": {"a": GH, "b": GH}})
    cfg = write_config(project, CONFIG)
    store = discovery_store(load_config(cfg, {}))
    store.poll()
    a, b = store.entries()["a"], store.entries()["b"]
    assert a.digest() != b.digest()
    assert main(["tools", "approve", "a", "b", "--expect", a.digest(), "--config", str(cfg)]) == 2  # one each
    capsys.readouterr()
    assert main(["tools", "approve", "a", "--config", str(cfg)]) == 0
    assert f"npx -y gh-mcp (digest {a.digest()})" in capsys.readouterr().out


def test_without_expect_a_server_not_in_the_listing_is_not_approved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack (review of disc43): ``symbi tools approve a b`` reads the listing once; ``b``
    found by a pass after that read was approved as it was, nothing printed, unseen. Now a name
    not in the listing is refused (exit 2, as an unknown name) and nothing is approved, ``a`` neither."""
    project = tmp_path / "project"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    mcp = write_json(project / ".mcp.json", {"mcpServers": {"a": GH}})
    cfg = write_config(project, CONFIG)
    store = discovery_store(load_config(cfg, {}))
    store.poll()
    real, passes = Discovery.entries, list[Path]()

    def listing_then_a_pass(self: Discovery) -> dict[str, Any]:
        known = real(self)
        if not passes:  # the CLI's listing read; then a pass finds ``b``
            passes.append(write_json(mcp, {"mcpServers": {"a": GH, "b": GH}}))
            store.poll()
        return known

    monkeypatch.setattr(Discovery, "entries", listing_then_a_pass)
    assert main(["tools", "approve", "a", "b", "--config", str(cfg)]) == 2  # a usage error, as a 404
    assert "approving" not in capsys.readouterr().out
    monkeypatch.undo()
    assert {n: d.status for n, d in store.entries().items()} == {"a": "quarantined", "b": "quarantined"}


def test_an_entry_of_an_earlier_gateway_gets_its_salt(tmp_path: Path) -> None:
    """State written before digests (no salt): the next pass keys each entry's digest."""
    home, project = tmp_path / "home", tmp_path / "project"
    write_json(project / ".mcp.json", {"mcpServers": {"gh": GH}})
    store = Discovery(
        tmp_path / "d.json", RecordingSink(), home=home, cwd=project, environ={}, registry_dir=None,
        configured=frozenset(),
    )  # fmt: skip
    store.poll()
    doc = json.loads(store.state.read_text())
    doc["servers"]["gh"].pop("salt")
    store.state.write_text(json.dumps(doc))
    assert store.entries()["gh"].salt is None
    store.poll()
    salt = store.entries()["gh"].salt
    assert salt and len(salt) == 32
    store.poll()
    assert store.entries()["gh"].salt == salt


def _both_scopes(tmp_path: Path) -> tuple[Discovery, RecordingSink, Path]:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir(parents=True)
    write_json(
        home / ".claude.json",
        {
            "mcpServers": {"gh": {"command": "gh-user-mcp"}},
            "projects": {str(project): {"mcpServers": {"gh": {"command": "gh-local-mcp"}}}},
        },
    )
    sink = RecordingSink()
    d = Discovery(
        tmp_path / "data" / "discovered.json", sink, home=home, cwd=project, environ={},
        registry_dir=None, configured=frozenset(), claude_managed=tmp_path / "no-managed",
    )  # fmt: skip
    return d, sink, home


def test_a_name_in_both_scopes_of_claude_json_is_one_server_and_stays_put(tmp_path: Path) -> None:
    """Attack (redteam-28 review): ``gh`` in the user scope and in the local scope of
    ``~/.claude.json`` had one origin; the first pass made ``gh`` and ``gh-2``, then every pass
    put the other scope's config in ``gh-2``: a ``server.discovered`` record, a rewrite of the
    state and a warning every recheck interval, forever, and the approver's entry changing
    under them. Now it is one server, the one Claude Code runs (local over user), stable."""
    d, sink, _ = _both_scopes(tmp_path)
    for _ in range(4):
        d.poll()
    assert {n: x.table["command"] for n, x in d.entries().items()} == {"gh": "gh-local-mcp"}
    assert [e for e, _ in sink.events] == [Event.SERVER_DISCOVERED]
    mtime = d.state.stat().st_mtime_ns
    d.poll()
    assert d.state.stat().st_mtime_ns == mtime  # nothing to write


def test_the_second_entry_an_earlier_gateway_made_of_one_origin_is_removed_once(tmp_path: Path) -> None:
    """State of an earlier gateway holding ``gh`` and ``gh-2`` for one origin: the later one is
    removed (stopped if it runs) once; the earlier one stands."""
    d, sink, home = _both_scopes(tmp_path)
    d.poll()
    doc = json.loads(d.state.read_text())
    doc["servers"]["gh-2"] = {**doc["servers"]["gh"], "name": "gh-2", "first_seen": 2e9, "status": "approved"}
    doc["servers"]["gh-2"]["table"] = {"command": "gh-user-mcp"}
    d.state.write_text(json.dumps(doc))
    for _ in range(3):
        d.poll()
    assert {n: x.status for n, x in d.entries().items()} == {"gh": "quarantined", "gh-2": "removed"}
    assert [e for e, _ in sink.events].count(Event.SERVER_REMOVED) == 1


def test_a_references_default_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack (redteam-28 review): Claude Code's ``${DB_PASSWORD:-Tr0ub4dor&3horse}`` holds a
    default, often the secret itself; ``unresolved`` printed the reference verbatim in the admin
    API, the dashboard, ``symbi discover list`` and the ``server.blocked`` record, where the
    launch line masks env values. Now only the variable is named."""
    project = tmp_path / "project"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    secret, header = "Tr0ub4dor&3horse", "hdr-s3cret-value"
    servers = {
        "db": {"command": "db-mcp", "env": {"DB_PASSWORD": f"${{DB_PASSWORD:-{secret}}}"}},
        "web": {
            "type": "http",
            "url": "https://mcp.example.test/",
            "headers": {"X-Key": f"${{KEY-{header}}}"},
        },
    }
    write_json(project / ".mcp.json", {"mcpServers": servers})
    cfg = write_config(project, CONFIG)
    store = discovery_store(load_config(cfg, {}))
    store.poll()
    db, web = store.entries()["db"], store.entries()["web"]
    assert "env.DB_PASSWORD (${DB_PASSWORD...})" in (db.unresolved() or "")
    assert "headers.X-Key (${KEY...})" in (web.unresolved() or "")
    shown = json.dumps([db.public(), web.public()])
    assert secret not in shown and header not in shown
    assert main(["discover", "list", "--config", str(cfg)]) == 0
    assert main(["tools", "approve", "db", "--config", str(cfg)]) == 1
    out = capsys.readouterr()
    assert secret not in out.out + out.err and "DB_PASSWORD" in out.out
