"""kill -9 of a process sending on the embedded store loses no accepted message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing, load_secret
from gateway.bus.embedded import EmbeddedBackend
from gateway.context import Principal
from gateway.events import LoggingSink
from tests.conftest import symbi_env

pytestmark = pytest.mark.slow


def test_sigkill_loses_no_accepted_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("crash_sender.py")), str(data), "1000000"],
        stdout=subprocess.PIPE,
        env=symbi_env(),
        text=True,
    )
    assert proc.stdout is not None
    accepted: list[str] = []
    for line in proc.stdout:
        accepted.append(line.strip())
        if len(accepted) >= 300:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    accepted += [line.strip() for line in proc.stdout if line.strip()]  # printed before the kill landed
    assert proc.returncode == -signal.SIGKILL

    async def drain() -> list[str]:
        backend = EmbeddedBackend(data / "bus.db")
        await backend.start()
        bus = Bus(
            backend,
            KeyRing(load_secret(data / "bus-secret"), data / "bus-keys.db"),
            events=LoggingSink(),
            buffer_size=1_000_000,
        )
        got: list[str] = []
        b = Principal(id="team", agent="agent-b")
        while batch := await bus.receive(b, max_items=1000):
            got += [r.id for r in batch]
        await backend.close()
        return got

    received = anyio.run(drain)
    assert set(accepted) <= set(received)  # every accepted message survived
    assert len(received) == len(set(received))  # exactly once
    assert [r for r in received if r in set(accepted)] == accepted  # in order
