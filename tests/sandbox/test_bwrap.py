"""bubblewrap specifics: the seccomp filter and the real (host) uid of the payload."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gateway.errors import SandboxUnavailable
from gateway.sandbox import Limits, SandboxManager, SandboxRequest, bwrap, seccomp_bpf

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


def test_the_bwrap_command_line_isolates_and_binds_only_what_is_asked() -> None:
    """The argv the bwrap tier builds (found by mutation testing: the run tests use no binds,
    masks nor network, and bwrap's seccomp filter hides a shared network namespace)."""
    from gateway.sandbox.bwrap import BwrapTier

    def pairs(argv: list[str], flag: str) -> list[tuple[str, ...]]:
        width = {"--ro-bind": 2, "--symlink": 2, "--tmpfs": 1, "--dev": 1, "--size": 1}[flag]
        return [tuple(argv[i + 1 : i + 1 + width]) for i, a in enumerate(argv) if a == flag]

    argv = BwrapTier._bwrap_argv(
        network=False,
        tmpfs_mb=8,
        ro_binds=[("/host/src", "/work")],
        chdir="/work",
        masks=[("/work/.symbi", True), ("/work/key.pem", False)],
    )
    assert argv[:2] == ["bwrap", "--unshare-all"] and "--share-net" not in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert ("usr/sbin", "/sbin") in pairs(argv, "--symlink") and pairs(argv, "--dev") == [("/dev",)]
    assert pairs(argv, "--size") == [(str(8 * 1024 * 1024),)]
    assert pairs(argv, "--ro-bind") == [
        ("/usr", "/usr"),
        ("/host/src", "/work"),
        ("/dev/null", "/work/key.pem"),
    ]
    assert pairs(argv, "--tmpfs") == [("/tmp",), ("/work/.symbi",)]
    assert not any(f in argv for f in ("/etc/resolv.conf", "/etc/hosts"))
    net = BwrapTier._bwrap_argv(network=True, tmpfs_mb=8, ro_binds=[], chdir="/tmp")
    assert net[:3] == ["bwrap", "--unshare-all", "--share-net"]
    present = [f for f in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf") if os.path.exists(f)]
    assert pairs(net, "--ro-bind") == [("/usr", "/usr"), *((f, f) for f in present)]


def test_a_filter_that_cannot_be_built_makes_the_tier_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No libseccomp (or a write that fails): the tier refuses to run, it never runs unfiltered."""

    def no_library(out_path: str, allow_network: bool) -> None:
        raise OSError("libseccomp: Unable to find libseccomp")

    monkeypatch.setattr(seccomp_bpf, "build", no_library)  # the module bwrap calls
    with pytest.raises(SandboxUnavailable):
        bwrap.SeccompFilters().path(allow_network=False)


def test_the_filter_is_built_in_process_for_both_network_settings() -> None:
    filters = bwrap.SeccompFilters()
    try:
        nonet, net = filters.path(allow_network=False), filters.path(allow_network=True)
        # a classic BPF program is a sequence of 8-byte instructions; the one without network
        # carries the four socket-family rules more than the one with
        assert nonet.stat().st_size % 8 == 0 and net.stat().st_size % 8 == 0
        assert nonet.stat().st_size > net.stat().st_size > 0
    finally:
        filters.close()
    assert not nonet.parent.exists()
