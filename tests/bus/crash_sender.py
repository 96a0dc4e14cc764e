"""Sends bus messages from agent-a to agent-b on the embedded store and prints each id once
``send`` returned (= accepted); test_crash.py kills it with SIGKILL mid-stream."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing, load_secret
from gateway.bus.embedded import EmbeddedBackend
from gateway.context import Principal
from gateway.events import LoggingSink


async def main(data: Path, count: int) -> None:
    backend = EmbeddedBackend(data / "bus.db")
    await backend.start()
    bus = Bus(
        backend,
        KeyRing(load_secret(data / "bus-secret"), data / "bus-keys.db"),
        events=LoggingSink(),
        buffer_size=1_000_000,
    )
    await bus.register("agent-b", "stdio:team")
    a = Principal(id="team", agent="agent-a")
    for i in range(count):
        msg = await bus.send(a, "agent-b", {"n": i})
        print(msg.id, flush=True)


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
