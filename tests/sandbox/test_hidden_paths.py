"""Attack: a sandboxed upstream whose files live in the config folder (so that folder is bound
into the sandbox) looks for the gateway's data dir, keys and config. In every tier they are
masked: an empty folder and an empty file, never the gateway's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.errors import SandboxUnavailable
from gateway.sandbox.base import masked_paths
from tests.conftest import ROOT, write_config
from tests.server._clients import stdio_session

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]
PROBE = ROOT / "tests/peers/probe_server.py"


def probe_config(tmp_path: Path, tier: str, extra: str = "") -> Path:
    tmp_path.chmod(0o755)  # the sandbox's uid 65534 may list the config folder
    script = tmp_path / "probe_server.py"  # beside the config: its folder is bound into the sandbox
    shutil.copy(PROBE, script)
    script.chmod(0o644)
    cfg = write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [servers.probe]
        command = "/usr/bin/python3"
        args = ["{script}"]
        cwd = "{tmp_path}"
        sandbox = "{tier}"
        verification = "warn"
        {extra}
        """,
    )
    cfg.chmod(0o644)  # even a config others may read is not shown
    return cfg


@pytest.mark.parametrize("tier", ["bwrap", "docker", "gvisor"])
async def test_data_dir_keys_and_config_are_never_visible_in_a_sandbox(tmp_path: Path, tier: str) -> None:
    cfg = probe_config(tmp_path, tier)
    data = tmp_path / "data"
    async with stdio_session(cfg) as s:
        assert (data / "audit-key.pem").exists()  # the gateway made its data dir and key
        targets = [str(tmp_path), str(data), str(data / "audit-key.pem"), str(data / "audit.db"), str(cfg)]
        r = await s.call_tool("probe__probe", {"paths": targets})
        assert not r.is_error, r
        seen = json.loads(r.content[0].text)  # type: ignore[union-attr]

    assert "probe_server.py" in seen[str(tmp_path)]["entries"]  # the bound folder is there...
    # ...but the data dir inside it is a fresh, empty tmpfs (runc gives it the folder's 0700 mode)
    assert str(data) in seen["mounts"]
    assert seen[str(data)] in ({"entries": []}, "error: PermissionError"), seen[str(data)]
    for f in (data / "audit-key.pem", data / "audit.db"):
        assert seen[str(f)] in ("absent", "error: PermissionError"), seen[str(f)]
    # /dev/null over the config: empty, or not even openable (a device node on a nodev mount)
    assert str(cfg) in seen["mounts"]
    assert seen[str(cfg)] in ({"bytes": ""}, "error: PermissionError"), seen[str(cfg)]


async def test_an_audit_archive_dir_outside_the_data_dir_is_never_visible(tmp_path: Path) -> None:
    """``[audit] archive_dir`` elsewhere than the data dir (here in the bound config folder)
    holds the archived audit records: hidden like the live log."""
    archive = tmp_path / "audit-archive-elsewhere"
    archive.mkdir()
    archive.chmod(0o755)  # made by hand: the gateway's start makes it private too
    segment = archive / "audit.db.1-9.jsonl"
    segment.write_text('{"seq": 1}\n')
    segment.chmod(0o600)
    cfg = probe_config(tmp_path, "bwrap", f'[audit]\narchive_dir = "{archive}"')
    async with stdio_session(cfg) as s:
        r = await s.call_tool("probe__probe", {"paths": [str(tmp_path), str(archive), str(segment)]})
        assert not r.is_error, r
        seen = json.loads(r.content[0].text)  # type: ignore[union-attr]
    assert "probe_server.py" in seen[str(tmp_path)]["entries"]
    assert str(archive) in seen["mounts"], seen  # masked: an empty tmpfs over it
    assert seen[str(archive)] in ({"entries": []}, "error: PermissionError"), seen[str(archive)]
    assert seen[str(segment)] in ("absent", "error: PermissionError"), seen[str(segment)]
    assert archive.stat().st_mode & 0o777 == 0o700


def test_binding_a_folder_inside_the_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    with pytest.raises(SandboxUnavailable):
        masked_paths([str(data / "sub")], [str(data)])
    with pytest.raises(SandboxUnavailable):
        masked_paths([str(data)], [str(data)])
    key = data / "audit-key.pem"
    key.write_text("k")
    assert masked_paths([str(tmp_path)], [str(data), str(key)]) == [(str(data), True)]
    cfg = tmp_path / "symbi.toml"
    cfg.write_text("")
    assert masked_paths([str(tmp_path)], [str(data), str(cfg)]) == [(str(data), True), (str(cfg), False)]
    assert masked_paths([str(tmp_path / "elsewhere")], [str(data)]) == []
