"""A hosted agent's run credential on a real PostgreSQL ([state] postgres_url): a run that ends
while PostgreSQL is down cannot revoke its key then. That must neither raise out of the run
(it ended the hosted-agent supervisor, and the gateway's lifespan with it) nor be forgotten:
the key is revoked as soon as the store answers again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from gateway.config.load import load_config
from gateway.events import LoggingSink
from gateway.runtime.core import AgentRuntime
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.launch import AgentHost, revoke_pending
from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.conftest import write_config
from tests.state.engines import Postgres as PgEngine


@pytest.mark.anyio
async def test_a_run_key_an_outage_kept_alive_is_revoked_when_postgres_returns(
    postgres_engine: PgEngine, tmp_path: Path
) -> None:
    cfg = load_config(write_config(tmp_path, '[agents.clock]\ncommand = "/bin/true"\n'), environ={})
    keys = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=1).open(), owns=True)
    try:
        runtime = AgentRuntime(cfg, LoggingSink(), key=b"k" * 32)
        hosted = HostedAgents(
            cfg, runtime, LoggingSink(), sandbox=None, host=AgentHost(str(tmp_path / "none.sock"), keys)
        )
        key, rec = keys.create("agent:clock", ("tester",), kind="agent")
        postgres_engine.stop()
        try:
            with anyio.fail_after(30):  # bound of the wait, not a timing assertion
                await hosted._revoke(rec.id)  # the end of a run: must not raise
        finally:
            postgres_engine.start()
        assert hosted.unrevoked == {rec.id}
        assert keys.lookup(key) is not None  # still live: the outage held it back
        revoke_pending(hosted.keys, hosted.unrevoked, logging.getLogger("test"))  # what the next run
        # (or the next run's end) does first
        assert keys.lookup(key) is None and hosted.unrevoked == set()
    finally:
        keys.close()
