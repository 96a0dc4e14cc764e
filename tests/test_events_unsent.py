"""``events.Unsent``: records a background task acted on that a broken log refused are held,
in order, and sent at the next chance; before, they were raised (the task ended) or dropped.
Real audit logs: one closed (as a broken disk leaves it), then a working one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.audit.log import AuditLog
from gateway.audit.store import iter_records
from gateway.events import Event, Unsent


def test_refused_records_are_held_in_order_and_sent_when_a_log_takes_them(tmp_path: Path) -> None:
    broken = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    broken.close()
    unsent = Unsent()
    first = (Event.TOOL_APPROVALS_CHANGED, {"fingerprint": ["1"]})
    second = (Event.TOOL_VERIFICATION, {"tool": "s__t"})
    assert not unsent.send(broken, [first])
    assert not unsent.send(broken, [second])
    assert unsent.held() == [Event.TOOL_APPROVALS_CHANGED, Event.TOOL_VERIFICATION]
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert unsent.send(working)
    working.close()
    assert unsent.held() == []
    with sqlite3.connect(tmp_path / "b.db") as conn:
        types = [r.type for r in iter_records(conn) if r.type.startswith("tool.")]
    assert types == [Event.TOOL_APPROVALS_CHANGED, Event.TOOL_VERIFICATION]


def test_past_its_bound_the_oldest_are_dropped(tmp_path: Path) -> None:
    broken = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    broken.close()
    unsent = Unsent(cap=2)
    for n in range(3):
        unsent.send(broken, [(Event.TOOL_KEYS_CHANGED, {"upstreams": [str(n)]})])
    assert len(unsent.held()) == 2
