"""``symbi serve --workers 2``: real worker processes behind a real HAProxy (the supervisor's
child), on a real Redis and PostgreSQL.

What N workers must keep from one process: a session made through the front stays on the
worker that made it and every reply answers its own call, one rate limit holds across the
workers together, every worker's audit chain verifies (``symbi audit verify --shared``), a
config whose state would split is refused (exit 2), and stopping -- SIGTERM to the
supervisor, or a worker that dies -- leaves no process behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.config.model import Config
from gateway.errors import ConfigError
from gateway.server.workers import (
    FRONT_MARGIN_S,
    PING_S,
    check_front_fits,
    check_shared_state,
    front_limits,
    haproxy_config,
    longest_call_s,
    worker_data_dir,
)
from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.conftest import ROOT, free_port, upstream_writable, write_config
from tests.server._http import serve_process, trickle_until_closed
from tests.state.conftest import postgres_engine, redis_engine  # noqa: F401 - the engines' fixtures
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine
from tests.state.engines import enterable, haproxy_limits, shared_chains
from tests.state.test_replicas import _code, replica_toml, session
from tests.upstream.test_runas import assert_the_thief_got_nothing

pytestmark = [pytest.mark.anyio]
LIMIT = 4
THIEF = ROOT / "tests/peers/thief_server.py"
SECRET = base64.b64encode(bytes(range(32))).decode()


@dataclass
class Front:
    base: str  # HAProxy, the one address clients use
    key: str  # an API key (principal "tester"), stored once in PostgreSQL
    config: Path
    proc: subprocess.Popen[bytes]  # the supervisor
    record: Path  # the test upstream's calls, each with its process id


def _config(
    folder: Path, redis: RedisEngine, pg: PgEngine, *, http: str = "", mcp: str = "", more: str = ""
) -> Path:
    """A replica's config (tests/state/test_replicas.py) with the bus secret the workers share
    (``http`` and ``mcp``: more lines for those tables; ``more``: more tables), in ``folder``
    made enterable (the upstream runs as the unprivileged upstream user in the config's folder)."""
    enterable(folder)
    data = json.loads((ROOT / "tests/assets/policy/test-data.json").read_text())
    data["symbi_data"]["tool_rate_limits"] = {"mut__echo": LIMIT}
    (folder / "data.json").write_text(json.dumps(data))
    toml = replica_toml(folder / "data", ROOT / "policies.rego", folder / "data.json", redis, pg, folder)
    # and an upstream that goes after worker 1's keys and log (whichever worker launched it)
    toml += f"""
        [servers.thief]
        command = "{sys.executable}"
        args = ["{THIEF}"]
        verification = "warn"
        env = {{ SYMBI_TEST_DATA_DIR = "{worker_data_dir(folder / "data", 1)}", SYMBI_TEST_CONFIG = "{folder / "symbi.toml"}", PYTHONPATH = "{ROOT}" }}
        """
    toml += "\n[http]\nheader_timeout_s = 1.0\n" + http + more  # 1 s: the slowloris test through the front
    path = write_config(folder, toml.replace("[mcp]\n", "[mcp]\n" + mcp, 1))
    # replica_toml has its own [bus] table (enabled = false): the secret goes in it
    path.write_text(path.read_text().replace("[bus]\n", f'[bus]\nsecret = "{SECRET}"\n', 1))
    path.chmod(0o600)  # it names servers' env: kept private, as the README says
    return path


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: children of children too)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p}
        todo += list(kids - found)
        found |= kids
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.add(p)
    return alive


def _left_alive(pids: set[int], *, bound_s: float) -> set[int]:
    """Which of ``pids`` still run once they all stopped or ``bound_s`` passed (the bound of the
    wait for the children's graceful stop and the kernel's reaping, not a timing assertion)."""
    deadline = time.monotonic() + bound_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _worker_ports(config: Path) -> list[int]:
    cfg = (load_config(config, {}).data_dir / "haproxy.cfg").read_text()
    return [int(line.rsplit(":", 1)[1].split()[0]) for line in cfg.splitlines() if "server worker-" in line]


@contextlib.contextmanager
def supervisor(config: Path, n: int = 2) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with serve_process(config, "--workers", str(n), log_name="workers", ready_s=180, stop_s=60) as served:
        yield served


def _api_key(pg: PgEngine) -> str:
    keys = PgApiKeyStore(Postgres(pg.url, timeout_s=2).open(), owns=True)
    key, _ = keys.create("tester", ("tester",))
    keys.close()
    return key


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory,
    redis_engine: RedisEngine,  # noqa: F811 - the imported fixture
    postgres_engine: PgEngine,  # noqa: F811
) -> Iterator[Front]:
    folder = tmp_path_factory.mktemp("workers")
    config = _config(folder, redis_engine, postgres_engine)
    key = _api_key(postgres_engine)
    with supervisor(config) as (base, proc):
        yield Front(base, key, config, proc, upstream_writable(folder) / "calls.jsonl")


@pytest.fixture
def own_config(
    tmp_path: Path,
    redis_engine: RedisEngine,  # noqa: F811
    postgres_engine: PgEngine,  # noqa: F811
) -> Path:
    """The module front's config, for a test's own supervisor (one it ends)."""
    return _config(tmp_path, redis_engine, postgres_engine)


# -- refusals: before anything starts -------------------------------------------------------


def _plain(tmp_path: Path, body: str) -> Path:
    return write_config(tmp_path, f"[sandbox]\ncode_tools = false\n[context]\nenabled = false\n{body}")


STATE = '[state]\nredis_url = "redis://127.0.0.1:1/0"\npostgres_url = "postgresql://x@127.0.0.1:1/x"\n'


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("", "redis_url"),
        ('[state]\nredis_url = "redis://127.0.0.1:1/0"\n', "postgres_url"),
        (STATE, r"\[bus\] secret"),
        (STATE + f'[bus]\nsecret = "{SECRET}"\n[audit]\npath = "/tmp/one-chain.db"\n', "audit.path"),
        (STATE + f'[bus]\nsecret = "{SECRET}"\n[audit]\nkey_path = "/tmp/one-key.pem"\n', "audit.key_path"),
        (
            STATE + f'[bus]\nsecret = "{SECRET}"\n[audit]\ncheckpoint_export = "/tmp/one-export.jsonl"\n',
            "audit.checkpoint_export",
        ),
        # each worker would keep its own discovered.json: an approval (the CLI's, or the admin
        # API's through the front) would reach one worker or none
        (STATE + f'[bus]\nsecret = "{SECRET}"\n[mcp]\ndiscovery_enabled = true\n', "mcp.discovery_enabled"),
    ],
)
def test_state_that_would_split_is_refused(tmp_path: Path, body: str, key: str) -> None:
    config = _plain(tmp_path, body)
    with pytest.raises(ConfigError, match=key):
        check_shared_state(load_config(config, {}))
    assert main(["serve", "--config", str(config), "--workers", "2", "--port", str(free_port())]) == 2
    assert not worker_data_dir(tmp_path / "data", 0).exists()  # nothing started


def test_shared_state_is_accepted(tmp_path: Path) -> None:
    check_shared_state(load_config(_plain(tmp_path, STATE + f'[bus]\nsecret = "{SECRET}"\n'), {}))


def test_no_haproxy_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no haproxy on it
    config = _plain(tmp_path, STATE + f'[bus]\nsecret = "{SECRET}"\n')
    assert main(["serve", "--config", str(config), "--workers", "2", "--port", str(free_port())]) == 2
    assert not worker_data_dir(tmp_path / "data", 0).exists()


@pytest.mark.parametrize("n", ["0", "-1", "two", "1.5"])
def test_a_worker_count_below_one_or_not_whole_is_a_usage_error(n: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--workers", n])
    assert exit_.value.code == 2


def test_the_front_keeps_a_session_on_the_worker_that_made_it() -> None:
    limits = front_limits(Config())
    cfg = haproxy_config("127.0.0.1", 8080, [4001, 4002], limits=limits, drop_to=None)
    assert "stick match req.hdr(mcp-session-id)" in cfg
    assert "stick store-response res.hdr(mcp-session-id)" in cfg
    assert "bind 127.0.0.1:8080" in cfg and "127.0.0.1:4001" in cfg and "127.0.0.1:4002" in cfg
    assert "bind ipv6@::1:8080" in haproxy_config("::1", 8080, [1], limits=limits, drop_to=None)
    assert "uid" not in cfg and "    uid 65534\n    gid 65534\n" in haproxy_config(
        "127.0.0.1", 1, [2], limits=limits, drop_to=(65534, 65534)
    )


@pytest.mark.parametrize(
    ("body", "longest"),
    [
        ("", 300.0),  # resources.execution_timeout_s bounds every call by default
        ("[mcp]\ncall_timeout_s = 900\n", 900.0),
        ('[servers.s]\ncommand = "x"\ntimeout_s = 1200\n', 1200.0),
        ("[runtime.resources]\nexecution_timeout_s = 2000\n", 2000.0),
    ],
)
def test_the_fronts_limits_cover_the_longest_call_and_an_idle_session(
    tmp_path: Path, body: str, longest: float
) -> None:
    cfg = load_config(_plain(tmp_path, body + "[http]\nsession_idle_timeout_s = 7200\n"), {})
    assert longest_call_s(cfg) == longest
    limits = front_limits(cfg)
    assert limits.silence_s == longest + FRONT_MARGIN_S >= 2 * PING_S  # a pinged stream is never cut
    assert limits.stick_s == 7200 + limits.silence_s


@pytest.mark.parametrize(
    ("body", "per_worker"),
    [
        ("", 1024 + 1000),  # mcp.max_concurrent_connections + http.max_sessions
        ("[mcp]\nmax_concurrent_connections = 10\n[http]\nmax_sessions = 5\n", 15),
        ("[mcp]\nmax_concurrent_connections = 50000\n", 50000 + 1000),
    ],
)
def test_the_front_admits_no_more_connections_than_the_workers_together(
    tmp_path: Path, body: str, per_worker: int
) -> None:
    """HAProxy's maxconn was 4096 whatever the workers took: past what they serve together it
    admitted connections only to have them refused (503) by a worker, and under the 4,096
    workers configured for more were held below their own limits. Now each worker's open MCP
    requests and GET streams, times the workers."""
    limits = front_limits(load_config(_plain(tmp_path, body), {}))
    assert limits.worker_connections == per_worker
    for n in (1, 2, 3):
        made = haproxy_config("127.0.0.1", 8080, list(range(4001, 4001 + n)), limits=limits, drop_to=None)
        assert haproxy_limits(made)["maxconn"] == n * per_worker


def test_a_front_that_could_not_open_its_connections_is_refused_at_start(tmp_path: Path) -> None:
    """HAProxy holds two descriptors a connection it admits: past the open-file limit it refused
    to start, after every worker had. Now refused before anything starts, naming the keys."""
    body = STATE + f'[bus]\nsecret = "{SECRET}"\n[mcp]\nmax_concurrent_connections = 1000000000\n'
    config = _plain(tmp_path, body)
    with pytest.raises(ConfigError, match="mcp.max_concurrent_connections"):
        check_front_fits(load_config(config, {}), 2)
    assert main(["serve", "--config", str(config), "--workers", "2", "--port", str(free_port())]) == 2
    assert not worker_data_dir(tmp_path / "data", 0).exists()  # nothing started
    check_front_fits(load_config(_plain(tmp_path, STATE), {}), 2)  # the defaults fit


def _front_limits(config: Path) -> dict[str, float]:
    """The front's timeouts and stick expiry in seconds, from the haproxy.cfg HAProxy runs."""
    return haproxy_limits((load_config(config, {}).data_dir / "haproxy.cfg").read_text())


@pytest.mark.slow
def test_the_fronts_limits_follow_the_gateways(
    tmp_path: Path,
    redis_engine: RedisEngine,  # noqa: F811
    postgres_engine: PgEngine,  # noqa: F811
) -> None:
    """The front must not cut what the workers allow: with JSON answers a call is silent until
    it ends (up to 900 s here), and a session the workers keep (idle up to 2 h here, counted from
    the end of its last request) must stay stuck to its worker. HAProxy's inactivity timeouts
    and stick expiry were fixed at 300 s and 30 min whatever the config said (a 300 s wait is no
    test: the numbers HAProxy runs with are read back instead; the short-limit test below shows
    what they do)."""
    config = _config(
        tmp_path,
        redis_engine,
        postgres_engine,
        http="json_response = true\nsession_idle_timeout_s = 7200\n",
        mcp="call_timeout_s = 900\n",
        more="[runtime.resources]\nexecution_timeout_s = 900\n",
    )
    with supervisor(config):
        limits = _front_limits(config)
    assert limits["server"] > 900 and limits["client"] > 900
    assert limits["expire"] >= 7200 + limits["server"]  # the idle count starts when a call ends
    assert limits["http-request"] == 1.0  # http.header_timeout_s, as before


@pytest.mark.slow
async def test_a_session_after_a_long_call_and_a_pause_still_reaches_its_worker(
    tmp_path: Path,
    redis_engine: RedisEngine,  # noqa: F811
    postgres_engine: PgEngine,  # noqa: F811
) -> None:
    """With short limits (sessions idle 2 s, calls 3 s): HAProxy refreshes a session's stick entry
    when a request starts, the gateway starts its idle count when the request ends. A call of
    2.5 s then 1.5 s of quiet is a session the worker keeps, 4 s after the entry's refresh: an
    expiry of just the idle timeout would send the next call round robin (tried: the SDK client
    raised MCPError "Session not found"). Sent to the other worker (directly here), the session
    is unknown there: 404, and the client must initialize again."""
    config = _config(
        tmp_path,
        redis_engine,
        postgres_engine,
        http="session_idle_timeout_s = 2\n",
        mcp="call_timeout_s = 3\n",
        more="[runtime.resources]\nexecution_timeout_s = 3\n",
    )
    key = _api_key(postgres_engine)
    record = upstream_writable(tmp_path) / "calls.jsonl"

    async def one(base: str, n: int) -> None:
        async with session(base, key) as s:
            r = await s.call_tool("mut__slow", {"seconds": 2.5 + n / 100})  # the call's mark in the record
            assert not r.is_error, r
            await anyio.sleep(1.5)
            r = await s.call_tool("mut__read_path", {"path": f"/tmp/after-{n}"})
            assert not r.is_error, r

    with supervisor(config) as (base, _):
        # four fresh sessions side by side (each its own long call and pause): round robin puts
        # their initialize requests, the only ones not stuck to a worker, on both workers
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(one, base, n)
        docs = [json.loads(line) for line in record.read_text().splitlines()]
        slow = {round((d["arguments"]["seconds"] - 2.5) * 100): d["pid"] for d in docs if d["tool"] == "slow"}
        after = _calls(record)
        assert [after[f"/tmp/after-{n}"] for n in range(4)] == [slow[n] for n in range(4)]  # the same worker
        assert len(set(slow.values())) == 2
        assert sorted(_elsewhere(base, key, _worker_ports(config))) == [200, 404]


def _elsewhere(base: str, key: str, workers: list[int]) -> list[int]:
    """A session made through the front, then a request of it sent to each worker directly:
    the status each answers (the one that made it 200, the other 404: it never heard of it)."""
    headers = {"x-api-key": key, "accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    with httpx.Client(timeout=10) as c:
        r = c.post(base + "/mcp", json=init, headers=headers)
        sid = r.headers["mcp-session-id"]
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        headers |= {"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        return [c.post(f"http://127.0.0.1:{p}/mcp", json=ping, headers=headers).status_code for p in workers]


# -- two workers behind the front -----------------------------------------------------------


def _calls(record: Path) -> dict[str, int]:
    """path -> the process id of the upstream (one per worker) that served that call."""
    out = {}
    for line in record.read_text().splitlines():
        doc = json.loads(line)
        if doc["tool"] == "read_path":
            out[doc["arguments"]["path"]] = doc["pid"]
    return out


@pytest.mark.slow
async def test_sessions_stay_on_their_worker_and_every_reply_matches_its_call(front: Front) -> None:
    wrong: list[tuple[str, str | None]] = []
    paths: dict[int, list[str]] = {}

    async def client(s_no: int) -> None:
        async with session(front.base, front.key) as s:
            for i in range(6):
                path = f"/tmp/w-{s_no}-{i}"
                paths.setdefault(s_no, []).append(path)
                r = await s.call_tool("mut__read_path", {"path": path})
                text = r.content[0].text if r.content else None  # type: ignore[union-attr]
                if r.is_error or text != f"read {path}":
                    wrong.append((path, text))

    async with anyio.create_task_group() as tg:
        for s_no in range(6):
            tg.start_soon(client, s_no)
    assert wrong == []
    served = _calls(front.record)
    per_session = [{served[p] for p in ps} for ps in paths.values()]
    assert all(len(pids) == 1 for pids in per_session)  # each session on one worker's upstream
    assert len(set().union(*per_session)) == 2  # and the sessions over both workers


@pytest.mark.slow
async def test_one_rate_limit_across_the_workers(front: Front) -> None:
    outcomes = []
    for i in range(3 * LIMIT):  # a fresh session each time: round robin over the workers
        async with session(front.base, front.key) as s:
            outcomes.append(_code(await s.call_tool("mut__echo", {"message": f"m{i}"})))
    assert outcomes.count(None) == LIMIT
    assert outcomes[LIMIT:] == ["rate_limited"] * (2 * LIMIT)
    served = {json.loads(line)["pid"] for line in front.record.read_text().splitlines() if '"echo"' in line}
    assert len(served) == 2  # both workers admitted some of the LIMIT


@pytest.mark.slow
def test_every_workers_audit_chain_verifies_shared(front: Front) -> None:
    data = load_config(front.config, {}).data_dir

    def ours(chain: dict[str, Any]) -> bool:  # the replica is host:path of its audit log
        return f":{data}/" in chain["replica"]

    # the module's other supervisors (same PostgreSQL) keep chains there too: this front's two
    r, chains = shared_chains(front.config, mine=ours)
    assert r.returncode == 0, r.stdout + r.stderr
    mine = [c for c in chains if ours(c)]
    assert len({c["replica"] for c in mine}) == 2 and all(c["ok"] and c["events"] > 0 for c in mine)
    for i in range(2):  # each worker's own chain, in its own private folder
        assert (worker_data_dir(data, i) / "audit.db").exists()
        assert os.stat(worker_data_dir(data, i)).st_mode & 0o077 == 0
    assert os.stat(data).st_mode & 0o077 == 0


@pytest.mark.slow
def test_headers_trickled_to_the_front_are_cut_off(front: Front) -> None:
    """Attack (slowloris) on HAProxy, which holds a request until its headers are complete: the
    front applies the workers' http.header_timeout_s (1 s here), not its client timeout."""
    s = socket.create_connection(("127.0.0.1", int(front.base.rsplit(":", 1)[1])), timeout=5)
    closed = trickle_until_closed(s, closing=(b"HTTP/1.1 408",))
    s.close()
    assert closed  # within the ~18 s of trickling, not the front's client timeout (330 s by default)


@pytest.mark.slow
def test_headers_a_worker_accepts_pass_the_front(front: Front) -> None:
    """Request headers up to http.max_header_bytes (64 KiB by default: a large JWT, many
    cookies) reach a worker through the front as they reach one process; HAProxy's own buffer
    (16 KiB by default) answered 400 past about 16 KB."""
    pad = {"x-pad": "a" * 40_000}
    worker = f"http://127.0.0.1:{_worker_ports(front.config)[0]}"
    with httpx.Client(timeout=10) as c:
        assert c.get(worker + "/healthz", headers=pad).status_code == 200
        assert c.get(front.base + "/healthz", headers=pad).status_code == 200  # 400 before


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs a root gateway")
async def test_an_upstream_of_either_worker_cannot_reach_a_workers_keys_or_log(front: Front) -> None:
    for _ in range(4):  # fresh sessions: round robin puts them on both workers
        async with session(front.base, front.key) as s:
            r = await s.call_tool("thief__steal", {})
        assert not r.is_error, r
        report = json.loads(r.content[0].text)  # type: ignore[union-attr]
        assert_the_thief_got_nothing(report)


@pytest.mark.slow
def test_a_killed_worker_stops_everything(front: Front) -> None:
    # last in the module: it ends the front
    everyone = _descendants(front.proc.pid)
    ports = _worker_ports(front.config)
    worker = next(
        p
        for p in everyone
        if f"--port\0{ports[1]}\0".encode() in Path(f"/proc/{p}/cmdline").read_bytes()
        and b"gateway\0serve" in Path(f"/proc/{p}/cmdline").read_bytes()
    )
    os.kill(worker, signal.SIGKILL)
    assert front.proc.wait(60) != 0
    assert _left_alive(everyone, bound_s=30) == set()


@pytest.mark.slow
def test_a_supervisor_killed_by_sigkill_leaves_no_process(own_config: Path) -> None:
    # it cannot stop anything itself: each child was started to get SIGTERM when it dies
    with supervisor(own_config) as (_, proc):
        everyone = _descendants(proc.pid)
        proc.kill()
        proc.wait(60)
    assert _left_alive(everyone, bound_s=60) == set()


@pytest.mark.slow
def test_sigterm_to_the_supervisor_leaves_no_process(own_config: Path) -> None:
    with supervisor(own_config) as (_, proc):
        everyone = _descendants(proc.pid)
        assert len(everyone) >= 3  # two workers and HAProxy (and the workers' upstreams)
        haproxy = {p for p in everyone if Path(f"/proc/{p}/comm").read_text().strip() == "haproxy"}
        [front] = [p for p in haproxy if int(_status(p)["PPid"]) in haproxy]  # the one serving
        if os.geteuid() == 0:  # HAProxy needs no privilege once it has bound the port
            ids = {k: v.split() for k, v in _status(front).items() if k in ("Uid", "Gid")}
            assert "0" not in ids["Uid"] + ids["Gid"], ids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert _left_alive(everyone, bound_s=30) == set()
