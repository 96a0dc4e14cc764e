"""``symbi bus stats|verify|tail`` on a real store: counts, signatures, the chain of ids, and
metadata only (a body never appears in the output)."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis
from redis.typing import EncodableT, FieldT

from gateway.bus import embedded, redis_backend
from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing, load_secret
from gateway.bus.embedded import EmbeddedBackend, open_db
from gateway.bus.redis_backend import sync_client
from gateway.cli import EXIT_FAIL, EXIT_OK, EXIT_USAGE, main
from gateway.context import Principal
from gateway.errors import BusUnavailable
from gateway.events import LoggingSink
from gateway.state.health import safe_url
from gateway.state.redisclient import open_sync_redis
from tests.bus.conftest import RedisServer
from tests.conftest import SYMBI, symbi_env, write_config

pytestmark = pytest.mark.slow

BODY = "secret-body-for-the-cli-test"
# the gateways' shared [bus] secret (SYMBI_BUS_SECRET): verify reads it, never makes one
SECRET = base64.b64encode(bytes(range(32))).decode()


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


_HANDSHAKE = {b"AUTH", b"CLIENT", b"SELECT", b"PING"}  # what redis-py's connect and PING send


class _Stalled:
    """A real TCP peer on 127.0.0.1 that accepts and reads but never answers (a frozen Redis),
    or that answers the connect's handshake and PING (OK, PONG) and then nothing: a Redis
    that stalls mid-command."""

    def __init__(self, handshake: bool) -> None:
        self.handshake = handshake
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # (closed at the end of the test)
            while True:
                peer, _ = self.sock.accept()
                self.peers.append(peer)
                threading.Thread(target=self._answer, args=(peer,), daemon=True).start()

    def _answer(self, peer: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while self.handshake and (data := peer.recv(65536)):
                names = _command_names(data)  # (a handshake's commands arrive whole on loopback)
                if not set(names) <= _HANDSHAKE:
                    return  # a command: never answered
                peer.sendall(b"".join(b"+PONG\r\n" if n == b"PING" else b"+OK\r\n" for n in names))

    def close(self) -> None:
        for p in [*self.peers, self.sock]:
            p.close()


def _command_names(data: bytes) -> list[bytes]:
    """The names of the RESP commands (arrays of bulk strings) in ``data``."""
    lines, names, i = data.split(b"\r\n"), [], 0
    while i < len(lines):
        if lines[i].startswith(b"*"):
            names.append(lines[i + 2].upper())
            i += 1 + 2 * int(lines[i][1:])
        else:
            i += 1
    return names


def _run(*argv: str) -> int:
    """``symbi`` in this process, failed when it does not return (a hang is the bug)."""
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(main(list(argv))), daemon=True)
    t.start()
    t.join(60)  # the bound of the wait, far over the shortened read timeout
    assert done, f"symbi {' '.join(argv)} did not return"
    return done[0]


@pytest.mark.parametrize("handshake", [False, True], ids=["never-answers", "stalls-after-ping"])
def test_a_redis_that_accepts_and_stalls_fails_every_bus_command_closed(
    tmp_path: Path, handshake: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the CLI's client had no read timeout: each command waited forever on such a Redis
    monkeypatch.setattr(redis_backend, "SYNC_READ_S", 0.5)
    peer = _Stalled(handshake)
    try:
        url = f"redis://:s3cret@127.0.0.1:{peer.port}/0"
        cfg = write_config(tmp_path, f'[bus]\nbackend = "redis"\nsecret = "{SECRET}"\nurl = "{url}"\n')
        for command in ("stats", "verify", "tail"):
            assert _run("bus", command, "--config", str(cfg)) == EXIT_FAIL
            err = capsys.readouterr().err
            assert safe_url(url) in err and "s3cret" not in err  # the backend named, no password
        with pytest.raises(BusUnavailable), sync_client(url) as r:  # the error's type
            r.scan(0)
    finally:
        peer.close()


def test_a_paused_redis_fails_the_command_closed(tmp_path: Path, redis_server: RedisServer) -> None:
    # a real redis-server holding every client (CLIENT PAUSE ... ALL), the CLI's own timeouts
    cfg = write_config(
        tmp_path, f'[bus]\nbackend = "redis"\nsecret = "{SECRET}"\nurl = "{redis_server.url}"\n'
    )
    r = redis.Redis.from_url(redis_server.url)
    try:
        r.client_pause(60_000, all=True)
        v = symbi(cfg, "verify")  # (symbi's bound: 60 s; waited forever before)
    finally:
        r.close()
    assert v.returncode == EXIT_FAIL and redis_server.url in v.stderr, v.stderr


def test_every_bus_command_opens_one_sqlite_connection_and_closes_it(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # verify opened two read-only connections (the scan's, the keys'), none closed
    opened: list[sqlite3.Connection] = []

    def spied(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
        opened.append(open_db(path, readonly=readonly))  # (kept: not closed by its collection)
        return opened[-1]

    monkeypatch.setattr(embedded, "open_db", spied)
    for command in ("stats", "verify", "tail"):
        opened.clear()
        assert _run("bus", command, "--config", str(cfg)) == EXIT_OK
        assert len(opened) == 1, command
        with pytest.raises(sqlite3.ProgrammingError):  # closed (a getter with no thread check)
            opened[0].total_changes  # noqa: B018


def test_every_bus_command_opens_one_redis_client_and_closes_it(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(
        tmp_path, f'[bus]\nbackend = "redis"\nsecret = "{SECRET}"\nurl = "{redis_server.url}"\n'
    )
    opened: list[redis.Redis] = []

    def spied(url: str, connect_timeout_s: float, timeout_s: float | None = None) -> redis.Redis:
        opened.append(open_sync_redis(url, connect_timeout_s, timeout_s))  # (kept, as above)
        return opened[-1]

    monkeypatch.setattr(redis_backend, "open_sync_redis", spied)
    r = redis.Redis.from_url(redis_server.url)
    try:
        mine = int(cast(int, r.client_id()))
        for command in ("stats", "verify", "tail"):
            opened.clear()
            before = int(cast(dict[str, int], r.info("stats"))["total_connections_received"])
            assert _run("bus", command, "--config", str(cfg)) == EXIT_OK
            after = int(cast(dict[str, int], r.info("stats"))["total_connections_received"])
            assert (len(opened), after - before) == (1, 1), command
            others = [c for c in cast(list[dict[str, Any]], r.client_list()) if int(c["id"]) != mine]
            deadline = time.monotonic() + 10  # the server sees the close a moment later (bound)
            while others and time.monotonic() < deadline:
                time.sleep(0.05)
                others = [c for c in cast(list[dict[str, Any]], r.client_list()) if int(c["id"]) != mine]
            assert others == [], command  # closed, not left to the collector
    finally:
        r.close()


@pytest.mark.parametrize("shape", ["not-a-database", "a-directory"])
def test_a_bus_store_that_cannot_be_read_fails_the_command_closed(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    # a file that is no database failed at the first query, one that cannot be opened (a
    # directory here; one closed to this user alike: the suite runs as root) at the open, each
    # with a traceback: the command's own error now, exit 1, naming the store
    store = tmp_path / "data" / "bus.db"
    for extra in ("-wal", "-shm"):
        store.with_name(store.name + extra).unlink(missing_ok=True)
    if shape == "a-directory":
        store.unlink()
        store.mkdir()
    else:
        store.write_bytes(b"not a database " * 100)
    for command in ("stats", "verify", "tail"):
        assert _run("bus", command, "--config", str(cfg)) == EXIT_FAIL
        assert str(store) in capsys.readouterr().err
    from gateway.cli.bus_cmd import _Source
    from gateway.config import load_config

    with pytest.raises(BusUnavailable), _Source(load_config(cfg)):
        pass


def test_a_data_dir_whose_path_has_uri_characters_is_read(tmp_path: Path) -> None:
    # the read-only open passed the path into a URI unquoted: "#" cut it (a file "…/a" not found)
    room = tmp_path / "a#b?c%20"
    room.mkdir()
    c = write_config(room, "")
    _fill(room / "data")
    assert _run("bus", "stats", "--config", str(c)) == EXIT_OK


def test_reading_commands_never_make_a_bus_secret(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # stats, tail and verify made a fresh bus-secret where none was (an operator's shell without
    # SYMBI_BUS_SECRET): verify then read every message as forged; stats and tail need none
    secret = tmp_path / "data" / "bus-secret"
    secret.unlink()
    for command in ("stats", "tail"):
        assert _run("bus", command, "--config", str(cfg)) == EXIT_OK
    assert _run("bus", "verify", "--config", str(cfg)) == EXIT_USAGE  # a ConfigError, naming it
    assert str(secret) in capsys.readouterr().err
    assert not secret.exists()
