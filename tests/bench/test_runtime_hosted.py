"""bench/_runtime_hosted.py's reader of the audit log: per hosted run, registered -> Ready and
registered -> the run's first tool call, other agents' events and session agents left out."""

from __future__ import annotations

from typing import Any

import pytest

from bench._runtime_hosted import _start_times

MS = 1_000_000  # ns


def _ev(kind: str, agent: str, ts: int = 0, **details: Any) -> dict[str, Any]:
    return {"type": kind, "agent": agent, "ts_ns": ts, "details": details}


def test_start_times_per_hosted_run() -> None:
    events = [
        _ev("agent.registered", "sess", 0),  # a session agent: not hosted
        _ev("agent.registered", "h1", 100 * MS, hosted=True),
        _ev("agent.state", "h2", 150 * MS, to="Ready"),  # another run's
        _ev("agent.state", "h1", 130 * MS, to="Running"),
        _ev("agent.state", "h1", 120 * MS, to="Ready"),
        _ev("tool.call", "h1", started_ns=190 * MS),
        _ev("tool.call", "h1", started_ns=160 * MS),  # the first, logged second
        _ev("agent.registered", "h2", 140 * MS, hosted=True),
        _ev("tool.call", "h2", started_ns=200 * MS),
    ]
    assert _start_times(events) == ([20.0, 10.0], [60.0, 60.0])


def test_a_run_without_a_tool_call_is_an_error() -> None:
    events = [_ev("agent.registered", "h1", 0, hosted=True), _ev("agent.state", "h1", MS, to="Ready")]
    with pytest.raises(ValueError):
        _start_times(events)
