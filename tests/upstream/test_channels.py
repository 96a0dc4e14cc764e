"""Attack: a malicious unsandboxed stdio upstream (tests/peers/channels_server.py, run by a real
``symbi mcp`` as the upstream user) tries the channels Linux does not separate by uid or mount
namespace: the session keyring it inherits, an abstract Unix socket of root's, the terminal the
gateway was started from (``/dev/tty``, ``TIOCSTI``), a signal to the gateway, its own cgroup's
files, and a gateway's agents' socket in ``/tmp``.

The gateway is started the way systemd (a service's own session keyring) and a login shell
(``pam_keyinit``, a controlling terminal) start it: a session keyring holding a secret and a
terminal of its own, by a small wrapper that then execs ``symbi mcp``.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.conftest import ROOT, SYMBI, write_config

pytestmark = pytest.mark.anyio
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs a root gateway")
CHANNELS = ROOT / "tests/peers/channels_server.py"

# joins a session keyring of its own with a secret in it (systemd gives each service one,
# pam_keyinit each login), takes a terminal as its controlling one, then execs the gateway
WRAPPER = """
import ctypes, fcntl, os, platform, sys, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr = {"x86_64": (250, 248), "aarch64": (219, 217)}[platform.machine()]
assert libc.syscall(ctypes.c_long(nr[0]), ctypes.c_long(1), b"symbi-gateway-session") > 0
secret = sys.argv[1].encode()
assert libc.syscall(ctypes.c_long(nr[1]), b"user", b"symbi-test-secret", secret,
                    ctypes.c_size_t(len(secret)), ctypes.c_long(-3)) > 0
leader, terminal = os.openpty()
fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)  # the SDK started us as a session leader
os.set_inheritable(leader, True)  # the gateway holds the terminal open (closed, it hangs up)
os.execv(sys.argv[2], sys.argv[2:])
"""


@contextmanager
def listening(address: str) -> Iterator[None]:
    """Root's Unix socket at ``address`` (``\\0name``: abstract), answering whoever connects."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    if not address.startswith("\0"):
        os.chmod(address, 0o666)  # as the agents' socket: anyone who reaches it may connect
    server.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


@contextmanager
def agents_socket_in_tmp() -> Iterator[str]:
    """A live socket where a gateway keeps its agents' socket (/tmp, a 0711 folder)."""
    folder = tempfile.mkdtemp(prefix="symbi-test-agents-", dir="/tmp")
    os.chmod(folder, 0o711)
    path = os.path.join(folder, "gateway.sock")
    try:
        with listening(path):
            yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def attack(tmp_path: Path, sandbox: str = "") -> tuple[str, dict[str, Any]]:
    """The secret in the gateway's session keyring, and what the upstream reached."""
    secret, abstract = secrets.token_hex(8), f"symbi-test-{secrets.token_hex(6)}"
    with listening("\0" + abstract), agents_socket_in_tmp() as path:
        return secret, await probe_from_upstream(tmp_path, secret, abstract, path, sandbox)


async def probe_from_upstream(
    tmp_path: Path, secret: str, abstract: str, path: str, sandbox: str
) -> dict[str, Any]:
    tier = f'sandbox = "{sandbox}"' if sandbox else ""
    cfg = write_config(
        tmp_path,
        f"""
        [servers.thief]
        command = "/usr/bin/python3"
        args = ["{CHANNELS}"]
        verification = "warn"
        {tier}
        """,
    )
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(wrapper), secret, str(SYMBI), "mcp", "--config", str(cfg)],
        env={"PYTHONPATH": str(ROOT)},
    )
    async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        res = await s.call_tool(
            "thief__probe", {"key": "symbi-test-secret", "abstract": abstract, "path": path}
        )
        assert not res.is_error, res
        return json.loads(res.content[0].text)  # type: ignore[union-attr,no-any-return]


@needs_root
async def test_an_upstream_reaches_no_channel_uid_and_mounts_leave_open(tmp_path: Path) -> None:
    secret, report = await attack(tmp_path)
    assert report["uid"] != 0
    # the gateway's session keyring: the upstream got one of its own (it possessed the
    # gateway's, and with it every key there, before)
    assert report["keyring"].startswith("denied: "), report
    assert secret not in json.dumps(report)
    # root's abstract socket: out of its Landlock domain's scope
    assert report["abstract"] == "denied: EPERM", report
    # the gateway's terminal: the upstream is in a session of its own, with no terminal; its
    # stdio are pipes
    assert report["tty"] == "denied: ENXIO", report
    assert {report[f"tiocsti {fd}"] for fd in (0, 1, 2)} == {"denied: ENOTTY"}, report
    assert report["signal"] == "denied: EPERM", report  # scoped signals
    assert report["cgroup"] in ("ok: []", "denied: PermissionError") or report["cgroup"].startswith(
        "denied: E"
    ), report
    # a live socket in the host's /tmp (a gateway's agents' socket): its /tmp is an overlay,
    # whose inode is not the socket's
    assert report["socket"] == "denied: ECONNREFUSED", report


@needs_root
@pytest.mark.sandbox
async def test_a_bwrap_sandboxed_upstream_reaches_no_channel_either(tmp_path: Path) -> None:
    """The same attack from a server in the bubblewrap tier (no network): its seccomp filter
    refuses keyctl, its network namespace has no abstract socket of the host's, bwrap's
    ``--new-session`` leaves it no terminal, and its /tmp is its own."""
    for d in (tmp_path, tmp_path.parent):
        d.chmod(0o755)  # the sandbox's uid may walk to its config folder
    secret, report = await attack(tmp_path, sandbox="bwrap")
    assert report["uid"] != 0
    assert report["keyring"] == "denied: EPERM", report
    assert secret not in json.dumps(report)
    assert report["abstract"] == "denied: ECONNREFUSED", report  # no such name in its namespace
    assert report["tty"] == "denied: ENXIO", report
    assert {report[f"tiocsti {fd}"] for fd in (0, 1, 2)} == {"denied: EPERM"}, report  # seccomp
    assert report["cgroup"] == "ok: []" or report["cgroup"].startswith("denied: "), report
    assert report["socket"] == "denied: ENOENT", report  # a /tmp of its own
    # (its parent is bwrap, pid 1 of its own pid namespace: the gateway is not in it)


# asks runsc's control server (abstract socket argv[1], sandbox argv[2]) for the sandbox's
# processes: "answered <reply>", or "refused <errno>" (tests/runtime/test_gvisor_agent.py too)
GVISOR_CONTROL = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(b"\\0" + sys.argv[1].encode() + b"\\0")
except OSError as e:
    print("refused", e.errno)
    raise SystemExit
s.sendall(json.dumps({"method": "containerManager.Processes", "arg": sys.argv[2]}).encode())
print("answered", s.recv(4096).decode())
"""


@contextmanager
def gvisor_sandbox() -> Iterator[str]:
    """A gVisor sandbox as the docker tier runs one (runsc, no network, uid 65534); its id."""
    if shutil.which("docker") is None or shutil.which("runsc") is None:
        pytest.skip("needs docker with the runsc runtime")
    binds = [a for d in ("/usr", "/lib", "/lib64", "/bin") if Path(d).exists() for a in ("-v", f"{d}:{d}:ro")]
    run = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--rm",
            "--runtime=runsc",
            "--network=none",
            "--user=65534:65534",
            *binds,
            "symbi-sandbox:latest",
            "/usr/bin/sleep",
            "60",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # fmt: skip
    )
    if run.returncode != 0:
        pytest.skip(f"no gVisor sandbox here: {run.stderr.strip()[:200]}")
    cid = run.stdout.strip()
    try:
        yield cid
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60, check=False)


@needs_root
@pytest.mark.sandbox
async def test_an_upstream_cannot_drive_a_gvisor_sandbox_through_its_control_socket(tmp_path: Path) -> None:
    """runsc's control server listens on an abstract socket (``@runsc-sandbox.<id>``) of the
    network namespace runsc starts in, and serves any uid: the sandbox runs in a user namespace,
    so a peer it does not map is seen as ``nobody``, the sandbox's own uid (its check is "this
    uid or root"). Whoever reaches it can list, signal, exec in and destroy the sandbox. Docker
    runs runsc through scripts/symbi-runsc, in a namespace of its own (``symbi-runsc``): no
    process of the host's namespace reaches the socket, whatever its uid or kernel."""
    with gvisor_sandbox() as cid:
        name = f"runsc-sandbox.{cid}"  # between two NULs
        probe = ["/usr/bin/python3", "-c", GVISOR_CONTROL, name, cid]
        # the channel is real: root, entering the wrapper's namespace, drives the sandbox
        inside = subprocess.run(
            ["nsenter", "--net=/run/netns/symbi-runsc", "--", *probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,  # fmt: skip
        )
        assert '"success":true' in inside.stdout, inside.stdout + inside.stderr
        # a plain uid-999 process of the host's namespace (no Landlock domain) finds no socket
        plain = subprocess.run(
            ["setpriv", "--reuid=999", "--regid=999", "--clear-groups", *probe],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,  # fmt: skip
        )
        assert plain.stdout.split() == ["refused", str(errno.ECONNREFUSED)], plain.stdout + plain.stderr
        secret = secrets.token_hex(8)
        with agents_socket_in_tmp() as path:
            report = await probe_from_upstream(tmp_path, secret, name + "\0", path, "")
    assert report["abstract"].startswith("denied: "), report
