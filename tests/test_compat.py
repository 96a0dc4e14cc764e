"""One test per reach-in of ``gateway.compat``: an SDK (or asyncio) upgrade that removes a
private attribute the gateway uses fails here, with ``SdkChanged`` naming it.

The peers are real: an in-process MCP ``Server`` with the SDK ``Client`` (legacy mode, so a
``ServerSession`` with its connection exists), a real ``StreamReader``, a real socket.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import socket
from typing import Any

import anyio
import pytest
from mcp import Client, types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request

from gateway import compat
from tests.conftest import ROOT

pytestmark = pytest.mark.anyio


def _server(seen: dict[str, Any]) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen["connection"] = compat.connection_of(ctx.session)
        seen["meta"] = dict(params.meta or {}) if params is not None and params.meta is not None else {}
        return types.ListToolsResult(tools=[])

    return Server("compat-test", on_list_tools=list_tools)


async def test_connection_of_a_server_session() -> None:
    seen: dict[str, Any] = {}
    async with Client(_server(seen), mode="legacy") as client:
        await client.list_tools()
    conn = seen["connection"]
    # what the gateway uses of it: pushing list_changed and the protocol era
    assert callable(conn.outbound.notify)
    assert isinstance(conn.protocol_version, str) and conn.protocol_version


async def test_stamp_requests_adds_to_every_request() -> None:
    seen: dict[str, Any] = {}

    def add(data: dict[str, Any]) -> None:
        data.setdefault("params", {}).setdefault("_meta", {})["test/stamp"] = "yes"

    async with Client(_server(seen), mode="legacy") as client:
        compat.stamp_requests(client.session, add)
        await client.list_tools()
    assert seen["meta"].get("test/stamp") == "yes"


def test_negotiate_auto_is_the_connect_time_policy() -> None:
    assert inspect.iscoroutinefunction(compat.negotiate_auto)
    assert list(inspect.signature(compat.negotiate_auto).parameters) == ["session"]


async def test_context_streams_carry_messages() -> None:
    send, receive = compat.create_context_streams[int](1)
    async with send, receive:
        await send.send(7)
        assert await receive.receive() == 7


async def test_open_http_sessions_of_a_session_manager() -> None:
    manager = StreamableHTTPSessionManager(app=_server({}))
    assert compat.open_http_sessions(manager) == []
    assert compat.http_session_counts(manager) == (0, 0)


async def test_stream_reader_head_after_an_oversized_line() -> None:
    reader = asyncio.StreamReader(limit=16)
    reader.feed_data(b'{"jsonrpc":"2.0","id":42,"method":"x"}\n')
    with pytest.raises(asyncio.LimitOverrunError):
        await reader.readuntil(b"\n")
    assert compat.stream_reader_head(reader, 24) == b'{"jsonrpc":"2.0","id":42'


def test_raw_socket_under_a_socketio() -> None:
    a, b = socket.socketpair()
    try:
        assert compat.raw_socket(socket.SocketIO(a, "rwb")) is a
        assert compat.raw_socket(b) is b
    finally:
        a.close()
        b.close()


async def test_close_http_session_of_an_unknown_id_is_nothing() -> None:
    manager = StreamableHTTPSessionManager(app=_server({}))
    assert compat.close_http_session(manager, "no-such-session") is None


async def test_close_get_stream_of_an_unknown_id_is_false() -> None:
    manager = StreamableHTTPSessionManager(app=_server({}))
    assert compat.close_get_stream(manager, "no-such-session") is False


def test_close_get_stream_names_the_attribute_the_sdk_lost() -> None:
    with pytest.raises(compat.SdkChanged, match=r"StreamableHTTPSessionManager\._server_instances"):
        compat.close_get_stream(object(), "sid")  # type: ignore[arg-type]


async def test_http_session_transport_of_an_unknown_id_is_none() -> None:
    manager = StreamableHTTPSessionManager(app=_server({}))
    assert compat.http_session_transport(manager, "no-such-session", None) is None


def _post(content_type: str) -> Request:
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", content_type.encode())]
    return Request({"type": "http", "method": "POST", "path": "/mcp", "headers": headers})


async def test_a_transport_without_an_idle_timeout_has_nothing_to_hold() -> None:
    transport = StreamableHTTPServerTransport("abc", is_json_response_enabled=True)
    async with transport.connect():
        assert transport.idle_scope is None
        assert compat.transport_hold(transport) == compat.HOLD_FREE
        await transport.terminate()


async def test_the_transport_reach_ins_of_the_http_fast_lane() -> None:
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=["127.0.0.1:*"], allowed_origins=[]
    )
    transport = StreamableHTTPServerTransport(
        "abc", is_json_response_enabled=True, security_settings=security, idle_timeout=5
    )
    assert await compat.transport_admits(transport, _post("application/json"))
    assert not await compat.transport_admits(transport, _post("text/plain"))
    assert not compat.transport_serving(transport, "1")
    async with transport.connect():
        scope = transport.idle_scope
        assert scope is not None
        assert compat.transport_hold(transport) == compat.HOLD_HELD
        assert compat.transport_hold(transport) == compat.HOLD_HELD  # two requests in flight
        assert scope.deadline == math.inf  # held open while the lane serves
        compat.transport_release(transport)
        assert scope.deadline == math.inf  # one is still in flight
        compat.transport_release(transport)
        assert scope.deadline < math.inf  # the idle countdown restarts
        scope.cancel()
        assert compat.transport_hold(transport) == compat.HOLD_REFUSED  # timed out: left to the SDK
        await transport.terminate()


def test_stdio_process_helpers_exist() -> None:
    for fn in (
        compat.executable_command,
        compat.start_stdio_process,
        compat.stop_stdio_process,
        compat.drain_stdout,
    ):
        assert inspect.iscoroutinefunction(fn)


def test_the_stdio_line_parse_is_the_sdks_without_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # gateway.upstream.stdio parses with compat.parse_stdio_line where the SDK's client uses
    # its private _parse_line: both must accept and refuse the same lines
    from mcp.client.stdio import _parse_line
    from mcp.shared.message import SessionMessage

    lines = [
        '{"jsonrpc":"2.0","method":"x"}',
        '{"jsonrpc":"2.0","id":1,"result":{}}',
        '{"jsonrpc":"2.0","id":"a","error":{"code":-1,"message":"m"}}',
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}}',
        "a banner line",
        "{not json",
        '{"jsonrpc":"1.0","method":"x"}',
        "[1, 2]",
        "",
    ]
    for line in lines:
        ours, sdks = compat.parse_stdio_line(line), _parse_line(line)
        assert type(ours) is type(sdks), line
        if isinstance(ours, SessionMessage) and isinstance(sdks, SessionMessage):
            assert ours.message == sdks.message
    caplog.clear()
    assert isinstance(compat.parse_stdio_line("a banner line"), ValueError)
    assert not caplog.records  # the SDK's logs a traceback per line; ours leaves it to the caller


async def test_process_stdin_writer_of_an_anyio_process() -> None:
    # the upstream fast lane writes a call's line straight into this writer (gateway.upstream.stdio)
    import anyio

    async with await anyio.open_process(["cat"]) as proc:
        writer = compat.process_stdin_writer(proc.stdin)
        assert isinstance(writer, asyncio.StreamWriter)
        writer.write(b"line\n")
        await writer.drain()
        assert proc.stdout is not None
        assert await proc.stdout.receive() == b"line\n"
        await proc.stdin.aclose()  # type: ignore[union-attr]
    assert compat.process_stdin_writer(object()) is None  # anyio moved it: the lane uses the writer task


async def test_process_stdout_reader_of_an_anyio_process() -> None:
    # the upstream fast lane taps responses off this reader (gateway.upstream.stdio)
    import anyio

    async with await anyio.open_process(["cat"]) as proc:
        reader = compat.process_stdout_reader(proc.stdout)
        assert isinstance(reader, asyncio.StreamReader)
        await proc.stdin.aclose()  # type: ignore[union-attr]
    assert compat.process_stdout_reader(object()) is None  # anyio moved it: the reader task reads it all


async def _waiting(reader: asyncio.StreamReader) -> asyncio.Task[bytes]:
    task = asyncio.get_running_loop().create_task(reader.readuntil(b"\n"))
    await asyncio.sleep(0)  # the consumer now waits for data (its waiter is set)
    return task


async def test_tap_lines_takes_whole_lines_until_one_is_declined() -> None:
    reader = asyncio.StreamReader(limit=64)
    taken: list[bytes] = []

    def take(line: bytes) -> bool:
        if line.startswith(b"lane"):
            taken.append(line)
            return True
        return False

    assert compat.tap_lines(reader, take, max_line=64)
    task = await _waiting(reader)
    reader.feed_data(b"lane 1\nlane 2\n")
    await asyncio.sleep(0)
    assert taken == [b"lane 1\n", b"lane 2\n"] and not task.done()  # all taken: not woken
    # a declined line and everything after it (even a lane line) reach the consumer, in order
    reader.feed_data(b"sdk\nlane 3\npart")
    assert await task == b"sdk\n"
    assert await reader.readuntil(b"\n") == b"lane 3\n"
    assert taken == [b"lane 1\n", b"lane 2\n"]
    # with an unfinished line buffered, nothing is tapped (the consumer's search offset holds)
    task = await _waiting(reader)
    reader.feed_data(b"ial\nlane 4\n")
    assert await task == b"partial\n"
    assert await reader.readuntil(b"\n") == b"lane 4\n"
    assert taken == [b"lane 1\n", b"lane 2\n"]


async def test_tap_lines_leaves_oversized_lines_and_failures_to_the_consumer() -> None:
    reader = asyncio.StreamReader(limit=8)
    calls: list[bytes] = []

    def take(line: bytes) -> bool:
        calls.append(line)
        raise RuntimeError("boom")

    compat.tap_lines(reader, take, max_line=8)
    task = await _waiting(reader)
    reader.feed_data(b"0123456789\n")  # the newline past the limit: never offered
    with pytest.raises(asyncio.LimitOverrunError):
        await task
    assert calls == []
    await reader.readexactly(11)
    task = await _waiting(reader)
    reader.feed_data(b"short\n")  # take raises: the line is the consumer's
    assert await task == b"short\n"
    assert calls == [b"short\n"]


async def test_tap_lines_asks_the_consumer_whether_it_is_idle() -> None:
    reader = asyncio.StreamReader()
    busy = [True]
    taken: list[bytes] = []

    def take(line: bytes) -> bool:
        taken.append(line)
        return True

    compat.tap_lines(reader, take, max_line=100, idle=lambda: not busy[0])
    task = await _waiting(reader)
    reader.feed_data(b"a\n")  # the consumer holds an unfinished line of its own: not tapped
    assert await task == b"a\n" and taken == []
    busy[0] = False
    task = await _waiting(reader)
    reader.feed_data(b"b\n")
    assert taken == [b"b\n"] and not task.done()
    task.cancel()


async def test_tap_process_stdout_takes_lines_in_the_pipe_callback() -> None:
    # the upstream fast lane settles a call where the response is read (gateway.upstream.stdio)
    import anyio

    taken: list[bytes] = []
    async with await anyio.open_process(["cat"]) as proc:
        assert proc.stdin is not None and proc.stdout is not None

        def take(line: bytes) -> bool:
            if not line.startswith(b"lane"):
                return False
            taken.append(line)
            return True

        assert compat.tap_process_stdout(proc, take, max_line=100)
        got = asyncio.get_running_loop().create_task(proc.stdout.receive())
        await proc.stdin.send(b"lane 1\n")
        with anyio.fail_after(5):
            while not taken:
                await anyio.sleep(0.01)
        assert taken == [b"lane 1\n"] and not got.done()  # taken before the stream saw it
        await proc.stdin.send(b"other\nlane 2\n")  # declined: it and what follows reach the stream
        data = await got
        while not data.endswith(b"lane 2\n"):
            data += await proc.stdout.receive()
        assert data == b"other\nlane 2\n" and taken == [b"lane 1\n"]
        await proc.stdin.aclose()
    # nothing to tap: the reader task reads it all
    assert not compat.tap_process_stdout(object(), take, max_line=100)


async def test_receiver_waits_idle_agrees_with_the_statistics() -> None:
    import anyio

    send, receive = anyio.create_memory_object_stream[int](1)

    def by_statistics() -> bool:
        st = receive.statistics()
        return st.tasks_waiting_receive > 0 and st.current_buffer_used == 0 and st.tasks_waiting_send == 0

    assert compat.receiver_waits_idle(receive) is by_statistics() is False  # nobody waits
    got: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _take(receive, got))
        await anyio.wait_all_tasks_blocked()
        assert compat.receiver_waits_idle(receive) is by_statistics() is True  # waits, nothing held
        send.send_nowait(1)  # handed to the waiting task, not yet taken
        assert compat.receiver_waits_idle(receive) is by_statistics()
    send.send_nowait(2)  # buffered, nobody waits
    assert compat.receiver_waits_idle(receive) is by_statistics() is False


async def _take(receive: Any, got: list[int]) -> None:
    got.append(await receive.receive())


def test_client_result_fixups_behave_as_the_sdk_client_uses_them() -> None:
    # the fast lane of tools/call (gateway.upstream.fastcall) runs these on every raw result
    raw = {"content": [], "ttlMs": -5}
    compat.clamp_inbound_ttl(raw)
    assert raw["ttlMs"] == 0
    kept = {"content": [], "ttlMs": 3}
    compat.clamp_inbound_ttl(kept)
    assert kept["ttlMs"] == 3
    # 2026-07-28's input-required fields are outside a 2025-11-25 tools/call result, not the newest's
    assert {"resultType", "inputRequests"} <= compat.later_revision_fields("tools/call", "2025-11-25")
    assert compat.later_revision_fields("tools/call", "2026-07-28") == frozenset()


def test_the_screened_http_transport_overrides_what_the_sdk_parses_in() -> None:
    """``ScreenedTransport`` overrides the two methods of the SDK's client transport that parse
    an upstream's message, and ``screened_http_client`` starts its tasks as
    ``streamable_http_client`` does (its behaviour: tests/upstream/test_upstream_text.py)."""
    from mcp.client.streamable_http import StreamableHTTPTransport

    from gateway.compat.httpclient import ScreenedTransport

    for name in ("_handle_sse_event", "_handle_json_response", "_consume_modern_cancellation"):
        sdk = inspect.signature(getattr(StreamableHTTPTransport, name))
        assert list(inspect.signature(getattr(ScreenedTransport, name)).parameters) == list(sdk.parameters)
    started = {
        "post_writer": [
            "self",
            "client",
            "write_stream_reader",
            "read_stream_writer",
            "write_stream",
            "start_get_stream",
            "tg",
        ],
        "handle_get_stream": ["self", "client", "read_stream_writer"],
        "terminate_session": ["self", "client"],
    }
    for name, params in started.items():
        assert list(inspect.signature(getattr(StreamableHTTPTransport, name)).parameters) == params


async def test_the_screened_transport_finds_the_posts_it_closes() -> None:
    """An abandoned 2025-11-25 request's POST is closed through the SDK's record of the POSTs in
    flight (its behaviour: tests/upstream/test_hostile_http.py): a dict of entries with a cancel
    scope, filled before the POST task runs, and the SDK's parse of a cancel frame's id."""
    from mcp.client.streamable_http import _InFlightPost
    from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params

    from gateway.compat.httpclient import ScreenedTransport

    transport = ScreenedTransport("http://127.0.0.1:9/mcp", max_sse_event_size=None, seen=print, reply=None)  # type: ignore[arg-type]
    assert transport._in_flight_posts == {}
    assert isinstance(_InFlightPost(scope=anyio.CancelScope(), modern=False).scope, anyio.CancelScope)
    assert cancelled_request_id_from_params({"requestId": 7}) == 7


def test_a_missing_attribute_is_named() -> None:
    with pytest.raises(compat.SdkChanged, match=r"StreamReader\._buffer"):
        compat.stream_reader_head(object(), 1)  # type: ignore[arg-type]


# Private names of the libraries that only the gateway/compat package may use.
_PRIVATE = re.compile(
    r"(?<!self)\.(?:_connection|_stamp|_server_instances|_session_owners|_buffer"
    r"|_security|_request_streams|_requests_in_flight|_idle_timeout|_stream|_waiter|_state|_event_store)\b"
    r"|mcp\.shared\._context_streams|mcp\.shared\._compat|mcp\.client\._probe|\b_handle_(?:sse_event|json_response)\b|\b_sock\b|\bup\._session\b|\b_discard_session\b"
    r"|\b_(?:create_platform_compatible_process|drain_stdout|get_executable_command|parse_line|stop_server_process|clamp_inbound_ttl|later_revision_fields)\b"
    r"|[\"'](?:_connection|_stamp|_server_instances|_session_owners|_buffer|_sock|_stream)[\"']"  # getattr(x, "_name")
)


def test_no_other_module_reaches_into_library_internals() -> None:
    offenders = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        if path.parent == ROOT / "gateway" / "compat":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE.search(code):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


async def test_the_request_stream_reach_ins_of_the_sse_lane() -> None:
    """Register a request's stream, mint its priming event, route a response to it through the
    session's router (stored in the event store first), unregister it."""
    from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher

    from gateway.server.resume import STREAM_OWNER, BoundedEventStore, StreamOwner

    transport = StreamableHTTPServerTransport("abc", event_store=BoundedEventStore(), retry_interval=1000)
    async with transport.connect():
        assert await compat.transport_priming_event(transport, "5", "2025-06-18") is None  # too old
        priming = await compat.transport_priming_event(transport, "5", "2025-11-25")
        assert priming is not None and priming["retry"] == 1000 and priming["id"]
        pair = compat.transport_open_stream(transport, "5")
        assert compat.transport_holds_stream(transport, "5", pair)
        assert compat.transport_serving(transport, "5")  # an id in flight, for the SDK's path too
        await compat.transport_write(transport, types.JSONRPCResponse(jsonrpc="2.0", id=5, result={}))
        event = await pair[1].receive()
        assert event.message.id == 5 and event.event_id and event.event_id != priming["id"]
        assert compat.transport_close_stream(transport, "5", pair)
        assert not compat.transport_holds_stream(transport, "5", pair)
        assert not compat.transport_close_stream(transport, "5", pair)  # not registered any more
        await transport.terminate()
    # stored under the request's stream as the router stores it: replayed after the priming event
    store = BoundedEventStore()
    stored = StreamableHTTPServerTransport("def", event_store=store, retry_interval=1000)
    response = types.JSONRPCResponse(jsonrpc="2.0", id=6, result={"content": []})
    token = STREAM_OWNER.set(StreamOwner("key:alice", "def"))
    try:
        primed = await compat.transport_priming_event(stored, "6", "2025-11-25")
        assert primed is not None
        eid = await compat.transport_store_event(stored, "6", response)
        assert eid is not None and eid != primed["id"]
        replayed: list[Any] = []

        async def collect(event: Any) -> None:
            replayed.append(event)

        assert await store.replay_events_after(primed["id"], collect) is None  # answered: the stream is done
        assert [(e.event_id, e.message) for e in replayed] == [(eid, response)]
    finally:
        STREAM_OWNER.reset(token)
    # no event store: nothing stored, no event id (the SDK's router sends such events without one)
    assert await compat.transport_store_event(StreamableHTTPServerTransport("ghi"), "6", response) is None
    # the dispatcher's keyword that puts a message on a request's own stream
    for method in (JSONRPCDispatcher.notify, JSONRPCDispatcher.send_raw_request):
        assert "_related_request_id" in inspect.signature(method).parameters


def test_unsampled_span_is_the_span_start_span_drops() -> None:
    """``unsampled_span`` makes what an SDK tracer whose sampler drops the span makes: the
    parent's trace id, trace state and random-trace-id flag (or a fresh valid trace), a new
    span id, not sampled, not recording; None for a tracer that would do more."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    tracer = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False).get_tracer("t")
    remote = SpanContext(
        0xABC, 0x99, is_remote=True, trace_flags=TraceFlags(0x02), trace_state=TraceState([("k", "v")])
    )
    for parent in (remote, SpanContext(0, 0, is_remote=False)):
        ours = compat.unsampled_span(tracer, parent)
        theirs = tracer.start_span("x", context=trace.set_span_in_context(NonRecordingSpan(parent)))
        assert type(ours) is type(theirs) and not ours.is_recording()
        a, b = ours.get_span_context(), theirs.get_span_context()
        assert a.is_valid and not a.is_remote and a.span_id != b.span_id
        assert (a.trace_flags, a.trace_state, a.is_remote) == (b.trace_flags, b.trace_state, b.is_remote)
        assert (a.trace_id == b.trace_id) is parent.is_valid
    assert compat.unsampled_span(trace.NoOpTracer(), remote) is None


def test_unsampled_span_steps_aside_for_a_tracer_that_counts_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext

    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    counting = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    assert compat.unsampled_span(counting, SpanContext(0, 0, is_remote=False)) is None


def test_w3c_default_propagators_is_only_the_default_pair() -> None:
    from opentelemetry import propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    assert compat.w3c_default_propagators(propagate.get_global_textmap())
    tc, bg = TraceContextTextMapPropagator(), W3CBaggagePropagator()
    assert compat.w3c_default_propagators(CompositePropagator([tc, bg]))
    assert not compat.w3c_default_propagators(CompositePropagator([bg, tc]))
    assert not compat.w3c_default_propagators(CompositePropagator([tc]))
    assert not compat.w3c_default_propagators(tc)


def test_context_var_is_the_api_current_context() -> None:
    """What ``context_var`` sets, the OpenTelemetry API reads as current, and back."""
    from opentelemetry import context

    var = compat.context_var()
    assert var is not None
    mine = context.set_value("k", "v")
    token = var.set(mine)
    try:
        assert context.get_current() is mine
    finally:
        var.reset(token)
    attached = context.attach(mine)
    try:
        assert var.get() is mine
    finally:
        context.detach(attached)
    assert var.get() is context.get_current()


def test_unsampled_spans_asks_the_configurator_on_every_span() -> None:
    """A tracer the configurator disables after the maker was made gets no span from it (the
    SDK's start_span would make an invalid one); enabled again, it does."""
    from opentelemetry.sdk.trace import TracerProvider, _TracerConfig
    from opentelemetry.trace import SpanContext

    provider = TracerProvider(shutdown_on_exit=False)
    tracer = provider.get_tracer("t")
    make = compat.unsampled_spans(tracer)
    root = SpanContext(0, 0, is_remote=False)
    assert make is not None and make(root).get_span_context().is_valid
    provider._set_tracer_configurator(tracer_configurator=lambda scope: _TracerConfig(is_enabled=False))
    assert make(root) is None and compat.unsampled_span(tracer, root) is None
    provider._set_tracer_configurator(tracer_configurator=lambda scope: _TracerConfig(is_enabled=True))
    assert make(root) is not None


async def test_the_asyncio_cancel_scope_is_the_one_anyio_makes_there() -> None:
    """``asyncio_cancel_scope`` makes the object ``anyio.CancelScope()`` makes on asyncio (the
    same class), which cancels its body; ``asyncio_time`` is the clock its deadline reads."""
    import anyio

    made = compat.asyncio_cancel_scope()
    assert type(made) is type(anyio.CancelScope())
    with made:
        made.cancel()
        await anyio.sleep(5)
    assert made.cancelled_caught
    before = anyio.current_time()
    now = compat.asyncio_time()
    assert before <= now <= anyio.current_time()
    with compat.asyncio_cancel_scope() as timed:
        timed.deadline = compat.asyncio_time() + 0.02
        await anyio.sleep(5)
    assert timed.cancelled_caught


def test_every_name_compat_exports_is_loaded_from_its_part() -> None:
    """The names are kept in three lists (the TYPE_CHECKING imports, ``_PARTS``, ``__all__``):
    one missing from ``_PARTS`` passes ruff and mypy and fails only at run time."""
    import importlib

    import gateway.compat as compat

    assert set(compat.__all__) == set(compat._PARTS)
    for name, part in compat._PARTS.items():
        assert getattr(compat, name) is getattr(importlib.import_module(part), name), name
