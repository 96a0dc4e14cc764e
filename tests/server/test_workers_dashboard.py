"""The dashboard under ``symbi serve --workers 2`` (real workers behind a real HAProxy, on a
real Redis and PostgreSQL): a login holds on every worker, and so does its logout."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from gateway.server.dashboard import COOKIE
from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.server.test_workers import _config, _worker_ports, supervisor
from tests.state.conftest import postgres_engine, redis_engine  # noqa: F401 - the engines' fixtures
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine


def _admin_key(pg: PgEngine) -> str:
    keys = PgApiKeyStore(Postgres(pg.url, timeout_s=2).open(), owns=True)
    key, _ = keys.create("dash-admin", ("admin",))
    keys.close()
    return key


def _status(url: str, cookie: str) -> int:
    return httpx.get(url, headers={"cookie": f"{COOKIE}={cookie}"}, follow_redirects=False).status_code


def test_a_dashboard_login_and_its_logout_hold_on_every_worker(
    tmp_path: Path,
    redis_engine: RedisEngine,  # noqa: F811 - the imported fixture
    postgres_engine: PgEngine,  # noqa: F811
) -> None:
    """Each worker made its own cookie secret: a login held on the worker that issued it only,
    while the front balances requests round robin (every other page went to the login page)."""
    config = _config(tmp_path, redis_engine, postgres_engine)
    key = _admin_key(postgres_engine)
    with supervisor(config) as (base, _proc), httpx.Client(base_url=base) as web:
        workers = [f"http://127.0.0.1:{port}" for port in _worker_ports(config)]
        r = web.post("/login", data={"api_key": key})
        assert r.status_code == 303
        pages, cookie = r.headers["location"].rstrip("/"), r.cookies[COOKIE]
        for _ in range(4):  # round robin through the front
            assert web.get(pages + "/audit", follow_redirects=False).status_code == 200
        for worker in workers:  # and each worker on its own
            assert _status(worker + pages + "/audit", cookie) == 200, worker
        match = re.search(r'name="csrf" value="([^"]+)"', web.get(pages + "/agents").text)
        assert match is not None
        assert web.post(pages + "/logout", data={"csrf": match.group(1)}).status_code == 303
        for worker in workers:  # the logout one worker answered holds on the other too
            assert _status(worker + pages + "/audit", cookie) == 303, worker

        r = web.post("/login", data={"api_key": key})
        pages, cookie = r.headers["location"].rstrip("/"), r.cookies[COOKIE]
        assert _status(workers[0] + pages + "/audit", cookie) == 200
        redis_engine.stop()  # where the logouts are kept: not answering, no session is taken as live
        try:
            for worker in workers:
                assert _status(worker + pages + "/audit", cookie) == 303, worker
        finally:
            redis_engine.start()
