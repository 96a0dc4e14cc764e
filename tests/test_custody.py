"""Custody of the gateway's files (gateway/custody.py): trusted inputs another user could change
refuse the start (reloads: tests/policy/test_reload_custody.py)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.custody import (
    check_trusted_files,
    private_config,
    private_secret,
    readable_config,
    writable_by_others,
)
from gateway.errors import ConfigError
from tests.conftest import POLICY, run_symbi, write_config


def private_folder(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    return d


def test_a_config_others_can_write_refuses_to_start(tmp_path: Path) -> None:
    cfg = write_config(private_folder(tmp_path), "")
    cfg.chmod(0o666)
    with pytest.raises(ConfigError) as e:
        check_trusted_files(load_config(cfg))
    assert str(cfg) in e.value.message
    # the CLI: exit 2, the path named, nothing started
    for argv in (["mcp", "--config", str(cfg)], ["config", "check", "--config", str(cfg)]):
        r = run_symbi(*argv)
        assert r.returncode == 2 and str(cfg) in r.stderr, (argv, r.stderr)


def test_a_folder_others_can_write_refuses_to_start(tmp_path: Path) -> None:
    folder = private_folder(tmp_path)
    cfg = write_config(folder, "")
    folder.chmod(0o777)  # not sticky: anyone could swap the file
    with pytest.raises(ConfigError) as e:
        check_trusted_files(load_config(cfg))
    assert str(folder) in e.value.message
    folder.chmod(0o1777)  # sticky (like /tmp): others cannot rename our file
    check_trusted_files(load_config(cfg))


def test_policy_data_and_policy_tests_others_can_write_refuse_to_start(tmp_path: Path) -> None:
    folder = private_folder(tmp_path)
    policy = folder / "policies.rego"
    policy.write_text(POLICY.read_text())
    (folder / "policies").mkdir()
    data = folder / "policies" / "data.json"
    data.write_text((POLICY.parent / "policies" / "data.json").read_text())
    test = folder / "policies" / "policies_test.rego"
    test.write_text((POLICY.parent / "policies" / "policies_test.rego").read_text())
    cfg = write_config(folder, f'[policy]\npath = "{policy}"\n')
    check_trusted_files(load_config(cfg))
    for f in (data, test, policy):
        f.chmod(0o664)
        with pytest.raises(ConfigError) as e:
            check_trusted_files(load_config(cfg))
        assert str(f) in e.value.message
        f.chmod(0o644)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_file_owned_by_another_user_is_not_trusted(tmp_path: Path) -> None:
    cfg = write_config(private_folder(tmp_path), "")
    other = pwd.getpwnam("nobody")
    os.chown(cfg, other.pw_uid, other.pw_gid)
    assert writable_by_others(cfg) is not None
    with pytest.raises(ConfigError):
        check_trusted_files(load_config(cfg))


def test_a_link_into_a_folder_others_can_write_refuses_to_start(tmp_path: Path) -> None:
    """The data path is a link (in a private folder) to a file of ours in a folder anyone can
    write: whoever can rename entries there can point the data at another file."""
    folder = private_folder(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = shared / "data.json"
    target.write_text((POLICY.parent / "policies" / "data.json").read_text())
    target.chmod(0o644)
    (folder / "data.json").symlink_to(target)
    cfg = write_config(folder, f'[policy]\npath = "{POLICY}"\ndata = "{folder / "data.json"}"\n')
    with pytest.raises(ConfigError):
        check_trusted_files(load_config(cfg))
    r = run_symbi("config", "check", "--config", str(cfg))
    assert r.returncode == 2 and str(shared) in r.stderr, r.stderr
    shared.chmod(0o755)  # the same link into a folder only we can write is trusted
    check_trusted_files(load_config(cfg))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_link_another_user_owns_in_a_sticky_folder_is_not_trusted(tmp_path: Path) -> None:
    """In a sticky folder (like /tmp) the owner of an entry may still re-point it: a link of
    another user's leading to our file is that user's choice of file."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    ours = private_folder(tmp_path) / "data.json"
    ours.write_text("{}")
    link = sticky / "data.json"
    link.symlink_to(ours)
    assert writable_by_others(link) is None
    other = pwd.getpwnam("nobody")
    os.lchown(link, other.pw_uid, other.pw_gid)
    assert writable_by_others(link) is not None


def test_a_config_others_can_read_is_made_private_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Upstreams run as another user in the config's folder: a 0644 config (a checkout's) loses
    others' access at start, its owner and group keep theirs, and the change is said once."""
    cfg = write_config(private_folder(tmp_path), '[servers.a]\ncommand = "/bin/true"\n')
    cfg.chmod(0o644)
    config = load_config(cfg)
    assert readable_config(config) == cfg
    with caplog.at_level("WARNING", logger="symbi.custody"):
        private_config(config)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o640
    assert readable_config(config) is None
    assert [r for r in caplog.records if str(cfg) in r.getMessage()]
    caplog.clear()
    with caplog.at_level("WARNING", logger="symbi.custody"):
        private_config(config)  # already private: nothing to say
    assert not caplog.records
    # `symbi config check` changes nothing and says what the start will do
    cfg.chmod(0o644)
    r = run_symbi("config", "check", "--config", str(cfg))
    assert r.returncode == 0 and str(cfg) in r.stdout, r.stdout + r.stderr
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o644


def test_processes_starting_together_read_one_whole_secret(tmp_path: Path) -> None:
    """Two gateways started at once on one fresh data dir (stdio clients each launch one): the
    second must not read the first's secret half-written (it refused to start: "must be 32
    bytes"), and both must end up with the same one. The first is made slow between creating
    the secret and writing it (its ``os.write`` sleeps), which is the window that was hit."""
    import sys

    code = (
        "import os, sys, time\nfrom pathlib import Path\nfrom gateway.custody import private_secret\n"
        "if sys.argv[2] == 'slow':\n"
        "    w = os.write\n"
        "    os.write = lambda fd, b: (time.sleep(3), w(fd, b))[1]\n"
        "    Path(sys.argv[3]).touch()\n"
        "sys.stdout.write(private_secret(Path(sys.argv[1]), 'test secret').hex())\n"
    )
    path, started = tmp_path / "data" / "secret", tmp_path / "started"

    def run(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    slow = run("slow", str(started))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the slow one is inside its write now
    fast = run("fast")
    outs = [p.communicate(timeout=60) for p in (slow, fast)]
    assert slow.returncode == 0 and fast.returncode == 0, [e for _, e in outs]
    assert outs[0][0] == outs[1][0] and path.read_bytes().hex() == outs[0][0].decode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temporary file left


def test_a_secret_that_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    """A data dir that cannot be made (a file where its folder should be: refused even to
    root): making the secret let a raw OS error out, not the project's ``ConfigError``."""
    blocker = tmp_path / "file"
    blocker.touch()
    with pytest.raises(ConfigError):
        private_secret(blocker / "data" / "secret", "test secret")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # nothing made beside it
