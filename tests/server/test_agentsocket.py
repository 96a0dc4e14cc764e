"""The hosted agents' socket folder of a gateway killed is removed by the next one to start
(gateway/server/agentsocket.py): a real ``symbi serve`` is killed with SIGKILL (its ``atexit``
never runs), then a gateway starts in the same temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.server.agentsocket import PREFIX, open_agent_socket, sweep_dead_folders
from tests.conftest import write_config
from tests.server._http import serve_process


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short temp dir of its own (a Unix socket's path is at most 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="a38-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _folders(tmp: Path) -> set[str]:
    return {p.name for p in tmp.iterdir() if p.name.startswith(PREFIX)}


def test_a_killed_gateways_socket_folder_is_removed_by_the_next(
    tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp))  # the served gateway's temp dir
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # and this process's
    agent = '[sandbox]\ncode_tools = false\n[agents.idle]\ncommand = "/bin/true"\nsandbox = "bwrap"\nstart = "on-demand"\n'
    cfg = write_config(tmp_path, agent)
    with serve_process(cfg) as (_, proc):
        [left] = _folders(tmp)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert _folders(tmp) == {left}  # atexit never ran: the folder stays

    # what must stay: a live gateway's folder of the older form (something listens on it), a
    # link with a dead gateway's name (never followed), a folder of this live process
    live = tmp / f"{PREFIX}oldform"
    live.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(live / "gateway.sock"))
    listener.listen(1)
    target = tmp / "kept"
    target.mkdir()
    (target / "file").write_text("x")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    link = tmp / f"{PREFIX}{dead.stdout.strip()}.1-link"
    link.symlink_to(target)
    try:
        sock = open_agent_socket()  # the next gateway starts
        try:
            mine = {n for n in _folders(tmp) if n.startswith(f"{PREFIX}{os.getpid()}.")}
            assert left not in _folders(tmp)
            assert _folders(tmp) == {live.name, link.name, *mine} and len(mine) == 1
            assert (target / "file").read_text() == "x"
            assert sweep_dead_folders(str(tmp)) == []  # a live gateway's folder is never taken
        finally:
            sock.close()
    finally:
        listener.close()
    # the older form with its listener gone: removed
    assert str(live) in sweep_dead_folders(str(tmp))


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
        assert sweep_dead_folders(str(tmp)) == []
        assert folder.is_dir()
    finally:
        listening.close()
    assert sweep_dead_folders(str(tmp)) == [str(folder)]  # nothing listens now: gone
