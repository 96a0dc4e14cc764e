"""The HTTP load client's reply check (bench/_load_client.py): issue 16's "0 misrouted" is only
worth what this check catches. Replies are built as HTTP responses here: a real gateway that
misroutes cannot be had on purpose, so the wrong answers are made by hand (the one seam faked)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bench._load_client import parse_reply, verdict

RUN = "r0-gateway-abc123"
MSG = f"{RUN}-p0-s3-7-deadbeef"


def _reply(rid: Any, text: str, *, is_error: bool = False) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "result": {"content": [{"type": "text", "text": text}], "isError": is_error},
    }


def _json(*messages: dict[str, Any], status: int = 200) -> httpx.Response:
    body = messages[0] if len(messages) == 1 else list(messages)
    return httpx.Response(status, headers={"content-type": "application/json"}, content=json.dumps(body))


def _sse(*messages: dict[str, Any]) -> httpx.Response:
    # as the SDK sends it: a priming event with an id and no data, then one event per message
    events = ["id: prime\nretry: 1000\n"] + [
        f"event: message\nid: e{i}\ndata: {json.dumps(m)}\n" for i, m in enumerate(messages)
    ]
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content="\n".join(events) + "\n"
    )


@pytest.mark.parametrize("wrap", [_json, _sse])
def test_the_calls_own_reply_is_ok(wrap: Any) -> None:
    assert verdict(wrap(_reply(7, f"Echo: {MSG}")), 7, MSG, RUN) == "ok"


@pytest.mark.parametrize("wrap", [_json, _sse])
def test_another_calls_id_is_misrouted(wrap: Any) -> None:
    assert verdict(wrap(_reply(8, f"Echo: {MSG}")), 7, MSG, RUN) == "misrouted"


def test_another_calls_message_under_this_id_is_misrouted() -> None:
    other = f"{RUN}-p1-s9-2-cafebabe"
    assert verdict(_sse(_reply(7, f"Echo: {other}")), 7, MSG, RUN) == "misrouted"


def test_a_notification_before_the_reply_is_skipped() -> None:
    note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}}
    assert verdict(_sse(note, _reply(7, f"Echo: {MSG}")), 7, MSG, RUN) == "ok"


@pytest.mark.parametrize(
    "resp",
    [
        _json(_reply(7, f"Echo: {MSG}", is_error=True)),  # the tool failed
        _json(_reply(7, "Echo: something else")),  # not this run's message: an error, not misrouted
        _json({"jsonrpc": "2.0", "id": 7, "error": {"code": -32000, "message": "denied"}}),
        _json(_reply(7, f"Echo: {MSG}"), status=503),
        _sse(_reply(7, f"Echo: {MSG}"), _reply(7, f"Echo: {MSG}")),  # two answers to one call
        _sse(),  # no answer at all
    ],
)
def test_anything_else_is_an_error(resp: httpx.Response) -> None:
    assert verdict(resp, 7, MSG, RUN) == "error"


def test_sse_data_split_over_lines_is_joined() -> None:
    body = 'data: {"jsonrpc": "2.0",\ndata: "id": 1, "result": {}}\n\n'
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    assert parse_reply(resp) == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
