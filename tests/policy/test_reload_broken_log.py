"""Policy hot reload with the audit log broken (a full disk, ``audit.on_failure = "deny"``):
the reload's record raised ``AuditError`` out of ``EmbeddedEngine.reload``, called from the
file watcher's thread, so a policy edit (a tightening) was never put in force. Now the new
policy is in force and a refused edit still keeps the old one; neither raises. A real audit
log on SQLite, broken under its writer as a full disk would break it."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.errors import AuditError
from gateway.events import Event
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from gateway.policy.watch import FileWatcher
from tests.conftest import break_audit_log


def _broken_log(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    break_audit_log(tmp_path / "audit.db")
    log.emit(Event.GATEWAY_START, {})  # found by the next write: nobody waited for it, so
    with contextlib.suppress(AuditError):  # the log refuses every record from then on
        log.flush()
    with pytest.raises(AuditError):
        log.ensure_writable()
    return log


def test_a_hot_reloaded_policy_is_put_in_force_with_the_log_broken(
    policy_copy: PolicyFiles, tmp_path: Path
) -> None:
    log = _broken_log(tmp_path)
    try:
        eng = EmbeddedEngine(policy_copy, events=log)
        assert eng.load()
        before = eng.status()["digest"]
        assert policy_copy.data is not None
        doc = json.loads(policy_copy.data.read_text())
        doc["symbi_data"]["principals"]["keys"]["ci-bot"]["tools"].append("everything__echo")
        watcher = FileWatcher(policy_copy.watched(), eng.reload, interval_s=0.05)
        watcher.start()
        try:
            policy_copy.data.write_text(json.dumps(doc, indent=1))
            end = time.monotonic() + 15
            while eng.status()["digest"] == before and time.monotonic() < end:
                time.sleep(0.05)
            assert eng.status()["digest"] != before  # in force, its record refused
            reloaded = eng.status()["digest"]
            policy_copy.data.write_text("{")  # a broken edit: refused, the reloaded one stays
            assert eng.reload() is False
            assert eng.status()["digest"] == reloaded
        finally:
            watcher.stop()
    finally:
        log.close()
