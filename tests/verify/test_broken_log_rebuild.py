"""A revocation with the audit log broken (a full disk, ``on_failure = "deny"``): the rebuild's
status records raised out of the verifier, the new catalogue was never installed, and the
approvals task ended the gateway's task group (the gateway stopped). Now the catalogue with
the revocation is installed, the records are held for the next rebuild, the gateway stays up.
A real gateway with server-everything; the log is closed as a broken disk would leave it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway import events
from gateway.assemble import make_gateway
from gateway.config import load_config
from gateway.events import Event
from gateway.verify.state import ToolStateStore
from tests.conftest import Stall, everything_stdio_config, require_peers

pytestmark = pytest.mark.anyio


async def test_a_revocation_is_put_in_force_with_the_audit_log_broken(tmp_path: Path) -> None:
    require_peers()
    extra = "[mcp]\nrecheck_interval_s = 0.1\n"
    cfg = load_config(everything_stdio_config(tmp_path, "warn", extra=extra), {})
    gw = make_gateway(cfg)
    async with gw.running():
        assert "everything__echo" in gw.catalog.tools
        assert gw.audit is not None
        gw.audit.close()  # every record refused from now on
        cli = ToolStateStore(cfg.tool_state_path)
        cli.revoke("everything", "echo")
        cli.close()
        with anyio.fail_after(10):  # the approvals poll sees it and rebuilds the catalogue
            while (t := gw.catalog.tools.get("everything__echo")) is not None and (
                t.info.verification != "revoked"
            ):
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # a task ended by the record would have stopped the gateway by now
        # not lost: the poll's record of the CLI's change and the status change, held in order
        held = gw.verifier.unsent.held()
        assert [kind for kind, _ in held[:2]] == [Event.TOOL_APPROVALS_CHANGED, Event.TOOL_VERIFICATION], held
        assert held[1][1]["tool"] == "everything__echo" and held[1][1]["status"] == "revoked", held
        assert all("held_since_ns" in details for _, details in held)  # sent late: when it was acted on


async def test_a_revocation_swaps_the_catalogue_with_the_audit_log_stalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled writer (commits hang, the log not broken): the rebuild waited for its held
    records' commit (up to COMMIT_WAIT_S, 30 s) before the new catalogue was installed, so a
    revoked tool kept its old verdict meanwhile. Now the catalogue is swapped at once."""
    require_peers()
    monkeypatch.setattr(events, "COMMIT_WAIT_S", 3600.0)  # a wait on the log never ends here
    extra = "[mcp]\nrecheck_interval_s = 60\n"  # no poll during the test: the rebuild alone
    cfg = load_config(everything_stdio_config(tmp_path, "warn", extra=extra), {})
    gw = make_gateway(cfg)
    async with gw.running():
        assert gw.audit is not None and "everything__echo" in gw.catalog.tools
        stall = Stall(gw.audit)
        try:
            cli = ToolStateStore(cfg.tool_state_path)
            cli.revoke("everything", "echo")
            cli.close()
            with anyio.fail_after(30):  # a guard: waiting on the log would take an hour
                await gw.refresh()
            assert gw.catalog.tools["everything__echo"].info.verification == "revoked"
            held = gw.verifier.unsent.held()
            assert any(d.get("tool") == "everything__echo" for _, d in held), held  # in flight
        finally:
            stall.end()
        with anyio.fail_after(10):
            await gw.verifier.unsent.send(gw.events)
        assert gw.verifier.unsent.held() == []  # committed once the writer moved
