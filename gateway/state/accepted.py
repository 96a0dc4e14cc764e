"""Screening findings a person accepted (``symbi tools approve --accept-screening``), on
PostgreSQL shared by replicas (``[state] postgres_url``): accepted once, accepted on every
replica. Same contract as ``gateway.screen.accepted.AcceptedFindings`` (per tool, the
definition hash the findings were accepted for); an acceptance bumps the approvals version
the replicas poll, so each one re-verifies.
"""

from __future__ import annotations

import time

from gateway.state.postgres import Postgres, bump_approvals


class PgAcceptedFindings:
    def __init__(self, pg: Postgres, *, owns: bool = False) -> None:
        self._pg = pg
        self._owns = owns  # the CLI's own pool; a gateway's belongs to its SharedState

    def close(self) -> None:
        if self._owns:
            self._pg.close()

    def load(self) -> dict[str, str]:
        with self._pg.cursor() as cur:
            cur.execute("SELECT tool, definition_hash FROM symbi_screening_accepted")
            rows = cur.fetchall()
        return {str(tool): str(h) for tool, h in rows}

    def mtime(self) -> int | None:
        return None  # changes show in the approvals version (PgToolStateStore.version)

    def accept(self, tool: str, definition_hash: str) -> None:
        with self._pg.cursor(transaction=True) as cur:
            cur.execute(
                "INSERT INTO symbi_screening_accepted (tool, definition_hash, accepted) VALUES (%s,%s,%s)"
                " ON CONFLICT (tool) DO UPDATE SET definition_hash=excluded.definition_hash,"
                " accepted=excluded.accepted",
                (tool, definition_hash, time.time()),
            )
            bump_approvals(cur)
