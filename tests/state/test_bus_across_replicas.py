"""The agent bus across replicas: two real ``symbi serve`` replicas with their own data dirs,
sharing a real Redis and PostgreSQL as a team deployment does (``[state]``, no ``[bus]
backend``: the bus goes on the state's Redis), and one bus secret (``SYMBI_BUS_SECRET``,
from the deployment's Secret). An agent on each: direct, request/reply and pub/sub messages
cross from one replica to the other, both ways.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.bus.test_http_bus import SECRET, agent, exchange
from tests.conftest import write_config
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine
from tests.state.engines import replica

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _config(folder: Path, i: int, redis: RedisEngine, pg: PgEngine, secret: str) -> Path:
    return write_config(
        folder,
        f"""
        [gateway]
        data_dir = "{folder / f"data-{i}"}"
        [sandbox]
        code_tools = false
        [context]
        enabled = false
        [bus]
        secret = "{secret}"
        [state]
        redis_url = "{redis.url}"
        postgres_url = "{pg.url}"
        """,
        name=f"replica-{i}.toml",
    )


async def test_agents_on_two_replicas_exchange_messages(
    tmp_path: Path, redis_engine: RedisEngine, postgres_engine: PgEngine
) -> None:
    secret = base64.b64encode(os.urandom(32)).decode()  # (the test writes it in the file)
    configs = [_config(tmp_path, i, redis_engine, postgres_engine, secret) for i in range(2)]
    keys = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    key_a, _ = keys.create("tester", ("tester",))
    key_b, _ = keys.create("tester", ("tester",))
    keys.close()
    with replica(configs[0]) as (one, _), replica(configs[1]) as (two, _):
        async with agent(one + "/mcp", key_a) as a, agent(two + "/mcp", key_b) as b:
            await exchange(a, b)
            await exchange(b, a)
    for i in range(2):  # metadata only on record, never a body
        assert SECRET.encode() not in b"".join(
            p.read_bytes() for p in (tmp_path / f"data-{i}").glob("audit*")
        )
