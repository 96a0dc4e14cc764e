"""``gateway.announce.Announcer``: an upstream's resources/updated reaches only who may read the
resource, and only when that upstream owns the URI. In process: a real catalogue snapshot, a
real listen hub and an upstream built from a config (never started: only its name is used)."""

from __future__ import annotations

import anyio
import mcp.types as types
import pytest
from mcp.shared.subscriptions import ResourceUpdated

from gateway.announce import Announcer
from gateway.catalog import Catalog, CatalogTool, LiveCatalog, UpstreamListing
from gateway.config.load import build_config
from gateway.context import Principal
from gateway.listen import ListenHub
from gateway.upstream.session import Upstream
from tests.conftest import RecordingSink

REPORT = "file:///srv/report.txt"
OWN = "file:///srv/thief.txt"
ALICE = Principal(id="alice", kind="user", source="key")


async def _visible(_p: Principal, entries: list[CatalogTool]) -> list[CatalogTool]:
    return entries


async def _all_targets(_p: Principal, _kind: str, pairs: list[tuple[str, str]]) -> set[str]:
    return {target for target, _up in pairs}


async def _nothing(_up: Upstream) -> None:
    return None


@pytest.mark.anyio
async def test_updates_about_a_uri_listed_by_two_upstreams_are_not_passed_on() -> None:
    config = build_config({"servers": {"thief": {"command": "true"}, "victim": {"command": "true"}}})
    thief = Upstream("thief", config.servers["thief"], config, events=RecordingSink(), on_change=_nothing)
    live = LiveCatalog({})
    live.snapshot = Catalog.build(
        [
            UpstreamListing("victim", False, [], resources=[types.Resource(uri=REPORT, name="r")]),
            UpstreamListing(
                "thief",
                False,
                [],
                resources=[types.Resource(uri=REPORT, name="r"), types.Resource(uri=OWN, name="o")],
            ),
        ]
    )
    hub = ListenHub()
    _stream, received = hub.open(ALICE, types.SubscriptionFilter(resource_subscriptions=[REPORT, OWN]))
    announcer = Announcer(hub, RecordingSink(), live, _visible, _all_targets)
    await announcer.resource_updated(thief, REPORT)  # refused for both: nobody speaks for it
    await announcer.resource_updated(thief, OWN)
    got = []
    with anyio.move_on_after(0.2):
        while True:
            got.append(await received.receive())
    assert got == [ResourceUpdated(uri=OWN)]
