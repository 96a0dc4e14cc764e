"""Each unsandboxed upstream in a Landlock domain of its own: no reach into its neighbours.

Every unsandboxed stdio upstream runs as the same unprivileged user (``gateway.upstream.runas``),
so, by uid alone, one could read another's environment (its API tokens) through
``/proc/PID/environ``, ptrace it (and answer the gateway in its name), signal it, connect to its
abstract sockets, and read or rewrite the files in their shared home (an npm cache: code the
other runs at its next start). The gateway runs this file as the launcher in front of
``setpriv`` (``python -I -S confine.py HOME -- setpriv ...``, as root, before the uid switch): it
puts the process in a new Landlock domain, which the server and its children keep for life, and
execs the rest of the command line.

- A process in a domain cannot ptrace (nor read the ``environ`` or ``mem`` of) a process outside
  it: each upstream is in its own, so none can reach another (the kernel's rule since ABI 1).
- Signals and abstract UNIX sockets are scoped to the domain (ABI 6 and later).
- Files: every right everywhere, except beneath the upstream user's home, where only the
  server's own home (``HOME``) is open; its ancestors may be listed, not written.
- Scratch: what a server writes in the folders every user may write (``/tmp``, ``/var/tmp``,
  ``/dev/shm``, ``/run/lock``) is its own, in a mount namespace of its own: each folder is an
  overlay of the host's (read as before) and one tmpfs of at most ``SCRATCH_MB`` MiB, gone with
  the server. Shared, a server could read what another left there (by uid alone: they share
  one) and fill the disk or, through ``/dev/shm``, memory no process holds, which the OOM
  killer cannot free. System V shared memory, semaphores and message queues are its own too
  (an IPC namespace), for the same two reasons.
- Keys: a session keyring of its own, empty. A process keeps the session keyring of whoever
  started it across a uid switch, and possesses every key in it: the gateway's (systemd gives
  each service one, ``pam_keyinit`` each login) was the upstream's to search, read and add to.
- Processes: its ``/proc`` is one of its own (``hidepid=2``) that lists only the processes of
  the upstream user: any user may read any process's command line, where a token in another
  server's ``args`` (a sandboxed one runs as 65534, its launcher as root) and the gateway's
  own are.

Run with the standard library only (``-I -S``: nothing from the gateway's environment or
site-packages is imported as root). Exit 126 with the reason on stderr when the kernel has no
Landlock: the gateway checks for it at start (``landlock_abi``) and refuses to run such servers
without it unless told it is unsafe.
"""

from __future__ import annotations

import ctypes
import errno as errnos
import os
import platform
import stat
import struct
import sys

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

# access rights by the ABI that brought them (include/uapi/linux/landlock.h)
_FS_V1 = (1 << 13) - 1  # execute, write/read file, read dir, remove, make char/dir/reg/sock/fifo/block/sym
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_READ_DIR = 1 << 3
_FILE_RIGHTS = 1 | 2 | 4 | _TRUNCATE | _IOCTL_DEV  # the rights a rule on a file may carry
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2
SCOPED_ABI = 6  # the first ABI that scopes signals and abstract sockets (Linux 6.12)
# keyctl(2) (include/uapi/linux/keyctl.h); its number is the architecture's own
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219}
_KEYCTL_JOIN_SESSION_KEYRING = 1

# unshare(2) and mount(2) (include/uapi/linux/sched.h, mount.h)
_CLONE_NEWNS, _CLONE_NEWIPC = 0x00020000, 0x08000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
# the folders any user may write, made private (the first holds the tmpfs of their upper layers)
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
INODES_PER_MB = 256  # files a scratch tmpfs may hold per MiB (empty files cost kernel memory too)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled)."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(
        _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def handled_rights(abi: int) -> int:
    """Every filesystem right this ABI knows (the domain handles all of them)."""
    rights = _FS_V1
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def rules(hidden: str, home: str, rights: int) -> list[tuple[str, int]]:
    """(path, rights) beneath which the domain allows access: everything but ``hidden``, whose
    ancestors may only be listed, and ``home`` inside it, which is open.

    Each level from ``/`` down to ``hidden`` grants its other entries every right (a file only
    a file's rights); symbolic links get no rule of their own (access goes by their target)."""
    out: list[tuple[str, int]] = []
    parts = [p for p in hidden.split("/") if p]
    here = "/"
    for part in parts:
        out.append((here, _READ_DIR))
        for entry in sorted(os.listdir(here)):
            if entry == part:
                continue
            path = os.path.join(here, entry)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                out.append((path, rights))
            elif not stat.S_ISLNK(mode):
                out.append((path, rights & _FILE_RIGHTS))
        here = os.path.join(here, part)
    out.append((home, rights))
    return out


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    libc = _libc()
    args = [None if v is None else v.encode() for v in (source, target, fstype)]
    if libc.mount(*args, ctypes.c_ulong(flags), None if data is None else data.encode()) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {target}: {os.strerror(errno)}")


def private_scratch(size_mb: int) -> None:
    """Give this process (and what it execs) scratch folders of its own (see the module
    docstring): new mount and IPC namespaces, and on each of ``SCRATCH`` that exists (symbolic
    links are left: they lead to one that is covered) an overlay whose lower layer is the
    host's folder, read as before (a server's files there stay in reach), and whose upper
    layer, where every write goes, is on one tmpfs of ``size_mb`` MiB.

    Raises:
        OSError: the kernel refused (no CAP_SYS_ADMIN: not root, or a container without it).
    """
    if _libc().unshare(ctypes.c_int(_CLONE_NEWNS | _CLONE_NEWIPC)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare: {os.strerror(errno)}")
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE, None)  # nothing mounted here reaches the host
    targets = [t for t in SCRATCH if os.path.isdir(t) and not os.path.islink(t)]
    lowers = [os.open(t, os.O_PATH | os.O_DIRECTORY) for t in targets]  # before anything covers them
    try:
        stage = targets[0]  # the tmpfs goes here first; its own overlay covers it last
        options = f"size={size_mb}m,nr_inodes={size_mb * INODES_PER_MB},mode=700"
        _mount("symbi-scratch", stage, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
        order = [*range(1, len(targets)), 0]
        for i in order:
            lower = os.fstat(lowers[i])
            os.mkdir(f"{stage}/u{i}")
            os.chmod(f"{stage}/u{i}", lower.st_mode & 0o7777)  # the merged root looks as before
            os.chown(f"{stage}/u{i}", lower.st_uid, lower.st_gid)
            os.mkdir(f"{stage}/w{i}", 0o700)
        for i in order:
            layers = f"lowerdir=/proc/self/fd/{lowers[i]},upperdir={stage}/u{i},workdir={stage}/w{i}"
            _mount("symbi-scratch", targets[i], "overlay", _MS_NOSUID | _MS_NODEV, layers)
    finally:
        for fd in lowers:
            os.close(fd)
    os.chdir(os.getcwd())  # a working folder beneath one of them: through its overlay now
    # a /proc of its own that shows only its own user's processes: any user reads another's
    # command line (a token in a sandboxed server's args, the gateway's, the docker CLI's)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "hidepid=2")


def own_session_keyring() -> None:
    """Leave the gateway's session keyring for a new, empty one (see the module docstring).

    Raises:
        OSError: the kernel refused, or this architecture's ``keyctl`` number is not known here.
    """
    number = _SYS_KEYCTL.get(platform.machine())
    if number is None:
        raise OSError(errnos.ENOSYS, f"no keyctl number known for {platform.machine()}")
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(number), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING), None) < 0:
        errno = ctypes.get_errno()
        if errno != errnos.ENOSYS:  # a kernel without keys has no keyring to leave
            raise OSError(errno, f"keyctl join session keyring: {os.strerror(errno)}")


def restrict(hidden: str, home: str) -> None:
    """Put this process in a new domain (see the module docstring).

    Raises:
        OSError: the kernel refused (no Landlock, or a rule it cannot take).
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError(
            ctypes.get_errno() or 38, "the kernel has no Landlock (needs Linux 5.13+ with it enabled)"
        )
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    rights = handled_rights(abi)
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= SCOPED_ABI else 0
    attr = struct.pack("=QQQ", rights, 0, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_CREATE_RULESET, attr, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"landlock_create_ruleset: {os.strerror(errno)}")
    try:
        for path, allowed in rules(hidden, home, rights):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                rule = struct.pack("=Qi", allowed, fd)
                if (
                    libc.syscall(
                        _SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), rule, 0
                    )
                    < 0
                ):
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"landlock_add_rule {path}: {os.strerror(errno)}")
            finally:
                os.close(fd)
        if libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"landlock_restrict_self: {os.strerror(errno)}")
    finally:
        os.close(ruleset)


def main(argv: list[str]) -> int:
    """``confine.py HIDDEN HOME SCRATCH_MB -- COMMAND ARGS...``: confine, then exec the command."""
    if len(argv) < 5 or argv[3] != "--" or not argv[2].isdigit() or int(argv[2]) < 1:
        print("usage: confine.py HIDDEN HOME SCRATCH_MB -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    hidden, home, scratch_mb, command = argv[0], argv[1], int(argv[2]), argv[4:]
    try:
        own_session_keyring()
        private_scratch(scratch_mb)  # before the domain: it forbids mounting
        restrict(hidden, home)
    except OSError as e:
        print(f"symbi: cannot confine the upstream server: {e.strerror or e}", file=sys.stderr)
        return 126
    os.execv(command[0], command)
    return 127  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
