"""Resolve the client's name to a catalogue entry (unknown or hidden → refused)."""

from __future__ import annotations

from typing import Any

from gateway.catalog import LiveCatalog
from gateway.chain import CallNext
from gateway.context import CallContext
from gateway.errors import UnknownTool


class ResolveTool:
    """Looks the tool up in the current catalogue snapshot and fills ``call.tool``."""

    def __init__(self, catalog: LiveCatalog) -> None:
        self._catalog = catalog

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        if call.kind == "tools/call" and call.tool is None:
            entry = self._catalog.snapshot.tools.get(call.target)
            if entry is None:
                raise UnknownTool(f"unknown tool {call.target!r}")
            call.tool = entry.info
            call.upstream = self._catalog.upstream_info(entry.info.upstream)
        return await call_next(call)
