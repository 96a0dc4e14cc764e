"""Each list of an upstream is bounded by ``mcp.max_listed_per_upstream`` (red-team finding L):
a longer one is refused whole, none of it served, and reported once with the key named. Real
gateway (``symbi mcp``), real upstreams (tests/peers/listing_server.py), the SDK client."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.audit import store
from gateway.config.load import load_config
from tests.conftest import ROOT, upstream_writable, write_config
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio

LIMIT = 50


def config(
    tmp_path: Path, offers: dict[str, dict[str, Any]], limit: int = LIMIT, verification: str = "tofu"
) -> tuple[Path, dict[str, Path]]:
    """A gateway with one listing server per entry of ``offers``, lists bounded by ``limit``;
    the URIs server NAME is asked to read go to ``upstream_writable(tmp_path) / "NAME.reads"``."""
    files: dict[str, Path] = {}
    tables = ""
    for name, offer in offers.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(offer))
        reads = upstream_writable(tmp_path) / f"{name}.reads"
        tables += (
            f'[servers.{name}]\ncommand = "{sys.executable}"\n'
            f'args = ["{ROOT / "tests/peers/listing_server.py"}"]\nverification = "{verification}"\n'
            f'env = {{ LISTING = "{files[name]}", NAME = "{name}", READS = "{reads}" }}\n'
        )
    body = f"[mcp]\nmax_listed_per_upstream = {limit}\n[sandbox]\ncode_tools = false\n" + tables
    return write_config(tmp_path, body), files


def misbehaved(cfg: Path) -> list[dict[str, Any]]:
    conn = store.open_reader(load_config(cfg).audit_path)
    try:
        return [dict(e.details) for e in store.query(conn, types=("upstream.misbehaved",))]
    finally:
        conn.close()


async def names(s: Any) -> set[str]:
    return {t.name for t in (await s.list_tools()).tools}


async def test_a_list_over_the_limit_is_refused_whole_and_reported_once(tmp_path: Path) -> None:
    victim = {"tools": [{"name": "danger", "description": "Deletes.", "inputSchema": {"type": "object"}}]}
    cfg, files = config(tmp_path, {"victim": victim, "thief": {"many_tools": 10}})
    async with stdio_session(cfg) as s:
        assert {"thief__n9", "thief__announce", "victim__danger"} <= await names(s)
        files["thief"].write_text(json.dumps({"many_tools": LIMIT}))  # with announce: one over
        assert not (await s.call_tool("thief__announce", {})).is_error
        with anyio.fail_after(20):
            while "thief__announce" in await names(s):
                await anyio.sleep(0.1)
        listed = await names(s)
        assert not {n for n in listed if n.startswith("thief__")}  # none of it, not the first 50
        assert "victim__danger" in listed
        assert not (await s.call_tool("victim__danger", {})).is_error
        r = await s.call_tool("thief__n0", {})
        assert r.is_error and r.meta["symbi/error"]["code"] == "unknown_tool"  # type: ignore[index]
    [event] = misbehaved(cfg)
    assert (event["upstream"], event["list"], event["limit"]) == ("thief", "tools", LIMIT)
    assert "mcp.max_listed_per_upstream" in event["reason"]


async def test_resources_are_bounded_apart_from_tools(tmp_path: Path) -> None:
    resources = [{"uri": f"file:///r/{i}", "name": f"r{i}"} for i in range(LIMIT + 1)]
    cfg, _files = config(tmp_path, {"thief": {"many_tools": 3, "resources": resources}})
    async with stdio_session(cfg) as s:
        assert {"thief__n0", "thief__n2"} <= await names(s)  # its tools are within the limit
        listed = [str(r.uri) for r in (await s.list_resources()).resources]
        assert not [u for u in listed if u.startswith("file:///r/")]
    assert [(e["upstream"], e["list"]) for e in misbehaved(cfg)] == [("thief", "resources")]


async def test_a_list_at_the_limit_is_served(tmp_path: Path) -> None:
    cfg, _files = config(tmp_path, {"thief": {"many_tools": LIMIT - 1}})  # announce makes LIMIT
    async with stdio_session(cfg) as s:
        assert len({n for n in await names(s) if n.startswith("thief__")}) == LIMIT
    assert misbehaved(cfg) == []
