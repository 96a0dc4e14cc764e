"""bench/chain_ops.py's readers: ``strace -c``'s table as calls per tool call, and the
collector's runs as ``GcWatch`` records them."""

from __future__ import annotations

import gc
from pathlib import Path

from bench.chain_ops import GcWatch, Strace

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
