"""Hot reload: a good edit takes effect without restart; a broken one is refused, the old
policy stays in force, and an event says which happened."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import load_config
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from gateway.policy.watch import FileWatcher
from gateway.server.auth import ApiKeyStore
from tests.conftest import RecordingSink, symbi_audit, write_config
from tests.server._http import serve

CI_BOT_ECHO: dict[str, Any] = {
    "action": "call",
    "kind": "tools/call",
    "target": "everything__echo",
    "principal": {"id": "ci-bot", "kind": "service", "roles": [], "claims": {}, "source": "key"},
    "agent": None,
    "upstream": {"name": "everything", "domain": None, "transport": "stdio"},
    "tool": {
        "name": "everything__echo",
        "original_name": "echo",
        "upstream": "everything",
        "annotations": {},
        "verification": "unverified",
        "key_fingerprint": None,
        "code_tool": False,
    },
    "arguments": {"message": "hi"},
    "context": {
        "time": "2026-11-26T10:00:00Z",
        "unix": 0,
        "session_id": None,
        "calls_last_minute": 0,
        "calls_last_hour": 0,
    },
}


def eventually(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll until pred() holds (bounded; this is not a timing assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def bump(path: os.PathLike[str]) -> None:
    # make sure the mtime moves even on filesystems with coarse timestamps
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def watched(policy_copy: PolicyFiles) -> Any:
    sink = RecordingSink()
    eng = EmbeddedEngine(policy_copy, events=sink)
    assert eng.load()
    eng.start_watching(interval_s=0.1)
    yield eng, sink, policy_copy
    eng.close()


def grant_echo_to_ci_bot(files: PolicyFiles) -> None:
    assert files.data is not None
    data = json.loads(files.data.read_text())
    data["symbi_data"]["principals"]["keys"]["ci-bot"]["tools"].append("everything__echo")
    files.data.write_text(json.dumps(data))
    bump(files.data)


def test_good_data_change_applies_without_restart(watched: Any) -> None:
    eng, sink, files = watched
    assert eng.decide(CI_BOT_ECHO).allow is False
    grant_echo_to_ci_bot(files)
    assert eventually(lambda: eng.decide(CI_BOT_ECHO).allow)
    assert "policy.reloaded" in sink.types()


def test_good_policy_change_applies(watched: Any) -> None:
    eng, _, files = watched
    inp = {**CI_BOT_ECHO, "principal": {"id": "admin", "roles": ["admin"], "kind": "user", "claims": {}}}
    assert eng.decide(inp).allow is True
    src = files.policy.read_text()
    extra = '\ndeny contains "echo is switched off" if tool_name == "everything__echo"\n'
    files.policy.write_text(src + extra)
    bump(files.policy)
    assert eventually(lambda: not eng.decide(inp).allow)
    assert "echo is switched off" in eng.decide(inp).reasons


def test_broken_policy_is_refused_and_old_policy_stays(
    watched: Any, caplog: pytest.LogCaptureFixture
) -> None:
    eng, sink, files = watched
    before = eng.bundle
    files.policy.write_text(files.policy.read_text() + "\nbroken_rule if {\n")  # does not parse
    bump(files.policy)
    with caplog.at_level(logging.ERROR, logger="symbi.policy"):
        assert eventually(lambda: "policy.reload_refused" in sink.types())
    refused = next(d for t, d in sink.events if t == "policy.reload_refused")
    assert refused["location"].startswith(f"{files.policy}:")
    assert eng.bundle is before
    # still the old policy: the stdio principal keeps its tool, the stranger stays out
    local = {
        **CI_BOT_ECHO,
        "principal": {"id": "local", "roles": ["developer"], "kind": "user", "claims": {}, "source": "stdio"},
    }
    assert eng.decide(local).allow is True
    assert eng.decide(CI_BOT_ECHO).allow is False
    # and a later good edit is still picked up
    files.policy.write_text(files.policy.read_text().replace("\nbroken_rule if {\n", "\n"))
    grant_echo_to_ci_bot(files)
    assert eventually(lambda: eng.decide(CI_BOT_ECHO).allow)


def test_change_failing_the_policy_tests_is_refused(watched: Any) -> None:
    eng, sink, files = watched
    # an edit that opens path traversal: parses fine, but the policy's own tests fail it
    src = files.policy.read_text()
    assert 'not ".." in parts' in src
    files.policy.write_text(src.replace('not ".." in parts', "true"))
    bump(files.policy)
    assert eventually(lambda: "policy.reload_refused" in sink.types())
    traversal = {
        **CI_BOT_ECHO,
        "principal": {"id": "local", "roles": ["developer"], "kind": "user", "claims": {}, "source": "stdio"},
        "target": "fs__read_text_file",
        "upstream": {"name": "fs", "domain": None, "transport": "stdio"},
        "tool": {**CI_BOT_ECHO["tool"], "name": "fs__read_text_file", "upstream": "fs"},
        "arguments": {"path": "/srv/symbi/../../etc/shadow"},
    }
    assert eng.decide(traversal).allow is False


def test_deleted_policy_file_keeps_the_old_policy(watched: Any) -> None:
    eng, sink, files = watched
    files.policy.unlink()
    assert eventually(lambda: "policy.reload_refused" in sink.types())
    local = {
        **CI_BOT_ECHO,
        "principal": {"id": "local", "roles": ["developer"], "kind": "user", "claims": {}, "source": "stdio"},
    }
    assert eng.decide(local).allow is True


def added_failing_test(files: PolicyFiles) -> os.PathLike[str]:
    """A policy test file put beside the policy, with a test that fails whatever the policy."""
    bad = files.policy.parent / "policies" / "added_test.rego"
    bad.write_text("package symbi_added_test\n\ntest_added_fails if {\n\tfalse\n}\n")
    return bad


def test_a_failing_test_file_added_beside_the_policy_gates_every_reload(watched: Any) -> None:
    """The policy's tests are the ``*_test.rego`` files beside it now, as at a restart: one
    added while serving is a change, and a reload that fails it keeps the policy in force, good
    edits to the policy included, until the tests pass. Before, the set was fixed at start: the
    file was not watched, not run on a reload, and only the next restart ran it (and, failing,
    denied every request)."""
    eng, sink, files = watched
    before = eng.bundle
    bad = added_failing_test(files)
    assert eventually(lambda: "policy.reload_refused" in sink.types())
    refused = next(d for t, d in sink.events if t == "policy.reload_refused")
    assert refused["location"].startswith(f"{bad}:")
    assert str(bad) in [c["file"] for c in refused["changes"]]
    grant_echo_to_ci_bot(files)  # a good change, with the failing test still there
    assert eventually(lambda: sink.types().count("policy.reload_refused") == 2)
    assert eng.bundle is before and eng.decide(CI_BOT_ECHO).allow is False
    os.unlink(bad)
    assert eventually(lambda: eng.decide(CI_BOT_ECHO).allow)  # the good change, tested, in force
    assert sink.types()[-1] == "policy.reloaded"


def test_a_running_gateway_refuses_a_reload_its_new_test_file_fails(policy_copy: PolicyFiles) -> None:
    """The same on ``symbi serve``: the policy in force (``/api/policy/status``'s digest) stays
    while a failing test file sits beside it, the refusal is in the audit log naming the file,
    and once the file is gone the edit made meanwhile is put in force."""
    files = policy_copy
    folder = files.policy.parent
    cfg = write_config(
        folder,
        f'[policy]\npath = "{files.policy}"\ndata = "{files.data}"\n'
        "[sandbox]\ncode_tools = false\n[context]\nenabled = false\n",
    )
    admin, _ = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("alice", ("admin",))

    def digest(base: str) -> str:
        r = httpx.get(base + "/api/policy/status", headers={"x-api-key": admin}, timeout=10)
        return str(r.json()["digest"])

    def refusals() -> list[dict[str, Any]]:
        out = symbi_audit(cfg, "query", "--type", "policy.reload_refused", "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line)["details"] for line in out.stdout.splitlines()]

    with serve(cfg) as base:
        first = digest(base)
        bad = added_failing_test(files)
        assert eventually(lambda: bool(refusals()), timeout=30)
        assert refusals()[0]["location"].startswith(f"{bad}:")
        grant_echo_to_ci_bot(files)
        assert eventually(lambda: len(refusals()) == 2, timeout=30)
        assert digest(base) == first
        os.unlink(bad)
        assert eventually(lambda: digest(base) != first, timeout=30)


def test_a_test_file_removed_while_serving_no_longer_blocks_reloads(watched: Any) -> None:
    """Before, the removed file stayed in the fixed set: every later reload was refused
    ("cannot read policy test") until a restart, which would have loaded the edit."""
    eng, sink, files = watched
    os.unlink(files.tests[0])
    grant_echo_to_ci_bot(files)
    assert eventually(lambda: eng.decide(CI_BOT_ECHO).allow)
    assert "policy.reload_refused" not in sink.types()


# -- the watcher itself (gateway.policy.watch), on plain files --------------------------------

QUIET_S = 0.5  # ten polls at the tests' 0.05 s interval


def test_what_is_watched_is_the_policy_its_data_and_its_tests(tmp_path: Path) -> None:
    """A policy without a data file watches no data path (a None path would end the poll)."""
    policy, data, test = tmp_path / "p.rego", tmp_path / "d.json", tmp_path / "p_test.rego"
    assert PolicyFiles(policy).watched() == (policy,)
    assert PolicyFiles(policy, data, (test,)).watched() == (policy, data, test)


def _started(watcher: FileWatcher) -> threading.Thread:
    """Start ``watcher``; its thread (the one thread the start added)."""
    before = set(threading.enumerate())
    watcher.start()
    [thread] = set(threading.enumerate()) - before
    return thread


def test_the_watcher_calls_back_once_per_change_and_never_without_one(tmp_path: Path) -> None:
    """Unchanged files for ten polls: no call (nor a stop of the watching); a change: one call
    (the settled stamps are kept); a removed file and one that appears are changes too; after
    stop, none. Its thread is a daemon: an engine never closed does not hold the process."""
    a, b = tmp_path / "a.rego", tmp_path / "b.json"
    a.write_text("1")
    b.write_text("1")
    calls: list[float] = []
    FileWatcher([a, b], lambda: calls.append(time.monotonic())).stop()  # never started: a no-op
    watcher = FileWatcher([a, b], lambda: calls.append(time.monotonic()), interval_s=0.05)
    thread = _started(watcher)
    try:
        assert thread.daemon
        time.sleep(QUIET_S)
        assert calls == []
        bump(b)
        assert eventually(lambda: len(calls) == 1)
        time.sleep(QUIET_S)
        assert len(calls) == 1
        b.unlink()
        assert eventually(lambda: len(calls) == 2)
        b.write_text("2")
        assert eventually(lambda: len(calls) == 3)
    finally:
        watcher.stop()
    assert not thread.is_alive()
    bump(a)
    time.sleep(QUIET_S)
    assert len(calls) == 3


def test_a_failing_callback_is_logged_and_the_watcher_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "p.rego"
    f.write_text("1")
    calls: list[int] = []

    def on_change() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the first reload fails")

    watcher = FileWatcher([f], on_change, interval_s=0.05)
    with caplog.at_level(logging.ERROR, logger="symbi.policy"):
        _started(watcher)
        try:
            bump(f)
            assert eventually(lambda: len(calls) == 1)
            bump(f)
            assert eventually(lambda: len(calls) == 2)
        finally:
            watcher.stop()
    failed = [r.exc_info[0] for r in caplog.records if r.name == "symbi.policy" and r.exc_info]
    assert failed == [RuntimeError]


def test_the_watcher_stops_from_its_own_callback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reload that closes the engine stops the watcher from the watcher's own thread: it ends
    there, with no error (a thread cannot join itself)."""
    f = tmp_path / "p.rego"
    f.write_text("1")
    watchers: list[FileWatcher] = []
    watchers.append(FileWatcher([f], lambda: watchers[0].stop(), interval_s=0.05))
    thread = _started(watchers[0])
    with caplog.at_level(logging.ERROR, logger="symbi.policy"):
        bump(f)
        thread.join(10)
    assert not thread.is_alive()
    assert [r for r in caplog.records if r.name == "symbi.policy"] == []


def test_a_failed_pass_does_not_end_the_watch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Listing the watched files can fail (EMFILE when the process is out of descriptors): the
    thread died of it before, and no later edit was ever reloaded. A run of failed passes is
    logged once (a warning with its traceback), and its end once (``gateway.logs.Outage``)."""
    caplog.set_level(logging.INFO, logger="symbi.policy")
    f = tmp_path / "p.rego"
    f.write_text("package a\n")
    failing = threading.Event()
    changed = threading.Event()
    fails = [0]

    def paths() -> list[Path]:
        if failing.is_set():
            fails[0] += 1
            if fails[0] >= 3:
                failing.clear()
            raise OSError(24, "Too many open files")
        return [f]

    w = FileWatcher(paths, changed.set, interval_s=0.05)
    w.start()
    try:
        failing.set()
        deadline = time.monotonic() + 10
        while failing.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not failing.is_set()  # the failing pass ran
        f.write_text("package b\n")
        assert changed.wait(10)
    finally:
        w.stop()
    failed = [r for r in caplog.records if "a pass failed" in r.getMessage()]
    assert [(r.levelno, r.exc_info is not None) for r in failed] == [(logging.WARNING, True)]
    assert sum("passes work again" in r.getMessage() for r in caplog.records) == 1
