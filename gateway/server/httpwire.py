"""The HTTP lane's wire helpers: a request's id, the refusal of a reused one, the JSON
content-type test, a JSON reply written without a Starlette ``Response``, and the body read
once and handed out again to the SDK's transport when the lane passes a request on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp import types
from starlette.types import Message, Receive, Send

CONTENT_TYPE_JSON = "application/json"


def request_id(msg: Any) -> types.RequestId | None:
    """The id of a single JSON-RPC request (a method and an id), else None."""
    if not isinstance(msg, dict) or "method" not in msg:
        return None
    rid = msg.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int | str):
        return None
    return rid


def reused(rid: types.RequestId) -> bytes:
    """The refusal of a request whose id is in flight in its session."""
    error = types.ErrorData(
        code=types.INVALID_REQUEST,
        message=f"request id {rid!r} is already in flight in this session (a request id must not be reused)",
    )
    return types.JSONRPCError(jsonrpc="2.0", id=rid, error=error).model_dump_json(by_alias=True).encode()


def json_content(headers: Mapping[str, str]) -> bool:
    # the transport's own Content-Type test (``_check_content_type``), stricter than its security check
    content_type = headers.get("content-type", "")
    return CONTENT_TYPE_JSON in (part.strip() for part in content_type.split(";")[0].split(","))


async def send_json(send: Send, body: bytes, sid: str, status: int) -> None:
    """A JSON reply with the headers the SDK's transport sends with one, written as Starlette's
    ``Response`` writes them (its lower-cased headers, then the content length) without making
    one per reply."""
    headers = [
        (b"content-type", CONTENT_TYPE_JSON.encode()),
        (b"mcp-session-id", sid.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> tuple[bytes, bool | None]:
    """The whole body (the body limit and deadline run outside); ``None`` when the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def replaying(body: bytes, more: bool | None, receive: Receive) -> Receive:
    """``receive`` with the body already read handed out again first."""
    pending: list[Message] = (
        [{"type": "http.request", "body": body, "more_body": False}] if more is not None else []
    )

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
