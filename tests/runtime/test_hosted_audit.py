"""Attack: a broken audit log stops the gateway through its hosted agents. With
``audit.on_failure = "deny"`` (the default) a log that cannot commit refuses calls, and the
gateway stays up saying why (``/readyz``). A hosted agent's supervisor recorded its next run
(``agent.registered``) into it: the ``AuditError`` ended the supervisor, the gateway's task
group and so the gateway (``/healthz`` 503: "restart this process", which cannot mend a full
disk). Now no run is made that cannot be recorded, and the supervisor tries again later.
A real ``symbi serve`` with an interval agent in bwrap; the log is broken as a full disk breaks
it (a trigger refusing every insert)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gateway.config import load_config
from tests.conftest import break_audit_log
from tests.runtime.test_hosted import _config, _env, _wait
from tests.server._http import serve

pytestmark = pytest.mark.slow
REFUSED = "agent clock: not run while the audit log cannot record it"  # the supervisor's log line


def test_a_broken_audit_log_does_not_stop_the_gateway_through_a_hosted_agent(tmp_path: Path) -> None:
    cfg, admin = _config(tmp_path, "bwrap", _env() + '\nstart = "1s"\nrestart = "never"')
    with serve(cfg) as base:
        _wait(base, admin, lambda h: bool(h))  # its runs have begun, recorded
        break_audit_log(load_config(cfg, {}).audit_path)
        deadline = time.monotonic() + 60
        while httpx.get(base + "/readyz").status_code == 200:  # until a record meets the trigger
            assert time.monotonic() < deadline, "the audit log never failed"
            time.sleep(0.2)
        # the interval's next run meets the broken log: its supervisor says it refused it (the
        # point where the AuditError ended the gateway before), the gateway alive meanwhile
        while not any(REFUSED in p.read_text(errors="replace") for p in cfg.parent.glob("serve-*.log")):
            assert httpx.get(base + "/healthz").status_code == 200  # 503 before: the gateway had stopped
            assert time.monotonic() < deadline, "the run was never refused"
            time.sleep(0.2)
        assert httpx.get(base + "/healthz").status_code == 200
        assert httpx.get(base + "/readyz").json()["components"]["audit"] == "unhealthy"
        assert (
            httpx.get(base + "/api/agents", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
        )
