"""Progress of a cancelled request on ``symbi mcp`` (stdio): MCP's progress notifications must
only reference tokens of operations in progress, and a cancelled request's receiver stops its
work for it. The upstream here (server-everything's long-running operation) ignores the cancel
and goes on reporting progress: the gateway must stop relaying it once it has read the cancel,
whichever path serves the call (the fast lane, the SDK's on a lane-on gateway, lane off)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import upstream_writable
from tests.server.test_stdio_fastlane import (
    ECHO,
    FILL,
    INIT,
    STARTUP_S,
    Wire,
    _wait_recorded,
    call,
    cancel,
    lane_config,
    replied,
)

LONG = "everything__trigger-long-running-operation"
VARIANTS = [(True, None), (True, {"x-note": "sdk"}), (False, None)]  # lane, SDK on lane-on, lane off


def _progress_of(got: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    return [
        m
        for m in got
        if m.get("method") == "notifications/progress" and m["params"].get("progressToken") == token
    ]


def _long_call(rid: Any, token: str, meta: dict[str, Any] | None, steps: int) -> dict[str, Any]:
    # a step every 0.1 s: steps / 10 seconds in all
    return call(
        rid, LONG, {"duration": steps / 10, "steps": steps}, _meta={"progressToken": token, **(meta or {})}
    )


def _started(w: Wire, lane: bool, meta: dict[str, Any] | None) -> None:
    w.send(INIT)
    w.until(replied("init"), timeout=STARTUP_S)
    w.send({"jsonrpc": "2.0", "method": "notifications/initialized"})


@pytest.mark.parametrize(("lane", "meta"), VARIANTS)
def test_no_progress_is_relayed_once_the_cancel_is_read(
    tmp_path: Path, lane: bool, meta: dict[str, Any] | None
) -> None:
    """A call reporting progress is cancelled mid-way: once the gateway has read the cancel (a
    sentinel sent after it is answered), no more progress of its token reaches the client, while
    the upstream goes on reporting (it ignores the cancel: 10 steps a second for 10 s)."""
    w = Wire(lane_config(tmp_path, lane), tmp_path / "gateway.log")
    try:
        _started(w, lane, meta)
        w.send(_long_call(95, "p95", meta, 100))
        got = w.until(lambda g: len(_progress_of(g, "p95")) >= 2)
        w.send(cancel(95))
        w.send(call("sentinel", ECHO, {"message": "sentinel"}))
        got = w.until(replied("sentinel"))  # the cancel is read: what follows is after it
        time.sleep(1.0)  # ten of the upstream's steps
        w.send(call("sentinel-2", ECHO, {"message": "sentinel"}))
        after = w.until(replied("sentinel-2"))
        assert _progress_of(after, "p95") == [], after
        assert not any(m.get("id") == 95 for m in got + after)  # nor an answer
    finally:
        w.close()


@pytest.mark.parametrize(("lane", "meta"), VARIANTS)
def test_progress_waiting_behind_a_full_pipe_is_dropped_once_the_cancel_is_read(
    tmp_path: Path, lane: bool, meta: dict[str, Any] | None
) -> None:
    """The client reads nothing for a while: replies fill the pipe, then a call's progress waits
    behind them in the gateway. The client cancels the call: the progress still waiting is
    no longer relayed (none of it had left: the pipe was full before the call started). A later
    call reusing the token gets its own progress."""
    cfg = lane_config(tmp_path, lane)
    record = upstream_writable(tmp_path) / "calls.jsonl"
    w = Wire(cfg, tmp_path / "gateway.log")
    fills = [f"fill-{i}" for i in range(FILL)]
    try:
        _started(w, lane, meta)
        for rid in fills:
            w.send(call(rid, ECHO, {"message": f"{rid}:" + "x" * 25_000}))
        for rid in fills:
            _wait_recorded(record, f'"{rid}:')
        time.sleep(1.0)  # the fills' replies made and stuck in the full pipe
        w.send(_long_call(96, "p96", meta, 100))
        time.sleep(1.5)  # progress made meanwhile waits behind the fills
        w.send(cancel(96))
        w.send(call("sentinel", ECHO, {"message": "sentinel"}))
        got = w.until(replied(*fills, "sentinel"), timeout=60)
        time.sleep(0.5)
        w.send(call("sentinel-2", ECHO, {"message": "sentinel"}))
        got += w.until(replied("sentinel-2"))
        assert _progress_of(got, "p96") == [], [m["params"] for m in _progress_of(got, "p96")]
        assert not any(m.get("id") == 96 for m in got)
        # a new call of the cancelled call's token (MCP: unique among active requests only)
        # gets its own progress
        w.send(_long_call(97, "p96", meta, 3))
        again = w.until(replied(97))
        assert [m["params"]["progress"] for m in _progress_of(again, "p96")] == [1, 2, 3]
    finally:
        w.close()
