"""The client-facing fast lane of ``tools/call`` on ``symbi mcp`` (``gateway.server.fastlane``).

Every case runs against a real ``symbi mcp`` twice, with ``mcp.stdio_fast_lane`` on and off
(the SDK's server session for every message), and the two must answer alike: the same replies
on the wire (raw JSON lines, attacks included), the same results, error codes, progress,
sampling relay, cancellation and audit records through the SDK client. The gateway logs each
call the lane takes (DEBUG), so each run also proves which path served it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, stdio_client, types
from mcp.shared.exceptions import MCPError

from gateway.audit import store
from gateway.config.load import load_config
from tests.conftest import EVERYTHING_JS, SYMBI, require_peers, symbi_env, upstream_writable, write_config
from tests.server._clients import DIGITS_TRACEPARENT, gateway_params
from tests.server.test_stdio_e2e import MUTABLE

pytestmark = pytest.mark.anyio
LANE_LINE = "in the fast lane"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UNSAMPLED = "0af7651916cd43dd8448eb211c80319c"  # a caller's trace it does not sample (flags 00)


def lane_config(tmp_path: Path, lane: bool) -> Path:
    require_peers()
    tmp_path.mkdir(exist_ok=True)
    record = upstream_writable(tmp_path) / "calls.jsonl"
    return write_config(
        tmp_path,
        f"""
        [gateway]
        data_dir = "{tmp_path / "data"}"
        log_level = "DEBUG"
        [mcp]
        max_message_bytes = 65536
        stdio_fast_lane = {"true" if lane else "false"}
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "tofu"
        env = {{ RECORD_FILE = "{record}" }}
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
    )


def lane_calls(log: Path) -> int:
    return log.read_text(errors="replace").count(LANE_LINE)


def audited_calls(cfg: Path) -> list[dict[str, Any]]:
    conn = store.open_reader(load_config(cfg).audit_path)
    try:
        return [r.details for r in store.query(conn, types=("tool.call",))]
    finally:
        conn.close()


# -- on the wire -------------------------------------------------------------------------------


STARTUP_S = 120  # the gateway answers initialize once its upstreams are up: ~30 s at load 11


class Wire:
    """``symbi mcp`` driven with raw JSON lines; every line it writes is kept."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self._err = log.open("wb")
        self.p = subprocess.Popen(
            [str(SYMBI), "mcp", "--config", str(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=symbi_env(),
        )
        self._buf = b""

    def send(self, obj: Any) -> None:
        raw = obj if isinstance(obj, bytes) else json.dumps(obj, ensure_ascii=False).encode()
        assert self.p.stdin is not None
        self.p.stdin.write(raw + b"\n")
        self.p.stdin.flush()

    def until(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        got: list[dict[str, Any]] = []
        end = time.monotonic() + timeout
        while not done(got):
            left = end - time.monotonic()
            assert left > 0, f"no answer in {timeout} s; got {got}"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                assert chunk, f"the gateway closed its output; got {got}"
                self._buf += chunk
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    got.append(json.loads(line))
        return got

    def close(self) -> None:
        self.p.kill()
        self.p.wait()
        self._err.close()


def replied(*ids: Any) -> Callable[[list[dict[str, Any]]], bool]:
    """Done when a reply for each of ``ids`` came (a ``LIST_CHANGED`` among them: that notification)."""

    def done(got: list[dict[str, Any]]) -> bool:
        seen = [m.get("id") if "method" not in m else m["method"] for m in got]
        return all(seen.count(i) >= ids.count(i) for i in ids)

    return done


def call(rid: Any, name: str, arguments: Any = None, **params: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, **params}
    if arguments is not None:
        p["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": p}


ECHO = "mut__echo"
LIST_CHANGED = "notifications/tools/list_changed"
INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": "init",
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    },
}

# (lines to send, the reply ids the step waits for, calls the lane takes when on); then a
# sentinel call (whatever else came back before its reply is part of the step)
Step = tuple[list[Any], tuple[Any, ...], int]


SCRIPT: list[Step] = [
    # before initialize: the SDK's refusal on both paths
    ([call("early", ECHO, {"message": "too soon"})], ("early",), 0),
    ([INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}], ("init",), 0),
    # ids: numeric, zero, negative, large, string, unicode
    ([call(1, ECHO, {"message": "one"})], (1,), 1),
    ([call(0, ECHO, {"message": "zero"})], (0,), 1),
    ([call(-7, ECHO, {"message": "negative"})], (-7,), 1),
    ([call(2**53 + 1, ECHO, {"message": "large"})], (2**53 + 1,), 1),
    ([call("s-1", ECHO, {"message": "string id"})], ("s-1",), 1),
    ([call("ïd ✓", ECHO, {"message": 'über ✓ 🚀 \u2028 "q" \\'})], ("ïd ✓",), 1),
    # ids the lane leaves to the SDK: null, float, bool, object
    ([call(None, ECHO, {"message": "null id"})], (), 0),
    (
        [call(1.5, ECHO, {"message": "float id"}), call("after-float", ECHO, {"message": "x"})],
        ("after-float",),
        1,
    ),
    (
        [call(True, ECHO, {"message": "bool id"}), call("after-bool", ECHO, {"message": "x"})],
        ("after-bool",),
        1,
    ),
    # malformed and unusual frames
    ([b'{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"mut__echo"'], (), 0),
    ([b"\xff\xfe not utf-8", call(21, ECHO, {"message": "after garbage"})], (21,), 1),
    ([{**call(22, ECHO, {"message": "x"}), "jsonrpc": "1.0"}], (22,), 0),
    ([{"jsonrpc": "2.0", "id": 23, "method": "tools/call", "params": []}], (23,), 0),
    ([call(24, ECHO, ["not", "an", "object"])], (24,), 0),
    ([{"jsonrpc": "2.0", "id": 25, "method": "tools/call", "params": {"name": 7}}], (25,), 0),
    ([{"jsonrpc": "2.0", "id": 26, "method": "tools/call"}], (26,), 0),
    ([call(27, ECHO, {"message": "x"}, surprise=True)], (27,), 0),
    ([{**call(28, ECHO, {"message": "x"}), "extra": 1}], (28,), 0),
    ([call(29, ECHO, {"message": "x"}, _meta={"custom": 1})], (29,), 0),
    (
        [
            b'{"jsonrpc":"2.0","id":30,"method":"tools/call","params":{"name":"mut__echo","arguments":{"n":1e999}}}'
        ],
        (30,),
        0,  # orjson refuses 1e999: the SDK parses it
    ),
    (
        [
            b'{"jsonrpc":"2.0","id":31,"method":"tools/call","params":{"name":"mut__echo","arguments":{"message":"\\ud800"}}}'
        ],
        (),
        0,
    ),
    (
        [
            b'{"jsonrpc":"2.0","id":32,"method":"tools/call","params":{"name":"mut__echo","arguments":{"message":"a"}},"id":33}'
        ],
        (33,),
        1,
    ),
    # oversized (mcp.max_message_bytes = 65536)
    ([call(34, ECHO, {"message": "x" * 70_000})], (34,), 0),
    # a batch, and a call shaped as a notification (no id: never answered)
    ([[call(35, ECHO, {"message": "in a batch"}), call(36, ECHO, {"message": "b"})]], (), 0),
    (
        [{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": ECHO, "arguments": {"message": "n"}}}]
        + [call(37, ECHO, {"message": "after the notification"})],
        (37,),
        1,
    ),
    # the chain's refusals: unknown tool, bad arguments, a denied path, as results
    ([call(40, "mut__nope", {})], (40,), 1),
    ([call(41, "nobody__nothing", {})], (41,), 1),
    ([call(42, ECHO, {"message": 5})], (42,), 1),
    ([call(43, ECHO, {})], (43,), 1),
    ([call(44, "mut__read_path", {"path": "/etc/shadow"})], (44,), 1),
    ([call(45, "mut__read_path", {"path": "/tmp/x", "api_token": "s3cret"})], (45,), 1),
    # progress (the caller's token), and trace context in _meta
    ([call(50, "mut__slow", {"seconds": 0.3}, _meta={"progressToken": "p-50"})], (50,), 1),
    (
        [call(51, ECHO, {"message": "traced"}, _meta={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})],
        (51,),
        1,
    ),
    # the caller's trace, not sampled: no span is recorded (the lane's light SERVER span), same ids
    (
        [
            call(
                52,
                ECHO,
                {"message": "unsampled"},
                _meta={"traceparent": f"00-{UNSAMPLED}-00f067aa0ba902b7-00"},
            )
        ],
        (52,),
        1,
    ),
    # 19 digits in a row in strings (a random traceparent has them once in some 1,300 calls): the
    # lane's; only an integer orjson would read as a float is the SDK's
    (
        [call(53, ECHO, {"message": "1234567890123456789012"}, _meta={"traceparent": DIGITS_TRACEPARENT})],
        (53,),
        1,
    ),
    # integers up to 2**64 - 1 and down to -2**63, and a long decimal: orjson reads them exactly as
    # the SDK does, so the lane's
    (
        [call(2**64 - 1, ECHO, {"message": "u64", "n": -(2**63), "f": 0.1234567890123456789})],
        (2**64 - 1,),
        1,
    ),
    # id collision with a call in flight: the second refused (Invalid Request), the first answered
    ([call(60, "mut__slow", {"seconds": 0.5}), call(60, ECHO, {"message": "same id"})], (60, 60), 1),
    # a cancelled call is never answered; the session goes on
    (
        [
            call(61, "mut__slow", {"seconds": 5}),
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 61}},
            call(62, ECHO, {"message": "after cancel"}),
        ],
        (62,),
        2,
    ),
    # a drifted tool (tofu pin): the rug pull, then the changed echo is refused
    ([call(70, "mut__rug_pull", {})], (70, LIST_CHANGED), 1),
    ([call(71, ECHO, {"message": "after the rug pull"})], (71,), 1),
]


def _canonical(msgs: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(m, sort_keys=True) for m in msgs)


def run_script(tmp_path: Path, lane: bool) -> tuple[list[list[str]], int, list[dict[str, Any]]]:
    cfg = lane_config(tmp_path, lane)
    log = tmp_path / "gateway.log"
    w = Wire(cfg, log)
    out: list[list[str]] = []
    try:
        for i, (lines, ids, _) in enumerate(SCRIPT):
            for line in lines:
                w.send(line)
            got = w.until(replied(*ids))
            w.send(call(f"sentinel-{i}", ECHO, {"message": "sentinel"}))
            got += w.until(replied(f"sentinel-{i}"))
            out.append(_canonical(got))
        time.sleep(0.5)  # nothing late (the cancelled call) may arrive
        out.append(_canonical(w.until(lambda g: True, timeout=1)))
        w.send(call(99, ECHO, {"message": "last"}))
        out.append(_canonical(w.until(replied(99))))
    finally:
        w.close()
    return out, lane_calls(log), audited_calls(cfg)


def test_every_wire_case_answers_alike_through_the_lane_and_the_sdk(tmp_path: Path) -> None:
    on, taken, audit_on = run_script(tmp_path / "on", lane=True)
    off, not_taken, audit_off = run_script(tmp_path / "off", lane=False)
    assert not_taken == 0
    assert taken == sum(n for _, _, n in SCRIPT) + len(SCRIPT) - 1 + 1  # + sentinels after init, the last
    for i, (a, b) in enumerate(zip(on, off, strict=True)):
        assert a == b, f"step {i}: {SCRIPT[i][0] if i < len(SCRIPT) else 'end'}"
    # the cancelled call was not answered on either path, the batch got the SDK's one error
    assert not any('"id": 61' in m for step in on for m in step)
    # the audit log has the same calls, and the client's trace id on the traced one
    assert [(d["tool"], d["outcome"], d["error_code"]) for d in audit_on] == [
        (d["tool"], d["outcome"], d["error_code"]) for d in audit_off
    ]
    for audit in (audit_on, audit_off):
        assert any(d["trace_id"] == TRACE for d in audit)
        assert any(d["trace_id"] == UNSAMPLED for d in audit)
        assert all(isinstance(d["trace_id"], str) and len(d["trace_id"]) == 32 for d in audit)


# -- through the SDK client --------------------------------------------------------------------


@asynccontextmanager
async def client(cfg: Path, log: Path, **kw: Any) -> AsyncIterator[ClientSession]:
    with log.open("w") as err:
        async with stdio_client(gateway_params(cfg), errlog=err) as (r, w):
            async with ClientSession(r, w, **kw) as s:
                await s.initialize()
                yield s


async def sdk_outcomes(tmp_path: Path, lane: bool) -> tuple[list[Any], int]:
    cfg = lane_config(tmp_path, lane)
    log = tmp_path / "gateway.log"
    asked: list[str] = []

    async def model(_context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(str(params.messages[0].content))
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="the client's model"), model="m"
        )

    notified: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notified.append((progress, total, message))

    def shape(r: types.CallToolResult) -> Any:
        return r.model_dump(mode="json", by_alias=True, exclude_none=True)

    out: list[Any] = []
    async with client(cfg, log, sampling_callback=model) as s:
        await s.list_tools()
        out.append(shape(await s.call_tool(ECHO, {"message": "über ✓"})))
        out.append(shape(await s.call_tool("everything__get-sum", {"a": 2, "b": 3})))
        out.append(shape(await s.call_tool("mut__nope", {})))
        out.append(shape(await s.call_tool("mut__read_path", {"path": "/etc/shadow"})))
        # a call the upstream answers by asking the client's model (the relay during a call)
        out.append(shape(await s.call_tool("mut__sample", {"delay": 0})))
        out.append(list(asked))
        out.append(shape(await s.call_tool("mut__slow", {"seconds": 0.3}, progress_callback=on_progress)))
        out.append(list(notified))
        # a result over the policy's cap (tests/assets/policy: max_result_bytes) is capped
        out.append(shape(await s.call_tool("mut__huge", {"megabytes": 0})))
        # the client gives up: it cancels, the gateway cancels upstream, the session goes on
        with pytest.raises(MCPError) as e:
            await s.call_tool("mut__slow", {"seconds": 20}, read_timeout_seconds=0.5)
        out.append(e.value.error.code)
        record = tmp_path / "upstream-rw" / "calls.jsonl"
        with anyio.fail_after(10):
            while "slow_cancelled" not in (record.read_text() if record.exists() else ""):
                await anyio.sleep(0.05)
        # concurrent calls on one session
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = shape(await s.call_tool(ECHO, {"message": f"n{i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        out.append([results[i] for i in range(8)])
    return out, lane_calls(log)


async def test_sdk_client_cases_answer_alike_through_the_lane_and_the_sdk(tmp_path: Path) -> None:
    on, taken = await sdk_outcomes(tmp_path / "on", lane=True)
    off, not_taken = await sdk_outcomes(tmp_path / "off", lane=False)
    assert not_taken == 0
    assert taken == 16  # every call of the session went through the lane
    assert on == off
    assert "über ✓" in on[0]["content"][0]["text"]
    assert len(on[5]) == 1 and "say who you are" in on[5][0]  # the client's model was asked once
    assert "the client's model" in json.dumps(on[4])
    assert [p for p, _, _ in on[7]] == [1, 2]  # 0.3 s in steps of 0.1 s (int(2.99...))


def end_of_input(tmp_path: Path, lane: bool) -> tuple[list[dict[str, Any]], int]:
    cfg = lane_config(tmp_path, lane)
    log = tmp_path / "gateway.log"
    w = Wire(cfg, log)
    try:
        w.send(INIT)
        w.until(replied("init"), timeout=STARTUP_S)
        w.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        w.send(call(1, "mut__slow", {"seconds": 20}))
        record = tmp_path / "upstream-rw" / "calls.jsonl"
        deadline = time.monotonic() + 20
        while '"slow"' not in (record.read_text() if record.exists() else ""):  # the call is in flight
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert w.p.stdin is not None
        w.p.stdin.close()  # end of input with the call in flight
        got = w.until(replied(1), timeout=15)
    finally:
        w.close()
    return got, lane_calls(log)


def test_end_of_input_ends_a_call_in_flight_alike(tmp_path: Path) -> None:
    on, taken = end_of_input(tmp_path / "on", lane=True)
    off, not_taken = end_of_input(tmp_path / "off", lane=False)
    assert (taken, not_taken) == (1, 0)
    assert on == off
    assert on[0]["error"]["code"] == types.CONNECTION_CLOSED


# -- a request id reused while it is in flight -------------------------------------------------

SLOW_S = 1.0
# (first, second): the first a slow call, the second reusing its id while it runs; the
# comments say which path serves the first when the lane is on (off: the SDK, every one)
REUSED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    # the lane's call, then another plain call of its id
    (call(80, "mut__slow", {"seconds": SLOW_S}), call(80, ECHO, {"message": "second"})),
    # the SDK's call (a _meta key the lane leaves to the SDK), then a plain call of its id
    (
        call(81, "mut__slow", {"seconds": SLOW_S}, _meta={"x-note": "sdk"}),
        call(81, ECHO, {"message": "second"}),
    ),
    # the lane's call, then another method (the SDK's) of its id
    (call(82, "mut__slow", {"seconds": SLOW_S}), {"jsonrpc": "2.0", "id": 82, "method": "tools/list"}),
    # "83" is 83 to the SDK's correlation of ids (coerce_request_id)
    (call(83, "mut__slow", {"seconds": SLOW_S}), call("83", ECHO, {"message": "second"})),
    # string ids
    (call("s-84", "mut__slow", {"seconds": SLOW_S}), call("s-84", ECHO, {"message": "second"})),
]


def _key(rid: Any) -> Any:
    return int(rid) if isinstance(rid, str) and rid.isdigit() else rid


def _reused_replies(w: Wire, first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Both sent at once; every reply of their id (coerced) until two came and the id is free."""
    w.send(first)
    w.send(second)
    key = _key(first["id"])
    got = w.until(lambda g: sum(_key(m.get("id")) == key for m in g if "method" not in m) >= 2)
    # the id is free again once answered: a third call of it is served
    w.send(call(first["id"], ECHO, {"message": "third"}))
    got += w.until(lambda g: any(_key(m.get("id")) == key for m in g if "method" not in m))
    w.send(call("sentinel", ECHO, {"message": "sentinel"}))
    got += w.until(replied("sentinel"))
    return [m for m in got if "method" not in m and _key(m.get("id")) == key]


@pytest.mark.parametrize("lane", [True, False])
def test_a_request_reusing_an_id_in_flight_is_refused_and_the_first_answered(
    tmp_path: Path, lane: bool
) -> None:
    """MCP: a requestor MUST NOT reuse an id within a session. Without a refusal the SDK answers
    both under the one id (the second's reply comes first and answers the client's first
    request). Refused: the second gets Invalid Request with its id, the first its own result."""
    cfg = lane_config(tmp_path, lane)
    w = Wire(cfg, tmp_path / "gateway.log")
    try:
        w.send(INIT)
        w.until(replied("init"), timeout=STARTUP_S)
        w.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for first, second in REUSED:
            got = _reused_replies(w, first, second)
            text = json.dumps(got)
            assert "Echo: second" not in text and '"tools"' not in text, (first, got)
            [refusal] = [m for m in got if "error" in m]
            assert refusal["id"] == second["id"] and type(refusal["id"]) is type(second["id"])
            assert refusal["error"]["code"] == types.INVALID_REQUEST
            results = [m["result"]["content"][0]["text"] for m in got if "result" in m]
            assert results == ["done", "Echo: third"], (first, got)  # the first's own, then the third's
            assert [m["id"] for m in got if "result" in m] == [first["id"], first["id"]]
    finally:
        w.close()


def cancel(rid: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}}


FILL = 8  # unread replies of ~50 KB (the upstream echoes 25 KB twice): more than the pipe and the writer's buffer hold


def _wait_recorded(record: Path, text: str) -> None:
    end = time.monotonic() + 30
    while not (record.exists() and text in record.read_text()):
        assert time.monotonic() < end, f"{text!r} never reached the upstream"
        time.sleep(0.01)


@pytest.mark.parametrize(("lane", "meta"), [(True, None), (True, {"x-note": "sdk"}), (False, None)])
def test_a_cancelled_call_answered_late_never_answers_a_reuse_of_its_id(
    tmp_path: Path, lane: bool, meta: dict[str, Any] | None
) -> None:
    """A call's reply waits behind a full pipe (the client reads nothing yet) when the client
    cancels it and at once reuses its id. Without a guard the late reply ("Echo: first") went
    out after the cancel, under the id the client now uses for its new request. Now a reply
    not yet written when the cancel is read is dropped (MCP: no response for a cancelled
    request), and the id stays in flight until the cancelled call has settled: the reuse is
    refused (Invalid Request) or, once settled, served with its own answer. A reuse after both
    replies is served. ``meta``: a ``_meta`` key the lane leaves to the SDK."""
    cfg = lane_config(tmp_path, lane)
    record = upstream_writable(tmp_path) / "calls.jsonl"
    w = Wire(cfg, tmp_path / "gateway.log")
    fills = [f"fill-{i}" for i in range(FILL)]
    try:
        w.send(INIT)
        w.until(replied("init"), timeout=STARTUP_S)
        w.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for rid in fills:
            w.send(call(rid, ECHO, {"message": f"{rid}:" + "x" * 25_000}))
        # the fills' replies are made (and stuck in the full pipe) before the first's: the calls
        # run concurrently, so a first sent at once could be answered, and written, among them
        for rid in fills:
            _wait_recorded(record, f'"{rid}:')
        time.sleep(1.0)
        w.send(call(90, ECHO, {"message": "first"}, **({"_meta": meta} if meta else {})))
        _wait_recorded(record, '"first"')
        time.sleep(1.0)  # the chain's steps after the upstream's answer: the reply then waits
        w.send(cancel(90))
        w.send(call(90, ECHO, {"message": "second"}))
        w.send(call("sentinel", ECHO, {"message": "sentinel"}))
        got = w.until(replied(*fills, "sentinel", 90), timeout=60)
        assert "Echo: first" not in json.dumps(got)
        for m in (m for m in got if m.get("id") == 90):  # refused, or the second's own answer
            ok = (
                m["error"]["code"] == types.INVALID_REQUEST
                if "error" in m
                else m["result"]["content"][0]["text"]
            )
            assert ok in (True, "Echo: second"), m
        w.send(call(90, ECHO, {"message": "third"}))
        third = [m for m in w.until(replied(90)) if m.get("id") == 90]
        assert [m["result"]["content"][0]["text"] for m in third] == ["Echo: third"]
    finally:
        w.close()


def _served_once_settled(w: Wire, rid: Any) -> list[dict[str, Any]]:
    """A call of ``rid`` sent until it is served (each refusal waited for first): the id of a
    cancelled call is free again once the call has settled. Every reply of ``rid`` it got."""
    got: list[dict[str, Any]] = []
    end = time.monotonic() + 30
    while not any("result" in m for m in got):
        assert time.monotonic() < end, f"{rid!r} was never free again: {len(got)} refusals"
        w.send(call(rid, ECHO, {"message": "third"}))
        got += [m for m in w.until(replied(rid)) if m.get("id") == rid]
        time.sleep(0.05)  # the pace of the retries, not a wait for the outcome
    return got


@pytest.mark.parametrize(("lane", "meta"), [(True, None), (True, {"x-note": "sdk"}), (False, None)])
def test_a_cancelled_call_still_running_frees_its_id_once_settled_and_never_answers(
    tmp_path: Path, lane: bool, meta: dict[str, Any] | None
) -> None:
    """A slow call cancelled while it runs, its id reused at once: the reuse is refused (Invalid
    Request) while the cancelled call has not settled, or served with its own answer; the
    cancelled call is never answered. Once it has settled (the SDK's dispatcher tells the
    transport, ``on_request_unanswered``) the id is free: a client reusing it then is served."""
    cfg = lane_config(tmp_path, lane)
    record = upstream_writable(tmp_path) / "calls.jsonl"
    w = Wire(cfg, tmp_path / "gateway.log")
    try:
        w.send(INIT)
        w.until(replied("init"), timeout=STARTUP_S)
        w.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        w.send(call(91, "mut__slow", {"seconds": 5}, **({"_meta": meta} if meta else {})))
        _wait_recorded(record, '"slow"')
        w.send(cancel(91))
        w.send(call(91, ECHO, {"message": "second"}))
        got = w.until(replied(91))
        _wait_recorded(record, "slow_cancelled")  # the upstream saw the cancel: the call is over
        got += _served_once_settled(w, 91)
        w.send(call("sentinel", ECHO, {"message": "sentinel"}))
        got += [m for m in w.until(replied("sentinel")) if m.get("id") == 91]
        texts = [m["result"]["content"][0]["text"] for m in got if "result" in m]
        assert texts in (["Echo: second", "Echo: third"], ["Echo: third"]), got  # never "done"
        assert all(m["error"]["code"] == types.INVALID_REQUEST for m in got if "error" in m), got
    finally:
        w.close()


@pytest.mark.parametrize("lane", [True, False])
def test_a_batch_is_refused_whole_duplicate_and_in_flight_ids_included(tmp_path: Path, lane: bool) -> None:
    """JSON-RPC batches (arrays; MCP allowed them before 2025-06-18) are not served on stdio:
    the transport (and the lane before it) takes one message per line, and an array is
    answered with one Invalid Request without an id; no element runs. So two requests of one
    id in a batch, or one reusing an id in flight, never get answers the client cannot tell
    apart; the refusal carries no id (it is no element's answer: before, it took the first
    element's, here the id of the call in flight, whose answer it then seemed to be). In a
    2025-03-26 session (batches were still MCP then), beside a call in flight."""
    cfg = lane_config(tmp_path, lane)
    record = upstream_writable(tmp_path) / "calls.jsonl"
    w = Wire(cfg, tmp_path / "gateway.log")
    try:
        w.send({**INIT, "params": {**INIT["params"], "protocolVersion": "2025-03-26"}})
        [init] = w.until(replied("init"), timeout=STARTUP_S)
        assert init["result"]["protocolVersion"] == "2025-03-26"
        w.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        w.send(call(92, "mut__slow", {"seconds": 3.0}))
        _wait_recorded(record, '"slow"')
        batch = [
            call(92, ECHO, {"message": "b1"}),
            call(93, ECHO, {"message": "b2"}),
            call(93, ECHO, {"message": "b3"}),
        ]
        w.send(batch)
        w.send([call(92, ECHO, {"message": "x" * 70_000})])  # over mcp.max_message_bytes too
        got = w.until(replied(None, None, 92))
        refusals = [m for m in got if m.get("id") is None]
        assert [m["error"]["code"] for m in refusals] == [types.INVALID_REQUEST] * 2
        assert [m["result"]["content"][0]["text"] for m in got if m.get("id") == 92] == ["done"]
        assert not any(m.get("id") == 93 for m in got)
        assert not any(f'"b{i}"' in record.read_text() for i in (1, 2, 3))
    finally:
        w.close()
