"""Two real ``symbi serve`` replicas behind a real HAProxy, sharing a real Redis and PostgreSQL.

What a team running N replicas relies on: one rate limit across the replicas (exact), a
revocation or an approval made once is acted on by every replica, an API key made once
works on any replica, a handshake-era session keeps working through the balancer (the
balancer keeps it on the replica that made it; sent elsewhere it gets a clear 404),
each replica's /readyz names the shared backends, and a backend that goes down makes the
replicas refuse with ``state_unavailable`` (and /readyz 503) until it returns -- no restart.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.conftest import ROOT, SYMBI, initialize_request, symbi_env, upstream_writable, write_config
from tests.state.engines import HAProxy, enterable, replica, shared_chains
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MUTABLE = ROOT / "tests/peers/mutable_server.py"
LIMIT = 4


@dataclass
class Cluster:
    replicas: list[str]  # base URLs, straight to each replica
    balancer: str  # HAProxy's base URL
    key: str  # an API key (principal "tester"), stored once in PostgreSQL
    config: Path  # replica 0's config (the CLI uses it)
    configs: list[Path]
    procs: list[subprocess.Popen[bytes]]


def replica_toml(
    data_dir: Path, policy: Path, data: Path, redis: RedisEngine, pg: PgEngine, folder: Path
) -> str:
    """A replica's config on the shared Redis and PostgreSQL (also the policy-broadcast tests')."""
    return f"""
        [gateway]
        data_dir = "{data_dir}"
        [policy]
        path = "{policy}"
        data = "{data}"
        [mcp]
        recheck_interval_s = 30  # longer than any wait below: a change reaches the replicas by NOTIFY
        [sandbox]
        code_tools = false
        [context]
        enabled = false
        [bus]
        enabled = false
        [state]
        redis_url = "{redis.url}"
        postgres_url = "{pg.url}"
        timeout_s = 1
        probe_interval_s = 0.3
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "tofu"
        env = {{ RECORD_FILE = "{upstream_writable(folder) / "calls.jsonl"}" }}
        """


def _config(folder: Path, i: int, redis: RedisEngine, pg: PgEngine) -> Path:
    data = json.loads((ROOT / "tests/assets/policy/test-data.json").read_text())
    data["symbi_data"]["tool_rate_limits"] = {"mut__echo": LIMIT}
    (folder / "data.json").write_text(json.dumps(data))
    toml = replica_toml(folder / f"data-{i}", ROOT / "policies.rego", folder / "data.json", redis, pg, folder)
    return write_config(folder, toml, name=f"replica-{i}.toml")


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_engine: RedisEngine, postgres_engine: PgEngine
) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("cluster")
    enterable(folder)  # the upstream runs as the unprivileged upstream user in the config's folder
    configs = [_config(folder, i, redis_engine, postgres_engine) for i in range(2)]
    keys = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    key, _ = keys.create("tester", ("tester",))
    keys.close()
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(replica(c)) for c in configs]
        bases = [b for b, _ in started]
        haproxy = HAProxy(folder, [int(b.rsplit(":", 1)[1]) for b in bases])
        haproxy.start()
        stack.callback(haproxy.stop)
        yield Cluster(bases, haproxy.url, key, configs[0], configs, [p for _, p in started])


@contextlib.asynccontextmanager
async def session(base: str, key: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers={"x-api-key": key}, timeout=httpx2.Timeout(30)) as hc,
        streamable_http_client(base + "/mcp", http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        yield s


def _code(result: object) -> str | None:
    meta = getattr(result, "meta", None) or {}
    err = meta.get("symbi/error")
    return err["code"] if err else None


async def test_one_rate_limit_across_replicas(cluster: Cluster) -> None:
    outcomes = []
    for i in range(3 * LIMIT):  # alternate replicas, a fresh session each time
        async with session(cluster.replicas[i % 2], cluster.key) as s:
            outcomes.append(_code(await s.call_tool("mut__echo", {"message": f"m{i}"})))
    assert outcomes.count(None) == LIMIT
    assert outcomes[LIMIT:] == ["rate_limited"] * (2 * LIMIT)


def test_a_key_revoked_with_the_cli_is_refused_by_every_replica(
    cluster: Cluster, postgres_engine: PgEngine
) -> None:
    # each replica keeps the keys it has seen (gateway/state/keycache.py); `symbi keys revoke`
    # NOTIFYs them at commit, so the key is refused everywhere without a restart or a poll
    store = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    try:
        key, rec = store.create("revoked-soon", ("tester",))
    finally:
        store.close()
    headers = {"x-api-key": key, "accept": "application/json, text/event-stream"}

    init = initialize_request()

    def status(base: str) -> int:
        return httpx.post(base + "/mcp", json=init, headers=headers, timeout=30).status_code

    assert [status(b) for b in cluster.replicas * 2] == [200, 200, 200, 200]  # read, then cached
    _cli("keys", "revoke", "--config", str(cluster.config), rec.id)
    deadline = time.monotonic() + 20  # the bound of the wait, not an assertion on time
    while any(status(b) != 401 for b in cluster.replicas):
        assert time.monotonic() < deadline, "a revoked key still accepted"
        time.sleep(0.05)


async def test_a_session_through_the_balancer_stays_usable(cluster: Cluster) -> None:
    async with session(cluster.balancer, cluster.key) as s:
        for _ in range(4):  # round robin would send every other request to the other replica
            listing = await s.list_tools()
            assert "mut__echo" in {t.name for t in listing.tools}


def test_a_session_sent_to_another_replica_gets_a_clear_404(cluster: Cluster) -> None:
    headers = {"x-api-key": cluster.key, "accept": "application/json, text/event-stream"}
    init = initialize_request()
    r = httpx.post(cluster.replicas[0] + "/mcp", json=init, headers=headers, timeout=30)
    sid = r.headers["mcp-session-id"]
    other = httpx.post(
        cluster.replicas[1] + "/mcp",
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        headers={**headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"},
        timeout=30,
    )
    assert other.status_code == 404


def _cli(*args: str) -> None:
    subprocess.run([str(SYMBI), *args], check=True, env=symbi_env(), capture_output=True, timeout=60)


async def _wait_for(base: str, key: str, want: str | None) -> str | None:
    deadline = time.monotonic() + 10  # the bound of the wait, not an assertion on time
    got: str | None = "never called"
    while time.monotonic() < deadline:
        async with session(base, key) as s:
            got = _code(await s.call_tool("mut__read_path", {"path": "/tmp/x"}))
        if got == want:
            break
    return got


async def test_a_revocation_and_an_approval_reach_every_replica(cluster: Cluster) -> None:
    _cli("tools", "revoke", "--config", str(cluster.config), "mut__read_path")
    for base in cluster.replicas:
        assert await _wait_for(base, cluster.key, "verification_denied") == "verification_denied"
    listed = subprocess.run(
        [str(SYMBI), "tools", "list", "--json", "--config", str(cluster.config)],
        check=True,
        env=symbi_env(),
        capture_output=True,
        timeout=60,
    ).stdout
    h = next(t for t in json.loads(listed) if t["tool"] == "mut__read_path")["definition_hash"]
    _cli("tools", "approve", "--config", str(cluster.config), "mut__read_path", "--hash", h)
    for base in cluster.replicas:
        assert await _wait_for(base, cluster.key, None) is None


def test_every_replica_ships_its_audit_chain_to_postgres(cluster: Cluster) -> None:
    # the calls of the tests above are on record in both replicas' chains; each is copied to
    # PostgreSQL within a second or so, and `symbi audit verify --shared` checks each on its own
    r, chains = shared_chains(cluster.config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len({c["replica"] for c in chains}) == 2 and all(c["ok"] and c["events"] > 0 for c in chains)


def test_readyz_names_the_shared_backends(cluster: Cluster) -> None:
    for base in cluster.replicas:
        doc = httpx.get(base + "/readyz", timeout=10).json()
        assert doc["components"]["state:redis"] == "healthy"
        assert doc["components"]["state:postgres"] == "healthy"


def _why(cluster: Cluster, base: str) -> str:
    """For a failed readiness assertion: ``base``'s /readyz now and the tail of its serve log
    (``tests/server/_http.serve_process`` writes it), which says why a replica stopped."""
    try:
        ready = httpx.get(base + "/readyz", timeout=10).text
    except httpx.HTTPError as e:
        ready = repr(e)
    log = cluster.config.parent / f"serve-{base.rsplit(':', 1)[1]}.log"
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else f"{log}: missing"
    return f"/readyz: {ready}\n{log.name} (tail):\n{tail}"


def _ready_state(base: str, kind: str, want: str) -> tuple[int, str | None]:
    # the bound of the wait (an engine restart under load), not a timing assertion
    deadline = time.monotonic() + 60
    status, got = 0, None
    while time.monotonic() < deadline:
        r = httpx.get(base + "/readyz", timeout=10)
        status, got = r.status_code, r.json().get("components", {}).get(f"state:{kind}")
        if got == want and status == (200 if want == "healthy" else 503):
            break
        time.sleep(0.2)
    return status, got


async def test_redis_down_refuses_with_a_reason_and_recovers(
    cluster: Cluster, redis_engine: RedisEngine
) -> None:
    # last but one in the module: it stops the shared Redis (and starts it again on its port)
    base = cluster.replicas[1]
    redis_engine.stop()
    try:
        assert _ready_state(base, "redis", "unhealthy") == (503, "unhealthy"), _why(cluster, base)
        async with session(base, cluster.key) as s:
            assert _code(await s.call_tool("mut__echo", {"message": "down"})) == "state_unavailable"
    finally:
        redis_engine.start()
    assert _ready_state(base, "redis", "healthy") == (200, "healthy"), _why(cluster, base)
    async with session(base, cluster.key) as s:  # a fresh Redis: a fresh window
        assert _code(await s.call_tool("mut__echo", {"message": "back"})) is None


async def test_kill_9_of_a_replica_under_load(cluster: Cluster) -> None:
    # (before the PostgreSQL outage test) it kills replica 1. Clients keep working through the balancer, no
    # reply reaches the wrong caller, and the killed replica's audit chain still verifies.
    ok_before, ok_after, wrong, failed = [0], [0], [], []
    killed = anyio.Event()
    done = anyio.Event()

    async def worker(w: int) -> None:
        i = 0
        while not done.is_set():
            try:
                async with session(cluster.balancer, cluster.key) as s:
                    for _ in range(3):
                        path = f"/tmp/k-{w}-{i}"
                        i += 1
                        r = await s.call_tool("mut__read_path", {"path": path})
                        text = r.content[0].text if r.content else None  # type: ignore[union-attr]
                        if r.is_error or text != f"read {path}":
                            wrong.append((path, text))
                        else:
                            (ok_after if killed.is_set() else ok_before)[0] += 1
            except Exception as e:  # noqa: BLE001 - a session that lived on the killed replica ends
                failed.append(type(e).__name__)

    async with anyio.create_task_group() as tg:
        for w in range(3):
            tg.start_soon(worker, w)
        with anyio.fail_after(120):  # bounds of the waits, not assertions on time
            while ok_before[0] < 9:
                await anyio.sleep(0.05)
            cluster.procs[1].kill()  # SIGKILL
            cluster.procs[1].wait()
            killed.set()
            while ok_after[0] < 30:
                await anyio.sleep(0.05)
        done.set()
    assert wrong == []
    r = subprocess.run(
        [str(SYMBI), "audit", "verify", "--config", str(cluster.configs[1]), "--json"],
        env=symbi_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# last in the module: it stops the shared PostgreSQL (and the kill -9 test needs it up)
async def test_postgres_down_blocks_tools_and_keys_then_recovers(
    cluster: Cluster, postgres_engine: PgEngine
) -> None:
    base = cluster.replicas[0]
    # A handshake-era session held open through the outage: the revoked-key sweep reads its key
    # from PostgreSQL every second. That read used to raise out of the sweep and end the
    # replica's lifespan (state probes, audit writer): /readyz stayed 503 until a restart.
    async with session(base, cluster.key) as held:
        postgres_engine.stop()
        try:
            assert _ready_state(base, "postgres", "unhealthy") == (503, "unhealthy"), _why(cluster, base)
            async with httpx.AsyncClient(timeout=30) as c:
                r = await c.post(
                    base + "/mcp",
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"x-api-key": cluster.key, "accept": "application/json, text/event-stream"},
                )
            # the key cannot be checked
            assert r.status_code == 503 and r.json()["code"] == "state_unavailable"
            await anyio.sleep(2.5)  # (not a timing assertion) two sweeps of the held session in the outage
        finally:
            postgres_engine.start()
        assert _ready_state(base, "postgres", "healthy") == (200, "healthy"), _why(cluster, base)
        assert await _wait_for(base, cluster.key, None) is None  # tools admitted again once re-verified
        # the held session was kept (its key could not be checked, not found revoked) and works again
        assert "mut__echo" in {t.name for t in (await held.list_tools()).tools}
