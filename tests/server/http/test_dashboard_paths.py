"""The dashboard's session lives under a per-login random path, and its cookie's ``Path`` is
that path: browsers do not isolate cookies by port (RFC 6265 section 8.5), so a ``Path=/``
cookie went to every other web server on the host, which could replay it."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from pathlib import Path

import httpx

from gateway.server.dashboard import COOKIE
from tests.conftest import free_port, write_config
from tests.server._http import serve_process
from tests.server.http.conftest import make_keys

PAGES = re.compile(r"^/d/[A-Za-z0-9_-]{32}/$")  # 24 random bytes, base64url


def _sent(jar: httpx.Cookies, url: str) -> bool:
    """Whether a client with this cookie jar sends the session cookie to ``url`` (the jar's
    own domain and path matching: http.cookiejar's, as a browser's, ignores the port)."""
    with httpx.Client(cookies=jar) as other:
        return COOKIE in other.build_request("GET", url).headers.get("cookie", "")


def test_the_cookie_stays_under_the_sessions_own_random_path(tmp_path: Path) -> None:
    """Attack: an admin logged in at http://127.0.0.1:P/ who opened any other local web app
    (http://127.0.0.1:Q/) sent it ``symbi_session``; replayed at P it opened every page, the
    CSRF token in them included."""
    cfg = write_config(tmp_path, "")
    keys = make_keys(cfg)
    with serve_process(cfg) as (base, _proc), httpx.Client(base_url=base) as web:
        r = web.post("/login", data={"api_key": keys.admin})
        assert r.status_code == 303 and PAGES.match(r.headers["location"])
        prefix = r.headers["location"].rstrip("/")
        morsel = SimpleCookie(r.headers["set-cookie"])[COOKIE]
        assert morsel["path"] == prefix and morsel["httponly"] and morsel["samesite"].lower() == "strict"
        assert web.get(prefix + "/audit").status_code == 200  # the jar sends it to the session's pages

        other = f"http://127.0.0.1:{free_port()}"
        assert _sent(web.cookies, other + prefix + "/")  # the port is not what keeps it here...
        for path in ("/", "/index.html", "/audit", "/d/", "/d/x/"):  # ...the path another app serves is
            assert not _sent(web.cookies, other + path), path
            assert not _sent(web.cookies, base + path), path

        stolen = web.cookies[COOKIE]
        again = web.post("/login", data={"api_key": keys.admin}).headers["location"].rstrip("/")
        assert again != prefix  # each login its own path
        with httpx.Client(base_url=base) as thief:  # replayed: under any other path, refused
            made_up = "/d/" + "A" * 32
            for path in ("/audit", "/tools", again + "/audit", made_up + "/audit", prefix + "x/audit"):
                r = thief.get(path, headers={"cookie": f"{COOKIE}={stolen}"})
                assert r.status_code == 303 and r.headers["location"] == "/", path
            assert thief.get(prefix + "/audit", headers={"cookie": f"{COOKIE}={stolen}"}).status_code == 200

        page = web.get(prefix + "/tools")
        assert page.headers["referrer-policy"] in ("same-origin", "no-referrer")
        links = re.findall(r'(?:src|href|action)="([^"]+)"', page.text)
        assert links and all(u.startswith(prefix + "/") for u in links), links
        assert web.get("/").status_code == 200 and 'id="api_key"' in web.get("/").text  # the login page
