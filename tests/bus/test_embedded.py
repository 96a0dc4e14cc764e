"""The embedded store forgets an ended agent in one transaction: its directory entry, its
subscriptions and what waits in its inboxes go together or not at all. The failure is a real
SQLite trigger raising inside the store's own transaction (on its connection)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.bus.crypto import PublicKeys
from gateway.bus.embedded import STATES, EmbeddedBackend

pytestmark = pytest.mark.anyio

AGENT = "agent-1"
INBOXES = (AGENT, AGENT + ":replies")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedBackend]:
    backend = EmbeddedBackend(tmp_path / "bus.db")
    await backend.start()
    await backend.publish_keys(PublicKeys(AGENT, "key:p", b"s" * 32, b"d" * 32, b"m" * 32, "p/client"))
    await backend.subscribe(AGENT, "news.*", 2**62)
    with backend.db:  # a message waiting in its inbox (the store's own table, written as enqueue does)
        backend.db.execute(
            "INSERT INTO messages(inbox, id, expires_ms, ts_ms, h, n, c, s) VALUES (?,?,?,?,?,?,?,?)",
            (AGENT, "m1", 2**62, 1, b"h", b"n", b"c", b"s"),
        )
    yield backend
    await backend.close()


def _left(backend: EmbeddedBackend) -> tuple[bool, int, int]:
    """(its entry kept, its subscriptions, its pending messages)."""
    db = backend.db
    (keys,) = db.execute("SELECT count(*) FROM keys WHERE agent=?", (AGENT,)).fetchone()
    (subs,) = db.execute("SELECT count(*) FROM subs WHERE agent=?", (AGENT,)).fetchone()
    (waiting,) = db.execute(
        "SELECT count(*) FROM messages WHERE inbox=? AND state=?", (AGENT, STATES["pending"])
    ).fetchone()
    return bool(keys), int(subs), int(waiting)


@pytest.mark.parametrize(
    "trigger",
    [
        "BEFORE DELETE ON subs",  # the second statement
        "BEFORE UPDATE ON messages",  # the last one: the entry and the subscriptions went before it
    ],
)
async def test_a_failure_inside_forget_leaves_the_agent_whole(store: EmbeddedBackend, trigger: str) -> None:
    store.db.execute(f"CREATE TEMP TRIGGER injected {trigger} BEGIN SELECT RAISE(ABORT, 'injected'); END")
    with pytest.raises(sqlite3.IntegrityError):
        await store.forget_agent(AGENT, INBOXES)
    assert _left(store) == (True, 1, 1)  # nothing half-forgotten
    assert await store.lookup_keys(AGENT) is not None
    store.db.execute("DROP TRIGGER injected")
    await store.forget_agent(AGENT, INBOXES)  # tried again (the expiry sweep): all of it goes
    assert _left(store) == (False, 0, 0)
    (expired,) = store.db.execute("SELECT n FROM counters WHERE name='expired'").fetchone()
    assert expired == 1


async def test_leave_keeps_the_entry_and_removes_the_rest(store: EmbeddedBackend) -> None:
    await store.leave(AGENT, INBOXES)
    assert _left(store) == (True, 0, 0)
