"""The checkpoint files, written on a thread of their own: the file beside the log and the export.

Each is an fsync'd write (a new file renamed into place, or a line appended to the export kept
outside the data dir): about 2 ms on this disk, where a commit takes 0.15-0.3 ms. On the writer
thread that stalled every commit behind it, once per ``checkpoint_every`` events. Here the writer
hands the anchor over and goes on; a newer anchor handed over before the last was written
replaces it (the file holds one anchor: the newest is the one worth keeping). Nothing is lost
by the delay: the anchor committed in the database with its batch vouches for the same head,
and a checkpoint file that lags the log is what a verifier expects anyway. ``drain`` waits for
the file to hold the newest anchor (a flush, rotation, retention and close call it first).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from gateway.audit import store

_logger = logging.getLogger("symbi.audit")


class CheckpointFiles:
    """Writes ``log_path``'s checkpoint file (and ``export``, if any) with the newest anchor handed over."""

    def __init__(self, log_path: Path, export: Path | None) -> None:
        self.log_path = log_path
        self.export = export
        self._cv = threading.Condition()
        self._next: store.Anchor | None = None
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="symbi-audit-checkpoints", daemon=True)
        self._thread.start()

    def submit(self, anchor: store.Anchor) -> None:
        """Write ``anchor`` soon (and replace one still waiting); returns at once."""
        with self._cv:
            self._next = anchor
            self._cv.notify_all()

    def drain(self) -> None:
        """Return once every anchor handed over is written (or failed and logged)."""
        with self._cv:
            self._cv.wait_for(lambda: self._next is None and not self._busy)

    def write(self, anchor: store.Anchor) -> None:
        """Write ``anchor`` now, on the caller's thread, after any handed over. Raises ``OSError``."""
        self.drain()
        write_files(self.log_path, self.export, anchor)

    def stop(self) -> None:
        self.drain()
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._next is not None or self._stop)
                if self._next is None:
                    return
                anchor, self._next, self._busy = self._next, None, True
            try:
                write_files(self.log_path, self.export, anchor)
            except Exception as e:  # noqa: BLE001 - the in-database anchor still covers this batch
                _logger.error("audit checkpoint file not written: %s", e)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


def write_files(log_path: Path, export: Path | None, anchor: store.Anchor) -> None:
    """The checkpoint file beside the log, then a line of the export (when configured)."""
    store.write_checkpoint_file(store.checkpoint_path(log_path), anchor)
    if export is not None and anchor.seq > 0:
        store.export_checkpoint(export, log_path, anchor)
