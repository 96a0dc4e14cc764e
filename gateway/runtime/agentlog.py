"""A hosted agent's output: ``<data_dir>/agents/NAME.log``, bounded.

The agent's stdout and stderr went straight into its log file, so an agent printing in a loop
filled the data dir, where the audit log lives: once the disk is full every audited call is
refused (``audit.on_failure = "deny"``), the whole gateway's. Now its output reaches the file
through a pipe the gateway copies: at most ``RUN_BYTES`` a run, the rest counted in a closing
line; and a log over ``KEEP_BYTES`` at a run's start becomes ``NAME.log.1`` (the one before
goes). An agent's logs so take at most ``KEEP_BYTES + 2 * RUN_BYTES`` (plus the closing lines).
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path

RUN_BYTES = 16 << 20
KEEP_BYTES = 16 << 20
# the copy outlives the run's process only while something it started still holds the pipe
# (the tier's kill ends them): this long at most, then the thread is left to end on its own
JOIN_S = 2.0


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class AgentLog:
    """One run's output: ``start`` gives the descriptor the process writes to, ``finish`` waits
    for the copy to end."""

    def __init__(self, path: Path, *, run_bytes: int = RUN_BYTES, keep_bytes: int = KEEP_BYTES) -> None:
        self.path = path
        self.run_bytes = run_bytes
        self.keep_bytes = keep_bytes
        self.cut = 0  # bytes of this run's output not written
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Rotate an old log, open the file and the pipe; the write end (the caller closes it
        once the process has it). Raises ``OSError``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size > self.keep_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        out = io.FileIO(self.path, "ab", opener=_private)  # the copy thread closes it
        r, w = os.pipe()
        self._thread = threading.Thread(target=self._copy, args=(r, out), name=f"agent-log-{self.path.stem}")
        self._thread.daemon = True
        self._thread.start()
        return w

    def _copy(self, r: int, out: io.FileIO) -> None:
        room = self.run_bytes
        try:
            while chunk := os.read(r, 65536):
                kept = chunk[:room]
                if kept:
                    try:
                        out.write(kept)
                    except OSError:  # a full disk: the rest is counted, the run goes on
                        room, kept = 0, b""
                self.cut += len(chunk) - len(kept)
                room -= len(kept)
            if self.cut:
                with contextlib.suppress(OSError):
                    out.write(f"\n[symbi: {self.cut} more bytes of this run's output not logged]\n".encode())
        finally:
            os.close(r)
            out.close()

    def finish(self) -> None:
        """Wait (up to ``JOIN_S``) for the copy to write what the process left in the pipe."""
        if self._thread is not None:
            self._thread.join(JOIN_S)
