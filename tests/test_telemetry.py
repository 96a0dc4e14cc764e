"""OpenTelemetry: one trace per request, front -> each step -> the upstream and back; its id
in the audit record and the log lines; OTLP/HTTP export to a collector when configured.

The collector is a tiny local OTLP/HTTP receiver on 127.0.0.1 (it decodes the real protobuf
payload the SDK exporter sends); the in-process test reads spans from the SDK's in-memory
exporter.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway import telemetry
from gateway.config import build_config
from gateway.errors import ConfigError
from tests.conftest import ROOT, SYMBI, symbi_env, write_config
from tests.local_http import serving
from tests.server._clients import stdio_session

MUTABLE = ROOT / "tests/peers/mutable_server.py"


class Collector:
    """An OTLP/HTTP traces receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, int]] = []  # (trace id hex, span name, kind)
        self.resources: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    outer.resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
                    for ss in rs.scope_spans:
                        outer.spans += [(s.trace_id.hex(), s.name, s.kind) for s in ss.spans]
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    with serving(c.server):
        yield c


def _mutable_cfg(tmp_path: Path, extra: str = "") -> Path:
    return write_config(
        tmp_path,
        f"""
        [gateway]
        data_dir = "{tmp_path / "data"}"
        log_format = "json"
        {extra}
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        """,
    )


def _audited_trace_ids(cfg: Path) -> list[str | None]:
    q = subprocess.run(
        [str(SYMBI), "audit", "query", "--config", str(cfg), "--type", "tool.call", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )
    assert q.returncode == 0, q.stderr
    return [json.loads(line)["details"].get("trace_id") for line in q.stdout.splitlines()]


@pytest.mark.anyio
async def test_otlp_export_to_a_local_collector_carries_the_audited_trace(
    tmp_path: Path, collector: Collector
) -> None:
    cfg = _mutable_cfg(
        tmp_path, f'[telemetry]\notlp_endpoint = "{collector.url}"\nservice_name = "symbi-test"\n'
    )
    async with stdio_session(cfg) as s:
        r = await s.call_tool("mut__echo", {"message": "traced"})
        assert not r.is_error, r
    # the gateway flushes its exporter when it stops
    deadline = time.monotonic() + 20
    while (
        not any(n == "tools/call mut__echo" for _, n, _k in collector.spans) and time.monotonic() < deadline
    ):
        await anyio.sleep(0.1)
    [audited] = _audited_trace_ids(cfg)
    assert audited and len(audited) == 32
    names = {n for t, n, _k in collector.spans if t == audited}
    assert "tools/call mut__echo" in names  # the front's SERVER span (MCP semantic conventions)
    assert "MCP send tools/call echo" in names  # the hop to the upstream (CLIENT span)
    assert {"symbi.step AuditStep", "symbi.step PolicyStep"} <= names
    assert {"service.name": "symbi-test"}.items() <= collector.resources[0].items()


def test_otlp_endpoint_must_be_http() -> None:
    with pytest.raises(ConfigError):
        build_config({"telemetry": {"otlp_endpoint": "grpc://127.0.0.1:4317"}})
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces", "OTEL_SERVICE_NAME": "x"}
    cfg = build_config({}, environ=env)
    assert (
        cfg.telemetry.otlp_endpoint == env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        and cfg.telemetry.service_name == "x"
    )


@pytest.mark.anyio
@pytest.mark.npm
async def test_one_trace_from_the_client_through_every_step_to_the_upstream(tmp_path: Path) -> None:
    """In process: the SDK client, the HTTP front, the chain and the upstream session all
    report to the gateway's provider; the in-memory exporter sees one trace."""
    from tests.server.http.conftest import bearer, everything_config, make_keys, run_server

    memory = InMemorySpanExporter()
    proc = SimpleSpanProcessor(memory)
    telemetry.install().add(proc)
    try:
        cfg = everything_config(tmp_path)
        keys = make_keys(cfg)
        with run_server(cfg) as run:
            async with (
                httpx2.AsyncClient(headers=bearer(keys.admin)) as hc,
                streamable_http_client(run.mcp, http_client=hc) as (r, w),
                ClientSession(r, w) as s,
            ):
                await s.initialize()
                with trace.get_tracer("test").start_as_current_span("agent turn") as root:
                    res = await s.call_tool("everything__echo", {"message": "hi"})
                assert not res.is_error
            gw = run.state.gateway
            assert gw is not None and gw.audit is not None
            gw.audit.flush()
            records = [e for e in gw.audit.recent(50) if e["type"] == "tool.call"]
    finally:
        telemetry.install().remove(proc)
    trace_id = format(root.get_span_context().trace_id, "032x")
    spans = [s for s in memory.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    by_name = {s.name: s for s in spans}
    server = by_name["tools/call everything__echo"]
    assert server.kind is trace.SpanKind.SERVER
    assert server.attributes is not None and server.attributes["gen_ai.tool.name"] == "everything__echo"
    assert server.attributes["gen_ai.operation.name"] == "execute_tool"
    steps = [s for s in spans if s.name.startswith("symbi.step ")]
    assert len(steps) >= 3 and all(s.parent is not None for s in steps)
    upstream = by_name["MCP send tools/call echo"]
    assert upstream.kind is trace.SpanKind.CLIENT
    # nesting: the upstream hop sits under the innermost step, the steps under the server span
    ids = {s.context.span_id: s for s in spans}
    chain = [upstream]
    while chain[-1].parent is not None and chain[-1].parent.span_id in ids:
        chain.append(ids[chain[-1].parent.span_id])
    assert server in chain and chain[-1].name == "agent turn"
    assert any(r["details"].get("trace_id") == trace_id for r in records)


def test_log_lines_in_a_request_carry_its_trace_id() -> None:
    from gateway.logs import TraceIds, _JsonFormatter, _TextFormatter

    telemetry.install()
    out = io.StringIO()
    tids = []
    for fmt in (_JsonFormatter(), _TextFormatter("%(message)s")):
        handler = logging.StreamHandler(out)
        handler.addFilter(TraceIds())
        handler.setFormatter(fmt)
        log = logging.getLogger(f"symbi.test.{type(fmt).__name__}")
        log.addHandler(handler)
        log.propagate = False
        try:
            with telemetry.tracer().start_as_current_span("req") as span:
                log.warning("inside")
            tids.append(format(span.get_span_context().trace_id, "032x"))
            log.warning("outside")
        finally:
            log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0])["trace_id"] == tids[0] and "trace_id" not in json.loads(lines[1])
    assert lines[2] == f"inside trace={tids[1]}" and lines[3] == "outside"


def test_per_step_spans_only_while_some_processor_takes_spans() -> None:
    """Without an exporter the chain makes no per-step span and the request's span is not
    recorded (it stays current, so its trace id still reaches the audit record); with one,
    every step has its span."""
    from gateway.chain import build_chain
    from gateway.context import CallContext, Principal

    seen: list[str] = []
    traces: list[tuple[int, int]] = []  # (trace id the step saw, the request span's)

    class Look:
        async def __call__(self, call: CallContext, call_next: object) -> str:
            current = trace.get_current_span()
            seen.append(getattr(current, "name", ""))
            traces.append((current.get_span_context().trace_id, 0))
            return "ok"

    async def endpoint(call: CallContext) -> str:
        return "ok"

    handler = build_chain([Look()], endpoint)

    def one_call() -> None:
        call = CallContext(principal=Principal(id="p"), kind="tools/call", target="t", arguments={})
        with telemetry.tracer().start_as_current_span("request") as request:
            anyio.run(handler, call)
        traces[-1] = (traces[-1][0], request.get_span_context().trace_id)

    telemetry.install()
    assert not telemetry.exporting()
    one_call()
    # not exporting: the request span is not recorded (no name), but its trace id is current
    assert seen == [""] and traces[0][0] == traces[0][1] != 0
    memory = InMemorySpanExporter()
    proc = SimpleSpanProcessor(memory)
    telemetry.install().add(proc)
    try:
        assert telemetry.exporting()
        one_call()
    finally:
        telemetry.install().remove(proc)
    assert seen == ["", "symbi.step Look"]
    assert [s.name for s in memory.get_finished_spans()] == ["symbi.step Look", "request"]


def test_request_spans_are_recorded_only_while_exporting_or_when_the_caller_samples() -> None:
    """The SDK's request spans cost a recorded span per call; with nothing taking spans they are
    dropped but keep valid ids (the audit record's trace id). A caller's sampled trace is still
    recorded (its flag is kept for the upstream), and everything is while a processor listens."""
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    telemetry.install()
    assert not telemetry.exporting()
    with telemetry.tracer().start_as_current_span("root") as root:
        assert not root.is_recording()
        assert root.get_span_context().is_valid and not root.get_span_context().trace_flags.sampled
        assert telemetry.current_ids() is not None
    remote = SpanContext(
        trace_id=0x1234, span_id=0x99, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    with telemetry.tracer().start_as_current_span(
        "from a sampled caller", context=set_span_in_context(NonRecordingSpan(remote))
    ) as child:
        assert child.is_recording() and child.get_span_context().trace_id == 0x1234
        assert child.get_span_context().trace_flags.sampled
    memory = InMemorySpanExporter()
    proc = SimpleSpanProcessor(memory)
    telemetry.install().add(proc)
    try:
        with telemetry.tracer().start_as_current_span("exported") as span:
            assert span.is_recording() and span.get_span_context().trace_flags.sampled
    finally:
        telemetry.install().remove(proc)
    assert [s.name for s in memory.get_finished_spans()] == ["exported"]


def test_only_the_gateways_provider_counts_as_sampling_while_exporting() -> None:
    """The fast lanes' light SERVER span is used only under the gateway's own sampler: an
    embedder's SDK provider (which may record every span) or a non-SDK one gets the SDK's span."""
    from opentelemetry.sdk.trace import TracerProvider

    telemetry.install()
    assert telemetry.samples_while_exporting(trace.get_tracer_provider())
    assert not telemetry.samples_while_exporting(TracerProvider())
    assert not telemetry.samples_while_exporting(trace.NoOpTracerProvider())


def test_inject_trace_writes_what_the_global_propagator_writes() -> None:
    """``inject_trace`` (the upstream request's ``_meta``) is ``propagate.inject``: with and
    without a trace state, with baggage, outside any span, and under another propagator."""
    from opentelemetry import baggage, context, propagate
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    def both() -> tuple[dict[str, str], dict[str, str]]:
        ours: dict[str, str] = {"progressToken": "kept"}
        theirs: dict[str, str] = {"progressToken": "kept"}
        telemetry.inject_trace(ours)
        propagate.inject(theirs)
        return ours, theirs

    spans = [
        SpanContext(0xABC, 0x99, is_remote=False, trace_flags=TraceFlags(0x01)),
        SpanContext(0xABC, 0x98, is_remote=False, trace_state=TraceState([("k", "v"), ("x", "y")])),
    ]
    ours, theirs = both()
    assert ours == theirs == {"progressToken": "kept"}  # no span: nothing written
    for sc in spans:
        token = context.attach(trace.set_span_in_context(NonRecordingSpan(sc)))
        try:
            ours, theirs = both()
            assert ours == theirs and ours["traceparent"].endswith(f"-{sc.trace_flags:02x}")
            with_baggage = context.attach(baggage.set_baggage("who", "me"))
            try:
                ours, theirs = both()
                assert ours == theirs and "baggage" in ours
            finally:
                context.detach(with_baggage)
            default = propagate.get_global_textmap()
            propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator()]))
            try:
                ours, theirs = both()
                assert ours == theirs and "traceparent" in ours
            finally:
                propagate.set_global_textmap(default)
        finally:
            context.detach(token)
    assert "tracestate" in ours


def test_the_current_span_is_read_once_per_context() -> None:
    """``current_ids`` / ``current_span_recorded`` follow the current context: a new span (a
    new context) is seen at once, and leaving it gives the outer one's answers back."""
    telemetry.install()
    assert telemetry.current_ids() is None and not telemetry.current_span_recorded()
    memory = InMemorySpanExporter()
    proc = SimpleSpanProcessor(memory)
    with telemetry.tracer().start_as_current_span("quiet") as quiet:
        assert not telemetry.current_span_recorded()
        assert telemetry.current_ids() == (
            format(quiet.get_span_context().trace_id, "032x"),
            format(quiet.get_span_context().span_id, "016x"),
        )
        telemetry.install().add(proc)
        try:
            with telemetry.tracer().start_as_current_span("recorded") as loud:
                assert telemetry.current_span_recorded()
                assert telemetry.current_ids() == (
                    format(loud.get_span_context().trace_id, "032x"),
                    format(loud.get_span_context().span_id, "016x"),
                )
        finally:
            telemetry.install().remove(proc)
        assert not telemetry.current_span_recorded()
        ids = telemetry.current_ids()
        assert ids is not None and ids[1] == format(quiet.get_span_context().span_id, "016x")
    assert telemetry.current_ids() is None


@pytest.mark.parametrize("with_baggage", [False, True])
def test_a_span_entered_unrecorded_is_known_as_a_fresh_look_finds_it(with_baggage: bool) -> None:
    """``enter_unrecorded`` notes what the new context says (ids, baggage, not recording) for
    the log lines, the audit record and the traceparent: the same as looking afresh; ``leave``
    gives the ambient context back (its span and baggage)."""
    from opentelemetry import baggage, context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    telemetry.install()
    outer = context.attach(baggage.set_baggage("k", "v")) if with_baggage else None
    try:
        ambient = context.get_current()
        span = NonRecordingSpan(SpanContext(0xABC, 0x99, is_remote=False, trace_flags=TraceFlags(0)))
        entered = telemetry.enter_unrecorded(span)
        try:
            current = context.get_current()
            assert trace.get_current_span() is span and baggage.get_all() == baggage.get_all(ambient)
            noted, fresh = telemetry._current(), telemetry._Current(current)
            assert noted.context is current
            assert (noted.ids, noted.baggage, noted.recording, noted.span) == (
                fresh.ids,
                fresh.baggage,
                fresh.recording,
                fresh.span,
            )
            assert (
                noted.ids == (format(0xABC, "032x"), format(0x99, "016x")) and noted.baggage is with_baggage
            )
        finally:
            telemetry.leave(entered)
        assert (
            context.get_current() is ambient
            and telemetry.current_span_context() == trace.INVALID_SPAN_CONTEXT
        )
    finally:
        if outer is not None:
            context.detach(outer)


def test_leave_logs_a_token_of_another_context_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """As ``opentelemetry.context.detach``: a token that cannot be reset here is logged, not raised."""
    import contextvars

    from opentelemetry.trace import NonRecordingSpan, SpanContext

    entered = contextvars.copy_context().run(
        telemetry.enter_unrecorded, NonRecordingSpan(SpanContext(1, 1, is_remote=False))
    )
    with caplog.at_level(logging.ERROR, logger="symbi.telemetry"):
        telemetry.leave(entered)
    assert any(r.exc_info for r in caplog.records)


def test_a_callers_long_text_is_cut_in_span_names_and_attributes() -> None:
    """Attack (on the trace pipeline): the SDK names a request's span after the tool name the
    caller sent (up to mcp.max_message_bytes) and puts it in an attribute; a 3 MB name went
    whole to every exporter. Names are cut to SPAN_NAME_CHARS, attributes to SPAN_ATTRIBUTE_CHARS."""
    memory = InMemorySpanExporter()
    proc = SimpleSpanProcessor(memory)
    telemetry.install().add(proc)
    try:
        provider = trace.get_tracer_provider()
        assert telemetry.samples_while_exporting(provider)  # the gateway's own provider
        long = "x" * 100_000
        with provider.get_tracer("test").start_as_current_span(f"tools/call {long}") as span:
            span.set_attribute("gen_ai.tool.name", long)
    finally:
        telemetry.install().remove(proc)
    [done] = [s for s in memory.get_finished_spans() if s.name.startswith("tools/call x")]
    assert len(done.name) == telemetry.SPAN_NAME_CHARS + 3
    assert done.attributes is not None
    assert len(str(done.attributes["gen_ai.tool.name"])) == telemetry.SPAN_ATTRIBUTE_CHARS
