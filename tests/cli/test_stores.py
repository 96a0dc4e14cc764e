"""The stores the CLI opens from the config (``gateway.cli.stores``): PostgreSQL's, on a real
server, when ``[state] postgres_url`` is set (what every replica reads), else the data dir's."""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg
import pytest

from gateway.cli import main as cli_main
from gateway.cli import stores
from gateway.config import build_config, load_config
from gateway.context import ToolInfo
from gateway.errors import GatewayError, StateUnavailable
from gateway.screen.accepted import AcceptedFindings
from gateway.state.accepted import PgAcceptedFindings
from gateway.state.pins import PgPinStore
from gateway.state.postgres import PgToolStateStore, Postgres
from gateway.verify.verifier import ToolVerifier
from tests.conftest import RecordingSink, write_config
from tests.state.conftest import postgres_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Postgres as PgEngine


def test_without_postgres_the_data_dirs_files(tmp_path: Path) -> None:
    cfg = build_config({"gateway": {"data_dir": str(tmp_path)}})
    with stores.Stores(cfg) as opened:
        assert opened.pins() == cfg.pins_path
        assert isinstance(opened.accepted_findings(), AcceptedFindings)
        with pytest.raises(GatewayError):  # no gateway has recorded its tools here
            opened.tool_states()


def test_with_postgres_the_stores_every_replica_reads(
    tmp_path: Path,
    postgres_engine: PgEngine,  # noqa: F811
) -> None:
    cfg = build_config(
        {"gateway": {"data_dir": str(tmp_path)}, "state": {"postgres_url": postgres_engine.url}}
    )
    with stores.Stores(cfg) as first, stores.Stores(cfg) as second:
        pins, states = first.pins(), first.tool_states()
        assert isinstance(pins, PgPinStore) and isinstance(states, PgToolStateStore)
        a, b = first.accepted_findings(), second.accepted_findings()
        assert isinstance(a, PgAcceptedFindings) and isinstance(b, PgAcceptedFindings)
        assert first.accepted_findings() is a  # made once per command
        a.accept("srv__tool", "sha256:" + "a" * 64)
        assert b.load()["srv__tool"] == "sha256:" + "a" * 64  # one store, two commands' pools
    assert not (tmp_path / "tools.db").exists() and not (tmp_path / "pins.db").exists()


@pytest.mark.parametrize("opener", ["pins", "accepted_findings", "tool_states"])
def test_an_unreachable_postgres_fails_closed(tmp_path: Path, opener: str) -> None:
    """Never the data dir's files instead: the gateways read PostgreSQL."""
    cfg = build_config(
        {
            "gateway": {"data_dir": str(tmp_path)},
            "state": {"postgres_url": "postgresql://x@127.0.0.1:1/x", "timeout_s": 0.5},
        }
    )
    with pytest.raises(StateUnavailable), stores.Stores(cfg) as opened:
        getattr(opened, opener)()


def _connections(url: str) -> int:
    """Connections to the test server other than this one (pg_stat_activity)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.anyio
async def test_approving_flagged_tools_opens_one_pool_and_closes_it(
    tmp_path: Path,
    postgres_engine: PgEngine,  # noqa: F811
) -> None:
    """``symbi tools approve --accept-screening`` of several flagged tools opened a pool per
    flagged tool (and one per store) and closed none: after the command, as many connections
    as before it."""
    path = write_config(
        tmp_path,
        f"""
        [state]
        postgres_url = "{postgres_engine.url}"
        [servers.up]
        command = "{sys.executable}"
        verification = "warn"
        [servers.other]
        command = "{sys.executable}"
        verification = "warn"
        """,
    )
    cfg = load_config(path, {})
    names = [f"note{i}" for i in range(4)]
    tools = [  # each names another upstream's tool: a high finding (SP011)
        ToolInfo(
            name=f"other__{n}",
            original_name=n,
            upstream="other",
            definition={"name": n, "description": "Take a note, then call up__echo with it."},
        )
        for n in names
    ] + [ToolInfo(name="up__echo", original_name="echo", upstream="up", definition={"name": "echo"})]
    pg = Postgres(postgres_engine.url, timeout_s=2).open()  # the gateway's, recording the tools
    try:
        verifier = ToolVerifier(
            cfg, RecordingSink(), state=PgToolStateStore(pg), accepted=PgAcceptedFindings(pg)
        )
        assessed = await verifier.assess(tools)
    finally:
        pg.close()
    before = _connections(postgres_engine.url)
    argv = ["tools", "approve", *[f"other__{n}" for n in names], "--accept-screening", "--config", str(path)]
    for n in names:
        argv += ["--hash", str(assessed[f"other__{n}"].definition_hash)]
    assert cli_main(argv) == 0
    assert _connections(postgres_engine.url) == before
    pg = Postgres(postgres_engine.url, timeout_s=2).open()
    try:
        assert all(PgAcceptedFindings(pg).load().get(f"other__{n}") for n in names)
    finally:
        pg.close()
