"""``symbi sandbox run|doctor|cleanup`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from gateway.cli.sandbox_cmd import parse_memory_mb, parse_seconds
from gateway.sandbox import SandboxManager

from .conftest import ROOT

SYMBI = [sys.executable, "-m", "gateway"]


def symbi(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SYMBI, *args], cwd=ROOT, input=stdin, capture_output=True, timeout=120, check=False)


def test_parsers() -> None:
    assert parse_memory_mb("256m") == 256 and parse_memory_mb("1g") == 1024 and parse_memory_mb("64") == 64
    assert parse_seconds("10s") == 10 and parse_seconds("500ms") == 0.5 and parse_seconds("2m") == 120
    for bad in ("lots", "-1m", "1t"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_memory_mb(bad)


@pytest.mark.sandbox
def test_doctor_table(manager: SandboxManager) -> None:
    r = symbi("sandbox", "doctor")
    lines = r.stdout.decode().splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert set(rows) == {"bwrap", "docker", "gvisor"}
    expected = {t: ("yes" if manager.available(t)[0] else "no") for t in rows}
    assert rows == expected
    assert r.returncode == (0 if all(v == "yes" for v in rows.values()) else 1)


@pytest.mark.sandbox
def test_run_passes_output_and_exit_code(tier: str) -> None:
    r = symbi("sandbox", "run", "--tier", tier, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 5")
    assert r.returncode == 5
    assert r.stdout == b"out\n"
    assert b"err\n" in r.stderr


@pytest.mark.sandbox
def test_run_limit_kill_exits_1(tier: str) -> None:
    r = symbi("sandbox", "run", "--tier", tier, "--timeout", "1s", "--", "/bin/sh", "-c", "while :; do :; done")
    assert r.returncode == 1
    assert b"timeout" in r.stderr


@pytest.mark.sandbox
def test_run_stdin_and_memory_option(manager: SandboxManager) -> None:
    from .conftest import require_tier

    require_tier(manager, "bwrap")
    r = symbi("sandbox", "run", "--tier", "bwrap", "--stdin", "--", "tr", "a-z", "A-Z", stdin=b"abc")
    assert (r.returncode, r.stdout) == (0, b"ABC")
    r = symbi("sandbox", "run", "--tier", "bwrap", "--memory", "64m", "--",
              "/usr/bin/python3", "-c", "x = bytearray(300 * 2**20)")
    assert r.returncode == 1 and b"memory" in r.stderr


def test_usage_errors() -> None:
    assert symbi("sandbox", "run", "--tier", "bwrap").returncode == 2  # no command
    assert symbi("sandbox", "run", "--tier", "chroot", "--", "true").returncode == 2
    assert symbi("sandbox", "run", "--tier", "bwrap", "--memory", "lots", "--", "true").returncode == 2


@pytest.mark.sandbox
def test_cleanup_runs(manager: SandboxManager) -> None:
    r = symbi("sandbox", "cleanup")
    assert r.returncode == 0
    assert b"leftover(s) removed" in r.stdout
