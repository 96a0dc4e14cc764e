"""``policy.reloaded`` is the only record of which policy decided the calls after it: a log
refusing it dropped it (``record_acted``), and the calls' records named no reload. Now it is
held in the engine's ``Unsent`` (``events.record_held``), in order, and sent once a log takes
it, stamped with when the policy took effect. Real audit logs on SQLite, the reload on a
worker thread as the file watcher and the admin route run it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from gateway.audit.log import AuditLog
from gateway.audit.store import iter_records
from gateway.events import Event
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles

pytestmark = pytest.mark.anyio

PKG = "package symbi\nimport rego.v1\n"
ALLOW = PKG + 'decision := {"allow": true, "reasons": [], "conditions": {}}\n'
DENY = PKG + 'decision := {"allow": false, "reasons": ["no"], "conditions": {}}\n'


async def test_a_reload_the_log_refused_is_held_in_order_and_sent_later(tmp_path: Path) -> None:
    broken = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    broken.close()  # refuses every event, as a broken disk leaves it
    policy = tmp_path / "p.rego"
    policy.write_text(ALLOW)
    eng = EmbeddedEngine(PolicyFiles(policy=policy), events=broken)
    assert eng.load()
    for src in (DENY, ALLOW):  # the second behind the first, not ahead of it
        policy.write_text(src)
        assert await anyio.to_thread.run_sync(eng.reload)  # in force all the same
    assert [kind for kind, _ in eng.unsent.held()] == [Event.POLICY_RELOADED] * 2
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert await eng.unsent.send(working)  # what the sender task (tasks.send_held) does
    working.close()
    with sqlite3.connect(tmp_path / "b.db") as conn:
        reloads = [r for r in iter_records(conn) if r.type == Event.POLICY_RELOADED]
    assert len(reloads) == 2
    first, second = reloads
    assert first.details["held_since_ns"] <= second.details["held_since_ns"] <= first.ts_ns
    assert not len(eng.unsent)
    eng.close()
