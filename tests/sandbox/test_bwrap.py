"""bubblewrap specifics: the seccomp filter and the real (host) uid of the payload."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gateway.sandbox import Limits, SandboxManager, SandboxRequest

from .conftest import require_tier

pytestmark = pytest.mark.sandbox

PROBE = r"""
import ctypes, errno, json, socket
libc = ctypes.CDLL(None, use_errno=True)
def call(f, *a):
    r = f(*a)
    return "ok" if r == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
out = {
    "unshare_user": call(libc.unshare, 0x10000000),
    "unshare_net": call(libc.unshare, 0x40000000),
    "mount": call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
    "ptrace": call(libc.ptrace, 0, 0, None, None),
    "keyctl": call(libc.syscall, 250, 0, 0, 0, 0),
    "bpf": call(libc.syscall, 321, 0, 0, 0),
}
for name, fam in (("inet", socket.AF_INET), ("inet6", socket.AF_INET6), ("netlink", socket.AF_NETLINK)):
    try:
        socket.socket(fam, socket.SOCK_DGRAM if fam != socket.AF_NETLINK else socket.SOCK_RAW).close()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
try:
    a, b = socket.socketpair()
    out["unix"] = "ok"
except OSError as e:
    out["unix"] = str(e)
print(json.dumps(out))
"""


def test_seccomp_filter_refuses_escape_syscalls(manager: SandboxManager) -> None:
    require_tier(manager, "bwrap")
    r = manager.run("bwrap", SandboxRequest(code=PROBE), Limits(timeout_s=20))
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res.pop("unix") == "ok"  # ordinary local IPC still works
    for name in ("unshare_user", "unshare_net", "mount", "ptrace", "keyctl", "bpf"):
        assert res[name] == "EPERM", (name, res)
    for name in ("inet", "inet6", "netlink"):
        assert res[name] == "EACCES", (name, res)


def test_payload_is_uid_65534_on_the_host_too(manager: SandboxManager) -> None:
    """Not just inside the user namespace: the host sees 65534, so host root's files
    and RLIMIT_NPROC-exempt root privileges are out of reach."""
    require_tier(manager, "bwrap")
    import threading

    result: list[object] = []
    t = threading.Thread(
        target=lambda: result.append(
            manager.run("bwrap", SandboxRequest(code="import time; time.sleep(3)"), Limits(timeout_s=20))
        )
    )
    t.start()
    uids: set[int] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not uids:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            if b"time.sleep(3)" in cmd and b"bwrap" not in cmd and b"setpriv" not in cmd:
                uids.add(
                    int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
                )
        time.sleep(0.05)
    t.join()
    assert uids == {65534}
