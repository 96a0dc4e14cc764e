"""The web dashboard: login, cookie properties, attacks, and a real headless Chromium."""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.server.dashboard import COOKIE
from tests.server.http.conftest import Env, bearer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def login(env: Env, key: str) -> httpx.Response:
    return httpx.post(env.run.base + "/login", data={"api_key": key}, follow_redirects=False)


def signed_in(base: str, r: httpx.Response | httpx2.Response) -> tuple[str, str]:
    """A login's (the base URL of its session's pages, its cookie)."""
    assert r.status_code == 303
    return base + r.headers["location"].rstrip("/"), r.cookies[COOKIE]


def session(env: Env, key: str) -> tuple[str, str]:
    return signed_in(env.run.base, login(env, key))


def test_login_sets_a_strict_httponly_cookie(env: Env) -> None:
    r = login(env, env.keys.admin)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert env.keys.admin not in cookie  # only the signed key id travels
    pages, value = signed_in(env.run.base, r)
    page = httpx.get(pages + "/tools", cookies={COOKIE: value})
    assert page.status_code == 200 and "everything__echo" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    # no external assets: every src/href is local
    assert all(u.startswith("/") for u in re.findall(r'(?:src|href)="([^"]+)"', page.text))


@pytest.mark.parametrize("which,status", [("bad", 401), ("user", 403)])
def test_login_refuses_bad_and_non_admin_keys(env: Env, which: str, status: int) -> None:
    key = "symbi_000000000000_nope" if which == "bad" else env.keys.user
    r = login(env, key)
    assert r.status_code == status
    assert "set-cookie" not in r.headers


def test_a_form_with_too_many_fields_is_refused_not_a_crash(env: Env) -> None:
    """Attack: anyone could POST /login with more than ten fields: parse_qs raised, every such
    request a 500 and a traceback in the gateway's log (a log flood with no credentials)."""
    flood = "&".join(f"f{i}=x" for i in range(12))
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = httpx.post(env.run.base + "/login", content=flood, headers=form)
    assert r.status_code == 400 and "set-cookie" not in r.headers
    pages, cookie = session(env, env.keys.admin)
    r = httpx.post(pages + "/logout", content=flood, headers=form, cookies={COOKIE: cookie})
    assert r.status_code == 400


def test_pages_need_a_valid_session(env: Env) -> None:
    pages, good = session(env, env.keys.admin)
    for path in ("/", "/tools", "/decisions", "/upstreams", "/agents", "/audit"):
        r = httpx.get(pages + path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
    forged = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    assert httpx.get(pages + "/tools", cookies={COOKIE: forged}, follow_redirects=False).status_code == 303


def test_revoking_the_key_ends_its_dashboard_sessions(env: Env) -> None:
    key, rec = env.keys.store.create("temp-admin", ("admin",))
    pages, cookie = session(env, key)
    assert httpx.get(pages + "/upstreams", cookies={COOKIE: cookie}).status_code == 200
    env.keys.store.revoke(rec.id)
    assert (
        httpx.get(pages + "/upstreams", cookies={COOKIE: cookie}, follow_redirects=False).status_code == 303
    )


def test_logout_needs_the_csrf_token(env: Env) -> None:
    pages, cookie = session(env, env.keys.admin)
    r = httpx.post(
        pages + "/logout", data={"csrf": "wrong"}, cookies={COOKIE: cookie}, follow_redirects=False
    )
    assert r.status_code == 403
    r = httpx.post(
        pages + "/logout",
        data={},
        cookies={COOKIE: cookie},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 403  # cross-site form posts are refused by the Origin guard


def test_a_logged_out_session_cookie_is_refused(env: Env) -> None:
    """Attack: logout only told the browser to drop the cookie; a copy of it (stolen, cached,
    left in another tab's jar) still opened every page and form for the rest of its 8 hours."""
    pages, cookie = session(env, env.keys.admin)
    page = httpx.get(pages + "/agents", cookies={COOKIE: cookie})
    assert page.status_code == 200
    r = httpx.post(
        pages + "/logout",
        data={"csrf": _csrf(page.text)},
        cookies={COOKIE: cookie},
        follow_redirects=False,
    )
    assert r.status_code == 303
    for path in ("/audit", "/agents"):
        r = httpx.get(pages + path, cookies={COOKIE: cookie}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
    # another session of the same key is not logged out with it
    other_pages, other = session(env, env.keys.admin)
    assert httpx.get(other_pages + "/audit", cookies={COOKIE: other}).status_code == 200


async def _calls(env: Env, key: str) -> None:
    async with (
        httpx2.AsyncClient(headers=bearer(key)) as hc,
        streamable_http_client(env.run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        assert not (await s.call_tool("everything__echo", {"message": "browser-ok"})).is_error
        assert (await s.call_tool("everything__echo", {"not_message": 1})).is_error  # denied: bad arguments
        assert (await s.call_tool("everything__get-tiny-image", {})).is_error  # denied by the policy


@contextlib.contextmanager
def _other_app() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A web server on another 127.0.0.1 port recording the headers of what it is sent."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<p>another app</p>")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _run_or_record(errors: list[BaseException], env: Env, key: str) -> None:
    try:
        anyio.run(_calls, env, key)
    except BaseException as e:  # noqa: BLE001 - reported by the test thread
        errors.append(e)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium not installed (apt-get install chromium)"
)
def test_browser_login_and_see_a_denied_call(env: Env) -> None:
    from playwright.sync_api import sync_playwright

    key, _ = env.keys.store.create("browser-user", ("developer",))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            external: list[str] = []
            page.on(
                "request",
                lambda req: external.append(req.url) if not req.url.startswith(env.run.base) else None,
            )
            page.goto(env.run.base + "/")
            page.fill("#api_key", env.keys.admin)
            page.click("#login")
            page.wait_for_selector("text=Upstreams up")
            cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["path"] != "/" and page.url.startswith(env.run.base + cookie["path"] + "/")
            assert page.evaluate("document.cookie") == ""  # not readable by script
            dashboard = page.url
            with _other_app() as (other, seen):  # another local web app on another port
                page.evaluate("url => { window.location.href = url; }", other + "/")
                page.wait_for_url(other + "/")
                assert seen and all(COOKIE not in h.get("cookie", "") for h in seen), seen
                assert all(env.run.base not in h.get("referer", "") for h in seen), seen
            external.clear()  # that app was the one request elsewhere
            page.goto(dashboard)

            # sync Playwright owns this thread's event loop: the MCP client runs in its own thread
            errors: list[BaseException] = []
            t = threading.Thread(target=lambda: _run_or_record(errors, env, key))
            t.start()
            t.join(60)
            assert not errors, errors

            page.click("text=Recent decisions")
            rows = page.locator("#decisions tbody tr", has_text="browser-user")
            rows.first.wait_for()
            texts = rows.all_inner_texts()
            assert any("denied" in t and "everything__echo" in t for t in texts), texts
            policy_row = next(t for t in texts if "everything__get-tiny-image" in t)
            # a tool the policy hides is refused exactly like a missing one (issue 11 item 13)
            assert "denied" in policy_row and "unknown tool" in policy_row, policy_row
            assert any("ok" in t and "everything__echo" in t for t in texts), texts

            page.click("text=Tools")
            assert (
                page.locator("#tools tbody tr", has_text="everything__echo").inner_text().count("unverified")
                == 1
            )
            page.click("text=Upstreams")
            assert "up" in page.locator("#upstreams tbody tr", has_text="everything").inner_text()
            page.click("text=Audit")
            assert page.locator("#audit-status").is_visible()
            page.click("text=Log out")
            page.wait_for_selector("#api_key")
            assert external == [], external
        finally:
            browser.close()


# -- the agents view: list, state, suspend / resume / terminate (the admin API's actions) -----


def _csrf(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m is not None
    return m.group(1)


@pytest.mark.anyio
async def test_agents_view_lists_and_controls_a_live_agent(env: Env) -> None:
    key, _ = env.keys.store.create("dash-agent-user", ("developer",))
    base, cookie = session(env, env.keys.admin)
    async with (
        httpx.AsyncClient(base_url=base, cookies={COOKIE: cookie}, follow_redirects=False) as web,
        httpx2.AsyncClient(headers=bearer(key)) as hc,
        streamable_http_client(env.run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()

        async def echo() -> str | None:
            res = await s.call_tool("everything__echo", {"message": "from the agent"})
            return (res.meta or {}).get("symbi/error", {}).get("code") if res.is_error else None

        assert await echo() is None
        listed = (await web.get(env.run.base + "/api/agents", headers=bearer(env.keys.admin))).json()
        [agent] = [a for a in listed["agents"] if a["principal"] == "dash-agent-user"]
        page = await web.get("/agents")
        assert page.status_code == 200
        row = re.search(rf'<tr id="agent-{re.escape(agent["id"])}">(.*?)</tr>', page.text)
        assert row is not None and agent["name"] in row.group(1) and ">Ready<" in row.group(1)
        csrf = _csrf(page.text)
        act = f"/agents/{agent['id']}"

        # no CSRF token (or a cross-site Origin): refused, nothing changes
        assert (await web.post(act + "/suspend", data={"reason": "x"})).status_code == 403
        bad = await web.post(act + "/suspend", data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
        assert bad.status_code == 403
        assert await echo() is None

        refused = await web.post(act + "/resume", data={"csrf": csrf, "reason": "not suspended"})
        assert (
            refused.status_code == 409 and 'id="message"' in refused.text
        )  # the admin API's invalid_transition
        done = await web.post(act + "/suspend", data={"csrf": csrf, "reason": "looks odd"})
        assert done.status_code == 200 and 'id="message"' in done.text
        assert await echo() == "agent_suspended"  # held for its next task, then Suspended
        assert ">Suspended<" in (await web.get("/agents")).text
        assert (await web.post(act + "/resume", data={"csrf": csrf, "reason": "checked"})).status_code == 200
        assert await echo() is None
        assert (await web.post(act + "/terminate", data={"csrf": csrf, "reason": "done"})).status_code == 200
        assert await echo() == "agent_terminated"
        assert (await web.post("/agents/agt-nobody/suspend", data={"csrf": csrf})).status_code == 404
    gw = env.run.state.gateway
    assert gw is not None and gw.audit is not None
    gw.audit.flush(timeout=10)
    async with httpx.AsyncClient(base_url=env.run.base, headers=bearer(env.keys.admin)) as api:
        events = (
            await api.get(
                "/api/audit/query", params={"type": "agent.suspend_requested,agent.terminate_requested"}
            )
        ).json()
    mine = [e for e in events["events"] if e["agent"] == agent["id"]]
    assert {e["type"] for e in mine} == {"agent.suspend_requested", "agent.terminate_requested"}
