"""A minimal stdio MCP server (standard library only, as ``slow_start_server.py``) whose stderr
attacks the gateway's log, for tests/upstream/test_stderr.py:

    python noisy_stderr_server.py BIG_MB SHORT_LINES

Before it serves, it writes to stderr: a line that would rewrite the operator's terminal and
forge a record (an escape sequence, a carriage return, a line separator), one line of BIG_MB
megabytes without a newline until its end, then SHORT_LINES short lines at once; after a
pause, ``noisy: quiet now``. Then it serves one tool, ``ping``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: run as a script
from tests.peers.stdlib_mcp import serve

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

serve("noisy")
