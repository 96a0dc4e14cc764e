"""Helpers of the API key cache tests (tests/state/test_key_cache.py, test_key_listener.py):
bounded waits, and a key seen served from a store's cache."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.apikeys import ApiKeyRecord
from gateway.state.keycache import APPLICATION, KEYS_CHANNEL
from gateway.state.pgkeys import PgApiKeyStore

WAIT_S = 20.0  # the bound of every wait below (a loaded machine), not a timing assertion


def eventually(what: str, ok: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.02)


def settled(store: PgApiKeyStore) -> None:
    """Every NOTIFY sent so far has reached ``store``'s listener: one more is sent and seen
    (they arrive in commit order). A key's own creation NOTIFY arriving after it was cached
    drops it again (correctly), which made tests that expect it cached flaky under load."""
    assert store.cache is not None
    cache = store.cache
    seen = cache._generation
    with store._pg.cursor() as cur:
        cur.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, "settle"))
    eventually("the notifications so far handled", lambda: cache._generation > seen)


def served_from_cache(store: PgApiKeyStore, key: str, rec: ApiKeyRecord) -> None:
    """``key`` accepted, then held by the cache (a read that overlapped the NOTIFY of the key's
    own creation is not stored: the next one is)."""
    settled(store)
    eventually("the key cached", lambda: store.lookup(key) == rec and store.cached(rec.id) == rec)


def kill_listener(cli: PgApiKeyStore) -> None:
    with cli._pg.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name=%s", (APPLICATION,)
        )
        assert cur.fetchall(), "no listen connection to kill"
