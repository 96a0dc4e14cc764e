"""The egress slots (``gateway/sandbox/ownnet.py``): a slot is held while its process lives."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gateway.sandbox import ownnet


def test_a_live_holders_slot_is_skipped_and_a_dead_ones_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ownnet, "SLOTS", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "0").write_text(str(os.getppid()))  # alive: the test runner's parent
    (tmp_path / "1").write_text(str(dead.pid))  # gone
    assert ownnet._take_slot() == 1
    assert (tmp_path / "1").read_text() == str(os.getpid())
    assert ownnet._take_slot() == 2  # 1 is this process's now


def test_each_slot_is_its_own_30() -> None:
    ends = [ownnet.addresses(s) for s in (0, 1, 16383)]
    assert ends == [
        ("10.232.0.1", "10.232.0.2"),
        ("10.232.0.5", "10.232.0.6"),
        ("10.232.255.253", "10.232.255.254"),
    ]
