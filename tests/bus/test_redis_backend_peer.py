"""``bus.url`` answered by something that is not Redis (an echoing peer, as a socket connected
to itself): the bus backend's start and its CLI's connection refuse it at PING, which they
took as answered whatever came back."""

from __future__ import annotations

import anyio
import pytest

from gateway.bus.redis_backend import RedisBackend, sync_client
from gateway.errors import BusError
from tests._echo import echo_redis_url

pytestmark = pytest.mark.anyio


async def test_the_bus_backend_refuses_a_peer_that_does_not_answer_pong() -> None:
    async with echo_redis_url() as url:
        backend = RedisBackend(url)
        try:
            with anyio.fail_after(10), pytest.raises(BusError):
                await backend.start()
        finally:
            await backend.close()


async def test_the_bus_cli_refuses_a_peer_that_does_not_answer_pong() -> None:
    async with echo_redis_url() as url:
        with pytest.raises(BusError):
            await anyio.to_thread.run_sync(_connect, url)


def _connect(url: str) -> None:
    with sync_client(url):
        pass
