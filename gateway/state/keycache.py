"""A process's cache of the API key records in PostgreSQL, kept exact by LISTEN/NOTIFY.

Without it every HTTP request reads its key from PostgreSQL (a round trip, in a thread).
A trigger on ``symbi_api_keys`` (``gateway.state.postgres``, migration 6) NOTIFYs
``KEYS_CHANNEL`` with the key id of every row inserted, updated or deleted, by the store or by
anyone's own SQL, and ``ALL`` for a TRUNCATE, in the same transaction, so the notification is
delivered at commit or never. ``KeyListener`` (a daemon thread with a connection of its own)
LISTENs and drops the notified id (or everything) from the cache.

Fail closed: the cache answers only while it is *fresh*, i.e. the listen connection is up,
subscribed, and answered a heartbeat within ``STALE_S``; otherwise every lookup reads
PostgreSQL, as without a cache. Going live or losing the connection empties it (a revocation
may have been missed meanwhile), and a read that started before any such event (or before a
notification) is not stored (``ticket``/``put``): a record read just before its revocation
committed can never outlive the notification. Only keys that exist and are not revoked are
stored, at most ``max_entries`` (least recently used first out): ids an attacker sprays are
read from PostgreSQL each time, as before, and never grow the cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import psycopg

from gateway.apikeys import ApiKeyRecord

KEYS_CHANNEL = "symbi_api_keys"  # NOTIFY <key id> on every change to a key's row
ALL = "*"  # the payload of a TRUNCATE: drop every key (key ids are hex)
HEARTBEAT_S = 1.0  # the listener's `SELECT 1` on its connection, when no notification came
STALE_S = 3.0  # no answer on the listen connection for this long: the cache is not used
MAX_ENTRIES = 4096
APPLICATION = "symbi-key-listener"  # its pg_stat_activity name


class KeyCache:
    """Key id -> its live record, used only while fresh. Safe to share between threads."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._records: OrderedDict[str, ApiKeyRecord] = OrderedDict()
        self._generation = 0  # bumped by every invalidation: reads that started before it are not stored
        self._live = False
        self._heard = 0.0  # time.monotonic() of the last answer on the listen connection

    def __len__(self) -> int:
        return len(self._records)

    def _fresh(self) -> bool:
        return self._live and time.monotonic() - self._heard < STALE_S

    def get(self, kid: str) -> ApiKeyRecord | None:
        """The cached record, or None: not cached, or the cache is not fresh (read PostgreSQL)."""
        with self._lock:
            if not self._fresh():
                return None
            rec = self._records.get(kid)
            if rec is not None:
                self._records.move_to_end(kid)
            return rec

    def ticket(self) -> int | None:
        """Taken before reading PostgreSQL, given back to ``put``; None: the cache is not fresh."""
        with self._lock:
            return self._generation if self._fresh() else None

    def put(self, ticket: int | None, rec: ApiKeyRecord) -> None:
        """Store ``rec`` unless anything was invalidated since ``ticket`` was taken."""
        with self._lock:
            if ticket is None or ticket != self._generation or not self._fresh():
                return
            self._records[rec.id] = rec
            self._records.move_to_end(rec.id)
            while len(self._records) > self.max_entries:
                self._records.popitem(last=False)

    def invalidate(self, kid: str) -> None:
        with self._lock:
            self._generation += 1
            if kid == ALL:
                self._records.clear()
            else:
                self._records.pop(kid, None)

    def live(self) -> None:
        """The listen connection is subscribed: start empty (changes may have been missed)."""
        with self._lock:
            self._generation += 1
            self._records.clear()
            self._live = True
            self._heard = time.monotonic()

    def heard(self) -> None:
        with self._lock:
            self._heard = time.monotonic()

    def lost(self) -> None:
        with self._lock:
            self._generation += 1
            self._records.clear()
            self._live = False


class KeyListener:
    """LISTENs on ``KEYS_CHANNEL`` in a daemon thread and keeps ``cache`` exact; reconnects
    every second while PostgreSQL is away (the cache stays unused meanwhile)."""

    def __init__(self, url: str, cache: KeyCache, *, timeout_s: float) -> None:
        self.url = url
        self.cache = cache
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="symbi-key-listener", daemon=True)

    def start(self) -> KeyListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S + self.timeout_s + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except psycopg.Error:
                pass  # gone (server down, connection killed): the cache is unused until back
            finally:
                self.cache.lost()
            self._stop.wait(1.0)

    def _listen(self) -> None:
        secs = max(1, round(self.timeout_s))
        # keepalives and a user timeout: a silent network loss ends the connection too
        with psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=secs,
            keepalives=1,
            keepalives_idle=secs,
            keepalives_interval=1,
            keepalives_count=2,
            tcp_user_timeout=secs * 1000,
            application_name=APPLICATION,
        ) as conn:
            conn.execute(f"LISTEN {KEYS_CHANNEL}")
            self.cache.live()
            while not self._stop.is_set():
                for note in conn.notifies(timeout=HEARTBEAT_S):
                    self.cache.invalidate(note.payload)
                conn.execute("SELECT 1")  # the connection still answers
                for note in conn.notifies(timeout=0):  # any that came with the answer, first
                    self.cache.invalidate(note.payload)
                self.cache.heard()
