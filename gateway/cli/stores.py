"""The stores the CLI opens from the config: PostgreSQL's when replicas share them (``[state]
postgres_url``, opened by ``gateway.state.open_postgres`` as the gateway's is), else the
data dir's files. One construction for ``symbi tools``, ``symbi schemapin`` and the rest, so a
command never reads a file while the gateways read PostgreSQL.

Each PostgreSQL store owns its own pool (``owns=True``): closing it closes the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config.model import Config
from gateway.errors import GatewayError
from gateway.screen.accepted import AcceptedFindings
from gateway.verify.state import ToolStates, ToolStateStore

if TYPE_CHECKING:
    from gateway.state.accepted import PgAcceptedFindings
    from gateway.state.pins import PgPinStore
    from gateway.state.postgres import Postgres


def _postgres(cfg: Config) -> Postgres | None:
    """``gateway.state.open_postgres``, imported only when configured: the state package loads
    the Redis client, which a command on the data dir's files does not need."""
    if cfg.state.postgres_url is None:
        return None
    from gateway.state import open_postgres

    return open_postgres(cfg)


def pins(cfg: Config) -> Path | PgPinStore:
    """SchemaPin key pins: PostgreSQL's, else the data dir's file (a path: opened where used)."""
    pg = _postgres(cfg)
    if pg is None:
        return cfg.pins_path
    from gateway.state.pins import PgPinStore

    return PgPinStore(pg, owns=True)


def accepted_findings(cfg: Config) -> AcceptedFindings | PgAcceptedFindings:
    """Screening findings a person accepted: PostgreSQL's, else the data dir's."""
    pg = _postgres(cfg)
    if pg is None:
        return AcceptedFindings(cfg.screening_accepted_path)
    from gateway.state.accepted import PgAcceptedFindings

    return PgAcceptedFindings(pg, owns=True)


def tool_states(cfg: Config) -> ToolStates:
    """Tool records, approvals and revocations: PostgreSQL's (the ones every replica reads),
    else the data dir's, which a gateway must have made (``GatewayError`` naming it)."""
    pg = _postgres(cfg)
    if pg is not None:
        from gateway.state.postgres import PgToolStateStore

        return PgToolStateStore(pg, owns=True)
    if not cfg.tool_state_path.exists():
        raise GatewayError(
            f"no tool state at {cfg.tool_state_path}: start the gateway once to record its tools"
        )
    return ToolStateStore(cfg.tool_state_path)
