"""A writer thread that dies of an unexpected exception (not the write failure it handles):
the commits it had taken, and those queued behind them, stayed pending for ever: ``record``
callers hung until their timeout, ``events.Unsent`` kept its records in flight and never sent
them again. Now they fail with the log's broken error, and the log refuses all after.

The seam: one method of the real writer (``commit_events``) is replaced on the instance by
one that raises, as a bug there would; the log, its queue and its thread are real."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.audit.batch import event_item
from gateway.audit.log import AuditLog
from gateway.errors import AuditError
from gateway.events import Event
from tests.conftest import Stall

pytestmark = pytest.mark.anyio


def _boom(*_args: object, **_kw: object) -> bool:
    raise RuntimeError("a bug in the writer")


async def test_a_dying_writer_fails_every_commit_it_had_and_breaks_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem", batch_max=1)  # one taken, one queued
    with Stall(log):
        taken = log.submit(Event.TOOL_DRIFT, {"tool": "s__t"})
        queued = log.submit(Event.TOOL_DRIFT, {"tool": "s__u"})
        monkeypatch.setattr(log._writer, "commit_events", _boom)
    with anyio.fail_after(10):  # pending for ever, before
        for commit in (taken, queued):
            with pytest.raises(AuditError):
                await commit
    with pytest.raises(AuditError):
        log.ensure_writable()
    with anyio.fail_after(20), pytest.raises(AuditError) as refused:  # (a guard, not a timing)
        await log.record(Event.TOOL_DRIFT, {"tool": "s__v"}, timeout=30)
    assert refused.value is log._writer.broken  # refused at the check, not timed out
    log.close()


async def test_a_blocking_append_taken_by_a_dying_writer_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    failed: list[BaseException] = []

    def append() -> None:
        try:
            log.append(Event.TOOL_DRIFT, {"tool": "s__t"}, timeout=30)
        except AuditError as e:
            failed.append(e)

    with Stall(log):
        monkeypatch.setattr(log._writer, "commit_events", _boom)
        t = threading.Thread(target=append)
        t.start()
        with anyio.fail_after(10):  # queued behind the stall (not refused at the check)
            while log._queue.qsize() < 1:
                await anyio.sleep(0.01)
    t.join(10)  # 30 s (its timeout), before
    assert not t.is_alive()
    assert len(failed) == 1 and isinstance(failed[0], AuditError)
    log.close()


async def test_a_commit_put_after_the_dying_writer_s_last_drain_fails(tmp_path: Path) -> None:
    """An event that passed the log's check just before the writer died, and was put after
    the writer's last drain, stayed pending for ever. Seam: the log's check is wrapped so the
    writer dies (its real ``commit_events`` replaced by one that raises) between the check and
    the put, a window of microseconds otherwise."""
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    real_check = log._check

    def check_then_the_writer_dies() -> None:
        real_check()
        log._writer.commit_events = _boom  # type: ignore[method-assign]
        log._queue.put(event_item(str(Event.TOOL_DRIFT), {"tool": "s__x"}, None, None, None))
        log._thread.join(10)
        assert not log._thread.is_alive() and log._writer.broken is not None

    log._check = check_then_the_writer_dies  # type: ignore[method-assign]
    commit = log.submit(Event.TOOL_DRIFT, {"tool": "s__t"})
    log._check = real_check  # type: ignore[method-assign]
    with anyio.fail_after(5), pytest.raises(AuditError):  # pending for ever, before
        await commit
    log.close()  # returns: the writer is dead, nothing takes a close marker


def test_a_final_checkpoint_that_fails_at_close_is_raised_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Close swallowed an error of a writer no longer running, meant for a writer that died
    between the check and the marker: a healthy writer whose final checkpoint failed ends too
    (returning), and its error was dropped when it had ended before close looked. Seam: the
    real writer's ``write_checkpoint`` replaced by one that raises; the close waits for the
    writer to end before looking, the order that dropped it."""
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    log.emit(Event.TOOL_DRIFT, {"tool": "s__t"})

    def fails() -> None:
        raise OSError("no space left on device")

    monkeypatch.setattr(log._writer, "write_checkpoint", fails)
    real_wait = log._wait

    def wait_after_the_writer_ended(fut: Any, timeout: float | None) -> Any:
        log._thread.join(10)  # the writer answered the marker and ended: running is False
        return real_wait(fut, timeout)

    monkeypatch.setattr(log, "_wait", wait_after_the_writer_ended)
    with pytest.raises(AuditError):
        log.close()
