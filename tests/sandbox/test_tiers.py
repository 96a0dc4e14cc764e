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
from gateway.sandbox.docker_tier import docker_client
from tests.sandbox.conftest import own_leftovers, require_tier

pytestmark = pytest.mark.sandbox

QUICK = Limits(memory_mb=128, cpus=1.0, pids=64, timeout_s=20, output_bytes=64 * 1024)


def run_py(manager: SandboxManager, tier: str, code: str, limits: Limits = QUICK, **kw):  # type: ignore[no-untyped-def]
    return manager.run(tier, SandboxRequest(code=code, **kw), limits)


class Listener:
    """A real TCP server on every host interface (0.0.0.0) that records accepted connections.

    Bound to all interfaces, not 127.0.0.1: inside a container 127.0.0.1 is the container's
    own loopback, so a probe of the host's loopback alone is refused with or without a
    network. What a sandbox could really reach is the host's address on the Docker bridge.
    """

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("0.0.0.0", 0))  # every host interface: what a leaky sandbox could reach
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


def host_targets() -> list[str]:
    """This machine's addresses a sandbox could dial: loopback and the Docker bridge's
    gateway address (the host as seen from a bridged container). Only local addresses."""
    targets = ["127.0.0.1"]
    try:
        bridge = docker_client().networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    except Exception:  # noqa: BLE001 - no docker: the bridge address is the default one
        bridge = "172.17.0.1"
    targets.append(bridge)
    return targets


PROBE = """
import socket, json
res = {{}}
for host in {targets!r}:
    try:
        s = socket.create_connection((host, {port}), timeout=2)
        res[host] = "CONNECTED"
        s.close()
    except OSError as e:
        res[host] = type(e).__name__
print(json.dumps(res))
"""


def test_network_blocked(manager: SandboxManager, tier: str, host_listener: Listener) -> None:
    targets = host_targets()
    # the same probes from the host connect: it is the sandbox that blocks them
    for host in targets:
        with socket.create_connection((host, host_listener.port), timeout=2):
            pass
    assert host_listener.settle() == len(targets)
    r = run_py(manager, tier, PROBE.format(targets=targets, port=host_listener.port))
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) == set(targets)
    assert "CONNECTED" not in res.values(), res
    assert host_listener.settle() == len(targets)  # nothing from the sandbox arrived


IFACES = """
import json
with open("/proc/net/dev") as f:
    print(json.dumps(sorted(line.split(":")[0].strip() for line in f.readlines()[2:])))
"""


def test_the_sandbox_sees_no_network_interface_but_its_own_loopback(
    manager: SandboxManager, tier: str
) -> None:
    """The network namespace on its own, without a socket (bwrap's seccomp filter also refuses
    INET sockets, which hid a shared namespace from the probes above: found by mutation testing)."""
    r = run_py(manager, tier, IFACES)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) in ([], ["lo"]), r.stdout


def test_network_probe_detects_a_bridged_container(manager: SandboxManager, host_listener: Listener) -> None:
    """The probe above can fail: the same probe in a container on Docker's default bridge
    (what `network_mode = "bridge"` would give the docker tier) reaches the host listener."""
    require_tier(manager, "docker")
    targets = host_targets()
    out = docker_client().containers.run(
        manager.config.sandbox.image,
        ["/usr/bin/python3", "-c", PROBE.format(targets=targets, port=host_listener.port)],
        network_mode="bridge",
        remove=True,
        user="65534:65534",
        volumes={"/usr": {"bind": "/usr", "mode": "ro"}},
    )
    res = json.loads(out)
    assert res[targets[1]] == "CONNECTED", res  # the bridge gateway is the host
    assert res["127.0.0.1"] != "CONNECTED"  # the container's own loopback: why 127.0.0.1 alone proves nothing
    assert host_listener.settle() >= 1


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
    """Passes only because of the pids limit: the payload tries 200 forks, reports how far it
    got and exits at once (no sleep to be timed out). Without the limit it reaches 200."""
    code = """
import os, time
n, why = 0, "DONE"
try:
    while n < 200:
        if os.fork() == 0:
            time.sleep(20)
            os._exit(0)
        n += 1
except OSError as e:
    why = "EAGAIN" if e.errno == 11 else f"errno{e.errno}"
print(n, why, flush=True)
os._exit(0)
"""
    if tier == "gvisor":
        # runsc's pids cgroup counts the sentry's own host threads, not guest processes, so
        # the tier sets it to >= 512 and relies on memory (reference/sandbox-tiers note):
        # 200 sleeping Python children do not fit in 96 MB; the sandbox must die of a limit.
        r = run_py(manager, tier, code, Limits(memory_mb=96, pids=512, timeout_s=20, output_bytes=4096))
        assert r.killed in ("pids", "memory") or (r.stdout and r.stdout.split()[1] != b"DONE"), r
    else:
        r = run_py(manager, tier, code, Limits(memory_mb=512, pids=64, timeout_s=20, output_bytes=4096))
        assert r.killed != "timeout", r
        n, why = r.stdout.split()
        assert why == b"EAGAIN", r  # stopped by the pids limit, not by anything else
        assert int(n) < 64
    assert own_leftovers(manager, tier) == []


def test_memory_hog_killed(manager: SandboxManager, tier: str) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    r = run_py(manager, tier, code, Limits(memory_mb=96, pids=64, timeout_s=30))
    assert r.killed == "memory", r
    assert r.exit_code != 0


def test_infinite_loop_stopped(manager: SandboxManager, tier: str) -> None:
    r = run_py(manager, tier, "while True:\n    pass\n", Limits(timeout_s=2, pids=64))
    assert r.killed == "timeout"
    assert r.exit_code != 0
    assert own_leftovers(manager, tier) == []


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
    before = own_leftovers(manager, tier)
    for i in range(LEFTOVER_RUNS[tier]):
        r = run_py(manager, tier, f"print({i})")
        assert r.stdout == f"{i}\n".encode()
    assert own_leftovers(manager, tier) == before == []


# -- found by mutation testing (group "sandbox-limits", scripts/mutate.py) -----------------

CAPS_AND_ROOT = """
import json
out = {}
for p in ["/usr/symbi-pwned", "/symbi-pwned"]:
    try:
        open(p, "w").close()
        out[p] = "WROTE"
    except OSError as e:
        out[p] = e.errno
out["caps"] = [ln.split()[1] for ln in open("/proc/self/status") if ln.startswith(("CapEff", "CapPrm", "CapBnd"))]
print(json.dumps(out))
"""


def test_no_capability_is_left_even_in_the_bounding_set(manager: SandboxManager, tier: str) -> None:
    """An unprivileged uid has no effective capabilities anyway: the bounding set shows whether
    they were dropped (docker cap_drop ALL, bwrap --cap-drop ALL)."""
    r = run_py(manager, tier, CAPS_AND_ROOT)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["caps"] == ["0" * 16] * 3


@pytest.mark.parametrize("tier_name", ["docker", "bwrap"])
def test_the_root_filesystem_is_mounted_read_only(manager: SandboxManager, tier_name: str) -> None:
    """EROFS, not EACCES: the mount refuses, not only the file modes (gVisor answers EACCES either way)."""
    import errno

    require_tier(manager, tier_name)
    r = run_py(manager, tier_name, CAPS_AND_ROOT)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["/usr/symbi-pwned"] == res["/symbi-pwned"] == errno.EROFS, res


def test_the_docker_host_config_carries_every_limit(manager: SandboxManager) -> None:
    """The settings the README promises for the container tiers, as Docker receives them."""
    require_tier(manager, "docker")
    limits = Limits(memory_mb=96, cpus=1.5, pids=40, timeout_s=5, tmpfs_mb=8)
    for name, pids in (("docker", 40), ("gvisor", 512)):
        hc = manager.tier(name)._host_config(docker_client(), limits, [("/src", "/work")])  # type: ignore[attr-defined]
        assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
        assert hc["CapDrop"] == ["ALL"] and hc["SecurityOpt"] == ["no-new-privileges"]
        assert hc["Memory"] == hc["MemorySwap"] == 96 * 1024 * 1024  # no swap beyond the limit
        assert hc["NanoCpus"] == 1_500_000_000 and hc["PidsLimit"] == pids
        assert hc["IpcMode"] == "private" and hc["LogConfig"] == {"Type": "none", "Config": {}}
        assert hc["Binds"] == ["/usr:/usr:ro", "/src:/work:ro"]
        assert hc["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=8m,mode=1777"}
