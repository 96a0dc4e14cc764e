"""A raw JSON-lines MCP server (no SDK) whose answers to ``tools/call`` a test chooses.

The argument ``mode`` of the tool ``t`` picks the answer:
- ``ok``: the normal result (``text`` = the ``message`` argument);
- ``stray``: first a response to an id nobody asked (``id + 1``), then the real one;
- ``twice``: the real response, then a second response to the same id with other content;
- ``both``: a "response" carrying both ``result`` and ``error`` (malformed JSON-RPC);
- ``error``: a JSON-RPC error -32602 with data;
- ``big_error``: a JSON-RPC error whose message quotes the ``message`` argument and ``$UPSTREAM_KEY``,
  then 1 MB of ``x``;
- ``progress``: two progress notifications on the request's token, then the result;
- ``string_id``: the response's id as a string (``"7"`` for 7);
- ``batch``: the response wrapped in a JSON array (a batch; no MCP revision the gateway speaks has them);
- ``notify``: first a notification carrying the request's id (``notifications/message`` with ``id``
  in its params and at the top), then the real response;
- ``silent``: no answer (the caller times out or cancels);
- ``deep``: a result whose ``structuredContent`` nests lists ``message`` levels deep (valid JSON);
- ``die``: exits mid-call;
- ``given``: the ``message`` argument is the whole result; ``given_error``: the whole JSON-RPC error;
- ``progress_given``: one progress notification whose message is the ``message`` argument, then
  the result; ``log_given``: the same with a log notification (``notifications/message``) whose
  data is the ``message`` argument.
With ``$RAW_EXTRAS`` set it also offers the resource ``raw://r`` and the prompt ``p``, whose
results are ``$RAW_READ_RESULT`` / ``$RAW_PROMPT_RESULT`` (JSON), and answers ``completion/complete``
with ``$RAW_COMPLETE_RESULT``.
With ``$RAW_INIT_ERROR_BYTES`` set it refuses ``initialize`` with an error that long (after
quoting ``$UPSTREAM_KEY``). Every line received is appended to ``$RECORD_FILE``, so a test can see what the gateway sent
(cancellations included).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

RECORD = os.environ.get("RECORD_FILE")
TOOL = {
    "name": "t",
    "description": "Answers as the mode argument says.",
    "inputSchema": {"type": "object", "properties": {"mode": {"type": "string"}, "message": {}}},
}


EXTRAS = bool(os.environ.get("RAW_EXTRAS"))
CAPABILITIES: dict[str, Any] = {
    "tools": {},
    **({"resources": {}, "prompts": {}, "completions": {}} if EXTRAS else {}),
}
LISTS: dict[str, dict[str, Any]] = {
    "resources/list": {"resources": [{"uri": "raw://r", "name": "r"}]},
    "resources/templates/list": {"resourceTemplates": []},
    "prompts/list": {"prompts": [{"name": "p", "description": "A prompt."}]},
}
EXTRA_RESULTS = {
    "resources/read": "RAW_READ_RESULT",
    "prompts/get": "RAW_PROMPT_RESULT",
    "completion/complete": "RAW_COMPLETE_RESULT",
}


def send(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def result(rid: object, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}]}}


def main() -> None:
    for line in sys.stdin:
        if RECORD:
            with open(RECORD, "a", encoding="utf-8") as f:
                f.write(line if line.endswith("\n") else line + "\n")
        msg = json.loads(line)
        rid, method = msg.get("id"), msg.get("method")
        if method == "initialize" and os.environ.get("RAW_INIT_ERROR_BYTES"):
            key = os.environ.get("UPSTREAM_KEY", "-")
            message = f"no (key {key}): " + "x" * int(os.environ["RAW_INIT_ERROR_BYTES"])
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": message}})
        elif method == "initialize":
            send(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "result": {
                        "protocolVersion": msg["params"]["protocolVersion"],
                        "capabilities": CAPABILITIES,
                        "serverInfo": {"name": "raw", "version": "1"},
                    },
                }
            )
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [TOOL]}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": rid, "result": {}})
        elif EXTRAS and method in LISTS:
            send({"jsonrpc": "2.0", "id": rid, "result": LISTS[method]})
        elif EXTRAS and method in EXTRA_RESULTS:
            send({"jsonrpc": "2.0", "id": rid, "result": json.loads(os.environ[EXTRA_RESULTS[method]])})
        elif method == "tools/call":
            args = msg["params"].get("arguments") or {}
            mode, text = args.get("mode", "ok"), json.dumps(args.get("message"))
            token = (msg["params"].get("_meta") or {}).get("progressToken")
            if mode == "stray":
                send(result(rid + 1 if isinstance(rid, int) else "x", "stray"))
                send(result(rid, text))
            elif mode == "twice":
                send(result(rid, text))
                send(result(rid, "second"))
            elif mode == "both":
                send(
                    {
                        "jsonrpc": "2.0",
                        "id": rid,
                        "result": {"content": []},
                        "error": {"code": 1, "message": "x"},
                    }
                )
            elif mode == "error":
                send(
                    {
                        "jsonrpc": "2.0",
                        "id": rid,
                        "error": {"code": -32602, "message": "bad", "data": {"k": 1}},
                    }
                )
            elif mode == "big_error":
                key = os.environ.get("UPSTREAM_KEY", "-")  # its own credential, as a failed login might say
                message = f"cannot use {args.get('message')} (key {key}): " + "x" * 1_000_000
                send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": message}})
            elif mode == "progress":
                for i in (1, 2):
                    send(
                        {
                            "jsonrpc": "2.0",
                            "method": "notifications/progress",
                            "params": {
                                "progressToken": token,
                                "progress": i,
                                "total": 2,
                                "message": f"step {i}",
                            },
                        }
                    )
                send(result(rid, text))
            elif mode == "string_id":
                send(result(str(rid), text))
            elif mode == "batch":
                sys.stdout.write(json.dumps([result(rid, text)]) + "\n")
                sys.stdout.flush()
            elif mode == "notify":
                send(
                    {
                        "jsonrpc": "2.0",
                        "id": rid,
                        "method": "notifications/message",
                        "params": {"level": "info", "data": "not an answer", "id": rid},
                    }
                )
                send(result(rid, text))
            elif mode == "deep":
                n = int(args.get("message") or 900)
                body = '{"content": [], "structuredContent": {"x": ' + "[" * n + "]" * n + "}}"
                sys.stdout.write(
                    '{"jsonrpc": "2.0", "id": ' + json.dumps(rid) + ', "result": ' + body + "}\n"
                )
                sys.stdout.flush()
            elif mode == "long_key":  # structuredContent with one key of N characters
                long = {"k" * int(args.get("message") or 3_000_000): 1}
                send({"jsonrpc": "2.0", "id": rid, "result": {"content": [], "structuredContent": long}})
            elif mode == "die":
                sys.exit(3)
            elif mode == "given":
                send({"jsonrpc": "2.0", "id": rid, "result": args.get("message")})
            elif mode == "given_error":
                send({"jsonrpc": "2.0", "id": rid, "error": args.get("message")})
            elif mode == "progress_given":
                note = {"progressToken": token, "progress": 1, "message": args.get("message")}
                send({"jsonrpc": "2.0", "method": "notifications/progress", "params": note})
                send(result(rid, "done"))
            elif mode == "log_given":
                note = {"level": "info", "logger": "raw", "data": args.get("message")}
                send({"jsonrpc": "2.0", "method": "notifications/message", "params": note})
                time.sleep(0.5)  # working on: the log line arrives while the call is in flight
                send(result(rid, "done"))
            elif mode != "silent":
                send(result(rid, text))
        elif rid is not None and method is not None:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}})


if __name__ == "__main__":
    main()
