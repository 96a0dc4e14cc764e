"""Stdio upstreams start a few at a time (``[mcp] max_concurrent_starts``), and the connection
timeout of each runs from its turn, not while it waits: fifty servers started together on a
small machine each got a sliver of CPU, timed out together and restarted together (bench/growth.py).

Real parts: the gateway as ``make_gateway`` assembles it, real SDK servers over stdio
(``tests/peers/slow_start_server.py``) that log when their process starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from gateway.assemble import make_gateway
from gateway.config.load import load_config
from tests.conftest import ROOT, write_config

pytestmark = pytest.mark.anyio

SLOW = ROOT / "tests/peers/slow_start_server.py"
DELAY_S = 1.0


def _config(tmp_path: Path, log: Path, n: int, at_once: int, timeout_s: float) -> Path:
    log.touch()
    log.chmod(0o666)  # the servers run as the unprivileged upstream user
    servers = "".join(
        f"""
        [servers.s{i}]
        command = "{sys.executable}"
        args = ["{SLOW}", "{log}", "s{i}", "{DELAY_S}"]
        verification = "warn"
        """
        for i in range(n)
    )
    return write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [mcp]
        max_concurrent_starts = {at_once}
        connection_timeout_s = {timeout_s}
        restart_backoff_initial_s = 5.0
        """
        + servers,
    )


def _starts(log: Path) -> list[float]:
    return sorted(float(line.split()[2]) for line in log.read_text().splitlines())


async def test_one_at_a_time_each_within_its_own_timeout(tmp_path: Path) -> None:
    log = tmp_path / "starts.log"
    # three starts of 1 s one after the other take 3 s: more than the 2.5 s timeout, which
    # each start must therefore get for itself
    gw = make_gateway(load_config(_config(tmp_path, log, n=3, at_once=1, timeout_s=2.5)))
    async with gw.running():
        with anyio.fail_after(20):
            for up in gw.upstreams.values():
                assert await up.wait_up(20)
        assert all(up.restarts == 0 and up.state == "up" for up in gw.upstreams.values())
        starts = _starts(log)
        assert len(starts) == 3  # nobody timed out and was started again
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        # the next process is spawned only when the previous one has answered its listing
        assert min(gaps) >= DELAY_S, gaps
        assert set(gw.catalog.tools) >= {"s0__ping", "s1__ping", "s2__ping"}


async def test_the_gate_lets_that_many_start_together(tmp_path: Path) -> None:
    log = tmp_path / "starts.log"
    gw = make_gateway(load_config(_config(tmp_path, log, n=4, at_once=2, timeout_s=10.0)))
    async with gw.running():
        with anyio.fail_after(20):
            for up in gw.upstreams.values():
                assert await up.wait_up(20)
        starts = _starts(log)
        assert len(starts) == 4
        # two start at once, the next two after one of them is up
        assert starts[1] - starts[0] < DELAY_S
        assert starts[2] - starts[0] >= DELAY_S


def test_unset_means_the_cpu_count_at_least_two(tmp_path: Path) -> None:
    import os

    cfg = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"))
    assert cfg.mcp.max_concurrent_starts is None
    assert cfg.mcp.starts_at_once == max(2, os.cpu_count() or 2)
