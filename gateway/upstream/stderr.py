"""An upstream's stderr, logged line by line with its name, bounded.

The stderr of a stdio upstream is text the upstream chooses, and the upstream is not trusted.
Each line is logged with the server's name, at most ``LINE_BYTES`` of it: the rest of a longer
line is counted, never held (a server writing 600 MB without a newline grew the gateway to
3 GB, and the log by 600 MB). At most ``BURST`` lines at once and ``LINES_PER_S`` after that
(a server printing in a loop would fill the operator's disk): lines over the pace are counted
and the count is logged with the next line that passes, or when the stream ends. A control
character in a line (an escape sequence that rewrites the operator's terminal, a carriage
return) is shown escaped by the log's text format (``gateway.logs``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

LINE_BYTES = 8192
LINES_PER_S = 50.0
BURST = 200


def bounded_lines(stream: IO[bytes], limit: int) -> Iterator[tuple[bytes, int]]:
    """Each line of ``stream`` without its newline, at most ``limit`` bytes, and how many bytes
    of it were cut; no more than ``limit`` bytes of one line are held at a time."""
    while line := stream.readline(limit):
        if line.endswith(b"\n"):
            yield line[:-1], 0
            continue
        cut = 0
        while more := stream.readline(limit):
            if more.endswith(b"\n"):
                cut += len(more) - 1
                break
            cut += len(more)
        yield line, cut


@dataclass
class Pace:
    """A token bucket: ``burst`` lines at once, ``rate`` a second after that."""

    rate: float
    burst: float
    dropped: int = 0
    tokens: float = field(init=False)
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.dropped += 1
        return False


class StderrToLog:
    """A pipe whose read end is logged line by line with the server's name (bounded: above)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._log = logging.getLogger(f"symbi.upstream.{name}")

    def __enter__(self) -> Any:
        r, w = os.pipe()
        self._reader = os.fdopen(r, "rb")
        self._writer = os.fdopen(w, "w")
        self._thread = threading.Thread(target=self._pump, name=f"stderr-{self._name}", daemon=True)
        self._thread.start()
        return self._writer

    def _pump(self) -> None:
        pace = Pace(LINES_PER_S, BURST)
        with contextlib.suppress(Exception):
            for line, cut in bounded_lines(self._reader, LINE_BYTES):
                if not pace.take():
                    continue
                self._said_dropped(pace)
                text = line.decode("utf-8", "replace").rstrip()
                if cut:
                    self._log.info("[%s] %s [%d more bytes of this line not logged]", self._name, text, cut)
                else:
                    self._log.info("[%s] %s", self._name, text)
        self._said_dropped(pace)
        with contextlib.suppress(Exception):
            self._reader.close()

    def _said_dropped(self, pace: Pace) -> None:
        if pace.dropped:
            self._log.warning(
                "[%s] %d stderr lines not logged: over %g a second", self._name, pace.dropped, pace.rate
            )
            pace.dropped = 0

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
