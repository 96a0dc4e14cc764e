"""Resolve the client's name to a catalogue entry (unknown or hidden → refused)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.catalog import Catalog
from gateway.chain import CallNext
from gateway.context import CallContext, UpstreamInfo
from gateway.errors import UnknownTool

CatalogSource = Callable[[], Catalog]
UpstreamInfoSource = Callable[[str], UpstreamInfo]


class ResolveTool:
    """Looks the tool up in the current catalogue snapshot and fills ``call.tool``."""

    def __init__(self, catalog: CatalogSource, upstream_info: UpstreamInfoSource) -> None:
        self._catalog = catalog
        self._upstream_info = upstream_info

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        if call.kind == "tools/call" and call.tool is None:
            entry = self._catalog().tools.get(call.target)
            if entry is None:
                raise UnknownTool(f"unknown tool {call.target!r}")
            call.tool = entry.info
            call.upstream = self._upstream_info(entry.info.upstream)
        return await call_next(call)

