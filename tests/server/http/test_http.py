"""The streamable HTTP front: real SDK clients in both eras, the Inspector CLI, limits, sessions."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ROOT, children_of, mutable_config, write_config
from tests.server._http import serve_process
from tests.server.http.conftest import Env, bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS

INSPECTOR = ROOT / "node_modules/.bin/mcp-inspector"


@pytest.mark.anyio
@pytest.mark.parametrize("who", ["key", "jwt"])
async def test_sdk_client_legacy_handshake(env: Env, who: str) -> None:
    token = env.keys.user if who == "key" else env.idp.token("dana")
    async with (
        httpx2.AsyncClient(headers=bearer(token)) as hc,
        streamable_http_client(env.run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        assert s.protocol_version == "2025-11-25"
        names = {t.name for t in (await s.list_tools()).tools}
        assert "everything__echo" in names
        res = await s.call_tool("everything__echo", {"message": "hello-legacy"})
        assert not res.is_error and "hello-legacy" in res.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("who", ["key", "jwt"])
async def test_sdk_client_modern_era(env: Env, who: str) -> None:
    token = env.keys.user if who == "key" else env.idp.token("dana", alg="ES256")
    async with (
        httpx2.AsyncClient(headers=bearer(token)) as hc,
        Client(streamable_http_client(env.run.mcp, http_client=hc), mode="auto") as c,
    ):
        assert c.protocol_version == "2026-07-28"
        res = await c.call_tool("everything__echo", {"message": "hello-modern"})
        assert not res.is_error and "hello-modern" in res.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_modern_client_cannot_mint_agents_with_forged_session_ids(env: Env) -> None:
    # 2026-07-28 requests are not session-bound: the SDK never checks an mcp-session-id on
    # them. Attack: vary the header on every request to get a new agent each time (and fill
    # runtime.max_concurrent_agents for everyone).
    token, _ = env.keys.store.create("forger", ("developer",))
    for n in range(3):
        async with (
            httpx2.AsyncClient(headers={**bearer(token), "mcp-session-id": f"forged-{n}"}) as hc,
            Client(streamable_http_client(env.run.mcp, http_client=hc), mode="2026-07-28") as c,
        ):
            res = await c.call_tool("everything__echo", {"message": f"m{n}"})
            assert not res.is_error
    gw = env.run.state.gateway
    assert gw is not None
    assert len([a for a in gw.agents if a.principal == "forger"]) == 1


@pytest.mark.anyio
async def test_modern_era_without_credentials_is_refused(env: Env) -> None:
    async with httpx2.AsyncClient() as hc:
        # the SDK client surfaces the HTTP 401 as an MCPError inside its task groups
        with pytest.raises(ExceptionGroup) as info:
            async with Client(streamable_http_client(env.run.mcp, http_client=hc), mode="2026-07-28") as c:
                await c.call_tool("everything__echo", {"message": "x"})
        assert info.group_contains(MCPError)
        r = await hc.post(
            env.run.mcp,
            json={"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}},
            headers={**MCP_HEADERS, "mcp-protocol-version": "2026-07-28"},
        )
        assert r.status_code == 401


def test_dns_rebinding_is_refused_on_every_route(env: Env) -> None:
    for path in ("/mcp", "/healthz", "/metrics", "/api/tools", "/"):
        r = httpx.get(env.run.base + path, headers={"Host": "attacker.example:80", **bearer(env.keys.admin)})
        assert r.status_code == 421, path
    r = httpx.post(
        env.run.mcp,
        json=INIT,
        headers={**MCP_HEADERS, **bearer(env.keys.user), "Origin": "http://attacker.example"},
    )
    assert r.status_code == 403


def test_request_size_limit(env: Env) -> None:
    big = dict(INIT, params={**INIT["params"], "pad": "x" * (5 * 1024 * 1024)})  # type: ignore[dict-item]
    r = httpx.post(env.run.mcp, content=json.dumps(big), headers={**MCP_HEADERS, **bearer(env.keys.user)})
    assert r.status_code == 413


def test_health_and_readiness(env: Env) -> None:
    assert httpx.get(env.run.base + "/healthz").json() == {"status": "ok"}
    r = httpx.get(env.run.base + "/readyz")
    assert r.status_code == 200
    doc = r.json()
    assert doc["ready"] is True and doc["config"] is True and doc["upstreams"] == {"everything": "up"}


def test_readyz_is_503_while_an_upstream_is_down(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path)
    text = cfg.read_text().replace(
        "[servers.everything]", '[servers.broken]\ncommand = "/nonexistent/server"\n\n[servers.everything]'
    )
    text = text.replace("[mcp]", "")
    cfg.write_text(text + "\n[mcp]\nconnection_timeout_s = 2.0\n")
    with run_server(cfg, wait_ready=False) as run:
        deadline = time.monotonic() + 20
        while httpx.get(run.base + "/healthz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        r = httpx.get(run.base + "/readyz")
        assert r.status_code == 503
        assert r.json()["upstreams"]["broken"] != "up"


# -- sessions: cap and idle TTL ----------------------------------------------------------------


def _open_session(mcp: str, key: str) -> str:
    r = httpx.post(mcp, json=INIT, headers={**MCP_HEADERS, **bearer(key)})
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


def test_session_cap(tmp_path: Path) -> None:
    # a long idle timeout: a stalled machine cannot reap a session between the opens
    cfg = everything_config(tmp_path, http_extra="max_sessions = 2\nsession_idle_timeout_s = 600")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        _open_session(run.mcp, keys.user)
        _open_session(run.mcp, keys.user)
        r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.user)})
        assert r.status_code == 503  # the cap: a third session is refused
        assert len(run.state.sessions()) == 2


def test_session_idle_ttl(tmp_path: Path) -> None:
    """Only "reaped at some point after the idle time" is asserted: a stall can delay the
    reaper, never make it early, so the test does not depend on the machine's speed."""
    cfg = everything_config(tmp_path, http_extra="max_sessions = 1\nsession_idle_timeout_s = 1.0")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        s1 = _open_session(run.mcp, keys.user)
        # never closed by the client: the idle timeout reaps it (memory does not grow)
        deadline = time.monotonic() + 60
        while run.state.sessions() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.state.sessions() == []
        ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
        r = httpx.post(
            run.mcp,
            json=ping,
            headers={
                **MCP_HEADERS,
                **bearer(keys.user),
                "mcp-session-id": s1,
                "mcp-protocol-version": "2025-11-25",
            },
        )
        assert r.status_code == 404
        _open_session(run.mcp, keys.user)  # its slot is free again (max_sessions = 1)


# -- the MCP Inspector CLI ---------------------------------------------------------------------


@pytest.mark.npm
def test_inspector_cli_lists_and_calls(tmp_path: Path) -> None:
    """Inspector 0.15.0 (the version node 20 resolves) has no --header option, so this runs
    against a gateway that names an anonymous principal: the explicit opt-in."""
    cfg = everything_config(tmp_path, http_extra='anonymous_principal = "inspector"')
    with run_server(cfg) as run:
        base = [str(INSPECTOR), "--cli", run.mcp, "--transport", "http"]
        out = subprocess.run(
            [*base, "--method", "tools/list"], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        names = {t["name"] for t in json.loads(out.stdout)["tools"]}
        assert "everything__echo" in names
        out = subprocess.run(
            [
                *base,
                "--method",
                "tools/call",
                "--tool-name",
                "everything__echo",
                "--tool-arg",
                "message=hi-insp",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert "hi-insp" in json.loads(out.stdout)["content"][0]["text"]
        assert run.state.recent.latest(1)[0].principal == "inspector"


@pytest.mark.npm
def test_inspector_cli_without_credentials_is_refused(env: Env) -> None:
    out = subprocess.run(
        [str(INSPECTOR), "--cli", env.run.mcp, "--transport", "http", "--method", "tools/list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode != 0
    assert "everything__echo" not in out.stdout


_ = anyio


# -- structured access log ---------------------------------------------------------------------


@pytest.mark.parametrize("access_log", [True, False])
def test_json_access_log_one_line_per_request(tmp_path: Path, access_log: bool) -> None:
    """The real ``symbi serve`` in a subprocess, ``log_format = "json"``: stderr is parsed."""
    from tests.conftest import free_port, symbi_env

    cfg = everything_config(tmp_path, http_extra=f"access_log = {str(access_log).lower()}")
    keys = make_keys(cfg)
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=symbi_env(),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # a forwarded address or scheme a caller writes itself is not believed
        forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
        assert httpx.get(base + "/api/upstreams", headers={**bearer(keys.admin), **forged}).status_code == 200
        assert httpx.post(base + "/mcp", json=INIT, headers=MCP_HEADERS).status_code == 401
    finally:
        proc.terminate()
        proc.wait(20)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("event") == "http.request"]
    if not access_log:
        assert access == []
        return
    api = [x for x in access if x["path"] == "/api/upstreams"]
    assert len(api) == 1 and api[0]["status"] == 200 and api[0]["principal"] == "alice"
    assert api[0]["method"] == "GET" and api[0]["ms"] >= 0 and api[0]["client"].startswith("127.0.0.1:")
    refused = [x for x in access if x["path"] == "/mcp" and x["method"] == "POST"]
    assert len(refused) == 1 and refused[0]["status"] == 401 and refused[0]["principal"] is None
    assert keys.admin not in log.read_text()  # credentials never reach the log


@pytest.mark.anyio
async def test_modern_era_session_ids_are_the_gateways_not_the_clients(env: Env) -> None:
    """Attack: a 2026-era client sends another caller's mcp-session-id to file its calls there."""
    victim_label = "victim-session-0001"
    sessions: dict[str, set[str]] = {}
    for who, token in (("victim", env.keys.user), ("attacker", env.idp.token("mallory"))):
        async with (
            httpx2.AsyncClient(headers={**bearer(token), "mcp-session-id": victim_label}) as hc,
            Client(streamable_http_client(env.run.mcp, http_client=hc), mode="2026-07-28") as c,
        ):
            res = await c.call_tool("everything__echo", {"message": f"session-probe-{who}"})
            assert not res.is_error
        assert env.run.state.gateway is not None
        log = env.run.state.gateway.audit
        assert log is not None
        log.flush()
        calls = [e for e in log.recent(50) if f"session-probe-{who}" in json.dumps(e)]
        assert calls, who
        sessions[who] = {e["details"]["session_id"] for e in calls}
    assert sessions["victim"].isdisjoint(sessions["attacker"])
    assert victim_label not in sessions["victim"] | sessions["attacker"]


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on 127.0.0.1:``port`` (/proc/net/tcp, state 0A)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].split(":")[1], 16) == port:
            out.add(f[9])
    return out


def _targets_of(pid: int) -> set[str]:
    """What each descriptor of ``pid`` points at (a path, ``socket:[inode]``, ``pipe:[...]``)."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            out.add(os.readlink(fd))
    return out


def _sockets_of(pid: int) -> set[str]:
    return {t[8:-1] for t in _targets_of(pid) if t.startswith("socket:[")}


def test_no_upstream_holds_the_gateways_listening_socket(tmp_path: Path) -> None:
    """Attack (on the clients' credentials): uvicorn's listening socket is inheritable, and every
    stdio upstream `symbi serve` started held it (fd 4): an upstream could accept() the
    gateway's connections and read their API keys. Found with `make run` (ss -ltnp)."""
    with serve_process(mutable_config(tmp_path)) as (base, proc):
        listening = _listening_inodes(int(base.rsplit(":", 1)[1]))
        assert listening & _sockets_of(proc.pid)  # the gateway's own: what is looked for exists
        kids = children_of(proc.pid)
        assert kids  # the upstream runs
        for kid in kids:
            assert not listening & _sockets_of(kid), kid


def test_no_upstream_inherits_what_the_gateways_parent_left_open(tmp_path: Path) -> None:
    """Attack (least privilege): libuv's spawn closes only close-on-exec descriptors, so a
    descriptor `symbi serve` inherited from its supervisor (here an open secrets file) reached
    every stdio upstream, running as symbi-upstream, which could read it. Found with `make
    run` (/proc/<upstream>/fd held the bash tool's pipe)."""
    secret = tmp_path / "supervisor-secret"
    secret.write_text("not for upstreams")
    fd = os.open(secret, os.O_RDONLY)
    try:
        os.set_inheritable(fd, True)
        with serve_process(mutable_config(tmp_path), pass_fds=(fd,)) as (_, proc):
            assert str(secret) in _targets_of(proc.pid)  # the gateway holds it: what is looked for exists
            kids = children_of(proc.pid)
            assert kids  # the upstream runs
            for kid in kids:
                assert str(secret) not in _targets_of(kid), kid
    finally:
        os.close(fd)


@pytest.mark.slow
def test_no_hosted_agent_inherits_what_the_gateways_parent_left_open(tmp_path: Path) -> None:
    """The same attack on a hosted agent: its sandbox (bwrap) is started by `symbi serve`
    through libuv, and bwrap passes every descriptor it inherits into the sandbox."""
    secret = tmp_path / "supervisor-secret"
    secret.write_text("not for agents")
    cfg = write_config(
        tmp_path,
        """
        [agents.fds]
        command = "/usr/bin/python3"
        args = ["-c", "import os\\nfor f in os.listdir('/proc/self/fd'):\\n    try: print('fd', f, '->', os.readlink('/proc/self/fd/' + f))\\n    except OSError: pass\\nprint('fds-listed')"]
        sandbox = "bwrap"
        start = "with-gateway"
        restart = "never"
        """,
    )
    log = tmp_path / "data" / "agents" / "fds.log"
    fd = os.open(secret, os.O_RDONLY)
    try:
        os.set_inheritable(fd, True)
        with serve_process(cfg, pass_fds=(fd,)) as (_, proc):
            assert str(secret) in _targets_of(proc.pid)  # the gateway holds it: what is looked for exists
            deadline = time.monotonic() + 60  # the bound of the wait, not a timing assertion
            while not (log.exists() and "fds-listed" in log.read_text()):
                assert time.monotonic() < deadline, log.read_text() if log.exists() else "no agent log"
                time.sleep(0.2)
    finally:
        os.close(fd)
    listed = log.read_text()
    assert "fd 0 ->" in listed and str(secret) not in listed, listed
