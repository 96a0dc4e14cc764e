"""A revocation takes effect while another upstream's catalogue rebuild is running (red-team
finding L): ``symbi tools revoke`` of one server's tool used to wait behind the rebuild another
server's long listing started (101 s with 20,000 tools). Real gateway, real upstreams
(tests/peers/listing_server.py), the real CLI. No timing is asserted here (how long the other
rebuild runs moves with the machine); that the refusal does not wait for a rebuild is
tests/steps/test_verify.py's (the catalogue still says pinned, the call is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.conftest import run_symbi
from tests.server._clients import stdio_session
from tests.upstream.test_listing import config, names

pytestmark = pytest.mark.anyio

TOOLS = ("danger", "danger2")

MANY = 2_000  # about the default limit, assessed one by one


async def test_a_revocation_does_not_wait_for_another_upstreams_rebuild(tmp_path: Path) -> None:
    victim = {
        "tools": [{"name": n, "description": "Deletes.", "inputSchema": {"type": "object"}} for n in TOOLS]
    }
    # warn: the thief's new tools are listed (marked) once assessed, so the test sees the rebuild end
    cfg, files = config(tmp_path, {"victim": victim, "thief": {}}, limit=MANY + 1, verification="warn")
    text = cfg.read_text().replace("[mcp]\n", "[mcp]\nrecheck_interval_s = 0.3\n")
    cfg.write_text(text)
    async with stdio_session(cfg) as s:
        assert not (await s.call_tool("victim__danger", {})).is_error
        files["thief"].write_text(json.dumps({"many_tools": MANY}))
        assert not (await s.call_tool("thief__announce", {})).is_error
        await anyio.sleep(0.5)  # the thief's rebuild has begun
        for tool in TOOLS:  # the second: the rebuild the first asked for waits too, not the polling
            revoked = run_symbi("tools", "revoke", f"victim__{tool}", "--config", cfg)
            assert revoked.returncode == 0, revoked.stderr
            with anyio.fail_after(60):
                while not (r := await s.call_tool(f"victim__{tool}", {})).is_error:
                    await anyio.sleep(0.05)
            assert r.meta["symbi/error"]["code"] == "verification_denied"  # type: ignore[index]
        with anyio.fail_after(180):  # and the rebuilds, when done, agree (refused all along)
            while {"victim__danger", "victim__danger2"} & await names(s):
                assert (await s.call_tool("victim__danger", {})).is_error
                await anyio.sleep(0.5)
        assert "thief__n0" in await names(s)
