"""The lease runner's look at the audit log (``gateway.runtime.leased``) when the log fails
open (``audit.on_failure = "unsafe_warn"``): it looks at every renewal, and warned at each (one
line every 3 s per agent for as long as the log was down). Now a warning per outage per agent,
and one per run started unsafely (a use). On a real Redis with real bwrap runs."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import anyio
import pytest

from gateway.audit.log import AuditLog
from gateway.errors import AuditError
from gateway.runtime import leased
from gateway.runtime.hosted import HostedAgents
from tests.runtime._leases import NAME, START_S, _running, _until, marked, replica
from tests.runtime.test_core import Recorder
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

# isort: split
from tests.runtime._leases import _require_bwrap, fresh  # noqa: F401 - the fixtures

pytestmark = pytest.mark.anyio
RENEW_S = 0.3  # the renewals' period here: many of them in a short test


def _warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.name == "symbi.audit" and r.levelno == logging.WARNING)


class _Checks(Protocol):
    def ensure_writable(self) -> None: ...
    def unwritable(self) -> AuditError | None: ...


@contextlib.asynccontextmanager
async def _runs_on(
    tmp_path: Path,
    url: str,
    mark: str,
    log: _Checks,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[HostedAgents]:
    """A replica running ``sleep MARK`` with ``log``'s checks (as the assembly gives them),
    renewing every ``RENEW_S``, the audit logger's warnings captured; stopped after."""
    monkeypatch.setattr(leased, "RENEW_S", RENEW_S)
    a = replica(tmp_path / "a", url, mark, Recorder())
    a.recordable, a.unwritable = log.ensure_writable, log.unwritable
    caplog.set_level(logging.WARNING, logger="symbi.audit")
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
        yield a
        tg.cancel_scope.cancel()


async def test_a_log_that_fails_open_warns_once_per_outage_and_per_run_started(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fresh: Redis,  # noqa: F811
) -> None:
    mark = f"6024.{os.getpid()}"
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem", on_failure="warn")
    async with _runs_on(tmp_path, fresh.url, mark, log, monkeypatch, caplog) as a:
        log.close()  # it records nothing more: the run goes on unaudited (fails open)
        caplog.clear()
        await anyio.sleep(10 * RENEW_S)  # ten renewals see it down
        assert _warnings(caplog) == 1 and _running(a)
        for pid in marked(mark):  # its run fails: the restart is a run started unsafely
            os.kill(pid, signal.SIGKILL)
        await _until("it runs again", lambda: a.runs[NAME] == 2 and _running(a), START_S)
        await anyio.sleep(5 * RENEW_S)
        assert _warnings(caplog) == 2


class MendableLog:
    """A log that fails open as ``AuditLog`` does with ``on_failure = "warn"`` (its check warns
    while it cannot record), and that can mend (a real one, once broken, stays broken)."""

    broken = False

    def ensure_writable(self) -> None:
        if self.broken:
            logging.getLogger("symbi.audit").warning("audit event not recorded (unsafe_warn): down")

    def unwritable(self) -> AuditError | None:
        return AuditError("down") if self.broken else None


async def test_a_log_that_fails_open_warns_again_at_its_next_outage(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fresh: Redis,  # noqa: F811
) -> None:
    mark = f"6025.{os.getpid()}"
    log = MendableLog()
    async with _runs_on(tmp_path, fresh.url, mark, log, monkeypatch, caplog) as a:
        log.broken = True
        await anyio.sleep(10 * RENEW_S)
        assert _warnings(caplog) == 1
        log.broken = False
        await anyio.sleep(3 * RENEW_S)  # a renewal sees it mended
        log.broken = True
        await anyio.sleep(10 * RENEW_S)
        assert _warnings(caplog) == 2 and _running(a) and a.runs[NAME] == 1
