"""Policy reloads reach every replica: two real ``symbi serve`` replicas, each with its own copy
of the policy files (as pods with their own volumes), sharing a real Redis and PostgreSQL.

A reload on replica A (``POST /api/policy/reload`` after its files changed) decides the next
call through replica B; a broken policy reloaded on A is refused there and never reaches B;
a broken version written straight into PostgreSQL (what a replica of another release, or
someone with write access to the database, could put there) is refused by every replica,
the old policy keeps deciding, ``/readyz`` says ``degraded`` and the audit says why. Every
policy a replica loads is on its audit chain with its digest.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.policy.loader import policy_digest
from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import POLICY_CHANNEL, Postgres
from tests.conftest import ROOT, write_config
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine
from tests.state.engines import enterable, replica
from tests.state.test_replicas import _code, replica_toml, session

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@dataclass
class Pair:
    a: str
    b: str
    key: str  # principal "tester"
    admin: str  # an admin API key
    data_a: Path  # replica A's copy of the policy data
    pg_url: str


def _config(folder: Path, redis: RedisEngine, pg: PgEngine) -> Path:
    folder.mkdir()
    shutil.copy(ROOT / "policies.rego", folder / "policies.rego")
    shutil.copy(ROOT / "tests/assets/policy/test-data.json", folder / "data.json")
    toml = replica_toml(folder / "data", folder / "policies.rego", folder / "data.json", redis, pg, folder)
    return write_config(folder, toml)


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, redis_engine: RedisEngine, postgres_engine: PgEngine
) -> Iterator[Pair]:
    folder = tmp_path_factory.mktemp("broadcast")
    enterable(folder)
    cfg_a = _config(folder / "a", redis_engine, postgres_engine)
    cfg_b = _config(folder / "b", redis_engine, postgres_engine)
    keys = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    key, _ = keys.create("tester", ("tester",))
    admin, _ = keys.create("ops", ("admin",))
    keys.close()
    with contextlib.ExitStack() as stack:
        (a, _), (b, _) = stack.enter_context(replica(cfg_a)), stack.enter_context(replica(cfg_b))
        yield Pair(a, b, key, admin, folder / "a" / "data.json", postgres_engine.url)


def _api(base: str, key: str, path: str, method: str = "GET", **kw: Any) -> httpx.Response:
    return httpx.request(method, base + "/api" + path, headers={"x-api-key": key}, timeout=30, **kw)


async def _call_until(base: str, key: str, want: str | None) -> str | None:
    deadline = time.monotonic() + 10  # the bound of the wait, not an assertion on time
    got: str | None = "never called"
    while time.monotonic() < deadline:
        async with session(base, key) as s:
            got = _code(await s.call_tool("mut__echo", {"message": "hi"}))
        if got == want:
            break
    return got


def _events(
    base: str, admin: str, type_: str, want: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """The details of ``type_`` events on ``base``'s chain that ``want``, once there are some
    (an event is committed by the audit writer within a batch)."""
    deadline = time.monotonic() + 10  # the bound of the wait
    while True:
        r = _api(base, admin, f"/audit/query?type={type_}")
        assert r.status_code == 200, r.text
        found = [e["details"] for e in r.json()["events"] if want(e["details"])]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _version_is(version: int) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d.get("version") == version


def _ready(base: str) -> tuple[int, str]:
    r = httpx.get(base + "/readyz", timeout=10)
    return r.status_code, r.json()["components"]["policy"]


def _deny_echo(data: Path, deny: bool) -> None:
    doc = json.loads(data.read_text())
    doc["symbi_data"]["roles"]["tester"]["deny_tools"] = ["mut__echo"] if deny else []
    data.write_text(json.dumps(doc))


async def test_a_reload_on_one_replica_decides_calls_on_the_other(pair: Pair) -> None:
    assert await _call_until(pair.b, pair.key, None) is None
    _deny_echo(pair.data_a, True)
    r = _api(pair.a, pair.admin, "/policy/reload", "POST")
    assert r.status_code == 200 and r.json()["reloaded"] is True
    digest = r.json()["digest"]
    # B's files did not change: the new policy reaches it through PostgreSQL (a tool the policy
    # denies is not listed, and refused by name as unknown)
    assert await _call_until(pair.b, pair.key, "unknown_tool") == "unknown_tool"
    status = _api(pair.b, pair.admin, "/policy/status").json()
    assert (status["digest"], status["source"]) == (digest, "broadcast")
    published = _events(pair.a, pair.admin, "policy.published", lambda d: d["digest"] == digest)
    assert len(published) == 1
    loaded = _events(pair.b, pair.admin, "policy.reloaded", lambda d: d["digest"] == digest)
    assert [(d["source"], d["version"]) for d in loaded] == [("broadcast", published[0]["version"])]
    # and back: allowed again on B
    _deny_echo(pair.data_a, False)
    assert _api(pair.a, pair.admin, "/policy/reload", "POST").status_code == 200
    assert await _call_until(pair.b, pair.key, None) is None


async def test_a_broken_reload_is_refused_and_never_reaches_the_other(pair: Pair) -> None:
    before = _api(pair.b, pair.admin, "/policy/status").json()["digest"]
    good = pair.data_a.read_text()
    pair.data_a.write_text('{"symbi_data": ')  # not JSON
    try:
        r = _api(pair.a, pair.admin, "/policy/reload", "POST")
        assert r.status_code == 422 and r.json()["reloaded"] is False
    finally:
        pair.data_a.write_text(good)
    time_to_spread = time.monotonic() + 2  # (not a timing assertion) what a broadcast would take
    while time.monotonic() < time_to_spread:
        assert _api(pair.b, pair.admin, "/policy/status").json()["digest"] == before
        await anyio.sleep(0.2)
    assert await _call_until(pair.b, pair.key, None) is None


async def test_a_broken_version_in_postgres_is_refused_by_every_replica(pair: Pair) -> None:
    # what an attacker or a replica of another release could write: a policy that does not
    # compile, under its true digest, and one whose text does not match its digest
    digests = {base: _api(base, pair.admin, "/policy/status").json()["digest"] for base in (pair.a, pair.b)}
    broken = "package symbi\n\ndecision := {"
    good = (ROOT / "policies.rego").read_text() + "\n# not the digest's text\n"
    pg = Postgres(pair.pg_url, timeout_s=2).open()
    try:
        for text, digest in ((broken, policy_digest(broken, None)), (good, "0" * 64)):
            with pg.cursor(transaction=True) as cur:
                cur.execute(
                    "INSERT INTO symbi_policies (digest, policy_name, policy, tests, publisher, published)"
                    " VALUES (%s, 'intruder.rego', %s, '[]', 'intruder', 0) RETURNING version",
                    (digest, text),
                )
                row = cur.fetchone()
                assert row is not None
                version = int(row[0])
                cur.execute(f"NOTIFY {POLICY_CHANNEL}")
            for base in (pair.a, pair.b):
                deadline = time.monotonic() + 10  # the bound of the wait
                while True:
                    status = _api(base, pair.admin, "/policy/status").json()
                    if status.get("refused", {}).get("version") == version or time.monotonic() > deadline:
                        break
                    await anyio.sleep(0.1)
                assert status["refused"]["version"] == version and status["digest"] == digests[base]
                assert _ready(base) == (200, "degraded")
                refusals = _events(base, pair.admin, "policy.reload_refused", _version_is(version))
                assert [(d["source"], d["publisher"]) for d in refusals] == [("broadcast", "intruder")]
    finally:
        pg.close()
    # the old policy keeps deciding on both
    for base in (pair.a, pair.b):
        assert await _call_until(base, pair.key, None) is None
