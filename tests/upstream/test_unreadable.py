"""What ``gateway.upstream.unreadable`` makes of a message the SDK could not parse: only text
that is not valid UTF-8 is its business, and each kind gets the answer it is due."""

from __future__ import annotations

import json

from gateway.upstream.unreadable import refused_answer, unreadable

INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST = -32603, -32602, -32600


def _of(msg: object) -> object:
    return unreadable(json.dumps(msg))


def test_an_answer_becomes_an_error_answer_for_its_id() -> None:
    found = unreadable(json.dumps({"jsonrpc": "2.0", "id": 9, "result": {"k\ud800": 1}}).encode())
    assert found is not None and found.kind == "answer" and found.where == "/result/k\\ud800"
    assert found.reply == refused_answer(9, found.where)
    assert found.reply["id"] == 9 and found.reply["error"]["code"] == INTERNAL_ERROR
    json.dumps(found.reply).encode()  # the reply itself is valid UTF-8


def test_a_request_gets_an_error_answer_naming_where() -> None:
    found = unreadable(
        json.dumps({"jsonrpc": "2.0", "id": "s", "method": "roots/list", "params": {"a": "\ud800"}})
    )
    assert found is not None and found.kind == "request" and found.method == "roots/list"
    assert found.reply is not None and found.reply["id"] == "s"
    assert found.reply["error"]["code"] == INVALID_PARAMS and "/params/a" in found.reply["error"]["message"]
    bad_method = unreadable(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "m\udcff"}))
    assert bad_method is not None and bad_method.kind == "request" and bad_method.where == "/method"
    assert bad_method.method == "m\\udcff" and bad_method.reply is not None
    assert bad_method.reply["error"]["code"] == INVALID_REQUEST
    json.dumps(bad_method.reply).encode()


def test_what_cannot_be_answered_is_dropped() -> None:
    note = unreadable(
        json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "\ud800"}})
    )
    assert note is not None and note.kind == "notification" and note.reply is None
    assert note.method == "notifications/message"  # named in the log line
    for rid in ("\ud800", None, True, 1.5):  # an id no answer can carry (a bad string, none, not an id)
        found = unreadable(json.dumps({"jsonrpc": "2.0", "id": rid, "result": "\ud800"}))
        assert found is not None and found.kind == "notification" and found.reply is None


def test_anything_else_is_left_to_the_sdk() -> None:
    assert unreadable(json.dumps({"jsonrpc": "2.0", "id": 9, "result": {"k": 1}})) is None  # valid text
    assert unreadable("{not json") is None and unreadable("[1]") is None and unreadable('"\\ud800"') is None
    assert unreadable(b"\xff\xfe") is None  # not UTF-8 at all: not JSON text
