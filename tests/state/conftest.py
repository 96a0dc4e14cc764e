"""One Redis and one PostgreSQL per test module (started once: the tests stay fast)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres as PgPool
from tests.state.engines import Postgres, Redis
from tests.state.keystores import eventually


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


@pytest.fixture
def cli(postgres_engine: Postgres) -> Iterator[PgApiKeyStore]:
    """Another process's store (the CLI's ``symbi keys``, or another replica): no cache."""
    s = PgApiKeyStore(PgPool(postgres_engine.url, timeout_s=2).open(), owns=True)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def served(postgres_engine: Postgres) -> Iterator[PgApiKeyStore]:
    """A serving gateway's store: the cache on, once its listen connection is subscribed."""
    s = PgApiKeyStore(PgPool(postgres_engine.url, timeout_s=2).open(), owns=True, cache=True)
    try:
        assert s.cache is not None
        cache = s.cache
        eventually("the listen connection subscribed", lambda: cache.ticket() is not None)
        yield s
    finally:
        s.close()


@pytest.fixture
def audit_pg(postgres_engine: Postgres) -> Iterator[PgPool]:
    """A pool on the module's PostgreSQL with no shipped audit chain (tests/state/test_audit_*)."""
    p = PgPool(postgres_engine.url, timeout_s=2).open()
    with p.cursor() as cur:  # each test starts from no shipped chain
        cur.execute(
            "DELETE FROM symbi_audit_events; DELETE FROM symbi_audit_chains; DELETE FROM symbi_audit_keys"
        )
    try:
        yield p
    finally:
        p.close()
