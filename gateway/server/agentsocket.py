"""The Unix socket hosted agents reach the gateway on, and the folders dead gateways left.

The socket lives in a private folder in the temp dir, ``symbi-agents-<pid>.<start>-<random>``
(the owning process: its pid and its start time, so a pid reused by another process is not
taken for it). The folder is removed at exit; a gateway killed (``kill -9``, OOM) cannot, and
its folder stayed for good (hundreds of them). So each gateway, before making its own, removes
those whose process is gone and on whose socket nothing listens any more: only folders of this
user, never through a link.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import shutil
import socket
import stat
import tempfile

_logger = logging.getLogger("symbi.http")

PREFIX = "symbi-agents-"


def _started(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()  # field 22 of stat(5), counted after "pid (comm)"
    except (OSError, IndexError):
        return None


def _owner_gone(folder: str, name: str) -> bool:
    """True when the gateway that made ``folder`` (named ``name``) no longer runs."""
    tag = name[len(PREFIX) :].split("-", 1)[0]
    pid, dot, start = tag.partition(".")
    if dot and pid.isdigit() and start.isdigit() and _started(int(pid)) == start:
        return False  # its process runs
    # and in any case only when nothing listens on its socket: a gateway in another pid
    # namespace sharing this temp dir is not in our /proc, and the older form names no process
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(os.path.join(folder, "gateway.sock"))
    except OSError as e:
        return e.errno == errno.ECONNREFUSED
    finally:
        probe.close()
    return False


def sweep_dead_folders(tmp: str | None = None) -> list[str]:
    """Remove the agents' socket folders in ``tmp`` whose gateway is gone; the ones removed."""
    tmp = tmp or tempfile.gettempdir()
    removed: list[str] = []
    uid = os.getuid()
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)  # a link is never followed, nor removed
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or not _owner_gone(entry.path, entry.name):
                continue
            shutil.rmtree(entry.path)  # the fd-based rmtree: it refuses links inside too
            removed.append(entry.path)
        except OSError as e:
            _logger.debug("left %s: %s", entry.path, e)
    if removed:
        _logger.info("removed %d agents' socket folders of gateways that are gone", len(removed))
    return removed


def open_agent_socket() -> socket.socket:
    """The Unix socket hosted agents reach the gateway on (bound into their sandboxes).

    Its folder is private to this process (mode 0711: the sandbox's uid 65534 may pass through
    but not list it); the socket itself accepts anyone who can reach it, and every request still
    needs an API key (each hosted agent run has its own).
    """
    sweep_dead_folders()
    me = os.getpid()
    folder = tempfile.mkdtemp(prefix=f"{PREFIX}{me}.{_started(me) or 0}-")
    os.chmod(folder, 0o711)
    path = os.path.join(folder, "gateway.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(128)
    atexit.register(_remove, folder)
    return sock


def _remove(folder: str) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(folder)
