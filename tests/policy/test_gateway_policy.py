"""The policy end to end through ``symbi mcp`` with a real upstream that records what reaches it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import POLICY, ROOT, everything_stdio_config, upstream_writable, write_config
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio
MUTABLE = ROOT / "tests/peers/mutable_server.py"


def policy_data(tmp_path: Path, **over: Any) -> Path:
    data = {
        "principals": {
            "local": {"roles": ["dev"]},
            "reader": {"roles": [], "tools": ["mut__echo"]},
        },
        "roles": {
            "dev": {
                "tools": ["mut__*"],
                "deny_tools": ["mut__add_tool"],
                "resources": ["**"],
                "prompts": ["**"],
            }
        },
        "upstreams": {"mut": {"allow_unverified": True}},
        "fs_roots": ["/srv/allowed"],
        "path_arguments": ["path"],
        "url_arguments": [],
        "url_hosts": [],
        "default_rate_limit": 1000,
        "default_max_calls_per_hour": 0,
        "tool_rate_limits": {},
        "max_result_bytes": {},
        "redact_arguments": {"*": ["api_token"]},
        "redact_result": {},
        "audit_minimal": [],
    }
    data.update(over)
    data["principals"] = {"stdio": data["principals"]}  # these tests run over stdio
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"symbi_data": data}))
    return path


def cfg(tmp_path: Path, principal: str = "local", **over: Any) -> tuple[Path, Path]:
    record = upstream_writable(tmp_path) / "calls.jsonl"
    path = write_config(
        tmp_path,
        f"""
        [gateway.stdio_principal]
        id = "{principal}"
        [policy]
        path = "{POLICY}"
        data = "{policy_data(tmp_path, **over)}"
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        env = {{ RECORD_FILE = "{record}" }}
        """,
        name=f"symbi-{principal}.toml",
    )
    return path, record


def recorded(record: Path) -> list[dict[str, Any]]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


async def test_denied_call_is_an_error_with_the_reason_and_never_reaches_the_upstream(tmp_path: Path) -> None:
    path, record = cfg(tmp_path)
    async with stdio_session(path) as s:
        r = await s.call_tool("mut__read_path", {"path": "/srv/allowed/../../etc/shadow"})
        assert r.is_error
        assert r.meta["symbi/error"]["code"] == "policy_denied"  # type: ignore[index]
        assert r.meta["symbi/error"]["reasons"]  # type: ignore[index]
        denied = await s.call_tool("mut__add_tool", {})  # denied outright = hidden = unknown
        assert denied.is_error and denied.meta["symbi/error"]["code"] == "unknown_tool"  # type: ignore[index]
        ok = await s.call_tool("mut__read_path", {"path": "/srv/allowed/notes.txt"})
        assert not ok.is_error
    calls = recorded(record)
    assert [c["arguments"]["path"] for c in calls if c["tool"] == "read_path"] == ["/srv/allowed/notes.txt"]
    assert not [c for c in calls if c["tool"] == "add_tool"]


async def test_redacted_argument_never_reaches_the_upstream(tmp_path: Path) -> None:
    path, record = cfg(tmp_path)
    async with stdio_session(path) as s:
        r = await s.call_tool("mut__read_path", {"path": "/srv/allowed/a", "api_token": "s3cr3t-value"})
        assert not r.is_error
    [call] = [c for c in recorded(record) if c["tool"] == "read_path"]
    assert call["arguments"]["api_token"] == "[REDACTED]"
    assert "s3cr3t-value" not in record.read_text()


async def test_rate_limit_trips_at_the_configured_count(tmp_path: Path) -> None:
    path, record = cfg(tmp_path, tool_rate_limits={"mut__echo": 3})
    async with stdio_session(path) as s:
        results = [await s.call_tool("mut__echo", {"message": f"m{i}"}) for i in range(5)]
    assert [r.is_error for r in results] == [False, False, False, True, True]
    assert results[3].meta["symbi/error"]["code"] == "rate_limited"  # type: ignore[index]
    assert len([c for c in recorded(record) if c["tool"] == "echo"]) == 3


async def test_identical_calls_meet_the_hourly_cap_despite_the_decision_cache(tmp_path: Path) -> None:
    """The same call three times: the policy reads calls_last_hour, so the third decision is
    evaluated on the moved counter and denied, never answered from the cached allow."""
    path, record = cfg(tmp_path, default_max_calls_per_hour=2)
    async with stdio_session(path) as s:
        results = [await s.call_tool("mut__echo", {"message": "same"}) for _ in range(3)]
    assert [r.is_error for r in results] == [False, False, True]
    assert results[2].meta["symbi/error"]["code"] == "policy_denied"  # type: ignore[index]
    assert len([c for c in recorded(record) if c["tool"] == "echo"]) == 2


async def test_tools_list_differs_by_principal_and_hidden_tools_are_refused(tmp_path: Path) -> None:
    dev_cfg, _ = cfg(tmp_path, "local")
    reader_cfg, record = cfg(tmp_path, "reader")
    async with stdio_session(dev_cfg) as s:
        dev = {t.name for t in (await s.list_tools()).tools}
    async with stdio_session(reader_cfg) as s:
        reader = {t.name for t in (await s.list_tools()).tools}
        hidden = await s.call_tool("mut__read_path", {"path": "/srv/allowed/x"})
    assert "mut__read_path" in dev and "mut__add_tool" not in dev
    assert reader == {"mut__echo"}
    assert hidden.is_error and hidden.meta["symbi/error"]["code"] == "unknown_tool"  # type: ignore[index]
    assert not [c for c in recorded(record) if c["tool"] == "read_path"]


def _shape(r: Any, name: str) -> tuple[Any, ...]:
    """A refusal with the tool's name masked: what a caller can tell two refusals apart by."""
    text = r.content[0].text.replace(name, "NAME")
    reasons = tuple(x.replace(name, "NAME") for x in r.meta["symbi/error"]["reasons"])
    return (r.is_error, text, r.meta["symbi/error"]["code"], reasons)


async def test_a_hidden_tool_answers_like_a_missing_one_before_its_arguments_are_checked(
    tmp_path: Path,
) -> None:
    """Attack: probe a hidden tool with bad arguments to learn its schema (arguments_invalid)."""
    reader_cfg, record = cfg(tmp_path, "reader")
    async with stdio_session(reader_cfg) as s:
        probes: list[tuple[str, dict[str, Any]]] = [
            ("mut__read_path", {}),  # hidden, required argument missing
            ("mut__read_path", {"path": 42}),  # hidden, wrong type
            ("mut__read_path", {"path": "/srv/allowed/x"}),  # hidden, valid arguments
            ("mut__no_such_tool", {}),
        ]
        results = [(name, await s.call_tool(name, args)) for name, args in probes]
        visible_bad = await s.call_tool("mut__echo", {})
    shapes = {_shape(r, name) for name, r in results}
    assert len(shapes) == 1, shapes
    assert results[0][1].meta["symbi/error"]["code"] == "unknown_tool"  # type: ignore[index]
    # a visible tool still reports its bad arguments
    assert visible_bad.meta["symbi/error"]["code"] == "arguments_invalid"  # type: ignore[index]
    assert not [c for c in recorded(record) if c["tool"] == "read_path"]


async def test_resource_and_prompt_listings_differ_by_principal(tmp_path: Path) -> None:
    from tests.conftest import require_peers

    require_peers()
    data = {
        "principals": {
            "local": {"roles": ["dev"]},
            "reader": {"roles": [], "tools": ["everything__echo"], "prompts": ["everything__simple-prompt"]},
        },
        "roles": {"dev": {"tools": ["everything__*"], "resources": ["**"], "prompts": ["**"]}},
        "upstreams": {"everything": {"allow_unverified": True}},
    }

    def cfg(principal: str) -> Path:
        return everything_stdio_config(
            tmp_path,
            principal=principal,
            policy_data=policy_data(tmp_path, **data),
            name=f"ev-{principal}.toml",
        )

    dev_cfg, reader_cfg = cfg("local"), cfg("reader")
    async with stdio_session(dev_cfg) as s:
        dev_resources = [r.uri for r in (await s.list_resources()).resources]
        dev_templates = [t.uri_template for t in (await s.list_resource_templates()).resource_templates]
        dev_prompts = {p.name for p in (await s.list_prompts()).prompts}
    async with stdio_session(reader_cfg) as s:
        reader_resources = [r.uri for r in (await s.list_resources()).resources]
        reader_templates = [t.uri_template for t in (await s.list_resource_templates()).resource_templates]
        reader_prompts = {p.name for p in (await s.list_prompts()).prompts}
    assert (
        dev_resources
        and dev_templates
        and {"everything__simple-prompt", "everything__args-prompt"} <= dev_prompts
    )
    assert reader_resources == [] and reader_templates == []
    assert reader_prompts == {"everything__simple-prompt"}


async def test_completion_needs_the_right_to_use_the_prompt(tmp_path: Path) -> None:
    from mcp import types
    from mcp.shared.exceptions import MCPError

    from tests.conftest import EVERYTHING_JS, require_peers

    require_peers()
    data = {
        "principals": {"reader": {"roles": [], "prompts": ["everything__simple-prompt"]}},
        "roles": {},
        "upstreams": {"everything": {"allow_unverified": True}},
    }
    cfg = write_config(
        tmp_path,
        f"""
        [gateway.stdio_principal]
        id = "reader"
        [policy]
        path = "{POLICY}"
        data = "{policy_data(tmp_path, **data)}"
        [sandbox]
        code_tools = false
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
    )
    async with stdio_session(cfg) as s:
        with pytest.raises(MCPError) as e:
            await s.complete(
                types.PromptReference(type="ref/prompt", name="everything__completable-prompt"),
                {"name": "department", "value": "E"},
            )
        assert e.value.error.code == types.INVALID_PARAMS


async def test_key_variants_and_secret_values_never_reach_the_upstream_or_the_audit_log(
    tmp_path: Path,
) -> None:
    """Attack: ``apiToken`` / ``API-TOKEN`` instead of ``api_token``; a JWT under a harmless key."""
    path, record = cfg(tmp_path)
    jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXZhbHVl"
    async with stdio_session(path) as s:
        r = await s.call_tool("mut__read_path", {"path": "/srv/allowed/a", "api_token": "s3cr3t-one"})
        assert not r.is_error
        r = await s.call_tool("mut__echo", {"message": f"forward {jwt} please"})
        assert not r.is_error
    text = record.read_text()
    assert "s3cr3t-one" not in text and jwt not in text
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("audit*.db*"))
    assert stored and jwt.encode() not in stored and b"s3cr3t-one" not in stored
