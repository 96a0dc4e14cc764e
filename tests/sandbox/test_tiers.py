"""Attacks on every tier (bwrap, docker, gvisor): each property is tested by trying to break it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sandbox import Limits, SandboxManager, SandboxRequest

pytestmark = pytest.mark.sandbox

QUICK = Limits(memory_mb=128, cpus=1.0, pids=64, timeout_s=20, output_bytes=64 * 1024)


def run_py(manager: SandboxManager, tier: str, code: str, limits: Limits = QUICK, **kw):  # type: ignore[no-untyped-def]
    return manager.run(tier, SandboxRequest(code=code, **kw), limits)


class Listener:
    """A real TCP server on the host's 127.0.0.1 that records every accepted connection."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.srv.settimeout(0.1)
        self.port = self.srv.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except OSError:
                continue
            self.hits += 1
            conn.close()

    def settle(self) -> int:
        """Accept what is pending, then return the count."""
        time.sleep(0.3)
        return self.hits

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.srv.close()


@pytest.fixture
def host_listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def test_network_blocked(manager: SandboxManager, tier: str, host_listener: Listener) -> None:
    # the same probe from the host connects: it is the sandbox that blocks it
    with socket.create_connection(("127.0.0.1", host_listener.port), timeout=2):
        pass
    assert host_listener.settle() == 1
    port = host_listener.port
    code = f"""
import socket, json
res = {{}}
for host in ("127.0.0.1", "172.17.0.1", "10.0.2.2"):
    try:
        s = socket.create_connection((host, {port}), timeout=2)
        res[host] = "CONNECTED"
        s.close()
    except OSError as e:
        res[host] = type(e).__name__
print(json.dumps(res))
"""
    r = run_py(manager, tier, code)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert "CONNECTED" not in res.values(), res
    assert host_listener.settle() == 1  # nothing from the sandbox arrived


@pytest.fixture
def host_secrets() -> Iterator[list[Path]]:
    """Root-owned 0600 secrets: one in a private temp dir, one where the sandbox can *see*
    it (under the host /usr every tier binds read-only), so uid/permission checks are hit."""
    tmp = Path(tempfile.mkdtemp(prefix="symbi-secret-"))
    hidden = tmp / "audit-key.pem"
    visible_dir = Path(tempfile.mkdtemp(prefix="symbi-test-secret-", dir="/usr/local/share"))
    visible_dir.chmod(0o755)
    visible = visible_dir / "audit-key.pem"
    for p in (hidden, visible):
        p.write_text("TOPSECRET-KEY-MATERIAL\n")
        p.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(p, 0, 0)
    yield [hidden, visible]
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(visible_dir, ignore_errors=True)


def test_host_secrets_not_readable(manager: SandboxManager, tier: str, host_secrets: list[Path]) -> None:
    assert all(p.read_text().startswith("TOPSECRET") for p in host_secrets)  # readable on the host
    paths = [str(p) for p in host_secrets] + [f"/proc/1/root{p}" for p in host_secrets] + ["/etc/shadow"]
    code = f"""
import json
out = {{}}
for p in {paths!r}:
    try:
        out[p] = open(p).read()
    except OSError as e:
        out[p] = type(e).__name__
print(json.dumps(out))
"""
    r = run_py(manager, tier, code)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert not any("TOPSECRET" in v for v in res.values()), res
    assert res[str(host_secrets[1])] == "PermissionError"  # visible but 0600 root: uid check bites


def test_host_filesystem_not_writable(manager: SandboxManager, tier: str, tmp_path: Path) -> None:
    marker = tmp_path / "written-by-sandbox"
    targets = ["/etc/symbi-pwned", "/usr/symbi-pwned", "/symbi-pwned", str(marker), "/tmp/ok"]
    code = f"""
import json
out = {{}}
for p in {targets!r}:
    try:
        with open(p, "w") as f:
            f.write("x")
        out[p] = "WROTE"
    except OSError as e:
        out[p] = type(e).__name__
print(json.dumps(out))
"""
    r = run_py(manager, tier, code)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res.pop("/tmp/ok") == "WROTE"  # the private tmpfs is writable
    assert "WROTE" not in res.values(), res
    for p in ("/etc/symbi-pwned", "/usr/symbi-pwned", "/symbi-pwned"):
        assert not Path(p).exists()
    assert not marker.exists()


def test_unprivileged_identity(manager: SandboxManager, tier: str) -> None:
    code = """
import os
st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
print(os.getuid(), os.getgid(), int(st["CapEff"].strip(), 16), int(st.get("NoNewPrivs", "1").strip()))
"""
    r = run_py(manager, tier, code)
    assert r.exit_code == 0, r.stderr
    uid, gid, capeff, nnp = map(int, r.stdout.split())
    assert (uid, gid, capeff) == (65534, 65534, 0)
    assert nnp == 1


def test_fork_bomb_contained(manager: SandboxManager, tier: str) -> None:
    code = """
import os, time
n = 0
try:
    while n < 3000:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n, flush=True)
time.sleep(60)
"""
    limits = Limits(memory_mb=256, pids=64, timeout_s=4, output_bytes=4096)
    r = run_py(manager, tier, code, limits)
    # stopped one way or another: the pids cgroup (EAGAIN, then the time limit) or, on
    # gVisor, the whole sandbox dying of its memory/pids limit
    assert r.killed in ("timeout", "pids", "memory"), r
    if r.stdout.strip():
        cap = 64 if tier != "gvisor" else 512
        assert int(r.stdout.split()[0]) < cap
    assert manager.leftovers()[tier] == []


def test_memory_hog_killed(manager: SandboxManager, tier: str) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    r = run_py(manager, tier, code, Limits(memory_mb=96, pids=64, timeout_s=30))
    assert r.killed == "memory", r
    assert r.exit_code != 0


def test_infinite_loop_stopped(manager: SandboxManager, tier: str) -> None:
    r = run_py(manager, tier, "while True:\n    pass\n", Limits(timeout_s=2, pids=64))
    assert r.killed == "timeout"
    assert r.exit_code != 0
    assert manager.leftovers()[tier] == []


def test_output_flood_truncated(manager: SandboxManager, tier: str) -> None:
    code = "import sys\nwhile True:\n    sys.stdout.write('A' * 65536)\n"
    r = run_py(manager, tier, code, Limits(output_bytes=4096, timeout_s=20, pids=64))
    assert r.stdout_truncated and r.truncated
    assert r.stdout == b"A" * 4096
    assert r.killed == "output"


def test_exit_code_and_stderr(manager: SandboxManager, tier: str) -> None:
    code = "import sys\nprint('to-out')\nprint('to-err', file=sys.stderr)\nsys.exit(7)\n"
    r = run_py(manager, tier, code)
    assert r.exit_code == 7
    assert r.stdout == b"to-out\n"
    assert r.stderr == b"to-err\n"
    assert r.killed == "none" and not r.truncated
    assert r.tier == tier


def test_stdin_files_and_command(manager: SandboxManager, tier: str) -> None:
    r = manager.run(
        tier,
        SandboxRequest(
            command=("/bin/sh", "-c", "cat data/in.txt; tr a-z A-Z"),
            stdin=b"from stdin\n",
            files={"data/in.txt": b"from file\n"},
        ),
        QUICK,
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout == b"from file\nFROM STDIN\n"


LEFTOVER_RUNS = {"bwrap": 50, "docker": 10, "gvisor": 10}  # docker tiers cost 0.3-0.8 s a run


@pytest.mark.slow
def test_no_leftovers_after_many_runs(manager: SandboxManager, tier: str) -> None:
    before = manager.leftovers()[tier]
    for i in range(LEFTOVER_RUNS[tier]):
        r = run_py(manager, tier, f"print({i})")
        assert r.stdout == f"{i}\n".encode()
    assert manager.leftovers()[tier] == before == []
