"""One gateway process builds one Redis client (one connection pool) for ``[state]
redis_url``, at the assembly point, and every state component on that Redis uses it: the rate
limiter, the hand-outs, the hosted agents' leases and the session agents' board. It is closed
once, when the gateway stops: the process leaves no connection open on the server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from gateway.assemble import make_gateway
from gateway.config.load import load_config
from gateway.state import RedisRateLimiter
from gateway.state.handouts import RedisHandOuts
from gateway.state.leases import LeaseBoard
from tests.conftest import write_config
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio


def _clients(r: Any) -> int:
    return len(r.client_list()) - 1  # the connections besides this one


async def test_every_state_component_shares_the_one_client_closed_at_stop(
    tmp_path: Path, redis_engine: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[object] = []  # every lease board built, and the client it was given
    real = LeaseBoard.__init__

    def counted(self: LeaseBoard, *a: Any, **kw: Any) -> None:
        made.append(kw.get("client"))
        real(self, *a, **kw)

    monkeypatch.setattr(LeaseBoard, "__init__", counted)
    cfg = load_config(
        write_config(
            tmp_path,
            f"""
            [sandbox]
            code_tools = false
            [state]
            redis_url = "{redis_engine.url}"
            timeout_s = 1
            probe_interval_s = 0.2
            [agents.clock]
            command = "/bin/true"
            sandbox = "bwrap"
            start = "on-demand"
            restart = "never"
            """,
        )
    )
    probe = redis.Redis.from_url(redis_engine.url)
    before = _clients(probe)
    gw = make_gateway(cfg)
    st = gw.state
    assert st is not None and st.redis is not None and st.sessions is not None
    assert gw.hosted is not None and gw.hosted.leased is not None
    assert isinstance(st.limiter, RedisRateLimiter) and isinstance(st.handouts, RedisHandOuts)
    assert st.limiter._r is st.redis and st.handouts._r is st.redis
    assert st.sessions.board.redis is st.redis and gw.hosted.leased.board.redis is st.redis
    assert made == [st.redis]  # one board, on the one client: none built from the URL and dropped
    async with gw.running():
        await anyio.sleep(1)  # the probes, the leases and the session board all at work
        assert _clients(probe) > before
    deadline = (
        time.monotonic() + 10
    )  # the bound of the wait (the server sees the close), not a timing assertion
    while _clients(probe) != before:
        assert time.monotonic() < deadline, "the process left connections open"
        await anyio.sleep(0.1)
    assert st.redis is None  # closed once
