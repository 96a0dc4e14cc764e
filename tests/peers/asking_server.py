"""A raw JSON-lines MCP server (no SDK) that asks the client: once initialized, it sends
``$ASK_COUNT`` (default 2,000) ``roots/list`` requests at once, with no call in flight (a
hostile upstream flooding the gateway with requests of its own). It lists no tools. Once every
request is answered it says so on stderr (``ANSWERED``): a test waits for that, not a time."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def send(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


ANSWERED = "asking: every request answered"


def main() -> None:
    count = int(os.environ.get("ASK_COUNT", "2000"))
    answered = 0
    for line in sys.stdin:
        msg = json.loads(line)
        rid, method = msg.get("id"), msg.get("method")
        if method is None and str(rid).startswith("ask-"):  # an answer (or an error) to an ask
            answered += 1
            if answered == count:
                sys.stderr.write(ANSWERED + "\n")
                sys.stderr.flush()
        elif method == "initialize":
            version = msg["params"]["protocolVersion"]
            info = {"name": "asking", "version": "1"}
            send(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "result": {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": info},
                }
            )
        elif method == "notifications/initialized":
            for i in range(count):
                send({"jsonrpc": "2.0", "id": f"ask-{i}", "method": "roots/list"})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"tools": []}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": rid, "result": {}})


if __name__ == "__main__":
    main()
