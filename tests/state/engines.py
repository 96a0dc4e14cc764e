"""Real Redis, PostgreSQL and HAProxy (Debian packages) for the shared-state tests.

Each one is started by a fixture on 127.0.0.1, on a random port, with a folder of its own,
and stopped after (``reference/state-engines-on-this-machine.md``). PostgreSQL refuses to
run as root, so its binaries run as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config.model import Config
from gateway.server.workers import front_limits, haproxy_config
from tests.conftest import SYMBI, TEST_ROOT, free_port, port_owner, symbi_env, wait_port_owned
from tests.server._http import serve_process

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _owned_or_exited(proc: subprocess.Popen[bytes], port: int, timeout: float = 15.0) -> bool:
    """Whether ``proc`` came to listen on ``port`` (False: it exited, another process has it)."""
    deadline = time.monotonic() + timeout  # the bound of the wait, not a timing assertion
    while proc.poll() is None and time.monotonic() < deadline:
        if port_owner(proc.pid, port):
            return True
        time.sleep(0.05)
    return port_owner(proc.pid, port) is not False


def enterable(folder: Path) -> None:
    """Let other users (postgres, the upstream user) enter -- not list -- this session's
    temp folders down to ``folder`` (pytest makes them 0700)."""
    if os.geteuid() != 0:
        return
    for d in (*reversed(folder.parents), folder):
        if TEST_ROOT in d.parents:  # this session's own (only sessions make folders there)
            os.chmod(d, os.stat(d).st_mode | 0o111)


def _require(binary: str, package: str) -> None:
    if shutil.which(binary) is None and not Path(binary).exists():
        pytest.fail(f"{binary} is not installed (make state-engines installs the Debian package {package})")


@dataclass
class Redis:
    folder: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None  # requirepass: clients must give it
    host: str = "127.0.0.1"  # the address it binds ("::1": IPv6)
    unix_socket: bool = False  # on a unix socket in ``folder`` only (no TCP port)

    @property
    def socket_path(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.unix_socket:
            return f"unix://{auth}{self.socket_path}?db=0"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/0"

    def _args(self) -> list[str]:
        where = ["--port", "0", "--unixsocket", str(self.socket_path)] if self.unix_socket else []
        return [
            "redis-server",
            *(where or ["--port", str(self.port), "--bind", self.host]),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
            *(["--requirepass", self.password] if self.password else []),
        ]

    def start(self) -> None:
        _require("redis-server", "redis-server")
        if self.unix_socket:  # (its own folder: no other run's server on that path)
            self.socket_path.unlink(missing_ok=True)  # a killed server's: not taken as listening
            self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 15  # the bound of the wait, not a timing assertion
            while not self.socket_path.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()  # (not left running when it gives up)
                    raise RuntimeError(f"redis-server did not listen on {self.socket_path}")
                time.sleep(0.05)
            return
        given = self.port  # a restart keeps the port (clients reconnect to it)
        for _ in range(3):
            self.port = given or free_port()
            self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # its own port, not another run's redis-server answering there (ours then exits)
            if _owned_or_exited(self.proc, self.port) or given:
                wait_port_owned(self.proc.pid, self.port, "redis-server")
                return
        raise RuntimeError(
            f"redis-server exited three times: {self.host} cannot be bound or its ports were taken"
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@dataclass
class Postgres:
    folder: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"postgresql://symbi@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        _require(str(PG_BIN / "initdb"), "postgresql")
        self.port = self.port or free_port()
        enterable(self.folder)
        shutil.chown(self.folder, "postgres")
        if not (self.folder / "pg").exists():
            self._pg(str(PG_BIN / "initdb"), "-D", str(self.folder / "pg"), "-A", "trust", "-U", "symbi")
        self._pg(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.folder / "pg"),
            "-l",
            str(self.folder / "pg.log"),
            "-w",
            "start",
            "-o",
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off",
        )

    def stop(self, mode: str = "fast") -> None:
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "pg"), "-m", mode, "-w", "stop")


@dataclass
class HAProxy:
    folder: Path
    backends: list[int]
    port: int = 0
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        _require("haproxy", "haproxy")
        self.port = self.port or free_port()
        cfg = self.folder / "haproxy.cfg"
        # the front `symbi serve --workers` runs (round robin, a handshake-era session kept on
        # the replica that made it by Mcp-Session-Id), as the shipped deploy/haproxy.cfg
        cfg.write_text(
            haproxy_config(
                "127.0.0.1",
                self.port,
                self.backends,
                limits=front_limits(Config()),
                drop_to=None,
            )
        )
        pidfile = self.folder / "haproxy.pid"
        subprocess.run(["haproxy", "-f", str(cfg), "-D", "-p", str(pidfile)], check=True, timeout=30)
        self.pid = int(pidfile.read_text().split()[0])
        wait_port_owned(self.pid, self.port, "haproxy")

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, 15)
            except ProcessLookupError:
                pass
            self.pid = None


def haproxy_limits(text: str) -> dict[str, float]:
    """An HAProxy config's timeouts (by name) and its stick table's ``expire``, in seconds, its
    ``tune.bufsize`` (bytes; HAProxy's 16384 when not set) and its global ``maxconn``."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

    def seconds(v: str) -> float:
        num = v.rstrip("dhms")
        return float(num) * units[v[len(num) :] or "ms"]  # HAProxy's unit is ms when none is given

    out = {"tune.bufsize": 16384.0}
    for words in (line.split() for line in text.splitlines()):
        if words[:1] in (["tune.bufsize"], ["maxconn"]):
            out[words[0]] = float(words[1])
        elif words[:1] == ["timeout"]:
            out[words[1]] = seconds(words[2])
        elif words[:1] == ["stick-table"]:
            out["expire"] = seconds(words[words.index("expire") + 1])
    return out


@contextlib.contextmanager
def replica(config: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``symbi serve`` (as tests/server/_http.serve) with its process, for the kill -9 test."""
    with serve_process(config) as served:
        yield served


def shared_chains(
    config: Path, replicas: int = 2, mine: Callable[[dict[str, Any]], bool] = lambda chain: True
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """``symbi audit verify --config config --shared --json`` once it reports ``replicas``
    chains that are ``mine`` and exits 0 (each replica copies its chain to PostgreSQL within a
    second or so; other tests' replicas may share the database), or its last answer after 30 s:
    the run and the chains it reported."""
    deadline = time.monotonic() + 30  # the bound of the wait (shipping), not a timing assertion
    while True:
        r = subprocess.run(
            [str(SYMBI), "audit", "verify", "--config", str(config), "--shared", "--json"],
            env=symbi_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        chains = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        if (r.returncode == 0 and sum(map(mine, chains)) == replicas) or time.monotonic() > deadline:
            return r, chains
        time.sleep(0.5)
