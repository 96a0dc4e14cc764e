"""A raw MCP server (no SDK) that writes the JSON escape ``\\ud800`` (a lone surrogate once
parsed: text that is not valid UTF-8) where ``$SURROGATE_IN`` says:
- ``result``: in the text of every ``tools/call`` result;
- ``name``: in the name of a second tool (the tool ``t`` stays clean);
- ``description``: in the description of a second tool;
- ``error``: in the message of a JSON-RPC error answering ``tools/call``;
- ``shape``: no bad text, but a ``tools/call`` answer with neither result nor error (valid
  UTF-8 the SDK still cannot parse: its own handling must stand);
- ``notification``: in a log notification sent before each ``tools/call`` result;
- ``progress``: in a progress notification's message sent before each ``tools/call`` result;
- ``sampling`` / ``elicitation`` / ``roots``: in a request of the server's own
  (``sampling/createMessage``, ``elicitation/create``, ``roots/list``) sent during each
  ``tools/call``; the call's result is then the answer the server got to it, as JSON text
  (``{"none": ...}`` when none came within ``$SURROGATE_WAIT_S``, default 10 s).
The tool ``t`` otherwise echoes its ``message`` argument; its arguments ``where`` (one of the
call-time modes above) and ``sse`` (HTTP) override the environment for that call, and ``then``
(HTTP, SSE) adds a log notification (valid text, ``after``) after the answer on the call's
stream, ``ids`` (HTTP, SSE) numbers the stream's events (``id: 1``, ...) and ``answer_id``
(HTTP, SSE) is the id the answer carries instead of the request's. The call-time
mode ``received`` answers every answer POSTed to the server so far (HTTP, a JSON list), and
``json-request`` (HTTP) answers the call with a JSON body that is the ``roots`` request above.
The tool ``ok`` always echoes.

Over stdio (JSON lines) by default; ``--http PORT`` serves streamable HTTP on 127.0.0.1
instead: answers as JSON, or as an SSE stream when ``$SURROGATE_SSE`` is set and for every mode
that sends something before the result. No session id and no GET stream, unless
``$SURROGATE_GET`` names a mode (``notification``, ``sampling``, ...): then the session gets an
id and its GET stream carries that message once, outside any call; the call-time mode
``answered`` returns the answer the server got to its own request (as above), and the call-time
mode ``get-answer`` sends the call's answer, with the escape in its text, on the GET stream (its
own POST's SSE stream stays open and empty).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WHERE = os.environ.get("SURROGATE_IN", "")
SSE = bool(os.environ.get("SURROGATE_SSE"))
ON_GET = os.environ.get("SURROGATE_GET", "")
WAIT_S = float(os.environ.get("SURROGATE_WAIT_S", "10"))
BAD = "x\ud800"  # json.dumps writes it as the escape "x\\ud800" (ASCII)
TOOL = {"name": "t", "description": "echo", "inputSchema": {"type": "object"}}
OK = {**TOOL, "name": "ok"}
STREAMED = ("notification", "progress", "sampling", "elicitation", "roots", "get-answer")  # as SSE
ASKED = "up-1"  # the id of the server's own request
_received: list[dict[str, Any]] = []  # every answer POSTed to the server (HTTP), in order
REQUESTS: dict[str, dict[str, Any]] = {
    "sampling": {
        "method": "sampling/createMessage",
        "params": {"messages": [{"role": "user", "content": {"type": "text", "text": BAD}}], "maxTokens": 5},
    },
    "elicitation": {
        "method": "elicitation/create",
        "params": {"message": BAD, "requestedSchema": {"type": "object", "properties": {}}},
    },
    "roots": {"method": "roots/list", "params": {"_meta": {"note": BAD}}},
}

Send = Callable[[dict[str, Any]], None]
Wait = Callable[[], "dict[str, Any] | None"]


def tools() -> list[dict[str, Any]]:
    if WHERE == "name":
        return [TOOL, OK, {**TOOL, "name": BAD}]
    if WHERE == "description":
        return [TOOL, OK, {**TOOL, "name": "d", "description": BAD}]
    return [TOOL, OK]


def where(params: dict[str, Any]) -> str:
    """The mode of one ``tools/call``."""
    if params.get("name") == "ok":
        return ""
    return str((params.get("arguments") or {}).get("where", WHERE))


def before_result(params: dict[str, Any], send: Send, wait: Wait) -> str | None:
    """What the server sends during a ``tools/call`` before its result; the result's text
    when the mode decides it (the answer to the server's own request)."""
    mode = where(params)
    if mode == "notification":
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": BAD}})
    elif mode == "progress":
        token = (params.get("_meta") or {}).get("progressToken", 1)
        progress = {"progressToken": token, "progress": 1, "total": 2, "message": BAD}
        send({"jsonrpc": "2.0", "method": "notifications/progress", "params": progress})
    elif mode in REQUESTS:
        send({"jsonrpc": "2.0", "id": ASKED, **REQUESTS[mode]})
    if mode == "received":
        return json.dumps(_received)
    if mode in REQUESTS or mode == "answered":
        got = wait()
        return json.dumps(got if got is not None else {"none": f"no answer in {WAIT_S:g} s"})
    return None


def unprompted(send: Send) -> None:
    """The message the GET stream carries (``$SURROGATE_GET``)."""
    if ON_GET in REQUESTS:
        send({"jsonrpc": "2.0", "id": ASKED, **REQUESTS[ON_GET]})
    elif ON_GET == "notification":
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": BAD}})
    elif ON_GET == "shape":  # valid text, not a JSON-RPC message (an id with neither method nor result)
        send({"jsonrpc": "2.0", "id": ASKED})


def answer(method: str, params: dict[str, Any], send: Send, wait: Wait) -> dict[str, Any]:
    """The whole answer (result or error, without the id) to one request."""
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}, "logging": {}},
            "serverInfo": {"name": "surrogate", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": tools()}
    elif method == "tools/call":
        if where(params) == "error":
            return {"error": {"code": -32000, "message": BAD}}
        if where(params) == "shape":
            return {}
        text = before_result(params, send, wait)
        if text is None:
            text = BAD if where(params) == "result" else str((params.get("arguments") or {}).get("message"))
        result = {"content": [{"type": "text", "text": text}]}
    elif method == "ping":
        result = {}
    else:
        return {"error": {"code": -32601, "message": "Method not found"}}
    return {"result": result}


# -- stdio -------------------------------------------------------------------------------------


def serve_stdio() -> None:
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    later: list[dict[str, Any]] = []  # what arrived while waiting for an answer

    def send(msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    def wait() -> dict[str, Any] | None:
        while True:
            try:
                line = lines.get(timeout=WAIT_S)
            except queue.Empty:
                return None
            if line is None:
                return None
            msg = json.loads(line)
            if msg.get("id") == ASKED and "method" not in msg:
                return msg  # type: ignore[no-any-return]
            later.append(msg)

    while True:
        if later:
            msg = later.pop(0)
        else:
            line = lines.get()
            if line is None:
                return
            msg = json.loads(line)
        rid, method = msg.get("id"), msg.get("method")
        if rid is not None and method is not None:
            send({"jsonrpc": "2.0", "id": rid, **answer(method, msg.get("params") or {}, send, wait)})


# -- streamable HTTP -----------------------------------------------------------------------------

_answers: dict[str, dict[str, Any]] = {}
_answered = threading.Condition()
_got_get = False  # the GET stream carries its message once
_pushed: queue.Queue[dict[str, Any]] = queue.Queue()  # what a call sends on the GET stream


def _wait_http() -> dict[str, Any] | None:
    with _answered:
        _answered.wait_for(lambda: ASKED in _answers, timeout=WAIT_S)
        return _answers.pop(ASKED, None)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _plain(self, status: int, body: bytes = b"", kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        global _got_get
        with _answered:
            first, _got_get = not _got_get, True
        if not (ON_GET and first and self.headers.get("mcp-session-id")):
            self._plain(405)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        unprompted(lambda m: self._event(m))
        while True:  # kept open: a closed GET stream is opened again, and would send it again
            self._event(_pushed.get())

    _ids: int | None = None  # the last event id of this stream, when its events carry ids

    def _event(self, m: dict[str, Any]) -> None:
        if self._ids is not None:
            self._ids += 1
            self.wfile.write(f"id: {self._ids}\n".encode())
        self.wfile.write(b"event: message\ndata: " + json.dumps(m).encode() + b"\n\n")
        self.wfile.flush()

    def do_DELETE(self) -> None:
        self._plain(200)

    def do_POST(self) -> None:
        msg = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        rid, method = msg.get("id"), msg.get("method")
        if method is None or rid is None:  # a notification, or an answer to the server's request
            if rid is not None:
                _received.append(msg)
                with _answered:
                    _answers[str(rid)] = msg
                    _answered.notify_all()
            self._plain(202)
            return
        params = msg.get("params") or {}
        self._ids = 0 if (params.get("arguments") or {}).get("ids") else None
        streamed = method == "tools/call" and (
            where(params) in STREAMED or (params.get("arguments") or {}).get("sse", SSE)
        )
        if not streamed:
            reply = {"jsonrpc": "2.0", "id": rid, **answer(method, params, lambda m: None, _wait_http)}
            if method == "tools/call" and where(params) == "json-request":
                reply = {"jsonrpc": "2.0", "id": ASKED, **REQUESTS["roots"]}  # not an answer at all
            body = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if method == "initialize" and ON_GET:
                self.send_header("Mcp-Session-Id", "s1")
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        if where(params) == "get-answer":
            _pushed.put({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": BAD}]}})
            while True:  # the answer went elsewhere: this stream stays open, empty
                time.sleep(3600)
        # answer_id: the answer carries another id than the request's (on the request's own stream)
        answer_id = (params.get("arguments") or {}).get("answer_id", rid)
        self._event({"jsonrpc": "2.0", "id": answer_id, **answer(method, params, self._event, _wait_http)})
        if (params.get("arguments") or {}).get("then"):
            self._event(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": "info", "data": "after"},
                }
            )


def serve_http(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _Handler).serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        serve_http(int(sys.argv[2]))
    else:
        serve_stdio()
