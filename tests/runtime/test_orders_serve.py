"""Two real ``symbi serve`` replicas on one real Redis and PostgreSQL with one hosted agent
(``gateway.runtime.orders``): ``POST /api/agents/NAME/suspend`` sent to the replica that does
not hold the agent's lease suspends it in the one that does, whose audit names the admin.
Before, that replica answered 404 and nothing happened."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx

from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.conftest import ROOT, write_config
from tests.runtime._admin import admin_get, wait_until
from tests.runtime._leases import _require_bwrap  # noqa: F401 - the fixture
from tests.state.conftest import postgres_engine, redis_engine  # noqa: F401 - the engines' fixtures
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine
from tests.state.engines import enterable, replica
from tests.state.test_replicas import replica_toml


def test_a_suspend_sent_to_the_replica_without_the_lease_suspends_the_agent_on_the_holder(
    tmp_path: Path,
    redis_engine: RedisEngine,  # noqa: F811
    postgres_engine: PgEngine,  # noqa: F811
) -> None:
    enterable(tmp_path)
    mark = f"6301.{os.getpid()}"
    agent = f'[agents.sleeper]\ncommand = "/usr/bin/sleep"\nargs = ["{mark}"]\nsandbox = "bwrap"\n'
    configs = []
    for i in range(2):
        toml = replica_toml(tmp_path / f"data-{i}", ROOT / "policies.rego", ROOT / "tests/assets/policy/test-data.json",
                            redis_engine, postgres_engine, tmp_path)  # fmt: skip
        configs.append(write_config(tmp_path, toml + agent, name=f"replica-{i}.toml"))
    keys = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    key, _ = keys.create("ops-admin", ("admin",))
    keys.close()
    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(replica(c))[0] for c in configs]

        def holder() -> str | None:
            doc = admin_get(bases[0], key, "/status")["hosted_agents"]["agents"]["sleeper"]
            return doc["holder"] if doc and doc["state"] == "Running" else None

        owner = wait_until("one replica runs it", holder)
        held = [b for b in bases if admin_get(b, key, "/status")["hosted_agents"]["here"] == owner]
        [base_h] = held
        [base_o] = [b for b in bases if b != base_h]
        r = httpx.post(f"{base_o}/api/agents/sleeper/suspend", json={"reason": "odd"},
                       headers={"x-api-key": key}, timeout=10)  # fmt: skip
        assert r.status_code == 202 and r.json()["holder"] == owner, r.text

        def suspended() -> bool:
            rows = admin_get(base_h, key, "/agents")["agents"]
            return any(a["name"] == "sleeper" and a["state"] == "Suspended" for a in rows)

        wait_until("suspended on the holder", suspended)
        events = admin_get(base_h, key, "/audit/query?type=agent.suspend_requested")["events"]
        assert [e["principal"] for e in events] == ["ops-admin"]
