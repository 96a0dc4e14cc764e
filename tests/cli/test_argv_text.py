"""An argument that is not valid UTF-8 is refused before any command runs.

Python decodes argv with ``surrogateescape``: ``symbi keys create --principal $'\\xff'`` used to
store a key for the principal ``"\\udcff"``, a name no audit record, log line or agent id can
hold (gateway/textcheck.py). The CLI now refuses it (usage error) and writes nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_USAGE
from tests.conftest import ROOT, symbi_env, write_config


def _symbi(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
        env=symbi_env(),
    )


@pytest.mark.parametrize(
    "principal",
    [b"\xff", b"dana\xed\xa0\x80", b"\x80x"],
    ids=["lone-byte", "encoded-surrogate", "continuation"],
)
def test_a_key_for_a_principal_that_is_not_utf8_is_refused(tmp_path: Path, principal: bytes) -> None:
    cfg = write_config(tmp_path, "")
    keys = tmp_path / "data" / "api-keys.json"
    made = _symbi("keys", "create", "--config", str(cfg), "--principal", principal, "--roles", "developer")
    assert made.returncode == EXIT_USAGE
    assert not keys.exists()
    ok = _symbi("keys", "create", "--config", str(cfg), "--principal", "dana", "--roles", "developer")
    assert ok.returncode == 0 and keys.exists()
    listed = _symbi("keys", "list", "--config", str(cfg), "--json")
    assert listed.returncode == 0 and b"dana" in listed.stdout and b"\\udc" not in listed.stdout
