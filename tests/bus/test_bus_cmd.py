"""``symbi bus stats|verify|tail`` on a real store: counts, signatures, the chain of ids, and
metadata only (a body never appears in the output)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import cast

import anyio
import pytest
import redis
from redis.typing import EncodableT, FieldT

from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing, load_secret
from gateway.bus.embedded import EmbeddedBackend
from gateway.context import Principal
from gateway.events import LoggingSink
from tests.bus.conftest import RedisServer
from tests.conftest import SYMBI, symbi_env, write_config

pytestmark = pytest.mark.slow

BODY = "secret-body-for-the-cli-test"


def _fill(data: Path) -> None:
    async def run() -> None:
        backend = EmbeddedBackend(data / "bus.db")
        await backend.start()
        bus = Bus(
            backend,
            KeyRing(load_secret(data / "bus-secret"), data / "bus-keys.db"),
            events=LoggingSink(),
            buffer_size=100,
        )
        a, b = Principal(id="t", agent="ag-a"), Principal(id="t", agent="ag-b")
        await bus.register("ag-b", "t")
        await bus.subscribe(b, "team.*")
        for i in range(5):
            await bus.send(a, "ag-b", f"{BODY}-{i}")
        await bus.publish(a, "team.news", BODY)
        await bus.receive(b, max_items=2)
        await backend.close()

    anyio.run(run)


def symbi(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYMBI), "bus", *args, "--config", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    c = write_config(tmp_path, "")
    _fill(tmp_path / "data")
    return c


def test_stats_tail_verify(cfg: Path) -> None:
    stats = json.loads(symbi(cfg, "stats").stdout)
    assert stats["counters"]["sent"] == 6 and stats["counters"]["delivered"] == 2
    assert stats["pending_by_inbox"] == {"ag-b": 4}
    tail = symbi(cfg, "tail", "--json")
    rows = [json.loads(x) for x in tail.stdout.splitlines()]
    assert len(rows) == 6 and BODY not in tail.stdout
    topic = [json.loads(x) for x in symbi(cfg, "tail", "--json", "--topic", "team.news").stdout.splitlines()]
    assert [r["topic"] for r in topic] == ["team.news"]
    v = symbi(cfg, "verify", "--json")
    assert v.returncode == 0, v.stdout + v.stderr
    assert json.loads(v.stdout)["checked"] == 6


def test_verify_finds_tampering_and_a_removed_message(cfg: Path, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "data" / "bus.db")
    with db:
        seq, c = db.execute("SELECT seq, c FROM messages WHERE inbox='ag-b' ORDER BY seq LIMIT 1").fetchone()
        db.execute("UPDATE messages SET c=? WHERE seq=?", (bytes([c[0] ^ 1]) + c[1:], seq))
        third = db.execute(
            "SELECT seq FROM messages WHERE inbox='ag-b' ORDER BY seq LIMIT 1 OFFSET 2"
        ).fetchone()[0]
        db.execute("DELETE FROM messages WHERE seq=?", (third,))
    v = symbi(cfg, "verify", "--json")
    assert v.returncode == 1
    problems = [p["problem"].split(":")[0] for p in json.loads(v.stdout)["problems"]]
    assert sorted(problems) == ["bad signature", "gap"]


def test_on_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    from gateway.bus.redis_backend import RedisBackend

    cfg = write_config(tmp_path, f'[bus]\nbackend = "redis"\nurl = "{redis_server.url}"\n')
    data = tmp_path / "data"

    async def fill() -> None:
        backend = RedisBackend(redis_server.url)
        await backend.start()
        bus = Bus(
            backend,
            KeyRing(load_secret(data / "bus-secret"), data / "bus-keys.db"),
            events=LoggingSink(),
            buffer_size=100,
        )
        await bus.register("ag-b", "t")
        for i in range(3):
            await bus.send(Principal(id="t", agent="ag-a"), "ag-b", f"{BODY}-{i}")
        await backend.close()

    anyio.run(fill)
    stats = json.loads(symbi(cfg, "stats").stdout)
    assert stats["backend"] == "redis" and stats["pending_by_inbox"] == {"ag-b": 3}
    tail = symbi(cfg, "tail", "--json")
    assert len(tail.stdout.splitlines()) == 3 and BODY not in tail.stdout
    assert symbi(cfg, "verify").returncode == 0
    r = redis.Redis.from_url(redis_server.url)
    (key,) = cast(list[bytes], r.keys("symbi:bus:inbox:*"))
    _, fields = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(key, count=1))[0]
    forged = {**fields, b"c": bytes([fields[b"c"][0] ^ 1]) + fields[b"c"][1:]}
    r.xadd(key, cast("dict[FieldT, EncodableT]", forged))  # a forged copy
    assert symbi(cfg, "verify").returncode == 1


def test_verify_on_redis_makes_one_connection(tmp_path: Path, redis_server: RedisServer) -> None:
    # the scan and the key lookups each opened a client of their own (two connects, two PINGs)
    cfg = write_config(tmp_path, f'[bus]\nbackend = "redis"\nurl = "{redis_server.url}"\n')
    r = redis.Redis.from_url(redis_server.url)
    try:
        before = int(cast(dict[str, int], r.info("stats"))["total_connections_received"])
        assert symbi(cfg, "verify").returncode == 0
        after = int(cast(dict[str, int], r.info("stats"))["total_connections_received"])
    finally:
        r.close()
    assert after - before == 1
