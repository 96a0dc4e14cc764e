"""Bus fixtures: a real redis-server (Debian package) on 127.0.0.1, random port, own folder:
the shared-state tests' server (``tests.state.engines.Redis``: the port proven its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.state.engines import Redis

RedisServer = Redis  # the name the bus tests use


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()  # fails the test, naming the package, when redis-server is not installed
    try:
        yield server
    finally:
        server.stop()
