"""Poll a few files' mtimes in a daemon thread and call back when any of them changes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.filestamp import Stamp, file_stamp
from gateway.logs import Outage

log = logging.getLogger("symbi.policy")

_Stamp = Stamp | None  # None: missing (a removed file is a change too)


class FileWatcher:
    """Calls ``on_change()`` (from its own thread) after any watched file changes.

    Polling rather than inotify: it works the same on every filesystem and container, and
    a policy edit taking effect within ~1 s is all that is promised.
    """

    def __init__(
        self,
        paths: Sequence[Path] | Callable[[], Sequence[Path]],
        on_change: Callable[[], object],
        *,
        interval_s: float = 1.0,
    ) -> None:
        # a callable: the set itself is looked up at every poll, so a file added to it (a new
        # policy test) or removed from it is a change too
        if callable(paths):
            self._paths = paths
        else:
            fixed = tuple(paths)
            self._paths = lambda: fixed
        self.interval_s = interval_s
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="symbi-policy-watch", daemon=True)
        self._stamps = self._poll()

    def _poll(self) -> dict[Path, _Stamp]:
        return {p: file_stamp(p) for p in self._paths()}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        outage = Outage(log, "policy watch: its passes work again")  # one traceback a run of failures
        while not self._stop.wait(self.interval_s):
            try:
                self._once()
            except Exception:  # noqa: BLE001 - one failed pass (EMFILE listing a folder) must end no reloads
                outage.failed("policy watch: a pass failed; the next ones try again", exc_info=True)
            else:
                outage.worked()

    def _once(self) -> None:
        if self._poll() == self._stamps:
            return
        # an editor may still be writing: wait until two polls agree
        if self._stop.wait(min(0.2, self.interval_s)):
            return
        settled = self._poll()
        self._stamps = settled
        try:
            self._on_change()
        except Exception:  # the watcher must survive a bad callback; reload logs its own errors
            log.exception("policy reload callback failed")
