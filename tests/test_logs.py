"""gateway.logs: every line still written, each cheaper (no caller, thread or process lookup)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.logs import Outage, configure


@pytest.fixture
def restore() -> Iterator[None]:
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    factory = logging.getLogRecordFactory()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
        logging.setLogRecordFactory(factory)
        logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_warning_is_written_without_looking_up_its_caller(
    restore: None, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    configure("WARNING", fmt)  # the handler writes to the sys.stderr capsys holds
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logging.getLogger().addHandler(Keep())
    log = logging.getLogger("symbi.unsafe")
    for i in range(3):
        log.warning("UNSAFE: call %d", i)
    log.info("not at WARNING")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(f"UNSAFE: call {i}" in line for i, line in enumerate(lines))
    # no stack walk, no thread or process lookup per line
    fields: set[tuple[Any, ...]] = {(r.funcName, r.lineno, r.thread, r.process) for r in seen}
    assert len(seen) == 3 and fields == {("(unknown function)", 0, None, None)}


def _record(
    created: float, msg: str = "UNSAFE: %s", args: Any = ("x",), exc: Any = None
) -> logging.LogRecord:
    record = logging.LogRecord("symbi.unsafe", logging.WARNING, "(unknown file)", 0, msg, args, exc)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    return record


def test_text_lines_are_the_templates_own_across_seconds_and_with_a_traceback() -> None:
    from gateway.logs import LINE, _TextFormatter

    ours, plain = _TextFormatter(LINE), logging.Formatter(LINE)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        exc = sys.exc_info()
    # the same second twice (the kept text), the next second, a second earlier, a traceback
    for created, e in [
        (1e9 + 0.25, None),
        (1e9 + 0.75, None),
        (1e9 + 1.5, None),
        (1e9 - 0.5, None),
        (1e9, exc),
    ]:
        assert ours.format(_record(created, exc=e)) == plain.format(_record(created, exc=e))
    # another converter (logging's documented switch) is honoured, not the kept text
    ours.converter = plain.converter = time.gmtime
    assert ours.format(_record(1e9 + 0.25)) == plain.format(_record(1e9 + 0.25))
    assert _TextFormatter(LINE, "%H").format(_record(1e9)) == logging.Formatter(LINE, "%H").format(
        _record(1e9)
    )


def test_a_message_is_one_line_whatever_text_it_quotes() -> None:
    """Attack: text the gateway does not choose (an upstream's stderr, a tool's error) with a
    line break, a carriage return, an escape sequence or a line separator forges a record or
    rewrites the operator's terminal: each is written as its escape, fast path and traceback
    path alike; the traceback keeps its own lines."""
    from gateway.logs import LINE, _TextFormatter, one_line

    hostile = "ok\n2026-01-01 00:00:00,000 CRITICAL symbi.audit: FORGED\r\x1b[2K\u2028\x00\x9b end\ttab"
    assert one_line(hostile) == (
        "ok\\n2026-01-01 00:00:00,000 CRITICAL symbi.audit: FORGED\\r\\x1b[2K\\u2028\\x00\\x9b end\ttab"
    )
    assert one_line("plain text, é") == "plain text, é"
    fmt = _TextFormatter(LINE)
    assert fmt.format(_record(1e9, msg="upstream said %s", args=(hostile,))).count("\n") == 0
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        exc = sys.exc_info()
    with_tb = fmt.format(_record(1e9, msg="upstream said %s", args=(hostile,), exc=exc))
    first, *rest = with_tb.splitlines()
    assert "FORGED\\r\\x1b[2K" in first and rest[0].startswith("Traceback") and "\x1b" not in with_tb


def test_json_lines_carry_each_records_own_time() -> None:
    from gateway.logs import _JsonFormatter

    fmt = _JsonFormatter()
    for created in (1e9 + 0.25, 1e9 + 0.75, 1e9 + 1.5):
        doc = json.loads(fmt.format(_record(created)))
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int((created % 1) * 1000):03d}Z"
        assert doc["ts"] == want and doc["msg"] == "UNSAFE: x"


def test_the_handler_keeps_filters_and_logging_error_path(
    restore: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure("WARNING")
    handler = logging.getLogger().handlers[0]
    handler.addFilter(lambda r: r.msg != "drop")
    log = logging.getLogger("symbi.unsafe")
    log.warning("keep")
    log.warning("drop")
    assert [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines()] == ["keep"]
    failed: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", failed.append)
    log.warning("bad %d", "not a number")  # formatting fails: handleError, never the caller
    assert len(failed) == 1


def test_an_outage_logs_each_new_failure_and_its_end_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A failure whose cause changed mid-outage was not logged (the first one stood for all);
    its end was an info line, never seen under ``log_level = "WARNING"``."""
    outage = Outage(logging.getLogger("symbi.test.outage"), "works again")
    with caplog.at_level(logging.WARNING, logger="symbi.test.outage"):
        outage.failed("down: %s", "ConnectionRefusedError")
        outage.failed("down: %s", "ConnectionRefusedError")  # the same: not again
        outage.failed("down: %s", "TimeoutError")  # another cause: logged
        outage.worked()
        outage.worked()
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 3
    assert [r.args for r in caplog.records[:2]] == [("ConnectionRefusedError",), ("TimeoutError",)]
