"""A minimal stdio MCP server (standard library only, as ``slow_start_server.py``) whose stderr
attacks the gateway's log, for tests/upstream/test_stderr.py:

    python noisy_stderr_server.py BIG_MB SHORT_LINES

Before it serves, it writes to stderr: a line that would rewrite the operator's terminal and
forge a record (an escape sequence, a carriage return, a line separator), one line of BIG_MB
megabytes without a newline until its end, then SHORT_LINES short lines at once; after a
pause, ``noisy: quiet now``. Then it serves one tool, ``ping``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

big_mb, short_lines = int(sys.argv[1]), int(sys.argv[2])
err = sys.stderr.buffer
err.write(b"noisy: before\x1b[2K\r2026-01-01 00:00:00,000 CRITICAL symbi.audit: FORGED\xe2\x80\xa8after\n")
chunk = b"A" * (1 << 20)
for _ in range(big_mb):
    err.write(chunk)
err.write(b"\n")
for i in range(short_lines):
    err.write(b"noisy line %d\n" % i)
err.flush()
time.sleep(1.5)  # the pace refills: the next line is logged, and the count of those that were not
err.write(b"noisy: quiet now\n")
err.flush()

TOOL = {"name": "ping", "description": "Answer pong.", "inputSchema": {"type": "object", "properties": {}}}


def answer(msg: dict[str, Any]) -> dict[str, Any] | None:
    method, mid = msg.get("method"), msg.get("id")
    if mid is None:
        return None  # a notification
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": msg["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "noisy", "version": "1"},
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
