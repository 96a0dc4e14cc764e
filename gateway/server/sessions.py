"""HTTP session hygiene: a per-principal session quota, revoked keys lose their sessions,
and slow clients cannot hold a connection open by trickling headers or a body.

The SDK's session manager keeps its sessions in private dicts; they are read (and a
session ended) through ``gateway.compat``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Container
from itertools import chain
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.compat import close_get_stream, close_http_session, open_http_sessions
from gateway.context import Principal
from gateway.errors import GatewayError
from gateway.logs import Outage
from gateway.server.connections import REFUSED as CONNECTIONS_REFUSED
from gateway.server.connections import TRUST, ConnectionBounds, OpenConnections
from gateway.server.lognoise import throttle_noise
from gateway.server.principals import scope_headers

if TYPE_CHECKING:
    from gateway.listen import ListenHub

_logger = logging.getLogger("symbi.http.sessions")
# a refused opening: principal, sessions it holds, openings of it still unanswered, the limit
QUOTA_LINE = "session quota: %s holds %d sessions and is opening %d (limit %d)"


class SessionQuota:
    """Refuses a new handshake-era session when its principal already holds ``limit`` of them.

    Sits inside the authentication gate (the principal is known). Openings in flight count
    too, so a burst of concurrent ``initialize`` requests cannot overshoot the quota.
    """

    def __init__(
        self,
        app: ASGIApp,
        manager: StreamableHTTPSessionManager,
        limit: int,
        client_id: Callable[[Principal], str],
        path: str,
    ) -> None:
        self.app = app
        self.manager = manager
        self.limit = limit
        self.client_id = client_id
        self.path = path
        self.opening: Counter[str] = Counter()
        self.answered: set[str] = set()  # ids of sessions whose initialize has been answered

    def _opens_session(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return False
        headers = scope_headers(scope)
        era = headers.get("mcp-protocol-version")
        return headers.get("mcp-session-id") is None and (era is None or era in HANDSHAKE_PROTOCOL_VERSIONS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("symbi.principal")
        if not self._opens_session(scope) or not isinstance(principal, Principal):
            await self.app(scope, receive, send)
            return
        who = self.client_id(principal)
        sessions = open_http_sessions(self.manager)
        self.answered.intersection_update(sid for sid, _owner in sessions)  # closed ones drop out
        # a session whose initialize is still being answered is in the manager already and in
        # ``opening`` too: held counts only the answered ones, so none is counted twice
        held = sum(1 for sid, owner in sessions if owner == who and sid in self.answered)
        if held + self.opening[who] >= self.limit:
            # both counts: a refusal by openings still unanswered said "holds 0 sessions"
            _logger.warning(QUOTA_LINE, principal.qualified, held, self.opening[who], self.limit)
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32000,
                    "message": f"too many open sessions for this principal (limit {self.limit})",
                },
            }
            await JSONResponse(body, status_code=429, headers={"retry-after": "5"})(scope, receive, send)
            return
        self.opening[who] += 1
        pending = [True]

        def opened(sid: str | None) -> None:
            if pending[0]:
                pending[0] = False
                if sid is not None:
                    self.answered.add(sid)
                self.opening[who] -= 1
                if self.opening[who] <= 0:
                    del self.opening[who]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                opened(Headers(raw=message.get("headers", [])).get("mcp-session-id"))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            opened(None)


class StreamExpiry:
    """When the credential each handshake-era session's GET stream was opened with expires (a
    JWT's ``exp``): the stream is one request, authenticated once, held open for as long as
    its client likes, so it is closed then (``sweep_revoked``). Only the stream: its client
    opens it again with a fresh token and resumes (``Last-Event-ID``); an expired token is
    refused at authentication."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}  # session id -> its GET stream's credential's expiry

    def opened(self, sid: str, principal: object) -> None:
        """Session ``sid``'s GET stream was opened (answered 200) by ``principal``."""
        exp = principal.expires if isinstance(principal, Principal) else None
        if exp is None:
            self._at.pop(sid, None)
        else:
            self._at[sid] = exp

    def due(self, now: float, open_ids: Container[str]) -> list[str]:
        """The open sessions whose GET stream's credential has expired; they and the sessions
        no longer open are forgotten here (the map stays bounded by the open sessions)."""
        gone = [sid for sid, exp in self._at.items() if exp < now or sid not in open_ids]
        for sid in gone:
            del self._at[sid]
        return [sid for sid in gone if sid in open_ids]

    def __len__(self) -> int:
        return len(self._at)


def end_expired(
    manager: StreamableHTTPSessionManager, hub: ListenHub | None, streams: StreamExpiry | None
) -> None:
    """Close the GET streams and end the listen streams held by JWTs past their ``exp``."""
    now = time.time()
    if hub is not None:
        hub.end_revoked(set(), now)
    if not streams:
        return
    for sid in streams.due(now, {sid for sid, _ in open_http_sessions(manager)}):
        if close_get_stream(manager, sid):
            _logger.info("closed the GET stream of session %s…: its token expired", sid[:8])


async def sweep_revoked(
    manager: StreamableHTTPSessionManager,
    is_live: Callable[[str], bool],
    interval: float,
    on_closed: Callable[[str], None] | None = None,
    listens: Callable[[], ListenHub | None] | None = None,
    streams: StreamExpiry | None = None,
) -> None:
    """Close every session whose API key was revoked (checked every ``interval`` seconds);
    ``on_closed(sid)`` then ends what hangs on it (the session's agents). The 2026-era listen
    streams of ``listens()`` (the gateway's hub, once it runs) of revoked keys end too; so do
    those of JWTs past their ``exp``, and the GET streams ``streams`` says were opened with
    one: each is a request authenticated once and held open.

    ``is_live`` may be a PostgreSQL read (keys shared by replicas): the keys of all open
    sessions are read in one worker thread per sweep, each key once (a thread hop per session
    every second cost a gateway holding 1,000 idle sessions 1,000 hops a second). A key store
    that cannot be read keeps the sessions (every request on them is authenticated again, and
    refused while the store is down) -- it never ends this task, which would take the
    gateway's lifespan (state probes, audit writer) down with it.
    """
    outage = Outage(_logger, "revoked-key sweep resumed: the key store answers again")
    while True:
        await anyio.sleep(interval)
        hub = listens() if listens is not None else None
        end_expired(manager, hub, streams)
        held = [
            (sid, cid.removeprefix("apikey:"))
            for sid, cid in open_http_sessions(manager)
            if cid is not None and cid.startswith("apikey:")
        ]
        listening = hub.key_ids() if hub is not None else set()
        if not held and not listening:
            continue
        kids = sorted({kid for _, kid in held} | listening)
        try:
            live = await anyio.to_thread.run_sync(_read_keys, is_live, kids)
        except Exception as e:  # noqa: BLE001 - StateUnavailable, or any failure to read: keep, retry
            why = e.message if isinstance(e, GatewayError) else f"{type(e).__name__}: {e}"
            outage.failed("revoked-key sweep paused, the key store cannot be read: %s", why)
            continue  # the store is down: the next sweep tries again
        outage.worked()
        for sid, kid in held:
            if not live[kid]:
                await _close_revoked(manager, sid, on_closed)
        if hub is not None:
            hub.end_revoked({kid for kid, ok in live.items() if not ok}, time.time())


def _read_keys(is_live: Callable[[str], bool], kids: list[str]) -> dict[str, bool]:
    return {kid: is_live(kid) for kid in kids}


async def _close_revoked(
    manager: StreamableHTTPSessionManager, sid: str, on_closed: Callable[[str], None] | None
) -> None:
    _logger.info("closing session %s…: its API key was revoked", sid[:8])
    try:
        closing = close_http_session(manager, sid)
        if closing is not None:
            await closing
        if on_closed is not None:
            on_closed(sid)
    except Exception:
        _logger.exception("closing a revoked key's session failed")


# set in a request's scope by the protocol (HeaderDeadlineHttpTools) once its whole body has
# arrived: then ``receive`` cannot wait, and BodyDeadline reads it without arming a timeout
BODY_RECEIVED = "symbi.body_received"


SMALL_BODY_BYTES = 65536  # a body outside the MCP path and the admin API (BodyDeadline)


class BodyDeadline:
    """Reads a request body whole within ``timeout`` seconds, then hands it to the app.

    A client that trickles its body (one byte every two seconds) gets 408 and the connection
    is closed, instead of holding a worker and a session slot for as long as it likes.
    """

    def __init__(
        self,
        app: ASGIApp,
        timeout: float,
        max_bytes: int,
        *,
        large_paths: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.max_bytes = max_bytes
        # only these paths take bodies up to max_bytes (the MCP path, the admin API, which
        # authenticate before any body is read); the rest (the dashboard's forms, 404s) at most
        # SMALL_BODY_BYTES: a body is buffered before its route is known
        self.large_paths = large_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        body = await self.read(scope, receive, send)
        if body is None:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None: the client left (nothing sent), or it was too large (413)
        or too slow (408), answered here."""
        if scope.get(BODY_RECEIVED):  # the server holds the whole body: no read can wait
            return await self._drain(scope, receive, send)
        try:
            # asyncio's own timeout (this runs in the server's request task, under no anyio
            # scope): an anyio deadline scope cost every POST about 30 more calls
            async with asyncio.timeout(self.timeout):
                return await self._drain(scope, receive, send)
        except TimeoutError:
            _logger.warning("request body not received within %.0f s: closing", self.timeout)
            await Response(
                "request body not received in time", status_code=408, headers={"connection": "close"}
            )(scope, receive, send)
            return None

    async def _drain(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """``read``'s loop: the body, or None (the client left, or 413 sent)."""
        chunks: list[bytes] = []
        size = 0
        limit = self.max_bytes
        if self.large_paths is not None and not self.large_paths(scope["path"]):
            limit = min(limit, SMALL_BODY_BYTES)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await Response("request body too large", status_code=413, headers={"connection": "close"})(
                    scope, receive, send
                )
                return None
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)


class HeldHead:
    """A request's transport as its response cycle sees it: the response's head (uvicorn's
    first write: status line and headers) is held until the body's first write, so the two
    leave in one system call (one segment, one wake-up and one read for the client) instead of
    two; or until this step of the event loop ends (``call_soon``), so a response whose body
    waits (an event stream) still shows its head at once. ``close`` sends a held head first.
    The bytes and their order are the same; the only write after a held head is the cycle's.
    """

    __slots__ = ("_transport", "_loop", "_held", "_fresh")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._fresh = True  # no write yet: the next one is the response's head

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif self._fresh:
            self._fresh = False
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():  # the client left meanwhile: nothing to send to
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # the rest of the transport, as it is
        return getattr(self._transport, name)


class HeaderDeadlineHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol (the C parser: a fraction of h11's CPU per request),
    closing a connection whose request headers are not complete within ``header_timeout``
    seconds of the connection or of the request's first byte (a kept-alive connection
    between requests is uvicorn's keep-alive timeout's), or after ``max_header_bytes``
    (431: httptools sets no limit, and 300 unauthenticated connections holding 3 MB of an
    unfinished header each took the gateway from 148 to 919 MB). Each response cycle writes
    through a ``HeldHead``: its head and body leave in one write. Open connections are bounded
    by their listener's ``bounds`` (``http.max_connections``; ``gateway.server.connections``)."""

    header_timeout: float = 10.0
    max_header_bytes: int = 65536
    bounds: ConnectionBounds | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        bounds = self.bounds  # the bound of the listener this connection came on
        self.open_connections: OpenConnections | None = bounds.of(transport) if bounds else None
        super().connection_made(transport)
        if self.open_connections is not None and not self.open_connections.opened(self):
            transport.write(CONNECTIONS_REFUSED)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is not None:  # this request's headers are still incomplete
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._too_large()

    def _too_large(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            _logger.warning("request headers over %d bytes: refused (431)", self.max_header_bytes)
            self.transport.write(_HEADERS_TOO_LARGE)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a request has begun (or a new one on a kept-alive connection)

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():  # refused: no request of this connection is served
            return
        # headers that came whole in one read were never counted in flight: count them here
        # (names and values summed in C: this runs for every request)
        headers = self.headers
        if sum(map(len, chain.from_iterable(headers))) + 4 * len(headers) > self.max_header_bytes:
            self._too_large()
            return
        self._disarm()
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before:  # a new request's cycle (its task has not run yet)
            cycle.transport = HeldHead(self.transport, self.loop)  # type: ignore[assignment]
            if self.open_connections is not None:
                self.open_connections.busy(self)
                self.scope[TRUST] = self._trust  # type: ignore[literal-required]

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.open_connections is not None:
            self.open_connections.idle(self)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if not self.cycle.more_body:  # the request's whole body is in the server's hands
            self.scope[BODY_RECEIVED] = True  # type: ignore[literal-required]

    def _trust(self) -> None:
        """This request passed a credential (``AuthGate``): never closed for another."""
        if self.open_connections is not None:
            self.open_connections.trusted(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.open_connections is not None:
            self.open_connections.closed(self)
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)
            self._header_bytes = 0

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            _logger.warning("request headers not received within %.0f s: closing", self.header_timeout)
            self.transport.close()


_HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"connection: close\r\ncontent-length: 33\r\n\r\nrequest header fields too large\r\n"
)


def http_protocol(
    header_timeout: float,
    max_header_bytes: int = 65536,
    max_connections: int | None = None,
    max_agent_connections: int | None = None,
) -> type[HttpToolsProtocol]:
    """The uvicorn ``http`` protocol class with this header deadline and size, holding at most
    ``max_connections`` open on TCP (None: no bound) and ``max_agent_connections`` on a Unix
    socket (None: counted with TCP's), its connections' warnings throttled (any caller's)."""
    throttle_noise()
    connections = None
    if max_connections is not None:
        connections = ConnectionBounds(max_connections, max_agent_connections)
    return type(
        "SymbiHttpToolsProtocol",
        (HeaderDeadlineHttpTools,),
        {
            "header_timeout": header_timeout,
            "max_header_bytes": max_header_bytes,
            "bounds": connections,
        },
    )
