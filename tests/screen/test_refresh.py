"""Attack: a poisoned tool's ``tool.screening`` record refused by a broken audit log (closed,
as a broken disk leaves it: refused for the process's life). It was not marked seen, so every
catalogue rebuild (each approvals change, key change, list_changed) tried it again: one more
ERROR each time, for good. Now it is logged once (``events.refused_for_good``), not retried."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.context import ToolInfo
from gateway.screen.refresh import RefreshScreening
from tests.screen.test_gateway_screening import POISONED


def test_a_refused_screening_record_is_not_tried_again_at_every_rebuild(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    log.close()  # refuses every emit from now on
    tool = ToolInfo("up__add", "add", "up", POISONED, definition_hash="h1")
    screening = RefreshScreening(log)
    caplog.set_level(logging.ERROR, logger="symbi.events")
    for _ in range(5):  # five rebuilds of the same catalogue
        [out] = screening.tools({tool.name: tool}, (), {}).values()
        assert out.screening.at_least("medium")  # screened (and its findings attached) each time
    refused = [r for r in caplog.records if r.name == "symbi.events" and r.levelno >= logging.ERROR]
    assert len(refused) == 1, [r.getMessage() for r in refused]
