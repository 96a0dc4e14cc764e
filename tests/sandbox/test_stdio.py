"""Sandboxed stdio servers: a real line-echo process launched through each tier's argv."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.errors import SandboxUnavailable
from gateway.sandbox import Limits, SandboxManager, wrap_stdio_command

from .conftest import own_leftovers

pytestmark = pytest.mark.sandbox

# a value no path or option of a tier's argv can contain by chance ("t1" was: a random
# temporary name held it once)
TAG = "echo-tag-not-on-any-command-line"

ECHO = """
import os, socket, sys
for line in sys.stdin:
    line = line.strip()
    if line == "net?":
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=1)
            print("net:open", flush=True)
        except OSError as e:
            print("net:" + type(e).__name__, flush=True)
    elif line == "who?":
        print("uid:%d env:%s" % (os.getuid(), os.environ.get("ECHO_TAG")), flush=True)
    else:
        print(line.upper(), flush=True)
"""


@pytest.fixture
def server_dir() -> Iterator[Path]:
    # world-readable on purpose: the server runs as uid 65534 (pytest's tmp_path is 0700 root)
    d = Path(tempfile.mkdtemp(prefix="symbi-stdio-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_stdio_server_runs_inside_each_tier(manager: SandboxManager, tier: str, server_dir: Path) -> None:
    tmp_path = server_dir
    script = tmp_path / "echo_server.py"
    script.write_text(ECHO)
    script.chmod(0o644)
    cmd, args = wrap_stdio_command(
        tier,
        "/usr/bin/python3",
        ["-u", str(script)],
        {"ECHO_TAG": TAG},
        str(tmp_path),
        network=False,
        limits=Limits(memory_mb=128, pids=64),
        manager=manager,
    )
    assert not any(TAG in a for a in [cmd, *args])  # the value is on no command line
    proc = subprocess.Popen(
        [cmd, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "ECHO_TAG": TAG},  # as the gateway starts it: env in the environment
    )
    try:
        out, err = proc.communicate(b"hello\nwho?\nnet?\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0] == "HELLO"
    assert lines[1] == f"uid:65534 env:{TAG}"
    assert lines[2] != "net:open" and lines[2].startswith("net:")
    assert (
        own_leftovers(manager, tier) == [] or tier == "bwrap"
    )  # bwrap: the server's cgroup lives until close()


def test_gvisor_cannot_grant_network(manager: SandboxManager) -> None:
    from .conftest import require_tier

    require_tier(manager, "gvisor")
    with pytest.raises(SandboxUnavailable):
        wrap_stdio_command("gvisor", "/usr/bin/python3", [], {}, None, network=True, manager=manager)


def test_refuses_to_expose_sensitive_host_dirs(manager: SandboxManager) -> None:
    from .conftest import require_tier

    require_tier(manager, "bwrap")
    with pytest.raises(SandboxUnavailable):
        wrap_stdio_command("bwrap", "/usr/bin/python3", [], {}, "/etc", network=False, manager=manager)
