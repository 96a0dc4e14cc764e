"""The discovery state is read, changed and written back by the discovery pass (the gateway's
thread), the admin API's approval (another thread) and ``symbi tools approve`` (another
process). Two racing, one's update was lost. Real files, real threads."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from gateway.onboard.discovery import Discovered, Discovery
from tests.onboard.conftest import MUTABLE, discovery, write_json

# long enough for the other thread to finish when nothing holds it back
OTHER_RUNS_S = 1.0


def _between(d: Discovery, other: threading.Thread) -> None:
    """Runs ``other`` (up to OTHER_RUNS_S) between ``d``'s read of the state and its write."""
    real = d.entries

    def read_then_other() -> dict[str, Discovered]:
        known = real()
        other.start()
        other.join(OTHER_RUNS_S)  # locked out, it waits for this write
        return known

    d.entries = read_then_other  # type: ignore[method-assign]


@pytest.mark.parametrize("first", ["approve", "poll"])
def test_an_approval_and_a_pass_racing_lose_neither_update(tmp_path: Path, first: str) -> None:
    """Attack (on the approval): a pass re-quarantines ``mut`` (its config changed in place)
    while an approval of ``x`` is between its read and its write. Approval first: its write put
    ``mut`` back as approved with its old config. Pass first: its write dropped the approval of
    ``x``, answered 200. Now each waits for the other: both updates stand."""
    home = tmp_path / "home"
    table = {"command": sys.executable, "args": [str(MUTABLE)]}
    changed = {**table, "env": {"NODE_OPTIONS": "--require ./x.js"}}
    cursor = write_json(home / ".cursor/mcp.json", {"mcpServers": {"mut": table, "x": table}})
    task, api = (discovery(tmp_path / "discovered.json", home, tmp_path) for _ in range(2))
    task.poll()
    task.approve("mut", by="p")
    write_json(cursor, {"mcpServers": {"mut": changed, "x": table}})  # the edit
    done: list[object] = []
    approve = threading.Thread(target=lambda: done.append(api.approve("x", by="p")))
    poll = threading.Thread(target=lambda: done.append(task.poll()))
    one, two = (approve, poll) if first == "approve" else (poll, approve)
    _between(api if first == "approve" else task, two)
    one.start()
    for t in (one, two):  # ``one`` started ``two``
        t.join(OTHER_RUNS_S * 10)
    assert len(done) == 2
    state = discovery(tmp_path / "discovered.json", home, tmp_path).entries()
    assert state["x"].status == "approved"
    assert state["mut"].status == "quarantined" and state["mut"].table == changed
