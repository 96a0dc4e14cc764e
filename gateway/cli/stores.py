"""The stores the CLI opens from the config: PostgreSQL's when replicas share them (``[state]
postgres_url``, opened by ``gateway.state.open_postgres`` as the gateway's is), else the
data dir's files. One construction for ``symbi tools``, ``symbi schemapin`` and the rest, so a
command never reads a file while the gateways read PostgreSQL.

``Stores`` is one command's: a with-block that opens at most one PostgreSQL pool (on first use),
makes each store once on it, and closes every store and the pool on exit, error or not. (Each
store once opened its own pool, never closed: ``symbi tools approve`` of N flagged tools held
N + 2 pools' connections until the process ended.)
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from gateway.config.model import Config
from gateway.errors import GatewayError
from gateway.screen.accepted import AcceptedFindings
from gateway.verify.state import ToolStates, ToolStateStore

if TYPE_CHECKING:
    from gateway.state.accepted import PgAcceptedFindings
    from gateway.state.pins import PgPinStore
    from gateway.state.postgres import Postgres


class Stores:
    """The stores of one command, on one pool, all closed when the with-block ends."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._pg: Postgres | None = None
        self._pins: Path | PgPinStore | None = None
        self._accepted: AcceptedFindings | PgAcceptedFindings | None = None
        self._states: ToolStates | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every store made here, then the pool (the stores do not own it)."""
        try:
            for store in (self._pins, self._accepted, self._states):
                close = getattr(store, "close", None)
                if close is not None:
                    close()
        finally:
            self._pins = self._accepted = self._states = None
            if self._pg is not None:
                pg, self._pg = self._pg, None
                pg.close()

    def _postgres(self) -> Postgres | None:
        """``gateway.state.open_postgres``, once, imported only when configured: the state
        package loads the Redis client, which a command on the data dir's files does not need."""
        if self._cfg.state.postgres_url is None:
            return None
        if self._pg is None:
            from gateway.state import open_postgres

            self._pg = open_postgres(self._cfg)
        return self._pg

    def pins(self) -> Path | PgPinStore:
        """SchemaPin key pins: PostgreSQL's, else the data dir's file (a path: opened where used)."""
        if self._pins is None:
            pg = self._postgres()
            if pg is None:
                self._pins = self._cfg.pins_path
            else:
                from gateway.state.pins import PgPinStore

                self._pins = PgPinStore(pg)
        return self._pins

    def accepted_findings(self) -> AcceptedFindings | PgAcceptedFindings:
        """Screening findings a person accepted: PostgreSQL's, else the data dir's."""
        if self._accepted is None:
            pg = self._postgres()
            if pg is None:
                self._accepted = AcceptedFindings(self._cfg.screening_accepted_path)
            else:
                from gateway.state.accepted import PgAcceptedFindings

                self._accepted = PgAcceptedFindings(pg)
        return self._accepted

    def tool_states(self) -> ToolStates:
        """Tool records, approvals and revocations: PostgreSQL's (the ones every replica reads),
        else the data dir's, which a gateway must have made (``GatewayError`` naming it)."""
        if self._states is None:
            pg = self._postgres()
            if pg is not None:
                from gateway.state.postgres import PgToolStateStore

                self._states = PgToolStateStore(pg)
            elif not self._cfg.tool_state_path.exists():
                raise GatewayError(
                    f"no tool state at {self._cfg.tool_state_path}: start the gateway once to record its tools"
                )
            else:
                self._states = ToolStateStore(self._cfg.tool_state_path)
        return self._states
