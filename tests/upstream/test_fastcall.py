"""The fast lane of ``tools/call`` to stdio upstreams (``gateway.upstream.fastcall``).

Every case runs a real upstream process twice: through the lane and through the SDK's
client path (the lane unbound), and the two must answer alike: the same result, the same
error class and code, the same progress. ``tests/peers/raw_server.py`` is a JSON-lines server
without the SDK, so it can misbehave on purpose (stray and duplicate responses, a malformed
response, a silent or dying server) and records every line it receives.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from mcp import types

from gateway.config.load import load_config
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.events import EventSink, LoggingSink
from gateway.upstream.fastcall import FIRST_ID, FastLane
from gateway.upstream.session import Upstream
from tests.conftest import ROOT, upstream_writable, write_config

pytestmark = pytest.mark.anyio
RAW = ROOT / "tests" / "peers" / "raw_server.py"
MUTABLE = ROOT / "tests" / "peers" / "mutable_server.py"


async def _nothing(_up: Upstream) -> None:
    return None


@asynccontextmanager
async def running(
    tmp_path: Path, script: Path, timeout_s: float = 10.0, events: EventSink | None = None
) -> AsyncIterator[Upstream]:
    record = upstream_writable(tmp_path) / "record.jsonl"  # the upstream runs as its own user
    path = write_config(
        tmp_path,
        f"""
        [servers.up]
        command = "{sys.executable}"
        args = ["{script}"]
        env = {{ RECORD_FILE = "{record}" }}
        verification = "warn"
        timeout_s = {timeout_s}
        """,
    )
    config = load_config(path, {})
    up = Upstream("up", config.servers["up"], config, events=events or LoggingSink(), on_change=_nothing)
    async with anyio.create_task_group() as tg:
        up.bind_task_group(tg)
        tg.start_soon(up.run)
        assert await up.wait_up(30), up.last_error
        try:
            yield up
        finally:
            await up.stop()
            tg.cancel_scope.cancel()


def sent(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "upstream-rw" / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    return [m for m in sent(tmp_path) if m.get("method") == "tools/call"]


@asynccontextmanager
async def sdk_path(up: Upstream) -> AsyncIterator[None]:
    """The same upstream with its lane unbound: calls take the SDK client's path."""
    bound = up._lane
    up._lane = None
    try:
        yield
    finally:
        up._lane = bound


def text(r: Any) -> str:
    assert isinstance(r, types.CallToolResult)
    block = r.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def both_ways(up: Upstream, args: dict[str, Any], **kw: Any) -> tuple[Any, Any]:
    fast = await up.call_tool("t", args, **kw)
    async with sdk_path(up):
        slow = await up.call_tool("t", args, **kw)
    return fast, slow


async def test_a_call_takes_the_lane_and_answers_as_the_sdk_path(tmp_path: Path) -> None:
    async with running(tmp_path, RAW) as up:
        assert up._lane is not None and isinstance(up._lane[1], FastLane)
        fast, slow = await both_ways(up, {"mode": "ok", "message": "héllo"})
        assert fast == slow and text(fast) == '"h\\u00e9llo"'
        lane_call, sdk_call = calls(tmp_path)
        assert lane_call["id"] >= FIRST_ID and sdk_call["id"] < FIRST_ID  # the lane's own id space
        assert lane_call["params"]["arguments"] == sdk_call["params"]["arguments"]
        assert up._lane[1].in_flight == 0


async def test_the_real_sdk_server_answers_alike(tmp_path: Path) -> None:
    async with running(tmp_path, MUTABLE) as up:
        fast = await up.call_tool("echo", {"message": "x"})
        async with sdk_path(up):
            slow = await up.call_tool("echo", {"message": "x"})
        assert fast == slow and text(fast) == "Echo: x"
        # an unknown tool: the server's own answer, the same either way
        bad = await up.call_tool("nope", {})
        async with sdk_path(up):
            bad2 = await up.call_tool("nope", {})
        assert bad == bad2


async def test_stray_and_duplicate_responses_do_not_answer_another_call(tmp_path: Path) -> None:
    async with running(tmp_path, RAW) as up:
        for mode in ("stray", "twice"):
            fast, slow = await both_ways(up, {"mode": mode, "message": mode})
            assert text(fast) == text(slow) == json.dumps(mode)
        # the leftovers (a response to an id not in flight, a second answer) answered nothing:
        # the next call gets its own result
        fast, slow = await both_ways(up, {"mode": "ok", "message": "next"})
        assert text(fast) == text(slow) == '"next"'


async def test_a_notification_naming_the_call_does_not_answer_it(tmp_path: Path) -> None:
    # a message with a method is never a response, whatever id it carries
    async with running(tmp_path, RAW) as up:
        fast, slow = await both_ways(up, {"mode": "notify", "message": "real"})
        assert text(fast) == text(slow) == '"real"'


async def test_a_batched_response_is_refused_both_ways(tmp_path: Path) -> None:
    # an array of responses: neither path takes it as the answer; the call times out alike
    async with running(tmp_path, RAW, timeout_s=1.0) as up:
        with pytest.raises(UpstreamTimeout):
            await up.call_tool("t", {"mode": "batch", "message": 1})
        async with sdk_path(up):
            with pytest.raises(UpstreamTimeout):
                await up.call_tool("t", {"mode": "batch", "message": 1})


async def test_an_id_echoed_as_a_string_still_correlates(tmp_path: Path) -> None:
    async with running(tmp_path, RAW) as up:
        fast, slow = await both_ways(up, {"mode": "string_id", "message": 7})
        assert text(fast) == text(slow) == "7"


async def test_an_error_response_is_the_same_upstream_error(tmp_path: Path) -> None:
    async with running(tmp_path, RAW) as up:
        errors = []
        for forced_sdk in (False, True):
            with pytest.raises(UpstreamError) as e:
                if forced_sdk:
                    async with sdk_path(up):
                        await up.call_tool("t", {"mode": "error"})
                else:
                    await up.call_tool("t", {"mode": "error"})
            errors.append(e.value)
        fast, slow = errors
        assert type(fast) is type(slow) is UpstreamError
        assert fast.mcp_error.error.code == slow.mcp_error.error.code == types.INVALID_PARAMS  # type: ignore[attr-defined]
        assert fast.mcp_error.error.data == slow.mcp_error.error.data == {"k": 1}  # type: ignore[attr-defined]


async def test_progress_reaches_the_caller(tmp_path: Path) -> None:
    async with running(tmp_path, RAW) as up:
        seen: list[list[tuple[float, float | None, str | None]]] = [[], []]

        async def on(i: int, p: float, t: float | None, m: str | None) -> None:
            seen[i].append((p, t, m))

        fast = await up.call_tool("t", {"mode": "progress", "message": 1}, progress=lambda *a: on(0, *a))
        async with sdk_path(up):
            slow = await up.call_tool("t", {"mode": "progress", "message": 1}, progress=lambda *a: on(1, *a))
        assert fast == slow
        assert seen[0] == seen[1] == [(1.0, 2.0, "step 1"), (2.0, 2.0, "step 2")]


async def test_a_malformed_response_is_settled_as_the_sdk_settles_it(tmp_path: Path) -> None:
    # result and error in one response: the SDK's parser decides what it is (here the error),
    # and the lane hands such a line to that parser instead of guessing
    async with running(tmp_path, RAW, timeout_s=2.0) as up:
        errors = []
        for forced_sdk in (False, True):
            with pytest.raises(UpstreamError) as e:
                if forced_sdk:
                    async with sdk_path(up):
                        await up.call_tool("t", {"mode": "both"})
                else:
                    await up.call_tool("t", {"mode": "both"})
            errors.append(e.value)
        fast, slow = errors
        assert type(fast) is type(slow)
        assert fast.mcp_error.error.code == slow.mcp_error.error.code == 1  # type: ignore[attr-defined]


async def test_a_timed_out_or_cancelled_call_is_cancelled_upstream(tmp_path: Path) -> None:
    async with running(tmp_path, RAW, timeout_s=0.5) as up:
        with pytest.raises(UpstreamTimeout):
            await up.call_tool("t", {"mode": "silent"})
        with anyio.move_on_after(0.3):
            await up.call_tool("t", {"mode": "silent"})
        await anyio.sleep(0.3)  # the server records the cancellations
        timed_out, cancelled = calls(tmp_path)
        notes = {
            m["params"]["requestId"]: m["params"]["reason"]
            for m in sent(tmp_path)
            if m.get("method") == "notifications/cancelled"
        }
        assert timed_out["id"] in notes and cancelled["id"] in notes
        assert notes[cancelled["id"]] == "caller cancelled"


async def test_a_server_dying_mid_call_fails_the_call_as_unavailable(tmp_path: Path) -> None:
    async with running(tmp_path, RAW) as up:
        with pytest.raises(UpstreamUnavailable):
            await up.call_tool("t", {"mode": "die"})


async def test_arguments_orjson_cannot_write_take_the_sdk_path(tmp_path: Path) -> None:
    async with running(tmp_path, RAW) as up:
        r = await up.call_tool("t", {"mode": "ok", "message": 2**70})  # beyond 64 bits
        assert text(r) == str(2**70)
        [call] = calls(tmp_path)
        assert call["id"] < FIRST_ID  # sent by the SDK's client


async def test_through_the_gateway_every_check_still_runs(tmp_path: Path) -> None:
    """``symbi mcp`` in front of the raw server: a call reaches it on the lane, its progress
    reaches the client under the client's own token, and a call whose arguments break the
    tool's schema, or that the policy denies, never reaches the upstream."""
    from tests.server._clients import stdio_session

    record = upstream_writable(tmp_path) / "record.jsonl"
    cfg = write_config(
        tmp_path,
        f"""
        [servers.mut]
        command = "{sys.executable}"
        args = ["{RAW}"]
        env = {{ RECORD_FILE = "{record}" }}
        verification = "warn"
        """,
    )
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with stdio_session(cfg) as s:
        r = await s.call_tool("mut__t", {"mode": "progress", "message": "hi"}, progress_callback=on_progress)
        assert not r.is_error and text(r) == '"hi"'
        assert seen == [(1.0, 2.0, "step 1"), (2.0, 2.0, "step 2")]
        bad = await s.call_tool("mut__t", {"mode": 5})  # mode must be a string
        assert bad.is_error and bad.meta["symbi/error"]["code"] == "arguments_invalid"  # type: ignore[index]
    [call] = calls(tmp_path)  # only the valid call reached the upstream, on the lane
    assert call["id"] >= FIRST_ID and call["params"]["arguments"] == {"mode": "progress", "message": "hi"}


async def test_waits_time_out_on_one_timer_each_at_its_own_deadline() -> None:
    """The lane's waiters share one loop timer: a later call with a shorter timeout still times
    out first, a settled call never does, and the rest time out at their own deadlines."""
    lane = FastLane(lambda line: anyio.lowlevel.checkpoint())
    order: list[str] = []

    async def call(name: str, timeout: float) -> None:
        try:
            await lane.request("tools/call", {"name": name}, timeout=timeout, on_progress=None)
            order.append(f"{name} answered")
        except Exception as e:  # noqa: BLE001 - the error type is what is recorded
            order.append(f"{name} {type(e).__name__}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "long", 0.6)
        await anyio.sleep(0.05)
        tg.start_soon(call, "short", 0.1)
        tg.start_soon(call, "answered", 0.2)
        await anyio.sleep(0.05)
        answered = max(lane._pending)  # the third request's id
        assert lane.take_now(json.dumps({"jsonrpc": "2.0", "id": answered, "result": {}}).encode() + b"\n")
    assert order == ["answered answered", "short MCPError", "long MCPError"]
    assert lane.in_flight == 0


def test_a_result_is_refused_exactly_when_the_sdk_refuses_it() -> None:
    """``tool_result``'s surface check is ``validate_server_result`` without its discarded
    dump: the same inputs pass and the same are refused (``ValidationError``), and a result the
    surface refuses is refused by ``tool_result``; an unknown version is a ``ValueError``."""
    from mcp_types.methods import validate_server_result
    from pydantic import ValidationError

    from gateway.upstream.fastcall import _result_surface, tool_result

    cases: list[Any] = [
        {"content": [{"type": "text", "text": "ok"}]},
        {"content": [{"type": "text", "text": "ok"}], "isError": True, "structuredContent": {"a": 1}},
        {"content": [{"type": "image", "data": "aGk=", "mimeType": "image/png"}]},
        {"content": [{"type": "text", "text": "ok"}], "resultType": "complete"},
        {"content": [{"type": "text"}]},
        {"content": "not a list"},
        {"content": [{"type": "nope", "text": "x"}]},
        {"isError": "maybe", "content": []},
        {"content": [], "_meta": "not an object"},
        {},
    ]
    refused = 0
    for version in ("2025-06-18", "2025-11-25"):
        surface = _result_surface(version)
        assert surface is not None
        for raw in cases:
            try:
                validate_server_result("tools/call", version, dict(raw))
            except ValidationError:
                refused += 1
                with pytest.raises(ValidationError):
                    surface.validate_python(dict(raw), by_name=False)
                with pytest.raises(ValidationError):
                    tool_result(dict(raw), version)
            else:
                surface.validate_python(dict(raw), by_name=False)
    assert refused >= 10  # the bad cases are refused under both versions
    with pytest.raises(ValueError):
        tool_result({"content": []}, "1999-01-01")
