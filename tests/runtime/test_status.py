"""Where each hosted agent runs, as ``/api/status`` (``symbi status``, ``symbi agents status``)
shows it (``gateway.runtime.status.hosted_agents``): with replicas on one Redis, whichever
replica answers names the one process that runs it (the admin API behind the front reaches
one worker only, which showed its own view: the agent it ran, or nothing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.config.model import Config
from gateway.config.sections import AgentConfig, GatewaySection
from gateway.runtime.core import AgentRuntime
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.status import hosted_agents
from gateway.state.leases import RENEW_S, process_name
from tests.runtime._leases import NAME, START_S, _running, fresh, marked, replica  # noqa: F401 - the fixture
from tests.runtime.test_core import Recorder
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio


def _view(h: HostedAgents) -> dict[str, Any]:
    return hosted_agents(h.config, h.runtime, h)


def _state(h: HostedAgents) -> str | None:
    """The agent's state as ``h`` shows it (the holder's, written at its last renewal)."""
    doc = _view(h)["agents"][NAME]
    return None if doc is None else str(doc["state"])


async def test_every_replica_names_the_process_that_runs_each_hosted_agent(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811 - the imported fixture
) -> None:
    mark = f"6101.{time.monotonic_ns()}"
    a, b = (
        replica(tmp_path / "a", fresh.url, mark, Recorder()),
        replica(tmp_path / "b", fresh.url, mark, Recorder()),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        tg.start_soon(b.run)
        deadline = time.monotonic() + START_S + 2 * RENEW_S  # the bound of the wait
        while not (marked(mark) and all(_state(h) == "Running" for h in (a, b))):
            assert time.monotonic() < deadline, "the holder's status never reached both"
            await anyio.sleep(0.1)
        holder = a if _running(a) else b
        assert holder.leased is not None
        views = [_view(h) for h in (a, b)]
        for v in views:
            doc = v["agents"][NAME]
            assert doc["holder"] == holder.leased.board.owner
            assert doc["state"] == "Running" and doc["run"] == 1
            assert isinstance(v["read_at"], float)
        assert a.leased is not None and b.leased is not None
        assert {v["here"] for v in views} == {a.leased.board.owner, b.leased.board.owner}
        tg.cancel_scope.cancel()


def test_one_gateway_names_itself_for_its_hosted_agents(tmp_path: Path) -> None:
    config = Config(
        gateway=GatewaySection(data_dir=tmp_path / "data"),
        agents={
            "on": AgentConfig(command="/bin/true"),
            "off": AgentConfig(command="/bin/true", enabled=False),
        },
    )
    rec = Recorder()
    h = HostedAgents(config, AgentRuntime(config, rec), rec, sandbox=None, host=None)
    view = hosted_agents(config, h.runtime, h)
    here = process_name(config.data_dir)
    assert view["here"] == here and h.leased is None
    assert view["agents"] == {
        "on": {"holder": here, "state": "Initializing", "run": 0, "agent": None},
        "off": None,
    }
