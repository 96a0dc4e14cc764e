"""One "did this file change" stamp (gateway/filestamp.py) for the policy watch and
discovery's client files: they had two, one raising for a missing file and one not, one
blind to a file replaced under the same size and time of another device's inode."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.filestamp import file_stamp
from gateway.onboard.clients import ClientFile, ReadWhenChanged


def test_a_missing_file_has_no_stamp_and_every_change_moves_it(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    assert file_stamp(path) is None
    assert file_stamp(tmp_path / "a\0b") is None  # not a path a file can have
    path.write_text("{}")
    first = file_stamp(path)
    st = os.stat(path)
    other = tmp_path / "g.json"
    other.write_text("{}")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # same size, same mtime: another file (its inode)
    assert file_stamp(path) != first
    second = file_stamp(path)
    _after_ctime_of(path, tmp_path / "probe")  # a kernel's ctime moves a tick at a time
    path.write_text("[]")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # rewritten, its mtime put back: ctime
    assert file_stamp(path) != second


def _after_ctime_of(path: Path, probe: Path) -> None:
    """Waits (bounded) until a file written now gets a later ctime than ``path``'s: without
    multigrain timestamps (Linux < 6.13) a ctime is the last clock tick (a few ms), and a
    rewrite in the same tick keeps the stamp: the stamp sees a change a tick later, not sooner."""
    deadline = time.monotonic() + 5
    probe.write_text("")
    while os.stat(probe).st_ctime_ns <= os.stat(path).st_ctime_ns:
        assert time.monotonic() < deadline, "the file system's ctime did not move in 5 s"
        time.sleep(0.001)
        probe.write_text("")


def test_the_client_reader_refuses_a_missing_file_every_time(tmp_path: Path) -> None:
    """Discovery's reader: a client file gone between the listing and the read is unreadable
    this pass (its servers keep their status), never served from what it held before."""
    path = tmp_path / "mcp.json"
    path.write_text('{"mcpServers": {"a": {"command": "a-mcp"}}}')
    source = ClientFile("cursor", path, "user")
    reader = ReadWhenChanged()
    assert [s.name for s in reader.servers([source])[source]] == ["a"]
    path.unlink()
    for _ in range(2):
        with pytest.raises(ConfigError):
            reader.servers([source])
