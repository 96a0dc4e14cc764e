"""Logging set-up: stderr only (stdout is the protocol on stdio), text or JSON lines.

A line logged inside a request carries its OpenTelemetry trace and span ids (``trace_id``,
``span_id`` in JSON; `` trace=...`` in text), the same trace id as its audit record."""

from __future__ import annotations

import json
import logging
import sys
import time


class TraceIds(logging.Filter):
    """Stamp each record with the current span's trace / span id (empty outside a trace)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from gateway.telemetry import current_ids

        ids = current_ids()
        trace_id, span_id = ids if ids is not None else ("", "")
        record.trace_id = trace_id  # LogRecord takes extra attributes
        record.span_id = span_id
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        return f"{line} trace={trace_id}" if trace_id else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceIds())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the SDK and HTTP stack are chatty at INFO
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
