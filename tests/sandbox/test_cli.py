"""``symbi sandbox run|doctor|cleanup``: one real ``symbi`` process, the rest through
``gateway.cli.main`` in-process (same code path, without paying the CLI's import time)."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys

import pytest

from gateway.cli import main
from gateway.cli.sandbox_cmd import parse_memory_mb, parse_seconds
from gateway.sandbox import SandboxManager

from .conftest import ROOT, require_tier


def test_parsers() -> None:
    assert parse_memory_mb("256m") == 256 and parse_memory_mb("1g") == 1024 and parse_memory_mb("64") == 64
    assert parse_seconds("10s") == 10 and parse_seconds("500ms") == 0.5 and parse_seconds("2m") == 120
    for bad in ("lots", "-1m", "1t", "8m"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_memory_mb(bad)


@pytest.mark.sandbox
def test_real_symbi_process_runs_and_passes_the_exit_code(manager: SandboxManager) -> None:
    require_tier(manager, "bwrap")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "sandbox",
            "run",
            "--tier",
            "bwrap",
            "--",
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; exit 5",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert (r.returncode, r.stdout) == (5, b"out\n")
    assert b"err\n" in r.stderr


@pytest.mark.sandbox
def test_doctor_table(manager: SandboxManager, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["sandbox", "doctor"])
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert set(rows) == {"bwrap", "docker", "gvisor"}
    expected = {t: ("yes" if manager.available(t)[0] else "no") for t in rows}
    assert rows == expected
    assert rc == (0 if all(v == "yes" for v in rows.values()) else 1)


@pytest.mark.sandbox
def test_run_passes_output_and_exit_code(tier: str, capfd: pytest.CaptureFixture[str]) -> None:
    rc = main(["sandbox", "run", "--tier", tier, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 5"])
    out, err = capfd.readouterr()
    assert rc == 5
    assert out == "out\n"
    assert "err\n" in err


@pytest.mark.sandbox
def test_run_limit_kill_exits_1(tier: str, capfd: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["sandbox", "run", "--tier", tier, "--timeout", "1s", "--", "/bin/sh", "-c", "while :; do :; done"]
    )
    assert rc == 1
    assert "timeout" in capfd.readouterr().err


@pytest.mark.sandbox
def test_run_stdin_and_memory_option(
    manager: SandboxManager, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tier(manager, "bwrap")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"abc")))
    assert main(["sandbox", "run", "--tier", "bwrap", "--stdin", "--", "tr", "a-z", "A-Z"]) == 0
    assert capfd.readouterr().out == "ABC"
    rc = main(
        [
            "sandbox",
            "run",
            "--tier",
            "bwrap",
            "--memory",
            "64m",
            "--",
            "/usr/bin/python3",
            "-c",
            "x = bytearray(300 * 2**20)",
        ]
    )
    assert rc == 1 and "memory" in capfd.readouterr().err


def test_usage_errors() -> None:
    assert main(["sandbox", "run", "--tier", "bwrap"]) == 2  # no command
    for argv in (
        ["sandbox", "run", "--tier", "chroot", "--", "true"],
        ["sandbox", "run", "--tier", "bwrap", "--memory", "lots", "--", "true"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


@pytest.mark.sandbox
def test_cleanup_runs(manager: SandboxManager, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandbox", "cleanup"]) == 0
    assert "leftover(s) removed" in capsys.readouterr().out
