"""The egress slots (``gateway/sandbox/ownnet.py``, run as root): a slot is held while the
process it names (pid and start time) lives; a link in the slots' folder is never followed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gateway.sandbox import ownnet


@pytest.fixture
def slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "slots"
    monkeypatch.setattr(ownnet, "SLOTS", str(folder))
    return folder


def _me(pid: int) -> str:
    return f"{pid} {ownnet._started(pid)}"


def test_a_live_holders_slot_is_skipped_and_a_dead_ones_is_taken(slots: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    slots.mkdir(mode=0o700)
    (slots / "0").write_text(_me(os.getppid()))  # alive: the test runner's parent
    (slots / "1").write_text(f"{dead.pid} 12345")  # gone
    assert ownnet._take_slot() == 1
    assert (slots / "1").read_text() == _me(os.getpid())
    assert ownnet._take_slot() == 2  # 1 is this process's now


def test_a_reused_pid_does_not_hold_a_slot(slots: Path) -> None:
    """A live pid with another start time is another process (the pid was reused)."""
    slots.mkdir(mode=0o700)
    (slots / "0").write_text(f"{os.getppid()} 1")
    assert ownnet._take_slot() == 0


def test_a_link_in_the_slots_folder_is_never_followed(slots: Path, tmp_path: Path) -> None:
    """Root writing a slot through a planted link would truncate whatever it points to."""
    slots.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (slots / "0").symlink_to(victim)
    assert ownnet._take_slot() == 1
    assert victim.read_text() == "keep me"


def test_a_slots_folder_others_can_write_is_refused(slots: Path) -> None:
    slots.mkdir(mode=0o700)
    slots.chmod(0o777)
    with pytest.raises(OSError):
        ownnet._take_slot()


def test_each_slot_is_its_own_30() -> None:
    ends = [ownnet.addresses(s) for s in (0, 1, 16383)]
    assert ends == [
        ("10.232.0.1", "10.232.0.2"),
        ("10.232.0.5", "10.232.0.6"),
        ("10.232.255.253", "10.232.255.254"),
    ]
