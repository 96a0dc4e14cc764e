"""bench/_chain_ops_front.py (bench/chain_ops.py's ``--front`` modes): ``strace -c``'s table as
calls per tool call, the collector's runs as ``GcWatch`` records them, callgrind's window between
its two marks, and chain_ops.py loading the file by its path."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from bench import chain_ops
from bench._chain_ops_front import QUIET_TIMERS, GcWatch, Strace, callgrind_window
from bench._common import write_gateway_config
from bench._tail_watch import TailWatch, tail_tables
from gateway.config.load import load_config

# strace 6's -c table: a row with errors has six columns, the total row is not a system call
TABLE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           0      2000           getpid
 30.00    0.003000           0       800           epoll_wait
 20.00    0.002000           0       400        20 futex
 10.00    0.001000           0       200           write
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           0      3400        20 total
"""


def test_strace_table_per_call(tmp_path: Path) -> None:
    out = tmp_path / "strace.txt"
    out.write_text(TABLE)
    counts = Strace(0, out).per_call(200)
    assert counts == {
        "total": 17.0,
        "getpid": 10.0,
        "epoll_wait": 4.0,
        "futex": 2.0,
        "write": 1.0,
        "futex (errors)": 0.1,
    }


def test_gc_watch_counts_a_collection_and_finds_new_cyclic_garbage() -> None:
    watch = GcWatch()
    watch.begin()
    gc.collect(0)
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    report = watch.report()
    assert report["collections"]["0"] >= 1
    assert report["cyclic_garbage_by_type"].get("list", 0) >= 1
    assert watch not in gc.callbacks


def _dump(path: Path, ir: int, d1mr: int) -> None:
    path.write_text(
        f"version: 1\ncmd: python\nevents: Ir D1mr\nfn=main\n0 {ir} {d1mr}\nsummary: {ir} {d1mr}\n"
    )


def test_callgrind_window_is_the_second_dump_per_call(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_text("")  # the file callgrind opens at the start stays empty
    _dump(tmp_path / "callgrind.out.1", 9_000_000, 90_000)  # start-up and the warm-up
    _dump(tmp_path / "callgrind.out.2", 2_000_000, 4_000)  # the counted calls
    _dump(tmp_path / "callgrind.out.10", 1, 1)  # ordered by number, not by name
    assert callgrind_window(out, 200) == {"Ir": 10_000.0, "D1mr": 20.0, "dumps": 3}
    (tmp_path / "callgrind.out.2").unlink()
    (tmp_path / "callgrind.out.10").unlink()
    with pytest.raises(RuntimeError):
        callgrind_window(out, 200)


def test_quiet_timers_are_keys_the_gateway_takes(tmp_path: Path) -> None:
    cfg = write_gateway_config(tmp_path, "", extra='[mcp]\ntool_verification = "off"\n' + QUIET_TIMERS)
    config = load_config(cfg)
    assert config.mcp.recheck_interval_s == 3600.0 and config.mcp.tool_verification == "off"
    assert config.runtime.gc_interval_ms == 3_600_000 and config.bus.expire_interval_s == 3600.0


def test_chain_ops_loads_its_front_modes_from_its_own_folder() -> None:
    # by path, not by import: PYTHONPATH may name another checkout, whose bench/ lacks the file
    # a module chain_ops binds at import (loaded by path), not one it re-exports
    front_modes = chain_ops.front_modes  # type: ignore[attr-defined]
    loaded = Path(front_modes.__file__ or "")
    assert loaded == Path(chain_ops.__file__).resolve().with_name("_chain_ops_front.py")
    assert front_modes.__name__ == "_chain_ops_front"


def test_tail_tables_give_a_kind_its_share_of_the_slowest_calls() -> None:
    """100 calls of 1 ms, one of 9 ms; a checkpoint overlaps the slow call and one fast one, a
    collection overlaps nothing: the checkpoint is on 2 % of the calls and on the slowest one."""
    ms = 1_000_000
    calls = [(i * 20 * ms, i * 20 * ms + ms) for i in range(100)] + [(2100 * ms, 2109 * ms)]
    events = [
        ["audit:wal_checkpoint", 2102 * ms, 2106 * ms, ""],
        ["audit:wal_checkpoint", 40 * ms, 40 * ms + ms // 2, ""],
        ["gc:gen0", 5 * ms, 6 * ms, "0"],
        ["loop:slow_callback", 2101 * ms, 2102 * ms, "task StdioLane._run (cpu 0.90 ms, policy 0.50)"],
    ]
    out = tail_tables(calls, events, slowest=2)
    assert out["calls"] == 101 and out["latency_ms"]["max"] == 9.0
    wal = out["by_kind"]["audit:wal_checkpoint"]
    assert wal["per_1000_calls"] == round(2000 / 101, 2)
    assert wal["share_of_calls_overlapped"] == round(2 / 101, 3)
    assert wal["share_of_slowest_1pct_overlapped"] == 1.0
    assert out["by_kind"]["gc:gen0"]["share_of_calls_overlapped"] == 0.0
    assert out["slowest"][0]["ms"] == 9.0 and len(out["slowest"][0]["overlapped"]) == 2
    assert out["most_cpu_callbacks"][0].startswith("task StdioLane._run (cpu 0.90 ms")


def test_tail_watch_records_a_slow_callback_and_a_collection() -> None:
    """A callback past the threshold is kept with its CPU time; a collection with its generation."""
    import asyncio
    import time

    watch = TailWatch(slow_ns=2_000_000)

    async def main() -> None:
        watch.begin()
        try:
            loop = asyncio.get_running_loop()
            done = loop.create_future()

            def busy() -> None:
                end = time.thread_time() + 0.004
                while time.thread_time() < end:
                    pass
                done.set_result(None)

            loop.call_soon(busy)
            await done
            gc.collect(0)
        finally:
            report = watch.report()
        kinds = {e[0] for e in report["events"]}
        assert {"loop:slow_callback", "gc:gen0"} <= kinds
        slow = [e for e in report["events"] if e[0] == "loop:slow_callback"]
        assert any("busy (cpu" in e[3] for e in slow)

    asyncio.run(main())
