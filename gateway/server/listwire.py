"""``tools/list`` pages answered in their wire form, each tool shaped once per protocol version.

The SDK's runner shapes a handler's ``ListToolsResult`` on every request: ``model_dump`` of
every tool, then the per-version sieve (``serialize_server_result``: validate, then dump, every
tool again). With pages of 500 tools that was ~60% of the gateway's CPU of a listing (py-spy
of ``bench/growth.py --upstreams 50``), for tools that do not change between listings.

``ToolListWire`` is the innermost server middleware: a ``tools/list`` it takes runs the same
page logic as the SDK's handler (``Front.tool_page``: the pager's MAC'd cursor, blocked and
removed tools left out, the policy per principal, errors made JSON-RPC errors by
``gateway.boundary``), and answers with each tool's wire dict, computed once per ``Tool``
object and protocol version through the SDK's own sieve on a one-tool result, in an envelope
sieved the same way (``nextCursor``, the 2026 era's ``resultType``), stamped with
``serverInfo`` on the 2026 era as the runner stamps. The SDK's contract: a middleware that
returns without ``call_next`` owns its result, envelope included; the middleware outside it
(the SDK's SERVER span) still wraps it. Anything unusual goes on to the SDK unchanged: a
session before ``initialize``, params the SDK's surface refuses, a cache hint set for
``tools/list``. ``mcp.list_fast_path = false``: every listing through the SDK.

The cached dicts are shared between replies: nothing on the outbound path writes into a
result's nested values (the runner replaces ``_meta`` rather than writing into it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.shared.exceptions import MCPError
from mcp_types import methods as _methods
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from gateway.catalog import CatalogTool
from gateway.compat import connection_of

_logger = logging.getLogger("symbi.server.listwire")
METHOD = "tools/list"
_SLACK = 64  # cache entries beyond the catalogue's before it is cleared (renamed, removed tools)

Ctx = ServerRequestContext[Any, Any]
PageFn = Callable[[Ctx, types.PaginatedRequestParams], Awaitable[tuple[Sequence[CatalogTool], str | None]]]


def _shape(version: str, result: types.ListToolsResult) -> dict[str, Any]:
    """The runner's shaping of a handler's result: its dump through the per-version sieve."""
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return _methods.serialize_server_result(METHOD, version, dumped)


class ToolWireCache:
    """Each tool's wire dict per protocol version, by tool name; an entry is reused while the
    catalogue serves that same ``Tool`` object (a re-listed or changed tool is a new one)."""

    def __init__(self) -> None:
        self._wire: dict[tuple[str, str], tuple[types.Tool, dict[str, Any]]] = {}

    def wire(self, version: str, tool: types.Tool) -> dict[str, Any]:
        key = (tool.name, version)
        hit = self._wire.get(key)
        if hit is not None and hit[0] is tool:
            return hit[1]
        shaped: dict[str, Any] = _shape(version, types.ListToolsResult(tools=[tool]))["tools"][0]
        self._wire[key] = (tool, shaped)
        return shaped

    def page(self, version: str, tools: Sequence[types.Tool], catalogue_size: int) -> list[dict[str, Any]]:
        if len(self._wire) > len(KNOWN_PROTOCOL_VERSIONS) * catalogue_size + _SLACK:  # stale names
            self._wire.clear()
        return [self.wire(version, t) for t in tools]


class ToolListWire:
    """Server middleware answering ``tools/list`` from ``ToolWireCache`` (see the module doc)."""

    def __init__(self, server: Server[Any], page: PageFn, catalogue_size: Callable[[], int]) -> None:
        self._server = server
        self._page = page
        self._size = catalogue_size
        self.cache = ToolWireCache()
        self.taken = 0  # listings answered here (tests)

    async def __call__(self, ctx: Ctx, call_next: CallNext) -> HandlerResult:
        if ctx.method != METHOD or METHOD in self._server.cache_hints:
            return await call_next(ctx)
        version = ctx.protocol_version
        if not connection_of(ctx.session).initialize_accepted:
            return await call_next(ctx)  # the SDK's init gate answers
        try:  # the runner's checks, in its order; a refusal is the SDK's to word
            _methods.validate_client_request(METHOD, version, ctx.params)
            entry = self._server.get_request_handler(METHOD)
            if entry is None:
                return await call_next(ctx)
            params = entry.params_type.model_validate({} if ctx.params is None else ctx.params, by_name=False)
        except Exception:  # noqa: BLE001 - the SDK's path raises its own error for it
            return await call_next(ctx)
        if not isinstance(params, types.PaginatedRequestParams):
            return await call_next(ctx)  # a handler registered for other params: the SDK's
        page, next_cursor = await self._page(ctx, params)
        try:
            result = _shape(version, types.ListToolsResult(tools=[], next_cursor=next_cursor))
            result["tools"] = self.cache.page(version, [e.tool for e in page], self._size())
        except ValidationError:  # as the runner answers a result its sieve refuses
            _logger.exception("a tools/list page failed the %s result surface", version)
            raise MCPError(code=types.INTERNAL_ERROR, message="Handler returned an invalid result") from None
        self.taken += 1
        return self._stamp(version, result)

    def _stamp(self, version: str, result: dict[str, Any]) -> dict[str, Any]:
        """The runner's 2026-era envelope: ``resultType`` and the ``serverInfo`` ``_meta`` stamp."""
        if version not in MODERN_PROTOCOL_VERSIONS:
            return result
        if result.get("resultType") is None:
            result["resultType"] = "complete"
        result["_meta"] = {types.SERVER_INFO_META_KEY: self._server.server_info_stamp}
        return result
