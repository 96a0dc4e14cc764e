"""Build the bubblewrap tier's seccomp BPF program.

With ``pyseccomp`` (PyPI, ctypes bindings to the system's libseccomp with the API of
libseccomp's own Python bindings), in the gateway's own process: the program it writes is
byte for byte the one Debian's ``python3-seccomp`` writes for the same rules.

Default allow (a deny-list keeps ordinary programs working), and refuse what a sandboxed
program has no business doing: new namespaces, mounts, ptrace, BPF, keyrings, kernel
modules, perf, userfaultfd, terminal injection and (unless networking is granted) any
socket other than AF_UNIX. This file imports nothing from the gateway on purpose.
"""

from __future__ import annotations

import errno

DENY_EPERM = (
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "syslog",
    "quotactl",
    "lookup_dcookie",
    "vhangup",
    "personality",
)
# CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWCGROUP
TIOCSTI = 0x5412
AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 2, 10, 16, 17


def build(out_path: str, allow_network: bool) -> None:
    """Write the BPF program to ``out_path``. Raises ``OSError`` when libseccomp is missing."""
    try:
        import pyseccomp as seccomp
    except RuntimeError as e:  # it looks the library up at import: "Unable to find libseccomp"
        raise OSError(f"libseccomp: {e}") from e

    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENY_EPERM:
        try:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, RuntimeError, ValueError):
            pass  # syscall unknown to this libseccomp / arch
    # clone with a namespace flag: refused. clone3 hides its flags in a struct -> ENOSYS
    # makes glibc fall back to clone(), which these rules can inspect.
    for flag in (0x10000000, 0x20000000, 0x40000000, 0x04000000, 0x08000000, 0x00020000, 0x02000000):
        f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    f.add_rule(seccomp.ERRNO(errno.EPERM), "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    if not allow_network:
        for family in (AF_INET, AF_INET6, AF_NETLINK, AF_PACKET):
            f.add_rule(seccomp.ERRNO(errno.EACCES), "socket", seccomp.Arg(0, seccomp.EQ, family))
    with open(out_path, "wb") as fh:
        f.export_bpf(fh)
