"""AuditStep with a refusal tally: past the first refusals of a window a refused call is
counted, not recorded one by one; allowed and failed calls always are; the caller's answer is
the same; a log that is down still refuses every call."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from gateway.audit import AuditLog, exported_public_keys, verify_log
from gateway.audit.refusals import RefusalTally
from gateway.context import CallContext, Principal
from gateway.errors import AuditError, GatewayError, PolicyDenied, UnknownTool, UpstreamError
from gateway.steps.audit import AuditStep
from tests.conftest import break_audit_log

PER_WINDOW = 5


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(
        tmp_path / "audit.db", tmp_path / "audit-key.pem", refusals=RefusalTally(PER_WINDOW, 3600.0)
    )
    yield log
    log.close()


def _call(principal: str = "alice", target: str = "db__query") -> CallContext:
    return CallContext(
        principal=Principal(id=principal, roles=("analyst",), agent=f"{principal}-agent"),
        kind="tools/call",
        target=target,
        arguments={"sql": "select 1"},
    )


async def _denied(call: CallContext) -> Any:
    raise PolicyDenied("denied by policy", reasons=["not for you"])


async def _unknown(call: CallContext) -> Any:
    raise UnknownTool(f"unknown tool {call.target}")


async def _failed(call: CallContext) -> Any:
    raise UpstreamError("upstream failed")


async def _allowed(call: CallContext) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text="1")])


async def _run(step: AuditStep, call: CallContext, endpoint: Any) -> type[BaseException] | None:
    try:
        await step(call, endpoint)
    except GatewayError as e:
        return type(e)
    return None


def test_refusals_past_the_window_budget_are_counted_and_the_rest_recorded(
    log: AuditLog, tmp_path: Path
) -> None:
    step = AuditStep(log)

    async def flood() -> list[type[BaseException] | None]:
        got = []
        for i in range(60):
            got.append(await _run(step, _call(), _denied if i % 2 else _unknown))
            if i % 10 == 0:  # interleaved: allowed calls and failures, never counted
                got.append(await _run(step, _call(), _allowed))
                got.append(await _run(step, _call(), _failed))
        return got

    answers = asyncio.run(flood())
    # the caller is answered as before, counted or not
    assert answers.count(PolicyDenied) == 30 and answers.count(UnknownTool) == 30
    assert answers.count(None) == 6 and answers.count(UpstreamError) == 6
    log.flush()
    events = log.recent(1000)
    calls = [e["details"] for e in events if e["type"] == "tool.call"]
    outcomes = [d["outcome"] for d in calls]
    assert outcomes.count("denied") == PER_WINDOW
    assert outcomes.count("ok") == 6 and outcomes.count("error") == 6
    [summary] = [e for e in events if e["type"] == "audit.refusals_summarized"]
    assert summary["principal"] == "alice"
    counts = {(c["error_code"], c["target"], c["agent"]): c["count"] for c in summary["details"]["counts"]}
    assert counts == {
        # 30 each, less the first five recorded (unknown at 0, 2, 4; denied at 1, 3)
        ("policy_denied", "db__query", "alice-agent"): 28,
        ("unknown_tool", "db__query", "alice-agent"): 27,
    }
    log.close()
    assert verify_log(tmp_path / "audit.db", exported_public_keys(tmp_path / "audit-key.pem")).ok


def test_another_principal_keeps_its_own_records(log: AuditLog) -> None:
    step = AuditStep(log)

    async def both() -> None:
        for _ in range(20):
            await _run(step, _call("mallory"), _denied)
        for _ in range(3):
            await _run(step, _call("bob"), _denied)

    asyncio.run(both())
    log.flush()
    records = [e for e in log.recent(1000) if e["type"] == "tool.call"]
    assert [e["principal"] for e in records].count("bob") == 3
    assert [e["principal"] for e in records].count("mallory") == PER_WINDOW


def test_a_counted_refusal_still_fails_closed_when_the_log_is_down(log: AuditLog, tmp_path: Path) -> None:
    step = AuditStep(log)

    async def spend() -> None:
        for _ in range(PER_WINDOW):
            await _run(step, _call(), _denied)

    asyncio.run(spend())
    break_audit_log(tmp_path / "audit.db")  # every insert fails from now on
    log.emit("gateway.event", {})  # a lost emit breaks the log
    with pytest.raises(AuditError):
        log.flush()
    # the next refusal would be counted, but the log is broken: refused as audit failure
    assert asyncio.run(_run(step, _call(), _denied)) is AuditError


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_call_refused_after_its_upstream_ran_is_never_counted(tmp_path: Path) -> None:
    """Through ``symbi mcp``: the window's record budget spent on unknown tools, then calls the
    upstream ran whose result the policy's ``redact_result`` cannot pass on (the caller chose
    it: the tool echoes). Refused after the fact, they were counted as refusals: no record of
    their own, their arguments (what the upstream did) in no record."""
    import json
    import sys

    from tests.conftest import POLICY, ROOT, TEST_POLICY_DATA, write_config
    from tests.server._clients import stdio_session

    data = json.loads(TEST_POLICY_DATA.read_bytes())
    data["symbi_data"]["redact_result"] = {"surr__ok": ["secret"]}
    data["symbi_data"]["upstreams"]["surr"] = {"allow_unverified": True}
    (tmp_path / "data.json").write_text(json.dumps(data))
    cfg = write_config(
        tmp_path,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{tmp_path / "data.json"}"
        [audit]
        refusals_recorded_per_window = 2
        [servers.surr]
        command = "{sys.executable}"
        args = ["{ROOT / "tests/peers/surrogate_server.py"}"]
        verification = "warn"
        """,
    )
    unredactable = '{"secret": "s", "note": "\\ud800"}'  # its JSON holds a lone surrogate
    async with stdio_session(cfg) as s:
        for _ in range(2):
            assert (await s.call_tool("nope__x", {})).is_error
        for i in range(3):
            r = await s.call_tool("surr__ok", {"message": unredactable, "transfer_to": f"acct-{i}"})
            assert r.is_error  # refused: the result is not passed on
    conn = sqlite3.connect(tmp_path / "data" / "audit.db")
    rows = [json.loads(d) for (d,) in conn.execute("SELECT details FROM events WHERE type = 'tool.call'")]
    conn.close()
    ran = [d["arguments"]["transfer_to"] for d in rows if d.get("tool") == "surr__ok"]
    assert ran == ["acct-0", "acct-1", "acct-2"]
