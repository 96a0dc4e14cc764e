"""Bounded messages from an HTTP upstream (``mcp.max_message_bytes``, issue 11 item 9).

The SDK's streamable HTTP client bounds one SSE event (``max_sse_event_size``) but reads a
JSON response whole, however big. Here a response hook wraps every non-SSE response body in
a counting stream: past the limit the read fails with ``MessageTooLarge`` (an
``httpx2.StreamError``, which the SDK turns into an error for that one request), so a
hostile server cannot make the gateway buffer a 100 MB answer. SSE events get the same
limit through the SDK's own parameter (see ``gateway.upstream.transport.open_transport``).

``paced_gets`` bounds how often the gateway opens a GET (SSE) stream to one upstream: the SDK
reconnects a GET stream that ended, and a call's stream that ended unanswered, after the
server's own ``retry:`` field and forever (each clean end resets its attempt count), so a
server answering ``retry: 0`` and closing made the gateway reconnect in a tight loop (some
450 GETs a second) for as long as the upstream was up.

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
RequestHook = Callable[[httpx2.Request], Awaitable[None]]
GET_INTERVAL_S = 1.0  # the SDK's own reconnection delay when a server names none
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
    """An ``httpx2`` response hook calling ``on_gone`` on a ``404`` to a request that named a
    session (the SDK sends ``mcp-session-id`` on every request after ``initialize``)."""

    async def hook(response: httpx2.Response) -> None:
        if response.status_code == 404 and "mcp-session-id" in response.request.headers:
            on_gone()

    return hook


def paced_gets(interval: float = GET_INTERVAL_S) -> RequestHook:
    """An ``httpx2`` request hook letting one GET start per ``interval`` seconds at most (the
    ones after wait their turn): POSTs, the calls themselves, are never held."""
    next_slot = 0.0

    async def hook(request: httpx2.Request) -> None:
        nonlocal next_slot
        if request.method != "GET":
            return
        now = anyio.current_time()
        slot = max(now, next_slot)
        next_slot = slot + interval
        if slot > now:
            await anyio.sleep(slot - now)

    return hook
