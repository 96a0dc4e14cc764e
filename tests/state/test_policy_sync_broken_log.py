"""Policy sync with the audit log broken (a full disk, ``on_failure = "deny"``): the new policy
was put in force and then its record raised ``AuditError``: out of ``PolicySync.run`` (the
sync ended: no later version was ever adopted) and out of a local reload before it was
published (the other replicas never saw it). Now the record is refused and logged; the
policy is in force, published and adopted all the same (refusing a stricter one would fail
open). Real PostgreSQL, real policies, a real audit log closed as a broken disk leaves it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from gateway.audit.log import AuditLog
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import discover_files
from gateway.state.policies import PgPolicyStore, PolicySync
from gateway.state.postgres import Postgres
from tests.state.test_policy_sync import CANARY, _files, _replica, pg  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio


def _deny_echo(folder: Path, deny: bool) -> None:
    doc = json.loads((folder / "data.json").read_text())
    doc["symbi_data"]["roles"]["tester"]["deny_tools"] = ["mut__echo"] if deny else []
    (folder / "data.json").write_text(json.dumps(doc))


async def _until(what: str, done: Callable[[], bool]) -> None:
    with anyio.fail_after(10):  # a sync ended by a record never gets there
        while not done():
            await anyio.sleep(0.05)


async def test_the_sync_adopts_and_publishes_with_the_audit_log_broken(
    tmp_path: Path,
    pg: Postgres,  # noqa: F811 - the fixture
) -> None:
    b, sync_b, _ = _replica(_files(tmp_path / "b"), pg, "b")
    sync_b.start()  # the fleet's policy: echo allowed
    broken = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    broken.close()  # every record refused from now on
    folder = _files(tmp_path / "a")
    a = EmbeddedEngine(discover_files(folder / "policies.rego", folder / "data.json"), events=broken)
    a.load()
    sync_a = PolicySync(a, PgPolicyStore(pg), broken, replica="a", interval_s=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sync_a.run, None)
        await _until("a synced", lambda: sync_a.seen > 0)
        _deny_echo(tmp_path / "b", True)
        assert b.reload()  # stricter, published by b: a adopts it though its log refuses the record
        await _until("a adopted", lambda: not a.decide(CANARY).allow)
        _deny_echo(folder, False)
        # a local reload with the log broken: in force here and published to the other replicas
        assert await anyio.to_thread.run_sync(a.reload)
        sync_b.sync_once()
        assert b.decide(CANARY).allow and b.status()["source"] == "broadcast"
        _deny_echo(tmp_path / "b", True)
        assert b.reload()  # the sync still runs: a later version is adopted too
        await _until("a adopted again", lambda: not a.decide(CANARY).allow)
        tg.cancel_scope.cancel()
    for e in (a, b):
        e.close()
