"""``events.Unsent`` when the gateway stops (``abandon``): what the log never took and what is
queued in a stalled writer is logged (its last trace); a record kept or submitted after the
stop is logged, never held, and not blamed on a log's refusal. Real audit logs on SQLite, as
tests/test_events_unsent.py's."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import pytest

from gateway.audit.log import AuditLog
from gateway.events import Unsent
from tests.conftest import Stall
from tests.test_events_unsent import FIRST, SECOND, _closed, _sent, tool_records

pytestmark = pytest.mark.anyio


async def test_what_the_log_never_took_is_logged_when_the_gateway_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Held records were dropped without a trace at the gateway's stop (one dropped at the cap
    is logged): the last trace of a CLI revoke's record."""
    unsent = Unsent()
    assert not await _sent(unsent, _closed(tmp_path), [FIRST, SECOND])
    caplog.clear()  # (the refusals' own lines)
    with caplog.at_level(logging.ERROR, logger="symbi.events"):
        unsent.abandon()
    lost = [r for r in caplog.records if r.name == "symbi.events" and r.levelno == logging.ERROR]
    assert [r.args[0] for r in lost] == [FIRST[0], SECOND[0]]  # type: ignore[index]
    assert not len(unsent)


async def test_what_is_queued_in_a_stalled_writer_is_logged_when_the_gateway_stops_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A held record queued in a stalled writer was left out of the stop's trace: the close may
    give up on it (30 s) with no callback left to say so."""
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()
    with Stall(log):
        unsent.keep(*FIRST)
        assert len(unsent.queue(log)) == 1  # in flight
        with caplog.at_level(logging.ERROR, logger="symbi.events"):
            unsent.abandon()
    lost = [r for r in caplog.records if r.name == "symbi.events" and r.levelno == logging.ERROR]
    assert [r.args[0] for r in lost] == [FIRST[0]]  # type: ignore[index]
    log.close()


async def test_a_record_kept_after_the_stop_is_logged_not_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A request racing the stop: a record kept or submitted after ``abandon`` was held where
    nothing would ever log or send it, while its waiter was told the stop logged it. Now it
    is not held: its ERROR line (with who acted) is its last trace, and ``submit`` refuses it."""
    from gateway.errors import AuditError

    log = AuditLog(tmp_path / "a.db", tmp_path / "key.pem")
    unsent = Unsent()
    try:
        unsent.abandon()
        caplog.set_level(logging.ERROR, logger="symbi.events")
        unsent.keep(*FIRST, principal="key:admin")
        with pytest.raises(AuditError):
            unsent.submit(log, *SECOND, principal="key:admin")
        assert len(unsent) == 0 and unsent.held() == []
        # ``_let_go``'s lines: (kind, where, trace)
        traced = [r.args for r in caplog.records if isinstance(r.args, tuple) and len(r.args) == 3]
        assert [a[0] for a in traced] == [FIRST[0], SECOND[0]], traced
        assert all(cast(dict[str, object], a[2])["recorded_as"] == {"principal": "key:admin"} for a in traced)
        assert tool_records(tmp_path / "a.db") == []  # nothing sent after the stop
        await unsent.send(log, [FIRST])  # not held: logged only
        assert unsent.held() == []
        assert tool_records(tmp_path / "a.db") == []
    finally:
        log.close()


async def test_a_submit_after_the_stop_is_not_blamed_on_a_refusing_log(tmp_path: Path) -> None:
    """A log refused for good before the stop: a record submitted after it was answered with
    that log's refusal (it was never sent to it: the stop let it go)."""
    from gateway.errors import AuditError

    unsent, refusing = Unsent(), _closed(tmp_path)
    with pytest.raises(AuditError) as first:
        unsent.submit(refusing, *FIRST)
    assert unsent.refused_by(refusing) is first.value
    unsent.abandon()
    with pytest.raises(AuditError) as after:
        unsent.submit(refusing, *SECOND)
    assert after.value is not first.value and len(unsent) == 0
    assert unsent.refused_by(refusing) is first.value  # the log's own refusal, unchanged
