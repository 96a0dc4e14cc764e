"""An upstream message whose text is not valid UTF-8: answered at once, never waited out.

The SDK's parsers (pydantic) refuse a message holding the JSON escape ``"\\ud800"`` (a lone
surrogate once parsed). Over stdio the SDK drops the line; over streamable HTTP it answers the
gateway's request in flight with a PARSE_ERROR whatever the message was. So an answer's call
waited for its timeout (stdio) or failed with a parse error naming nothing (HTTP), a request of
the upstream's own (sampling, elicitation, roots) never got an answer (the upstream waited),
and a notification in a call's SSE stream failed that call. Only on that failure path the
transports (``gateway.upstream.stdio``, ``gateway.compat.httpclient``) read the text again
(``json.loads`` takes the escape) and ``unreadable`` says what it was and what to send:

- an answer to the gateway's request: an error answer for the same id naming where (the call
  fails at once, and the session goes on);
- a request of the upstream's: an error answer sent back to the upstream at once, naming where;
- a notification (progress, a log message), or a message whose id itself is not valid UTF-8
  (it cannot be answered): dropped.

Every reason names the JSON pointer of the first bad text (``gateway.textcheck``), which is
itself valid UTF-8, so it can go into the log line and the audit record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from mcp.shared.message import SessionMessage
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST
from mcp_types import JSONRPCError

from gateway.textcheck import not_utf8_at, shown

Kind = Literal["answer", "request", "notification"]


@dataclass(frozen=True, slots=True)
class Unreadable:
    """One upstream message refused for its text."""

    kind: Kind
    where: str  # the JSON pointer of the first text that is not valid UTF-8
    method: str | None  # a request's or notification's method, printable (bad text escaped)
    reply: (
        dict[str, Any] | None
    )  # the JSON-RPC error answer (an answer: for the session; a request: for the upstream)

    @property
    def reason(self) -> str:
        return _reason(self.kind, self.method, self.where)


def unreadable(text: str | bytes) -> Unreadable | None:
    """What a message the SDK could not parse was, when the reason is text that is not valid
    UTF-8; None when it is something else (not JSON, not an object, valid text: the SDK's own
    handling stands)."""
    try:
        msg = json.loads(text)
    except ValueError:  # UnicodeDecodeError included: bytes that are not UTF-8 at all
        return None
    if not isinstance(msg, dict):
        return None
    where = not_utf8_at(msg)
    if where is None:
        return None
    rid, method = msg.get("id"), msg.get("method")
    named = shown(method) if isinstance(method, str) else None
    if not _answerable(rid):
        return Unreadable("notification", where, named, None)
    if method is None:
        return Unreadable("answer", where, None, refused_answer(rid, where))
    code = INVALID_PARAMS if where.startswith("/params/") else INVALID_REQUEST
    reply = refusal(rid, code, "symbi: " + _reason("request", named, where))
    return Unreadable("request", where, named, reply)


def _reason(kind: Kind, method: str | None, where: str) -> str:
    what = "answer" if kind == "answer" else (method or "message")
    return f"upstream {what} refused: the text at {where} is not valid UTF-8"


def refused_answer(rid: int | str, where: str) -> dict[str, Any]:
    """The error answer standing for an answer (to the request ``rid``) refused for its text."""
    return refusal(rid, INTERNAL_ERROR, _reason("answer", None, where))


def error_message(answer: dict[str, Any]) -> SessionMessage:
    """An error answer (``refusal``) as the session's message, for either transport."""
    return SessionMessage(JSONRPCError.model_validate(answer))


def refusal(rid: int | str, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC error answer."""
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


def _answerable(rid: object) -> TypeGuard[int | str]:
    """Whether ``rid`` is an id an answer can carry (a number, or a string of valid UTF-8)."""
    if isinstance(rid, str):
        return not_utf8_at(rid) is None
    return isinstance(rid, int) and not isinstance(rid, bool)
