"""Attack: one unsandboxed upstream goes after another running as the same user.

Both run as ``symbi-upstream`` (gateway/upstream/runas.py): by uid alone the thief could read
the victim's environment (its tokens), open its memory, ptrace it, signal it, and read and
rewrite the files in its home. Each runs in a Landlock domain of its own
(gateway/upstream/confine.py); the same attack with ``security.unsafe_upstreams_unconfined``
succeeds, which shows the domain is what stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import build_config
from gateway.errors import ConfigError
from gateway.upstream import confine, runas
from gateway.upstream.confine import handled_rights, landlock_abi, rules
from tests.conftest import ROOT, write_config
from tests.server._clients import stdio_session
from tests.upstream.test_runas import THIEF, needs_root

pytestmark = pytest.mark.anyio
needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")


def neighbours_config(tmp_path: Path, unsafe: bool = False) -> Path:
    marker = f"victim-{tmp_path.name}"
    home = runas.resolve_run_as(build_config({})).server_home("victim")  # type: ignore[union-attr]
    env = f'PYTHONPATH = "{ROOT}"'
    cfg = write_config(
        tmp_path,
        f"""
        [security]
        unsafe_upstreams_unconfined = {str(unsafe).lower()}
        [servers.victim]
        command = "{sys.executable}"
        args = ["{THIEF}", "{marker}"]
        verification = "warn"
        env = {{ {env}, API_TOKEN = "victims-token", SYMBI_TEST_PLANT = "victims-file" }}
        [servers.thief]
        command = "{sys.executable}"
        args = ["{THIEF}"]
        verification = "warn"
        env = {{ {env}, SYMBI_TEST_NEIGHBOUR = "{marker}", SYMBI_TEST_NEIGHBOUR_HOME = "{home}" }}
        """,
    )
    return cfg


async def steal_from_neighbour(cfg: Path) -> dict[str, Any]:
    async with stdio_session(cfg) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"victim__steal", "thief__steal_neighbour"} <= names  # both upstreams are up
        r = await s.call_tool("thief__steal_neighbour", {})
        assert not r.is_error, r
        report: dict[str, Any] = json.loads(r.content[0].text)  # type: ignore[union-attr]
        return report


@needs_root
@needs_landlock
async def test_an_upstream_cannot_reach_another_running_as_the_same_user(tmp_path: Path) -> None:
    report = await steal_from_neighbour(neighbours_config(tmp_path))
    assert report["found"] > 0 and report["own_home"].startswith("ok")  # it ran, in its own home
    for attempt in ("environ", "mem", "ptrace", "home_read", "home_write"):
        assert report[attempt] == "denied: PermissionError", (attempt, report[attempt])
    if landlock_abi() >= 6:  # signals are scoped to the domain from ABI 6 on
        assert report["signal"] == "denied: PermissionError"


@needs_root
async def test_without_the_domain_the_same_attack_gets_everything(tmp_path: Path) -> None:
    report = await steal_from_neighbour(neighbours_config(tmp_path, unsafe=True))
    assert "victims-token" in report["environ"]
    assert report["home_read"] == "ok: victims-file"
    for attempt in ("mem", "ptrace", "signal", "home_write"):
        assert report[attempt].startswith("ok"), (attempt, report[attempt])


@needs_root
def test_a_kernel_without_landlock_refuses_unsandboxed_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    # the one seam faked here: this kernel has Landlock, and the check reads its ABI version
    monkeypatch.setattr(runas, "landlock_abi", lambda: 0)
    with pytest.raises(ConfigError) as e:
        runas.resolve_run_as(build_config({}))
    assert "unsafe_upstreams_unconfined" in e.value.message
    unsafe = runas.resolve_run_as(build_config({"security": {"unsafe_upstreams_unconfined": True}}))
    assert unsafe is not None and not unsafe.confine
    assert any(
        o.key == "security.unsafe_upstreams_unconfined"
        for o in build_config({"security": {"unsafe_upstreams_unconfined": True}}).unsafe_options()
    )


def test_the_rules_close_only_the_hidden_folder_but_its_one_home(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    for d in ("a/keep", "a/hidden/one", "a/hidden/two", "b"):
        (tree / d).mkdir(parents=True)
    (tree / "a/file").write_text("x")
    (tree / "a/link").symlink_to(tree / "a/hidden")
    rights = handled_rights(landlock_abi() or 1)
    got = dict(rules(str(tree / "a/hidden"), str(tree / "a/hidden/one"), rights))
    assert got[str(tree / "a/keep")] == rights and got[str(tree / "b")] == rights
    assert got[str(tree / "a/hidden/one")] == rights
    assert got[str(tree / "a/file")] == rights & confine._FILE_RIGHTS  # a file takes a file's rights
    for ancestor in ("/", str(tree), str(tree / "a")):  # listed, never written
        assert got[ancestor] == confine._READ_DIR
    assert str(tree / "a/hidden") not in got and str(tree / "a/hidden/two") not in got
    assert str(tree / "a/link") not in got  # a link into the hidden folder opens nothing


def test_the_launcher_refuses_a_bad_command_line() -> None:
    r = subprocess.run(
        [sys.executable, "-I", "-S", str(Path(confine.__file__)), "/x", "/x/y"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert r.returncode == 2 and "usage" in r.stderr


@needs_root
@needs_landlock
def test_the_launcher_confines_before_it_execs(tmp_path: Path) -> None:
    hidden = tmp_path / "homes"
    (hidden / "own").mkdir(parents=True)
    (hidden / "other").mkdir()
    (hidden / "other/secret").write_text("s")
    script = f"open('{hidden}/own/f', 'w').write('1'); open('{hidden}/other/secret').read()"
    r = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            confine.__file__,
            str(hidden),
            str(hidden / "own"),
            "--",
            "/usr/bin/python3",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert r.returncode == 1 and "PermissionError" in r.stderr  # even as root: the domain holds
    assert (hidden / "own/f").read_text() == "1"
