"""Hosted agents on one Redis, as replicas run them (tests/runtime/test_leased.py): a real
``HostedAgents`` with its own data dir, key store and bwrap tier, and one hosted agent that
sleeps (its argument marks its process, so a test counts the real processes).

``python -m tests.runtime._leases DIR REDIS_URL MARK`` runs one such gateway's hosted agents
until killed: a replica in a process of its own."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import anyio

from gateway.config.model import Config
from gateway.config.sections import AgentConfig, GatewaySection, StateSection
from gateway.events import EventSink
from gateway.runtime.core import AgentRuntime
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.launch import AgentHost
from gateway.sandbox.manager import SandboxManager
from gateway.server.auth import ApiKeyStore
from gateway.state.leases import LeaseBoard, process_name

NAME = "sleeper"


def replica(
    folder: Path, redis_url: str, mark: str, events: EventSink, start: str = "with-gateway"
) -> HostedAgents:
    """One gateway's hosted agents in ``folder``: ``sleeper`` runs ``sleep MARK`` in bwrap."""
    folder.mkdir(parents=True, exist_ok=True)
    agent = AgentConfig(
        command="/usr/bin/sleep", args=(mark,), sandbox="bwrap", restart_backoff_s=0.2, start=start
    )
    config = Config(
        gateway=GatewaySection(data_dir=folder / "data"),
        state=StateSection(redis_url=redis_url),
        agents={NAME: agent},
    )
    socket = folder / "gateway.sock"  # bound into the sandbox; the agent never dials it
    socket.touch()
    host = AgentHost(str(socket), ApiKeyStore(folder / "keys.json"))
    manager = SandboxManager(config, sweep_orphans=False)
    # the board the assembly would make (on the process's Redis client; here one of its own)
    board = LeaseBoard(redis_url, owner=process_name(config.data_dir), timeout_s=config.state.timeout_s)
    recordable = getattr(events, "recordable", None)  # the audit log's ensure_writable, when it has one
    return HostedAgents(
        config,
        AgentRuntime(config, events),
        events,
        sandbox=manager,
        host=host,
        board=board,
        recordable=recordable,
    )


def marked(mark: str) -> set[int]:
    """The live processes whose command line is ``sleep MARK`` (the agent itself, in its sandbox)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv[:2] == [b"/usr/bin/sleep", mark.encode()]:
                state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.add(int(cmdline.parent.name))
    return found


if __name__ == "__main__":
    from gateway.events import LoggingSink

    folder, url, mark = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    anyio.run(replica(folder, url, mark, LoggingSink()).run)
