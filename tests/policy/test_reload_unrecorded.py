"""A policy reload the audit log refuses (broken for good: a log refusing an emit never takes
one again in this process) is in force all the same, and its record's details, the digest of
the policy now deciding calls, are logged: the last trace of which policy that was. Real audit
log on SQLite, the reload on a worker thread as the file watcher runs it."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from gateway.audit.log import AuditLog
from gateway.events import Event
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles

pytestmark = pytest.mark.anyio

PKG = "package symbi\nimport rego.v1\n"
DENY = PKG + 'decision := {"allow": false, "reasons": ["no"], "conditions": {}}\n'


async def test_a_reload_the_log_refuses_is_in_force_and_its_digest_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    log.close()  # refuses every event, as a broken log does
    policy = tmp_path / "p.rego"
    policy.write_text(PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}}\n')
    eng = EmbeddedEngine(PolicyFiles(policy=policy), events=log)
    assert eng.load()
    policy.write_text(DENY)
    with caplog.at_level(logging.ERROR, logger="symbi.events"):
        assert await anyio.to_thread.run_sync(eng.reload)
    assert eng.decide({"target": "x"}).allow is False  # in force
    [args] = [
        r.args for r in caplog.records if isinstance(r.args, tuple) and r.args[0] == Event.POLICY_RELOADED
    ]
    details = args[-1]
    assert isinstance(details, dict) and details["digest"] == eng.status()["digest"]
    eng.close()
