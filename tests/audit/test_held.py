"""Emits on an event loop's thread are held there until that thread's next awaited event (one
writer wake-up per call instead of one per event), the linger's end, a flush or close: none is
lost, their order is kept, and a closed log refuses them."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.errors import AuditError
from tests.audit.conftest import LogPaths


def _types(db: Path) -> list[str]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        return [t for (t,) in conn.execute("SELECT type FROM events ORDER BY seq")]
    finally:
        conn.close()


def test_a_calls_flips_go_with_its_record_in_order(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    db, _ = log_paths
    log = open_log()
    log.EMIT_LINGER_S = 30.0

    async def call() -> int | None:
        log.emit("agent.state", {"to": "Running"}, principal="p")
        await asyncio.sleep(0.05)  # the upstream call
        assert _types(db) == []  # held on this thread, not committed on their own
        log.emit("agent.state", {"to": "Ready"}, principal="p")
        return await log.record("tool.call", {"i": 1}, principal="p")

    assert asyncio.run(call()) == 3
    assert _types(db) == ["agent.state", "agent.state", "tool.call"]


def test_held_emits_alone_are_committed_when_the_linger_ends(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    db, _ = log_paths
    log = open_log()
    log.EMIT_LINGER_S = 0.05

    async def emit_and_wait() -> list[str]:
        log.emit("gateway.event", {"i": 1})
        for _ in range(1000):  # bounded: 20 s
            if _types(db):
                break
            await asyncio.sleep(0.02)
        return _types(db)

    assert asyncio.run(emit_and_wait()) == ["gateway.event"]


def test_an_emit_held_after_an_early_release_is_committed_when_its_own_linger_ends(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    """The linger timer is not cancelled when a record releases early: when it fires it meets a
    list held since, younger than the linger, and waits for the rest of that list's linger."""
    db, _ = log_paths
    log = open_log()
    log.EMIT_LINGER_S = 2.0

    async def run() -> tuple[list[str], list[str]]:
        log.emit("agent.state", {"to": "Running"})  # the timer: due in 2 s
        await log.record("tool.call", {"i": 1})  # releases early, the timer stays
        await asyncio.sleep(1.0)
        log.emit("gateway.event", {"i": 2})  # a new list, held since 1 s
        await asyncio.sleep(1.4)  # the first timer has fired (at 2 s): this list is 1.4 s old
        early = _types(db)
        for _ in range(1000):  # bounded: 20 s
            if len(_types(db)) == 3:
                break
            await asyncio.sleep(0.02)
        return early, _types(db)

    early, done = asyncio.run(run())
    assert early == ["agent.state", "tool.call"]
    assert done == ["agent.state", "tool.call", "gateway.event"]


def test_a_loop_that_closed_with_its_timer_armed_is_not_kept(open_log: Callable[..., AuditLog]) -> None:
    log = open_log()
    log.EMIT_LINGER_S = 30.0
    first: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def call() -> None:
        first.append(weakref.ref(asyncio.get_running_loop()))
        log.emit("agent.state", {"to": "Running"})
        await log.record("tool.call", {"i": 1})  # the 30 s timer stays armed as the loop ends

    async def next_call() -> None:
        log.emit("agent.state", {"to": "Running"})
        await log.record("tool.call", {"i": 2})

    asyncio.run(call())
    asyncio.run(next_call())
    gc.collect()
    assert first[0]() is None


def test_a_flush_on_the_loop_thread_commits_what_it_holds(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    db, _ = log_paths
    log = open_log()
    log.EMIT_LINGER_S = 30.0

    async def emit_then_flush() -> None:
        log.emit("gateway.event", {"i": 1})
        log.flush(timeout=20)  # AuditError if it waited for the 30 s linger

    asyncio.run(emit_then_flush())
    assert _types(db) == ["gateway.event"]


def test_emits_held_by_a_loop_that_ended_are_committed_by_the_next_flush(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    db, _ = log_paths
    log = open_log()
    log.EMIT_LINGER_S = 30.0

    async def emit() -> None:
        log.emit("gateway.event", {"i": 1})

    asyncio.run(emit())  # its loop is gone, the 30 s timer with it
    log.flush(timeout=20)
    assert _types(db) == ["gateway.event"]


def test_close_takes_what_a_loop_in_another_thread_holds_and_refuses_later_emits(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    db, _ = log_paths
    log = open_log()
    log.EMIT_LINGER_S = 30.0
    held, closed = threading.Event(), threading.Event()
    refused: list[BaseException] = []

    async def other_thread() -> None:
        log.emit("gateway.event", {"i": 1})
        held.set()
        while not closed.is_set():  # the loop keeps running (its timer 30 s away) while the log closes
            await asyncio.sleep(0.01)
        try:
            log.emit("gateway.event", {"i": 2})
        except AuditError as e:
            refused.append(e)

    t = threading.Thread(target=asyncio.run, args=(other_thread(),))
    t.start()
    assert held.wait(20)
    log.close()
    closed.set()
    t.join(20)
    assert _types(db) == ["gateway.event"]
    assert len(refused) == 1 and isinstance(refused[0], AuditError)


def test_an_emit_on_a_loop_after_close_is_refused(open_log: Callable[..., AuditLog]) -> None:
    log = open_log()
    log.close()

    async def emit() -> None:
        log.emit("gateway.event", {"i": 1})

    with pytest.raises(AuditError):
        asyncio.run(emit())


def test_a_flush_on_another_thread_commits_what_a_running_loop_holds(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    """``flush`` promises every event emitted before it is committed, whichever thread emitted it:
    an admin action emitted on the server's loop, then a flush from a script or test thread."""
    db, _ = log_paths
    log = open_log()
    log.EMIT_LINGER_S = 30.0
    held, flushed = threading.Event(), threading.Event()

    async def other_thread() -> None:
        log.emit("agent.suspend_requested", {"i": 1})
        log.emit("agent.terminate_requested", {"i": 2})
        held.set()
        while not flushed.is_set():  # the loop keeps running (its timer 30 s away) during the flush
            await asyncio.sleep(0.01)
        log.emit("gateway.event", {"i": 3})  # after the flush: held again, as before, not lost
        await log.record("tool.call", {"i": 4})

    t = threading.Thread(target=asyncio.run, args=(other_thread(),))
    t.start()
    try:
        assert held.wait(20)
        log.flush(timeout=10)
        assert _types(db) == ["agent.suspend_requested", "agent.terminate_requested"]
    finally:
        flushed.set()
        t.join(20)
    assert _types(db) == [
        "agent.suspend_requested",
        "agent.terminate_requested",
        "gateway.event",
        "tool.call",
    ]
