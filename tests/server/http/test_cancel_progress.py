"""Progress of a cancelled call on the HTTP front (SSE mode, lane on and off): once the gateway
has read the client's cancel, no progress of the call's token reaches the client, on the call's
own stream nor on the session's GET stream, while the upstream (server-everything's long-running
operation, which ignores the cancel) goes on reporting. MCP: progress references only
operations in progress."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.server.http.test_fastlane import ECHO, HEADERS, Gw, call, gateways, open_session, post, replies

LONG = "everything__trigger-long-running-operation"


@pytest.fixture(scope="module")
def sse_gws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gw, Gw]]:
    with gateways(tmp_path_factory, "sse") as pair:
        yield pair


class Listener:
    """Reads one streaming answer's SSE messages in a thread, in arrival order."""

    def __init__(self, method: str, gw: Gw, key: str, sid: str, body: Any = None) -> None:
        self.got: list[dict[str, Any]] = []
        h = {**HEADERS, "Authorization": f"Bearer {key}", "mcp-session-id": sid}
        if method == "GET":
            h["Accept"] = "text/event-stream"
        content = json.dumps(body).encode() if body is not None else None
        self._args = (method, gw.run.mcp, h, content)
        self._client = httpx.Client(timeout=60)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        method, url, headers, content = self._args
        try:
            with self._client.stream(method, url, headers=headers, content=content) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and line[6:].strip():
                        self.got.append(json.loads(line[6:]))
        except httpx.HTTPError:
            return  # closed by the test

    def close(self) -> None:
        self._client.close()
        self._thread.join(10)


def _progress(got: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    return [
        m
        for m in got
        if m.get("method") == "notifications/progress" and m["params"]["progressToken"] == token
    ]


@pytest.mark.parametrize("lane", [True, False])
def test_no_progress_of_a_cancelled_call_once_the_cancel_is_read(sse_gws: tuple[Gw, Gw], lane: bool) -> None:
    gw = sse_gws[0 if lane else 1]
    k = gw.keys.admin
    sid = open_session(gw, k)
    listen = Listener("GET", gw, k, sid)
    first = Listener(
        "POST", gw, k, sid, call(95, LONG, {"duration": 10, "steps": 100}, _meta={"progressToken": "p95"})
    )
    try:
        end = time.monotonic() + 60
        while len(_progress(first.got, "p95")) < 2:
            assert time.monotonic() < end, first.got
            time.sleep(0.05)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 95}}
        assert post(gw, cancel, k, sid).status_code == 202
        # the session's messages are read in order: once a later request is answered, the
        # cancel has been read on either path
        assert replies(post(gw, call("sentinel", ECHO, {"message": "s"}), k, sid))[0]["id"] == "sentinel"
        seen = (len(first.got), len(listen.got))
        time.sleep(1.0)  # ten of the upstream's steps
        assert replies(post(gw, call("sentinel-2", ECHO, {"message": "s"}), k, sid))[0]["id"] == "sentinel-2"
        after = first.got[seen[0] :] + listen.got[seen[1] :]
        assert _progress(after, "p95") == [], after
        assert not any("result" in m and m.get("id") == 95 for m in first.got)  # nor its result
    finally:
        first.close()
        listen.close()
