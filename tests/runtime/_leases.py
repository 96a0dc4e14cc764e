"""Hosted agents on one Redis, as replicas run them (tests/runtime/test_leased.py): a real
``HostedAgents`` with its own data dir, key store and bwrap tier, and one hosted agent that
sleeps (its argument marks its process, so a test counts the real processes).

``python -m tests.runtime._leases DIR REDIS_URL MARK`` runs one such gateway's hosted agents
until killed: a replica in a process of its own.

Also the helpers and fixtures the lease tests share (tests/runtime/test_leased*.py, test_orders*,
test_status, test_runkeys_serve): imported from here, not from one another's test modules."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import anyio
import anyio.abc
import pytest
import redis

from gateway.config.model import Config
from gateway.config.sections import AgentConfig, GatewaySection, StateSection
from gateway.events import EventSink
from gateway.runtime.core import AgentRuntime
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.launch import AgentHost
from gateway.runtime.leased import LeasedAgents
from gateway.runtime.lifecycle import AgentState
from gateway.sandbox.manager import SandboxManager
from gateway.server.auth import ApiKeyStore
from gateway.state.leases import RENEW_S, LeaseBoard, _epoch, process_name
from tests.runtime.test_core import BreakingRecorder
from tests.state.engines import Redis

NAME = "sleeper"
START_S = 15.0  # a bwrap run's start on a busy machine: the bound of a wait, not the lease's


@pytest.fixture(autouse=True)
def _require_bwrap(tmp_path: Path) -> None:
    """Imported by a test module: its tests are skipped where bwrap cannot run."""
    from tests.sandbox.conftest import require_tier

    require_tier(SandboxManager(Config(), sweep_orphans=False), "bwrap")


@pytest.fixture
def fresh(redis_engine: Redis) -> Iterator[Redis]:
    """The session's Redis, emptied (and started again after a test that stopped it). Needs
    ``redis_engine`` imported next to it (tests.state.conftest)."""
    redis.Redis.from_url(redis_engine.url).flushall()
    yield redis_engine
    if redis_engine.proc is None:  # a test stopped it
        redis_engine.start()


def _seen(leased: LeasedAgents) -> bool:
    return leased.seen.get(NAME) is not None


def _running(h: HostedAgents) -> bool:
    agent = h.runtime.agents.by_name(NAME)
    return agent is not None and agent.state is AgentState.RUNNING


async def _until(what: str, check: Callable[[], bool], within: float) -> float:
    """Wait until ``check()``; the seconds it took. Fails past ``within``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within:g} s: {what}")
        await anyio.sleep(0.05)
    return time.monotonic() - started


def replica(
    folder: Path, redis_url: str, mark: str, events: EventSink, start: str = "with-gateway"
) -> HostedAgents:
    """One gateway's hosted agents in ``folder``: ``sleeper`` runs ``sleep MARK`` in bwrap."""
    folder.mkdir(parents=True, exist_ok=True)
    agent = AgentConfig(
        command="/usr/bin/sleep", args=(mark,), sandbox="bwrap", restart_backoff_s=0.2, start=start
    )
    config = Config(
        gateway=GatewaySection(data_dir=folder / "data"),
        state=StateSection(redis_url=redis_url),
        agents={NAME: agent},
    )
    socket = folder / "gateway.sock"  # bound into the sandbox; the agent never dials it
    socket.touch()
    host = AgentHost(str(socket), ApiKeyStore(folder / "keys.json"))
    manager = SandboxManager(config, sweep_orphans=False)
    # the board the assembly would make (on the process's Redis client; here one of its own)
    board = LeaseBoard(redis_url, owner=process_name(config.data_dir), timeout_s=config.state.timeout_s)
    recordable = getattr(events, "recordable", None)  # the audit log's ensure_writable, when it has one
    return HostedAgents(
        config,
        AgentRuntime(config, events),
        events,
        sandbox=manager,
        host=host,
        board=board,
        recordable=recordable,
    )


@contextlib.asynccontextmanager
async def a_holds_b_waits(
    folder: Path, url: str, mark: str, ra: EventSink, rb: EventSink
) -> AsyncIterator[tuple[HostedAgents, HostedAgents]]:
    """Two gateways with an on-demand ``sleep MARK`` on one Redis, once ``a`` holds its lease
    (nothing runs yet) and ``b`` has read that it does: (a, b). Both stop when the block ends."""
    a = replica(folder / "a", url, mark, ra, start="on-demand")
    b = replica(folder / "b", url, mark, rb, start="on-demand")
    la, lb = a.leased, b.leased
    assert la is not None and lb is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        tg.start_soon(b.run)
        await _until("b sees a hold it", lambda: _seen(lb), 2 * RENEW_S)
        yield a, b
        tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def first_start_refused(
    folder: Path, url: str, mark: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[HostedAgents, LeasedAgents, BreakingRecorder]]:
    """An on-demand ``sleep MARK`` whose holder ``a`` refused its first start (its log broken:
    no agent record yet), the start waiting for the retry (1 s here; renewals every 60 s, so
    no let-go moves the lease meanwhile): (a, its lease runner, its breakable log)."""
    from gateway.runtime import hosted, leased

    monkeypatch.setattr(leased, "RENEW_S", 60.0)
    monkeypatch.setattr(hosted, "AUDIT_RETRY_S", 1.0)
    rec = BreakingRecorder()
    a = replica(folder, url, mark, rec, start="on-demand")
    la = a.leased
    assert la is not None
    la.board.ttl_ms = 300_000  # renewed every 60 s here
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        rec.broken = True
        assert a.request_start(NAME) == "starting"
        await _until("the start refused", lambda: NAME in a.refusing, 5)
        assert a.runtime.agents.by_name(NAME) is None  # never run: no record
        yield a, la, rec
        tg.cancel_scope.cancel()


def redis_now(r: redis.Redis) -> float:
    """Redis's clock now (epoch seconds), as the leases read it."""
    return _epoch(cast(tuple[int, int], r.time()))


async def nothing_ran(a: HostedAgents, mark: str) -> None:
    """Once a renewal's step that took a start is over (its orders read, the start handed on or
    dropped in that same step) and every task waits: none was handed on (no run counted, no
    wake left set for the supervisor, no process)."""
    await anyio.wait_all_tasks_blocked()
    assert a.runs.get(NAME, 0) == 0 and not a._wake[NAME].is_set() and not marked(mark)


def marked(mark: str) -> set[int]:
    """The live processes whose command line is ``sleep MARK`` (the agent itself, in its sandbox)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv[:2] == [b"/usr/bin/sleep", mark.encode()]:
                state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.add(int(cmdline.parent.name))
    return found


if __name__ == "__main__":
    from gateway.events import LoggingSink

    folder, url, mark = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    anyio.run(replica(folder, url, mark, LoggingSink()).run)


def stoppable(tg: anyio.abc.TaskGroup, h: HostedAgents) -> anyio.CancelScope:
    """Start replica ``h`` in ``tg``; cancelling the scope returned stops it alone (as a
    gateway stop: it releases its leases) while the test goes on."""
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            await h.run()

    tg.start_soon(run)
    return scope
