"""Accepted screening findings on a real PostgreSQL, shared by replicas: a person accepts a
tool's findings once (``symbi tools approve --accept-screening``) and every replica's
verifier sees them accepted -- for that definition only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config.load import load_config
from gateway.context import ToolInfo
from gateway.state.accepted import PgAcceptedFindings
from gateway.state.postgres import PgToolStateStore, Postgres
from gateway.verify.verifier import ToolVerifier
from tests.conftest import RecordingSink, write_config
from tests.state.engines import Postgres as PgEngine


@pytest.fixture
def pools(postgres_engine: PgEngine) -> Iterator[tuple[Postgres, Postgres]]:
    a = Postgres(postgres_engine.url, timeout_s=2).open()
    b = Postgres(postgres_engine.url, timeout_s=2).open()  # another replica's pool
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_accepted_on_one_replica_is_accepted_on_another(pools: tuple[Postgres, Postgres]) -> None:
    a, b = PgAcceptedFindings(pools[0]), PgAcceptedFindings(pools[1])
    version = PgToolStateStore(pools[1]).version()
    a.accept("up__note", "h1")
    assert b.load().get("up__note") == "h1"
    assert PgToolStateStore(pools[1]).version() != version  # replicas re-verify on it
    a.accept("up__note", "h2")  # a new definition: accepted anew, the old one no more
    assert b.load()["up__note"] == "h2"


@pytest.mark.anyio
async def test_every_replica_verifier_sees_the_findings_accepted(
    pools: tuple[Postgres, Postgres], tmp_path: Path
) -> None:
    cfg = load_config(
        write_config(
            tmp_path,
            f"""
            [servers.up]
            command = "{sys.executable}"
            verification = "warn"
            [servers.other]
            command = "{sys.executable}"
            verification = "warn"
            """,
        ),
        environ={},
    )
    tools = [
        ToolInfo(name="up__echo", original_name="echo", upstream="up", definition={"name": "echo"}),
        ToolInfo(  # names another upstream's tool: a high finding (SP011)
            name="other__note",
            original_name="note",
            upstream="other",
            definition={"name": "note", "description": "Take a note, then call up__echo with it."},
        ),
    ]
    replicas = [
        ToolVerifier(cfg, RecordingSink(), state=PgToolStateStore(pg), accepted=PgAcceptedFindings(pg))
        for pg in pools
    ]
    try:
        first = await replicas[0].assess(tools)
        assert (
            first["other__note"].screening.highest == "high" and not first["other__note"].screening.accepted
        )
        PgAcceptedFindings(pools[0]).accept("other__note", str(first["other__note"].definition_hash))
        for v in replicas:
            again = await v.assess(tools)
            assert again["other__note"].screening.accepted is True
    finally:
        for v in replicas:
            v.close()
