"""The stores the CLI opens from the config (``gateway.cli.stores``): PostgreSQL's, on a real
server, when ``[state] postgres_url`` is set (what every replica reads), else the data dir's."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import stores
from gateway.config import build_config
from gateway.errors import GatewayError, StateUnavailable
from gateway.screen.accepted import AcceptedFindings
from gateway.state.accepted import PgAcceptedFindings
from gateway.state.pins import PgPinStore
from gateway.state.postgres import PgToolStateStore
from tests.state.conftest import postgres_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Postgres as PgEngine


def test_without_postgres_the_data_dirs_files(tmp_path: Path) -> None:
    cfg = build_config({"gateway": {"data_dir": str(tmp_path)}})
    assert stores.pins(cfg) == cfg.pins_path
    assert isinstance(stores.accepted_findings(cfg), AcceptedFindings)
    with pytest.raises(GatewayError):  # no gateway has recorded its tools here
        stores.tool_states(cfg)


def test_with_postgres_the_stores_every_replica_reads(
    tmp_path: Path,
    postgres_engine: PgEngine,  # noqa: F811
) -> None:
    cfg = build_config(
        {"gateway": {"data_dir": str(tmp_path)}, "state": {"postgres_url": postgres_engine.url}}
    )
    pins, states = stores.pins(cfg), stores.tool_states(cfg)
    first, second = stores.accepted_findings(cfg), stores.accepted_findings(cfg)
    assert isinstance(pins, PgPinStore) and isinstance(states, PgToolStateStore)
    assert isinstance(first, PgAcceptedFindings) and isinstance(second, PgAcceptedFindings)
    try:
        first.accept("srv__tool", "sha256:" + "a" * 64)
        assert second.load()["srv__tool"] == "sha256:" + "a" * 64  # one store, each its own pool
    finally:
        for s in (pins, states, first, second):
            s.close()
    assert not (tmp_path / "tools.db").exists() and not (tmp_path / "pins.db").exists()


@pytest.mark.parametrize("opener", [stores.pins, stores.accepted_findings, stores.tool_states])
def test_an_unreachable_postgres_fails_closed(tmp_path: Path, opener: object) -> None:
    """Never the data dir's files instead: the gateways read PostgreSQL."""
    cfg = build_config(
        {
            "gateway": {"data_dir": str(tmp_path)},
            "state": {"postgres_url": "postgresql://x@127.0.0.1:1/x", "timeout_s": 0.5},
        }
    )
    with pytest.raises(StateUnavailable):
        opener(cfg)  # type: ignore[operator]
