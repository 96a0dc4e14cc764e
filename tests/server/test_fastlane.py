"""gateway.server.fastlane in process: the lanes' SERVER span and the stdio lane's tasks.

The SERVER span (``gateway.server.lanespan.server_span``): while nothing records
spans it is the SDK's span without its context-manager layers (same tracer, same ids, the
caller's unsampled trace kept); a sampled caller or an exporter gets the SDK middleware's own
recorded span. The request context is a stand-in with the fields the middleware reads (a real
``ServerRequestContext`` needs a live session; the middleware reads only these)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import orjson
import pytest
from mcp import Client, types
from mcp.server import Server
from mcp.shared.message import SessionMessage
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import telemetry
from gateway.compat import is_sdk_span_middleware
from gateway.server.fastlane import LaneDispatch, StdioLane
from gateway.server.lanespan import server_span

pytestmark = pytest.mark.anyio
TRACE = "0af7651916cd43dd8448eb211c80319c"


def _ctx(meta: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(
        meta=meta,
        params={"name": "up__echo", "arguments": {}},
        method="tools/call",
        request_id=7,
        protocol_version="2025-11-25",
    )


async def _seen(meta: dict[str, Any] | None = None) -> tuple[trace.SpanContext, bool]:
    """The span current inside the call: its ids, and whether it was being recorded."""
    sdk = next(m for m in Server("t").middleware if is_sdk_span_middleware(m))
    seen: list[trace.Span] = []
    recording: list[bool] = []

    async def inner(ctx: Any) -> dict[str, Any]:
        seen.append(trace.get_current_span())
        recording.append(seen[0].is_recording())
        return {"content": []}

    assert await server_span(sdk, _ctx(meta), inner) == {"content": []}
    assert trace.get_current_span() is not seen[0]  # no longer current after the call
    return seen[0].get_span_context(), recording[0]


async def test_unrecorded_span_has_fresh_ids_or_the_callers_unsampled_trace() -> None:
    telemetry.install()
    assert not telemetry.exporting()
    (a, a_rec), (b, b_rec) = await _seen(), await _seen()
    assert not a_rec and not b_rec and a.is_valid and b.is_valid
    assert a.trace_id != b.trace_id
    parented, recorded = await _seen({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"})
    assert format(parented.trace_id, "032x") == TRACE and not recorded
    assert parented.span_id != 0x00F067AA0BA902B7  # a span of its own under the caller's


async def test_sampled_caller_and_exporter_get_the_sdk_span() -> None:
    telemetry.install()
    sampled, recorded = await _seen({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert recorded and format(sampled.trace_id, "032x") == TRACE
    memory = InMemorySpanExporter()
    proc = SimpleSpanProcessor(memory)
    telemetry.install().add(proc)
    try:
        _, recorded = await _seen()
    finally:
        telemetry.install().remove(proc)
    assert recorded
    (done,) = memory.get_finished_spans()
    assert done.name == "tools/call up__echo" and done.kind is trace.SpanKind.SERVER
    assert done.attributes is not None and done.attributes["gen_ai.tool.name"] == "up__echo"


async def test_lane_calls_end_with_the_transport_task_group() -> None:
    """Lane calls run as plain asyncio tasks: when the transport's task group is cancelled, a
    call still in flight is cancelled (its handler sees it) and awaited, nothing is written.
    A real SDK server and in-memory client: the lane learns the connection from initialize."""
    entered = anyio.Event()
    cancelled: list[bool] = []

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        entered.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise
        return types.CallToolResult(content=[])

    server: Server[Any] = Server("t", on_call_tool=call_tool)
    lane = StdioLane(server)
    server.middleware.append(lane.capture)
    written: list[Any] = []

    async def write(msg: bytes | SessionMessage, dctx: LaneDispatch) -> None:
        written.append(msg)

    async with Client(server, mode="legacy"):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                lane.attach(tg, write)
                call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "slow"}}
                assert lane.offer(orjson.dumps(call))
                await entered.wait()
                assert lane.in_flight == 1
                tg.cancel_scope.cancel()
    assert cancelled == [True] and lane.in_flight == 0 and written == []
