"""PolicyStep with a real CallContext, the real repo policy on the embedded engine, and an
inner endpoint that records exactly what it received (it stands where the upstream is)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ImageContent, ReadResourceResult, TextContent, TextResourceContents

from gateway.chain import build_chain
from gateway.context import AgentInfo, CallContext, Principal, ToolInfo, UpstreamInfo, VerificationStatus
from gateway.errors import PolicyDenied, RateLimited, UpstreamError
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputdoc import CallCounters
from gateway.policy.loader import PolicyFiles, discover_files
from gateway.policy.redact import REDACTED
from gateway.policy.results import result_size
from gateway.steps.policy import PolicyStep, afilter_listing, filter_listing, listed
from tests.state.conftest import redis_engine  # noqa: F401 - fixture (a real redis-server)
from tests.steps._chain import run_chain

LOCAL = Principal(id="local", kind="user", roles=("developer",))
ADMIN = Principal(id="admin", kind="user", roles=("admin",))
TRUSTED = Principal(id="alice", kind="user", roles=("developer", "trusted"))
UPSTREAMS = {
    n: UpstreamInfo(name=n, transport="stdio") for n in ("everything", "fs", "time", "sandbox", "up")
}


def tool(name: str, *, code: bool = False, verification: VerificationStatus = "unverified") -> ToolInfo:
    up, orig = name.split("__", 1)
    return ToolInfo(
        name=name,
        original_name=orig,
        upstream=up,
        definition={"name": orig, "inputSchema": {"type": "object"}},
        verification=verification,
        code_tool=code,
    )


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
    return run_chain(build_chain([step], endpoint), call)


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


# --- attacks found by mutation testing (scripts/mutate.py): a small policy of our own, on the
# real embedded engine, whose decision carries exactly the condition under test.
CUSTOM_REGO = """package symbi

import rego.v1

decision := {"allow": false, "reasons": ["r-one", "r-two"], "conditions": {}} if input.tool.name == "up__denied"

decision := {"allow": true, "reasons": [], "conditions": {"max_result_bytes": data.symbi_data.cap}} if {
    input.kind != "tools/call"
}

decision := {"allow": true, "reasons": [], "conditions": {"rate_limit": 1}} if {
    input.kind == "tools/call"
    input.tool.name != "up__denied"
}
"""


def custom_engine(tmp_path: Any, cap: int) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(CUSTOM_REGO)
    (tmp_path / "data.json").write_text(json.dumps({"symbi_data": {"cap": cap}}))
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego", data=tmp_path / "data.json"))
    assert eng.load()
    return eng


def test_a_denial_carries_the_policy_reasons(tmp_path: Any) -> None:
    eng = custom_engine(tmp_path, cap=10)
    call = call_of("up__denied", {})
    rec = Recorder()
    with pytest.raises(PolicyDenied) as err:
        run(PolicyStep(eng), rec, call)
    assert rec.seen == []
    assert err.value.reasons == ["r-one", "r-two"] and call.reasons == ["r-one", "r-two"]


def _resource_read(size: int) -> tuple[CallContext, Any]:
    result = ReadResourceResult(contents=[TextResourceContents(uri="file:///x", text="a" * size)])
    return CallContext(principal=LOCAL, kind="resources/read", target="file:///x"), result


def test_a_resource_over_the_cap_is_refused_at_the_boundary(tmp_path: Any) -> None:
    call, result = _resource_read(100)
    exact = result_size(result)
    # exactly the cap: returned whole; one byte under the result: refused, not cut
    assert _through(custom_engine(tmp_path, cap=exact), call, result) is result and call.result_bytes == exact
    call2, _ = _resource_read(100)
    with pytest.raises(PolicyDenied) as err:
        _through(custom_engine(tmp_path, cap=exact - 1), call2, result)
    assert call2.result_bytes == exact
    # the refusal says why, with both sizes (the client has no other way to learn the cap)
    [reason] = err.value.reasons
    assert f"{exact} bytes" in reason and f"{exact - 1} bytes" in reason


def _through(engine: EmbeddedEngine, call: CallContext, result: Any) -> Any:
    async def endpoint(c: CallContext) -> Any:
        return result

    async def go() -> Any:
        return await build_chain([PolicyStep(engine)], endpoint)(call)

    return asyncio.run(go())


def test_rate_limit_counts_per_tool_not_per_principal_only(tmp_path: Any) -> None:
    eng = custom_engine(tmp_path, cap=10)
    step = PolicyStep(eng)
    run(step, Recorder(), call_of("up__a", {}))
    run(step, Recorder(), call_of("up__b", {}))  # another tool: its own budget
    limited = call_of("up__a", {})
    with pytest.raises(RateLimited):
        run(step, Recorder(), limited)
    assert len(limited.reasons) == 1  # the metrics step's recent-calls view reads them


def test_the_decision_latency_is_observed(engine: EmbeddedEngine) -> None:
    seen: list[float] = []
    before = time.perf_counter()
    run(
        PolicyStep(engine, observe=seen.append),
        Recorder(),
        call_of("time__get_current_time", {}, verification="pinned"),
    )
    assert len(seen) == 1 and 0 <= seen[0] <= time.perf_counter() - before


def test_the_decision_latency_leaves_out_the_wait_for_the_rate_limiter(
    engine: EmbeddedEngine,
    redis_engine: Any,  # noqa: F811
) -> None:
    """``/metrics``' decision latency is the decision's: a shared rate limiter that answers late
    (a real redis-server holding its writing clients, ``CLIENT PAUSE ... WRITE``) shows in the
    call's time, not in the decision's (it did before: the clock started before the reservation)."""
    from redis import Redis as SyncRedis

    from gateway.state.limiter import RedisRateLimiter

    seen: list[float] = []

    async def go() -> float:
        limiter = RedisRateLimiter(redis_engine.url, CallCounters(), timeout_s=10)
        chain = build_chain([PolicyStep(engine, observe=seen.append, limiter=limiter)], Recorder())
        try:
            await chain(call_of("time__get_current_time", {}, verification="pinned"))  # the script loaded
            with SyncRedis.from_url(redis_engine.url) as r:
                r.execute_command("CLIENT", "PAUSE", 1000, "WRITE")  # scripts wait too
            started = time.perf_counter()
            await chain(call_of("time__get_current_time", {}, verification="pinned"))
            return time.perf_counter() - started
        finally:
            await limiter.aclose()
            with SyncRedis.from_url(redis_engine.url) as r:
                r.flushall()  # the server is the module's: its counts are not the next test's

    took = asyncio.run(go())
    assert took >= 0.9  # the reservation waited for the pause
    assert len(seen) == 2 and seen[1] < 0.5  # a decision takes well under a millisecond


LISTING_REGO = """package symbi

import rego.v1

default decision := {"allow": false, "reasons": ["not listed"], "conditions": {}}

decision := {"allow": true, "reasons": [], "conditions": {}} if {
    input.action == "list"
    input.target == input.tool.name
    input.upstream.transport == "stdio"
    input.context.session_id == "s-1"
    input.arguments == {}
    input.context.calls_last_minute == 0
    input.context.calls_last_hour == 0
    input.context.tool_calls_last_minute == 0
    agent_ok
}

agent_ok if input.agent == null

agent_ok if input.agent.name == "helper"
"""


def test_a_listing_decision_sees_the_whole_input(tmp_path: Any) -> None:
    """A policy may hide tools by upstream, session or agent: each must reach the input; the
    counters are there and zero (volume applies to calls only)."""
    (tmp_path / "p.rego").write_text(LISTING_REGO)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load()
    tools = [tool("up__a"), tool("fs__read_file"), tool("up__b")]
    ups = {"up": UpstreamInfo(name="up", transport="stdio"), "fs": UpstreamInfo(name="fs", transport="http")}
    kw: dict[str, Any] = {"upstreams": ups, "session_id": "s-1"}
    assert [t.name for t in filter_listing(eng, LOCAL, tools, **kw)] == ["up__a", "up__b"]
    for missing in ("upstreams", "session_id"):
        assert filter_listing(eng, LOCAL, tools, **{k: v for k, v in kw.items() if k != missing}) == []
    agent_principal = Principal(id="local", kind="user", roles=("developer",), agent="a1")
    helper = AgentInfo(id="a1", name="helper", state="running")
    other = AgentInfo(id="a1", name="other", state="running")
    for listing in (filter_listing, afilter_listing):

        def ask(listing: Any = listing, **more: Any) -> list[str]:
            got = listing(eng, agent_principal, tools, **more)
            return [t.name for t in (asyncio.run(got) if asyncio.iscoroutine(got) else got)]

        assert ask(agent=helper, **kw) == ["up__a", "up__b"]
        assert ask(**kw) == ask(agent=other, **kw) == []  # the agent's record is used
        for missing in ("upstreams", "session_id"):
            assert ask(agent=helper, **{k: v for k, v in kw.items() if k != missing}) == []


def test_a_remote_engine_is_asked_every_tool_with_the_same_input(tmp_path: Any) -> None:
    """A remote OPA's listing decisions are awaited concurrently (one request per tool); they
    must be asked the same documents as the embedded engine's: a real OPA engine
    (opa-golib-python-bindings) behind the Data API stands in for the `opa` binary."""
    from gateway.policy.remote import RemoteEngine
    from tests.policy.conftest import opa_engine
    from tests.policy.opa_server import OpaServer

    tools = [tool("up__a"), tool("fs__read_file"), tool("up__b")]
    ups = {"up": UpstreamInfo(name="up", transport="stdio"), "fs": UpstreamInfo(name="fs", transport="http")}
    kw: dict[str, Any] = {"upstreams": ups, "session_id": "s-1"}
    who = Principal(id="local", kind="user", roles=("developer",), agent="a1")
    helper = AgentInfo(id="a1", name="helper", state="running")
    with OpaServer(opa_engine(LISTING_REGO, {})) as opa:
        remote = RemoteEngine(opa.url, timeout_s=5.0)
        try:

            def ask(**more: Any) -> list[str]:
                return [t.name for t in asyncio.run(afilter_listing(remote, who, tools, **more))]

            assert ask(agent=helper, **kw) == ["up__a", "up__b"]
            assert opa.requests == 3
            assert ask(**kw) == []  # no agent record
            for missing in ("upstreams", "session_id"):
                assert ask(agent=helper, **{k: v for k, v in kw.items() if k != missing}) == []
        finally:
            remote.close()


def _allow_if(tmp_path: Any, body: str, reason: str = "too many") -> PolicyFiles:
    """A policy that allows a call when the Rego ``body`` holds, else denies it with ``reason``."""
    (tmp_path / "p.rego").write_text(
        "package symbi\n\nimport rego.v1\n\n"
        f'default decision := {{"allow": false, "reasons": ["{reason}"], "conditions": {{}}}}\n\n'
        f'decision := {{"allow": true, "reasons": [], "conditions": {{}}}} if {{\n    {body}\n}}\n'
    )
    return PolicyFiles(policy=tmp_path / "p.rego")


def test_the_call_decision_sees_the_call_counts(tmp_path: Any) -> None:
    """A volume rule (input.context.calls_last_minute) needs the step's counters in the input."""
    eng = EmbeddedEngine(_allow_if(tmp_path, "input.context.calls_last_minute < 2"))
    assert eng.load()
    step = PolicyStep(eng)
    run(step, Recorder(), call_of("up__a", {}))
    run(step, Recorder(), call_of("up__b", {}))
    with pytest.raises(PolicyDenied):
        run(step, Recorder(), call_of("up__a", {}))


class Held(EmbeddedEngine):
    """The real embedded engine asked as a remote one is (awaited), recording the hourly count
    each call decision read; a call of ``up__slow`` waits for ``go`` first."""

    decides_inline = False

    def __init__(self, files: PolicyFiles) -> None:
        super().__init__(files)
        self.hours: list[int] = []
        self.go = asyncio.Event()

    async def adecide(self, input: Any) -> Any:
        self.hours.append(input["context"]["calls_last_hour"])
        if input["target"] == "up__slow":
            await self.go.wait()
        return super().decide(input)


def test_a_denied_or_cancelled_call_is_given_back(tmp_path: Any) -> None:
    """Counted from its reservation, a call that is then denied or cancelled is taken back:
    the next call reads the counts the refused one read."""
    eng = Held(_allow_if(tmp_path, 'input.target != "up__deny"', reason="no"))
    assert eng.load()
    step = PolicyStep(eng)
    chain = build_chain([step], Recorder())

    async def go() -> None:
        await chain(call_of("up__a", {}))
        with pytest.raises(PolicyDenied):
            await chain(call_of("up__deny", {}))
        await chain(call_of("up__a", {}))
        slow = asyncio.ensure_future(chain(call_of("up__slow", {})))
        while len(eng.hours) < 4:  # the slow call is reserved and waits for its decision
            await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await chain(call_of("up__a", {}))

    asyncio.run(go())
    assert eng.hours == [0, 1, 1, 2, 2]  # the denied and the cancelled calls read, then gone
    assert step.counters.principal_counts(LOCAL.qualified) == (3, 3)


def test_the_counters_and_limiter_handed_in_are_the_ones_used(engine: EmbeddedEngine) -> None:
    """make_gateway shares one CallCounters (the policy input's call counts) and one rate
    limiter (Redis when replicas share state) with the step: it must not make its own."""
    from gateway.state.limiter import LocalRateLimiter

    counters = CallCounters()
    run(PolicyStep(engine, counters), Recorder(), call_of("everything__echo", {"message": "x"}))
    assert counters.principal_counts(LOCAL.qualified)[0] == 1
    shared = CallCounters()
    step = PolicyStep(engine, CallCounters(), limiter=LocalRateLimiter(shared))
    run(step, Recorder(), call_of("everything__echo", {"message": "x"}))
    assert shared.principal_counts(LOCAL.qualified)[0] == 1


def test_replicas_decide_on_the_shared_counts_of_this_principal_and_tool(
    tmp_path: Any,
    redis_engine: Any,  # noqa: F811
) -> None:
    """With replicas the call decision's counts come from Redis, read for this principal and
    this tool (a real redis-server): two gateways share one volume budget."""
    from gateway.state.limiter import RedisRateLimiter

    rules = "input.context.calls_last_minute < 3\n    input.context.tool_calls_last_minute < 2"
    eng = EmbeddedEngine(_allow_if(tmp_path, rules))
    assert eng.load()

    async def go() -> None:
        limiters = [RedisRateLimiter(redis_engine.url, CallCounters(), timeout_s=2) for _ in range(2)]
        a, b = (build_chain([PolicyStep(eng, limiter=lim)], Recorder()) for lim in limiters)
        try:
            await a(call_of("up__a", {}))
            await b(call_of("up__a", {}))  # replica b sees a's call: 1 call of up__a so far
            with pytest.raises(PolicyDenied):
                await b(call_of("up__a", {}))  # the second call of this tool within the minute
            await a(call_of("up__b", {}))  # another tool: its own count, the principal's is 2
            with pytest.raises(PolicyDenied):
                await b(call_of("up__c", {}))  # the principal's third call, across replicas
            await a(call_of("up__c", {}, principal=TRUSTED))  # another principal: its own counts
        finally:
            for lim in limiters:
                await lim.aclose()

    asyncio.run(go())


class Asked(EmbeddedEngine):
    """The real embedded engine, counting which of its two entry points each listing uses."""

    def __init__(self, files: PolicyFiles, *, inline: bool) -> None:
        super().__init__(files)
        self.decides_inline = inline
        self.inline_calls = 0
        self.awaited_calls = 0

    def decide(self, input: Any) -> Any:
        self.inline_calls += 1
        return super().decide(input)

    async def adecide(self, input: Any) -> Any:
        self.awaited_calls += 1
        await asyncio.sleep(0)  # as an engine that awaits I/O (a remote OPA) would
        return super().decide(input)


@pytest.mark.parametrize("inline", [True, False])
def test_listed_is_the_listings_decision_for_one_tool_asked_as_the_engine_says(inline: bool) -> None:
    eng = Asked(discover_files(), inline=inline)
    assert eng.load()
    tools = [tool("time__get_current_time", verification="pinned"), tool("fs__read_file"), tool("up__x")]
    seen: list[set[str]] = []
    for who in (LOCAL, ADMIN, Principal(id="nobody")):
        shown = {t.name for t in asyncio.run(afilter_listing(eng, who, tools, session_id="s1"))}
        assert {t.name for t in tools if asyncio.run(listed(eng, who, t, session_id="s1"))} == shown
        seen.append(shown)
    assert seen[1] and seen[2] == set()  # the admin sees tools, a stranger none
    # an engine that decides inline is never awaited; one that awaits is never asked inline
    asked = 2 * 3 * len(tools)
    assert (eng.inline_calls, eng.awaited_calls) == ((asked, 0) if inline else (0, asked))


@pytest.mark.parametrize("inline", [True, False])
def test_the_call_decision_is_asked_as_the_engine_says(inline: bool) -> None:
    eng = Asked(discover_files(), inline=inline)
    assert eng.load()
    inner = Recorder()
    step = PolicyStep(eng, CallCounters())
    for who in (LOCAL, Principal(id="nobody")):  # one allowed, one denied: both decided
        try:
            run_chain(
                build_chain([step], inner), call_of("everything__echo", {"message": "m"}, principal=who)
            )
        except PolicyDenied:
            assert who.id == "nobody"
    assert len(inner.seen) == 1
    assert (eng.inline_calls, eng.awaited_calls) == ((2, 0) if inline else (0, 2))


def test_only_the_embedded_engine_decides_inline() -> None:
    from gateway.policy.engine import PolicyEngine
    from gateway.policy.remote import RemoteEngine

    assert EmbeddedEngine.decides_inline is True
    assert PolicyEngine.decides_inline is False and RemoteEngine.decides_inline is False


REDACT_THEN_CAP_REGO = """package symbi

import rego.v1

decision := {"allow": true, "reasons": [], "conditions": {
    "redact_result": ["secret"], "max_result_bytes": data.symbi_data.cap,
}}
"""


def test_a_redacted_result_is_capped_by_its_own_size_not_the_upstreams(tmp_path: Any) -> None:
    (tmp_path / "p.rego").write_text(REDACT_THEN_CAP_REGO)
    produced = CallToolResult(content=[TextContent(type="text", text=json.dumps({"secret": "s" * 500}))])
    redacted = CallToolResult(content=[TextContent(type="text", text=json.dumps({"secret": REDACTED}))])
    for cap, cut in ((result_size(redacted), False), (result_size(redacted) - 1, True)):
        (tmp_path / "data.json").write_text(json.dumps({"symbi_data": {"cap": cap}}))
        eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego", data=tmp_path / "data.json"))
        assert eng.load()
        call = call_of("up__x", {})
        out = _through(eng, call, produced)
        assert call.result_bytes == result_size(produced)  # the size the upstream produced
        assert (out != redacted) is cut and REDACTED in out.content[0].text


def _redact_then_cap(tmp_path: Any, cap: int) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(REDACT_THEN_CAP_REGO)
    (tmp_path / "data.json").write_text(json.dumps({"symbi_data": {"cap": cap}}))
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego", data=tmp_path / "data.json"))
    assert eng.load()
    return eng


def test_a_resource_result_is_redacted_then_capped_by_its_own_size(tmp_path: Any) -> None:
    """Attack: ``redact_result`` in a decision for ``resources/read`` was ignored (only tool
    results were redacted): the secret reached the client."""
    produced = ReadResourceResult(contents=[TextResourceContents(uri="file:///x", text='{"secret": "s3"}')])
    call = CallContext(principal=LOCAL, kind="resources/read", target="file:///x")
    out = _through(_redact_then_cap(tmp_path, cap=10_000), call, produced)
    assert json.loads(out.contents[0].text) == {"secret": REDACTED}
    assert call.result_bytes == result_size(produced)  # the size the upstream produced


def test_an_upstream_error_passes_the_result_conditions(tmp_path: Any) -> None:
    """Attack (rt-call 4 c): the upstream's JSON-RPC error went around the policy step's result
    conditions: its data reached the client unredacted and over the cap."""

    async def failing(c: CallContext) -> Any:
        raise UpstreamError(
            "upstream 'up' returned an error", mcp_error=MCPError(-32005, "no", {"secret": "s3"})
        )

    async def go(cap: int) -> UpstreamError:
        with pytest.raises(UpstreamError) as raised:
            await build_chain([PolicyStep(_redact_then_cap(tmp_path, cap))], failing)(call_of("up__x", {}))
        return raised.value

    redacted = asyncio.run(go(10_000)).mcp_error
    assert isinstance(redacted, MCPError) and redacted.error.data == {"secret": REDACTED}
    capped = asyncio.run(go(10)).mcp_error
    assert isinstance(capped, MCPError) and capped.error.data is None and capped.code == -32005
