"""One Redis and one PostgreSQL per test module (started once: the tests stay fast)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.state.engines import Postgres, Redis


@pytest.fixture(scope="module")
def redis_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    r = Redis(tmp_path_factory.mktemp("redis"))
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def postgres_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    pg = Postgres(tmp_path_factory.mktemp("pg"))
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
