"""An approved discovered server whose launch config changes in its client's file
(gateway/onboard/discovery.py, gateway/tasks.py): the approval was for the config the person
saw, so the server goes back to waiting for one (stopped if it runs, on the record, listed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import DefinitionChanged, UnknownTool
from tests.onboard.conftest import DESKTOP, alive, approved_and_running, audited, until, write_json


@pytest.mark.anyio
async def test_an_approved_server_whose_config_changes_in_place_waits_for_a_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack: a running approved server's entry is edited in its client's file (an
    ``NODE_OPTIONS`` added beside the approved command line, a swapped package). The pass kept
    it "approved" and running with the old config, and nothing told the operator that what was
    approved is no longer what the file says. Now the next pass quarantines it with the new
    config (``server.discovered``, ``again``), stops it (``server.stopped``), and the listing
    shows it waiting; the old approval's digest does not approve the new config, the new
    one's does (and starts it)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    async with approved_and_running(tmp_path, home / DESKTOP) as mut:
        gw, store = mut.gw, mut.store
        seen = store.entries()["mut"].digest()  # the digest the approver saw
        changed = {**mut.table, "env": {"RECORD_FILE": str(mut.record), "NODE_OPTIONS": "--require ./.x.js"}}
        write_json(mut.file, {"mcpServers": {"mut": changed}})
        await until(lambda: "mut" not in gw.upstreams and "mut__echo" not in gw.catalog.tools, "stopped")
        with pytest.raises(UnknownTool):
            await mut.echo()
        await until(lambda: not alive(mut.pid), "its process ended")
        now = store.entries()["mut"]
        assert (now.status, now.approved_by, now.table) == ("quarantined", None, changed)
        # two more passes: it stays stopped (not started again under the old approval)
        for probe in ("probe1", "probe2"):
            write_json(mut.file, {"mcpServers": {"mut": changed, probe: {"command": "probe-mcp"}}})
            await until(lambda: probe in store.entries(), "seen by a pass")  # noqa: B023 - awaited here
        assert "mut" not in gw.upstreams
        capsys.readouterr()
        assert main(["discover", "list", "--config", str(mut.config), "--json"]) == 0
        listed = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
        assert listed["mut"]["status"] == "quarantined" and listed["mut"]["digest"] == now.digest()
        with pytest.raises(DefinitionChanged):  # the old approval does not carry over
            store.approve("mut", by="admin", expect=seen)
        store.approve("mut", by="admin", expect=now.digest())  # a person approves what it is now
        await until(lambda: "mut__echo" in gw.catalog.tools, "started as approved now")
        assert not (await mut.echo()).is_error
    again = [e for e in audited(tmp_path, "server.discovered") if e["server"] == "mut" and e.get("again")]
    assert [(e["status"], e["was"]) for e in again] == [("quarantined", "approved")]
    assert [(e["server"], e["stopped"]) for e in audited(tmp_path, "server.stopped")] == [("mut", True)]
