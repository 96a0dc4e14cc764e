"""``record``'s timeouts on one timer per loop: each waiting caller still fails closed by its own
deadline (a shorter one added later included), the others keep waiting and get their seq, and
a log used from many loops keeps none that closed."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import weakref

import pytest

from gateway.audit import AuditLog
from gateway.errors import AuditError
from tests.audit.conftest import LogPaths, OpenLog


def test_a_shorter_timeout_added_later_fails_first_and_the_longer_wait_still_commits(
    open_log: OpenLog, log_paths: LogPaths
) -> None:
    log = open_log()
    blocker = sqlite3.connect(log_paths[0], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another connection holds the write lock: the writer waits

    async def run() -> tuple[BaseException | None, bool, int | None]:
        long = asyncio.create_task(log.record("tool.call", {"n": 1}, timeout=60))
        await asyncio.sleep(0.05)  # its deadline is the timer's: 60 s away
        short_error: BaseException | None = None
        try:  # bounded: a deadline met only with the long one's would end in TimeoutError here
            await asyncio.wait_for(log.record("tool.call", {"n": 2}, timeout=0.3), 20)
        except AuditError as e:
            short_error = e
        still_waiting = not long.done()
        blocker.execute("ROLLBACK")
        return short_error, still_waiting, await asyncio.wait_for(long, 20)

    try:
        short_error, still_waiting, seq = asyncio.run(run())
    finally:
        blocker.close()
    assert isinstance(short_error, AuditError)
    assert still_waiting and seq is not None
    log.flush()
    assert sorted(r["details"]["n"] for r in log.recent(5)) == [1, 2]  # the failed one still written


def test_every_stalled_caller_fails_by_its_deadline(open_log: OpenLog, log_paths: LogPaths) -> None:
    log = open_log()
    blocker = sqlite3.connect(log_paths[0], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    async def run() -> list[BaseException | int | None]:
        calls = [log.record("tool.call", {"n": i}, timeout=0.2 + 0.1 * (i % 3)) for i in range(6)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)

    try:
        outcomes = asyncio.run(run())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(o, AuditError) for o in outcomes)


def test_a_refused_record_leaves_no_deadline_behind(open_log: OpenLog) -> None:
    log = open_log()

    async def run() -> None:
        await log.record("tool.call", {"n": 1}, timeout=0.2)
        log.close()
        with pytest.raises(AuditError):
            await log.record("tool.call", {"n": 2}, timeout=0.2)
        await asyncio.sleep(0.4)  # the timer fires: nothing left to fail (no unretrieved exception)

    loop = asyncio.new_event_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    gc.collect()
    assert errors == []


def test_a_loop_that_closed_while_its_timer_was_armed_is_not_kept(open_log: OpenLog) -> None:
    log: AuditLog = open_log()
    first: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def call(n: int) -> None:
        if not first:
            first.append(weakref.ref(asyncio.get_running_loop()))
        await log.record("tool.call", {"n": n}, timeout=30)  # the 30 s timer outlives the loop

    asyncio.run(call(1))
    asyncio.run(call(2))
    gc.collect()
    assert first[0]() is None
