"""Logging set-up: stderr only (stdout is the protocol on stdio), text or JSON lines.

A line logged inside a request carries its OpenTelemetry trace and span ids (``trace_id``,
``span_id`` in JSON; `` trace=...`` in text), the same trace id as its audit record.

One record is one line: in the text format a message's control characters are written as
escapes (``\\x1b``), as JSON writes them, since messages quote text the gateway does not
choose (an upstream's stderr, a tool's error): a line break would forge a record, an escape
sequence rewrite the operator's terminal. A traceback keeps its lines."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable


class TraceIds(logging.Filter):
    """Stamp each record with the current span's trace / span id (empty outside a trace)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        return True


def _stamp(record: logging.LogRecord) -> None:
    from gateway.telemetry import current_ids

    ids = current_ids()
    trace_id, span_id = ids if ids is not None else ("", "")
    record.trace_id = trace_id  # LogRecord takes extra attributes
    record.span_id = span_id


class Outage:
    """A failure repeated while something is down (a retry loop's), logged once an outage: a
    warning at its first failure and again when the failure changes (another cause mid-outage
    was never seen), and a warning when it works again (at the failure's level: an info line
    was lost under ``log_level = "WARNING"``, the outage never seen to end); not one a retry."""

    def __init__(self, logger: logging.Logger, recovered: str) -> None:
        self._logger, self._recovered = logger, recovered
        self.down = False
        self._last: str | None = None  # the failure logged last, as written

    def failed(self, msg: str, *args: object, exc_info: bool = False) -> None:
        """A failure: logged (``exc_info``: with its traceback) when it starts an outage or
        differs from the one logged last."""
        said = msg % args if args else msg
        if not self.down or said != self._last:
            self._logger.warning(msg, *args, exc_info=exc_info)
        self.down, self._last = True, said

    def worked(self) -> None:
        """A success: the end of the outage, if there was one, is logged."""
        if self.down:
            self._logger.warning(self._recovered)
        self.down, self._last = False, None


LINE = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the text format ``configure`` sets

# C0 controls but the tab, DEL, C1 controls, and the Unicode line and paragraph separators
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with each control character written as its escape (``\\x0a``, ``\\u2028``)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


class _PerSecond:
    """A formatted time's text up to the second, kept for the second (and converter) it is for:
    the warnings an unsafe option writes on every call come many to a second."""

    __slots__ = ("_format", "_last")

    def __init__(self, fmt: str) -> None:
        self._format = fmt
        self._last: tuple[int, object, str] = (-1, None, "")

    def text(self, created: float, convert: Callable[[float], time.struct_time]) -> str:
        second = int(created)  # localtime / gmtime take the whole second too
        last = self._last
        if last[0] != second or last[1] is not convert:
            last = self._last = (second, convert, time.strftime(self._format, convert(created)))
        return last[2]


class _TextFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        # the format configure sets, written directly (same text as the %-style template)
        self._line = fmt == LINE and datefmt is None
        self._second = _PerSecond(self.default_time_format)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``Formatter.formatTime``, its ``strftime`` once a second."""
        if datefmt:
            return super().formatTime(record, datefmt)
        text = self._second.text(record.created, self.converter)
        return self.default_msec_format % (text, record.msecs) if self.default_msec_format else text

    def format(self, record: logging.LogRecord) -> str:
        if self._line and not (record.exc_info or record.exc_text or record.stack_info):
            record.message = one_line(record.getMessage())
            record.asctime = self.formatTime(record)
            line = f"{record.asctime} {record.levelname} {record.name}: {record.message}"
        else:
            line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        return f"{line} trace={trace_id}" if trace_id else line

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)  # the slow path's (a traceback follows it)
        return super().formatMessage(record)


class _JsonFormatter(logging.Formatter):
    _second = _PerSecond("%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self._second.text(record.created, time.gmtime) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            doc["trace_id"] = trace_id
            doc["span_id"] = getattr(record, "span_id", "")
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler ``configure`` sets: each record stamped with the trace ids
    (``TraceIds``), formatted outside the lock, written and flushed under one hold of it
    (``Handler.handle`` + ``StreamHandler.emit`` take it twice and walk an empty filter list).
    Filters added to it still apply; errors go to ``handleError`` as in ``emit``."""

    def handle(self, record: logging.LogRecord) -> bool:
        _stamp(record)
        if self.filters and not self.filter(record):
            return False
        try:
            line = self.format(record) + self.terminator
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(line)
                self.stream.flush()
        except RecursionError:  # as StreamHandler.emit (issue 36272)
            raise
        except Exception:  # noqa: BLE001 - logging's own error path, as StreamHandler.emit
            self.handleError(record)
        return True


def cheap_records() -> None:
    """Records without the fields no formatter here prints: the caller's file, line and function
    (a walk up the stack per line), the thread and the process. An unsafe option warns on every
    call it affects (gateway.steps.unsafe, gateway.steps.verify): each line costs about half as
    many function calls. The logging module's own switches (Python docs, logging HOWTO,
    "Optimization")."""
    logging._srcfile = None  # findCaller: never called
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure(level: str, fmt: str = "text") -> None:
    cheap_records()
    handler = _LineHandler(sys.stderr)  # stamps the trace ids itself (TraceIds)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter(LINE))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the SDK and HTTP stack are chatty at INFO
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
