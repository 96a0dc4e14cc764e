"""A list over ``mcp.max_listed_per_upstream`` with the audit log broken (a full disk,
``on_failure = "deny"``): its ``upstream.misbehaved`` record raised ``AuditError`` out of the
listing. After a list_changed the refresh failed, and the upstream's old list stayed served;
at a connect the connection failed, and the upstream was restarted once more. Now the record
is refused (logged) and the list refused whole all the same. A real gateway, real upstreams
(tests/peers/listing_server.py), the log closed as a broken disk would leave it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import pytest

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.config import load_config
from gateway.events import Event
from tests.conftest import FAST_RESTARTS
from tests.upstream.test_listing import LIMIT, config

pytestmark = pytest.mark.anyio


def thief_tools(gw: Gateway) -> set[str]:
    return {n for n in gw.catalog.tools if n.startswith("thief__")}


def _break_log(gw: Gateway) -> None:
    assert gw.audit is not None
    gw.audit.close()  # every record refused from now on


async def test_a_list_changed_over_the_limit_with_the_log_broken_serves_none_of_it(tmp_path: Path) -> None:
    cfg, files = config(tmp_path, {"thief": {"many_tools": 3}})
    gw = make_gateway(load_config(cfg, {}))
    async with gw.running():
        up = gw.upstreams["thief"]
        assert {"thief__n0", "thief__announce"} <= thief_tools(gw)
        _break_log(gw)
        files["thief"].write_text(json.dumps({"many_tools": LIMIT}))  # with announce: one over
        await up.call_tool("announce", {})  # straight to the upstream: it sends list_changed
        with anyio.fail_after(15):  # before: the refresh failed, the old list stayed served
            while thief_tools(gw):
                await anyio.sleep(0.05)
        assert up.state == "up" and up.restarts == 0 and up.listing.tools == []


async def test_a_connect_over_the_limit_with_the_log_broken_is_not_restarted(tmp_path: Path) -> None:
    cfg, files = config(tmp_path, {"thief": {"many_tools": 3}})
    fast = f"[mcp]\n{FAST_RESTARTS}"
    cfg.write_text(cfg.read_text().replace("[mcp]\n", fast, 1))
    gw = make_gateway(load_config(cfg, {}))
    async with gw.running():
        up = gw.upstreams["thief"]
        assert "thief__n0" in thief_tools(gw)
        _break_log(gw)
        files["thief"].write_text(json.dumps({"many_tools": LIMIT}))
        await up.restart()
        with anyio.fail_after(30):
            while not (up.restarts >= 1 and up.state == "up"):
                await anyio.sleep(0.05)
        # before: the connect failed on the record, and a second restart came up
        assert up.restarts == 1 and up.listing.tools == []
        assert not thief_tools(gw)


async def test_a_refused_misbehaved_record_is_tried_once_a_spell_and_its_end_still_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Session 44 tried the refused record again at each fetch over the limit: a log refuses
    an emit only when broken or closed, for the process's life (``events.Unsent``), so each
    try was one more ERROR, and the spell was forgotten, its "within the limit again" line
    lost. Now one try a spell (the refusal logged, the last trace), and the spell's end logged."""
    cfg, files = config(tmp_path, {"thief": {"many_tools": 3}})
    gw = make_gateway(load_config(cfg, {}))
    async with gw.running():
        up = gw.upstreams["thief"]
        _break_log(gw)
        files["thief"].write_text(json.dumps({"many_tools": LIMIT}))

        def logged(name: str, text: str) -> int:
            return sum(text in r.getMessage() for r in caplog.records if r.name == name)

        async def fetched() -> None:  # a list_changed: one fetch (each makes a new Listing)
            before = up.listing
            await up.call_tool("announce", {})
            with anyio.fail_after(15):
                while up.listing is before:
                    await anyio.sleep(0.05)

        with caplog.at_level(logging.WARNING):
            await fetched()  # over the limit
            await fetched()  # over the limit again: before, its record was tried again
            files["thief"].write_text(json.dumps({"many_tools": 3}))
            await fetched()
        assert up.listing.tools  # within the limit: served again
        assert logged("symbi.events", Event.UPSTREAM_MISBEHAVED) == 1  # record_acted's refusal
        assert logged("symbi.upstream", "within the limit again") == 1
