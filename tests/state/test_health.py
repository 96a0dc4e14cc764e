"""Who can reach the shared state (gateway/state/health.py ``lets_anyone_in``, gateway/state
``warn_open_backends``): a server that admits a client giving no password is warned of at
every start; one that asks for a password is not, and the gateway authenticates to it.

Attack: an unsandboxed upstream runs as symbi-upstream with the network its uid has. Against
a Redis without ``requirepass`` (Redis's default, and how deploy/compose.yaml ran it) it can
empty the gateway's rate-limit windows; against one with a password it cannot."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.config.load import build_config
from gateway.policy.counters import CallCounters
from gateway.state import RedisRateLimiter, warn_open_backends
from gateway.state.health import lets_anyone_in, safe_url
from tests.conftest import free_port
from tests.state.engines import Postgres, Redis

pytestmark = pytest.mark.anyio
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running as the upstream user needs root")


def _as_upstream_user(*argv: str) -> str:
    """``argv`` run as the upstream user (as an unsandboxed upstream would), its output."""
    r = subprocess.run(
        ["setpriv", "--reuid=symbi-upstream", "--regid=symbi-upstream", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return r.stdout + r.stderr


def test_open_servers_are_warned_of_by_url_with_the_password_hidden(
    redis_engine: Redis, postgres_engine: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    config = build_config({"state": {"redis_url": redis_engine.url, "postgres_url": postgres_engine.url}})
    assert lets_anyone_in(redis_engine.url, 2.0) and lets_anyone_in(postgres_engine.url, 2.0)  # trust auth
    with caplog.at_level("WARNING", logger="symbi.state"):
        warned = warn_open_backends(config)
    # the bus defaults to the state's Redis: one server, one warning
    assert warned == [safe_url(redis_engine.url), safe_url(postgres_engine.url)]
    assert len(caplog.records) == 2
    assert not lets_anyone_in(f"redis://127.0.0.1:{free_port()}/0", 0.5)  # down: the probes say so


@needs_root
async def test_a_redis_with_a_password_is_not_warned_of_and_keeps_the_upstream_user_out(
    redis_engine: Redis, tmp_path: Path
) -> None:
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is not installed (make state-engines)")
    # the open one: the upstream user empties it
    assert "OK" in _as_upstream_user("redis-cli", "-p", str(redis_engine.port), "FLUSHALL")
    locked = Redis(tmp_path, password=secrets.token_urlsafe(16))
    locked.start()
    limiter = RedisRateLimiter(locked.url, CallCounters(), timeout_s=2.0)
    try:
        assert not lets_anyone_in(locked.url, 2.0)
        assert warn_open_backends(build_config({"state": {"redis_url": locked.url}})) == []
        assert await limiter.acquire("alice", "t__x", 1)  # the gateway gives the URL's password
        assert not await limiter.acquire("alice", "t__x", 1)  # and the window is kept there
        assert "NOAUTH" in _as_upstream_user("redis-cli", "-p", str(locked.port), "FLUSHALL")
        assert not await limiter.acquire("alice", "t__x", 1)  # nothing was emptied
    finally:
        await limiter.aclose()
        locked.stop()


async def test_a_probe_says_what_is_down_to_callers_and_where_to_the_operator() -> None:
    """What a refused caller reads (``what``) never says where the server is; the admin
    status does (``at``, its password hidden)."""
    from gateway.state.health import Probe

    async def ping() -> None:
        return None

    url = "redis://symbi:s3cret@10.0.0.7:6380/2"
    probe = Probe("redis", "rate limits and call counts (Redis)", ping, where=safe_url(url))
    probe.failed(ConnectionError("Error 111 connecting to 10.0.0.7:6380"))
    doc = probe.status()
    assert "10.0.0.7" not in probe.what and doc["at"] == "redis://symbi:***@10.0.0.7:6380/2"
    assert doc["up"] is False


def test_an_ipv6_redis_url_is_checked_not_a_crash_at_start(tmp_path: Path) -> None:
    # the bare URL dropped the brackets (redis://::1:port): redis-py raised ValueError, which
    # ended the gateway's start. A real redis-server without a password on [::1].
    server = Redis(tmp_path, host="::1")
    server.start()  # fails the test at once when redis-server cannot listen on [::1]
    try:
        url = f"redis://:secret@[::1]:{server.port}/0"  # the URL's password is not what is checked
        assert server.url == f"redis://[::1]:{server.port}/0"
        assert safe_url(url) == f"redis://:***@[::1]:{server.port}/0"  # as shown in the warning
        assert lets_anyone_in(url, 1.0), "an open Redis on [::1] was not seen as open"
    finally:
        server.stop()
    assert not lets_anyone_in(url, 0.5)  # down: the probes say so


def test_a_password_in_the_query_or_a_unix_url_is_hidden_too() -> None:
    # redis-py and libpq take a password from the query as from the netloc: it was shown as is
    assert safe_url("redis://127.0.0.1:6379/0?password=s3cret&db=1") == (
        "redis://127.0.0.1:6379/0?password=***&db=1"
    )
    assert safe_url("postgresql://u@h/db?sslpassword=k3y") == "postgresql://u@h/db?sslpassword=***"
    assert (
        safe_url("rediss://h:6380/0?ssl_password=k3y") == "rediss://h:6380/0?ssl_password=***"
    )  # redis-py's
    assert safe_url("unix://:s3cret@/tmp/redis.sock?db=0") == "unix://:***@/tmp/redis.sock?db=0"
    assert safe_url("redis://127.0.0.1:6379/0?db=1") == "redis://127.0.0.1:6379/0?db=1"
