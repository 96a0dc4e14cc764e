"""What the front decides outside tools/call is on the record too: denied completions and
subscriptions, logging/setLevel (decided by the policy per upstream: an upstream's log level is
shared by every caller), requests for names the catalogue does not have, catalogue refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.audit import store
from gateway.config import load_config
from tests.conftest import EVERYTHING_JS, everything_stdio_config, require_peers
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio

DATA = {
    "symbi_data": {
        "principals": {
            "stdio": {  # these tests run over stdio
                "reader": {"roles": [], "tools": ["everything__echo"]},
                "ops": {"roles": [], "tools": ["everything__echo"], "log_levels": ["everything"]},
            }
        },
        "roles": {},
        "upstreams": {"everything": {"allow_unverified": True}, "twin": {"allow_unverified": True}},
    }
}


def config(tmp_path: Path, principal: str, *, twin: bool = False) -> Path:
    require_peers()
    data = tmp_path / "policy-data.json"
    data.write_text(json.dumps(DATA))
    twin_section = (
        f"""
        [servers.twin]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """
        if twin
        else ""
    )
    return everything_stdio_config(
        tmp_path, principal=principal, policy_data=data, extra=twin_section, name=f"{principal}.toml"
    )


def events(cfg: Path, *types_: str) -> list[Any]:
    conn = store.open_reader(load_config(cfg).audit_path)
    try:
        return store.query(conn, types=types_)
    finally:
        conn.close()


async def test_denied_completion_subscription_and_unknown_names_are_audited(tmp_path: Path) -> None:
    cfg = config(tmp_path, "reader")
    async with stdio_session(cfg) as s:
        with pytest.raises(MCPError):
            await s.complete(
                types.PromptReference(type="ref/prompt", name="everything__completable-prompt"),
                {"name": "department", "value": "E"},
            )
        with pytest.raises(MCPError):
            await s.subscribe_resource("demo://resource/static/document/architecture.md")
        with pytest.raises(MCPError):
            await s.get_prompt("everything__no-such-prompt")
        with pytest.raises(MCPError):
            await s.read_resource("demo://nowhere/at/all")
    denied = {(e.details["method"], e.details["target"]) for e in events(cfg, "request.denied")}
    assert ("completion/complete", "everything__completable-prompt") in denied
    assert ("resources/subscribe", "demo://resource/static/document/architecture.md") in denied
    assert all(e.principal == "reader" for e in events(cfg, "request.denied"))
    refused = {(e.details["method"], e.details["target"]) for e in events(cfg, "request.refused")}
    assert {
        ("prompts/get", "everything__no-such-prompt"),
        ("resources/read", "demo://nowhere/at/all"),
    } <= refused


async def test_set_level_is_decided_by_the_policy_and_audited(tmp_path: Path) -> None:
    reader, ops = config(tmp_path, "reader"), config(tmp_path, "ops")
    async with stdio_session(reader) as s:
        await s.set_logging_level("debug")  # answered (clients send it on connect), applied to nothing
    (rec,) = events(reader, "logging.set_level")
    assert (
        rec.principal == "reader" and rec.details["denied"] == ["everything"] and rec.details["applied"] == []
    )

    async with stdio_session(ops) as s:
        await s.set_logging_level("debug")
    last = events(ops, "logging.set_level")[-1]
    assert (
        last.principal == "ops"
        and last.details["applied"] == ["everything"]
        and last.details["level"] == "debug"
    )


async def test_catalogue_refusals_are_audited(tmp_path: Path) -> None:
    cfg = config(tmp_path, "reader", twin=True)  # two upstreams list the same resource URIs
    async with stdio_session(cfg) as s:
        await s.list_tools()
    refused = events(cfg, "catalog.refused")
    assert refused, "a URI listed by two upstreams is refused, on the record"
    assert {e.details["kind"] for e in refused} >= {"resource"}
    # once per refusal, not once per rebuild
    keys = [(e.details["upstream"], e.details["kind"], e.details["name"]) for e in refused]
    assert len(keys) == len(set(keys))
