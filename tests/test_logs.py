"""gateway.logs: every line still written, each cheaper (no caller, thread or process lookup)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.logs import configure


@pytest.fixture
def restore() -> Iterator[None]:
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
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
