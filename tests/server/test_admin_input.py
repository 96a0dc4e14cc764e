"""The admin API's request validation in-process (``gateway.server.admin``): the audit query's
filters, the ``limit`` of the recent lists and an agent action's reason, each with real Starlette
requests. tests/server/http/test_admin.py checks the same through a running gateway against the
OpenAPI document (a gateway per module: too slow to run per mutant); these are the edges.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.server.admin import _limit, _reason, _reviewed
from gateway.server.auditquery import audit_filters
from gateway.server.openapi import OPENAPI

TOP = 2**63 - 1  # SQLite's largest INTEGER


def _request(query: str = "", body: bytes = b"") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/", "query_string": query.encode(), "headers": []}
    return Request(scope, receive)


def test_audit_filters_default_to_the_limit_given_and_pass_the_names() -> None:
    assert audit_filters({}, 1000) == {"limit": 1000}
    assert audit_filters({}, None) == {"limit": None}  # the export: no limit
    got = audit_filters({"principal": "p", "tool": "t", "decision": "deny"}, None)
    assert got == {"limit": None, "principal": "p", "tool": "t", "decision": "deny"}
    assert audit_filters({"decision": "allow"}, 5)["decision"] == "allow"


def test_audit_filters_split_the_types_and_read_the_numbers() -> None:
    assert audit_filters({"type": "tool.call,,agent.state"}, 5)["types"] == ("tool.call", "agent.state")
    assert audit_filters({"type": ""}, 5)["types"] == ()
    got = audit_filters({"since_ns": "0", "until_ns": str(TOP), "limit": "100000"}, None)
    assert got == {"limit": 100_000, "since_ns": 0, "until_ns": TOP}
    assert audit_filters({"limit": "1"}, None)["limit"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"color": "red"},
        {"principal": "p", "colour": "x"},
        {"decision": "maybe"},
        {"decision": ""},
        {"since_ns": "soon"},
        {"limit": "1.5"},
        {"since_ns": "-1"},
        {"until_ns": "-1"},
        {"since_ns": str(TOP + 1)},
        {"until_ns": str(TOP + 1)},
        {"limit": "0"},
        {"limit": "100001"},
        {"limit": "1e9"},
        {"limit": "+5"},
        {"limit": " 5"},
        {"limit": "1_000"},
        {"limit": "\u0665"},  # an Arabic-Indic five: int() takes it
        {"since_ns": "9" * 5000},  # past int()'s digit limit
    ],
)
def test_audit_filters_refuse_what_the_store_cannot_take(params: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        audit_filters(params, 1000)


def test_the_default_limit_is_bounded_too() -> None:
    with pytest.raises(ValueError):
        audit_filters({}, 0)


@pytest.mark.parametrize(
    ("query", "limit"),
    [("", 50), ("limit=1", 1), ("limit=7", 7), ("limit=1000", 1000)]
    + [(f"limit={bad}", None) for bad in ("0", "-3", "1001", "abc", "1.5", "")],
)
def test_a_recent_lists_limit_is_an_integer_from_1_to_1000(query: str, limit: int | None) -> None:
    assert _limit(_request(query)) == limit


def test_a_limits_default_and_most_are_the_callers() -> None:
    assert _limit(_request(""), default=9) == 9
    assert _limit(_request("limit=20"), most=20) == 20
    assert _limit(_request("limit=21"), most=20) is None


async def _reason_of(body: bytes) -> str | JSONResponse:
    return await _reason(_request(body=body))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", ""),
        (b"  \n", ""),
        (b"{}", ""),
        (b'{"reason": "maintenance"}', "maintenance"),
        (b'{"reason": "caf\\u00e9", "other": 1}', "caf\u00e9"),  # valid text that is not ASCII
        (json.dumps({"reason": "r" * 600}).encode(), "r" * 500),  # bounded, as the audit record keeps it
    ],
)
async def test_an_action_reason_is_taken_from_an_empty_or_json_body(body: bytes, reason: str) -> None:
    assert await _reason_of(body) == reason


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"maintenance",  # not JSON
        b'"maintenance"',  # JSON, not an object
        b'["reason"]',
        b'{"reason": 5}',
        b'{"reason": null}',
        b'{"reason": "x\\ud800"}',  # text that is not valid UTF-8 once parsed
        b'{"reason": "ok", "n\\udcff": 1}',  # anywhere in the body
        b'{"reason": "ok", "n": ["\\udcff"]}',
        b"[" * 100_000 + b"]" * 100_000,  # json.loads: RecursionError, a 500
        b'{"reason": "ok", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"reason": "ok", "n": ' + b"[" * 900 + b"]" * 900 + b"}",  # parsed, deeper than a body is
        b'{"reason": "ok", "n": ' + b"[" * 2000,  # unfinished and deep
    ],
)
async def test_a_bad_reason_body_is_a_400_bad_request(body: bytes) -> None:
    refused = await _reason_of(body)
    assert isinstance(refused, JSONResponse) and refused.status_code == 400
    doc = json.loads(bytes(refused.body))
    jsonschema.validate(doc, OPENAPI["components"]["schemas"]["Error"])  # the documented error body
    assert doc["error"] == "bad_request" and doc["reason"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"hash": "h", "x": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
        b'{"hash": 5}',
        b"not json",
    ],
)
async def test_a_bad_approval_body_is_a_400_bad_request(body: bytes) -> None:
    refused = await _reviewed(_request(body=body))
    assert isinstance(refused, JSONResponse) and refused.status_code == 400
    jsonschema.validate(json.loads(bytes(refused.body)), OPENAPI["components"]["schemas"]["Error"])


@pytest.mark.anyio
async def test_an_approval_body_gives_the_reviewed_hash() -> None:
    assert await _reviewed(_request(body=b'{"hash": "sha256:ab"}')) == "sha256:ab"
    assert await _reviewed(_request(body=b"")) is None
    assert await _reviewed(_request(body=b'{"hash": "", "note": {"a": [1]}}')) is None
