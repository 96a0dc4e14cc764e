"""Configuration text that is not valid UTF-8 is a ``ConfigError`` naming where, not a crash.

The environment is decoded with ``surrogateescape`` (``SYMBI_DATA_DIR``, a ``${VAR}`` in a
server's command, args, env or headers), so its undecodable bytes arrive as lone surrogates,
which no log line, audit record or HTTP header can hold (gateway/textcheck.py). A config file
that is not UTF-8 used to end ``symbi`` with a ``UnicodeDecodeError`` traceback.
Each runs the real CLI (``symbi config check``: exit 2, one line naming the key).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.cli import EXIT_USAGE
from tests.conftest import ROOT, symbi_env, write_config


def _check(cfg: Path, **env: bytes) -> subprocess.CompletedProcess[bytes]:
    environ: dict[str, str | bytes] = {**symbi_env(), **env}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
        env=environ,  # POSIX takes bytes values (os.fsencode)
    )


def _server(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        f"""
        [servers.mut]
        command = "{sys.executable}"
        args = ["-c", "pass", "${{ODD}}"]
        """,
    )


def test_a_data_dir_from_the_environment_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    cfg = _server(tmp_path)
    assert _check(cfg, ODD=b"fine").returncode == 0
    out = _check(cfg, ODD=b"fine", SYMBI_DATA_DIR=os.fsencode(str(tmp_path)) + b"/d\xff")
    assert out.returncode == EXIT_USAGE
    assert b"/gateway/data_dir" in out.stderr and b"Traceback" not in out.stderr


def test_a_reference_to_an_environment_value_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    out = _check(_server(tmp_path), ODD=b"\xed\xa0\x80")
    assert out.returncode == EXIT_USAGE
    assert b"/servers/mut/args/2" in out.stderr and b"Traceback" not in out.stderr


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "")
    cfg.write_bytes(cfg.read_bytes() + b"\n# caf\xe9 \xff\n")
    out = _check(cfg)
    assert out.returncode == EXIT_USAGE and b"Traceback" not in out.stderr
    cfg.write_text('[gateway]\nlog_level = "\\ud800"\n')
    out = _check(cfg)
    assert out.returncode == EXIT_USAGE and b"Traceback" not in out.stderr  # tomllib refuses the escape
