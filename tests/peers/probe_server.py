"""A minimal stdio MCP server in the standard library only (it runs on /usr/bin/python3 inside
any sandbox tier): one tool, ``probe(paths)``, reports for each path whether it exists inside
the sandbox, its entries (folders) or its first bytes (files), or the error that stopped it,
and the sandbox's mount points (``mounts``)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def mount_points() -> list[str]:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return [line.split()[4] for line in f if len(line.split()) > 4]
    except OSError:
        return []


def probe(paths: list[str]) -> dict[str, object]:
    out: dict[str, object] = {"mounts": mount_points()}
    for p in paths:
        try:
            if not os.path.lexists(p):
                out[p] = "absent"
            elif os.path.isdir(p):
                out[p] = {"entries": sorted(os.listdir(p))}
            else:
                with open(p, "rb") as f:
                    out[p] = {"bytes": f.read(64).decode("utf-8", "replace")}
        except OSError as e:
            out[p] = f"error: {type(e).__name__}"
    return out


TOOL = {
    "name": "probe",
    "description": "What the sandbox sees at these paths.",
    "inputSchema": {
        "type": "object",
        "properties": {"paths": {"type": "array", "items": {"type": "string"}}},
        "required": ["paths"],
    },
}


def answer(msg: dict[str, Any]) -> dict[str, Any] | None:
    method, mid = msg.get("method"), msg.get("id")
    if mid is None:
        return None  # a notification
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "probe", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method == "tools/call":
        report = probe(msg["params"].get("arguments", {}).get("paths", []))
        result = {"content": [{"type": "text", "text": json.dumps(report)}], "isError": False}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": f"no method {method}"}}
    return {"jsonrpc": "2.0", "id": mid, "result": result}


for line in sys.stdin:
    if line.strip():
        reply = answer(json.loads(line))
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
