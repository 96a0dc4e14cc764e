"""The hosted agents' socket folder of a gateway that is gone is removed by the next one to
start (gateway/server/agentsocket.py), and a live gateway's never is: a real ``symbi serve``
is killed with SIGKILL (its ``atexit`` never runs), or killed as it binds its socket (the
folder made, empty), then a gateway starts in the same temp dir."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.server.agentsocket import (
    GRACE_S,
    PREFIX,
    open_agent_socket,
    remove_agent_folder,
    sweep_dead_folders,
)
from tests.conftest import ROOT, free_port, symbi_env, write_config
from tests.server._http import serve_process

AGENT = '[sandbox]\ncode_tools = false\n[agents.idle]\ncommand = "/bin/true"\nsandbox = "bwrap"\nstart = "on-demand"\n'


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short temp dir of its own (a Unix socket's path is at most 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="a38-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _folders(tmp: Path) -> set[str]:
    return {p.name for p in tmp.iterdir() if p.name.startswith(PREFIX)}


def _age(path: Path) -> None:
    """As if ``path`` (not what a link points to) was last changed before the grace period:
    the tests do not wait it out."""
    old = time.time() - GRACE_S - 5
    os.utime(path, (old, old), follow_symlinks=False)


def _dead_pid() -> int:
    """A pid no process has any more."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(dead.stdout)


def test_a_killed_gateways_socket_folder_is_removed_by_the_next(
    tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp))  # the served gateway's temp dir
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # and this process's
    cfg = write_config(tmp_path, AGENT)
    with serve_process(cfg) as (_, proc):
        [left] = _folders(tmp)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert _folders(tmp) == {left}  # atexit never ran: the folder stays
    _age(tmp / left)

    # what must stay: a live gateway's folder of the older form (something listens on it), a
    # link with a dead gateway's name (never followed), a folder of this live process
    live = tmp / f"{PREFIX}oldform"
    live.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(live / "gateway.sock"))
    listener.listen(1)
    _age(live)
    target = tmp / "kept"
    target.mkdir()
    (target / "file").write_text("x")
    link = tmp / f"{PREFIX}{_dead_pid()}.1-link"
    link.symlink_to(target)
    _age(target)
    _age(link)
    try:
        sock = open_agent_socket()  # the next gateway starts
        try:
            mine = {n for n in _folders(tmp) if n.startswith(f"{PREFIX}{os.getpid()}.")}
            assert left not in _folders(tmp)
            assert _folders(tmp) == {live.name, link.name, *mine} and len(mine) == 1
            assert (target / "file").read_text() == "x"
            assert sweep_dead_folders(str(tmp)) == []  # a live gateway's folder is never taken
        finally:
            remove_agent_folder(sock.getsockname())
            sock.close()
    finally:
        listener.close()
    # the older form with its listener gone: removed
    assert str(live) in sweep_dead_folders(str(tmp))


def test_a_gateway_stopped_by_sigterm_removes_its_folder(
    tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn re-raises the SIGTERM it stopped on, whose default action ends the process
    before ``atexit`` runs: every ``symbi serve`` stopped by its supervisor left its folder."""
    monkeypatch.setenv("TMPDIR", str(tmp))
    with serve_process(write_config(tmp_path, AGENT)) as (_, proc):
        assert len(_folders(tmp)) == 1
        proc.terminate()
        proc.wait(30)
    assert _folders(tmp) == set()


# the gateway, killed as it binds its agents' socket: the folder is made, the socket is not
KILLED_AT_BIND = """
import os, signal, socket, sys
bind = socket.socket.bind
def killed(self, address):
    if isinstance(address, str) and address.endswith("/gateway.sock"):
        os.kill(os.getpid(), signal.SIGKILL)
    return bind(self, address)
socket.socket.bind = killed
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_gateway_killed_before_it_bound_leaves_a_folder_the_next_removes(tmp: Path, tmp_path: Path) -> None:
    """Attack (an accident, really: an OOM kill at start): the gateway dies between making its
    folder and binding its socket. The sweep probed the socket, met ENOENT (not ECONNREFUSED)
    and kept the folder for good. Now a folder no gateway owns (its process gone, its lock
    not held, nothing listening) is removed once past the grace period, and not before."""
    cfg = write_config(tmp_path, AGENT)
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AT_BIND, "serve", "--config", str(cfg), "--port", str(free_port())],
        cwd=ROOT,
        env=symbi_env(TMPDIR=str(tmp)),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    [left] = _folders(tmp)
    assert list((tmp / left).iterdir()) == []  # as it is left: no socket in it
    assert sweep_dead_folders(str(tmp)) == []  # within the grace period: a gateway may be starting
    _age(tmp / left)
    assert sweep_dead_folders(str(tmp)) == [str(tmp / left)]
    assert _folders(tmp) == set()


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_live_gateways_folder_without_its_socket_is_never_taken(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule must not take a live gateway's folder because its socket is not there (yet, or
    any more): one in another pid namespace (a pid this /proc does not have) holds its lock;
    this process's own folder has its process and its lock. Another user's folder is never
    taken either."""
    other = tmp / f"{PREFIX}999999999.12345-ns"
    other.mkdir(mode=0o711)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(other)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        _age(other)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        sock = open_agent_socket()
        mine = Path(sock.getsockname()).parent
        try:
            (mine / "gateway.sock").unlink()  # nothing listens there now
            _age(mine)
            theirs = tmp / f"{PREFIX}{_dead_pid()}.1-theirs"
            theirs.mkdir()
            os.chown(theirs, 65534, 65534)
            _age(theirs)
            assert sweep_dead_folders(str(tmp)) == []
            assert _folders(tmp) == {other.name, mine.name, theirs.name}
        finally:
            remove_agent_folder(sock.getsockname())
            sock.close()
        assert not mine.exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
    _age(other)
    assert sweep_dead_folders(str(tmp)) == [str(other)]  # its holder is gone: so is the folder


def test_a_socket_that_is_a_link_is_not_followed(tmp: Path) -> None:
    """A dead gateway's folder whose ``gateway.sock`` is a link to a live socket elsewhere: the
    probe does not connect through the link (the folder is unowned, and removed), and what the
    link points to is left as it was."""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listening.bind(str(elsewhere / "live.sock"))
        listening.listen(1)
        folder = tmp / f"{PREFIX}{_dead_pid()}.1-linked"
        folder.mkdir()
        (folder / "gateway.sock").symlink_to(elsewhere / "live.sock")
        _age(folder)
        assert sweep_dead_folders(str(tmp)) == [str(folder)]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(elsewhere / "live.sock"))  # still there, still listening
    finally:
        listening.close()


def test_a_folder_whose_pid_is_not_ours_to_see_is_kept_while_its_socket_listens(tmp: Path) -> None:
    """A gateway in another pid namespace sharing this temp dir: its folder names a pid this
    /proc does not have (or has for another process), yet its socket listens. Removing it
    would cut that gateway's hosted agents off; only a socket nobody listens on counts."""
    folder = tmp / f"{PREFIX}999999999.12345-abc"
    folder.mkdir(mode=0o711)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listening.bind(str(folder / "gateway.sock"))
        listening.listen(1)
        _age(folder)
        assert sweep_dead_folders(str(tmp)) == []
        assert folder.is_dir()
    finally:
        listening.close()
    assert sweep_dead_folders(str(tmp)) == [str(folder)]  # nothing listens now: gone


def test_the_lock_a_sweep_takes_goes_with_its_descriptor(tmp: Path) -> None:
    """A sweep that keeps a folder (its socket listens) must not keep its lock: that would make
    the folder look owned to every later sweep, after its gateway is gone."""
    folder = tmp / f"{PREFIX}999999999.12345-old"
    folder.mkdir()
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(folder / "gateway.sock"))
    listening.listen(1)
    _age(folder)
    assert sweep_dead_folders(str(tmp)) == []
    listening.close()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: nobody kept it
    finally:
        os.close(fd)
