"""AuditStep: one durable event per call (allowed, denied, crashed), never a raw argument value."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from gateway.audit import AuditLog, exported_public_keys, verify_log
from gateway.chain import build_chain
from gateway.context import CallContext, Decision, Principal, ToolInfo, UpstreamInfo
from gateway.errors import AuditError, PolicyDenied, VerificationDenied
from gateway.steps.arguments import ValidateArguments
from gateway.steps.audit import AuditStep
from tests.conftest import break_audit_log
from tests.steps._chain import run_chain

SECRET = "hunter2-SECRET-VALUE"
TOOL = ToolInfo(
    name="db__query",
    original_name="query",
    upstream="db",
    definition={
        "name": "query",
        "inputSchema": {
            "type": "object",
            "properties": {
                "sql": {"type": "string"},
                "password": {"type": "string"},
                "limit": {"type": "integer"},
            },
        },
    },
    verification="verified",
    key_fingerprint="sha256:abc",
)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    yield log
    log.close()


def _call(**kw: Any) -> CallContext:
    return CallContext(
        principal=Principal(id="alice", roles=("analyst",), agent="agent-7"),
        kind="tools/call",
        target="db__query",
        arguments={"sql": "select 1", "password": SECRET, **kw},
        tool=TOOL,
        upstream=UpstreamInfo(name="db", transport="stdio"),
    )


def _stored(log: AuditLog) -> list[dict[str, Any]]:
    return log.recent(100)


async def _allowed(call: CallContext) -> CallToolResult:
    # stands in for the policy step + dispatch: a decision, its redaction, a real result object
    call.decision = Decision(
        allow=True, reasons=("analyst may query",), conditions={"redact_arguments": ["password"]}
    )
    call.audit_arguments = {"sql": "select 1", "password": "[REDACTED]"}
    call.sandbox_tier = "none"
    call.result_bytes = 42
    call.unverified_warning = True
    return CallToolResult(content=[TextContent(type="text", text="1")], is_error=False)


async def _denied(call: CallContext) -> Any:
    call.decision = Decision(allow=False, reasons=("password use is forbidden",))
    call.audit_arguments = {"sql": "select 1", "password": "[REDACTED]"}
    raise PolicyDenied("denied by policy", reasons=["password use is forbidden"])


async def _crashed(call: CallContext) -> Any:
    raise RuntimeError(f"upstream blew up while holding {SECRET}")


def test_allowed_call_is_recorded_with_redacted_arguments(log: AuditLog, tmp_path: Path) -> None:
    result = asyncio.run(AuditStep(log)(_call(), _allowed))
    assert result.is_error is False
    [ev] = _stored(log)
    d = ev["details"]
    assert ev["type"] == "tool.call" and ev["principal"] == "alice" and ev["agent"] == "agent-7"
    assert (d["tool"], d["upstream"], d["outcome"], d["error_code"]) == ("db__query", "db", "ok", None)
    assert d["arguments"] == {"sql": "select 1", "password": "[REDACTED]"}
    assert d["decision"] == {
        "allow": True,
        "reasons": ["analyst may query"],
        "conditions": {"redact_arguments": ["password"]},
    }
    assert (d["sandbox_tier"], d["result_bytes"], d["unverified_warning"]) == ("none", 42, True)
    assert d["duration_ms"] >= 0
    log.close()
    assert SECRET.encode() not in (tmp_path / "audit.db").read_bytes()
    assert verify_log(tmp_path / "audit.db", exported_public_keys(tmp_path / "audit-key.pem")).ok


def test_denied_call_is_recorded_and_reraised(log: AuditLog) -> None:
    with pytest.raises(PolicyDenied):
        asyncio.run(AuditStep(log)(_call(), _denied))
    [ev] = _stored(log)
    d = ev["details"]
    assert (d["outcome"], d["error_code"], d["decision"]["allow"]) == ("denied", "policy_denied", False)
    assert d["decision"]["reasons"] == ["password use is forbidden"]
    assert SECRET not in str(ev)


def test_verification_denial_before_policy_counts_as_deny(log: AuditLog) -> None:
    async def unverified(call: CallContext) -> Any:
        raise VerificationDenied("tool definition changed", reasons=["drift: description changed"])

    with pytest.raises(VerificationDenied):
        asyncio.run(AuditStep(log)(_call(), unverified))
    d = _stored(log)[0]["details"]
    assert (d["outcome"], d["decision"]["allow"], d["error_code"]) == ("denied", False, "verification_denied")
    # no policy-redacted arguments exist yet: only the names are written
    assert d["arguments"] == {"password": "[not recorded]", "sql": "[not recorded]"}
    assert d["arguments_redacted"] == "all"


def test_crashed_call_is_recorded_without_the_exception_text(log: AuditLog, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        asyncio.run(AuditStep(log)(_call(), _crashed))
    d = _stored(log)[0]["details"]
    assert (d["outcome"], d["error_code"], d["error_type"]) == ("error", "internal_error", "RuntimeError")
    assert d["error_reasons"] == []
    log.close()
    assert SECRET.encode() not in (tmp_path / "audit.db").read_bytes()


def test_invalid_arguments_through_a_real_chain_do_not_leak_values(log: AuditLog, tmp_path: Path) -> None:
    chain = build_chain([AuditStep(log), ValidateArguments()], _allowed)
    from gateway.errors import ArgumentsInvalid

    with pytest.raises(ArgumentsInvalid):
        run_chain(chain, _call(limit=SECRET))  # jsonschema quotes the bad value in its message
    d = _stored(log)[0]["details"]
    assert d["error_code"] == "arguments_invalid" and d["error_reasons"] == []
    log.close()
    conn = sqlite3.connect(tmp_path / "audit.db")
    assert not conn.execute("SELECT count(*) FROM events WHERE details LIKE ?", (f"%{SECRET}%",)).fetchone()[
        0
    ]


def test_tool_error_result_is_an_error_outcome(log: AuditLog) -> None:
    async def tool_error(call: CallContext) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text="no")], is_error=True)

    asyncio.run(AuditStep(log)(_call(), tool_error))
    d = _stored(log)[0]["details"]
    assert (d["outcome"], d["error_code"]) == ("error", "tool_error")


def test_resource_read_event_type(log: AuditLog) -> None:
    call = CallContext(principal=Principal(id="bob"), kind="resources/read", target="file:///etc/motd")

    async def read(c: CallContext) -> str:
        return "motd"

    asyncio.run(AuditStep(log)(call, read))
    ev = _stored(log)[0]
    assert ev["type"] == "resource.read" and ev["details"]["target"] == "file:///etc/motd"


def test_unrecordable_call_fails_with_audit_error(log: AuditLog, tmp_path: Path) -> None:
    break_audit_log(tmp_path / "audit.db")
    with pytest.raises(AuditError):
        asyncio.run(AuditStep(log)(_call(), _allowed))
    # a lost emit() breaks the log: the next call is refused before it reaches the upstream
    log.emit("gateway.event", {})
    with pytest.raises(AuditError):
        log.flush()
    reached = []

    async def endpoint(call: CallContext) -> str:
        reached.append(call)
        return "done"

    with pytest.raises(AuditError):
        asyncio.run(AuditStep(log)(_call(), endpoint))
    assert reached == []


def test_on_failure_warn_lets_the_call_through(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem", on_failure="warn")
    try:
        break_audit_log(tmp_path / "audit.db")
        result = asyncio.run(AuditStep(log)(_call(), _allowed))
        assert result.is_error is False
    finally:
        log.close()


def test_minimal_audit_condition_records_argument_names_only(log: AuditLog) -> None:
    async def allowed_minimal(call: CallContext) -> CallToolResult:
        call.decision = Decision(allow=True, conditions={"audit": "minimal"})
        call.audit_arguments = {"sql": "select 1", "password": "[REDACTED]"}
        return CallToolResult(content=[TextContent(type="text", text="1")], is_error=False)

    asyncio.run(AuditStep(log)(_call(), allowed_minimal))
    [ev] = _stored(log)
    assert ev["details"]["arguments"] == {"password": "[not recorded]", "sql": "[not recorded]"}
    assert ev["details"]["arguments_redacted"] == "minimal"


# --- attacks found by mutation testing (scripts/mutate.py): every identifying field of the record


def test_the_record_names_the_call_the_tool_and_its_provenance(log: AuditLog) -> None:
    call = _call()
    call.session_id = "sess-9"
    asyncio.run(AuditStep(log)(call, _allowed))
    d = _stored(log)[0]["details"]
    assert (d["call_id"], d["session_id"], d["kind"], d["started_ns"]) == (
        call.call_id,
        "sess-9",
        "tools/call",
        call.started_ns,
    )
    assert (d["original_name"], d["transport"]) == ("query", "stdio")
    assert (d["verification"], d["key_fingerprint"]) == ("verified", "sha256:abc")
    assert d["arguments_redacted"] == "policy"


def test_a_refusal_before_the_policy_records_the_refusal_reasons_as_the_decision(log: AuditLog) -> None:
    async def refused(call: CallContext) -> Any:
        raise VerificationDenied("no", reasons=["drifted-token"])

    with pytest.raises(VerificationDenied):
        asyncio.run(AuditStep(log)(_call(), refused))
    d = _stored(log)[0]["details"]
    assert d["decision"] == {"allow": False, "reasons": ["drifted-token"], "conditions": {}}
    assert d["error_reasons"] == ["drifted-token"]


def test_without_an_upstream_the_tool_names_it(log: AuditLog) -> None:
    call = _call()
    call.upstream = None
    asyncio.run(AuditStep(log)(call, _allowed))
    d = _stored(log)[0]["details"]
    assert (d["upstream"], d["transport"], d["tool"]) == ("db", None, "db__query")


def test_a_plain_result_is_an_ok_outcome_and_a_call_with_no_tool_has_no_tool_fields(log: AuditLog) -> None:
    call = CallContext(principal=Principal(id="bob"), kind="prompts/get", target="p1")

    async def plain(c: CallContext) -> str:
        return "text"

    asyncio.run(AuditStep(log)(call, plain))
    ev = _stored(log)[0]
    d = ev["details"]
    assert ev["type"] == "prompt.get"
    assert (d["outcome"], d["error_code"], d["tool"]) == ("ok", None, "p1")
    assert (d["original_name"], d["upstream"], d["verification"], d["key_fingerprint"]) == (
        None,
        None,
        None,
        None,
    )
    assert d["decision"] is None  # no policy decision was made


def test_a_cancelled_call_is_recorded_as_cancelled(log: AuditLog) -> None:
    async def cancelled(c: CallContext) -> Any:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(AuditStep(log)(_call(), cancelled))
    d = _stored(log)[0]["details"]
    assert (d["outcome"], d["error_code"]) == ("error", "cancelled")


def test_the_durable_write_latency_is_observed(log: AuditLog) -> None:
    seen: list[float] = []
    before = time.perf_counter()
    asyncio.run(AuditStep(log, observe=seen.append)(_call(), _allowed))
    assert len(seen) == 1 and 0 <= seen[0] <= time.perf_counter() - before


def test_the_record_carries_the_requests_trace_id_and_none_outside_a_trace(log: AuditLog) -> None:
    """The audit record links to the request's OpenTelemetry trace (its trace id, not the span's).
    A real SDK tracer provider, in-process (found by mutation testing: nothing ran a traced call)."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")

    async def traced() -> int:
        with tracer.start_as_current_span("request") as span:
            await build_chain([AuditStep(log)], _allowed)(_call())
            return span.get_span_context().trace_id

    trace_id = asyncio.run(traced())
    run_chain(build_chain([AuditStep(log)], _allowed), _call())  # no trace around it
    first, second = _stored(log)[-2:]
    assert first["details"]["trace_id"] == format(trace_id, "032x")
    assert second["details"]["trace_id"] is None


def test_a_call_whose_record_is_not_durable_in_time_fails_closed(log: AuditLog, tmp_path: Path) -> None:
    """The step passes its timeout to the log: with the store stalled (another connection holds
    SQLite's write lock, as a stalled disk would) the call is refused with AuditError after
    timeout_s, rather than held until the store answers; the event is still written after."""
    step = AuditStep(log, timeout_s=0.3)
    blocker = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:

        async def bounded() -> Any:  # a step waiting on the store fails the test instead of hanging it
            return await asyncio.wait_for(step(_call(), _allowed), 20)

        with pytest.raises(AuditError):
            asyncio.run(bounded())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.flush()
    assert [ev["type"] for ev in _stored(log)] == ["tool.call"]


@pytest.mark.anyio
async def test_an_upstreams_long_error_text_is_recorded_cut(tmp_path: Path) -> None:
    """Attack (on the audit log's size): a real stdio upstream answers every call with a 1 MB
    JSON-RPC error message; each record kept all of it (a megabyte of audit log per call, by
    the upstream's choice), and the credential it quoted (its own here). Now the start of
    each reason, secrets replaced, and how much more there was."""
    TOKEN = "sk-ant-api03-" + "Q" * 40  # a provider key the policy's patterns recognise
    import json
    import sys

    from mcp import MCPError

    from gateway.policy.redact import EXCERPT_CHARS as REASON_CHARS
    from tests.conftest import ROOT, write_config
    from tests.server._clients import stdio_session

    cfg = write_config(
        tmp_path,
        f"""
        [servers.probe]  # a name the test policy data lets call unverified
        command = "{sys.executable}"
        args = ["{ROOT / "tests/peers/raw_server.py"}"]
        env = {{ UPSTREAM_KEY = "{TOKEN}" }}
        verification = "warn"
        """,
    )
    async with stdio_session(cfg) as s:
        with pytest.raises(MCPError):  # the upstream's own error reaches its caller as it is
            await s.call_tool("probe__t", {"mode": "big_error", "message": "hello"})
    with sqlite3.connect(tmp_path / "data" / "audit.db") as db:
        rows = [json.loads(d) for (d,) in db.execute("SELECT details FROM events") if '"probe__t"' in d]
    [call] = [d for d in rows if d.get("error_reasons")]
    [reason] = call["error_reasons"]
    assert "cannot use hello (key [REDACTED])" in reason and len(reason) < REASON_CHARS + 100
    assert "more characters not recorded" in reason
    assert TOKEN not in json.dumps(rows)


@pytest.mark.anyio
async def test_a_callers_huge_arguments_are_recorded_cut_with_a_digest(tmp_path: Path) -> None:
    """Attack (on the audit log's disk): a caller sends a 3 MB argument, or 9,000 small ones (under mcp.max_argument_members);
    each record kept all of it (3 MB of audit log a call at the caller's choice, on the disk
    whose filling refuses every call). Now each string's start and the SHA-256 of the whole
    value, and each object's or array's first members, with how many more there were."""
    import hashlib
    import json
    import sys

    from gateway.audit.record import MEMBERS_KEPT, VALUE_CHARS
    from tests.conftest import ROOT, write_config
    from tests.server._clients import stdio_session

    cfg = write_config(
        tmp_path,
        f"""
        [servers.probe]
        command = "{sys.executable}"
        args = ["{ROOT / "tests/peers/raw_server.py"}"]
        verification = "warn"
        """,
    )
    big = "word " * 600_000  # 3,000,000 characters
    many = [f"item {i}" for i in range(9_000)]
    async with stdio_session(cfg) as s:
        for args in ({"mode": "ok", "message": big}, {"mode": "ok", "message": many}):
            r = await s.call_tool("probe__t", args)
            assert not r.is_error
    with sqlite3.connect(tmp_path / "data" / "audit.db") as db:
        rows = [d for (d,) in db.execute("SELECT details FROM events WHERE type = 'tool.call'")]
    assert len(rows) == 2 and max(map(len, rows)) < 20 * VALUE_CHARS
    text, items = (json.loads(d)["arguments"]["message"] for d in rows)
    assert text.startswith(big[:VALUE_CHARS]) and hashlib.sha256(big.encode()).hexdigest() in text
    assert items[:MEMBERS_KEPT] == many[:MEMBERS_KEPT] and f"{9_000 - MEMBERS_KEPT} more" in items[-1]


def test_a_callers_huge_names_are_recorded_cut(tmp_path: Path) -> None:
    """Attack (on the audit log's disk): a 3 MB tool name, resource URI or prompt name made a
    3-6 MB record each (the call's record, the agent's Running flip naming its task, the
    refusal). Every event's details over 16 KiB are cut as arguments are (AuditLog._event)."""
    from tests.conftest import audit_verifies, initialize_request, write_config
    from tests.server.test_stdio_bad_input import Raw

    cfg = write_config(tmp_path, "")
    r = Raw(cfg)
    try:
        r.send(initialize_request())
        assert "result" in r.recv()
        r.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        huge = "x" * 3_000_000
        asks = [
            ("tools/call", {"name": huge, "arguments": {}}),
            ("resources/read", {"uri": f"file:///{huge}"}),
            ("prompts/get", {"name": huge}),
        ]
        for rid, (method, params) in enumerate(asks, 2):
            r.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            assert r.recv()["id"] == rid  # each refused, and answered
    finally:
        r.close()
    with sqlite3.connect(tmp_path / "data" / "audit.db") as db:
        sizes = dict(db.execute("SELECT type, max(length(details)) FROM events GROUP BY type"))
    assert {"tool.call", "agent.state", "request.refused"} <= set(sizes)
    assert max(sizes.values()) < 20_000, sizes
    audit_verifies(cfg)


_KEY_SECRET = "sk-proj-" + "A" * 32


def test_names_only_records_do_not_name_a_secret_key(log: AuditLog) -> None:
    # red team r3: a denied call recorded {"sk-proj-...": "[not recorded]"}
    with pytest.raises(PolicyDenied):
        asyncio.run(AuditStep(log)(_call(**{_KEY_SECRET: True, "path": "/etc"}), _denied_before_redaction))
    [ev] = _stored(log)
    assert ev["details"]["arguments_redacted"] == "all"
    assert ev["details"]["arguments"] == {
        "[REDACTED]": "[not recorded]",
        "password": "[not recorded]",
        "path": "[not recorded]",
        "sql": "[not recorded]",
    }
    assert _KEY_SECRET not in str(ev)


async def _denied_before_redaction(call: CallContext) -> Any:
    call.decision = Decision(allow=False, reasons=("path outside the roots",))
    raise PolicyDenied("denied by policy", reasons=["path outside the roots"])


def test_a_record_says_policy_only_when_redaction_rules_applied(log: AuditLog) -> None:
    # red team r1: a prompt's raw arguments were recorded labelled "policy" with no rules applied
    async def no_rules(call: CallContext) -> CallToolResult:
        call.decision = Decision(allow=True, conditions={"audit": "full"})
        call.audit_arguments = {"sql": "select 1"}
        return CallToolResult(content=[TextContent(type="text", text="1")], is_error=False)

    async def rules(call: CallContext) -> CallToolResult:
        call.decision = Decision(allow=True, conditions={"redact_arguments": ["password"]})
        call.audit_arguments = {"sql": "select 1", "password": "[REDACTED]"}
        return CallToolResult(content=[TextContent(type="text", text="1")], is_error=False)

    asyncio.run(AuditStep(log)(_call(), no_rules))
    asyncio.run(AuditStep(log)(_call(), rules))
    labels = [e["details"]["arguments_redacted"] for e in _stored(log)]
    assert sorted(labels) == ["policy", "secrets"]
