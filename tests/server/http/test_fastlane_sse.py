"""The HTTP fast lane in SSE mode (the default): resumability and routing under concurrency.

The lane-on and lane-off gateways of ``test_fastlane`` (SSE answers). A laned answer goes
through the session's router into the event store like the SDK's, so a client that lost its
stream resumes it with ``Last-Event-ID`` (GET) and gets the answer, whether the call was still
running (the resumed stream is fed live) or already answered (replayed, with the event id the
first stream carried); and many sessions calling at once each get their own answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from tests.server.http.test_fastlane import (
    ECHO,
    HEADERS,
    INIT,
    INITIALIZED,
    Gw,
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
    client: httpx.Client, gw: Gw, key: str, sid: str, last: str, rid: int
) -> dict[str, Any]:
    """GET with ``Last-Event-ID`` until the answer to ``rid`` arrives, as the SDK client
    resumes: a resumed stream that ends first is resumed again from its last event. A resumed
    stream stays open after its replay: one silent for 10 s fails the test (no answer came)."""
    for _ in range(5):
        h = _headers(key, sid, **{"Last-Event-ID": last, "Accept": "text/event-stream"})
        with client.stream("GET", gw.run.mcp, headers=h, timeout=10) as r:
            assert r.status_code == 200
            for event in _read_events(r):
                last = event.get("id", last)
                data = event.get("data")
                if isinstance(data, dict) and data.get("id") == rid:
                    return {"event_id": event["id"], **data}
    raise AssertionError("no answer on the resumed streams")


def _lost_stream_then_resumed(gw: Gw, seconds: float) -> tuple[dict[str, Any], str]:
    """A slow call whose POST stream the client drops after the priming event; the answer
    comes on a resumed stream. Returns it and the priming event's id."""
    k = gw.keys.admin
    with httpx.Client(timeout=30) as client:
        sid = _session(client, gw, k)
        body = json.dumps(call(21, "mut__slow", {"seconds": seconds}))
        with client.stream("POST", gw.run.mcp, content=body, headers=_headers(k, sid)) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
            priming = next(_read_events(r))
            if seconds and gw.lane is not None:  # a slow call gets its priming event before its answer
                assert any(key == (sid, 21) for key in gw.lane._in_flight)
        assert priming["data"] == "" and priming["retry"] == "1000"
        return _resume_until_answer(client, gw, k, sid, priming["id"], 21), priming["id"]


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
