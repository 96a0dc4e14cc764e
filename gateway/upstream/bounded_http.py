"""Bounded messages from an HTTP upstream (``mcp.max_message_bytes``, issue 11 item 9).

The SDK's streamable HTTP client bounds one SSE event (``max_sse_event_size``) but reads a
JSON response whole, however big. Here a response hook wraps every non-SSE response body in
a counting stream: past the limit the read fails with ``MessageTooLarge`` (an
``httpx2.StreamError``, which the SDK turns into an error for that one request), so a
hostile server cannot make the gateway buffer a 100 MB answer. SSE events get the same
limit through the SDK's own parameter (see ``gateway.upstream.transport.open_transport``).

``PacedGets`` bounds how often the gateway opens a GET (SSE) stream to one upstream: the SDK
reconnects a GET stream that ended, and a call's stream that ended unanswered, after the
server's own ``retry:`` field and forever (each clean end resets its attempt count), so a
server answering ``retry: 0`` and closing made the gateway reconnect in a tight loop (some
450 GETs a second) for as long as the upstream was up. Each GET waits its turn: one second
after the one before, twice as long as the last wait when that one started within a minute
(up to 30 s), one second again after a quiet minute (a stream that lived that long was not a
loop). The SDK also gives the GET stream up for good after two failures in a row (a server
down for a moment loses its notifications until the gateway restarts it): the transport
reopens it (``gateway.compat.httpclient``) unless the server answered ``405``, MCP's "no stream
here"; the back-off paces those reopenings too.

``session_gone`` tells the upstream's supervisor when the server answers ``404`` to a request
naming its session (``Mcp-Session-Id``): MCP's way of saying the session is over (the server
restarted, or dropped it idle) and the client must initialize a new one. The SDK only fails
that request ("Session terminated"), and every later one the same way: the upstream stayed
"up" and unusable until the gateway restarted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import httpx2

Hook = Callable[[httpx2.Response], Awaitable[None]]
GET_INTERVAL_S = 1.0  # the SDK's own reconnection delay when a server names none
GET_INTERVAL_MAX_S = 30.0  # the longest wait of a GET's back-off
GET_QUIET_S = 60.0  # a GET this long after the last one waits GET_INTERVAL_S again
OVERSIZED_MARK = "(mcp.max_message_bytes)"  # ends the refusal's message, which the SDK wraps


class MessageTooLarge(httpx2.StreamError):
    """An HTTP upstream's response body went past ``mcp.max_message_bytes``."""


class _BoundedStream(httpx2.AsyncByteStream):
    def __init__(
        self,
        inner: httpx2.AsyncByteStream,
        limit: int,
        declared: int | None,
        on_oversized: Callable[[str], None],
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._declared = declared
        self._on_oversized = on_oversized

    def _refuse(self, what: str) -> MessageTooLarge:
        self._on_oversized(what)
        return MessageTooLarge(f"upstream sent {what} {OVERSIZED_MARK}")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._declared is not None and self._declared > self._limit:  # refused unread
            raise self._refuse(f"a response body of {self._declared} bytes (limit {self._limit})")
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise self._refuse(f"a response body over {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def bounded_responses(limit: int, on_oversized: Callable[[str], None]) -> Hook:
    """An ``httpx2`` response hook bounding every non-SSE body to ``limit`` bytes."""

    async def hook(response: httpx2.Response) -> None:
        if response.headers.get("content-type", "").lower().startswith("text/event-stream"):
            return  # per event: the SDK's max_sse_event_size
        length = response.headers.get("content-length", "")
        declared = int(length) if length.isdigit() else None
        if isinstance(response.stream, httpx2.AsyncByteStream):
            # the read fails (an error for that one request; the SDK catches StreamError)
            response.stream = _BoundedStream(response.stream, limit, declared, on_oversized)

    return hook


def session_gone(on_gone: Callable[[], None]) -> Hook:
    """An ``httpx2`` response hook calling ``on_gone`` on a ``404`` to a POST that named a
    session (the SDK sends ``mcp-session-id`` on every request after ``initialize``). Not a GET:
    a server without a GET stream may answer it 404 (a route for POST only), which restarted the
    upstream over and over; the SDK gives that stream up by itself."""

    async def hook(response: httpx2.Response) -> None:
        request = response.request
        if response.status_code == 404 and request.method == "POST" and "mcp-session-id" in request.headers:
            on_gone()

    return hook


class PacedGets:
    """One upstream's GETs: ``on_request`` (an ``httpx2`` request hook) makes each wait its turn
    (POSTs, the calls themselves, are never held); ``on_response`` notes a ``405`` to a GET."""

    def __init__(
        self, first: float = GET_INTERVAL_S, longest: float = GET_INTERVAL_MAX_S, quiet: float = GET_QUIET_S
    ) -> None:
        self._first, self._longest, self._quiet = first, longest, quiet
        self._gap = first
        self._last = -quiet  # when the last GET's turn came
        self.refused = False  # the server answered a GET 405: it offers no stream (MCP)

    async def on_request(self, request: httpx2.Request) -> None:
        if request.method != "GET":
            return
        now = anyio.current_time()
        if now - self._last >= self._quiet:  # the last stream lived a while: not a loop
            self._gap = self._first
            slot = now
        else:
            slot = max(now, self._last + self._gap)
            self._gap = min(self._gap * 2, self._longest)
        self._last = slot
        if slot > now:
            await anyio.sleep(slot - now)

    async def on_response(self, response: httpx2.Response) -> None:
        if response.request.method == "GET" and response.status_code == 405:
            self.refused = True
