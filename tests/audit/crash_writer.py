"""Helper process for test_crash.py (not a test): writes events under load until killed.

Each acknowledged event is printed as ``<seq> <id-marker>`` and flushed, so the parent knows
exactly which events the log promised to keep. Usage: crash_writer.py DB KEY
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from gateway.audit import AuditLog


async def worker(log: AuditLog, w: int) -> None:
    n = 0
    while True:
        n += 1
        marker = f"w{w}-{n}"
        seq = await log.record("tool.call", {"marker": marker, "pad": "x" * 200}, principal=f"p{w}")
        sys.stdout.write(f"{seq} {marker}\n")
        sys.stdout.flush()


async def main() -> None:
    log = AuditLog(Path(sys.argv[1]), Path(sys.argv[2]), checkpoint_every=50, batch_max=64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*(worker(log, w) for w in range(16)))


if __name__ == "__main__":
    asyncio.run(main())
