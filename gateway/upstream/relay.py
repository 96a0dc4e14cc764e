"""Relay of an upstream's server→client traffic to the downstream client that made the call.

An upstream session is shared by every client, and stdio carries no link between a
server→client request (sampling, elicitation, roots) and the call that caused it. We keep
the downstream callers with a call in flight on this upstream; a request or log message is
relayed to the most recent one. With one caller in flight that is exact; with several it is
the best available guess, and with none the request is refused (never sent to a stranger).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from mcp import types
from mcp.client.session import ClientRequestContext
from mcp.server.session import ServerSession
from mcp.shared.message import ServerMessageMetadata

_logger = logging.getLogger("symbi.relay")


class CallerRelay:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._inflight: dict[int, tuple[ServerSession, Any]] = {}
        # callers that cannot take a server->client request (2026-era clients): their calls'
        # requests go to the era bridge (gateway.upstream.bridge) instead
        self._bridged: dict[int, Callable[[Any], Awaitable[Any]]] = {}
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        """Calls to this upstream currently relaying back to a caller (``GET /api/state``)."""
        return len(self._inflight)

    @contextlib.contextmanager
    def caller(
        self, session: ServerSession | None, request_id: Any = None, ask: Callable[[Any], Awaitable[Any]] | None = None
    ) -> Iterator[None]:
        if session is None:
            yield
            return
        key = next(self._ids)
        self._inflight[key] = (session, request_id)
        if ask is not None:
            self._bridged[key] = ask
        try:
            yield
        finally:
            self._inflight.pop(key, None)
            self._bridged.pop(key, None)

    def _current(self) -> tuple[ServerSession, Any] | None:
        if not self._inflight:
            return None
        return self._inflight[next(reversed(self._inflight))]

    def _bridge(self) -> Callable[[Any], Awaitable[Any]] | None:
        """The era bridge of the current caller, if its client is of the 2026 era."""
        if not self._inflight:
            return None
        return self._bridged.get(next(reversed(self._inflight)))

    def _no_caller(self, what: str) -> types.ErrorData:
        return types.ErrorData(
            code=types.INVALID_REQUEST,
            message=f"symbi: {what} from upstream {self._upstream!r} refused: no client call in flight",
        )

    async def sampling(self, context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        down = self._current()
        if down is None:
            return self._no_caller("sampling request")
        if (ask := self._bridge()) is not None:
            return await _asked(ask, types.CreateMessageRequest(params=params))
        try:
            session, rid = down
            return await session.send_request(
                types.CreateMessageRequest(params=params), types.CreateMessageResult, metadata=_related(rid)
            )
        except Exception as e:  # noqa: BLE001 - the upstream gets an error, not a crash
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"sampling relay failed: {e}")

    async def elicitation(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
        down = self._current()
        if down is None:
            return self._no_caller("elicitation request")
        if (ask := self._bridge()) is not None:
            return await _asked(ask, types.ElicitRequest(params=params))
        try:
            session, rid = down
            return await session.send_request(types.ElicitRequest(params=params), types.ElicitResult, metadata=_related(rid))
        except Exception as e:  # noqa: BLE001
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"elicitation relay failed: {e}")

    async def list_roots(self, context: ClientRequestContext) -> Any:
        down = self._current()
        if down is None:
            return types.ListRootsResult(roots=[])
        if (ask := self._bridge()) is not None:
            return await _asked(ask, types.ListRootsRequest())
        try:
            session, rid = down
            return await session.send_request(types.ListRootsRequest(), types.ListRootsResult, metadata=_related(rid))
        except Exception as e:  # noqa: BLE001
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"roots relay failed: {e}")

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        _logger.debug("upstream %s log [%s]: %s", self._upstream, params.level, params.data)
        down = self._current()
        if down is None:
            return
        with contextlib.suppress(Exception):
            session, rid = down
            await session.send_log_message(
                params.level, params.data, logger=params.logger or self._upstream, related_request_id=rid
            )


async def _asked(ask: Callable[[Any], Awaitable[Any]], request: Any) -> Any:
    try:
        return await ask(request)
    except Exception as e:  # noqa: BLE001 - the upstream gets an error (no answer in time...), not a crash
        return types.ErrorData(code=types.INTERNAL_ERROR, message=f"{request.method}: no answer from the client ({type(e).__name__})")


def _related(request_id: Any) -> ServerMessageMetadata | None:
    return ServerMessageMetadata(related_request_id=request_id) if request_id is not None else None
