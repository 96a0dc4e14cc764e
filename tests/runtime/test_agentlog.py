"""A hosted agent's output log (gateway/runtime/agentlog.py): bounded per run, rotated.

Attack: an agent printing in a loop filled the data dir, where the audit log lives (a full
disk refuses every audited call). A real bwrap run prints three times its run's allowance."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from gateway.config.sections import AgentConfig
from gateway.runtime.agentlog import RUN_BYTES, AgentLog
from tests.runtime.test_hosted_supervisor import GUARD_S, _bwrap_host


def _write(log: AgentLog, data: bytes) -> None:
    w = log.start()
    view = memoryview(data)
    while view:
        view = view[os.write(w, view) :]
    os.close(w)
    log.finish()


def test_a_run_keeps_its_allowance_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "agents" / "a.log"
    log = AgentLog(path, run_bytes=100, keep_bytes=1 << 20)
    _write(log, b"x" * 250_000)
    body = path.read_bytes()
    assert body.startswith(b"x" * 100) and not body.startswith(b"x" * 101)
    assert log.cut == 250_000 - 100 and str(log.cut).encode() in body.splitlines()[-1]
    assert path.stat().st_mode & 0o777 == 0o600
    small = AgentLog(path, run_bytes=100, keep_bytes=1 << 20)
    _write(small, b"yy")  # within its allowance: appended whole, nothing said
    assert small.cut == 0 and path.read_bytes() == body + b"yy"


def test_a_log_over_its_keep_size_is_rotated_at_the_next_run(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    for i in range(3):
        _write(AgentLog(path, run_bytes=1 << 20, keep_bytes=10), b"run%d-" % i + b"z" * 20)
    assert path.read_bytes().startswith(b"run2-")  # the run over 10 bytes moved on ...
    assert path.with_name("a.log.1").read_bytes().startswith(b"run1-")  # ... run 0's went


@pytest.mark.anyio
async def test_an_agent_printing_in_a_loop_cannot_fill_the_data_dir(tmp_path: Path) -> None:
    flood = AgentConfig(
        command="/usr/bin/python3",
        args=(
            "-c",
            f"import sys; [sys.stdout.buffer.write(b'x' * (1 << 20)) for _ in range({3 * RUN_BYTES >> 20})]",
        ),
        sandbox="bwrap",
        restart="never",
    )
    h, _, _ = _bwrap_host(tmp_path, flood=flood)
    with anyio.fail_after(GUARD_S):
        assert await h._run_once("flood", flood) == "ok"  # the run itself is not disturbed
    log = h.config.data_dir / "agents" / "flood.log"
    size = log.stat().st_size
    assert RUN_BYTES <= size < RUN_BYTES + 200  # its allowance and the closing line, not 48 MiB
    assert str(2 * RUN_BYTES).encode() in log.read_bytes()[-200:]
