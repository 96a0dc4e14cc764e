"""The HTTP fast lane in SSE mode (the default): resumability and routing under concurrency.

The lane-on and lane-off gateways of ``test_fastlane`` (SSE answers). A laned answer goes
through the session's router into the event store like the SDK's, so a client that lost its
stream resumes it with ``Last-Event-ID`` (GET) and gets the answer, whether the call was still
running (the resumed stream is fed live) or already answered (replayed, with the event id the
first stream carried); and many sessions calling at once each get their own answers.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sse_starlette import EventSourceResponse

from gateway.server import httpsse
from tests.conftest import SYMBI, free_port, symbi_env
from tests.server.http.conftest import make_keys
from tests.server.http.test_fastlane import (
    ECHO,
    HEADERS,
    INIT,
    INITIALIZED,
    Gw,
    _config,
    call,
    gateways,
    replies,
    sse_events,
)

RESUMABLE = "2025-11-25"  # the first era with priming events (resumable POST streams)


@pytest.fixture(scope="module")
def sse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gw, Gw]]:
    with gateways(tmp_path_factory, "sse") as pair:
        yield pair


def _headers(key: str, sid: str | None = None, **more: str) -> dict[str, str]:
    h = {**HEADERS, "Authorization": f"Bearer {key}", "mcp-protocol-version": RESUMABLE, **more}
    if sid is not None:
        h["mcp-session-id"] = sid
    return h


def _session(client: httpx.Client, gw: Gw, key: str) -> str:
    r = client.post(gw.run.mcp, content=json.dumps(INIT), headers=_headers(key))
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    assert (
        client.post(gw.run.mcp, content=json.dumps(INITIALIZED), headers=_headers(key, sid)).status_code
        == 202
    )
    return sid


def _read_events(r: httpx.Response) -> Iterator[dict[str, Any]]:
    """Events as they arrive on an open stream (ids kept)."""
    buf = ""
    for text in r.iter_text():
        buf += text
        while "\r\n\r\n" in buf:
            block, buf = buf.split("\r\n\r\n", 1)
            yield from sse_events(block + "\r\n\r\n", neutral_ids=False)


def _resume_until_answer(
    client: httpx.Client,
    gw: Gw,
    key: str,
    sid: str,
    last: str,
    rid: int,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """GET with ``Last-Event-ID`` until the answer to ``rid`` arrives, as the SDK client
    resumes: a resumed stream that ends first is resumed again from its last event. A resumed
    stream stays open after its replay: one silent for 10 s fails the test (no answer came).
    ``seen`` collects every event the resumed streams carried, in order."""
    for _ in range(5):
        h = _headers(key, sid, **{"Last-Event-ID": last, "Accept": "text/event-stream"})
        with client.stream("GET", gw.run.mcp, headers=h, timeout=10) as r:
            assert r.status_code == 200
            for event in _read_events(r):
                if seen is not None:
                    seen.append(event)
                last = event.get("id", last)
                data = event.get("data")
                if isinstance(data, dict) and data.get("id") == rid:
                    return {"event_id": event["id"], **data}
    raise AssertionError("no answer on the resumed streams")


def _lost_stream_then_resumed(
    gw: Gw, seconds: float, progress: bool = False, seen: list[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], str]:
    """A slow call whose POST stream the client drops after the priming event; the answer
    comes on a resumed stream. Returns it and the priming event's id. ``progress``: the call
    reports progress (every 0.1 s) on its stream meanwhile."""
    k = gw.keys.admin
    with httpx.Client(timeout=30) as client:
        sid = _session(client, gw, k)
        meta = {"_meta": {"progressToken": 7}} if progress else {}
        body = json.dumps(call(21, "mut__slow", {"seconds": seconds}, **meta))
        with client.stream("POST", gw.run.mcp, content=body, headers=_headers(k, sid)) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
            priming = next(_read_events(r))
            if seconds and gw.lane is not None:  # a slow call gets its priming event before its answer
                assert any(key == (sid, 21) for key in gw.lane._in_flight)
        assert priming["data"] == "" and priming["retry"] == "1000"
        return _resume_until_answer(client, gw, k, sid, priming["id"], 21, seen), priming["id"]


@pytest.mark.parametrize("seconds", [2.0, 0.0])
def test_a_lost_stream_is_resumed_with_its_answer(sse: tuple[Gw, Gw], seconds: float) -> None:
    """2 s: the call still runs when the client comes back (the resumed stream is fed live);
    0 s: it was answered already (replayed from the event store)."""
    on, off = sse
    before = on.taken
    got_on, priming_on = _lost_stream_then_resumed(on, seconds)
    assert on.taken - before == 1
    got_off, _ = _lost_stream_then_resumed(off, seconds)
    for got in (got_on, got_off):
        assert got["id"] == 21 and got["result"]["content"][0]["text"] == "done"
        assert got["event_id"] != priming_on
    assert {k: v for k, v in got_on.items() if k != "event_id"} == {
        k: v for k, v in got_off.items() if k != "event_id"
    }


def test_a_lost_stream_with_progress_is_resumed_with_its_progress_then_its_answer(sse: tuple[Gw, Gw]) -> None:
    """A call that reports progress has its events routed as the SDK routes them (the lane's
    answer follows them through the router): the client drops the stream, resumes it, and gets
    the rest of the progress and then the answer, none after it (lane on and off alike)."""
    on, off = sse
    before = on.taken
    for gw in (on, off):
        seen: list[dict[str, Any]] = []
        got, _ = _lost_stream_then_resumed(gw, 1.0, progress=True, seen=seen)
        assert got["id"] == 21 and got["result"]["content"][0]["text"] == "done"
        messages = [e["data"] for e in seen if isinstance(e.get("data"), dict)]
        assert messages[-1]["id"] == 21
        assert messages[:-1] and all(m.get("method") == "notifications/progress" for m in messages[:-1])
    assert on.taken - before == 1


def test_a_replayed_stream_with_progress_keeps_its_order_and_event_ids(sse: tuple[Gw, Gw]) -> None:
    """Progress, then the answer, each with its event id; resumed from the priming event after
    the answer, the stream replays the same events with the same ids in the same order."""
    on, off = sse
    for gw in (on, off):
        k = gw.keys.admin
        with httpx.Client(timeout=30) as client:
            sid = _session(client, gw, k)
            before = gw.taken
            body = json.dumps(call(6, "mut__slow", {"seconds": 0.3}, _meta={"progressToken": "p"}))
            r = client.post(gw.run.mcp, content=body, headers=_headers(k, sid))
            assert gw.taken - before == (1 if gw is on else 0)
            priming, *events = sse_events(r.text, neutral_ids=False)
            assert events[-1]["data"]["id"] == 6 and len(events) > 1
            assert all(e["data"]["method"] == "notifications/progress" for e in events[:-1])
            replayed: list[dict[str, Any]] = []
            _resume_until_answer(client, gw, k, sid, priming["id"], 6, replayed)
            assert [(e["id"], e["data"]) for e in replayed] == [(e["id"], e["data"]) for e in events]


def test_a_replayed_answer_carries_the_event_id_it_was_sent_with(sse: tuple[Gw, Gw]) -> None:
    on, off = sse
    for gw in (on, off):
        k = gw.keys.admin
        with httpx.Client(timeout=30) as client:
            sid = _session(client, gw, k)
            before = gw.taken
            r = client.post(gw.run.mcp, content=json.dumps(call(5)), headers=_headers(k, sid))
            assert gw.taken - before == (1 if gw is on else 0)
            priming, answer = sse_events(r.text, neutral_ids=False)
            replayed = _resume_until_answer(client, gw, k, sid, priming["id"], 5)
            assert replayed["event_id"] == answer["id"] and answer["data"]["id"] == 5
            assert {k2: v for k2, v in replayed.items() if k2 != "event_id"} == answer["data"]
            # another principal cannot resume it (its session id is refused before any replay)
            h = _headers(gw.keys.other_user, sid, **{"Last-Event-ID": priming["id"]})
            assert client.get(gw.run.mcp, headers=h).status_code == 404


def test_concurrent_sessions_each_get_their_own_answers(sse: tuple[Gw, Gw]) -> None:
    """8 sessions x 12 calls, all at once through the lane: every answer carries its call's
    id and message (0 misrouted), every call was served by the lane."""
    on, _ = sse
    k = on.keys.admin
    sessions, calls = 8, 12
    seen: list[tuple[int, int, Any]] = []

    async def main() -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one_session(n: int) -> None:
                r = await client.post(on.run.mcp, content=json.dumps(INIT), headers=_headers(k))
                sid = r.headers["mcp-session-id"]
                await client.post(on.run.mcp, content=json.dumps(INITIALIZED), headers=_headers(k, sid))
                for i in range(calls):
                    body = json.dumps(call(i, ECHO, {"message": f"s{n}-c{i}"}))
                    r = await client.post(on.run.mcp, content=body, headers=_headers(k, sid))
                    seen.append((n, i, replies(r)))

            async with anyio.create_task_group() as tg:
                for n in range(sessions):
                    tg.start_soon(one_session, n)

    before = on.taken
    anyio.run(main)
    assert on.taken - before == sessions * calls
    assert len(seen) == sessions * calls
    for n, i, msgs in seen:
        [reply] = msgs
        assert reply["id"] == i and reply["result"]["content"][0]["text"] == f"Echo: s{n}-c{i}"


PING_TEST_S = 0.8  # the keepalive interval in the ping tests (15 s in production)
PING = re.compile(r": ping - (\S+ \S+)")


@pytest.fixture
def quick_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seam: the keepalive interval is a module constant (sse-starlette's 15 s, the lane's
    ``httpsse.PING_S``); the in-process gateways get a shorter one for these tests, on both
    paths, instead of a 15 s wait per case."""
    assert httpsse.PING_S == EventSourceResponse.DEFAULT_PING_INTERVAL == 15
    monkeypatch.setattr(httpsse, "PING_S", PING_TEST_S)
    monkeypatch.setattr(EventSourceResponse, "DEFAULT_PING_INTERVAL", PING_TEST_S)


def _raw_blocks(r: httpx.Response) -> list[str]:
    """The raw SSE blocks of a whole answer, comments kept, in order."""
    body = b"".join(r.iter_raw()).decode()
    assert body.endswith("\r\n\r\n"), body
    return body.split("\r\n\r\n")[:-1]


@pytest.mark.usefixtures("quick_pings")
@pytest.mark.parametrize("progress", [False, True])
def test_a_slow_call_stream_is_pinged_every_interval(sse: tuple[Gw, Gw], progress: bool) -> None:
    """A 3 s call's stream carries a ping comment every keepalive interval, never sooner (the
    first an interval after the request at the earliest, by the ping's own time), and the
    answer last; silent (no progress: the lane's timer watch) or not (progress routed: the
    lane's client watch), lane on and off alike."""
    on, off = sse
    for gw in (on, off):
        k = gw.keys.admin
        with httpx.Client(timeout=30) as client:
            sid = _session(client, gw, k)
            meta = {"_meta": {"progressToken": 3}} if progress else {}
            body = json.dumps(call(41, "mut__slow", {"seconds": 3.0}, **meta))
            before, started = gw.taken, datetime.now(UTC)
            with client.stream("POST", gw.run.mcp, content=body, headers=_headers(k, sid)) as r:
                blocks = _raw_blocks(r)
            assert gw.taken - before == (1 if gw is on else 0)
        pings = [datetime.fromisoformat(m[1]) for b in blocks if (m := PING.fullmatch(b))]
        assert len(pings) >= 2, blocks
        gaps = [(b - a).total_seconds() for a, b in zip([started, *pings], pings, strict=False)]
        assert min(gaps) >= PING_TEST_S - 0.05, gaps  # none early (the ping's clock, not the read's)
        events = [e for b in blocks if not PING.fullmatch(b) for e in sse_events(b + "\r\n\r\n")]
        assert events[-1]["data"]["id"] == 41 and events[-1]["data"]["result"]["content"][0]["text"] == "done"
        assert not PING.fullmatch(blocks[-1])
        notes = [e for e in events[1:-1] if e["data"].get("method") == "notifications/progress"]
        assert len(notes) == len(events) - 2 and bool(notes) is progress


@pytest.mark.usefixtures("quick_pings")
def test_a_quick_call_stream_has_no_ping(sse: tuple[Gw, Gw]) -> None:
    on, off = sse
    for gw in (on, off):
        with httpx.Client(timeout=30) as client:
            sid = _session(client, gw, gw.keys.admin)
            body = json.dumps(call(42, "mut__slow", {"seconds": 0.3}))
            with client.stream("POST", gw.run.mcp, content=body, headers=_headers(gw.keys.admin, sid)) as r:
                blocks = _raw_blocks(r)
        assert not any(PING.fullmatch(b) for b in blocks), blocks


@pytest.mark.parametrize("progress", [False, True])
@pytest.mark.parametrize("lane", [True, False])
def test_the_server_stops_with_a_slow_call_in_flight(tmp_path: Path, lane: bool, progress: bool) -> None:
    """SIGTERM while a 60 s call streams: the server ends the call's stream and exits, as
    sse-starlette ends the SDK's streams, instead of waiting for the call (lane on and off; a
    silent stream and one carrying progress: the lane's timer watch and its client watch)."""
    cfg, record = _config(tmp_path, lane, "sse")
    key = make_keys(cfg).admin
    port = free_port()
    mcp = f"http://127.0.0.1:{port}/mcp"
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(
            [str(SYMBI), "serve", "--config", str(cfg), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=symbi_env(),
        )
    got: dict[str, Any] = {}
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        with httpx.Client(timeout=90) as client:
            r = client.post(mcp, content=json.dumps(INIT), headers=_headers(key))
            sid = r.headers["mcp-session-id"]
            client.post(mcp, content=json.dumps(INITIALIZED), headers=_headers(key, sid))
            meta = {"_meta": {"progressToken": 31}} if progress else {}
            body = json.dumps(call(31, "mut__slow", {"seconds": 60}, **meta))

            def slow() -> None:
                try:
                    got["replies"] = replies(client.post(mcp, content=body, headers=_headers(key, sid)))
                except httpx.RemoteProtocolError:  # the SDK's path: the stream cut mid-body
                    got["replies"] = []

            caller = threading.Thread(target=slow)
            caller.start()
            deadline = time.monotonic() + 30
            while not (record.exists() and '"slow"' in record.read_text()):  # it reached the upstream
                assert time.monotonic() < deadline, "the call never reached the upstream"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)  # raises if the server waits out the 60 s call
            caller.join(30)
        assert not caller.is_alive()
        # the stream ended (or was cut) with no answer, progress only: the call never finished
        assert all(m.get("method") == "notifications/progress" for m in got["replies"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "symbi serve exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "symbi serve not ready"
        time.sleep(0.1)
