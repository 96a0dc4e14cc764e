"""A minimal stdio MCP server in the standard library only (as ``probe_server.py``) that is
slow to start, for the start-gate tests (tests/upstream/test_start_gate.py):

    python slow_start_server.py LOG NAME DELAY_S

Appends ``NAME start <wall time>`` to LOG as soon as it runs, sleeps DELAY_S (a heavy
import, say), then serves one tool, ``ping``. No SDK import: its own start-up time would
vary with the machine's load more than the delay the tests reason about.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: run as a script
from tests.peers.stdlib_mcp import serve

log, name, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(log, "a") as f:
    f.write(f"{name} start {time.time()}\n")
time.sleep(delay)

serve(f"slow-{name}")
