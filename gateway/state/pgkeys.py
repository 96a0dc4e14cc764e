"""API keys on PostgreSQL (``symbi_api_keys``, created by ``gateway.state.postgres``'s
migrations), shared by replicas; a serving gateway keeps the live records in a cache the
table's NOTIFY keeps current."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from gateway.apikeys import ApiKeyRecord, hash_key, new_key, split_key
from gateway.state.health import safe_url
from gateway.state.keycache import KeyCache, KeyListener
from gateway.state.postgres import Postgres


class PgApiKeyStore:
    """``ApiKeyStore`` on PostgreSQL, shared by replicas. Without ``cache`` (the CLI) every
    lookup is one indexed read. With ``cache`` (a serving gateway) the live records are kept
    in this process and dropped by the NOTIFY that ``create`` and ``revoke`` send at commit
    (``gateway.state.keycache``): a revoked key is refused once that NOTIFY arrives (a few ms),
    not on the very next request; the cache is used only while its listen connection is up and
    answering (else every lookup reads PostgreSQL, as without it)."""

    def __init__(self, pg: Postgres, *, owns: bool = False, cache: bool = False) -> None:
        self._pg = pg
        self._owns = owns
        self.path = safe_url(pg.url)
        self.cache: KeyCache | None = None
        self._listener: KeyListener | None = None
        if cache:
            self.cache = KeyCache()
            self._listener = KeyListener(pg.url, self.cache, timeout_s=pg.timeout_s).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        if self._owns:
            self._pg.close()

    def records(self) -> list[ApiKeyRecord]:
        with self._pg.cursor() as cur:
            cur.execute(
                "SELECT id, principal, roles, kind, sha256, created, revoked FROM symbi_api_keys ORDER BY created"
            )
            rows = cur.fetchall()
        return [_key_record(r) for r in rows]

    def cached(self, kid: str) -> ApiKeyRecord | None:
        """The live record of ``kid`` when the cache holds it (no I/O), else None: ask ``get``."""
        return self.cache.get(kid) if self.cache is not None else None

    def get(self, kid: str) -> ApiKeyRecord | None:
        rec = self.cached(kid)
        if rec is not None:
            return rec
        ticket = self.cache.ticket() if self.cache is not None else None  # before the read
        with self._pg.cursor() as cur:
            cur.execute(
                "SELECT id, principal, roles, kind, sha256, created, revoked FROM symbi_api_keys"
                " WHERE id=%s AND revoked IS NULL",
                (kid,),
            )
            row = cur.fetchone()
        if row is None:
            return None  # unknown or revoked: never cached
        rec = _key_record(row)
        if self.cache is not None:
            self.cache.put(ticket, rec)
        return rec

    def lookup(self, key: str) -> ApiKeyRecord | None:
        kid = split_key(key)
        rec = self.get(kid) if kid is not None else None
        return rec if rec is not None and hmac.compare_digest(rec.sha256, hash_key(key)) else None

    def create(self, principal: str, roles: tuple[str, ...], kind: str = "user") -> tuple[str, ApiKeyRecord]:
        key, rec = new_key(principal, roles, kind)
        with self._pg.cursor(transaction=True) as cur:
            cur.execute(
                "INSERT INTO symbi_api_keys VALUES (%s,%s,%s,%s,%s,%s,NULL)",
                (rec.id, rec.principal, json.dumps(list(rec.roles)), rec.kind, rec.sha256, rec.created),
            )
        return key, rec

    def revoke(self, kid: str) -> bool:
        with self._pg.cursor(transaction=True) as cur:
            cur.execute(
                "UPDATE symbi_api_keys SET revoked=%s WHERE id=%s AND revoked IS NULL", (time.time(), kid)
            )
            # the row's trigger NOTIFYs: at commit every process's cache drops it
            return cur.rowcount == 1


def _key_record(row: Any) -> ApiKeyRecord:
    kid, principal, roles, kind, sha, created, revoked = row
    return ApiKeyRecord(
        id=kid,
        principal=principal,
        roles=tuple(json.loads(roles)),
        kind=kind,
        sha256=sha,
        created=created,
        revoked=revoked,
    )
