"""A standard-library MCP server (``stdlib_mcp``) whose tool ``spawn(n)`` starts up to ``n``
threads (each counts against RLIMIT_NPROC as a process does) and answers how many started
before the system refused one; they end with the call. For tests/upstream/test_runas.py."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: run as a script
from tests.peers.stdlib_mcp import serve


def spawn(arguments: dict[str, Any]) -> str:
    stop, made = threading.Event(), 0
    try:
        for _ in range(int(arguments.get("n", 0))):
            threading.Thread(target=stop.wait, daemon=True).start()
            made += 1
    except RuntimeError:  # "can't start new thread": the limit
        pass
    stop.set()
    return str(made)


serve(
    "forker", {"name": "spawn", "description": "Start n threads.", "inputSchema": {"type": "object"}}, spawn
)
