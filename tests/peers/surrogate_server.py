"""A raw JSON-lines MCP server (no SDK) that writes the JSON escape ``\\ud800`` (a lone
surrogate once parsed: text that is not valid UTF-8) where ``$SURROGATE_IN`` says:
- ``result``: in the text of every ``tools/call`` result;
- ``name``: in the name of a second tool (the tool ``t`` stays clean);
- ``description``: in the description of a second tool;
- ``error``: in the message of a JSON-RPC error answering ``tools/call``;
- ``notification``: in a log notification sent before each ``tools/call`` result.
The tool ``t`` otherwise echoes its ``message`` argument.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

WHERE = os.environ.get("SURROGATE_IN", "")
BAD = "x\ud800"  # json.dumps writes it as the escape "x\\ud800" (ASCII)
TOOL = {"name": "t", "description": "echo", "inputSchema": {"type": "object"}}


def send(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def tools() -> list[dict[str, Any]]:
    if WHERE == "name":
        return [TOOL, {**TOOL, "name": BAD}]
    if WHERE == "description":
        return [TOOL, {**TOOL, "name": "d", "description": BAD}]
    return [TOOL]


def answer(rid: object, method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "initialize":
        return {
            "protocolVersion": params["protocolVersion"],
            "capabilities": {"tools": {}, "logging": {}},
            "serverInfo": {"name": "surrogate", "version": "1"},
        }
    if method == "tools/list":
        return {"tools": tools()}
    if method == "tools/call":
        if WHERE == "notification":
            send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": "info", "data": BAD},
                }
            )
        text = BAD if WHERE == "result" else str((params.get("arguments") or {}).get("message"))
        return {"content": [{"type": "text", "text": text}]}
    return {}


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        rid, method = msg.get("id"), msg.get("method")
        if rid is None or method is None:
            continue
        if method == "tools/call" and WHERE == "error":
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": BAD}})
            continue
        send({"jsonrpc": "2.0", "id": rid, "result": answer(rid, method, msg.get("params") or {})})


if __name__ == "__main__":
    main()
