"""An upstream's own requests to the client (sampling, elicitation, roots) under ``symbi mcp``."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from gateway.audit import store
from gateway.config.load import load_config
from tests.conftest import ROOT, write_config
from tests.peers.asking_server import ANSWERED
from tests.server.test_stdio_bad_input import Raw

ASKING = ROOT / "tests/peers/asking_server.py"


def test_an_upstreams_flood_of_refused_requests_is_counted_not_recorded_one_by_one(tmp_path: Path) -> None:
    """2,000 ``roots/list`` requests from an upstream with no call in flight: each is refused
    (nobody to ask), and each was a signed, durable record of its own, without bound. Past
    ``[audit] refusals_recorded_per_window`` they are counted under ``upstream:NAME`` and
    recorded as ``audit.refusals_summarized`` (at the window's end, a flush, or shutdown)."""
    cfg = write_config(
        tmp_path,
        f"""
        [servers.asking]
        command = "{sys.executable}"
        args = ["{ASKING}"]
        verification = "warn"
        """,
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as err:
        r = Raw(cfg, stderr=err)
        try:
            r.initialize()
            # the upstream asks as soon as it is initialized and says when every ask has its
            # answer (each refusal is counted or recorded before it is answered): a fixed sleep
            # left the last ones unread on a loaded machine, and shutdown then lost them
            deadline = time.monotonic() + 120  # the bound of the wait, not a timing assertion
            while ANSWERED not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline and r.p.poll() is None, log.read_text()[-3000:]
                time.sleep(0.1)
            r.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
            assert r.recv() == {"jsonrpc": "2.0", "id": 2, "result": {}}
        finally:
            assert r.p.stdin is not None
            r.p.stdin.close()  # a clean end: counted refusals are summarized at shutdown
            try:
                r.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                r.close()
    conn = store.open_reader(load_config(cfg).audit_path)
    try:
        refused = [
            rec
            for rec in store.query(conn, types=("upstream.client_request",))
            if rec.details["outcome"] == "refused"
        ]
        summaries = store.query(conn, types=("audit.refusals_summarized",), principal="upstream:asking")
    finally:
        conn.close()
    assert 0 < len(refused) <= 100  # the default refusals_recorded_per_window
    counted = sum(s.details["summarized"] for s in summaries)
    assert len(refused) + counted == 2000
