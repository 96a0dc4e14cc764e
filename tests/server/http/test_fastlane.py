"""The HTTP front's fast lane of ``tools/call`` (``gateway.server.httplane``), in both answer
modes: SSE streams (the default) and JSON bodies (``http.json_response = true``).

Per mode, two real gateways (uvicorn, API keys, the repo's policy, server-everything and the
test upstream ``mut`` over stdio), one with ``mcp.http_fast_lane`` on and one off (every
request through the SDK's transport and session). Every case runs against both and must
answer alike: the SDK client's results, errors, progress, sampling, cancellation and audit
records, and the raw HTTP answers to the attacks (status, headers, body; SSE events with
their event ids made neutral). The lane's counter proves which path served each request.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette

from gateway.audit import store
from gateway.config.load import load_config
from gateway.server.http import build_app
from gateway.server.httplane import HttpLane
from tests.conftest import EVERYTHING_JS, POLICY, require_peers, upstream_writable, write_config
from tests.server._clients import DIGITS_TRACEPARENT
from tests.server.http.conftest import Keys, Running, bearer, make_keys, policy_data, run_server
from tests.server.test_stdio_e2e import MUTABLE

ECHO = "everything__echo"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
MAX_BODY = 65536


@dataclass
class Gw:
    run: Running
    keys: Keys
    cfg: Path
    record: Path
    mode: str  # "sse" or "json"

    @property
    def lane(self) -> HttpLane | None:
        app = self.run.server.config.app
        assert isinstance(app, Starlette)
        lane: HttpLane | None = app.state.http_lane
        return lane

    @property
    def taken(self) -> int:
        return self.lane.taken if self.lane is not None else 0


def _config(tmp: Path, lane: bool, mode: str = "json") -> tuple[Path, Path]:
    require_peers()
    os.chmod(tmp, 0o711)  # a module's folder: the unprivileged upstream user writes its record below
    record = upstream_writable(tmp) / "calls.jsonl"
    cfg = write_config(
        tmp,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{policy_data(tmp)}"
        [gateway]
        data_dir = "{tmp / "data"}"
        [mcp]
        http_fast_lane = {"true" if lane else "false"}
        [http]
        json_response = {"true" if mode == "json" else "false"}
        max_request_bytes = {MAX_BODY}
        max_sessions_per_principal = 256
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        env = {{ RECORD_FILE = "{record}" }}
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
    )
    return cfg, record


@contextmanager
def gateways(tmp_path_factory: pytest.TempPathFactory, mode: str) -> Iterator[tuple[Gw, Gw]]:
    """The lane-on and the lane-off gateway of one answer mode."""
    on_dir, off_dir = tmp_path_factory.mktemp(f"lane-on-{mode}"), tmp_path_factory.mktemp(f"lane-off-{mode}")
    on_cfg, on_rec = _config(on_dir, True, mode)
    off_cfg, off_rec = _config(off_dir, False, mode)
    on_keys, off_keys = make_keys(on_cfg), make_keys(off_cfg)
    with run_server(on_cfg) as on_run, run_server(off_cfg) as off_run:
        yield Gw(on_run, on_keys, on_cfg, on_rec, mode), Gw(off_run, off_keys, off_cfg, off_rec, mode)


@pytest.fixture(scope="module", params=["sse", "json"])
def gws(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gw, Gw]]:
    with gateways(tmp_path_factory, request.param) as pair:
        yield pair


def test_the_switch_wires_the_lane(gws: tuple[Gw, Gw]) -> None:
    on, off = gws
    assert isinstance(on.lane, HttpLane) and off.lane is None
    # the other answer mode: the lane too (it answers SSE streams and JSON bodies)
    cfg = load_config(on.cfg)
    other = cfg.model_copy(update={"http": cfg.http.model_copy(update={"json_response": on.mode == "sse"})})
    assert isinstance(build_app(other).state.http_lane, HttpLane)


# -- through the SDK client ------------------------------------------------------------------


async def model_answer(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    """The client's model, asked by ``mut__sample`` through the gateway's relay (SSE: the call's
    own stream carries the question, a POST the answer)."""
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="from the client"), model="m"
    )


async def user_answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    """The client's user, asked by server-everything's elicitation tool through the relay."""
    return types.ElicitResult(action="accept", content={"name": "Ada"})


@asynccontextmanager
async def sdk_client(gw: Gw, key: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=bearer(key), timeout=30) as hc,
        streamable_http_client(gw.run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w, sampling_callback=model_answer, elicitation_callback=user_answer) as s,
    ):
        await s.initialize()
        yield s


def shape(r: types.CallToolResult) -> Any:
    return r.model_dump(mode="json", by_alias=True, exclude_none=True)


async def sdk_outcomes(gw: Gw) -> list[Any]:
    out: list[Any] = []
    notified: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notified.append(progress)

    async with sdk_client(gw, gw.keys.admin) as s:
        out.append(shape(await s.call_tool(ECHO, {"message": "über ✓"})))
        out.append(shape(await s.call_tool("everything__get-sum", {"a": 2, "b": 3})))
        out.append(shape(await s.call_tool("mut__nope", {})))
        out.append(shape(await s.call_tool(ECHO, {"message": 5})))  # invalid arguments
        out.append(shape(await s.call_tool("mut__read_path", {"path": "/etc/shadow"})))
        # the upstream asks the client's model: on the call's SSE stream, the client answers; a
        # JSON reply has no back channel (both paths)
        try:
            out.append(shape(await s.call_tool("mut__sample", {"delay": 0})))
        except MCPError as e:
            out.append(("error", e.error.code))
        # progress rides the call's SSE stream; it has no wire in a JSON reply (both paths drop it)
        out.append(shape(await s.call_tool("mut__slow", {"seconds": 0.3}, progress_callback=on_progress)))
        out.append(list(notified))
        out.append(shape(await s.call_tool("mut__huge", {"megabytes": 0})))
        results: dict[int, Any] = {}

        async def one(i: int) -> None:
            results[i] = shape(await s.call_tool(ECHO, {"message": f"n{i}"}))

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
        out.append([results[i] for i in range(8)])
        # the upstream asks the client's user (elicitation): as sampling
        try:
            out.append(shape(await s.call_tool("everything__trigger-elicitation-request", {})))
        except MCPError as e:
            out.append(("error", e.error.code))
    # a developer may not call mut's tools (policy deny, not a listing miss)
    async with sdk_client(gw, gw.keys.user) as s:
        out.append(shape(await s.call_tool("mut__read_path", {"path": "/tmp"})))
        out.append(shape(await s.call_tool(ECHO, {"message": "dev"})))
    return out


def audited(cfg: Path) -> list[tuple[Any, ...]]:
    conn = store.open_reader(load_config(cfg).audit_path)
    try:
        rows = [r.details for r in store.query(conn, types=("tool.call",))]
    finally:
        conn.close()
    return [(d.get("tool"), d.get("decision"), d.get("outcome")) for d in rows]


@pytest.mark.anyio
async def test_sdk_client_cases_answer_alike_through_the_lane_and_the_sdk(gws: tuple[Gw, Gw]) -> None:
    on, off = gws
    before = on.taken
    got_on = await sdk_outcomes(on)
    taken = on.taken - before
    got_off = await sdk_outcomes(off)
    assert got_on == got_off
    assert taken == 19  # every call went through the lane (the 8 concurrent ones included)
    assert "über ✓" in got_on[0]["content"][0]["text"]
    assert got_on[2]["isError"] and got_on[4]["isError"]  # unknown tool; /etc/shadow denied
    if on.mode == "json":
        assert got_on[5][0] == "error"  # sampling: no back channel in a JSON reply (either path)
        assert got_on[7] == []  # no progress on a JSON reply
    else:
        assert got_on[5]["content"][0]["text"] == "sampled: from the client"
        # the call's progress, on its own stream (mut__slow reports every 0.1 s)
        assert got_on[7] and got_on[7] == [float(i + 1) for i in range(len(got_on[7]))]
    assert got_on[6]["content"][0]["text"] == "done"
    assert [r["content"][0]["text"] for r in got_on[9]] == [f"Echo: n{i}" for i in range(8)]
    if on.mode == "sse":
        assert "- Name: Ada" in json.dumps(got_on[10])  # the user's answer reached the upstream
    assert got_on[11]["isError"] and not got_on[12]["isError"]
    # the same audit records, in the same order (the lane's calls are audited as the SDK's)
    assert audited(on.cfg) == audited(off.cfg) and audited(on.cfg)


# -- on the wire ---------------------------------------------------------------------------------


def post(gw: Gw, body: Any, key: str | None, sid: str | None = None, **headers: str) -> httpx.Response:
    h = {**HEADERS, **headers}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    if sid is not None:
        h["mcp-session-id"] = sid
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(gw.run.mcp, content=content, headers=h, timeout=30)


def open_session(gw: Gw, key: str, initialized: bool = True) -> str:
    r = post(gw, INIT, key)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    if initialized:
        assert post(gw, INITIALIZED, key, sid).status_code == 202
    return sid


def call(rid: Any, name: str = ECHO, arguments: Any = None, **params: Any) -> dict[str, Any]:
    p = {"name": name, "arguments": arguments if arguments is not None else {"message": "hi"}, **params}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": p}


def answer(r: httpx.Response, sid: str) -> tuple[Any, ...]:
    """The whole HTTP answer, session ids and the address made neutral (the two gateways
    issue their own)."""
    base = str(r.request.url).removesuffix("/mcp")

    def neutral(v: str) -> str:
        v = v.replace(sid, "SID").replace(base, "BASE")
        return re.sub(r"\b[0-9a-f]{32}\b", "OTHER-SID", v)

    headers = {k: neutral(v) for k, v in r.headers.items() if k not in ("date", "content-length")}
    text = neutral(r.text)
    body: Any
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        body = sse_events(text)
    else:
        try:
            body = json.loads(text)
        except ValueError:
            body = text
    return r.status_code, headers, body


def sse_events(text: str, neutral_ids: bool = True) -> list[dict[str, Any]]:
    """The events of an SSE body, in order (``data`` parsed as JSON; event ids, random per
    gateway, made ``EID`` unless asked for). Every event must end with a blank line."""
    assert text == "" or text.endswith("\r\n\r\n"), text
    events = []
    for block in text.split("\r\n\r\n")[:-1]:
        event: dict[str, Any] = {}
        for line in block.split("\r\n"):
            field, _, value = line.partition(": ")
            event[field] = value
        if "data" in event and event["data"]:
            event["data"] = json.loads(event["data"])
        if neutral_ids and "id" in event:
            event["id"] = "EID"
        events.append(event)
    return events


def replies(r: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a POST's answer, in either mode."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return [e["data"] for e in sse_events(r.text) if isinstance(e.get("data"), dict)]
    return [r.json()]


def reply_to(r: httpx.Response, request_id: Any) -> dict[str, Any]:
    """The response to ``request_id`` in a POST's answer: an SSE answer may carry the
    upstream's notifications of the call before it."""
    return next(m for m in replies(r) if m.get("id") == request_id and m.keys() & {"result", "error"})


def wire_case(gw: Gw, case: str) -> tuple[Any, ...]:
    k = gw.keys.admin
    sid = open_session(gw, k)
    if case == "plain":
        return answer(post(gw, call(3), k, sid), sid)
    if case == "string id and meta":
        return answer(post(gw, call("a", _meta={"progressToken": 9, "traceparent": "00-x"}), k, sid), sid)
    if case == "missing session id":
        return answer(post(gw, call(3), k, None), sid)
    if case == "unknown session id":
        return answer(post(gw, call(3), k, "0" * 32), sid)
    if case == "other principal's session":
        return answer(post(gw, call(3), gw.keys.other_user, sid), sid)
    if case == "unauthenticated":
        return answer(post(gw, call(3), None, sid), sid)
    if case == "bad key":
        return answer(post(gw, call(3), "sk-nope", sid), sid)
    if case == "malformed JSON":
        return answer(post(gw, b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{', k, sid), sid)
    if case == "batch":
        return answer(post(gw, [call(3), call(4)], k, sid), sid)
    if case == "oversized body":
        return answer(post(gw, call(3, arguments={"message": "x" * MAX_BODY}), k, sid), sid)
    if case == "unknown key":
        return answer(post(gw, {**call(3), "extra": 1}, k, sid), sid)
    if case == "unknown param":
        return answer(post(gw, call(3, task={"ttl": 1}), k, sid), sid)
    if case == "integer past 64 bits":  # orjson would read it as a float: the SDK's to parse
        return answer(post(gw, call(3, arguments={"message": 123456789012345678901234567890}), k, sid), sid)
    if case == "19 digits in strings":  # a random traceparent has them once in some 1,300 calls
        digits = call(
            3, arguments={"message": "1234567890123456789012"}, _meta={"traceparent": DIGITS_TRACEPARENT}
        )
        return answer(post(gw, digits, k, sid), sid)
    if case == "u64 numbers":  # read exactly by orjson as by the SDK: the lane's
        wide = {"message": "u64", "n": 2**64 - 1, "m": -(2**63), "f": 0.1234567890123456789}
        return answer(post(gw, call(2**64 - 1, arguments=wide), k, sid), sid)
    if case == "no arguments":
        return answer(
            post(gw, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": ECHO}}, k, sid),
            sid,
        )
    if case == "bad id":
        return answer(post(gw, call(None), k, sid), sid)
    if case == "notification":
        return answer(post(gw, {k2: v for k2, v in call(3).items() if k2 != "id"}, k, sid), sid)
    if case == "modern era header":
        return answer(post(gw, call(3), k, sid, **{"mcp-protocol-version": "2026-07-28"}), sid)
    if case == "unknown era header":
        return answer(post(gw, call(3), k, sid, **{"mcp-protocol-version": "1999-01-01"}), sid)
    if case == "sse-only accept":
        return answer(post(gw, call(3), k, sid, Accept="text/event-stream"), sid)
    if case == "json-only accept":
        return answer(post(gw, call(3), k, sid, Accept="application/json"), sid)
    if case == "wildcard accept":
        return answer(post(gw, call(3), k, sid, Accept="*/*"), sid)
    if case == "resumable era header":  # 2025-11-25: a priming event (an id and a retry hint)
        return answer(post(gw, call(3), k, sid, **{"mcp-protocol-version": "2025-11-25"}), sid)
    if case == "foreign origin":  # DNS rebinding: a page elsewhere drives the browser
        return answer(post(gw, call(3), k, sid, Origin="http://evil.example"), sid)
    if case == "foreign host":
        return answer(post(gw, call(3), k, sid, Host="evil.example"), sid)
    if case == "wrong content type":
        return answer(post(gw, call(3), k, sid, **{"Content-Type": "text/plain"}), sid)
    if case == "json-ish content type":
        return answer(post(gw, call(3), k, sid, **{"Content-Type": "application/jsonx"}), sid)
    if case == "before initialized":
        sid2 = open_session(gw, k, initialized=False)
        return answer(post(gw, call(3), k, sid2), sid2)
    if case == "after delete":
        h = {**HEADERS, "Authorization": f"Bearer {k}", "mcp-session-id": sid}
        assert httpx.delete(gw.run.mcp, headers=h, timeout=10).status_code == 200
        return answer(post(gw, call(3), k, sid), sid)
    raise AssertionError(case)


LANE_CASES = {
    "plain": 1,
    "string id and meta": 1,
    "before initialized": 1,
    "no arguments": 1,
    "19 digits in strings": 1,
    "u64 numbers": 1,
    "wildcard accept": 1,
    "resumable era header": 1,
}
JSON_ONLY_LANE_CASES = {"json-only accept": 1}  # SSE mode needs both types accepted (406 otherwise)
WIRE_CASES = [
    "plain",
    "string id and meta",
    "missing session id",
    "unknown session id",
    "other principal's session",
    "unauthenticated",
    "bad key",
    "malformed JSON",
    "batch",
    "oversized body",
    "unknown key",
    "unknown param",
    "no arguments",
    "integer past 64 bits",
    "19 digits in strings",
    "u64 numbers",
    "bad id",
    "notification",
    "modern era header",
    "unknown era header",
    "sse-only accept",
    "json-only accept",
    "wildcard accept",
    "resumable era header",
    "foreign origin",
    "foreign host",
    "wrong content type",
    "json-ish content type",
    "before initialized",
    "after delete",
]


@pytest.mark.parametrize("case", WIRE_CASES)
def test_every_wire_case_answers_alike_through_the_lane_and_the_sdk(gws: tuple[Gw, Gw], case: str) -> None:
    on, off = gws
    before = on.taken
    got_on = wire_case(on, case)
    taken = on.taken - before
    got_off = wire_case(off, case)
    assert got_on == got_off
    lane_cases = LANE_CASES | (JSON_ONLY_LANE_CASES if on.mode == "json" else {})
    assert taken == lane_cases.get(case, 0)  # attacks and the unusual never reach the lane
    if case in ("plain", "string id and meta", "before initialized", "resumable era header"):
        content_type = "application/json" if on.mode == "json" else "text/event-stream"
        assert got_on[0] == 200 and got_on[1]["content-type"] == content_type
        assert got_on[1]["mcp-session-id"] == "SID" and "Echo: hi" in json.dumps(got_on[2])
    if on.mode == "sse" and case == "plain":
        assert [e["data"]["id"] for e in got_on[2]] == [3] and got_on[2][0]["event"] == "message"
    if on.mode == "sse" and case == "resumable era header":  # priming event first, then the reply
        assert got_on[2][0] == {"id": "EID", "data": "", "retry": "1000"} and got_on[2][1]["id"] == "EID"
    if on.mode == "sse" and case in ("json-only accept", "sse-only accept"):
        assert got_on[0] == 406
    if case in ("missing session id", "malformed JSON", "batch"):
        assert got_on[0] == 400
    if case in ("unknown session id", "other principal's session", "after delete"):
        assert got_on[0] == 404
    if case in ("unauthenticated", "bad key"):
        assert got_on[0] == 401
    if case == "oversized body":
        assert got_on[0] == 413
    if case in ("foreign origin", "foreign host"):
        assert got_on[0] in (403, 421)


# (first, second): a slow call, then a request reusing its id while it runs (on the lane-on
# gateway the first is the lane's unless said; on the lane-off one every request is the SDK's)
REUSED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (call(7, "mut__slow", {"seconds": 1.0}), call(7, ECHO, {"message": "second"})),
    # the SDK's call (a _meta key the lane leaves to it), then a plain call of its id
    (call(8, "mut__slow", {"seconds": 1.0}, _meta={"x-note": "sdk"}), call(8, ECHO, {"message": "second"})),
    # another method (the SDK's), and "9" for 9 (the SDK's correlation of ids)
    (call(9, "mut__slow", {"seconds": 1.0}), {"jsonrpc": "2.0", "id": "9", "method": "tools/list"}),
    # an integer past 64 bits (left to the SDK's parser) reusing the lane's call's id
    (
        call(10, "mut__slow", {"seconds": 1.0}),
        call(10, ECHO, {"message": "x", "n": 123456789012345678901234567890}),
    ),
]


T = TypeVar("T")


def _while_first_at_upstream(
    gw: Gw, first: dict[str, Any], k: str, sid: str, then: Callable[[], T]
) -> tuple[dict[str, Any], T]:
    """``first`` (a slow call) posted, and ``then`` run once it is at the upstream; the first's
    replies (under "first") once its POST has ended, and what ``then`` returned."""
    got: dict[str, Any] = {}
    out: list[T] = []

    def slow_calls() -> int:
        return gw.record.read_text().count('"slow"') if gw.record.exists() else 0

    async def main() -> None:
        async def slow() -> None:
            got["first"] = replies(await anyio.to_thread.run_sync(lambda: post(gw, first, k, sid)))

        before = slow_calls()
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            with anyio.fail_after(10):
                while slow_calls() == before:  # the first is at the upstream
                    await anyio.sleep(0.01)
            out.append(await anyio.to_thread.run_sync(then))

    anyio.run(main)
    return got, out[0]


def _reused(gw: Gw, first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """The first posted, the second posted once the first is at the upstream, then a third
    call of the id once the first was answered."""
    k = gw.keys.admin
    sid = open_session(gw, k)

    def then() -> httpx.Response:
        return post(gw, second, k, sid)

    got, r = _while_first_at_upstream(gw, first, k, sid, then)
    got["second"] = (r.status_code, replies(r))
    r = post(gw, call(first["id"], ECHO, {"message": "third"}), k, sid)
    got["third"] = replies(r)
    return got


def test_a_request_reusing_an_id_in_flight_is_refused_and_the_first_answered(gws: tuple[Gw, Gw]) -> None:
    """MCP: a requestor MUST NOT reuse an id within a session. Without a refusal the second
    took the id: the SDK's transport routes answers by id, so the first's stream ended without
    its answer (SSE), or the second was served beside it under the same id. Refused: the second
    gets Invalid Request (HTTP 400) with its id, the first its own result; once answered the
    id is free again. Through the lane and the SDK alike."""
    for gw in gws:
        for first, second in REUSED:
            got = _reused(gw, first, second)
            status, [refusal] = got["second"]
            assert status == 400, (gw.mode, first, got)
            assert refusal["id"] == second["id"] and type(refusal["id"]) is type(second["id"])
            assert refusal["error"]["code"] == types.INVALID_REQUEST
            answers = [m for m in got["first"] if "id" in m]
            assert [(m["id"], m["result"]["content"][0]["text"]) for m in answers] == [(first["id"], "done")]
            assert [m["result"]["content"][0]["text"] for m in got["third"] if "id" in m] == ["Echo: third"]


def test_a_cancelled_lane_call_is_answered_cancelled_and_cancelled_upstream(gws: tuple[Gw, Gw]) -> None:
    on, _ = gws
    k = on.keys.admin
    sid = open_session(on, k)
    got: dict[str, Any] = {}

    async def main() -> None:
        async def slow() -> None:
            r = await anyio.to_thread.run_sync(
                lambda: post(on, call(11, "mut__slow", {"seconds": 20}), k, sid)
            )
            got["slow"] = replies(r)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            with anyio.fail_after(10):
                while on.lane is not None and (sid, 11) not in on.lane._in_flight:
                    await anyio.sleep(0.01)
            # another principal cannot cancel it: its session id is refused before the lane
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 11}}
            assert post(on, cancel, on.keys.other_user, sid).status_code == 404
            await anyio.sleep(0.2)
            assert on.lane is not None and (sid, 11) in on.lane._in_flight
            r = await anyio.to_thread.run_sync(lambda: post(on, cancel, k, sid))
            got["cancel_status"] = r.status_code

    anyio.run(main)
    assert got["cancel_status"] == 202
    [reply] = got["slow"]  # SSE: progress events first, none after the answer
    assert reply["id"] == 11 and reply["error"]["code"] == -32800  # REQUEST_CANCELLED


def _close_during_a_slow_call(gw: Gw, how: str) -> tuple[Any, ...]:
    """A slow call, then its session closed: by the client (DELETE) or by the gateway (its
    API key revoked: the sweep closes the key's sessions)."""
    k, rec = gw.keys.store.create(f"dave-{how}", ("admin", "developer"))
    sid = open_session(gw, k)
    got: dict[str, Any] = {}

    def count(what: str) -> int:
        return gw.record.read_text().count(what) if gw.record.exists() else 0

    started, cancelled = count('"slow"'), count("slow_cancelled")

    async def main() -> None:
        async def slow() -> None:
            r = await anyio.to_thread.run_sync(
                lambda: post(gw, call(12, "mut__slow", {"seconds": 20}), k, sid)
            )
            got["slow"] = answer(r, sid)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            with anyio.fail_after(10):  # the call reached the upstream
                while count('"slow"') == started:
                    await anyio.sleep(0.02)
            if how == "delete":
                h = {**HEADERS, "Authorization": f"Bearer {k}", "mcp-session-id": sid}
                r = await anyio.to_thread.run_sync(lambda: httpx.delete(gw.run.mcp, headers=h, timeout=10))
                assert r.status_code == 200
            else:
                assert gw.keys.store.revoke(rec.id)
            with anyio.fail_after(10):  # the gateway cancelled the upstream call
                while count("slow_cancelled") == cancelled:
                    await anyio.sleep(0.02)

    anyio.run(main)
    return tuple(got["slow"])


@pytest.mark.parametrize("how", ["delete", "revoke"])
def test_a_session_closed_during_a_lane_call_ends_it_as_the_sdk_does(gws: tuple[Gw, Gw], how: str) -> None:
    on, off = gws
    before = on.taken
    got_on = _close_during_a_slow_call(on, how)
    assert on.taken - before == 1
    got_off = _close_during_a_slow_call(off, how)
    if on.mode == "sse":  # the progress events sent before the close: as many as it took
        got_on, got_off = _no_progress(got_on), _no_progress(got_off)
    assert got_on == got_off
    if on.mode == "json":
        assert got_on[0] == 500 and got_on[2]["error"]["code"] == types.INTERNAL_ERROR
    else:  # the session's streams closed: the stream ends, no answer
        assert got_on[0] == 200 and got_on[2] == []


def _no_progress(got: tuple[Any, ...]) -> tuple[Any, ...]:
    events = [e for e in got[2] if e.get("data", {}).get("method") != "notifications/progress"]
    return (*got[:2], events)


CANCEL_REUSED = [
    call(12, "mut__slow", {"seconds": 5}),
    call(13, "mut__slow", {"seconds": 5}, _meta={"x-note": "sdk"}),
]


def _cancelled_then_reused(gw: Gw, first: dict[str, Any]) -> dict[str, Any]:
    """A slow call cancelled while it runs and its id reused at once (cancel and reuse posted
    back to back), then reused again once the first POST has ended (its request settled)."""
    k = gw.keys.admin
    sid = open_session(gw, k)
    rid = first["id"]
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}}

    def cancel_and_reuse() -> tuple[int, httpx.Response]:
        status = post(gw, cancel, k, sid).status_code
        return status, post(gw, call(rid, ECHO, {"message": "second"}), k, sid)

    got, (status, r) = _while_first_at_upstream(gw, first, k, sid, cancel_and_reuse)
    got["cancel"] = status
    got["second"] = (r.status_code, replies(r))
    got["third"] = replies(post(gw, call(rid, ECHO, {"message": "third"}), k, sid))
    return got


def test_a_cancelled_call_never_answers_a_reuse_of_its_id(gws: tuple[Gw, Gw]) -> None:
    """MCP: the receiver of a cancel should not answer the cancelled request (the 2025-era wire
    ends its POST with REQUEST_CANCELLED), and a requestor must not reuse an id. A cancel then
    a reuse of its id at once: the reuse is refused (Invalid Request, HTTP 400) while the
    cancelled call has not settled, or served with its own answer; the cancelled POST never
    carries the reuse's answer, nor the reuse's the cancelled call's. Once the cancelled POST
    has ended the id is free. Through the lane and the SDK alike, SSE and JSON."""
    for gw in gws:
        for first in CANCEL_REUSED:
            got = _cancelled_then_reused(gw, first)
            assert got["cancel"] == 202
            firsts = [m for m in got["first"] if "id" in m]
            assert [(m["id"], m["error"]["code"]) for m in firsts] == [(first["id"], -32800)], (
                got
            )  # REQUEST_CANCELLED
            status, seconds = got["second"]
            [second] = seconds
            assert second["id"] == first["id"], got
            if status == 400:
                assert second["error"]["code"] == types.INVALID_REQUEST, got
            else:
                assert (status, second["result"]["content"][0]["text"]) == (200, "Echo: second"), got
            assert [m["result"]["content"][0]["text"] for m in got["third"] if "id" in m] == ["Echo: third"]


OLD_ERA = {"mcp-protocol-version": "2025-03-26"}  # batches were still MCP then


def _batch_beside_a_call_in_flight(gw: Gw) -> tuple[list[dict[str, Any]], httpx.Response]:
    """A 2025-03-26 session: a slow call of id 20, and while it runs a batch of a call of 20
    and two of 21. The slow call's replies and the batch's answer."""
    k = gw.keys.admin
    r = post(gw, {**INIT, "params": {**INIT["params"], "protocolVersion": "2025-03-26"}}, k)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    assert post(gw, INITIALIZED, k, sid, **OLD_ERA).status_code == 202
    batch = [call(20, "mut__echo", {"message": f"b{i}"}) for i in (1, 2, 3)]
    batch[1]["id"] = batch[2]["id"] = 21
    got: dict[str, Any] = {}

    def slow_calls() -> int:
        return gw.record.read_text().count('"slow"') if gw.record.exists() else 0

    async def main() -> None:
        async def slow() -> None:
            slow_call = call(20, "mut__slow", {"seconds": 1.0})
            got["slow"] = replies(
                await anyio.to_thread.run_sync(lambda: post(gw, slow_call, k, sid, **OLD_ERA))
            )

        before = slow_calls()
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            with anyio.fail_after(10):
                while slow_calls() == before:
                    await anyio.sleep(0.01)
            got["batch"] = await anyio.to_thread.run_sync(lambda: post(gw, batch, k, sid, **OLD_ERA))

    anyio.run(main)
    return got["slow"], got["batch"]


def test_a_batch_is_refused_whole_duplicate_and_in_flight_ids_included(gws: tuple[Gw, Gw]) -> None:
    """JSON-RPC batches (arrays; MCP allowed them before 2025-06-18) are not served by the SDK's
    streamable-HTTP transport: the whole POST is refused (HTTP 400, a JSON-RPC error without an
    id; the SDK's code, Invalid Params) and no element runs, so two requests of one id, or one
    reusing an id in flight, never get answers the client cannot tell apart. Checked in a
    2025-03-26 session, on the lane and the SDK, while a call of one of the ids is in flight."""
    for gw in gws:
        slow, r = _batch_beside_a_call_in_flight(gw)
        assert r.status_code == 400, (gw.mode, r.text)
        [error] = replies(r)
        assert error.get("id") is None and error["error"]["code"] == types.INVALID_PARAMS, error
        assert [m["result"]["content"][0]["text"] for m in slow if "id" in m] == ["done"]
        assert not any(f'"b{i}"' in gw.record.read_text() for i in (1, 2, 3))
