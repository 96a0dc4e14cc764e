"""A minimal stdio MCP server in the standard library only (as ``probe_server.py``) that is
slow to start, for the start-gate tests (tests/upstream/test_start_gate.py):

    python slow_start_server.py LOG NAME DELAY_S

Appends ``NAME start <wall time>`` to LOG as soon as it runs, sleeps DELAY_S (a heavy
import, say), then serves one tool, ``ping``. No SDK import: its own start-up time would
vary with the machine's load more than the delay the tests reason about.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

log, name, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(log, "a") as f:
    f.write(f"{name} start {time.time()}\n")
time.sleep(delay)

TOOL = {"name": "ping", "description": "Answer pong.", "inputSchema": {"type": "object", "properties": {}}}


def answer(msg: dict[str, Any]) -> dict[str, Any] | None:
    method, mid = msg.get("method"), msg.get("id")
    if mid is None:
        return None  # a notification
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": f"slow-{name}", "version": "1"},
        }
    elif method == "tools/list":
        result = {"tools": [TOOL]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "pong"}], "isError": False}
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
