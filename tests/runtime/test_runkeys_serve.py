"""A hosted agent's run credential on a replica that does not run it (gateway/runtime/runkeys.py):
two real ``symbi serve`` replicas on one real Redis and PostgreSQL, one hosted agent in bwrap
that prints its token to its own log (the leak). Before, the other replica took that token as
a session agent of ``agent:sleeper`` whatever the hosted agent's state: suspended, or its
holder killed with the key never revoked."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest

from gateway.config.model import Config
from gateway.config.sections import AgentConfig, StateSection
from gateway.context import Principal
from gateway.errors import AuthFailed, StateUnavailable
from gateway.events import LoggingSink
from gateway.runtime.core import AgentRuntime
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.runkeys import RunCredentials
from gateway.state.leases import LeaseBoard
from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.conftest import ROOT, free_port, write_config
from tests.runtime._admin import admin_get, wait_until
from tests.runtime._leases import _require_bwrap  # noqa: F401 - the fixture
from tests.state.conftest import postgres_engine, redis_engine  # noqa: F401 - the engines' fixtures
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine
from tests.state.engines import enterable, replica
from tests.state.test_replicas import replica_toml

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "leak", "version": "1"},
    },
}


def _mcp(base: str, token: str) -> int:
    """The status of an MCP ``initialize`` sent with the agent's token."""
    headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"}
    return httpx.post(base + "/mcp", json=INIT, headers=headers, timeout=10).status_code


def _token(data_dir: Path, seen: set[str]) -> str | None:
    """A token the agent printed to its log in ``data_dir`` not in ``seen`` (a new run's)."""
    log = data_dir / "agents" / "sleeper.log"
    found = re.findall(r"TOKEN=(symbi_\S+)", log.read_text()) if log.exists() else []
    fresh = [t for t in found if t not in seen]
    return fresh[-1] if fresh else None


@pytest.mark.slow
def test_a_leaked_run_token_is_refused_by_other_replicas_while_its_agent_is_not_running(
    tmp_path: Path,
    redis_engine: RedisEngine,  # noqa: F811
    postgres_engine: PgEngine,  # noqa: F811
    _require_bwrap: None,  # noqa: F811
) -> None:
    enterable(tmp_path)
    mark = f"6381.{os.getpid()}"
    agent = (
        '[agents.sleeper]\ncommand = "/usr/bin/sh"\nsandbox = "bwrap"\nrestart = "always"\n'
        f'args = ["-c", "echo TOKEN=$SYMBI_AGENT_TOKEN; exec /usr/bin/sleep {mark}"]\n'
    )
    configs, data = [], []
    for i in range(2):
        data.append(tmp_path / f"data-{i}")
        toml = replica_toml(data[i], ROOT / "policies.rego", ROOT / "tests/assets/policy/test-data.json",
                            redis_engine, postgres_engine, tmp_path)  # fmt: skip
        configs.append(write_config(tmp_path, toml + agent, name=f"replica-{i}.toml"))
    keys = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    admin, _ = keys.create("ops-admin", ("admin",))
    keys.close()
    with contextlib.ExitStack() as stack:
        served = [stack.enter_context(replica(c)) for c in configs]
        bases = [b for b, _ in served]

        def holder() -> str | None:
            doc = admin_get(bases[0], admin, "/status")["hosted_agents"]["agents"]["sleeper"]
            return doc["holder"] if doc and doc["state"] == "Running" and doc.get("key") else None

        owner = wait_until("one replica runs it", holder)
        [h] = [
            i for i, b in enumerate(bases) if admin_get(b, admin, "/status")["hosted_agents"]["here"] == owner
        ]
        o = 1 - h
        token = wait_until("the agent printed its token", lambda: _token(data[h], set()))
        assert _mcp(bases[h], token) == 200  # its own replica: the agent itself
        assert _mcp(bases[o], token) == 200  # Running: the other replica admits it too

        # suspended by an operator: the other replica refuses the token at once
        r = httpx.post(f"{bases[h]}/api/agents/sleeper/suspend", json={"reason": "leak"},
                       headers={"x-api-key": admin}, timeout=10)  # fmt: skip
        assert r.status_code in (200, 202), r.text
        wait_until("suspended on the holder", lambda: _mcp(bases[o], token) == 401)
        assert _mcp(bases[o], token) == 401

        # the holder killed (its key never revoked): the other replica takes the lease and runs
        # a new run with a new key; the old token stays refused there
        served[h][1].send_signal(signal.SIGKILL)
        served[h][1].wait(10)
        new = wait_until("the other replica runs a new run", lambda: _token(data[o], {token}))
        wait_until("its run is on the board", lambda: _mcp(bases[o], new) == 200)
        assert _mcp(bases[o], token) == 401


@pytest.mark.anyio
async def test_a_run_token_is_refused_when_the_lease_board_is_unreachable(tmp_path: Path) -> None:
    """Fail closed: the board (a real Redis client) cannot be reached: ``StateUnavailable``."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    config = Config(
        state=StateSection(redis_url=dead, timeout_s=1), agents={"sleeper": AgentConfig(command="/bin/true")}
    )
    events = LoggingSink()
    board = LeaseBoard(dead, owner="here", timeout_s=1)
    hosted = HostedAgents(config, AgentRuntime(config, events), events, sandbox=None, host=None, board=board)
    runs = RunCredentials(config)
    p = Principal(id="agent:sleeper", kind="agent", source="key", claims={"key_id": "0123456789ab"})
    assert runs.applies(p)
    with pytest.raises(StateUnavailable):
        await runs.admit(p, hosted)
    await board.aclose()
    # not started yet, or no leases at all: refused too
    with pytest.raises(AuthFailed):
        await runs.admit(p, None)
    no_board = HostedAgents(config, AgentRuntime(config, events), events, sandbox=None, host=None)
    with pytest.raises(AuthFailed):
        await runs.admit(p, no_board)
    # a user's key, or a key of another principal, is none of its business
    assert not runs.applies(Principal(id="agent:sleeper", kind="user", source="key", claims={"key_id": "x"}))
    assert not runs.applies(Principal(id="agent:other", kind="agent", source="key", claims={"key_id": "x"}))
    await anyio.lowlevel.checkpoint()
