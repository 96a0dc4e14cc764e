"""Attack: one unsandboxed upstream goes after another running as the same user.

Both run as ``symbi-upstream`` (gateway/upstream/runas.py): by uid alone the thief could read
the victim's environment (its tokens), open its memory, ptrace it, signal it, read and
rewrite the files in its home, and read what the victim left in ``/tmp``, ``/var/tmp``,
``/dev/shm`` and System V shared memory (0600 or not: same uid). Each runs in a Landlock
domain of its own with private scratch folders and IPC (gateway/upstream/confine.py); the same
attack with ``security.unsafe_upstreams_unconfined`` succeeds, which shows the confinement is
what stops it. An upstream that fills the scratch folders (disk, or memory no process holds)
stops at ``security.upstream_scratch_mb``, and nothing of it is left on the host.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from gateway.config import build_config
from gateway.errors import ConfigError
from gateway.upstream import confine, runas
from gateway.upstream.confine import handled_rights, landlock_abi, rules
from tests.conftest import EVERYTHING_JS, NODE_MODULES, ROOT, write_config
from tests.server._clients import stdio_session
from tests.upstream.test_runas import THIEF, needs_root

THIEF_SHM_KEY = 0x53594D42  # tests/peers/thief_server.py's SHM_KEY

pytestmark = pytest.mark.anyio
needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="the kernel has no Landlock")


def on_host(*paths: str) -> list[str]:
    """Those of ``paths`` this (the host's) mount namespace has."""
    return [p for p in paths if os.path.exists(p)]


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


def victim_pid(marker: str) -> int:
    """The victim's pid, found by root (a confined thief cannot see it: its own /proc)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                return int(entry)
    raise AssertionError(f"no process with {marker!r} on its command line")


async def steal_from_neighbour(cfg: Path, marker: str) -> dict[str, Any]:
    async with stdio_session(cfg) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"victim__steal", "thief__steal_neighbour"} <= names  # both upstreams are up
        r = await s.call_tool("thief__steal_neighbour", {"pid": victim_pid(marker)})
        assert not r.is_error, r
        report: dict[str, Any] = json.loads(r.content[0].text)  # type: ignore[union-attr]
        return report


@needs_root
@needs_landlock
async def test_an_upstream_cannot_reach_another_running_as_the_same_user(tmp_path: Path) -> None:
    report = await steal_from_neighbour(neighbours_config(tmp_path), f"victim-{tmp_path.name}")
    assert report["found"] > 0 and report["own_home"].startswith("ok")  # it ran, in its own home
    assert report["listed"] is False  # its /proc shows no process of another domain
    for attempt in ("environ", "mem"):  # not even there in its /proc
        assert report[attempt] == "denied: FileNotFoundError", (attempt, report[attempt])
    for attempt in ("ptrace", "home_read", "home_write"):
        assert report[attempt] == "denied: PermissionError", (attempt, report[attempt])
    for attempt in ("sysv_shm", "read /tmp", "read /var/tmp", "read /dev/shm"):  # not there: its own
        assert report[attempt] == "denied: FileNotFoundError", (attempt, report[attempt])
    victim = f"victim-{tmp_path.name}.txt"
    assert not on_host(*(os.path.join(f, victim) for f in ("/tmp", "/var/tmp", "/dev/shm")))
    if landlock_abi() >= 6:  # signals are scoped to the domain from ABI 6 on
        assert report["signal"] == "denied: PermissionError"


@needs_root
async def test_without_the_domain_the_same_attack_gets_everything(tmp_path: Path) -> None:
    report = await steal_from_neighbour(neighbours_config(tmp_path, unsafe=True), f"victim-{tmp_path.name}")
    try:
        assert "victims-token" in report["environ"]
        assert report["home_read"] == "ok: victims-file"
        for attempt in ("read /tmp", "read /var/tmp", "read /dev/shm"):
            assert report[attempt] == "ok: victims-file", (attempt, report[attempt])
        assert report["sysv_shm"] == "ok: b'victims-file'"
        for attempt in ("mem", "ptrace", "signal", "home_write"):
            assert report[attempt].startswith("ok"), (attempt, report[attempt])
    finally:  # what the victim left on the host's scratch folders
        for folder in ("/tmp", "/var/tmp", "/dev/shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(folder, f"victim-{tmp_path.name}.txt"))
        subprocess.run(["ipcrm", "-M", str(THIEF_SHM_KEY)], capture_output=True, check=False)


def fill_config(tmp_path: Path, scratch_mb: int) -> Path:
    return write_config(
        tmp_path,
        f"""
        [security]
        upstream_scratch_mb = {scratch_mb}
        [servers.thief]
        command = "{sys.executable}"
        args = ["{THIEF}"]
        verification = "warn"
        env = {{ PYTHONPATH = "{ROOT}" }}
        """,
    )


@needs_root
@needs_landlock
async def test_an_upstream_filling_the_scratch_folders_stops_at_its_limit(tmp_path: Path) -> None:
    async with stdio_session(fill_config(tmp_path, 8)) as s:
        for folder in ("/tmp", "/var/tmp", "/dev/shm"):
            r = await s.call_tool("thief__fill", {"folder": folder, "mb": 12})
            assert not r.is_error, r
            got = json.loads(r.content[0].text)  # type: ignore[union-attr]
            # one tmpfs behind all three: the first fills it, the others find it full
            assert got["mb"] <= 8 and got["stopped"] == f"OSError: errno {errno.ENOSPC}", (folder, got)
            assert not on_host(got["path"])  # on its tmpfs, never the host's folder
        r = await s.call_tool("thief__scratch_files", {"prefix": "fill-"})
        seen = json.loads(r.content[0].text)  # type: ignore[union-attr]
        assert all(len(names) == 1 for names in seen.values()), seen  # each its own folder


@needs_root
def test_the_scratch_limit_is_validated() -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"security": {"upstream_scratch_mb": 0}})
    assert "upstream_scratch_mb" in e.value.message
    assert runas.resolve_run_as(build_config({"security": {"upstream_scratch_mb": 5}})).scratch_mb == 5  # type: ignore[union-attr]


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


@pytest.mark.parametrize(
    "argv", [["/x", "/x/y"], ["/x", "/x/y", "--", "true"], ["/x", "/x/y", "0", "--", "true"]]
)
def test_the_launcher_refuses_a_bad_command_line(argv: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-I", "-S", str(Path(confine.__file__)), *argv],
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
    fd, host = tempfile.mkstemp(prefix="symbi-test-host-", dir="/tmp")  # a file the host has in /tmp
    os.write(fd, b"host")
    os.close(fd)
    os.chmod(host, 0o644)
    try:
        script = (
            f"open('{hidden}/own/f', 'w').write('1'); "
            f"assert open('{host}').read() == 'host'; "  # the host's /tmp is read as before
            f"open('{host}', 'w').write('private'); "  # written to its own layer
            f"assert open('{host}').read() == 'private'; "
            f"open('{hidden}/other/secret').read()"
        )
        r = subprocess.run(
            [
                sys.executable,
                "-I",
                "-S",
                confine.__file__,
                str(hidden),
                str(hidden / "own"),
                "4",
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
        assert r.returncode == 1 and "PermissionError" in r.stderr, r.stderr  # even as root: the domain holds
        assert (hidden / "own/f").read_text() == "1"
        assert Path(host).read_text() == "host"
    finally:
        os.unlink(host)


@needs_root
@needs_landlock
async def test_an_upstream_sees_no_process_of_another_user(tmp_path: Path) -> None:
    """Attack: an unsandboxed upstream reads ``/proc/PID/cmdline`` of every process on the
    host (any user may), here a token given to a sandboxed server on its command line
    (``servers.victim.args``: bwrap's, run as 65534), and the gateway's own (root's). Its
    mount namespace now has a ``/proc`` of its own with ``hidepid=2``: only the processes of
    its own user are there."""
    token = f"victim-token-{os.urandom(8).hex()}"
    cfg = write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [servers.victim]
        command = "/usr/bin/node"
        args = ["{EVERYTHING_JS.resolve()}", "stdio", "--token={token}"]
        cwd = "{NODE_MODULES.resolve().parent}"
        sandbox = "bwrap"
        verification = "warn"
        [servers.thief]
        command = "{sys.executable}"
        args = ["{THIEF}"]
        verification = "warn"
        env = {{ PYTHONPATH = "{ROOT}" }}
        """,
    )
    async with stdio_session(cfg) as s:
        assert not (await s.call_tool("victim__echo", {"message": "up"})).is_error  # it runs
        r = await s.call_tool("thief__command_lines", {"needle": token})
        assert not r.is_error, r
        report = json.loads(r.content[0].text)  # type: ignore[union-attr]
        gateway = json.loads(
            (await s.call_tool("thief__command_lines", {"needle": str(cfg)})).content[0].text  # type: ignore[union-attr]
        )
    assert report["scanned"] > 0  # its own processes at least
    assert report["found"] == [], report["found"]
    assert gateway["found"] == [], gateway["found"]  # the gateway's `symbi mcp --config ...`
