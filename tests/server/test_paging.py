"""The ``tools/list`` cursor (``gateway.server.paging``): opaque, MAC'd, bound to its caller.

The listing itself (pages, the policy, a changing catalogue) is tested with the real SDK client
over HTTP in ``tests/server/http/test_tools_paging.py``; these are the cursor's own checks.
"""

from __future__ import annotations

import base64

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.catalog import Catalog, LiveCatalog
from gateway.context import Principal
from gateway.server.paging import ToolPager

ALICE = Principal(id="alice", source="key")
JWT_ALICE = Principal(id="alice", source="jwt", issuer="https://idp.invalid")


def _refused(pager: ToolPager, who: Principal, cursor: str) -> None:
    with pytest.raises(MCPError) as info:
        pager.decode(who, cursor)
    assert info.value.code == types.INVALID_PARAMS


def test_a_cursor_round_trips_for_its_caller() -> None:
    pager = ToolPager(10)
    assert pager.decode(ALICE, pager.encode(ALICE, 7, 500)) == (7, 500)


def test_a_cursor_is_opaque() -> None:
    cursor = ToolPager(10).encode(ALICE, 7, 500)
    assert "alice" not in cursor and cursor.count(".") == 1


def test_another_caller_another_process_or_an_edit_is_refused() -> None:
    pager = ToolPager(10)
    cursor = pager.encode(ALICE, 7, 500)
    _refused(pager, JWT_ALICE, cursor)  # same id, another namespace
    _refused(ToolPager(10), ALICE, cursor)  # another key (another process, a restart)
    body, mac = cursor.split(".")
    forged = base64.urlsafe_b64encode(b"7:0").rstrip(b"=").decode()
    _refused(pager, ALICE, f"{forged}.{mac}")
    for bad in ("", ".", "a.b.c", body, f"{body}.", f"{body}.{mac[:-2]}", "%%.%%", "7:0"):
        _refused(pager, ALICE, bad)


def test_the_live_catalogue_keeps_a_few_replaced_snapshots_by_version() -> None:
    live = LiveCatalog({})
    first = live.version
    kept = [live.snapshot]
    for _ in range(LiveCatalog.RETAINED):
        live.snapshot = Catalog.empty()
        kept.append(live.snapshot)
    assert live.at(live.version) is live.snapshot
    assert live.at(first) is kept[0]  # replaced RETAINED times: still there
    live.snapshot = Catalog.empty()
    assert live.at(first) is None  # once more: gone
    assert live.at(first + 1) is kept[1]
