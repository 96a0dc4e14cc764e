"""The Unix socket hosted agents reach the gateway on, and the folders dead gateways left.

The socket lives in a private folder in the temp dir, ``symbi-agents-<pid>.<start>-<random>``
(the owning process: its pid and its start time, so a pid reused by another process is not
taken for it). The gateway holds a lock on the folder (``flock`` on its descriptor) for as long
as it runs, and removes the folder when it stops. A gateway killed (``kill -9``, OOM) cannot,
and its folder stayed for good (hundreds of them); so did one killed between making the folder
and binding its socket, an empty folder no sweep took (the probe of its socket met ENOENT, not
ECONNREFUSED). So each gateway, before making its own, removes the folders no gateway owns:
only folders of this user, never through a link, and only when none of these says a gateway
owns it:

- it was changed within ``GRACE_S`` (a gateway in another pid namespace between making its
  folder and taking the lock or binding the socket);
- the process its name gives runs (this /proc);
- its lock is held (a gateway in another pid namespace sharing this temp dir);
- something listens on its socket (the older form, which held no lock).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import stat
import tempfile
import time

_logger = logging.getLogger("symbi.http")

PREFIX = "symbi-agents-"
SOCKET_NAME = "gateway.sock"
GRACE_S = 60.0  # a folder changed this recently is never taken (its gateway may be starting)

_held: dict[str, int] = {}  # this process's folders: the descriptor holding each one's lock


def _started(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()  # field 22 of stat(5), counted after "pid (comm)"
    except (OSError, IndexError):
        return None


def _process_runs(name: str) -> bool:
    """Whether the process a folder's name gives (``<pid>.<start>``) runs here."""
    tag = name[len(PREFIX) :].split("-", 1)[0]
    pid, dot, start = tag.partition(".")
    return bool(dot and pid.isdigit() and start.isdigit() and _started(int(pid)) == start)


def _lock_held(fd: int) -> bool:
    """Whether another open file holds the lock of the folder open on ``fd`` (when not, this
    descriptor has it now, until it is closed)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    return False


def _listening(fd: int) -> bool:
    """Whether something listens on the socket in the folder open on ``fd``. A socket that is
    a link (or anything but a socket) is never connected through."""
    try:
        st = os.lstat(SOCKET_NAME, dir_fd=fd)
    except FileNotFoundError:
        return False  # killed before it bound: nothing ever listened
    if not stat.S_ISSOCK(st.st_mode):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        # through this process's descriptor of the folder: the folder checked, not a path
        # someone may have swapped since
        probe.connect(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
    except OSError as e:
        return e.errno != errno.ECONNREFUSED  # anything else (a full backlog): keep it
    finally:
        probe.close()
    return True


def _unowned(fd: int, name: str, now: float) -> bool:
    """Whether no gateway owns the folder ``name`` open on ``fd``, which must be this user's
    own folder (a link is never opened: O_NOFOLLOW). Takes the folder's lock when unowned."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False
    if now - st.st_mtime < GRACE_S:
        return False
    if _process_runs(name):
        return False
    return not _lock_held(fd) and not _listening(fd)


def sweep_dead_folders(tmp: str | None = None) -> list[str]:
    """Remove the agents' socket folders in ``tmp`` no gateway owns; the ones removed."""
    tmp = tmp or tempfile.gettempdir()
    removed: list[str] = []
    try:
        top = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return removed
    try:
        names = [n for n in os.listdir(top) if n.startswith(PREFIX)]
        now = time.time()
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
            except OSError as e:  # a link (ELOOP), not a folder, gone meanwhile
                _logger.debug("left %s: %s", name, e)
                continue
            try:
                if _unowned(fd, name, now):
                    shutil.rmtree(name, dir_fd=top)  # the fd-based rmtree: it refuses links inside too
                    removed.append(os.path.join(tmp, name))
            except OSError as e:
                _logger.debug("left %s: %s", name, e)
            finally:
                os.close(fd)  # the lock taken on an unowned folder goes with it
    finally:
        os.close(top)
    if removed:
        _logger.info("removed %d agents' socket folders no gateway owns", len(removed))
    return removed


def open_agent_socket() -> socket.socket:
    """The Unix socket hosted agents reach the gateway on (bound into their sandboxes).

    Its folder is private to this process (mode 0711: the sandbox's uid 65534 may pass through
    but not list it), locked by it until it stops (``remove_agent_folder``) or exits; the socket itself accepts anyone who can reach it, and every request still needs an
    API key (each hosted agent run has its own).
    """
    sweep_dead_folders()
    me = os.getpid()
    folder = tempfile.mkdtemp(prefix=f"{PREFIX}{me}.{_started(me) or 0}-")
    lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    fcntl.flock(lock, fcntl.LOCK_EX)  # new, and younger than GRACE_S: no sweep holds it
    _held[folder] = lock
    atexit.register(_remove, folder)
    os.chmod(folder, 0o711)
    path = os.path.join(folder, SOCKET_NAME)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(128)
    except OSError:
        sock.close()
        _remove(folder)
        raise
    return sock


def remove_agent_folder(path: str) -> None:
    """Remove the folder of this process's agents' socket at ``path`` (a stopping gateway:
    uvicorn re-raises the SIGTERM it stopped on, which ends the process before ``atexit``
    runs). A folder this process did not make is left alone."""
    _remove(os.path.dirname(path))


def _remove(folder: str) -> None:
    """Remove ``folder`` if this process made it (and holds it), then let its lock go."""
    lock = _held.pop(folder, None)
    if lock is None:
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(folder)
    os.close(lock)
