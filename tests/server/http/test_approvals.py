"""Drift review and approval through the admin API and the dashboard (real rug pull)."""

from __future__ import annotations

import html
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.audit import store
from gateway.config import load_config
from gateway.events import Event
from gateway.server import approvals
from gateway.server.dashboard import COOKIE
from tests.conftest import ROOT, SYMBI, symbi_env, write_config
from tests.local_http import serving
from tests.server.http.conftest import (
    Keys,
    Running,
    bearer,
    everything_config,
    make_keys,
    policy_data,
    run_server,
)
from tests.server.http.test_admin import check
from tests.server.http.test_dashboard import CHROMIUM, CHROMIUM_ARGS, signed_in
from tests.server.http.test_metrics import value

MUTABLE = ROOT / "tests/peers/mutable_server.py"


def mutable_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        f"""
        [policy]
        path = "{ROOT / "policies.rego"}"
        data = "{policy_data(tmp_path)}"
        [gateway]
        data_dir = "{tmp_path / "data"}"
        [mcp]
        recheck_interval_s = 0.2
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "tofu"
        # a drift a person may approve from the API/dashboard (a poisoned one needs the CLI's
        # --accept-screening: tests/screen)
        env = {{ RUG_PULL_DESCRIPTION = "Echoes the message back, in upper case from now on." }}
        """,
    )


async def _rug_pull(run: Running, key: str) -> None:
    """Pin echo by using it, change it upstream, and wait until the gateway refuses it."""
    async with (
        httpx2.AsyncClient(headers=bearer(key)) as hc,
        streamable_http_client(run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        assert not (await s.call_tool("mut__echo", {"message": "first"})).is_error
        assert not (await s.call_tool("mut__rug_pull", {})).is_error
        with anyio.fail_after(15):
            while not (res := await s.call_tool("mut__echo", {"message": "again"})).is_error:
                await anyio.sleep(0.05)
        assert res.meta["symbi/error"]["code"] == "verification_denied"  # type: ignore[index]


async def _echo_works(run: Running, key: str, server: str = "mut") -> bool:
    """Wait until ``server``'s echo answers (an approval takes effect within the recheck
    interval; a generous bound: it is a wait on the condition, not a fixed sleep)."""
    async with (
        httpx2.AsyncClient(headers=bearer(key)) as hc,
        streamable_http_client(run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        with anyio.fail_after(60):
            while (res := await s.call_tool(f"{server}__echo", {"message": "after"})).is_error:
                await anyio.sleep(0.05)
        return res.content[0].text == "Echo: after"  # type: ignore[union-attr]


def _in_thread(fn: Any, *args: Any) -> Any:
    """Run an async function on its own thread (sync Playwright owns this thread's loop)."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(_capture(fn, *args)))
    t.start()
    t.join(60)
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _capture(fn: Any, *args: Any) -> tuple[bool, Any]:
    try:
        return True, anyio.run(fn, *args)
    except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
        return False, e


def _setup(tmp_path: Path) -> tuple[Path, Keys]:
    cfg = mutable_config(tmp_path)
    return cfg, make_keys(cfg)


@pytest.mark.anyio
async def test_api_diff_and_approve_a_drifted_tool(tmp_path: Path) -> None:
    cfg, keys = _setup(tmp_path)
    with run_server(cfg) as run:
        await _rug_pull(run, keys.admin)
        async with httpx2.AsyncClient() as hc:
            text = (await hc.get(run.base + "/metrics")).text
        assert value(text, "symbi_tool_drift_total", upstream="mut") >= 1.0
        assert value(text, "symbi_verification_failures_total", upstream="mut", status="drifted") >= 1.0
        async with httpx2.AsyncClient(base_url=run.base + "/api") as api:
            r = await api.get("/tools/mut__echo/diff", headers=bearer(keys.admin))
            diff = check(httpx.Response(r.status_code, content=r.content), 200, "ToolDiff")
            assert diff["drifted"] is True and "upper case" in diff["diff"]
            assert diff["key_change"] is None  # unsigned: no pin moves (tests/verify/test_approve.py)
            assert diff["pin_change_rejected"] is False
            tools = (await api.get("/tools", headers=bearer(keys.admin))).json()["tools"]
            assert next(t for t in tools if t["name"] == "mut__echo")["verification"] == "drifted"
            # not an admin: refused; unknown tool: 404
            reviewed = {"hash": diff["current_hash"]}
            r = await api.post("/tools/mut__echo/approve", json=reviewed, headers=bearer(keys.user))
            assert r.status_code == 403
            r = await api.post("/tools/mut__nope/approve", json=reviewed, headers=bearer(keys.admin))
            assert r.status_code == 404
            r = await api.post("/tools/mut__echo/approve", json=reviewed, headers=bearer(keys.admin))
            done = check(httpx.Response(r.status_code, content=r.content), 200, "Approved")
            assert done["approved_hash"] == diff["current_hash"]
        assert await _echo_works(run, keys.admin)
        assert any(c.target == "mut__echo" and c.outcome == "ok" for c in run.state.recent.latest(5))


async def _switch(run: Running, key: str) -> None:
    """The upstream swaps echo for another definition (a title) while a person reviews the first."""
    async with (
        httpx2.AsyncClient(headers=bearer(key)) as hc,
        streamable_http_client(run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        assert not (await s.call_tool("mut__change_echo", {"field": "title"})).is_error


async def _current_hash(api: httpx2.AsyncClient, other_than: str) -> dict[str, Any]:
    with anyio.fail_after(20):
        while (diff := (await api.get("/tools/mut__echo/diff")).json())["current_hash"] == other_than:
            await anyio.sleep(0.05)
    return diff  # type: ignore[no-any-return]


@pytest.mark.anyio
async def test_api_and_dashboard_approve_only_the_definition_reviewed(tmp_path: Path) -> None:
    """Bait and switch: the admin reviews a harmless drift, the upstream swaps in another
    definition, and the approval of the reviewed hash is refused (409 definition_changed) with
    nothing approved; the dashboard's form carries the hash its page showed. Both used to
    approve whatever was current when the button was pressed."""
    cfg, keys = _setup(tmp_path)
    with run_server(cfg) as run:
        await _rug_pull(run, keys.admin)
        async with httpx2.AsyncClient(base_url=run.base + "/api", headers=bearer(keys.admin)) as api:
            bait = (await api.get("/tools/mut__echo/diff")).json()
            assert "upper case" in bait["diff"]
            await _switch(run, keys.admin)
            switched = await _current_hash(api, bait["current_hash"])
            assert "Run as root" in switched["diff"]
            r = await api.post("/tools/mut__echo/approve", json={"hash": bait["current_hash"]})
            refused = check(httpx.Response(r.status_code, content=r.content), 409, "Error")
            assert refused["code"] == "definition_changed"
            for body in (None, {"hash": switched["current_hash"][:12]}, {"hash": "z" * 64}):
                r = await api.post("/tools/mut__echo/approve", json=body)
                assert (r.status_code, r.json()["code"]) == (400, "reviewed_hash_required"), body
            r = await api.post("/tools/mut__echo/approve", content=b'{"hash": 1}')
            assert (r.status_code, r.json()["error"]) == (400, "bad_request")
            assert (await api.get("/tools/mut__echo/diff")).json()["approved_hash"] == bait["approved_hash"]
        async with httpx2.AsyncClient(base_url=run.base) as web:
            login = await web.post("/login", data={"api_key": keys.admin}, follow_redirects=False)
            pages, cookie = signed_in("", login)
            cookies = {COOKIE: cookie}
            page = (await web.get(pages + "/tools/mut__echo", cookies=cookies)).text
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            assert f'name="hash" value="{switched["current_hash"]}"' in page
            stale = {"csrf": csrf, "hash": bait["current_hash"]}  # a page opened before the switch
            r = await web.post(pages + "/tools/mut__echo/approve", data=stale, cookies=cookies)
            assert r.status_code == 409 and "Run as root" in r.text  # shown again as it is now
            for no_hash in ({"csrf": csrf}, {"csrf": csrf, "hash": ""}):
                r = await web.post(pages + "/tools/mut__echo/approve", data=no_hash, cookies=cookies)
                assert r.status_code == 400
            reviewed = {"csrf": csrf, "hash": switched["current_hash"]}
            r = await web.post(pages + "/tools/mut__echo/approve", data=reviewed, cookies=cookies)
            assert r.status_code == 200 and "Approved mut__echo" in r.text
        assert await _echo_works(run, keys.admin)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium not installed (apt-get install chromium)"
)
def test_browser_approves_a_drifted_tool(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    cfg, keys = _setup(tmp_path)
    with run_server(cfg) as run, sync_playwright() as p:
        _in_thread(_rug_pull, run, keys.admin)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(run.base + "/")
            page.fill("#api_key", keys.admin)
            page.click("#login")
            page.wait_for_selector("text=Upstreams up")
            page.click("text=Tools")
            row = page.locator("#tools tbody tr", has_text="mut__echo")
            assert "drifted" in row.inner_text()
            row.locator("a").click()
            assert page.inner_text("#drifted") == "yes"
            assert "upper case" in page.inner_text("#diff")
            page.click("#approve")
            page.wait_for_selector("#message")
            assert "Approved mut__echo" in page.inner_text("#message")
            assert "drifted" not in page.locator("#tools tbody tr", has_text="mut__echo").inner_text()
            assert any(c["name"] == COOKIE for c in page.context.cookies())
        finally:
            browser.close()
        assert _in_thread(_echo_works, run, keys.admin)


@pytest.mark.anyio
async def test_screening_findings_shown_in_api_and_dashboard_and_flagged_approval_refused(
    tmp_path: Path,
) -> None:
    """A poisoned definition (real stdio upstream): its findings are in /api and on the
    dashboard, and neither can approve it (only the CLI's --accept-screening can)."""
    from tests.screen.test_gateway_screening import CLEAN, POISONED, SIGNED

    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([POISONED, CLEAN]))
    cfg = write_config(
        tmp_path,
        f"""
        [policy]
        path = "{ROOT / "policies.rego"}"
        data = "{policy_data(tmp_path)}"
        [gateway]
        data_dir = "{tmp_path / "data"}"
        [servers.dict]
        command = "{sys.executable}"
        args = ["{SIGNED}"]
        env = {{ TOOLS_FILE = "{tools}" }}
        verification = "tofu"
        """,
    )
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        async with httpx2.AsyncClient(base_url=run.base + "/api", headers=bearer(keys.admin)) as api:
            listed = {t["name"]: t for t in (await api.get("/tools")).json()["tools"]}
            assert listed["dict__add"]["screening"]["highest"] == "high"
            r = await api.get("/tools/dict__add/diff")
            diff = check(httpx.Response(r.status_code, content=r.content), 200, "ToolDiff")
            sp001 = next(f for f in diff["screening"] if f["rule"] == "SP001")
            assert sp001["field"] == "description" and "IMPORTANT" in sp001["excerpt"]
            r = await api.post("/tools/dict__add/approve", json={"hash": diff["current_hash"]})
            assert (r.status_code, r.json()["code"]) == (409, "approval_refused")  # screening flagged
        async with httpx2.AsyncClient(base_url=run.base) as web:
            login = await web.post("/login", data={"api_key": keys.admin}, follow_redirects=False)
            pages, cookie = signed_in("", login)
            cookies = {COOKIE: cookie}
            page = (await web.get(pages + "/tools", cookies=cookies)).text
            detail = (await web.get(pages + "/tools/dict__add", cookies=cookies)).text
        row = next(r for r in page.split("<tr") if "dict__add" in r)
        assert "SP001" in row and "high" in row
        clean = next(r for r in page.split("<tr") if "dict__sum" in r)
        assert "SP0" not in clean
        assert 'id="screening"' in detail and "SP006" in detail


async def _digest(api: httpx2.AsyncClient, key: str, name: str) -> str:
    listed = (await api.get("/discovered", headers=bearer(key))).json()["servers"]
    return str(next(d["digest"] for d in listed if d["name"] == name))


@pytest.mark.anyio
async def test_discovered_server_approved_from_the_api_and_dashboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discovery quarantines a server a client config gained; the admin API lists it without
    its secrets, a non-admin cannot approve it, an admin can (dashboard button too), and then
    its tools are callable; the approval is on the record with who made it. Attack (redteam-28):
    the admin saw one config, the file was rewritten (an env var added) and the approval stored
    the new one; the approval now names the digest of the config shown and is refused."""
    from tests.onboard.conftest import SECRET, write_json

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    servers: dict[str, dict[str, Any]] = {
        "mut": {"command": sys.executable, "args": [str(MUTABLE)], "env": {"TOKEN": SECRET}},
        "other": {"command": sys.executable, "args": [str(MUTABLE), f"--key={SECRET}"]},
    }
    desktop = write_json(home / ".config/Claude/claude_desktop_config.json", {"mcpServers": servers})
    cfg = write_config(
        tmp_path,
        f"""
        [policy]
        path = "{ROOT / "policies.rego"}"
        data = "{policy_data(tmp_path)}"
        [gateway]
        data_dir = "{tmp_path / "data"}"
        [mcp]
        discovery_enabled = true
        recheck_interval_s = 0.2
        [sandbox]
        code_tools = false
        """,
    )
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        async with httpx2.AsyncClient(base_url=run.base + "/api") as api:
            with anyio.fail_after(20):
                while (
                    len((r := await api.get("/discovered", headers=bearer(keys.admin))).json()["servers"]) < 2
                ):
                    await anyio.sleep(0.1)
            listed = check(httpx.Response(r.status_code, content=r.content), 200, "DiscoveredList")
            assert {d["status"] for d in listed["servers"]} == {"quarantined"}
            assert SECRET not in r.text  # env and args stay in the data dir
            # what approving runs, arguments included, recognisable secrets masked (as the CLI)
            shown = {d["name"]: d["launches"] for d in listed["servers"]}
            assert shown["other"] == shlex.join([sys.executable, str(MUTABLE), "--key=***"])
            assert shown["mut"] == shlex.join(["TOKEN=***", sys.executable, str(MUTABLE)])  # named, not shown
            assert (await api.post("/discovered/mut/approve", headers=bearer(keys.user))).status_code == 403
            assert (await api.post("/discovered/nope/approve", headers=bearer(keys.admin))).status_code == 404
            seen = {d["name"]: d["digest"] for d in listed["servers"]}
            # no digest: which config is approved is not said (as a tool approval without its hash)
            r = await api.post("/discovered/mut/approve", headers=bearer(keys.admin))
            assert r.status_code == 400 and r.json()["code"] == "reviewed_hash_required"
            # the file rewritten after the admin looked: the approval of what was shown is refused
            write_json(
                desktop,
                {"mcpServers": {**servers, "mut": {**servers["mut"], "env": {"TOKEN": SECRET, "X": "1"}}}},
            )
            with anyio.fail_after(20):
                while (now := await _digest(api, keys.admin, "mut")) == seen["mut"]:
                    await anyio.sleep(0.1)
            body = {"digest": seen["mut"]}
            r = await api.post("/discovered/mut/approve", headers=bearer(keys.admin), json=body)
            assert r.status_code == 409 and r.json()["code"] == "definition_changed"
            assert now not in r.text  # the refusal never hands out the digest to approve unseen
            assert await _digest(api, keys.admin, "mut") == now  # still quarantined, nothing approved
            r = await api.post("/discovered/mut/approve", headers=bearer(keys.admin), json={"digest": now})
            assert (
                check(httpx.Response(r.status_code, content=r.content), 200, "Discovered")["status"]
                == "approved"
            )
        assert await _echo_works(run, keys.admin)
        async with httpx2.AsyncClient(base_url=run.base) as web:
            login = await web.post("/login", data={"api_key": keys.admin}, follow_redirects=False)
            pages, cookie = signed_in("", login)
            cookies = {COOKIE: cookie}
            page = (await web.get(pages + "/upstreams", cookies=cookies)).text
            assert 'id="approve-other"' in page and 'id="approve-mut"' not in page and SECRET not in page
            assert html.escape(shlex.join([sys.executable, str(MUTABLE), "--key=***"])) in page
            csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            digest = page.split('name="digest" value="', 1)[1].split('"', 1)[0]  # the config shown
            wrong = {"csrf": csrf, "digest": "0" * 64}  # another config than the one shown: refused
            refused = await web.post(pages + "/discovered/other/approve", data=wrong, cookies=cookies)
            assert refused.status_code == 409 and 'id="approve-other"' in refused.text
            form = {"csrf": csrf, "digest": digest}
            done = await web.post(pages + "/discovered/other/approve", data=form, cookies=cookies)
            assert done.status_code == 200 and 'id="approve-other"' not in done.text
            forged = await web.post(pages + "/discovered/other/approve", data={"csrf": "x"}, cookies=cookies)
            assert forged.status_code == 403
        # the discovery loop starts it (and records server.approved) on its next pass: wait for
        # that before stopping the gateway, or a loaded machine stops it first
        assert await _echo_works(run, keys.admin, "other")
    out = subprocess.run(
        [str(SYMBI), "audit", "query", "--config", str(cfg), "--type", "server.approved", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    ).stdout
    approved = [json.loads(line)["details"] for line in out.splitlines() if line.strip()]
    assert {d["server"] for d in approved} == {"mut", "other"}
    assert all(d["approved_by"] for d in approved)  # who approved it


SLOW_START = ROOT / "tests/peers/slow_start_server.py"


def _wedged_key_host(wedged: threading.Event, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    """A domain's ``.well-known`` host with no key (404) that, once ``wedged``, holds each request
    until ``release`` (past the resolver's 10 s): a rebuild waits on every keyed upstream's."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if wedged.is_set():
                release.wait(60)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def test_an_approval_is_answered_while_a_slow_catalogue_refresh_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval's catalogue refresh was awaited without a bound after its record (itself up
    to 30 s): two upstreams whose key discovery hangs held the answer 20 s, past any client's
    wait (the CLI's 45 s with a slow record). Now it is answered once the record is committed
    and the refresh waited for a while, saying the catalogue is still being rebuilt; the
    rebuild goes on."""
    monkeypatch.setattr(approvals, "REFRESH_WAIT_S", 1.0)
    wedged, release = threading.Event(), threading.Event()
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _wedged_key_host(wedged, release))) as host:
        domain = f"127.0.0.1:{host.server_address[1]}"
        starts = tmp_path / "starts.log"
        starts.touch()
        starts.chmod(0o666)  # the servers run as the unprivileged upstream user
        keyed = "".join(
            f"""
            [servers.{n}]
            command = "{sys.executable}"
            args = ["{SLOW_START}", "{starts}", "{n}", "0"]
            verification = "warn"
            domain = "{domain}"
            """
            for n in ("k1", "k2")
        )
        # no recheck poll in this test: only the approval's own rebuild can replace the catalogue
        mcp = "[mcp]\ninsecure_discovery_http = true\ndiscovery_ttl_s = 0\nconnection_timeout_s = 60\n"
        mcp += "recheck_interval_s = 3600.0\n"
        cfg = everything_config(tmp_path, top_extra=mcp + keyed)
        keys = make_keys(cfg)
        try:
            with run_server(cfg) as run:
                admin = bearer(keys.admin)
                api = run.base + "/api/tools/everything__echo"
                current = httpx.get(api + "/diff", headers=admin).json()["current_hash"]
                wedged.set()
                # 20 s of rebuild without the bound: the client gives up first (ReadTimeout)
                r = httpx.post(api + "/approve", json={"hash": current}, headers=admin, timeout=10)
                assert r.status_code == 200, r.text
                assert (r.json()["approved_hash"], r.json()["catalogue_refreshed"]) == (current, False)
                db = load_config(cfg, {}).audit_path
                assert [e["details"]["definition_hash"] for e in _approved(db)] == [current]
                gw = run.state.gateway
                assert gw is not None
                before = gw.catalog  # replaced whole by each rebuild
                release.set()
                deadline = time.monotonic() + 30  # the refresh went on, not cancelled with the answer
                while gw.catalog is before and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert gw.catalog is not before
        finally:
            release.set()


def _approved(db: Path) -> list[dict[str, Any]]:
    conn = store.open_reader(db)
    try:
        return [r.as_dict() for r in store.query(conn, types=(str(Event.TOOL_APPROVED),))]
    finally:
        conn.close()
