"""An upstream's stderr in the gateway's log (gateway/upstream/stderr.py): bounded lines, a
pace, control characters escaped (gateway/logs.py).

Attack: tests/peers/noisy_stderr_server.py, run by a real ``symbi serve`` as symbi-upstream,
writes a 512 MB line, a burst of 1,000 lines and a line that would forge a record."""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path

import pytest

from gateway.upstream.stderr import BURST, LINE_BYTES, Pace, bounded_lines
from tests.conftest import ROOT, write_config
from tests.server._http import serve_process

NOISY = ROOT / "tests/peers/noisy_stderr_server.py"
BIG_MB = 512
SHORT = 1000


def test_bounded_lines_cut_a_long_line_and_count_what_was_cut() -> None:
    data = b"short\n" + b"x" * 10 + b"\n" + b"y" * 25 + b"\n" + b"z" * 8 + b"\n" + b"tail"
    got = list(bounded_lines(io.BufferedReader(io.BytesIO(data)), 8))
    assert got == [(b"short", 0), (b"x" * 8, 2), (b"y" * 8, 17), (b"z" * 8, 0), (b"tail", 0)]


def test_the_pace_lets_a_burst_through_then_counts_the_rest() -> None:
    pace = Pace(rate=1e-9, burst=3)
    assert [pace.take() for _ in range(5)] == [True, True, True, False, False]
    assert pace.dropped == 2


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(300)
def test_a_flooding_upstream_cannot_grow_the_gateway_fill_the_log_or_forge_a_record(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        f"""
        [servers.noisy]
        command = "{sys.executable}"
        args = ["{NOISY}", "{BIG_MB}", "{SHORT}"]
        verification = "warn"
        """,
    )
    with serve_process(cfg, log_name="noisy") as (base, proc):
        log = tmp_path / f"noisy-{base.rsplit(':', 1)[1]}.log"
        deadline = time.monotonic() + 120  # the bound of the wait, not a timing assertion
        while "noisy: quiet now" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        # a 512 MB line held whole would be at least that much more (it was 3 GB)
        assert _peak_rss_kb(proc.pid) < 400 * 1024
    text = log.read_bytes()
    assert b"\x1b" not in text and b"\r" not in text and "\u2028".encode() not in text
    forged = [ln for ln in text.decode().splitlines() if "FORGED" in ln]
    assert len(forged) == 1 and "symbi.upstream.noisy: [noisy] noisy: before" in forged[0]
    assert "\\x1b[2K\\r2026-01-01" in forged[0] and "\\u2028after" in forged[0]
    cut = re.findall(r"\[(\d+) more bytes of this line not logged\]", text.decode())
    assert [int(n) for n in cut] == [BIG_MB * (1 << 20) - LINE_BYTES]
    logged = len(re.findall(r"\[noisy\] noisy line \d+$", text.decode(), re.M))
    dropped = [int(n) for n in re.findall(r"\[noisy\] (\d+) stderr lines not logged", text.decode())]
    # the burst passes whole (less the two lines before it); the pace's exact arithmetic is the
    # unit test's (a clock of its own): here, lines were dropped and every one was counted
    assert BURST - 2 <= logged < SHORT and sum(dropped) == SHORT - logged, (logged, dropped)
