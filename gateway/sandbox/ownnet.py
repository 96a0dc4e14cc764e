"""Run a command in an egress-only network namespace of its own (``python -I -S ownnet.py --
argv...``, as root; standard library only: it is started per networked sandboxed server,
before the sandbox, and must not import the gateway).

Every networked server used to share one namespace, so a service one of them listened on at
127.0.0.1 (a browser's debugging port, a kernel's sockets) and every abstract Unix socket were
open to the others. Now this process takes a free /30 from ``NET`` (a slot file holding its
pid, under the host's egress lock), unshares its network namespace, has a child back in the
host's namespace add the veth pair into it, configures its own end and execs ``argv``. The
namespace, and with it the veth pair, goes when the last process in it exits; a slot whose pid
is gone is free. The host's filter rules (``egress.ensure_egress``) match every such veth.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import subprocess
import sys

LOCK_FILE = "/run/symbi-egress.lock"
SLOTS = "/run/symbi-egress"
NET = ipaddress.ip_network("10.232.0.0/16")
IF_PREFIX = "symbi-e"  # the host ends: symbi-e0 .. symbi-e16383 (interface names: 15 bytes)
_SLOTS = NET.num_addresses // 4
_CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _started(pid: int) -> str | None:
    """When process ``pid`` started (``/proc/PID/stat`` field 22), or None: gone. A slot names
    its holder by both, so a pid reused by another process does not hold it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _slots_dir() -> int:
    """The slots' folder, open: root's own, 0700, not a link (this runs as root)."""
    os.makedirs(SLOTS, mode=0o700, exist_ok=True)
    fd = os.open(SLOTS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        os.close(fd)
        raise OSError(f"{SLOTS} is not this user's own 0700 folder")
    return fd


def _holder(folder: int, name: str) -> tuple[int, str] | None:
    """(pid, start) written in slot ``name``; None when there is none. A link is never read."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        pid, _, start = f.read().strip().partition(" ")
    return (int(pid), start) if pid.isdigit() else None


def _take_slot() -> int:
    """A free slot, its file now naming this process (the caller holds the host's lock)."""
    folder = _slots_dir()
    me = f"{os.getpid()} {_started(os.getpid())}"
    try:
        for slot in range(_SLOTS):
            name = str(slot)
            try:
                held = _holder(folder, name)
                if held is not None and _started(held[0]) == held[1]:
                    continue
                fd = os.open(
                    name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=folder
                )
            except OSError:  # a link, or unreadable: never this slot
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return slot
    finally:
        os.close(folder)
    raise OSError(f"no free egress slot ({_SLOTS} in use)")


def addresses(slot: int) -> tuple[str, str]:
    """(host end, namespace end) of ``slot``'s /30."""
    base = NET.network_address + 4 * slot
    return str(base + 1), str(base + 2)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _host_end(host_ns: int, slot: int, pid: int) -> None:
    """In a child that went back to the host's namespace: the veth pair, one end in ``pid``'s."""
    if _libc().setns(host_ns, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    name = f"{IF_PREFIX}{slot}"
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)  # a leftover
    _ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", str(pid))
    _ip("addr", "add", f"{addresses(slot)[0]}/30", "dev", name)
    _ip("link", "set", name, "up")


def _own_end(slot: int) -> None:
    host, mine = addresses(slot)
    _ip("addr", "add", f"{mine}/30", "dev", "eth0")
    _ip("link", "set", "eth0", "up")
    _ip("link", "set", "lo", "up")
    _ip("route", "add", "default", "via", host)


def enter(argv: list[str]) -> None:
    host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        slot = _take_slot()
        if _libc().unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        me = os.getpid()
        child = os.fork()
        if child == 0:
            try:
                _host_end(host_ns, slot, me)
            except BaseException as e:  # noqa: BLE001 - reported by the exit status
                print(f"symbi egress: {e}", file=sys.stderr)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(child, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError("the host end of the veth pair could not be made")
    finally:
        os.close(lock)  # the slot is this process's now: its file names it
    os.close(host_ns)
    _own_end(slot)
    os.execvp(argv[0], argv)


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] != "--" or len(args) < 2:
        print("usage: ownnet.py -- argv...", file=sys.stderr)
        return 2
    try:
        enter(args[1:])
    except OSError as e:
        print(f"symbi egress: refused, no network namespace of its own: {e}", file=sys.stderr)
        return 126
    return 0  # not reached: enter execs


if __name__ == "__main__":
    sys.exit(main())
