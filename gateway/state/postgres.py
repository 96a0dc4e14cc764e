"""PostgreSQL for the state replicas share: approvals (the tool state), API keys (``gateway.state.pgkeys``), SchemaPin
key pins (``gateway.state.pins``), accepted screening findings (``gateway.state.accepted``)
and a copy of every replica's audit chain (``gateway.state.audit``).

One pool per process (psycopg 3, ``psycopg_pool``); the schema is versioned in
``symbi_schema`` and migrated at start under an advisory lock, so replicas starting
together apply each migration once. Every failure to reach the server is
``StateUnavailable``: the caller refuses (fail closed) and the pool reconnects by itself
when the server is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.errors import StateUnavailable
from gateway.state.health import Probe, safe_url
from gateway.verify.state import ToolRecord, one_named, record_from_row

# (version, statements): append only; a released migration never changes
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE symbi_tools (
    upstream TEXT NOT NULL,
    name TEXT NOT NULL,
    namespaced TEXT NOT NULL,
    current_hash TEXT,
    current_definition TEXT,
    approved_hash TEXT,
    approved_definition TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    key_fingerprint TEXT,
    revoked BOOLEAN NOT NULL DEFAULT false,
    present BOOLEAN NOT NULL DEFAULT true,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    changed_at DOUBLE PRECISION,
    PRIMARY KEY (upstream, name)
);
CREATE INDEX symbi_tools_namespaced ON symbi_tools (namespaced);
CREATE TABLE symbi_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE symbi_api_keys (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    roles TEXT NOT NULL,
    kind TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    revoked DOUBLE PRECISION
);
""",
    ),
    (
        2,
        """
CREATE TABLE symbi_audit_chains (
    chain TEXT PRIMARY KEY,
    replica TEXT NOT NULL,
    start_seq BIGINT NOT NULL,
    start_hash TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    anchor_seq BIGINT,
    anchor_hash TEXT,
    anchor_ts_ns BIGINT,
    anchor_key_id TEXT,
    anchor_signature TEXT
);
CREATE TABLE symbi_audit_events (
    chain TEXT NOT NULL REFERENCES symbi_audit_chains (chain),
    seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    ts_ns BIGINT NOT NULL,
    principal TEXT,
    agent TEXT,
    type TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    chain_hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE TABLE symbi_audit_keys (key_id TEXT PRIMARY KEY, public_pem TEXT NOT NULL);
""",
    ),
    (
        3,
        """
CREATE TABLE symbi_pins (
    domain TEXT NOT NULL,
    tool_id TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    definition_hash TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    pending_fingerprint TEXT,
    pending_definition_hash TEXT,
    pending_since TEXT,
    PRIMARY KEY (domain, tool_id)
);
CREATE TABLE symbi_pin_events (
    id BIGSERIAL PRIMARY KEY,
    at TEXT NOT NULL,
    domain TEXT NOT NULL,
    tool_id TEXT NOT NULL,
    action TEXT NOT NULL,
    old_fingerprint TEXT,
    new_fingerprint TEXT,
    old_definition_hash TEXT,
    new_definition_hash TEXT,
    actor TEXT
);
""",
    ),
    (
        4,
        """
CREATE TABLE symbi_screening_accepted (
    tool TEXT PRIMARY KEY,
    definition_hash TEXT NOT NULL,
    accepted DOUBLE PRECISION NOT NULL
);
""",
    ),
    (
        5,
        """
CREATE TABLE symbi_policies (
    version BIGSERIAL PRIMARY KEY,
    digest TEXT NOT NULL,
    policy_name TEXT NOT NULL,
    policy TEXT NOT NULL,
    data_name TEXT,
    data TEXT,
    tests TEXT NOT NULL,
    publisher TEXT NOT NULL,
    published DOUBLE PRECISION NOT NULL
);
CREATE INDEX symbi_policies_digest ON symbi_policies (digest);
""",
    ),
    (
        6,
        # Every change to a key row NOTIFYs its id, whoever makes it (the store, or an operator's
        # own SQL: an UPDATE, a DELETE); a TRUNCATE NOTIFYs '*'. Replicas' key caches
        # (gateway.state.keycache) drop what was notified when the transaction commits.
        """
CREATE FUNCTION symbi_api_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('symbi_api_keys', '*');
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('symbi_api_keys', NEW.id);
    ELSE
        PERFORM pg_notify('symbi_api_keys', OLD.id);
        IF TG_OP = 'UPDATE' AND NEW.id <> OLD.id THEN
            PERFORM pg_notify('symbi_api_keys', NEW.id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER symbi_api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON symbi_api_keys
    FOR EACH ROW EXECUTE FUNCTION symbi_api_keys_notify();
CREATE TRIGGER symbi_api_keys_truncated AFTER TRUNCATE ON symbi_api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION symbi_api_keys_notify();
""",
    ),
    (
        7,
        # the change a person rejected (`pins reject`), remembered so that it is not pending again
        # while the upstream presents it (schemapin._pins: _REJECTED_COLS, the same in pins.db)
        """
ALTER TABLE symbi_pins
    ADD COLUMN rejected_fingerprint TEXT,
    ADD COLUMN rejected_definition_hash TEXT,
    ADD COLUMN rejected_at TEXT,
    ADD COLUMN rejected_seen TEXT;
""",
    ),
    (
        8,
        # a chain that starts after seq 1 (its oldest events were archived before it was shipped)
        # carries the replica's signed retention hand-off: a start moved later in PostgreSQL,
        # with the rows before it deleted, is no longer a shorter chain that verifies
        """
ALTER TABLE symbi_audit_chains ADD COLUMN start_handoff TEXT;
""",
    ),
    (
        9,
        # each chain's registration, signed by its replica's key: its label and start, and the chains
        # registered before it (gateway.state.audit_roster): a relabelled chain, or one deleted whole
        # while another's registration names it, is found
        """
ALTER TABLE symbi_audit_chains ADD COLUMN registration TEXT;
""",
    ),
]
CHANNEL = "symbi_approvals"  # NOTIFY on every approvals change: replicas act at once
POLICY_CHANNEL = "symbi_policies"  # NOTIFY on every published policy (gateway.state.policies)
_LOCK_ID = 0x53594D4249  # "SYMBI": one migrator at a time
_COLS = (
    "upstream, name, namespaced, current_hash, current_definition, approved_hash, approved_definition, status,"
    " reason, key_fingerprint, revoked, present, first_seen, last_seen, changed_at"
)


class Postgres:
    """The pool, its health probe, and the migrations (applied by ``open``)."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.probe = Probe(
            "postgres", "approvals and API keys (PostgreSQL)", self._aping, where=safe_url(url)
        )
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            timeout=timeout_s,
            open=False,
            check=ConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout_s))},
            reconnect_timeout=0,  # retry for ever in the background; callers see PoolTimeout meanwhile
        )

    def open(self) -> Postgres:
        try:
            self._pool.open(wait=True, timeout=self._pool.timeout)
        except PoolTimeout as e:
            self._pool.close()
            raise StateUnavailable(
                f"{self.probe.what} cannot be reached at start ({self.probe.where}): {e}"
            ) from e
        self.migrate()
        return self

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def cursor(self, *, transaction: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        try:
            with self._pool.connection() as conn:
                if transaction:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    with conn.cursor() as cur:
                        yield cur
        except (psycopg.OperationalError, PoolTimeout) as e:
            self.probe.failed(e)
            raise StateUnavailable(
                f"{self.probe.what} cannot be reached: refused until it answers",
                reasons=[f"{self.probe.what} cannot be reached ({type(e).__name__})"],
            ) from e
        self.probe.ok()

    def migrate(self) -> int:
        """Apply the migrations this database lacks; returns the schema version."""
        with self.cursor(transaction=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS symbi_schema (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION)"
            )
            cur.execute("SELECT coalesce(max(version), 0) FROM symbi_schema")
            row = cur.fetchone()
            have = int(row[0]) if row else 0
            for version, sql in MIGRATIONS:
                if version > have:
                    cur.execute(sql)
                    cur.execute("INSERT INTO symbi_schema VALUES (%s, %s)", (version, time.time()))
                    have = version
        return have

    async def _aping(self) -> None:
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.ping)

    def ping(self) -> None:
        with self.cursor() as cur:
            cur.execute("SELECT 1")

    async def listen(self, on_change: Mapping[str, Callable[[], None]]) -> None:
        """Background task: LISTEN on each channel of ``on_change`` (approval changes and
        published policies, made anywhere: a replica, the CLI) and call its callback on each
        NOTIFY -- and every callback on each (re)connection or loss of it, since changes may
        have been missed meanwhile. Each one's poll stays the fallback."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, round(self._pool.timeout))
                )
                async with conn:
                    for channel in on_change:
                        await conn.execute(f"LISTEN {channel}")
                    for call in on_change.values():
                        call()
                    async for note in conn.notifies():
                        woken = on_change.get(note.channel)
                        if woken is not None:
                            woken()
            except psycopg.Error:
                for call in on_change.values():
                    call()  # gone: the polls re-read now (and block the tools while it is down)
            await anyio.sleep(1.0)


def bump_approvals(cur: psycopg.Cursor[Any]) -> None:
    """A change every replica must act on (approval, revocation, pin, accepted finding): the
    version they poll, and a NOTIFY delivered at commit so they act at once (``Postgres.listen``)."""
    cur.execute(
        "INSERT INTO symbi_meta (k, v) VALUES ('approvals', %s) ON CONFLICT (k) DO UPDATE SET v=excluded.v",
        (str(time.time_ns()),),
    )
    cur.execute(f"NOTIFY {CHANNEL}")


class PgToolStateStore:
    """``ToolStateStore`` on PostgreSQL: an approval or revocation on one replica bumps the
    shared version, which every replica polls (``mcp.recheck_interval_s``) and re-verifies on."""

    def __init__(self, pg: Postgres, *, owns: bool = False) -> None:
        self._pg = pg
        self._owns = owns  # the CLI's own pool; a gateway's belongs to its SharedState
        self.path = safe_url(pg.url)

    def close(self) -> None:
        if self._owns:
            self._pg.close()

    def version(self) -> str:
        with self._pg.cursor() as cur:
            cur.execute("SELECT v FROM symbi_meta WHERE k='approvals'")
            row = cur.fetchone()
        return str(row[0]) if row else "0"

    def get(self, upstream: str, name: str) -> ToolRecord | None:
        with self._pg.cursor() as cur:
            cur.execute(f"SELECT {_COLS} FROM symbi_tools WHERE upstream=%s AND name=%s", (upstream, name))
            row = cur.fetchone()
        return record_from_row(row) if row else None

    def find(self, namespaced: str) -> ToolRecord | None:
        """The tool ``namespaced`` names now (``one_named``); None if never seen."""
        with self._pg.cursor() as cur:
            cur.execute(f"SELECT {_COLS} FROM symbi_tools WHERE namespaced=%s ORDER BY name", (namespaced,))
            rows = cur.fetchall()
        return one_named(namespaced, [record_from_row(r) for r in rows])

    def all(self) -> list[ToolRecord]:
        with self._pg.cursor() as cur:
            cur.execute(f"SELECT {_COLS} FROM symbi_tools ORDER BY upstream, name")
            rows = cur.fetchall()
        return [record_from_row(r) for r in rows]

    def observe(
        self,
        upstream: str,
        name: str,
        namespaced: str,
        definition: dict[str, Any],
        definition_hash: str,
        *,
        status: str,
        reason: str | None,
        key_fingerprint: str | None,
        pin_if_new: bool,
    ) -> tuple[ToolRecord | None, ToolRecord]:
        """Record what this replica sees now (row-locked: replicas observe the same tool at once)."""
        text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
        key = (upstream, name)
        seen = (namespaced, definition_hash, text, status, reason, key_fingerprint, time.time())
        with self._pg.cursor(transaction=True) as cur:
            first = _insert_first(cur, key, seen, pin_if_new)
            if first is not None:
                return None, first
            cur.execute(f"SELECT {_COLS} FROM symbi_tools WHERE upstream=%s AND name=%s FOR UPDATE", key)
            row = cur.fetchone()
            assert row is not None
            before = record_from_row(row)
            after = _update_seen(cur, key, seen, before, pin_if_new)
        return before, after

    def has_approved(self, upstream: str) -> bool:
        """Whether any tool of ``upstream`` was ever approved (pinned, signed or by a person)."""
        with self._pg.cursor() as cur:
            cur.execute(
                "SELECT 1 FROM symbi_tools WHERE upstream=%s AND approved_hash IS NOT NULL LIMIT 1",
                (upstream,),
            )
            row = cur.fetchone()
        return row is not None

    def mark_absent(self, upstream: str, present_names: set[str]) -> list[ToolRecord]:
        with self._pg.cursor(transaction=True) as cur:
            cur.execute(
                f"UPDATE symbi_tools SET present=false, changed_at=%s WHERE upstream=%s AND present"
                f" AND NOT (name = ANY(%s)) RETURNING {_COLS}",
                (time.time(), upstream, sorted(present_names)),
            )
            rows = cur.fetchall()
        return [record_from_row(r) for r in rows]

    def approve(self, upstream: str, name: str, definition_hash: str, definition: dict[str, Any]) -> None:
        text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
        with self._pg.cursor(transaction=True) as cur:
            cur.execute(
                "UPDATE symbi_tools SET approved_hash=%s, approved_definition=%s, revoked=false"
                " WHERE upstream=%s AND name=%s",
                (definition_hash, text, upstream, name),
            )
            bump_approvals(cur)

    def revoke(self, upstream: str, name: str) -> None:
        with self._pg.cursor(transaction=True) as cur:
            cur.execute("UPDATE symbi_tools SET revoked=true WHERE upstream=%s AND name=%s", (upstream, name))
            bump_approvals(cur)

    def revoked(self) -> set[tuple[str, str]]:
        with self._pg.cursor() as cur:
            cur.execute("SELECT upstream, name FROM symbi_tools WHERE revoked")
            rows = cur.fetchall()
        return {(up, name) for up, name in rows}


# What a replica saw of a tool: (namespaced name, hash, definition JSON, status, reason,
# signing key fingerprint, when).
_Seen = tuple[str, str, str, str, str | None, str | None, float]


def _insert_first(
    cur: psycopg.Cursor[Any], key: tuple[str, str], seen: _Seen, pin: bool
) -> ToolRecord | None:
    """The tool's new row when this is its first sighting (approved at once when ``pin``), else
    None: ``ON CONFLICT DO NOTHING`` lets replicas race to insert it."""
    namespaced, digest, text, status, reason, fp, now = seen
    approved = (digest, text) if pin else (None, None)
    cur.execute(
        "INSERT INTO symbi_tools (upstream, name, namespaced, current_hash, current_definition, approved_hash,"
        " approved_definition, status, reason, key_fingerprint, first_seen, last_seen)"
        " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (upstream, name) DO NOTHING",
        (*key, namespaced, digest, text, *approved, status, reason, fp, now, now),
    )
    if cur.rowcount != 1:
        return None
    cur.execute(f"SELECT {_COLS} FROM symbi_tools WHERE upstream=%s AND name=%s", key)
    row = cur.fetchone()
    assert row is not None
    return record_from_row(row)


def _update_seen(
    cur: psycopg.Cursor[Any], key: tuple[str, str], seen: _Seen, before: ToolRecord, pin_if_new: bool
) -> ToolRecord:
    """The row (locked by the caller) updated to what is seen now: ``changed_at`` moves only when
    the definition changed, and it is approved only when ``pin_if_new`` and nothing ever was."""
    namespaced, digest, text, status, reason, fp, now = seen
    pin = before.approved_hash is None and pin_if_new
    changed = before.current_hash != digest
    cur.execute(
        "UPDATE symbi_tools SET namespaced=%s, current_hash=%s, current_definition=%s,"
        " approved_hash=CASE WHEN %s THEN %s ELSE approved_hash END,"
        " approved_definition=CASE WHEN %s THEN %s ELSE approved_definition END,"
        " status=%s, reason=%s, key_fingerprint=%s, present=true, last_seen=%s,"
        " changed_at=CASE WHEN %s THEN %s ELSE changed_at END WHERE upstream=%s AND name=%s"
        f" RETURNING {_COLS}",
        (namespaced, digest, text, pin, digest, pin, text, status, reason, fp, now, changed, now, *key),
    )
    after = cur.fetchone()
    assert after is not None
    return record_from_row(after)
