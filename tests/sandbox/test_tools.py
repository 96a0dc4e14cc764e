"""The built-in ``sandbox`` server: tool definitions and calls through a real tier."""

from __future__ import annotations

import asyncio
import re
import time

import anyio
import jsonschema
import pytest

from gateway.config.model import Config
from gateway.errors import ArgumentsInvalid, SandboxUnavailable, UnknownTool
from gateway.sandbox import SandboxManager, SandboxRequest, SandboxTools

from .conftest import own_leftovers, require_tier


def test_tool_definitions_are_valid_mcp_tools() -> None:
    tools = SandboxTools(Config(), SandboxManager(Config(), sweep_orphans=False)).list_tools()
    assert [t["name"] for t in tools] == ["run_python", "run_shell"]
    for t in tools:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", "sandbox__" + t["name"])
        jsonschema.Draft202012Validator.check_schema(t["inputSchema"])
        jsonschema.Draft202012Validator.check_schema(t["outputSchema"])
        assert t["inputSchema"]["additionalProperties"] is False
        assert t["annotations"]["readOnlyHint"] is False
        assert t["annotations"]["destructiveHint"] is False
        assert t["annotations"]["openWorldHint"] is False
    py = tools[0]["inputSchema"]
    assert py["required"] == ["code"]
    jsonschema.validate({"code": "print(1)", "stdin": "x", "files": {"a.txt": "b"}}, py)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"code": "print(1)", "net": True}, py)


def test_code_tools_can_be_switched_off() -> None:
    cfg = Config.model_validate({"sandbox": {"code_tools": False}})
    tools = SandboxTools(cfg, SandboxManager(cfg, sweep_orphans=False))
    assert tools.list_tools() == []


@pytest.mark.anyio
async def test_bad_arguments_and_unknown_tool(manager: SandboxManager) -> None:
    tools = SandboxTools(Config(), manager)
    with pytest.raises(UnknownTool):
        await tools.call("run_ruby", {"code": "1"}, min_tier=None)
    for bad in (
        {},
        {"code": 5},
        {"code": "1", "extra": 1},
        {"code": "1", "files": {"../x": "y"}},
        {"code": "1", "stdin": 3},
        {"code": "1", "files": {"a": 1}},
    ):
        with pytest.raises(ArgumentsInvalid):
            await tools.call("run_python", bad, min_tier=None)


@pytest.mark.sandbox
@pytest.mark.anyio
async def test_run_python_picks_gvisor_and_returns_a_call_result(manager: SandboxManager) -> None:
    require_tier(manager, "gvisor")
    tools = SandboxTools(Config(), manager)
    result, tier = await tools.call(
        "run_python",
        {
            "code": "import sys\nprint(open('in.txt').read() + sys.stdin.read())",
            "stdin": "B",
            "files": {"in.txt": "A"},
        },
        min_tier=None,
    )
    assert tier == "gvisor"  # agent code is untrusted even with no policy floor
    assert result["isError"] is False
    sc = result["structuredContent"]
    assert (
        sc["stdout"] == "AB\n" and sc["exit_code"] == 0 and sc["tier"] == "gvisor" and sc["killed"] == "none"
    )
    jsonschema.validate(sc, SandboxTools(Config(), manager).list_tools()[0]["outputSchema"])
    assert result["content"][0]["type"] == "text" and "AB" in result["content"][0]["text"]


@pytest.mark.sandbox
@pytest.mark.anyio
async def test_run_shell_failure_and_limit_are_error_results(manager: SandboxManager) -> None:
    require_tier(manager, "gvisor")
    tools = SandboxTools(Config(), manager)
    result, _ = await tools.call("run_shell", {"command": "echo oops >&2; exit 3"}, min_tier="gvisor")
    assert result["isError"] is True
    assert result["structuredContent"]["exit_code"] == 3
    assert result["structuredContent"]["stderr"] == "oops\n"
    result, _ = await tools.call(
        "run_python", {"code": "while True: pass"}, min_tier=None, limits=manager.limits(timeout_s=1.0)
    )
    assert result["isError"] is True and result["structuredContent"]["killed"] == "timeout"


@pytest.mark.sandbox
@pytest.mark.anyio
async def test_unavailable_tier_is_refused_never_downgraded(manager: SandboxManager) -> None:
    require_tier(manager, "bwrap")  # a weaker tier works, yet it must not be used
    cfg = Config.model_validate({"sandbox": {"image": "symbi-no-such-image:latest"}})
    broken = SandboxManager(cfg, sweep_orphans=False)
    tools = SandboxTools(cfg, broken)
    with pytest.raises(SandboxUnavailable):
        await tools.call("run_python", {"code": "print(1)"}, min_tier=None)
    with pytest.raises(SandboxUnavailable):
        broken.run("docker", SandboxRequest(code="1"))


@pytest.mark.sandbox
@pytest.mark.anyio
async def test_a_run_is_a_span_of_the_requests_trace(manager: SandboxManager) -> None:
    """The sandbox hop shows in the request's trace like an upstream hop (gateway/telemetry.py)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway import telemetry

    require_tier(manager, "bwrap")
    memory = InMemorySpanExporter()
    proc = SimpleSpanProcessor(memory)
    telemetry.install().add(proc)
    try:
        cfg = Config.model_validate({"security": {"default_sandbox_tier": "bwrap"}})
        with telemetry.tracer().start_as_current_span("request") as root:
            _, tier = await SandboxTools(cfg, manager).call(
                "run_shell", {"command": "exit 3"}, min_tier=None, principal_kind="user"
            )
    finally:
        telemetry.install().remove(proc)
    [span] = [s for s in memory.get_finished_spans() if s.name == "sandbox run_shell"]
    assert span.parent is not None and span.parent.span_id == root.get_span_context().span_id
    assert span.attributes is not None
    assert (span.attributes["symbi.sandbox.tier"], span.attributes["process.exit.code"]) == (tier, 3)


@pytest.mark.sandbox
@pytest.mark.anyio
async def test_a_cancelled_call_stops_its_program_now(manager: SandboxManager, tier: str) -> None:
    """A caller that goes away (here a cancel scope, as the SDK's ``notifications/cancelled``
    handling uses) stops the program at once, and the call returns once it is gone: before,
    the program ran on to its time limit (25 s here) and the cancelled call waited for it."""
    tools, mine = _tools_in(tier)
    started = time.monotonic()
    try:
        with anyio.move_on_after(3.0):  # the containers' tiers start in about a second
            await _sleep(tools, mine)
        assert time.monotonic() - started < 10
        assert own_leftovers(manager, tier) == []
    finally:
        mine.close()


def _tools_in(tier: str) -> tuple[SandboxTools, SandboxManager]:
    """Code tools whose person's shell command runs in ``tier`` (the configured default)."""
    cfg = Config.model_validate({"security": {"default_sandbox_tier": tier}})
    return SandboxTools(cfg, m := SandboxManager(cfg, sweep_orphans=False)), m


async def _sleep(tools: SandboxTools, manager: SandboxManager) -> None:
    _, tier = await tools.call(
        "run_shell",
        {"command": "sleep 25"},
        min_tier=None,
        limits=manager.limits(timeout_s=60),
        principal_kind="user",
    )
    raise AssertionError(f"the run in {tier} was not cancelled")


@pytest.mark.sandbox
def test_a_task_cancelled_natively_returns_at_once_and_its_program_stops(manager: SandboxManager) -> None:
    """A call budget cancels its task (``Task.cancel``), which no cancel scope holds: the call
    returns at once, and the program is still stopped, on the run's own thread."""
    require_tier(manager, "bwrap")
    tools, mine = _tools_in("bwrap")

    async def go() -> float:
        call = asyncio.ensure_future(_sleep(tools, mine))
        await asyncio.sleep(1.0)
        assert own_leftovers(manager, "bwrap") != []  # it runs
        call.cancel()
        cancelled = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert time.monotonic() - cancelled < 5  # before: the 25 s of the program
        return time.monotonic()

    try:
        returned = asyncio.run(go())
        while own_leftovers(manager, "bwrap") and time.monotonic() - returned < 10:
            time.sleep(0.1)
        assert own_leftovers(manager, "bwrap") == []
        assert time.monotonic() - returned < 10
    finally:
        mine.close()
