"""The JSON-lines MCP loop of the standard-library-only peers (``slow_start_server.py``,
``noisy_stderr_server.py``): no SDK import, so their start-up time is their own."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

PING_TOOL = {
    "name": "ping",
    "description": "Answer pong.",
    "inputSchema": {"type": "object", "properties": {}},
}


def pong(arguments: dict[str, Any]) -> str:
    return "pong"


def answer(
    name: str, msg: dict[str, Any], tool: dict[str, Any], call: Callable[[dict[str, Any]], str]
) -> dict[str, Any] | None:
    method, mid = msg.get("method"), msg.get("id")
    if mid is None:
        return None  # a notification
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": name, "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": [tool]}
    elif method == "tools/call":
        text = call(msg["params"].get("arguments") or {})
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"no method {method}"}}
    return {"jsonrpc": "2.0", "id": mid, "result": result}


def serve(name: str, tool: dict[str, Any] = PING_TOOL, call: Callable[[dict[str, Any]], str] = pong) -> None:
    """Answer JSON-RPC lines on stdin until it closes: one tool, ``tool``, answered by ``call``."""
    for line in sys.stdin:
        if line.strip():
            reply = answer(name, json.loads(line), tool, call)
            if reply is not None:
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()
