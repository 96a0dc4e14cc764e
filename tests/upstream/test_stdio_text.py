"""An upstream answer whose text is not valid UTF-8 fails its call at once, naming where.

A stdio server can write the JSON escape ``"\\ud800"`` (a lone surrogate once parsed). The
SDK's parser refuses the line and drops it, so the call used to wait for its timeout (two
minutes) and only the log said why. gateway.upstream.unreadable turns such an
answer into a JSON-RPC error for the same id (fast lane and SDK path alike). A real ``symbi
mcp`` runs a real upstream (tests/peers/surrogate_server.py); the audit log stays verifiable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    POLICY,
    ROOT,
    TEST_POLICY_DATA,
    audit_verifies,
    initialize_request,
    write_config,
)
from tests.server.test_stdio_bad_input import Raw

PEER = ROOT / "tests/peers/surrogate_server.py"
INTERNAL_ERROR = -32603


def _config(tmp_path: Path, where: str, mcp: str = "") -> Path:
    return write_config(
        tmp_path,
        f"""
        [mcp]
        {mcp}
        [servers.mut]
        command = "{sys.executable}"
        args = ["{PEER}"]
        env = {{ SURROGATE_IN = "{where}" }}
        verification = "warn"
        """,
    )


def _session(cfg: Path) -> tuple[Raw, list[str]]:
    r = Raw(cfg)
    r.send(initialize_request())
    assert "result" in r.recv()
    r.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    r.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    return r, [t["name"] for t in r.recv()["result"]["tools"]]


def _call(r: Raw, rid: int) -> dict[str, Any]:
    r.send(
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": "mut__t", "arguments": {"message": "hi"}},
        }
    )
    return r.recv()


@pytest.mark.parametrize("where", ["result", "error"])
def test_an_answer_that_is_not_utf8_fails_the_call_and_the_next_call_still_runs(
    tmp_path: Path, where: str
) -> None:
    cfg = _config(tmp_path, where)
    r, names = _session(cfg)
    try:
        assert "mut__t" in names
        for rid in (3, 4):
            answer = _call(r, rid)
            assert answer["id"] == rid and answer["error"]["code"] == INTERNAL_ERROR
    finally:
        r.close()
    audit_verifies(cfg)


@pytest.mark.parametrize("where", ["name", "description"])
def test_a_tool_list_that_is_not_utf8_is_refused_whole(tmp_path: Path, where: str) -> None:
    # the refused list keeps that upstream down, so the gateway's start waits out
    # connection_timeout_s for it (30 s by default) before it serves the rest
    cfg = _config(tmp_path, where, "connection_timeout_s = 3")
    r, names = _session(cfg)
    try:
        assert not [n for n in names if n.startswith("mut__")]  # none of that upstream's tools
        assert "memory__store" in names  # the gateway serves the rest
    finally:
        r.close()
    audit_verifies(cfg)


def test_a_notification_that_is_not_utf8_is_dropped_and_the_call_answers(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "notification")
    r, _ = _session(cfg)
    try:
        answer = _call(r, 3)
        assert answer["result"]["content"][0]["text"] == "hi"
    finally:
        r.close()
    audit_verifies(cfg)


def test_a_result_whose_json_text_cannot_be_redacted_is_refused(tmp_path: Path) -> None:
    """Attack: with a ``redact_result`` rule in force, a tool answers JSON text holding the escape
    \\ud800 (valid UTF-8 on the wire: here the peer echoes what the caller sent). Redacted and
    written again it was not valid UTF-8: "internal gateway error". Now a policy refusal naming
    where; the next call runs and the audit log verifies."""
    doc = json.loads(TEST_POLICY_DATA.read_text())
    doc["symbi_data"]["redact_result"] = {"*": ["api_token"]}
    (tmp_path / "data.json").write_text(json.dumps(doc))
    cfg = write_config(
        tmp_path,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{tmp_path / "data.json"}"
        [servers.mut]
        command = "{sys.executable}"
        args = ["{PEER}"]
        verification = "warn"
        """,
    )
    r, names = _session(cfg)
    try:
        assert "mut__ok" in names
        for rid, message in ((3, '{"api_token": "s", "x": "\\ud800"}'), (4, '{"api_token": "s", "x": "ok"}')):
            r.send(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "method": "tools/call",
                    "params": {"name": "mut__ok", "arguments": {"message": message}},
                }
            )
            answer = r.recv()["result"]
            if rid == 3:
                assert answer["isError"] and answer["_meta"]["symbi/error"]["code"] == "policy_denied"
                assert "/x" in answer["_meta"]["symbi/error"]["reasons"][0]
            else:
                assert json.loads(answer["content"][0]["text"]) == {"api_token": "[REDACTED]", "x": "ok"}
    finally:
        r.close()
    audit_verifies(cfg)
