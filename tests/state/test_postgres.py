"""Tool records, approvals and revocations on a real PostgreSQL, against the SQLite default.

One contract, two stores: every behaviour below runs on the data dir's SQLite and on
PostgreSQL. Then what only replicas have: an approval made through one pool is seen by
another, migrations run once when replicas start together, and an unreachable server is
``StateUnavailable`` (the verifier blocks the tools) until it returns.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.config.load import build_config, load_config
from gateway.context import ToolInfo
from gateway.errors import AmbiguousTool, ConfigError, StateUnavailable
from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import CHANNEL, MIGRATIONS, PgToolStateStore, Postgres
from gateway.verify.state import ToolStates, ToolStateStore
from gateway.verify.verifier import ToolVerifier
from tests.conftest import RecordingSink, free_port, write_config
from tests.state.engines import Postgres as PgEngine

DEF = {"name": "echo", "description": "echo", "inputSchema": {"type": "object"}}


@pytest.fixture
def pg(postgres_engine: PgEngine) -> Iterator[Postgres]:
    p = Postgres(postgres_engine.url, timeout_s=2).open()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ToolStates]:
    if request.param == "sqlite":
        s: ToolStates = ToolStateStore(tmp_path / "tools.db")
    else:
        s = PgToolStateStore(request.getfixturevalue("pg"))
    try:
        yield s
    finally:
        s.close()


def up() -> str:
    return "u" + uuid.uuid4().hex[:8]  # the PostgreSQL database is shared by the module's tests


def test_observe_pins_on_first_use_and_keeps_the_approved_definition(store: ToolStates) -> None:
    u = up()
    before, after = store.observe(
        u,
        "echo",
        f"{u}__echo",
        DEF,
        "h1",
        status="pinned",
        reason=None,
        key_fingerprint=None,
        pin_if_new=True,
    )
    assert before is None and after.approved_hash == "h1" and after.approved_definition == DEF
    before, after = store.observe(
        u,
        "echo",
        f"{u}__echo",
        {**DEF, "description": "x"},
        "h2",
        status="drifted",
        reason="changed",
        key_fingerprint=None,
        pin_if_new=True,
    )
    assert before is not None and before.current_hash == "h1"
    assert after.current_hash == "h2" and after.approved_hash == "h1" and after.drifted
    assert after.changed_at is not None
    assert store.find(f"{u}__echo") == after and store.get(u, "echo") == after
    assert store.get(u, "nope") is None and store.find("nope__x") is None


def test_approve_and_revoke_change_the_version(store: ToolStates) -> None:
    u = up()
    store.observe(
        u,
        "echo",
        f"{u}__echo",
        DEF,
        "h1",
        status="unverified",
        reason=None,
        key_fingerprint=None,
        pin_if_new=False,
    )
    assert store.get(u, "echo").approved_hash is None  # type: ignore[union-attr]
    v0 = store.version()
    store.approve(u, "echo", "h1", DEF)
    v1 = store.version()
    assert v1 != v0 and store.get(u, "echo").approved_hash == "h1"  # type: ignore[union-attr]
    assert (u, "echo") not in store.revoked()
    store.revoke(u, "echo")
    assert store.version() != v1 and store.get(u, "echo").revoked  # type: ignore[union-attr]
    assert (u, "echo") in store.revoked()  # what the verification step refuses at once
    store.approve(u, "echo", "h1", DEF)  # approving again lifts the revocation
    assert not store.get(u, "echo").revoked  # type: ignore[union-attr]
    assert (u, "echo") not in store.revoked()


def test_mark_absent_returns_the_vanished_tools(store: ToolStates) -> None:
    u = up()
    for n in ("a", "b"):
        store.observe(
            u, n, f"{u}__{n}", DEF, "h", status="pinned", reason=None, key_fingerprint=None, pin_if_new=True
        )
    gone = store.mark_absent(u, {"a"})
    assert [g.name for g in gone] == ["b"]
    assert not store.get(u, "b").present and store.get(u, "a").present  # type: ignore[union-attr]
    assert [r.name for r in store.all() if r.upstream == u] == ["a", "b"]


def test_a_renamed_tool_is_found_by_its_namespaced_name_as_listed_now(store: ToolStates) -> None:
    """An upstream renames its pinned ``rm_all`` to ``rm all``: both are ``U__rm_all``, two rows.
    The name means the one the listing offers now (it used to find the old, absent row, so
    ``symbi tools diff`` said "no drift" and ``approve`` approved the wrong row); two offered
    at once cannot be told apart and are refused, naming both."""
    u = up()
    ns = f"{u}__rm_all"

    def seen(name: str, description: str, pin: bool) -> None:
        store.observe(
            u,
            name,
            ns,
            {**DEF, "name": name, "description": description},
            "h-" + description,
            status="pinned" if pin else "unverified",
            reason=None,
            key_fingerprint=None,
            pin_if_new=pin,
        )

    seen("rm_all", "temp files", True)  # first: the row an unordered lookup returns
    store.mark_absent(u, {"rm all"})
    seen("rm all", "everything", False)
    found = store.find(ns)
    assert found is not None and (found.name, found.present, found.approved_hash) == ("rm all", True, None)
    seen("rm_all", "temp files", True)  # offered again beside it: which one is meant?
    with pytest.raises(AmbiguousTool) as e:
        store.find(ns)
    assert e.value.status == 409 and "'rm_all'" in e.value.message and "'rm all'" in e.value.message
    store.mark_absent(u, set())
    with pytest.raises(AmbiguousTool):  # neither offered: no more a guess than both
        store.find(ns)


def test_an_approval_through_one_replica_is_seen_by_another(postgres_engine: PgEngine) -> None:
    a = PgToolStateStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    b = PgToolStateStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    try:
        u = up()
        a.observe(
            u,
            "echo",
            f"{u}__echo",
            DEF,
            "h1",
            status="unverified",
            reason=None,
            key_fingerprint=None,
            pin_if_new=False,
        )
        seen = b.version()
        a.approve(u, "echo", "h1", DEF)
        assert b.version() != seen  # what replicas poll: every one re-verifies on it
        assert b.get(u, "echo").approved_hash == "h1"  # type: ignore[union-attr]
        a.revoke(u, "echo")
        assert b.get(u, "echo").revoked  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


def test_replicas_starting_together_migrate_once(postgres_engine: PgEngine) -> None:
    pools: list[Postgres] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            pools.append(Postgres(postgres_engine.url, timeout_s=5).open())
        except BaseException as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors
        with pools[0].cursor() as cur:
            cur.execute("SELECT version FROM symbi_schema ORDER BY version")
            assert [r[0] for r in cur.fetchall()] == [v for v, _ in MIGRATIONS]
        assert pools[1].migrate() == MIGRATIONS[-1][0]  # again: nothing to do
    finally:
        for p in pools:
            p.close()


def test_bad_postgres_url_names_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"state": {"postgres_url": "mysql://x"}})
    assert "state.postgres_url" in str(e.value)


def test_unreachable_postgres_at_start_is_a_clear_error() -> None:
    with pytest.raises(StateUnavailable) as e:
        Postgres(f"postgresql://symbi@127.0.0.1:{free_port()}/postgres", timeout_s=0.5).open()
    assert "PostgreSQL" in e.value.message


def test_postgres_going_down_refuses_then_recovers(postgres_engine: PgEngine, pg: Postgres) -> None:
    store = PgToolStateStore(pg)
    u = up()
    store.observe(
        u,
        "echo",
        f"{u}__echo",
        DEF,
        "h1",
        status="pinned",
        reason=None,
        key_fingerprint=None,
        pin_if_new=True,
    )
    postgres_engine.stop()
    try:
        with pytest.raises(StateUnavailable):
            store.get(u, "echo")
        assert not pg.probe.up
    finally:
        postgres_engine.start()
    # the pool reconnects by itself, after its own backoff: refused until then, never wrong
    deadline = time.monotonic() + 60
    while True:
        try:
            assert store.get(u, "echo") is not None
            break
        except StateUnavailable:
            assert time.monotonic() < deadline, "the pool never reconnected"
    assert pg.probe.up


def test_api_keys_made_and_revoked_on_one_replica_hold_on_another(postgres_engine: PgEngine) -> None:
    a = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    b = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    try:
        key, rec = a.create("alice", ("dev",))
        got = b.lookup(key)
        assert got is not None and got.principal == "alice" and got.roles == ("dev",)
        assert b.lookup(key[:-4] + "AAAA") is None  # right id, wrong secret
        assert b.lookup("symbi_nothex000000_x") is None  # malformed
        assert rec.id in {r.id for r in b.records()}
        assert a.revoke(rec.id) and not a.revoke(rec.id)
        assert b.lookup(key) is None and b.get(rec.id) is None
    finally:
        a.close()
        b.close()


class _NotesThreads(PgToolStateStore):
    """The PostgreSQL tool-state store, noting the thread each of its public methods runs on."""

    def __init__(self, pg: Postgres) -> None:
        self.threads: set[int] = set()
        super().__init__(pg)

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or not callable(attr):
            return attr
        threads = super().__getattribute__("threads")

        def noted(*args: Any, **kwargs: Any) -> Any:
            threads.add(threading.get_ident())
            return attr(*args, **kwargs)

        return noted


@pytest.mark.anyio
async def test_an_outage_blocks_the_tools_without_stalling_the_event_loop(
    postgres_engine: PgEngine, tmp_path: Path
) -> None:
    # Each query waits the pool's timeout for a server that is gone; the verifier must wait in a
    # worker thread, or every other call of the gateway (and /healthz) waits with it. Checked by
    # where the store runs, not by a timing: no state query ever runs on the event loop's thread.
    loop_thread = threading.get_ident()
    u = up()
    cfg = load_config(
        write_config(tmp_path, f'[servers.{u}]\ncommand = "{sys.executable}"\nverification = "tofu"\n'),
        environ={},
    )
    pg = Postgres(postgres_engine.url, timeout_s=3.0).open()
    events = RecordingSink()
    store = _NotesThreads(pg)
    v = ToolVerifier(cfg, events, state=store)
    tool = ToolInfo(name=f"{u}__echo", original_name="echo", upstream=u, definition=dict(DEF))
    try:
        assert (await v.assess([tool]))[tool.name].verification == "pinned"
        assert events.of("tool.verification")  # emitted on the loop, after the worker thread
        postgres_engine.stop()
        try:
            infos = await v.assess([tool])
        finally:
            postgres_engine.start()
        assert infos[tool.name].verification == "unavailable"  # fail closed: not admitted
        assert store.threads and loop_thread not in store.threads
    finally:
        v.close()
        pg.close()


@pytest.mark.anyio
async def test_a_change_made_anywhere_is_notified_to_every_listener(
    postgres_engine: PgEngine, pg: Postgres
) -> None:
    # what wakes each replica's approvals poll at once: NOTIFY at commit, LISTEN on a replica
    seen: list[float] = []
    u = up()
    other = Postgres(postgres_engine.url, timeout_s=2).open()  # the CLI's (or another replica's) pool
    try:
        store = PgToolStateStore(other)
        store.observe(
            u,
            "echo",
            f"{u}__echo",
            DEF,
            "h1",
            status="pinned",
            reason=None,
            key_fingerprint=None,
            pin_if_new=True,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(pg.listen, {CHANNEL: lambda: seen.append(time.monotonic())})
            with anyio.fail_after(20):  # bounds of the waits, not timing assertions
                while not seen:  # the first call: connected (changes may have been missed before)
                    await anyio.sleep(0.05)
                connected = len(seen)
                await anyio.to_thread.run_sync(store.revoke, u, "echo")
                while len(seen) == connected:
                    await anyio.sleep(0.05)
                notified = len(seen)
                await anyio.to_thread.run_sync(store.version)  # a read: no change, no notification
                await anyio.sleep(0.5)
                assert len(seen) == notified
            tg.cancel_scope.cancel()
    finally:
        other.close()
