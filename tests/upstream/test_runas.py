"""Attack: a malicious stdio upstream (tests/peers/thief_server.py) goes after the gateway.

Unsandboxed upstreams run as the unprivileged ``symbi-upstream`` user (gateway/upstream/runas.py):
the signing key, API keys, data dir, audit log, /etc/shadow and the gateway process itself are
out of its reach, and the audit log still verifies against the pinned key afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.config import build_config, load_config
from gateway.errors import ConfigError, UpstreamUnavailable
from gateway.upstream.runas import RunAs, check_launchable, resolve_run_as
from tests.conftest import ROOT, SYMBI, mutable_config, parent_of, symbi_env, write_config
from tests.server._clients import stdio_session
from tests.upstream.test_restart import pids_running

pytestmark = pytest.mark.anyio
THIEF = ROOT / "tests/peers/thief_server.py"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs a root gateway")


def assert_the_thief_got_nothing(report: dict[str, Any]) -> None:
    """tests/peers/thief_server.py's report: it ran as no root, saw no SYMBI_ variable (but the
    tests' own), and every secret it tried was denied."""
    assert report["uid"] != 0 and report["euid"] != 0
    assert not [k for k in report["env"] if k.startswith("SYMBI_") and not k.startswith("SYMBI_TEST_")]
    assert report.pop("inherited_fds") == {}  # no descriptor of the gateway's (a key, the log, a socket)
    stolen = {k: v for k, v in report.items() if isinstance(v, str) and not v.startswith("denied: ")}
    assert stolen == {}, stolen


def thief_config(tmp_path: Path, extra: str = "") -> Path:
    data = tmp_path / "data"
    cfg = write_config(
        tmp_path,
        f"""
        [servers.thief]
        command = "{sys.executable}"
        args = ["{THIEF}"]
        verification = "warn"
        env = {{ SYMBI_TEST_DATA_DIR = "{data}", SYMBI_TEST_CONFIG = "{tmp_path / "symbi.toml"}", PYTHONPATH = "{ROOT}" }}
        """
        + extra,
    )
    cfg.chmod(0o644)  # as a checkout leaves it: the gateway takes others' access at start
    return cfg


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYMBI), "audit", *args],
        capture_output=True,
        text=True,
        env=symbi_env(),
        timeout=120,
        check=False,
    )


@needs_root
async def test_a_malicious_upstream_cannot_reach_keys_data_or_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # an old install's permissions: the gateway tightens them
    (data / "api-keys.json").write_text("{}")
    (data / "api-keys.json").chmod(0o644)
    cfg = thief_config(tmp_path)
    async with stdio_session(cfg) as s:
        r = await s.call_tool("thief__steal", {})
        assert not r.is_error, r
        report = json.loads(r.content[0].text)  # type: ignore[union-attr]

    assert_the_thief_got_nothing(report)
    assert report["audit_key"] == "denied: PermissionError"
    assert report["config"] == "denied: PermissionError"  # made o-rwx at start

    # item 3: the data dir and everything in it are private now
    assert data.stat().st_mode & 0o777 == 0o700
    private = [
        f for f in data.iterdir() if f.name.startswith(("audit", "api-keys")) and ".pub." not in f.name
    ]
    assert {"audit.db", "audit-key.pem", "api-keys.json"} <= {f.name for f in private}
    for f in private:  # the log, its WAL and anchors, the keys: 0600 (public keys may be read)
        assert f.stat().st_mode & 0o077 == 0, f
    # and the log it could not touch verifies (the steal call is in it)
    res = await anyio.to_thread.run_sync(audit_cli, "verify", "--config", str(cfg), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    query = await anyio.to_thread.run_sync(
        audit_cli, "query", "--config", str(cfg), "--tool", "thief__steal", "--json"
    )
    assert query.returncode == 0 and "thief__steal" in query.stdout


@needs_root
def test_upstream_user_is_never_root_or_the_gateway(tmp_path: Path) -> None:
    for spec in ("0", "0:0", "root"):
        with pytest.raises(ConfigError):
            resolve_run_as(build_config({"security": {"upstream_user": spec}}))
    with pytest.raises(ConfigError):
        resolve_run_as(build_config({"security": {"upstream_user": "no-such-user-here"}}))
    run_as = resolve_run_as(build_config({}))
    assert run_as is not None and run_as.uid != 0 and run_as.name == "symbi-upstream"


@needs_root
def test_an_unreachable_command_is_refused_with_its_path(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    script = private / "server.py"
    script.write_text("print(1)\n")
    cfg = load_config(write_config(tmp_path, f'[servers.x]\ncommand = "{script}"\n'))
    run_as = resolve_run_as(cfg)
    assert isinstance(run_as, RunAs)
    with pytest.raises(UpstreamUnavailable) as e:
        check_launchable("x", cfg.servers["x"], run_as)
    assert str(script) in e.value.message


def test_the_unsafe_switch_runs_as_the_gateway(tmp_path: Path) -> None:
    cfg = build_config({"security": {"unsafe_upstreams_as_gateway_user": True}})
    assert resolve_run_as(cfg) is None


def test_setpriv_argv_and_clean_env() -> None:
    r = RunAs(name="u", uid=1234, gid=1234, home="/", max_tasks=99, scratch_mb=7)
    cmd, args = r.argv("srv", "node", ["x.js"])
    assert cmd.endswith("prlimit") and args[:2] == ["--nproc=99:99", "--"]
    assert args[2].endswith("choom") and args[3:6] == ["-n", "1000", "--"]
    # the Landlock launcher (as root, nothing of the gateway's site imported), then setpriv
    home = "/servers/srv"
    assert args[6:13] == [
        sys.executable,
        "-I",
        "-S",
        str(ROOT / "gateway/upstream/confine.py"),
        "/",
        home,
        "7",
    ]
    assert args[13] == "--" and args[14].endswith("setpriv")
    args = args[15:]  # setpriv's own
    assert "--no-new-privs" in args and "--bounding-set=-all" in args
    assert args.index("--pdeathsig=KILL") < args.index("--")  # dies with the gateway
    assert args[args.index("--") + 1].endswith("/node")
    env = r.env("srv", {"TOKEN": "t"})
    assert env["HOME"] == home and env["TMPDIR"] == f"{home}/tmp" and env["TOKEN"] == "t"
    assert not {k for k in env if k.startswith("SYMBI_")}
    unconfined = replace(r, confine=False)
    assert unconfined.argv("srv", "node", [])[1][6].endswith("setpriv")


@needs_root
def test_working_folder_is_the_config_folder_only_when_the_upstream_user_may_enter_it(tmp_path: Path) -> None:
    from gateway.upstream.runas import working_folder

    folder = tmp_path / "cfg"
    folder.mkdir(mode=0o755)
    cfg = load_config(write_config(folder, '[servers.x]\ncommand = "/bin/true"\n'))
    run_as = resolve_run_as(cfg)
    assert run_as is not None
    assert working_folder("x", cfg.servers["x"], cfg.config_dir, run_as) == folder
    folder.chmod(0o700)  # a private config folder (a 0700 home): the server starts in its own home
    run_as.make_home("x")  # as the launch does, before it asks
    home = working_folder("x", cfg.servers["x"], cfg.config_dir, run_as)
    assert home == Path(run_as.home) / "servers/x" and home.stat().st_uid == run_as.uid
    explicit = load_config(write_config(folder, f'[servers.x]\ncommand = "/bin/true"\ncwd = "{tmp_path}"\n'))
    assert working_folder("x", explicit.servers["x"], explicit.config_dir, run_as) == tmp_path


@needs_root
async def test_an_upstream_dies_with_a_gateway_killed_outright(tmp_path: Path) -> None:
    """Attack (on containment): a stdio server that stops reading its stdin (here: its event
    loop blocked by ``wedge``) outlived a gateway killed with SIGKILL: no EOF reached it and
    nobody was left to stop it, still running as the upstream user. Started through setpriv
    ``--pdeathsig=KILL``, it is killed with the gateway."""
    cfg = mutable_config(tmp_path, "[mcp]\ncall_timeout_s = 60\n", copy_as="orphan_copy.py")
    script = tmp_path / "orphan_copy.py"  # a unique path: this test's process only
    upstream = 0
    with contextlib.suppress(Exception):  # the client's side ends with its gateway
        async with stdio_session(cfg) as s, anyio.create_task_group() as tg:
            [upstream] = pids_running(script)
            tg.start_soon(s.call_tool, "mut__wedge", {})
            await anyio.sleep(1.0)  # the server's loop is blocked: it reads nothing now
            os.kill(parent_of(upstream), signal.SIGKILL)  # the gateway (setpriv exec'd the server)
            await anyio.sleep(30)  # the session ends with the gateway before this does
    assert upstream
    for _ in range(100):  # the bound of the wait (10 s), not a timing assertion
        if not pids_running(script):
            break
        await anyio.sleep(0.1)
    left = pids_running(script)
    for pid in left:  # a failing run leaves no orphan behind it
        os.kill(pid, signal.SIGKILL)
    assert not left


FORKER = ROOT / "tests/peers/forker_server.py"


@needs_root
async def test_an_upstream_that_forks_without_end_stops_at_its_task_limit(tmp_path: Path) -> None:
    """Attack (on the machine the gateway runs on): an unsandboxed upstream starts tasks
    without end (threads here, which count as processes do). Its user's tasks stop at
    security.upstream_max_tasks (prlimit's RLIMIT_NPROC), not at the machine's limit.

    The limit is per user, so this test's upstream runs as a uid of its own (other tests'
    upstreams, as symbi-upstream, would count too) with Debian's python3 (the venv's may sit
    in a folder only symbi-upstream may enter)."""
    uid = 30000 + os.getpid() % 20000
    cfg = write_config(
        tmp_path,
        f"""
        [security]
        upstream_user = "{uid}:{uid}"
        upstream_max_tasks = 200
        [servers.mut]
        command = "/usr/bin/python3"
        args = ["{FORKER}"]
        verification = "warn"
        """,
    )
    try:
        async with stdio_session(cfg) as s:
            r = await s.call_tool("mut__spawn", {"n": 1000})
            assert not r.is_error, r
            made = int(r.content[0].text)  # type: ignore[union-attr]
    finally:  # the servers' homes of this test's uid (RunAs.homes_root)
        shutil.rmtree(f"/var/lib/symbi-upstream-uid{uid}", ignore_errors=True)
    assert 150 < made < 200  # its own threads (the server's main one...) count too


@needs_root
async def test_the_kernel_kills_an_upstream_before_the_gateway(tmp_path: Path) -> None:
    """Attack (on the gateway's memory): an unsandboxed upstream that takes the machine's memory
    must be what the OOM killer picks, not the gateway (oom_score_adj 1000, through choom)."""
    async with stdio_session(mutable_config(tmp_path, copy_as="oom_probe_server.py")) as s:
        await s.list_tools()
        [upstream] = pids_running(tmp_path / "oom_probe_server.py")
        assert _oom_adj(upstream) == 1000 and _oom_adj(parent_of(upstream)) < 1000  # the gateway's


def _oom_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


@needs_root
def test_a_task_limit_over_the_gateways_own_is_refused_naming_the_key() -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard process limit here to go over")
    with pytest.raises(ConfigError) as e:
        resolve_run_as(build_config({"security": {"upstream_max_tasks": hard + 1}}))
    assert "security.upstream_max_tasks" in e.value.message


@needs_root
def test_a_link_left_in_a_servers_home_gets_no_chown_of_its_target(tmp_path: Path) -> None:
    """Attack (on root, through the home it owns): a server replaces its home's ``tmp`` with a
    link to a folder of root's; at its next start the gateway, as root, made ``tmp`` the
    server's own (chown) through the link. Each step is opened without following a link."""
    user_home = tmp_path / "user"
    user_home.mkdir()
    target = tmp_path / "roots"
    target.mkdir(mode=0o755)
    r = RunAs(name="u", uid=54321, gid=54321, home=str(user_home))
    home = r.make_home("srv")
    assert home == user_home / "servers/srv" and home.stat().st_uid == 54321
    assert (user_home / "servers").stat().st_uid == 0 and (home / "tmp").stat().st_mode & 0o777 == 0o700
    (home / "tmp").rmdir()
    (home / "tmp").symlink_to(target)  # what the server can do in its own home
    with pytest.raises(UpstreamUnavailable):
        r.make_home("srv")
    assert target.stat().st_uid == 0 and target.stat().st_mode & 0o777 == 0o755


@needs_root
@pytest.mark.parametrize("abi", [1, 5])
def test_a_kernel_that_cannot_scope_signals_and_abstract_sockets_is_named_at_start(
    abi: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Landlock before ABI 6 (Linux 6.12; Debian 12 and Ubuntu 24.04 ship older) has no scopes:
    an unsandboxed upstream could signal its neighbours (one uid) and connect to every abstract
    socket of the host, with nothing said. The kernel's ABI is the one seam faked here: this
    machine's cannot be made older."""
    from gateway.upstream import runas

    monkeypatch.setattr(runas, "landlock_abi", lambda: abi)
    with caplog.at_level("WARNING", logger="symbi.upstream"):
        assert resolve_run_as(build_config({})) is not None
    assert [r for r in caplog.records if r.name == "symbi.upstream" and r.args == (abi, 6)]
    monkeypatch.setattr(runas, "landlock_abi", lambda: 6)
    caplog.clear()
    with caplog.at_level("WARNING", logger="symbi.upstream"):
        resolve_run_as(build_config({}))
    assert not [r for r in caplog.records if r.name == "symbi.upstream"]
    monkeypatch.setattr(runas, "landlock_abi", lambda: 0)
    with pytest.raises(ConfigError):
        resolve_run_as(build_config({}))
