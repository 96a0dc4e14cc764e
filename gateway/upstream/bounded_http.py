"""Bounded messages from an HTTP upstream (``mcp.max_message_bytes``, issue 11 item 9).

The SDK's streamable HTTP client bounds one SSE event (``max_sse_event_size``) but reads a
JSON response whole, however big. Here a response hook wraps every non-SSE response body in
a counting stream: past the limit the read fails with ``MessageTooLarge`` (an
``httpx2.StreamError``, which the SDK turns into an error for that one request), so a
hostile server cannot make the gateway buffer a 100 MB answer. SSE events get the same
limit through the SDK's own parameter (see ``gateway.upstream.transport.open_transport``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2

Hook = Callable[[httpx2.Response], Awaitable[None]]
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
