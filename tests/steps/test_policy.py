"""PolicyStep with a real CallContext, the real repo policy on the embedded engine, and an
inner endpoint that records exactly what it received (it stands where the upstream is)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mcp.types import CallToolResult, ImageContent, TextContent

from gateway.chain import build_chain
from gateway.context import CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.errors import PolicyDenied, RateLimited
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputdoc import CallCounters
from gateway.policy.loader import discover_files
from gateway.policy.redact import REDACTED
from gateway.steps.policy import PolicyStep, afilter_listing, filter_listing

LOCAL = Principal(id="local", kind="user", roles=("developer",))
ADMIN = Principal(id="admin", kind="user", roles=("admin",))
TRUSTED = Principal(id="alice", kind="user", roles=("developer", "trusted"))
UPSTREAMS = {n: UpstreamInfo(name=n, transport="stdio") for n in ("everything", "fs", "time", "sandbox")}


def tool(name: str, *, code: bool = False, verification: str = "unverified") -> ToolInfo:
    up, orig = name.split("__", 1)
    return ToolInfo(
        name=name,
        original_name=orig,
        upstream=up,
        definition={"name": orig, "inputSchema": {"type": "object"}},
        verification=verification,
        code_tool=code,
    )  # type: ignore[arg-type]


def call_of(name: str, args: dict[str, Any], principal: Principal = LOCAL, **kw: Any) -> CallContext:
    t = tool(name, **kw)
    return CallContext(
        principal=principal,
        kind="tools/call",
        target=name,
        arguments=args,
        session_id="s1",
        tool=t,
        upstream=UPSTREAMS[t.upstream],
    )


class Recorder:
    """The innermost endpoint: records each call's arguments and returns a canned result."""

    def __init__(self, result: CallToolResult | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self.tiers: list[str | None] = []
        self.result = result or CallToolResult(content=[TextContent(type="text", text="ok")])

    async def __call__(self, call: CallContext) -> CallToolResult:
        self.seen.append(json.loads(json.dumps(call.arguments)))
        self.tiers.append(call.sandbox_tier)
        return self.result


@pytest.fixture(scope="module")
def engine() -> EmbeddedEngine:
    eng = EmbeddedEngine(discover_files())
    assert eng.load()
    return eng


def run(step: PolicyStep, endpoint: Recorder, call: CallContext) -> Any:
    return asyncio.run(build_chain([step], endpoint)(call))


def test_allowed_call_reaches_the_endpoint(engine: EmbeddedEngine) -> None:
    rec = Recorder()
    call = call_of("time__get_current_time", {"timezone": "UTC"}, verification="pinned")
    result = run(PolicyStep(engine), rec, call)
    assert rec.seen == [{"timezone": "UTC"}]
    assert call.decision is not None and call.decision.allow
    assert result.content[0].text == "ok" and call.result_bytes and call.result_bytes > 0


def test_denied_call_never_reaches_the_endpoint(engine: EmbeddedEngine) -> None:
    rec = Recorder()
    call = call_of("fs__read_text_file", {"path": "/srv/symbi/../../etc/shadow"})
    with pytest.raises(PolicyDenied) as info:
        run(PolicyStep(engine), rec, call)
    assert info.value.code == "policy_denied" and info.value.reasons
    assert rec.seen == []
    assert call.decision is not None and not call.decision.allow and call.reasons


def test_tool_outside_the_allow_list_is_denied(engine: EmbeddedEngine) -> None:
    rec = Recorder()
    with pytest.raises(PolicyDenied):
        run(PolicyStep(engine), rec, call_of("everything__trigger-long-running-operation", {"duration": 1}))
    assert rec.seen == []


def test_redacted_arguments_never_reach_the_endpoint(engine: EmbeddedEngine) -> None:
    rec = Recorder()
    secret, bearer = "s3cr3t-t0ken-value", "Bearer abc.def.ghi"
    args = {
        "message": "hi",
        "token": secret,
        "headers": {"Authorization": bearer, "accept": "x"},
        "nested": {"password": "pw"},
    }
    call = call_of("everything__echo", args)
    run(PolicyStep(engine), rec, call)
    seen = json.dumps(rec.seen)
    assert secret not in seen and bearer not in seen and '"pw"' not in seen
    assert rec.seen[0]["token"] == REDACTED and rec.seen[0]["headers"]["Authorization"] == REDACTED
    assert rec.seen[0]["headers"]["accept"] == "x" and rec.seen[0]["message"] == "hi"
    assert call.audit_arguments is not None and secret not in json.dumps(call.audit_arguments)
    assert args["token"] == secret  # the caller's dict was not modified in place


def test_rate_limit_trips_at_the_configured_count(engine: EmbeddedEngine) -> None:
    # data.json: tool_rate_limits["everything__get-env"] = 5 calls per minute
    rec, step = Recorder(), PolicyStep(engine, CallCounters())
    for _ in range(5):
        run(step, rec, call_of("everything__get-env", {}, principal=TRUSTED))
    with pytest.raises(RateLimited) as info:
        run(step, rec, call_of("everything__get-env", {}, principal=TRUSTED))
    assert info.value.code == "rate_limited"
    assert len(rec.seen) == 5
    # per principal+tool: another tool and another principal are not affected
    run(step, rec, call_of("everything__echo", {"message": "x"}, principal=TRUSTED))
    run(step, rec, call_of("everything__get-env", {}, principal=ADMIN))
    assert len(rec.seen) == 7


def test_rate_limit_window_slides() -> None:
    now = [1000.0]
    counters = CallCounters(clock=lambda: now[0])  # injected clock: waiting a real minute is not a test
    assert all(counters.try_acquire("p", "t", 2) for _ in range(2))
    assert not counters.try_acquire("p", "t", 2)
    now[0] += 61
    assert counters.try_acquire("p", "t", 2)
    assert counters.principal_counts("p") == (1, 3)


def test_code_tool_gets_its_sandbox_tier(engine: EmbeddedEngine) -> None:
    rec = Recorder()
    call = call_of("sandbox__run_python", {"code": "print(1)"}, code=True)
    run(PolicyStep(engine), rec, call)
    assert rec.tiers == ["gvisor"] and call.sandbox_tier == "gvisor"
    trusted = Principal(id="alice", roles=("developer", "trusted"))
    call2 = call_of("sandbox__run_python", {"code": "print(1)"}, principal=trusted, code=True)
    run(PolicyStep(engine), rec, call2)
    assert call2.sandbox_tier == "docker"


def test_result_redaction(engine: EmbeddedEngine) -> None:
    env = {"PATH": "/bin", "AWS_SECRET_ACCESS_KEY": "AKIA-very-secret", "OPENAI_API_KEY": "sk-secret"}
    rec = Recorder(
        CallToolResult(
            content=[TextContent(type="text", text=json.dumps(env))], structured_content={"env": env}
        )
    )
    result = run(PolicyStep(engine), rec, call_of("everything__get-env", {}, principal=TRUSTED))
    out = result.model_dump_json()
    assert "AKIA-very-secret" not in out and "sk-secret" not in out and "/bin" in out


def test_oversized_text_result_is_truncated(engine: EmbeddedEngine) -> None:
    # data.json: max_result_bytes["sandbox__*"] = 65536
    big = "é" * 50_000  # 100,000 bytes of UTF-8
    rec = Recorder(CallToolResult(content=[TextContent(type="text", text=big)]))
    call = call_of("sandbox__run_shell", {"command": "yes"}, code=True)
    result = run(PolicyStep(engine), rec, call)
    text = result.content[0].text
    assert len(text.encode()) < 65536 + 200 and text.startswith("éé") and not result.is_error
    assert len(text) < len(big)
    assert call.result_bytes is not None and call.result_bytes > 100_000


def test_oversized_binary_result_becomes_an_error(engine: EmbeddedEngine) -> None:
    img = ImageContent(type="image", data="A" * 100_000, mime_type="image/png")
    rec = Recorder(CallToolResult(content=[img]))
    result = run(PolicyStep(engine), rec, call_of("sandbox__run_python", {"code": "x"}, code=True))
    assert result.is_error is True and all(c.type == "text" for c in result.content)


def test_listing_differs_by_principal_and_hidden_means_refused(engine: EmbeddedEngine) -> None:
    tools = [
        tool(n)
        for n in (
            "time__get_current_time",
            "everything__echo",
            "everything__trigger-long-running-operation",
            "fs__read_text_file",
            "fs__move_file",
            "sandbox__run_python",
        )
    ]
    local = {t.name for t in filter_listing(engine, LOCAL, tools, upstreams=UPSTREAMS)}
    admin = {t.name for t in filter_listing(engine, ADMIN, tools, upstreams=UPSTREAMS)}
    assert local == {
        "time__get_current_time",
        "everything__echo",
        "fs__read_text_file",
        "sandbox__run_python",
    }
    assert admin == {t.name for t in tools}
    assert {t.name for t in asyncio.run(afilter_listing(engine, LOCAL, tools, upstreams=UPSTREAMS))} == local
    rec = Recorder()
    for hidden in {t.name for t in tools} - local:
        with pytest.raises(PolicyDenied):
            run(PolicyStep(engine), rec, call_of(hidden, {}))
    assert rec.seen == []


def test_not_loaded_engine_denies_every_call(tmp_path: Any) -> None:
    from gateway.policy.loader import PolicyFiles

    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "missing.rego"))
    eng.load()
    rec = Recorder()
    with pytest.raises(PolicyDenied):
        run(PolicyStep(eng), rec, call_of("time__get_current_time", {}, verification="pinned"))
    assert rec.seen == []
    assert filter_listing(eng, ADMIN, [tool("time__get_current_time", verification="pinned")]) == []
