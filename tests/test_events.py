"""The one catalogue of event types (``gateway.events.Event``): every emit uses it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.assemble import make_gateway
from gateway.config import load_config
from gateway.context import CallContext, Principal
from gateway.events import EVENT_TYPES, Event
from gateway.metrics import GatewayMetrics
from tests.conftest import ROOT, everything_stdio_config, require_peers

EMITTERS = {"emit", "record", "append", "audit"}  # EventSink.emit, AuditLog.record / append, memory audit
EVENT_SHAPE = re.compile(r"^[a-z_]+\.[a-z_.]+$")


def _event_arguments() -> list[tuple[str, ast.expr]]:
    found = []
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in EMITTERS
                and node.args
            ):
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.args[0]))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "record_acted"
            ):
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.args[1]))  # (sink, event, ...)
    return found


def test_every_emit_names_a_catalogued_event() -> None:
    literal, unknown, named = [], [], 0
    for where, arg in _event_arguments():
        is_event_attr = (
            isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "Event"
        )
        if is_event_attr:
            assert isinstance(arg, ast.Attribute)
            named += 1
            if arg.attr not in Event.__members__:
                unknown.append(where)
        elif isinstance(arg, ast.Constant) and isinstance(arg.value, str) and EVENT_SHAPE.match(arg.value):
            literal.append(f"{where}: {arg.value!r}")  # an event type spelled out instead of Event.X
    assert literal == [] and unknown == []
    assert named >= 12  # the scan sees the emitters (a vacuous pass would see none)


def test_event_values_are_unique_and_dotted() -> None:
    assert len(EVENT_TYPES) == len(Event)
    assert all("." in e.value for e in Event)


@pytest.mark.anyio
async def test_a_running_gateway_emits_only_catalogued_types(tmp_path: Path) -> None:
    """Real upstream (server-everything), real audit log; /metrics counts every event by type."""
    require_peers()
    cfg = load_config(
        everything_stdio_config(tmp_path),
        {},
    )
    metrics = GatewayMetrics()
    gw = make_gateway(cfg, metrics=metrics)
    async with gw.running():
        call = CallContext(
            principal=Principal("tester"),
            kind="tools/call",
            target="everything__echo",
            arguments={"message": "hi"},
        )
        await gw.call(call)
        assert gw.audit is not None
        gw.audit.flush()
    seen = {
        s.labels["event_type"]
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
        if family.name == "symbi_audit_events"
    }
    assert {Event.CONFIG_LOADED, Event.GATEWAY_START, Event.UPSTREAM_UP, Event.GATEWAY_STOP} <= seen
    assert seen <= EVENT_TYPES


def test_the_logging_sink_writes_each_event_at_info_and_nothing_below(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.events import LoggingSink

    sink = LoggingSink()
    details = {"agent": "a1", "to": "Running"}
    with caplog.at_level("WARNING", logger="symbi.events"):
        sink.emit(Event.AGENT_STATE, details)
    assert caplog.records == []
    with caplog.at_level("INFO", logger="symbi.events"):
        sink.emit(Event.AGENT_STATE, details)
        details["to"] = "Ready"  # the line holds a copy taken when it was emitted
    (record,) = caplog.records
    assert record.args == (Event.AGENT_STATE, {"agent": "a1", "to": "Running"})
    assert record.fields == {"event": "agent.state"}  # type: ignore[attr-defined]
