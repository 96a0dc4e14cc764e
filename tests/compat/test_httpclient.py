"""``gateway.compat.httpclient`` in-process: the SDK's client session over ``screened_http_client``
against a real streamable HTTP peer (tests/peers/surrogate_server.py, a subprocess) that writes
text which is not valid UTF-8 (the JSON escape ``\\ud800``) where each test asks.

tests/upstream/test_upstream_text.py attacks the same through whole gateways (subprocesses);
here the transport runs in the test's process, so what it hands the session, what it tells
``seen`` and what it POSTs back are asserted directly (and mutation testing can see it).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession, MCPError, types
from mcp.shared.message import ClientMessageMetadata
from mcp_types import PARSE_ERROR

from gateway.compat import SdkChanged, screened_http_client
from gateway.upstream.bounded_http import bounded_responses
from gateway.upstream.unreadable import Unreadable
from tests.conftest import surrogate_http

INTERNAL_ERROR, INVALID_PARAMS = -32603, -32602
READ_TIMEOUT_S = 15  # a call the transport loses fails the test here instead of hanging it
REQUESTS = {
    "sampling": "/params/messages/0/content/text",
    "elicitation": "/params/message",
    "roots": "/params/_meta/note",
}
NOTIFICATIONS = {"notification": "/params/data", "progress": "/params/message"}

pytestmark = pytest.mark.anyio


def _peer(**env: str) -> contextlib.AbstractContextManager[str]:
    # the peer's wait for the answer to its own request, shorter than READ_TIMEOUT_S
    return surrogate_http("5", **env)


@pytest.fixture(scope="module")
def peer() -> Iterator[str]:
    with _peer() as url:
        yield url


class Seen:
    """What the transport told ``seen``, and what the session's message handler got."""

    def __init__(self) -> None:
        self.refused: list[Unreadable] = []
        self.handed: list[Any] = []

    async def handler(self, message: Any) -> None:
        self.handed.append(message)


@contextlib.asynccontextmanager
async def _session(url: str, seen: Seen, *, limit: int | None = None) -> AsyncIterator[ClientSession]:
    """A client session over the screened transport, as gateway.upstream.transport opens it
    (the same response hook bounding a JSON body when ``limit`` is given)."""
    hooks = {"response": [bounded_responses(limit, lambda _: None)]} if limit is not None else {}
    async with (
        httpx2.AsyncClient(timeout=30, event_hooks=hooks) as hc,
        screened_http_client(url, http_client=hc, max_sse_event_size=limit, seen=seen.refused.append) as rw,
        ClientSession(*rw, read_timeout_seconds=READ_TIMEOUT_S, message_handler=seen.handler) as s,
    ):
        await s.initialize()
        yield s


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def _received(s: ClientSession) -> list[dict[str, Any]]:
    """Every answer POSTed to the peer so far."""
    got: list[dict[str, Any]] = json.loads(_text(await s.call_tool("t", {"where": "received"})))
    return got


def _exceptions(seen: Seen) -> list[Exception]:
    return [m for m in seen.handed if isinstance(m, Exception)]


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    ("where", "pointer"), [("result", "/result/content/0/text"), ("error", "/error/message")]
)
async def test_an_answer_that_is_not_utf8_fails_its_call_naming_where(
    peer: str, where: str, pointer: str, sse: bool
) -> None:
    seen = Seen()
    async with _session(peer, seen) as s:
        before = await _received(s)
        with pytest.raises(MCPError) as e:
            # then: a notification follows the answer on its SSE stream, which the answer ended
            await s.call_tool("t", {"where": where, "sse": sse, "then": True})
        assert e.value.error.code == INTERNAL_ERROR and pointer in e.value.error.message
        assert [(f.kind, f.where) for f in seen.refused] == [("answer", pointer)]
        assert _text(await s.call_tool("ok", {"message": "next"})) == "next"  # the session goes on
        # the refusal went to the session only: nothing was POSTed back to the upstream
        assert await _received(s) == before
    assert seen.handed == []  # no exception, and nothing read after the answer


async def test_an_answer_on_a_calls_stream_is_that_calls_whatever_its_id(peer: str) -> None:
    """As the SDK reads an answer on a call's SSE stream (it sets the call's id): refused for
    its text, it fails that call at once, not the id the upstream wrote."""
    async with _session(peer, Seen()) as s:
        with pytest.raises(MCPError) as e:
            await s.call_tool("t", {"where": "result", "sse": True, "answer_id": 999})
    assert e.value.error.code == INTERNAL_ERROR and "/result/content/0/text" in e.value.error.message


async def test_an_answer_on_the_get_stream_fails_the_call_it_names() -> None:
    """A hostile upstream answers a call on its GET stream (the call's own stream stays open):
    the refusal carries the answer's id, so that call fails at once naming where."""
    seen = Seen()
    with _peer(SURROGATE_GET="answer") as url:
        async with _session(url, seen) as s:
            with pytest.raises(MCPError) as e:
                await s.call_tool("t", {"where": "get-answer"})
    assert e.value.error.code == INTERNAL_ERROR and "/result/content/0/text" in e.value.error.message
    assert [(f.kind, f.where) for f in seen.refused] == [("answer", "/result/content/0/text")]


@pytest.mark.parametrize("where", sorted(NOTIFICATIONS))
async def test_a_notification_that_is_not_utf8_is_dropped_and_the_call_answers(peer: str, where: str) -> None:
    seen = Seen()
    async with _session(peer, seen) as s:
        assert _text(await s.call_tool("t", {"where": where, "message": "hi"})) == "hi"
    assert [(f.kind, f.where, f.reply) for f in seen.refused] == [
        ("notification", NOTIFICATIONS[where], None)
    ]
    assert seen.handed == []  # neither the notification nor an exception reached the session


@pytest.mark.parametrize("where", sorted(REQUESTS))
async def test_an_upstream_request_that_is_not_utf8_is_answered_at_once(peer: str, where: str) -> None:
    seen = Seen()
    async with _session(peer, seen) as s:
        got = json.loads(_text(await s.call_tool("t", {"where": where})))  # what the peer was answered
        assert "none" not in got, f"the upstream's {where} request got no answer"
        assert got["id"] == "up-1" and got["error"]["code"] == INVALID_PARAMS
        assert REQUESTS[where] in got["error"]["message"]
    assert [(f.kind, f.where) for f in seen.refused] == [("request", REQUESTS[where])]
    assert _exceptions(seen) == []


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_a_parse_failure_of_valid_text_is_left_to_the_sdk(peer: str, sse: bool) -> None:
    """An answer with neither result nor error: the SDK's PARSE_ERROR for the call stands."""
    seen = Seen()
    async with _session(peer, seen) as s:
        with pytest.raises(MCPError) as e:
            await s.call_tool("t", {"where": "shape", "sse": sse})
        assert e.value.error.code == PARSE_ERROR
        assert _text(await s.call_tool("ok", {"message": "next"})) == "next"
    assert seen.refused == []


async def test_a_json_body_refused_unread_is_left_to_the_sdk(peer: str) -> None:
    """A body over the gateway's bound is refused before it is read: nothing to read again,
    the SDK's PARSE_ERROR for the call stands."""
    seen = Seen()
    async with _session(peer, seen, limit=2_000) as s:
        with pytest.raises(MCPError) as e:
            await s.call_tool("ok", {"message": "a" * 5_000})
        assert e.value.error.code == PARSE_ERROR
        assert _text(await s.call_tool("ok", {"message": "small"})) == "small"
    assert seen.refused == []


async def test_an_sse_event_over_the_bound_fails_its_call(peer: str) -> None:
    """The transport keeps the SDK's bound on one SSE event (the gateway passes
    mcp.max_message_bytes): an event over it fails the call, a smaller one passes."""
    async with _session(peer, Seen(), limit=2_000) as s:
        with pytest.raises(MCPError):
            await s.call_tool("t", {"message": "a" * 5_000, "sse": True})
        assert _text(await s.call_tool("t", {"message": "small", "sse": True})) == "small"


async def test_a_request_as_a_json_body_is_answered_and_fails_the_call() -> None:
    """A JSON body answers the POST it came with: one that is the upstream's own request, with
    text that is not valid UTF-8, gets its error answer POSTed back, and the call fails."""
    seen = Seen()
    with _peer() as url:
        async with _session(url, seen) as s:
            with pytest.raises(MCPError) as e:
                await s.call_tool("t", {"where": "json-request"})
            assert e.value.error.code == INTERNAL_ERROR and REQUESTS["roots"] in e.value.error.message
            [got] = await _received(s)
    assert got["id"] == "up-1" and got["error"]["code"] == INVALID_PARAMS
    assert REQUESTS["roots"] in got["error"]["message"]
    assert [(f.kind, f.where) for f in seen.refused] == [("request", REQUESTS["roots"])]


async def test_a_callers_resumption_callback_gets_the_streams_event_ids(peer: str) -> None:
    """What the SDK's transport does with a caller's resumption callback, the screened one does."""
    tokens: list[str] = []

    async def token(t: str) -> None:
        tokens.append(t)

    call = types.CallToolRequest(
        params=types.CallToolRequestParams(name="t", arguments={"message": "m", "sse": True, "ids": True})
    )
    async with _session(peer, Seen()) as s:
        result = await s.send_request(
            call, types.CallToolResult, metadata=ClientMessageMetadata(on_resumption_token_update=token)
        )
    assert _text(result) == "m" and tokens == ["1"]


async def _until(what: str, done: Any) -> None:
    deadline = time.monotonic() + 30  # the bound of the wait, not a timing assertion
    while not done():
        assert time.monotonic() < deadline, what
        await anyio.sleep(0.1)


async def test_a_request_on_the_get_stream_is_answered_at_once() -> None:
    seen = Seen()
    with _peer(SURROGATE_GET="sampling") as url:
        async with _session(url, seen) as s:
            got = json.loads(_text(await s.call_tool("t", {"where": "answered"})))
    assert "none" not in got, "the upstream's request on its GET stream got no answer"
    assert got["id"] == "up-1" and got["error"]["code"] == INVALID_PARAMS
    assert REQUESTS["sampling"] in got["error"]["message"]
    assert [(f.kind, f.where) for f in seen.refused] == [("request", REQUESTS["sampling"])]
    assert _exceptions(seen) == []


async def test_a_notification_on_the_get_stream_is_dropped() -> None:
    seen = Seen()
    with _peer(SURROGATE_GET="notification") as url:
        async with _session(url, seen) as s:
            await _until("the GET stream's notification was not seen", lambda: seen.refused)
            assert _text(await s.call_tool("ok", {"message": "m"})) == "m"
    assert [(f.kind, f.where) for f in seen.refused] == [("notification", NOTIFICATIONS["notification"])]
    assert seen.handed == []


async def test_a_parse_failure_of_valid_text_on_the_get_stream_goes_to_the_session() -> None:
    """As the SDK does: the exception is handed to the session (its message handler)."""
    seen = Seen()
    with _peer(SURROGATE_GET="shape") as url:
        async with _session(url, seen) as s:
            await _until("the GET stream's failure did not reach the session", lambda: _exceptions(seen))
            assert _text(await s.call_tool("ok", {"message": "m"})) == "m"
    assert seen.refused == []


async def test_a_transport_without_what_it_starts_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK whose transport lost a method the client starts: SdkChanged naming it, before
    any connection. (The SDK here has it: the attribute is removed for the test.)"""
    from mcp.client.streamable_http import StreamableHTTPTransport

    monkeypatch.delattr(StreamableHTTPTransport, "handle_get_stream")
    async with httpx2.AsyncClient() as hc:
        with pytest.raises(SdkChanged, match="StreamableHTTPTransport.handle_get_stream"):
            async with screened_http_client(
                "http://127.0.0.1:9/mcp", http_client=hc, max_sse_event_size=None, seen=lambda _: None
            ):
                pass


def test_a_transport_without_its_record_of_posts_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SDK whose transport no longer records its POSTs in flight (where an abandoned
    request's POST is found and closed): SdkChanged naming it, before any connection."""
    from mcp.client.streamable_http import StreamableHTTPTransport

    from gateway.compat.httpclient import ScreenedTransport

    sdk_init = StreamableHTTPTransport.__init__

    def init_without_record(self: StreamableHTTPTransport, url: str, **kw: Any) -> None:
        sdk_init(self, url, **kw)
        del self._in_flight_posts

    monkeypatch.setattr(StreamableHTTPTransport, "__init__", init_without_record)
    with pytest.raises(SdkChanged, match="StreamableHTTPTransport._in_flight_posts"):
        ScreenedTransport("http://127.0.0.1:9/mcp", max_sse_event_size=None, seen=print, reply=None)  # type: ignore[arg-type]
