"""The API key cache's LISTEN thread (``gateway.state.keycache.KeyListener``) on a real
PostgreSQL: the heartbeat keeps the cache fresh; a listen connection made silent (its backend
SIGSTOPped: no RST, the kernel still ACKs) or whose packets are dropped stops the cache within
``STALE_S`` and a revocation made meanwhile is honoured; ``stop()`` ends the thread even on a
server that never answers; the thread never holds a process open; the serving authenticator
caches keys, the CLI's store does not.

Each waits with a bound ("within N s"), never a timing assertion.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway.config.load import build_config
from gateway.errors import AuthFailed
from gateway.server.auth import Authenticator, open_api_keys
from gateway.state.keycache import APPLICATION, HEARTBEAT_S, STALE_S, KeyCache, KeyListener
from gateway.state.pgkeys import PgApiKeyStore
from tests.state.engines import Postgres as PgEngine
from tests.state.keystores import WAIT_S, eventually, served_from_cache


def backends(cli: PgApiKeyStore, application: str | None = None) -> list[int]:
    """The pids of this database's client backends (of ``application``), the query's own left out."""
    with cli._pg.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type='client backend' AND pid<>pg_backend_pid()"
            " AND (%s::text IS NULL OR application_name=%s)",
            (application, application),
        )
        return [int(r[0]) for r in cur.fetchall()]


def test_the_serving_authenticator_caches_keys_and_the_cli_store_does_not(
    tmp_path: Path, postgres_engine: PgEngine, cli: PgApiKeyStore
) -> None:
    cfg = build_config(
        {
            "gateway": {"data_dir": str(tmp_path)},
            "state": {"postgres_url": postgres_engine.url, "timeout_s": 2},
        }
    )
    before = len(backends(cli))
    store = open_api_keys(cfg)  # the CLI's: no cache, no listen connection
    assert isinstance(store, PgApiKeyStore) and store.cache is None
    key, rec = store.create("judy", ("ops",))
    assert store.lookup(key) == rec
    store.close()  # it owns its pool: closing the store closes the pool's connections
    eventually("the CLI store's connections closed", lambda: len(backends(cli)) == before)
    auth = Authenticator.from_config(cfg)  # a serving gateway's: the key cache on
    try:
        eventually(
            "the key admitted without I/O",
            lambda: auth.from_key(key) is not None and bool(auth.authenticate_now({"x-api-key": key})),
        )
        assert backends(cli, APPLICATION)
    finally:
        assert isinstance(auth.keys, PgApiKeyStore)
        auth.keys.close()


def test_the_heartbeat_keeps_the_cache_fresh(cli: PgApiKeyStore, served: PgApiKeyStore) -> None:
    # no notification for longer than STALE_S: the listener's `SELECT 1` answers keep the cache
    # in use (a heartbeat that failed, blocked or did not count would leave it stale or empty)
    key, rec = cli.create("ken", ())
    served_from_cache(served, key, rec)
    time.sleep(STALE_S + 2 * HEARTBEAT_S)
    assert served.cached(rec.id) == rec


def test_a_silent_listen_connection_stops_the_cache_and_a_revocation_meanwhile_is_honoured(
    cli: PgApiKeyStore, served: PgApiKeyStore
) -> None:
    # SIGSTOP the listener's backend: its connection stays up (no RST, the kernel ACKs), but
    # nothing answers, as on a network that drops packets. Within STALE_S (+ margin) the cache
    # must stop answering; a key revoked meanwhile is refused from PostgreSQL, and once the
    # backend answers again its NOTIFY (which arrives with the heartbeat's answer) drops it
    assert served.cache is not None
    cache = served.cache
    auth = Authenticator(keys=served)
    key, rec = cli.create("leo", ())
    served_from_cache(served, key, rec)
    (pid,) = backends(cli, APPLICATION)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert cli.revoke(rec.id)
        deadline = time.monotonic() + STALE_S + HEARTBEAT_S + 3
        while cache.ticket() is not None:
            assert time.monotonic() < deadline, "the cache still answers with its connection silent"
            time.sleep(0.05)
        assert auth.authenticate_now({"x-api-key": key}) is None  # to the thread, which reads PostgreSQL
        with pytest.raises(AuthFailed):
            auth.authenticate({"x-api-key": key})
    finally:
        os.kill(pid, signal.SIGCONT)
    eventually("the cache in use again", lambda: cache.ticket() is not None)
    assert served.cached(rec.id) is None and auth.authenticate_now({"x-api-key": key}) is None
    # stop() returns within its bound even while the backend does not answer
    os.kill(pid, signal.SIGSTOP)
    try:
        assert served._listener is not None
        listener = served._listener
        stopper = threading.Thread(target=listener.stop, daemon=True)
        stopper.start()
        stopper.join(HEARTBEAT_S + listener.timeout_s + 1 + 5)
        assert not stopper.is_alive(), "stop() hung on a silent connection"
    finally:
        os.kill(pid, signal.SIGCONT)
    eventually("the listener ended and its connection closed", lambda: not listener._thread.is_alive())
    eventually("its connection closed", lambda: not backends(cli, APPLICATION))


def test_stop_ends_a_listener_whose_server_never_answers() -> None:
    # a server that accepts the TCP connection and never speaks (a hung PostgreSQL, a black
    # hole behind a proxy): the connect attempt is bounded, so stop() ends the thread
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepted: the kernel completes the handshake, nothing answers
    try:
        port = silent.getsockname()[1]
        cache = KeyCache()
        listener = KeyListener(f"postgresql://symbi@127.0.0.1:{port}/symbi", cache, timeout_s=1).start()
        time.sleep(0.3)  # in its first connect attempt
        assert cache.ticket() is None
        listener.stop()
        assert not listener._thread.is_alive(), "the listener still runs after stop()"
    finally:
        silent.close()


def test_a_process_that_never_closes_its_store_still_exits(
    postgres_engine: PgEngine, served: PgApiKeyStore
) -> None:
    # the listener is a daemon thread: a gateway that dies without closing its key store (an
    # exception on the way out) must not hang at exit in the listener's loop
    assert served.cache is not None  # the same listener, in this process
    script = (
        "import sys, time\n"
        "from gateway.state.pgkeys import PgApiKeyStore\n"
        "from gateway.state.postgres import Postgres\n"
        "s = PgApiKeyStore(Postgres(sys.argv[1], timeout_s=2).open(), owns=True, cache=True)\n"
        "assert s.cache is not None\n"
        "while s.cache.ticket() is None: time.sleep(0.02)\n"
        "print('subscribed')\n"
    )
    root = Path(sys.modules["gateway"].__file__ or "").resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", script, postgres_engine.url],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 0 and "subscribed" in done.stdout, done.stderr


def test_a_listen_connection_lost_without_a_word_is_replaced(
    cli: PgApiKeyStore, served: PgApiKeyStore
) -> None:
    # the network drops every packet of the listen connection (iptables on loopback, the one
    # real way to lose packets here): its heartbeat is never acknowledged, the kernel gives up
    # after tcp_user_timeout, and the listener reconnects; the cache is unused meanwhile
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("needs root and iptables to drop the listen connection's packets")
    assert served.cache is not None
    cache = served.cache
    key, rec = cli.create("nina", ())
    served_from_cache(served, key, rec)
    with cli._pg.cursor() as cur:
        cur.execute("SELECT pid, client_port FROM pg_stat_activity WHERE application_name=%s", (APPLICATION,))
        ((pid, port),) = cur.fetchall()
    tag = f"symbi-test-{secrets.token_hex(4)}"
    rules = [
        ["INPUT", "-i", "lo", "-p", "tcp", side, str(port), "-m", "comment", "--comment", tag, "-j", "DROP"]
        for side in ("--sport", "--dport")
    ]
    for rule in rules:
        subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        eventually("the cache unused", lambda: cache.ticket() is None)
        assert cli.revoke(rec.id)
        eventually("a new listen connection", lambda: backends(cli, APPLICATION) not in ([], [pid]))
        eventually("the cache in use again", lambda: cache.ticket() is not None)
        assert served.cached(rec.id) is None and served.lookup(key) is None
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule], check=False)
        with cli._pg.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
